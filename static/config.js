// Where the API lives. Empty: the page's own origin (the server serves this client itself).
// A page served elsewhere (an Angular-style dev server on http://localhost:4736, say) sets the
// API's absolute origin here, or opens the page with ?api=http://localhost:3000.
window.SESSION_DEMO_API = window.SESSION_DEMO_API || "";
