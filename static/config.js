// The demo client's deploy-time settings; app.js reads them once and nothing else decides them
// (not the page's URL, its referrer or any message). As shipped: the API is this page's own
// origin and the login form starts empty, which is right wherever the API shares the page's
// origin (the deploy's nginx). A page served apart from its API gets its own copy of this file
// from deploy/render_client.py; the dev server serves one that also prefills the demo user.
window.SESSION_DEMO_CONFIG = { api: "", demoUser: null };
