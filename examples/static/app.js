// The demo page's script: fetch() calls to the JSON endpoints of the node that served the page
// (relative URLs, so it works under any context path). No framework.
"use strict";

const $ = (id) => document.getElementById(id);

// One request; resolves to {status, body} (body null when the answer is not JSON).
async function call(method, path, form) {
  const opts = { method, credentials: "same-origin", cache: "no-store" };
  if (form) {
    opts.headers = { "Content-Type": "application/x-www-form-urlencoded" };
    opts.body = new URLSearchParams(form).toString();
  }
  try {
    const r = await fetch(path, opts);
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      body = null;
    }
    return { status: r.status, body };
  } catch (e) {
    return { status: 0, body: { error: String(e) } };
  }
}

function say(text) {
  $("message").textContent = text;
}

function showNode(body) {
  if (body && body.node) {
    $("node").textContent = body.node;
  }
}

async function refreshHealth() {
  const h = await call("GET", "health");
  if (!h.body) {
    $("ready").textContent = "(no answer: is the node up?)";
    return;
  }
  showNode(h.body);
  $("ready").textContent = h.status === 200 ? "" : "(not ready: state transfer running)";
  const list = $("members");
  list.textContent = "";
  for (const m of h.body.members || []) {
    const li = document.createElement("li");
    li.textContent = `${m.name} (${m.addr})`;
    list.appendChild(li);
  }
  if ((h.body.members || []).length === 0) {
    const li = document.createElement("li");
    li.textContent = "none";
    list.appendChild(li);
  }
  $("sessions").textContent = `Sessions held here: ${h.body.sessions} (${h.body.manager} manager)`;
}

function showUser(u) {
  if (u) {
    $("who").textContent = `Logged in as ${u.username} (${u.role}) since ${u.login_time}`;
    $("who").dataset.user = u.username;
  } else {
    $("who").textContent = "Not logged in";
    $("who").dataset.user = "";
  }
}

async function refreshProfile() {
  const p = await call("GET", "profile");
  showNode(p.body);
  showUser(p.status === 200 ? p.body : null);
  // 401 without a session: sessions are made at login only.
  const c = await call("GET", "counter?peek");
  $("counter").textContent = c.status === 200 ? c.body.counter : 0;
  if (c.status === 200) {
    showNode(c.body);
  }
}

async function refresh() {
  await refreshHealth();
  await refreshProfile();
  document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const r = await call("POST", "login", { user: $("user").value, pass: $("pass").value });
  showNode(r.body);
  say(r.status === 200 ? "Logged in." : `Login refused: ${r.body ? r.body.error : r.status}`);
  await refresh();
});

$("logout").addEventListener("click", async () => {
  const r = await call("POST", "logout");
  showNode(r.body);
  say(r.status === 200 ? "Logged out." : `Logout failed: ${r.body ? r.body.error : r.status}`);
  await refresh();
});

$("count").addEventListener("click", async () => {
  const r = await call("GET", "counter");
  showNode(r.body);
  if (r.status === 200) {
    $("counter").textContent = r.body.counter;
    say("Counted.");
  } else {
    say(`Counter failed: ${r.body ? r.body.error : r.status}`);
  }
});

refresh();
