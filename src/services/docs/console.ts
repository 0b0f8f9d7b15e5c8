/**
 * The mesh console (docs/console.md): a static page, served by the docs
 * Worker and reached through the gateway at `GET /console`, public and
 * cacheable, that signs an admin in through `POST /api/auth/login` (the token
 * stays in the page's memory) and reads and steers the mesh through the admin
 * API only, as `npm run mesh` does:
 *
 *   GET /console               the page
 *   GET /console/console.js    its script (the static topology of topology.ts inlined)
 *   GET /console/console.css   its stylesheet
 *
 * It lives here, not in the gateway, so that the gateway's isolates never
 * parse it (its 35 KB were the largest part of the gateway's own code). No
 * framework and nothing from another origin: the page's CSP allows this
 * origin only. Everything it shows of the mesh comes from the admin API, so a
 * non-admin who signs in gets its 403 and sees nothing of the mesh.
 */
import { pageHeaders } from "../gateway/pages.ts"
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
      <section>
        <h2>Live figures <span class="hint" id="live-span"></span></h2>
        <table id="live"></table>
      </section>
      <section><h2>Policy state</h2><table id="breakers"></table></section>
      <section>
        <h2>Policy decisions <span class="hint" id="decisions-span"></span></h2>
        <div class="columns">
          <div><h3>Rate limits, edge cache, retries, bulkheads</h3><table id="decisions"></table></div>
          <div><h3>Breaker transitions</h3><table id="transitions"></table></div>
        </div>
      </section>
      <section id="traces-section">
        <h2>Recent traces <span class="hint" id="traces-filter"></span> <button type="button" id="traces-all" hidden>Show all</button></h2>
        <table id="traces"></table>
        <div id="waterfall"></div>
      </section>
      <section>
        <h2>Steering</h2>
        <div class="columns">
          <form id="split-form">
            <h3>Traffic split</h3>
            <label>Service <select id="split-service"></select></label>
            <label>Stable <select id="split-stable"></select></label>
            <label>Canary <select id="split-canary"></select></label>
            <label>Canary weight (%) <input id="split-weight" type="number" min="0" max="100" step="1" value="0"></label>
            <label>Inject faults into the canary: abort (%) <input id="split-faults" type="number" min="0" max="100" step="1" value="0"></label>
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
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failing td:first-child { color: #c62828; font-weight: 600; }
svg.spark polyline { fill: none; stroke-width: 1.5; } svg.spark .requests { stroke: #3b6fb6; } svg.spark .errors { stroke: #c62828; }
svg .rate { fill: #3b6fb6; } svg .rate.failing { fill: #c62828; font-weight: 600; }
#traces, #live { width: 100%; } #traces td:first-child, #transitions td:first-child { white-space: nowrap; }
#traces tr.trace { cursor: pointer; } #traces tr.trace:hover td { background: #eef3fb; } #traces tr.selected td { background: #dde8f7; }
#traces tr.trace-error td:nth-child(2) { color: #c62828; font-weight: 600; }
#waterfall svg .bar { fill: #6b8fc7; } #waterfall svg .bar.error { fill: #c62828; } #waterfall svg .grid { stroke: #eef0f3; }
#waterfall svg text.label { font: 11px ui-monospace, monospace; } #waterfall h3 { margin-top: .8em; }
button.link { background: none; border: none; color: #3b6fb6; text-decoration: underline; cursor: pointer; padding: 0; font: inherit; }
td.body { font-family: ui-monospace, monospace; font-size: 12px; max-width: 420px; word-break: break-all; }
`

const script = `"use strict";
// The mesh's static shape (src/services/docs/topology.ts, from the wrangler configs).
const TOPOLOGY = ${JSON.stringify({ workers, routes })};
let token = null;
let state = null;
let pending = null;

const $ = (id) => document.getElementById(id);
// Elements are built with textContent only: nothing the API returns is parsed as HTML.
const h = (tag, attributes, ...children) => {
  const svg = ["svg", "g", "rect", "text", "path", "line", "polyline"].includes(tag);
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
  say("");
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

let refreshFailed = false;
async function load() {
  const status = await api("GET", "/api/admin/status");
  if (status.status === 401) { $("signout").click(); return say("Your session expired: sign in again.", true); }
  if (!status.ok && status.status !== 403 && state !== null) {
    // The admin API failed this time: the page keeps what it showed, and says so (until a refresh succeeds).
    refreshFailed = true;
    return say("The admin API answered " + status.status + " (" + problemText(status) + "): showing what it said before.", true);
  }
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
  // Live figures over the last 5 minutes, across every isolate (404 on a gateway that keeps none).
  const live = await api("GET", "/api/admin/live?minutes=5");
  // The mesh's sample of recent traces, filtered as the admin chose (404 where it keeps none).
  const traces = await api("GET", "/api/admin/traces?limit=20" + (traceFilter ? "&errors=true&series=" + encodeURIComponent(traceFilter.calls) : ""));
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
    audit: audit.ok ? audit.json.entries : [],
    // 404: not kept here; another failure keeps what the page showed.
    live: live.ok ? live.json : live.status === 404 ? null : state && state.live,
    traces: traces.ok ? traces.json.traces : traces.status === 404 ? null : state && state.traces
  };
  $("refusal").hidden = true;
  $("mesh").hidden = false;
  // What the last change said stays until the next one; only a failed refresh's notice goes.
  if (refreshFailed) say("");
  refreshFailed = false;
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
  renderLive();
  renderBreakers();
  renderDecisions();
  renderTraces();
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
    if (label) edges.append(h("text", { x: Math.max(x1 + 8, x2 - 150), y: y2 - 5, "data-edge": index }, label));
    // The edge's live figures: calls per second and the share that failed, over the last minutes.
    const figures = liveOf(index);
    if (figures && figures.requests > 0) {
      const failing = figures.errorRate > 0;
      edges.append(h("text", { x: Math.max(x1 + 8, x2 - 150), y: y2 + 12, class: "rate" + (failing ? " failing" : ""), "data-rate": index },
        figures.perSecond + "/s" + (failing ? " \\u00b7 " + percent(figures.errorRate) + " failed" : "")));
    }
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
      const box = node(byScript[script], 750, y, 285, parts.join(" \\u00b7 "), health);
      svg.append(box.group);
      link(router, box, route.service + (version !== "default" ? "@" + version : "") + " " + shares[version] + "%", shares[version] === 0, version === "default" ? route.service : route.service + "@" + version);
      y += box.height + 12;
    }
  }
  svg.setAttribute("height", String(Math.max(y, below, router.height + 20)));
  $("graph").replaceChildren(svg);
}

const percent = (share) => (Math.round(share * 1000) / 10) + "%";
// A series' live figures: the router's calls to a service or one of its versions, or the gateway's to the router.
const liveOf = (series) => state.live && state.live.series.find((entry) => entry.series === series);
const ms = (value) => value === null ? "" : value + " ms";

// Calls per window as a small line: blue all calls, red the failed ones.
const sparkline = (timeline) => {
  const width = 150, height = 24;
  const top = Math.max(1, ...timeline.map((window) => window.requests));
  const points = (key) => timeline.map((window, i) =>
    (timeline.length < 2 ? 0 : Math.round((i / (timeline.length - 1)) * width)) + "," + (height - 2 - Math.round((window[key] / top) * (height - 4)))).join(" ");
  return h("svg", { class: "spark", width, height, "aria-hidden": "true" },
    h("polyline", { class: "requests", points: points("requests") }),
    h("polyline", { class: "errors", points: points("errors") }));
};

function renderLive() {
  const live = state.live;
  if (!live) {
    $("live-span").textContent = "";
    return fill($("live"), h("caption", {}, "This gateway keeps no live figures (LiveStats.layer and its MESH_STATS binding)."));
  }
  $("live-span").textContent = "last 5 minutes, every isolate, " + live.windowSeconds + " s windows" +
    (live.unavailable.length > 0 ? " \\u00b7 not read: " + live.unavailable.join(", ") : "");
  fill($("live"),
    h("tr", {}, ["calls to", "from", "calls", "per second", "failed", "p50", "p99", "calls per " + live.windowSeconds + " s", ""].map((title) => h("th", {}, title))),
    live.series.length === 0 ? [h("tr", {}, h("td", { colspan: 9 }, "No calls yet."))] : [],
    live.series.map((entry) => h("tr", { "data-series": entry.series, class: entry.errors > 0 ? "failing" : "" },
      h("td", {}, entry.series), h("td", {}, entry.from),
      h("td", { class: "num" }, entry.requests), h("td", { class: "num" }, entry.perSecond),
      h("td", { class: "num failed" }, entry.errors + " (" + percent(entry.errorRate) + ")"),
      h("td", { class: "num" }, ms(entry.p50Ms)), h("td", { class: "num" }, ms(entry.p99Ms)),
      h("td", {}, sparkline(entry.timeline)),
      h("td", {}, entry.errors > 0 ? h("button", { type: "button", class: "link", "data-traces": entry.series }, "failed traces") : ""))));
  for (const button of $("live").querySelectorAll("button[data-traces]")) {
    button.addEventListener("click", () => showFailedTraces(button.getAttribute("data-traces")));
  }
}

// What a live series is called in a trace: the router names a route's default version by the service alone.
const callsName = (series) => {
  const [service, version] = series.split("@");
  const route = TOPOLOGY.routes.find((candidate) => candidate.service === service);
  return version !== undefined && route && route.defaultVersion === version ? service : series;
};

// Traces: the list follows the filter (all, or the failed calls to one series); a clicked row draws its waterfall.
let traceFilter = null;
let selectedTrace = null;
async function showFailedTraces(series) {
  traceFilter = { series, calls: callsName(series) };
  await load();
  $("traces-section").scrollIntoView();
  const first = state.traces && state.traces[0];
  if (first) await showTrace(first.traceId);
}
$("traces-all").addEventListener("click", async () => { traceFilter = null; await load(); });

function renderTraces() {
  $("traces-filter").textContent = traceFilter ? "failed calls to " + traceFilter.series : "the mesh's sample, newest first";
  $("traces-all").hidden = traceFilter === null;
  if (state.traces === null) return fill($("traces"), h("caption", {}, "This mesh keeps no traces: KEEP_TRACES and the MESH_STATS binding (npm start turns them on)."));
  fill($("traces"),
    h("tr", {}, ["when", "request", "duration", "Workers", "spans", "failure"].map((title) => h("th", {}, title))),
    state.traces.length === 0 ? [h("tr", {}, h("td", { colspan: 6 }, "None kept."))] : [],
    state.traces.map((trace) => {
      const row = h("tr", { class: "trace" + (trace.error ? " trace-error" : "") + (trace.traceId === selectedTrace ? " selected" : ""), "data-trace": trace.traceId },
        h("td", {}, trace.startedAt), h("td", {}, trace.name), h("td", { class: "num" }, trace.durationMs + " ms"),
        h("td", {}, trace.services.join(", ")), h("td", { class: "num" }, trace.spans), h("td", {}, trace.error || ""));
      row.addEventListener("click", () => showTrace(trace.traceId));
      return row;
    }));
}

// A trace as a waterfall: one bar per span in tree order, placed on the trace's time line.
async function showTrace(traceId) {
  const answer = await api("GET", "/api/admin/traces/" + encodeURIComponent(traceId));
  if (!answer.ok) return say("Trace " + traceId + ": " + problemText(answer), true);
  selectedTrace = traceId;
  for (const row of $("traces").querySelectorAll("tr.trace")) row.classList.toggle("selected", row.getAttribute("data-trace") === traceId);
  const spans = answer.json.items;
  const ids = new Set(spans.map((span) => span.spanId));
  const children = new Map();
  for (const span of spans) {
    const parent = span.parentSpanId && ids.has(span.parentSpanId) ? span.parentSpanId : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(span);
  }
  const ordered = [];
  const visit = (parent, depth) => {
    for (const span of (children.get(parent) || []).sort((a, b) => a.startMs - b.startMs)) {
      ordered.push({ span, depth });
      visit(span.spanId, depth + 1);
    }
  };
  visit(null, 0);
  const start = Math.min(...spans.map((span) => span.startMs));
  const total = Math.max(0.001, Math.max(...spans.map((span) => span.startMs + span.durationMs)) - start);
  const labelWidth = 430, barWidth = 560, row = 18;
  const svg = h("svg", { width: labelWidth + barWidth + 40, height: ordered.length * row + 24, role: "img", "aria-label": "Waterfall of trace " + traceId });
  for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
    const x = labelWidth + fraction * barWidth;
    svg.append(h("line", { class: "grid", x1: x, x2: x, y1: 0, y2: ordered.length * row + 6 }),
      h("text", { x, y: ordered.length * row + 20, "text-anchor": "middle" }, (Math.round(total * fraction * 100) / 100) + " ms"));
  }
  ordered.forEach(({ span, depth }, i) => {
    const x = labelWidth + ((span.startMs - start) / total) * barWidth;
    const width = Math.max(1, (span.durationMs / total) * barWidth);
    svg.append(h("g", { class: "span" + (span.error ? " error" : ""), "data-span": span.name },
      h("text", { class: "label", x: 4 + depth * 12, y: i * row + 13 }, span.service + ": " + span.name),
      h("rect", { class: "bar" + (span.error ? " error" : ""), x, y: i * row + 3, width, height: row - 6, rx: 2 }),
      // The duration right of its bar, or left of it when the bar reaches the end.
      h("text", x + width > labelWidth + barWidth * 0.8
        ? { class: "label", x: x - 4, y: i * row + 13, "text-anchor": "end" }
        : { class: "label", x: x + width + 4, y: i * row + 13 },
        (Math.round(span.durationMs * 100) / 100) + " ms" + (span.error ? " \\u00b7 " + span.error : ""))));
  });
  fill($("waterfall"), h("h3", {}, "Trace " + traceId + " \\u00b7 " + answer.json.name + " \\u00b7 " + answer.json.durationMs + " ms"), svg);
}

// Each policy's decisions, read from the live counters.
const decisionNames = {
  "ratelimit.rejected": "rate limit rejected",
  "cache": "edge cache",
  "retries": "retries sent",
  "retry.refused": "retries refused by the budget",
  "bulkhead.shed": "shed by the bulkhead"
};
function renderDecisions() {
  const live = state.live;
  if (!live) return fill($("decisions")), fill($("transitions"));
  $("decisions-span").textContent = "last 5 minutes, every isolate";
  const cache = live.counters.filter((counter) => counter.name === "cache");
  const lookups = cache.filter((counter) => counter.label !== "BYPASS").reduce((sum, counter) => sum + counter.count, 0);
  const hits = cache.filter((counter) => counter.label === "HIT" || counter.label === "STALE").reduce((sum, counter) => sum + counter.count, 0);
  fill($("decisions"),
    h("tr", {}, ["decision", "of", "by", "count"].map((title) => h("th", {}, title))),
    live.counters.length === 0 ? [h("tr", {}, h("td", { colspan: 4 }, "None yet."))] : [],
    live.counters.map((counter) => h("tr", { "data-counter": counter.name + "|" + counter.label },
      h("td", {}, decisionNames[counter.name] || counter.name), h("td", {}, counter.label), h("td", {}, counter.from),
      h("td", { class: "num" }, counter.count))),
    lookups > 0 ? [h("tr", { "data-counter": "cache-hit-ratio" }, h("td", {}, "edge cache hit ratio"), h("td", {}, "HIT and STALE of lookups"), h("td", {}, "gateway"),
      h("td", { class: "num" }, percent(hits / lookups)))] : []);
  fill($("transitions"),
    h("tr", {}, ["when", "breaker", "from", "to", "in"].map((title) => h("th", {}, title))),
    live.transitions.length === 0 ? [h("tr", {}, h("td", { colspan: 5 }, "None in the last 5 minutes."))] : [],
    live.transitions.map((transition) => h("tr", { "data-transition": transition.upstream },
      h("td", {}, transition.at), h("td", {}, transition.upstream), h("td", { class: transition.from }, transition.from),
      h("td", { class: transition.to }, transition.to), h("td", {}, transition.worker))));
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
    const faults = split && split.faults && split.canary && split.faults[split.canary];
    $("split-faults").value = faults ? String(faults.abortPercent || 0) : "0";
  };
  service.onchange = showSplit;
  // Filled once, and on a change of service: a refresh never overwrites what the admin is typing.
  if (!service.dataset.filled) { service.dataset.filled = "1"; showSplit(); }
  fill($("splits"),
    h("tr", {}, ["service", "stable", "canary", "weight", "mirror", "faults", "rolled back"].map((title) => h("th", {}, title))),
    Object.entries(state.traffic).map(([name, split]) => h("tr", { "data-split": name },
      h("td", {}, name), h("td", {}, split.stable), h("td", {}, split.canary || ""), h("td", {}, split.weight + "%"),
      h("td", { class: "mirror" }, mirrorText(split, state.mirrors[name])),
      h("td", { class: "faults" }, Object.entries(split.faults || {}).map(([version, faults]) =>
        version + ": " + [faults.abortPercent ? faults.abortPercent + "% aborted" : "", faults.delayPercent ? faults.delayPercent + "% delayed " + (faults.delayMs || 1000) + " ms" : ""].filter(Boolean).join(", ")).join("; ")),
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
  // What the change answered replaces a failed refresh's notice, and stays.
  refreshFailed = false;
  if (answer.ok) say("Done: " + change.method + " " + change.path);
  else say(change.method + " " + change.path + " refused: " + problemText(answer) +
    ((answer.json && answer.json.errors) ? " " + answer.json.errors.map((e) => e.path.join(".") + ": " + e.message).join("; ") : ""), true);
  await load();
});

const splitPath = () => "/api/admin/traffic/" + encodeURIComponent($("split-service").value);
// A split's other settings (automatic rollback, outlier detection, mirroring) are kept; faults are as the form says.
const settingsOf = (service) => {
  const { rolledBack, faults, stable, canary, weight, ...settings } = state.traffic[service] || {};
  return settings;
};
$("set-split").addEventListener("click", () => {
  const body = { ...settingsOf($("split-service").value), stable: $("split-stable").value, weight: Number($("split-weight").value) };
  if ($("split-canary").value !== body.stable) body.canary = $("split-canary").value;
  else delete body.mirror;
  const abort = Number($("split-faults").value);
  if (body.canary && abort > 0) body.faults = { [body.canary]: { abortPercent: abort, abortStatus: 503 } };
  propose("PUT", splitPath(), body);
});
// The promoted canary is stable, with no canary: nothing to mirror to.
$("promote").addEventListener("click", () => {
  const { mirror, ...settings } = settingsOf($("split-service").value);
  propose("PUT", splitPath(), { ...settings, stable: $("split-canary").value, weight: 0 });
});
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

/** The asset at `request`'s path, or `undefined` (the gateway has checked the method, and answers 404 with a problem). */
export const serveConsole = (request: Request): Response | undefined => {
  const asset = assets[new URL(request.url).pathname]
  if (asset === undefined) return undefined
  return new Response(request.method === "HEAD" ? null : asset.body, {
    headers: { "content-type": asset.type, "cache-control": cacheable, ...securityHeaders }
  })
}
