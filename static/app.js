// The demo client: what the reference Angular client does, in plain JavaScript.
// Every call carries credentials; same-origin calls echo the XSRF-TOKEN cookie in X-XSRF-TOKEN
// (Angular's convention). Cross-origin calls rely on the server's CORS allowlist instead.
//
// Where the calls go is decided by config.js alone, never by anything in this page's URL, its
// referrer or a message from another window: whoever can send a link must not be able to make
// the genuine page post the password typed into it to their own server.
"use strict";

(function () {
  const config = window.SESSION_DEMO_CONFIG || {};
  const $ = (id) => document.getElementById(id);
  const views = { out: $("logged-out"), in: $("logged-in") };

  // The configured API origin, or this page's own. Only a bare http(s) origin, written exactly
  // as browsers spell it, is accepted: the page's CSP names that same string in connect-src.
  function configuredOrigin(value) {
    if (value === undefined || value === null || value === "") return window.location.origin;
    if (typeof value !== "string") return null;
    try {
      const url = new URL(value);
      return (url.protocol === "https:" || url.protocol === "http:") && url.origin === value ? value : null;
    } catch (notAUrl) {
      return null;
    }
  }

  const apiOrigin = configuredOrigin(config.api);
  const sameOrigin = apiOrigin === window.location.origin;

  function readCookie(name) {
    const prefix = name + "=";
    for (const part of document.cookie.split("; ")) {
      if (part.startsWith(prefix)) return decodeURIComponent(part.slice(prefix.length));
    }
    return null;
  }

  class ApiError extends Error {}

  async function call(method, path, body) {
    if (apiOrigin === null) {
      throw new ApiError("config.js: api must be an origin such as https://api.example.com, or empty.");
    }
    const headers = { Accept: "application/json, text/plain" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (sameOrigin && method !== "GET") {
      const token = readCookie("XSRF-TOKEN");
      if (token) headers["X-XSRF-TOKEN"] = token;
    }
    let response;
    try {
      response = await fetch(apiOrigin + path, {
        method,
        headers,
        credentials: "include",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (networkError) {
      // A network failure and a CORS refusal look the same to a page.
      throw new ApiError(`Cannot reach the server at ${apiOrigin} (offline, or this page's origin is not allowed).`);
    }
    const type = response.headers.get("Content-Type") || "";
    const payload = type.includes("application/json") ? await response.json() : await response.text();
    if (!response.ok) {
      const message = payload && payload.errorMessage ? payload.errorMessage : `Request failed (${response.status}).`;
      throw new ApiError(message);
    }
    return payload;
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = !message;
  }

  function showLoggedIn(user) {
    views.out.hidden = true;
    views.in.hidden = false;
    $("welcome").textContent = user ? `Welcome, ${user.name}!` : "Welcome back!";
  }

  function showLoggedOut() {
    views.in.hidden = true;
    views.out.hidden = false;
  }

  async function guarded(action) {
    showError("");
    try {
      await action();
    } catch (error) {
      showError(error instanceof ApiError ? error.message : "Something went wrong.");
    }
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(async () => {
      const result = await call("POST", "/api/login", { email: $("email").value, password: $("password").value });
      $("balance").textContent = "";
      showLoggedIn(result.user);
    });
  });

  $("logout-button").addEventListener("click", () =>
    guarded(async () => {
      await call("POST", "/api/logout", {});
      $("balance").textContent = "";
      showLoggedOut();
    })
  );

  $("balance-button").addEventListener("click", () =>
    guarded(async () => {
      $("balance").textContent = "";
      try {
        const result = await call("GET", "/api/balance");
        $("balance").textContent = `Balance: ${result.balance.toLocaleString("en-US")}`;
      } catch (error) {
        $("balance").textContent = error.message;
        throw error;
      }
    })
  );

  $("api-base").textContent = apiOrigin || "not configured";
  document.body.dataset.ready = "false";
  const demoUser = config.demoUser;
  if (demoUser && typeof demoUser.email === "string" && typeof demoUser.password === "string") {
    $("email").value = demoUser.email;
    $("password").value = demoUser.password;
  }
  guarded(async () => {
    const status = await call("GET", "/api/login");
    if (status.loggedIn) showLoggedIn(null);
    else showLoggedOut();
    $("counter").textContent = await call("GET", "/api");
  }).finally(() => {
    if (views.in.hidden && views.out.hidden) showLoggedOut();
    document.body.dataset.ready = "true";
  });
})();
