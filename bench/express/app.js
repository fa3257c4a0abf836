// The reference tutorial's backend (Express + express-session), reproduced for the benchmark.
// It keeps the reference app's behaviour on purpose (plaintext passwords, a session for every
// visitor); it is never served to anyone. Usage:
//   PORT=3100 STORE=memory|memcached MEMCACHED=127.0.0.1:11211 SECRET=... node app.js
"use strict";
const express = require("express");
const session = require("express-session");
const cors = require("cors");

const users = [
  { email: "max@gmail.com", password: "1234", name: "Max Miller", balance: 53762 },
  { email: "lily@gmail.com", password: "1235", name: "Lily Walter", balance: 4826 },
];

const app = express();
// A sessionless route before the session middleware: this server's ceiling.
app.get("/livez", (req, res) => res.json({ status: "ok" }));

app.use(cors({ origin: "http://localhost:4736", credentials: true }));
app.use(express.json());
let store;
if (process.env.STORE === "memcached") {
  const MemcachedStore = require("connect-memcached")(session);
  store = new MemcachedStore({ hosts: [process.env.MEMCACHED || "127.0.0.1:11211"] });
}
app.use(
  session({
    // The benchmark passes SECRET; without it, a random one for this process.
    secret: process.env.SECRET || require("crypto").randomBytes(32).toString("hex"),
    resave: false,
    saveUninitialized: true,
    store,
  })
);

app.get("/api", (req, res) => {
  if (req.session.page_views) {
    req.session.page_views++;
    res.send("You visited this page " + req.session.page_views + " times");
  } else {
    req.session.page_views = 1;
    res.send("Welcome to this page for the first time!");
  }
});
app.post("/api/login", (req, res) => {
  const { email, password } = req.body || {};
  const user = users.find((u) => u.email === email && u.password === password);
  if (!user) return res.status(403).json({ errorMessage: "Permission denied!" });
  req.session.user = user;
  res.json({ user: { email: user.email, name: user.name } });
});
app.get("/api/login", (req, res) => res.json({ loggedIn: Boolean(req.session.user) }));
app.post("/api/logout", (req, res) => req.session.destroy(() => res.json({})));
app.get("/api/balance", (req, res) => {
  if (!req.session.user) return res.status(403).json({ errorMessage: "You must be logged in." });
  res.json({ balance: req.session.user.balance });
});

const port = Number(process.env.PORT || 3000);
app.listen(port, "127.0.0.1", () => console.log(`reference app on http://127.0.0.1:${port}`));
