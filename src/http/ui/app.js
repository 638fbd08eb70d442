// semroute's debugging page. Every value shown comes from the service's own endpoints
// (/classify, /admin/*) and is written as text, never as HTML: prompts are the clients'.
"use strict";

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "style") Object.assign(node.style, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const fixed = (x, digits = 3) => (typeof x === "number" ? x.toFixed(digits) : "–");

// ---- keys and requests -------------------------------------------------------------

const keys = {
  admin: sessionStorage.getItem("semroute.admin-key") || "",
  client: sessionStorage.getItem("semroute.client-key") || "",
};

function problem(text) {
  const p = $("problem");
  p.hidden = !text;
  p.textContent = text || "";
}

/** Calls the service; resolves to the JSON answer, or throws an Error with its message. */
async function api(method, path, body) {
  const headers = {};
  const key = path.startsWith("/admin/") ? keys.admin : keys.client;
  if (key) headers.authorization = "Bearer " + key;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    const message = (answer && answer.error && answer.error.message) || response.statusText;
    const error = new Error(`${method} ${path}: ${response.status} ${message}`);
    error.status = response.status;
    if (response.status === 401 || response.status === 403) $("keys").open = true;
    throw error;
  }
  return answer;
}

// ---- the config in service ---------------------------------------------------------

async function loadConfig() {
  try {
    const c = await api("GET", "/admin/config");
    $("config").textContent =
      `${c.file || "(no file)"} · sha256 ${c.hash.slice(0, 12)} · generation ${c.generation}` +
      ` · loaded ${c.loaded_at} · ${c.routes} routes, ${c.backends} backends` +
      (c.ready ? "" : " · model loading");
  } catch (e) {
    $("config").textContent = e.message;
  }
}

// ---- try a prompt ------------------------------------------------------------------

/** The conversation box's lines as OpenAI messages; a line without a role continues the
 * message before it. */
function parseConversation(text) {
  const messages = [];
  for (const line of text.split("\n")) {
    const m = line.match(/^\s*(user|assistant|system|tool)\s*:\s?(.*)$/i);
    if (m) messages.push({ role: m[1].toLowerCase(), content: m[2] });
    else if (messages.length) messages[messages.length - 1].content += "\n" + line;
    else if (line.trim()) messages.push({ role: "user", content: line });
  }
  return messages;
}

async function classify(event) {
  event.preventDefault();
  const text = $("prompt").value;
  const chat = document.querySelector("input[name=mode]:checked").value === "chat";
  const body = chat ? { messages: parseConversation(text) } : { text };
  const button = $("classify");
  button.disabled = true;
  const started = performance.now();
  try {
    const answer = await api("POST", "/classify", body);
    const ms = performance.now() - started;
    $("roundtrip").textContent = `answered in ${ms.toFixed(1)} ms`;
    showDecision(answer);
    problem("");
    setTimeout(loadRecent, 300);
  } catch (e) {
    problem(e.message);
  } finally {
    button.disabled = false;
  }
}

function fact(name, value) {
  return el("div", {}, el("dt", {}, name), el("dd", {}, value));
}

function showDecision(d) {
  $("decision").hidden = false;
  $("decision-route").textContent = d.route === null ? "(none)" : d.route;
  $("decision-matched").textContent = d.matched_by;
  $("decision-ambiguous").hidden = !d.ambiguous;
  $("decision-facts").replaceChildren(
    fact("score", fixed(d.score)),
    fact("threshold", fixed(d.threshold)),
    fact("margin", fixed(d.margin)),
    fact("tokens", d.tokens),
    fact("classified in", `${(d.timing_us.total / 1000).toFixed(2)} ms`),
  );
  const overrides = d.overrides.length
    ? [el("h3", {}, "Overrides that fired"),
      el("ul", {}, d.overrides.map((o) => el("li", {}, `${o.kind} `, el("code", {}, o.rule), ` → ${o.route}`)))]
    : [];
  $("decision-overrides").replaceChildren(...overrides);
  $("decision-conversation").replaceChildren(...conversationView(d.conversation));
  $("candidates").replaceChildren(...d.candidates.map(candidateView));
}

function conversationView(c) {
  if (!c) return [];
  const alone = c.without_context;
  return [
    el("h3", {}, "Conversation"),
    el("dl", { class: "facts" },
      fact("previous route", c.previous_route === null ? "(none)" : c.previous_route),
      fact("outcome", c.outcome),
      fact("last message alone", `${alone.route === null ? "(none)" : alone.route} (${alone.matched_by}, ${fixed(alone.score)})`),
      fact("turns", `${c.user_turns} user / ${c.messages} messages`)),
    el("ul", {}, c.context.map((s) => el("li", {}, `${s.route}: ${(s.probability * 100).toFixed(1)}%`))),
  ];
}

/** A score in [-1, 1] as a share of the bar (scores below 0 are an empty bar). */
const share = (x) => `${Math.max(0, Math.min(1, x)) * 100}%`;

function candidateView(c) {
  return el("li", { "data-route": c.route },
    el("div", { class: "candidate-head" },
      el("span", { class: "name", title: c.route }, c.route),
      el("div", { class: "bar", title: `score ${fixed(c.score)}, threshold ${fixed(c.threshold)}` },
        el("div", { class: c.score >= c.threshold ? "fill above" : "fill", style: { width: share(c.score) } }),
        el("div", { class: "threshold", style: { left: share(c.threshold) } })),
      el("span", { class: "num" }, `${fixed(c.score)} / ${fixed(c.threshold, 2)}`)),
    el("ul", { class: "neighbors" },
      c.neighbors.map((n) => el("li", {}, `${fixed(n.similarity)}  `, n.utterance))));
}

// ---- routes ------------------------------------------------------------------------

let routes = [];

async function loadRoutes() {
  try {
    const answer = await api("GET", "/admin/routes");
    routes = answer.routes;
  } catch (e) {
    $("routes").replaceChildren(el("p", { class: "muted" }, e.message));
    return;
  }
  $("routes-count").textContent = `(${routes.length})`;
  $("routes").replaceChildren(...routes.map(routeView));
  const filter = $("filter-route");
  const chosen = filter.value;
  filter.replaceChildren(el("option", { value: "" }, "any"), el("option", { value: "-" }, "(none)"),
    ...routes.map((r) => el("option", { value: r.name }, r.name)));
  filter.value = chosen;
  const edit = $("whatif-route");
  const editing = edit.value;
  edit.replaceChildren(...routes.map((r) => el("option", { value: r.name }, r.name)));
  if (editing) edit.value = editing;
  fillWhatIf();
}

function routeView(r) {
  const meta = [
    `threshold ${fixed(r.threshold, 2)}`,
    r.targets.length ? `targets ${r.targets.join(", ")} (${r.strategy})` : "no targets",
    r.data_class ? `data class ${r.data_class}` : null,
  ].filter(Boolean).join(" · ");
  return el("details", { "data-route": r.name },
    el("summary", {}, el("strong", {}, r.name), ` · ${r.utterances.length} utterances`,
      el("button", { type: "button", onclick: (e) => { e.preventDefault(); editRoute(r.name); } }, "what if…")),
    r.description ? el("div", { class: "meta" }, r.description) : null,
    el("div", { class: "meta" }, meta),
    r.keywords.length ? el("div", { class: "meta" }, "keywords: ", r.keywords.map((k) => el("code", {}, k)), "") : null,
    r.patterns.length ? el("div", { class: "meta" }, "patterns: ", r.patterns.map((p) => el("code", {}, p))) : null,
    el("ul", {}, r.utterances.map((u) => el("li", {}, u))));
}

// ---- recent decisions --------------------------------------------------------------

async function loadRecent() {
  const params = new URLSearchParams({ limit: "100" });
  if ($("filter-route").value) params.set("route", $("filter-route").value);
  if ($("filter-matched").value) params.set("matched_by", $("filter-matched").value);
  let answer;
  try {
    answer = await api("GET", `/admin/decisions?${params}`);
  } catch (e) {
    $("recent-note").textContent = e.message;
    return;
  }
  $("recent-note").textContent = answer.log_prompts
    ? `${answer.decisions.length} shown, newest first`
    : "Recent decisions are kept only with log_prompts: true in the config.";
  $("recent").tBodies[0].replaceChildren(...answer.decisions.map(decisionRow));
}

function promptText(p) {
  if (p === undefined || p === null) return "";
  if (typeof p === "string") return p;
  const users = p.filter((m) => m.role === "user");
  const last = users.length ? users[users.length - 1] : p[p.length - 1];
  return last ? `${p.length > 1 ? `[${p.length} messages] ` : ""}${last.content}` : "";
}

function decisionRow(d) {
  const time = d.ts.slice(11, 23);
  return el("tr", {},
    el("td", { title: `${d.ts} · ${d.request_id}` }, time),
    el("td", {}, d.endpoint),
    el("td", {}, d.route === null ? "(none)" : d.route),
    el("td", {}, d.matched_by || ""),
    el("td", { class: "num" }, fixed(d.score)),
    el("td", { class: "num" }, fixed(d.margin)),
    el("td", {}, d.backend || ""),
    el("td", { class: "num" }, d.status === undefined ? "" : d.status),
    el("td", { class: "num" }, d.latency_ms === undefined ? "" : fixed(d.latency_ms, 1)),
    el("td", { class: "prompt" }, promptText(d.prompt)));
}

// ---- backends ----------------------------------------------------------------------

const stateBadge = { closed: "good", open: "bad", cooling: "warn", half_open: "warn" };

async function loadBackends() {
  let answer;
  try {
    answer = await api("GET", "/admin/backends");
  } catch (e) {
    $("backends-note").textContent = e.message;
    return;
  }
  $("backends-note").textContent = answer.backends.length ? "" : "No backends configured: /classify only.";
  $("backends").tBodies[0].replaceChildren(...answer.backends.map((b) => el("tr", { "data-backend": b.name },
    el("td", {}, b.name),
    el("td", {}, b.model),
    el("td", {}, el("span", { class: `badge ${stateBadge[b.state] || ""}` }, b.state.replace("_", "-"))),
    el("td", { class: "num" }, b.failures),
    el("td", { class: "num" }, b.cooling_ms === null ? "" : `${(b.cooling_ms / 1000).toFixed(1)} s`),
    el("td", { class: "num" }, b.max_concurrent === null ? b.in_flight : `${b.in_flight} / ${b.max_concurrent}`),
    el("td", { class: "num" }, b.latency_ms === null ? "" : `${fixed(b.latency_ms, 0)} ms`))));
}

// ---- what if -----------------------------------------------------------------------

function editRoute(name) {
  $("whatif-route").value = name;
  fillWhatIf();
  $("whatif-section").scrollIntoView({ behavior: "smooth" });
}

function fillWhatIf() {
  const route = routes.find((r) => r.name === $("whatif-route").value);
  if (!route) return;
  $("whatif-threshold").value = route.threshold.toFixed(2);
  $("whatif-utterances").value = route.utterances.join("\n");
}

const lines = (text) => text.split("\n").map((l) => l.trim()).filter(Boolean);

async function runWhatIf(event) {
  event.preventDefault();
  const name = $("whatif-route").value;
  const route = routes.find((r) => r.name === name);
  if (!route) return;
  const edit = { route: name };
  const utterances = lines($("whatif-utterances").value);
  if (utterances.join("\n") !== route.utterances.join("\n")) edit.utterances = utterances;
  const threshold = parseFloat($("whatif-threshold").value);
  if (!Number.isNaN(threshold) && threshold.toFixed(2) !== route.threshold.toFixed(2)) edit.threshold = threshold;
  const body = { edits: [edit] };
  const prompts = lines($("whatif-prompts").value);
  if (prompts.length) body.prompts = prompts;
  const button = $("whatif-run");
  button.disabled = true;
  $("whatif-summary").textContent = "trying…";
  try {
    const a = await api("POST", "/admin/whatif", body);
    $("whatif-summary").textContent =
      `${a.prompts} prompts tried: ${a.moved.length} would move, ${a.unchanged} unchanged` +
      ` (${a.embedded} new utterances embedded, ${a.ms.toFixed(0)} ms)` +
      (a.prompts ? "" : " · no recent prompts: give some, or turn on log_prompts");
    const side = (s) => `${s.route === null ? "(none)" : s.route} (${s.matched_by}${s.score === null ? "" : `, ${fixed(s.score)}`})`;
    $("whatif-moved").hidden = a.moved.length === 0;
    $("whatif-moved").tBodies[0].replaceChildren(...a.moved.map((m) => el("tr", {},
      el("td", { class: "prompt" }, m.text), el("td", {}, side(m.from)), el("td", {}, "→"), el("td", {}, side(m.to)))));
  } catch (e) {
    $("whatif-summary").textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

// ---- shadow ------------------------------------------------------------------------

async function loadShadow() {
  let s;
  try {
    s = await api("GET", "/admin/shadow");
  } catch (e) {
    const text = e.status === 404 ? "No shadow config: start with `semroute serve --shadow candidate.yaml` to compare one with live traffic." : e.message;
    $("shadow").replaceChildren(el("p", { class: "muted" }, text));
    return;
  }
  const agreement = s.agreement === null ? "–" : `${(s.agreement * 100).toFixed(1)}%`;
  const most = Math.max(1, ...s.scores.map((b) => b.count));
  $("shadow").replaceChildren(
    el("dl", { class: "facts" }, fact("candidate", s.candidate), fact("agreement", agreement),
      fact("compared", s.compared), fact("skipped", s.skipped)),
    el("h3", {}, "Live → candidate"),
    el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, el("th", {}, "live"), el("th", {}, "candidate"), el("th", {}, "prompts"), el("th", {}, "examples"))),
      el("tbody", {}, s.confusion.map((c) => el("tr", {}, el("td", {}, c.live), el("td", {}, c.candidate),
        el("td", { class: "num" }, c.count), el("td", { class: "prompt" }, c.examples.join(" · ")))))),
    el("h3", {}, "Candidate's best score"),
    el("div", { class: "histogram" }, s.scores.map((b) => el("div", {
      title: `${b.from.toFixed(1)} to ${b.to.toFixed(1)}: ${b.count}`,
      style: { height: `${(b.count / most) * 100}%` },
    }))));
}

// ---- start -------------------------------------------------------------------------

function start() {
  $("admin-key").value = keys.admin;
  $("client-key").value = keys.client;
  $("save-keys").addEventListener("click", () => {
    keys.admin = $("admin-key").value.trim();
    keys.client = $("client-key").value.trim();
    sessionStorage.setItem("semroute.admin-key", keys.admin);
    sessionStorage.setItem("semroute.client-key", keys.client);
    problem("");
    refreshAll();
  });
  $("classify-form").addEventListener("submit", classify);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("classify-form").requestSubmit();
  });
  $("refresh-recent").addEventListener("click", loadRecent);
  $("filter-route").addEventListener("change", loadRecent);
  $("filter-matched").addEventListener("change", loadRecent);
  $("whatif-route").addEventListener("change", fillWhatIf);
  $("whatif-form").addEventListener("submit", runWhatIf);
  // The mark says when everything the page shows first is on screen.
  refreshAll().then(() => performance.mark("semroute-ready"));
  setInterval(loadBackends, 2000);
  setInterval(loadShadow, 5000);
}

function refreshAll() {
  return Promise.all([loadConfig(), loadRoutes(), loadRecent(), loadBackends(), loadShadow()]);
}

start();
