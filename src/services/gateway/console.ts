/**
 * The mesh console (docs/console.md): a static page the gateway serves at
 * `GET /console`, public and cacheable, that signs an admin in through
 * `POST /api/auth/login` (the token stays in the page's memory) and reads and
 * steers the mesh through the admin API only, as `npm run mesh` does:
 *
 *   GET /console               the page
 *   GET /console/console.js    its script (the static topology of topology.ts inlined)
 *   GET /console/console.css   its stylesheet
 *
 * No framework and nothing from another origin: the page's CSP allows this
 * origin only. Everything it shows of the mesh comes from the admin API, so a
 * non-admin who signs in gets its 403 and sees nothing of the mesh.
 */
import { Effect } from "effect"
import { Problem } from "meshwork"
import { pageHeaders } from "./pages.ts"
import { routes, workers } from "./topology.ts"

export const consolePath = "/console"

/** Clients and caches may keep the page for 5 minutes: a deploy shows within that. */
const cacheable = "public, max-age=300"

const securityHeaders = pageHeaders()

const page = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Meshwork console</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="/console/console.css">
  <script src="/console/console.js" defer></script>
</head>
<body>
  <header>
    <h1>Meshwork console</h1>
    <span id="who"></span>
    <label id="auto-label" hidden><input type="checkbox" id="auto" checked> refresh every 5 s</label>
    <button id="refresh" hidden>Refresh</button>
    <button id="signout" hidden>Sign out</button>
  </header>
  <main>
    <form id="signin">
      <h2>Sign in</h2>
      <label>Email <input id="email" type="email" autocomplete="username" required></label>
      <label>Password <input id="password" type="password" autocomplete="current-password" required></label>
      <button type="submit">Sign in</button>
      <p class="hint">Admins only. The token stays in this page's memory: reloading signs you out.</p>
    </form>
    <p id="message" role="status"></p>
    <section id="refusal" hidden><h2>Refused</h2><p id="refusal-detail"></p></section>
    <div id="mesh" hidden>
      <section><h2>Topology</h2><div id="graph"></div></section>
      <section><h2>Policy state</h2><table id="breakers"></table></section>
      <section>
        <h2>Steering</h2>
        <div class="columns">
          <form id="split-form">
            <h3>Traffic split</h3>
            <label>Service <select id="split-service"></select></label>
            <label>Stable <select id="split-stable"></select></label>
            <label>Canary <select id="split-canary"></select></label>
            <label>Canary weight (%) <input id="split-weight" type="number" min="0" max="100" step="1" value="0"></label>
            <div class="buttons">
              <button type="button" id="set-split">Set split</button>
              <button type="button" id="promote">Promote canary</button>
              <button type="button" id="rollback">Roll back</button>
            </div>
            <table id="splits"></table>
          </form>
          <form id="flag-form">
            <h3>Feature flags</h3>
            <label>Name <input id="flag-name" placeholder="new-checkout"></label>
            <label>Percentage <input id="flag-percentage" type="number" min="0" max="100" step="1" value="0"></label>
            <div class="buttons">
              <button type="button" id="set-flag">Set flag</button>
              <button type="button" id="kill-flag">Kill flag</button>
            </div>
            <table id="flags"></table>
          </form>
        </div>
      </section>
      <section><h2>Audit trail</h2><table id="audit"></table></section>
    </div>
    <div id="confirm" hidden>
      <p>Confirm this change to the mesh?</p>
      <pre id="confirm-request"></pre>
      <button id="confirm-yes">Confirm</button>
      <button id="confirm-no">Cancel</button>
    </div>
  </main>
</body>
</html>
`

const css = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d232b; background: #f5f6f8; }
header { display: flex; gap: 1em; align-items: center; padding: .6em 1.2em; background: #1d232b; color: #fff; }
header h1 { font-size: 1.1em; margin: 0; flex: 1; }
main { padding: 1em 1.2em; max-width: 1100px; }
section, form#signin { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: .8em 1em; margin-bottom: 1em; }
h2 { font-size: 1em; margin: 0 0 .6em; } h3 { font-size: .95em; margin: 0 0 .5em; }
label { display: block; margin: .3em 0; } label input, label select { margin-left: .4em; }
.columns { display: flex; gap: 2em; flex-wrap: wrap; } .columns form { flex: 1; min-width: 320px; }
.buttons { margin: .5em 0; display: flex; gap: .5em; }
table { border-collapse: collapse; margin-top: .5em; } td, th { text-align: left; padding: .2em .8em .2em 0; border-bottom: 1px solid #eef0f3; vertical-align: top; }
.up { color: #17803d; } .down, .Open { color: #c62828; font-weight: 600; } .HalfOpen { color: #b26a00; font-weight: 600; }
#refusal { border-color: #c62828; } #refusal h2 { color: #c62828; }
#message.error { color: #c62828; } .hint { color: #5c6670; font-size: .9em; }
#confirm { position: fixed; bottom: 1em; right: 1em; background: #fffbe6; border: 2px solid #b26a00; border-radius: 6px; padding: .8em 1em; max-width: 480px; }
#confirm pre { white-space: pre-wrap; word-break: break-all; }
svg text { font: 12px system-ui, sans-serif; } svg .title { font-weight: 600; font-size: 13px; }
svg .node rect { fill: #fff; stroke: #8a949e; } svg .node.up rect { stroke: #17803d; } svg .node.down rect { stroke: #c62828; stroke-width: 2; }
svg .edge { stroke: #8a949e; fill: none; } svg .edge.idle { stroke-dasharray: 4 4; }
td.body { font-family: ui-monospace, monospace; font-size: 12px; max-width: 420px; word-break: break-all; }
`

const script = `"use strict";
// The mesh's static shape (src/services/gateway/topology.ts, from the wrangler configs).
const TOPOLOGY = ${JSON.stringify({ workers, routes })};
let token = null;
let state = null;
let pending = null;

const $ = (id) => document.getElementById(id);
// Elements are built with textContent only: nothing the API returns is parsed as HTML.
const h = (tag, attributes, ...children) => {
  const svg = ["svg", "g", "rect", "text", "path", "line"].includes(tag);
  const element = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) element.setAttribute(name, String(value));
  for (const child of children.flat()) element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return element;
};
// replaceChildren with lists of children flattened.
const fill = (element, ...children) => element.replaceChildren(...children.flat());
const say = (text, error) => { $("message").textContent = text; $("message").className = error ? "error" : ""; };

const api = async (method, path, body) => {
  const headers = { authorization: "Bearer " + token };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let json = null;
  try { json = text === "" ? null : JSON.parse(text); } catch { json = null; }
  return { status: response.status, ok: response.ok, json };
};
const problemText = (answer) => (answer.json && (answer.json.detail || answer.json.title)) || ("HTTP " + answer.status);

$("signin").addEventListener("submit", async (event) => {
  event.preventDefault();
  say("Signing in…");
  const response = await fetch("/api/auth/login", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ email: $("email").value, password: $("password").value })
  });
  const json = await response.json().catch(() => null);
  if (!response.ok || !json || !json.access_token) return say("Sign-in refused: " + ((json && json.detail) || response.status), true);
  token = json.access_token;
  $("password").value = "";
  $("who").textContent = $("email").value;
  $("signin").hidden = true;
  $("signout").hidden = false;
  await load();
});
$("signout").addEventListener("click", () => {
  token = null; state = null;
  $("mesh").hidden = true; $("refusal").hidden = true; $("refresh").hidden = true; $("signout").hidden = true;
  $("auto-label").hidden = true;
  $("signin").hidden = false; $("who").textContent = ""; say("");
});
$("refresh").addEventListener("click", () => load());
// Live figures: a signed-in admin's page reloads the mesh's state every 5 s while it is visible,
// unless a change waits for confirmation (the form's own fields are never overwritten).
let loading = false;
setInterval(async () => {
  if (token === null || state === null || loading || !$("auto").checked || document.hidden || !$("confirm").hidden) return;
  loading = true;
  try { await load(); } finally { loading = false; }
}, 5000);

async function load() {
  const status = await api("GET", "/api/admin/status");
  if (status.status === 401) { $("signout").click(); return say("Your session expired: sign in again.", true); }
  if (!status.ok) {
    // A non-admin: the admin API's refusal, and nothing of the mesh.
    $("mesh").hidden = true;
    $("refusal").hidden = false;
    $("refusal-detail").textContent = status.status + ": " + problemText(status);
    return say("");
  }
  let health = await api("GET", "/api/admin/health");
  // 503 is a degraded report, still a report; an older gateway without the route answers 404.
  if (health.status === 404) health = await api("GET", "/health");
  const audit = await api("GET", "/api/admin/audit?limit=50");
  // What the routers' mirrors found, for each split that mirrors.
  const mirrors = {};
  for (const [name, split] of Object.entries(status.json.traffic || {})) {
    if (!split.mirror || split.mirror.percentage === 0) continue;
    const report = await api("GET", "/api/admin/traffic/" + encodeURIComponent(name) + "/mirror");
    if (report.ok) mirrors[name] = report.json;
  }
  state = {
    mirrors,
    traffic: status.json.traffic || {},
    flags: status.json.flags || {},
    upstreams: (health.json && health.json.upstreams) || {},
    healthStatus: (health.json && health.json.status) || "unknown",
    audit: audit.ok ? audit.json.entries : []
  };
  $("refusal").hidden = true;
  $("mesh").hidden = false;
  say("");
  $("refresh").hidden = false;
  $("auto-label").hidden = false;
  render();
}

// The health entry of a route's version: the default version under the service's name, others as service@version.
const entryOf = (route, version) =>
  state.upstreams[version === "default" || version === route.defaultVersion ? route.service : route.service + "@" + version];

// Each version's share of the route's traffic, in percent.
const sharesOf = (route) => {
  const split = state.traffic[route.service];
  const shares = {};
  for (const version of Object.keys(route.versions)) shares[version] = 0;
  if (split === undefined || !(split.stable in shares)) shares[route.defaultVersion || "default"] = 100;
  else {
    const canary = split.canary !== undefined && split.canary in shares ? split.canary : undefined;
    shares[split.stable] = 100 - (canary ? split.weight : 0);
    if (canary) shares[canary] = split.weight;
  }
  return shares;
};

function render() {
  renderGraph();
  renderBreakers();
  renderSteering();
  renderAudit();
}

function renderGraph() {
  const byScript = Object.fromEntries(TOPOLOGY.workers.map((worker) => [worker.script, worker]));
  const linesOf = (worker) => [
    ...Object.entries(worker.durableObjects).map(([binding, cls]) => "\\u25c6 " + binding + " (" + cls + ")"),
    ...worker.produces.map((queue) => "\\u2192 queue " + queue),
    ...worker.consumes.map((queue) => "\\u21d0 consumes " + queue),
    // The router's and gateway's calls are the graph's edges; a service's own calls are listed.
    ...(worker.script !== "meshwork-gateway" && worker.script !== "meshwork-router" && Object.keys(worker.calls).length > 0
      ? ["calls " + Object.values(worker.calls).join(", ")] : [])
  ];
  const node = (worker, x, y, width, subtitle, health) => {
    const lines = linesOf(worker);
    const height = 40 + lines.length * 16;
    const cls = "node" + (health ? " " + health.status : "");
    const group = h("g", { class: cls, "data-worker": worker.script, transform: "translate(" + x + "," + y + ")" },
      h("rect", { width, height, rx: 6 }),
      h("text", { x: 10, y: 18, class: "title" }, worker.script),
      h("text", { x: 10, y: 34 }, subtitle),
      lines.map((line, i) => h("text", { x: 10, y: 52 + i * 16 }, line)));
    return { group, height, x, y, width };
  };
  const svg = h("svg", { width: 1040, role: "img", "aria-label": "The mesh's topology" });
  const gateway = node(byScript["meshwork-gateway"], 10, 10, 280, "public edge", { status: "up" });
  const routerHealth = state.upstreams["router"];
  const router = node(byScript["meshwork-router"], 330, 10, 250, routerHealth ? routerHealth.status + (routerHealth.latencyMs !== undefined ? " \\u00b7 " + routerHealth.latencyMs + " ms" : "") : "", routerHealth);
  const edges = h("g", {});
  const link = (from, to, label, idle, index) => {
    const x1 = from.x + from.width, y1 = from.y + 20, x2 = to.x, y2 = to.y + 20;
    edges.append(h("path", { class: "edge" + (idle ? " idle" : ""), d: "M" + x1 + "," + y1 + " C" + (x1 + 60) + "," + y1 + " " + (x2 - 60) + "," + y2 + " " + x2 + "," + y2 }));
    if (label) edges.append(h("text", { x: Math.max(x1 + 6, x2 - 105), y: y2 - 5, "data-edge": index }, label));
  };
  svg.append(edges, gateway.group, router.group);
  link(gateway, router, "/api", false, "router");
  // The gateway's other upstreams (the docs Worker), below it.
  let below = gateway.y + gateway.height + 40;
  for (const script of Object.values(byScript["meshwork-gateway"].calls).filter((script) => script !== "meshwork-router")) {
    const box = node(byScript[script], 40, below, 250, "called by the gateway", null);
    svg.append(box.group);
    edges.append(h("path", { class: "edge", d: "M" + (gateway.x + 60) + "," + (gateway.y + gateway.height) + " V" + (box.y + 20) + " H" + box.x }));
    below += box.height + 12;
  }
  let y = 10;
  for (const route of TOPOLOGY.routes) {
    const shares = sharesOf(route);
    for (const [version, script] of Object.entries(route.versions)) {
      const health = entryOf(route, version);
      const parts = [route.prefix];
      if (version !== "default") parts.push(version);
      if (health) parts.push(health.status + (health.breaker ? " \\u00b7 breaker " + health.breaker : ""));
      const box = node(byScript[script], 690, y, 340, parts.join(" \\u00b7 "), health);
      svg.append(box.group);
      link(router, box, route.service + (version !== "default" ? "@" + version : "") + " " + shares[version] + "%", shares[version] === 0, route.service + "@" + version);
      y += box.height + 12;
    }
  }
  svg.setAttribute("height", String(Math.max(y, below, router.height + 20)));
  $("graph").replaceChildren(svg);
}

function renderBreakers() {
  const rows = Object.entries(state.upstreams).map(([name, entry]) =>
    h("tr", { "data-upstream": name },
      h("td", {}, name),
      h("td", { class: entry.status }, entry.status + (entry.detail ? " (" + entry.detail + ")" : "")),
      h("td", {}, entry.latencyMs === undefined ? "" : entry.latencyMs + " ms"),
      h("td", { class: entry.breaker || "" }, entry.breaker || "no breaker"),
      h("td", {}, Object.entries(entry.checks || {}).map(([check, result]) => check + " " + result.status).join(", "))));
  fill($("breakers"),
    h("caption", {}, "Mesh health: " + state.healthStatus),
    h("tr", {}, ["upstream", "probe", "latency", "circuit breaker", "readiness"].map((title) => h("th", {}, title))),
    rows);
}

function renderSteering() {
  const routed = TOPOLOGY.routes.filter((route) => route.defaultVersion !== undefined);
  const service = $("split-service");
  const chosen = service.value || (routed[0] && routed[0].service);
  service.replaceChildren(...routed.map((route) => h("option", { value: route.service }, route.service)));
  service.value = chosen;
  const showSplit = () => {
    const route = routed.find((candidate) => candidate.service === service.value);
    const versions = Object.keys(route.versions);
    const split = state.traffic[route.service];
    $("split-stable").replaceChildren(...versions.map((v) => h("option", { value: v }, v)));
    $("split-canary").replaceChildren(...versions.map((v) => h("option", { value: v }, v)));
    $("split-stable").value = split ? split.stable : route.defaultVersion;
    $("split-canary").value = (split && split.canary) || versions.find((v) => v !== $("split-stable").value);
    $("split-weight").value = split ? String(split.weight) : "0";
  };
  service.onchange = showSplit;
  // Filled once, and on a change of service: a refresh never overwrites what the admin is typing.
  if (!service.dataset.filled) { service.dataset.filled = "1"; showSplit(); }
  fill($("splits"),
    h("tr", {}, ["service", "stable", "canary", "weight", "mirror", "rolled back"].map((title) => h("th", {}, title))),
    Object.entries(state.traffic).map(([name, split]) => h("tr", { "data-split": name },
      h("td", {}, name), h("td", {}, split.stable), h("td", {}, split.canary || ""), h("td", {}, split.weight + "%"),
      h("td", { class: "mirror" }, mirrorText(split, state.mirrors[name])),
      h("td", {}, split.rolledBack ? split.rolledBack.at + " (" + split.rolledBack.reason + ")" : ""))));
  fill($("flags"),
    h("tr", {}, ["flag", "enabled", "percentage", "users", "roles"].map((title) => h("th", {}, title))),
    Object.entries(state.flags).map(([name, flag]) => h("tr", { "data-flag": name },
      h("td", {}, name), h("td", {}, flag.enabled ? "on" : "killed"), h("td", {}, flag.percentage + "%"),
      h("td", {}, (flag.users || []).length), h("td", {}, (flag.roles || []).join(", ")))));
}

// A split's mirroring: its share, what the canary's copies matched, and the newest mismatch.
const mirrorText = (split, report) => {
  if (!split.mirror || split.mirror.percentage === 0) return "";
  if (!report) return split.mirror.percentage + "%: no report";
  const newest = report.recent[0];
  return split.mirror.percentage + "% to " + report.canary + ": " + report.matched + " matched, " + report.mismatched + " mismatched" +
    (newest ? " (newest: " + newest.path + ", " + newest.difference + ")" : "");
};

function renderAudit() {
  fill($("audit"),
    h("tr", {}, ["when", "who", "change", "status", "body"].map((title) => h("th", {}, title))),
    state.audit.map((entry) => h("tr", { class: "audit-entry" },
      h("td", {}, entry.at), h("td", {}, entry.by), h("td", {}, entry.method + " " + entry.path), h("td", {}, entry.status),
      h("td", { class: "body" }, (entry.body || "") + (entry.truncated ? " \\u2026" : "")))));
}

// Every change goes through a confirmation step showing the exact request.
const propose = (method, path, body) => {
  pending = { method, path, body };
  $("confirm-request").textContent = method + " " + path + (body === undefined ? "" : "\\n" + JSON.stringify(body, null, 2));
  $("confirm").hidden = false;
};
$("confirm-no").addEventListener("click", () => { pending = null; $("confirm").hidden = true; });
$("confirm-yes").addEventListener("click", async () => {
  const change = pending;
  pending = null;
  $("confirm").hidden = true;
  if (!change) return;
  const answer = await api(change.method, change.path, change.body);
  if (answer.ok) say("Done: " + change.method + " " + change.path);
  else say(change.method + " " + change.path + " refused: " + problemText(answer) +
    ((answer.json && answer.json.errors) ? " " + answer.json.errors.map((e) => e.path.join(".") + ": " + e.message).join("; ") : ""), true);
  await load();
});

const splitPath = () => "/api/admin/traffic/" + encodeURIComponent($("split-service").value);
$("set-split").addEventListener("click", () => {
  const weight = Number($("split-weight").value);
  const body = { stable: $("split-stable").value, weight };
  if ($("split-canary").value !== body.stable) body.canary = $("split-canary").value;
  propose("PUT", splitPath(), body);
});
$("promote").addEventListener("click", () => propose("PUT", splitPath(), { stable: $("split-canary").value, weight: 0 }));
$("rollback").addEventListener("click", () => propose("POST", splitPath() + "/rollback"));
$("set-flag").addEventListener("click", () => {
  const name = $("flag-name").value;
  const current = state.flags[name] || {};
  propose("PUT", "/api/admin/flags/" + encodeURIComponent(name), { ...current, enabled: true, percentage: Number($("flag-percentage").value) });
});
$("kill-flag").addEventListener("click", () => {
  const name = $("flag-name").value;
  const current = state.flags[name] || { percentage: 0 };
  propose("PUT", "/api/admin/flags/" + encodeURIComponent(name), { ...current, enabled: false });
});
`

const assets: Record<string, { readonly body: string; readonly type: string }> = {
  [consolePath]: { body: page, type: "text/html; charset=utf-8" },
  [`${consolePath}/console.js`]: { body: script, type: "text/javascript; charset=utf-8" },
  [`${consolePath}/console.css`]: { body: css, type: "text/css; charset=utf-8" }
}

/**
 * `handler` with the console in front: `GET`/`HEAD /console` and its two
 * assets are answered here, from strings, before routing (the gateway's
 * routing table serves `/api` only); everything else goes to `handler`.
 */
export const withConsole = <E, R>(handler: (request: Request) => Effect.Effect<Response, E, R>) =>
(request: Request): Effect.Effect<Response, E | Problem.NotFound | Problem.MethodNotAllowed, R> => {
  const path = new URL(request.url).pathname
  if (path !== consolePath && !path.startsWith(`${consolePath}/`)) return handler(request)
  const asset = assets[path]
  if (asset === undefined) return Effect.fail(new Problem.NotFound({ detail: `No console asset ${path}` }))
  if (request.method !== "GET" && request.method !== "HEAD") {
    return Effect.fail(new Problem.MethodNotAllowed({ allow: ["GET", "HEAD"], detail: `GET ${path}` }))
  }
  return Effect.succeed(new Response(request.method === "HEAD" ? null : asset.body, {
    headers: { "content-type": asset.type, "cache-control": cacheable, ...securityHeaders }
  }))
}
