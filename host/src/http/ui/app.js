// The Eddy console: plain ES modules, no build step. Every action goes
// through the host's public HTTP API. User data is only ever put into the
// page as text (textContent, never innerHTML). Tokens live in this tab's
// session storage and travel as Authorization headers, never in a URL.

const view = document.getElementById("view");
const statusLine = document.getElementById("status");

// ---------------------------------------------------------------- helpers

/** An element with attributes (`on*` become listeners) and children
 * (strings become text nodes). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function say(text, bad = false) {
  statusLine.textContent = text;
  statusLine.className = bad ? "bad" : "";
}

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

function when(ms) {
  return ms ? new Date(Number(ms)).toISOString().replace("T", " ").replace("Z", " UTC") : "";
}

const tokens = {
  get token() { return sessionStorage.getItem("eddy.token") || ""; },
  get admin() { return sessionStorage.getItem("eddy.admin") || ""; },
};

function showTokens(why) {
  const panel = document.getElementById("tokens");
  panel.hidden = false;
  if (why) document.getElementById("tokens-why").textContent = why;
  document.getElementById("token").value = tokens.token;
  document.getElementById("admin-token").value = tokens.admin;
}

document.getElementById("tokens-open").addEventListener("click", () => showTokens());
document.getElementById("tokens-save").addEventListener("click", () => {
  sessionStorage.setItem("eddy.token", document.getElementById("token").value.trim());
  sessionStorage.setItem("eddy.admin", document.getElementById("admin-token").value.trim());
  document.getElementById("tokens").hidden = true;
  say("tokens kept for this tab");
  route();
});
document.getElementById("tokens-forget").addEventListener("click", () => {
  sessionStorage.removeItem("eddy.token");
  sessionStorage.removeItem("eddy.admin");
  document.getElementById("token").value = "";
  document.getElementById("admin-token").value = "";
  say("tokens forgotten");
});

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** Calls the API. `admin` sends the admin token, otherwise the token (when
 * one is kept). JSON bodies are sent as JSON; Blobs as they are. */
async function api(path, { method = "GET", body, admin = false, text = false } = {}) {
  const headers = {};
  const token = admin ? tokens.admin : tokens.token;
  if (token) headers.Authorization = `Bearer ${token}`;
  let payload = body;
  if (body !== undefined && !(body instanceof Blob)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const r = await fetch(path, { method, headers, body: payload });
  const raw = await r.text();
  let parsed = raw;
  if (!text) {
    try { parsed = raw ? JSON.parse(raw) : null; } catch { parsed = raw; }
  }
  if (!r.ok) {
    const message = (parsed && parsed.error) || raw || r.statusText;
    if (r.status === 401 || r.status === 403) {
      showTokens(`${method} ${path} answered ${r.status}: ${message}. Enter the ${admin ? "admin token" : "token"}.`);
    }
    throw new ApiError(r.status, `${method} ${path}: ${r.status} ${message}`, parsed);
  }
  return parsed;
}

/** Follows an SSE route with fetch (so the token goes in a header, which
 * EventSource cannot send), reconnecting with Last-Event-ID. Returns a
 * function that stops it. */
function follow(path, onEvent, onState = () => {}) {
  const stop = new AbortController();
  let lastId = null;
  (async () => {
    while (!stop.signal.aborted) {
      try {
        const headers = { Accept: "text/event-stream" };
        if (tokens.token) headers.Authorization = `Bearer ${tokens.token}`;
        if (lastId) headers["Last-Event-ID"] = lastId;
        const r = await fetch(path, { headers, signal: stop.signal });
        if (!r.ok) throw new Error(`${path}: ${r.status}`);
        onState("live");
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const ev = { event: "message", data: "", id: null };
            for (const line of block.split("\n")) {
              if (line.startsWith(":")) continue;
              const at = line.indexOf(":");
              const field = at < 0 ? line : line.slice(0, at);
              const val = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
              if (field === "data") ev.data += (ev.data ? "\n" : "") + val;
              else if (field === "event") ev.event = val;
              else if (field === "id") ev.id = val;
            }
            if (ev.id) lastId = ev.id;
            if (ev.data) {
              let data = ev.data;
              try { data = JSON.parse(ev.data); } catch { /* text */ }
              onEvent({ ...ev, data });
            }
          }
        }
      } catch (e) {
        if (stop.signal.aborted) return;
        onState(`reconnecting (${e.message})`);
      }
      await new Promise((ok) => setTimeout(ok, 1000));
    }
  })();
  return () => stop.abort();
}

/** A small line chart of the last values. */
function sparkline(values, width = 160, height = 36) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", values
    .map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`)
    .join(" "));
  svg.append(line);
  return svg;
}

/** Prometheus text: {name: [{labels, value}]}. */
function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    (out[m[1]] ||= []).push({ labels, value: Number(m[4]) });
  }
  return out;
}

function sumOf(metrics, name, pipeline) {
  return (metrics[name] || [])
    .filter((s) => s.labels.pipeline === pipeline)
    .reduce((a, s) => a + s.value, 0);
}

/** Decodes a record's base64 value: JSON pretty-printed, UTF-8 text, or
 * the base64 itself when it is binary. */
function decodeValue(b64) {
  if (!b64) return "";
  try {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    try { return pretty(JSON.parse(text)); } catch { return text; }
  } catch {
    return `(binary, base64) ${b64}`;
  }
}

async function pipelineNames() {
  const v = await api("/v1/pipelines");
  return v.pipelines.map((p) => p.name);
}

function select(id, names, chosen) {
  return h("select", { id }, names.map((n) => h("option", { value: n, selected: n === chosen }, n)));
}

function table(headers, rows) {
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows));
}

/** A line diff of two texts (longest common subsequence). */
function lineDiff(a, b) {
  const x = a.split("\n");
  const y = b.split("\n");
  const n = x.length;
  const m = y.length;
  const lcs = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = h("div", { class: "diff" });
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) {
      out.append(h("div", {}, `  ${x[i]}`));
      i++; j++;
    } else if (j < m && (i >= n || lcs[i][j + 1] >= lcs[i + 1][j])) {
      out.append(h("div", { class: "diff-add" }, `+ ${y[j]}`));
      j++;
    } else {
      out.append(h("div", { class: "diff-del" }, `- ${x[i]}`));
      i++;
    }
  }
  return out;
}

// Whatever the current page keeps running (timers, streams), stopped when
// another page opens.
let cleanups = [];
function onLeave(f) { cleanups.push(f); }

// ------------------------------------------------------------------ pages

async function pipelinesPage() {
  const history = {};
  let previous = null;
  const body = h("div", {});
  const schedules = h("div", { id: "schedules" });
  view.append(h("h2", {}, "Pipelines"), body, schedules);
  const draw = async () => {
    const [list, metricsText, planned] = await Promise.all([
      api("/v1/pipelines"),
      api("/metrics", { text: true }).catch(() => ""),
      api("/v1/schedules"),
    ]);
    schedules.replaceChildren(...(planned.schedules.length ? [
      h("h2", {}, "Schedules"),
      table(["schedule", "pipeline", "key", "cadence", "next run", "last run"],
        planned.schedules.map((x) => h("tr", { class: "schedule" },
          h("td", {}, x.name), h("td", {}, x.pipeline), h("td", {}, x.key),
          h("td", {}, x.cron ?? `every ${x.every_ms} ms`),
          h("td", {}, x.here === false ? "on another host" : when(x.next_ms)),
          h("td", {}, x.last_run ? `${x.last_run.outcome} at ${when(x.last_run.started_ms || x.last_run.scheduled_ms)}` : "none yet")))),
    ] : []));
    const metrics = parseMetrics(metricsText);
    const now = Date.now();
    const cards = [];
    for (const p of list.pipelines) {
      const progress = await api(`/v1/pipelines/${encodeURIComponent(p.name)}`);
      const applied = sumOf(metrics, "eddy_events_applied_total", p.name);
      const batches = sumOf(metrics, "eddy_batch_duration_seconds_count", p.name);
      const batchSecs = sumOf(metrics, "eddy_batch_duration_seconds_sum", p.name);
      const dead = sumOf(metrics, "eddy_dead_letters_total", p.name);
      const before = previous && previous[p.name];
      const secs = before ? (now - before.at) / 1000 : 0;
      const rate = before && secs > 0 ? Math.max(0, (applied - before.applied) / secs) : 0;
      const latency = before && batches > before.batches
        ? ((batchSecs - before.batchSecs) / (batches - before.batches)) * 1000
        : (batches > 0 ? (batchSecs / batches) * 1000 : 0);
      const hist = (history[p.name] ||= { rate: [], lag: [] });
      hist.rate.push(rate);
      hist.lag.push(progress.lag);
      for (const k of ["rate", "lag"]) if (hist[k].length > 60) hist[k].shift();
      (previous ||= {})[p.name] = { at: now, applied, batches, batchSecs };
      cards.push(h("div", { class: "card", "data-pipeline": p.name },
        h("h2", {}, p.name, " ", h("span", { class: "muted" }, `topic ${p.topic}`),
          progress.paused ? h("span", { class: "bad" }, " (paused)") : ""),
        h("div", { class: "cols" },
          h("div", {},
            h("div", { class: "muted" }, `events/s: ${rate.toFixed(1)}`), sparkline(hist.rate),
            h("div", { class: "muted" }, `lag: ${progress.lag}`), sparkline(hist.lag)),
          h("div", {},
            h("div", {}, `events applied: ${applied}`),
            h("div", {}, `batch latency: ${latency.toFixed(2)} ms`),
            h("div", {}, "dead letters: ",
              h("a", { href: `#/dead-letters?pipeline=${encodeURIComponent(p.name)}` }, String(dead))),
            h("div", {}, `plugins: ${[p.aggregator, ...(p.handlers || [])].filter(Boolean).join(", ")}`)),
          table(["partition", "committed", "high watermark", "lag"],
            progress.partitions.map((r) => h("tr", {},
              h("td", { class: "num" }, r.partition),
              h("td", { class: "num" }, r.committed_offset ?? ""),
              h("td", { class: "num" }, r.high_watermark ?? ""),
              h("td", { class: "num" }, r.lag ?? "")))))));
    }
    body.replaceChildren(...cards);
  };
  await draw();
  const timer = setInterval(() => draw().catch((e) => say(e.message, true)), 2000);
  onLeave(() => clearInterval(timer));
}

async function statePage(params) {
  const names = await pipelineNames();
  const pipeline = params.get("pipeline") || names[0] || "";
  const pick = select("state-pipeline", names, pipeline);
  const key = h("input", { id: "state-key", placeholder: "key", value: params.get("key") || "" });
  const limit = h("input", { id: "latest-limit", type: "number", min: 1, value: 20, class: "narrow" });
  const found = h("div", { id: "state-found" });
  const latest = h("div", { id: "state-latest" });
  const changes = h("div", { id: "state-changes" });
  let unfollow = null;
  const stopFollowing = () => { if (unfollow) unfollow(); unfollow = null; };
  onLeave(stopFollowing);

  const show = (meta) => {
    found.replaceChildren(h("div", { class: "card" },
      table(["key", "partition", "change", "updated at", "plugin version"], [h("tr", {},
        h("td", { class: "state-key" }, key.value),
        h("td", { class: "num" }, meta.partition ?? ""),
        h("td", { class: "num" }, meta.seq ?? ""),
        h("td", {}, when(meta.updated_at_ms)),
        h("td", {}, meta.plugin_version ?? ""))]),
      h("pre", { id: "state-json" }, pretty(meta.state))));
  };
  const statePath = () => `/v1/pipelines/${encodeURIComponent(pick.value)}/state/${encodeURIComponent(key.value)}?meta=true`;
  const lookUp = async () => {
    stopFollowing();
    changes.replaceChildren();
    try {
      show(await api(statePath()));
      say(`found ${key.value}`);
    } catch (e) {
      found.replaceChildren(h("p", { class: "bad" }, e.message));
    }
  };
  const follow1 = () => {
    stopFollowing();
    const list = h("ol", { id: "state-change-list", reversed: true });
    const live = h("span", { id: "state-live", class: "muted" }, "connecting");
    changes.replaceChildren(h("h2", {}, "Changes, live ", live), list);
    const path = `/v1/pipelines/${encodeURIComponent(pick.value)}/events?key=${encodeURIComponent(key.value)}`;
    // One key's stream: each event's data is the key's state.
    unfollow = follow(path, (ev) => {
      if (ev.event !== "message") return;
      const state = ev.data;
      list.prepend(h("li", {}, h("span", { class: "muted" }, `event ${ev.id ?? ""}`), h("pre", {}, pretty(state))));
      // The change's metadata (change number, plugin version) from the store.
      api(statePath()).then(show, () => show({ state }));
    }, (s) => { live.textContent = s; });
  };
  const loadLatest = async () => {
    const v = await api(`/v1/pipelines/${encodeURIComponent(pick.value)}/latest?meta=true&limit=${Number(limit.value) || 20}`);
    const rows = v.map((r) => h("tr", {},
      h("td", {}, h("a", { href: "#", class: "latest-key", onclick: (e) => { e.preventDefault(); key.value = r.key; lookUp(); } }, r.key)),
      h("td", { class: "num" }, `${r.partition}/${r.seq}`),
      h("td", {}, when(r.stamp_us / 1000)),
      h("td", {}, h("pre", {}, pretty(r.state)))));
    latest.replaceChildren(h("h2", {}, "Latest"), table(["key", "partition/change", "updated at", "state"], rows));
  };
  view.append(h("h2", {}, "State"),
    h("div", { class: "row" },
      h("label", {}, "pipeline", pick),
      h("label", {}, "key", key),
      h("button", { type: "button", id: "state-lookup", onclick: lookUp }, "Look up"),
      h("button", { type: "button", id: "state-follow", class: "plain", onclick: follow1 }, "Follow live"),
      h("label", {}, "latest", limit),
      h("button", { type: "button", id: "state-latest-load", class: "plain", onclick: () => loadLatest().catch((e) => say(e.message, true)) }, "Latest")),
    found, changes, latest);
  if (key.value) await lookUp();
}

async function deadLettersPage(params) {
  const names = await pipelineNames();
  const pick = select("dl-pipeline", names, params.get("pipeline") || names[0]);
  const filters = {};
  for (const f of ["stage", "error_class", "key", "plugin"]) {
    filters[f] = h("input", { id: `dl-${f}`, placeholder: f, value: params.get(f) || "" });
  }
  const list = h("div", { id: "dl-list" });
  const query = () => {
    const q = new URLSearchParams({ limit: "100" });
    for (const [k, el] of Object.entries(filters)) if (el.value) q.set(k, el.value);
    return q;
  };
  const base = () => `/v1/pipelines/${encodeURIComponent(pick.value)}/dead-letters`;
  const load = async () => {
    const v = await api(`${base()}?${query()}`);
    const cards = v.dead_letters.map((d) => {
      const value = decodeValue(d.value_base64);
      const corrected = h("textarea", { class: "dl-value", "aria-label": "value to replay" });
      corrected.value = value;
      const replay = async () => {
        let body;
        if (corrected.value !== value) {
          try { body = { value: JSON.parse(corrected.value) }; } catch (e) {
            say(`the corrected value is not JSON: ${e.message}`, true);
            return;
          }
        }
        const r = await api(`${base()}/${d.id}/replay`, { method: "POST", body });
        say(`dead letter ${d.id} replayed: ${pretty(r)}`);
        await load();
      };
      const drop = async () => {
        await api(`${base()}/${d.id}`, { method: "DELETE" });
        say(`dead letter ${d.id} deleted`);
        await load();
      };
      return h("div", { class: "card dead-letter", "data-id": d.id },
        h("div", {}, h("strong", {}, `#${d.id} `), h("span", { class: "dl-key" }, d.key ?? "(no key)"),
          h("span", { class: "muted" }, ` ${d.topic}/${d.partition}@${d.offset} · ${d.stage} · ${d.error_class} · ${d.plugin ?? ""} ${d.plugin_version ?? ""} · attempts ${d.attempts} · ${when(d.dead_lettered_at_ms)}`)),
        h("pre", { class: "bad dl-error" }, d.error),
        d.headers && d.headers.length ? h("div", { class: "muted" }, `headers: ${d.headers.map(([k, v]) => `${k}=${v}`).join(", ")}`) : "",
        h("label", {}, "value (edit to replay a corrected one)", corrected),
        h("div", { class: "row" },
          h("button", { type: "button", class: "dl-replay", onclick: () => replay().catch((e) => say(e.message, true)) }, "Replay"),
          h("button", { type: "button", class: "danger dl-delete", onclick: () => drop().catch((e) => say(e.message, true)) }, "Delete")));
    });
    list.replaceChildren(cards.length ? h("div", {}, ...cards) : h("p", { class: "muted" }, "no dead letters match"));
  };
  const replayAll = async () => {
    const body = {};
    for (const [k, el] of Object.entries(filters)) if (el.value) body[k] = el.value;
    const r = await api(`${base()}/replay`, { method: "POST", body });
    say(`replayed ${r.replayed}`);
    await load();
  };
  view.append(h("h2", {}, "Dead letters"),
    h("div", { class: "row" }, h("label", {}, "pipeline", pick),
      ...Object.entries(filters).map(([k, el]) => h("label", {}, k.replace("_", " "), el)),
      h("button", { type: "button", id: "dl-load", onclick: () => load().catch((e) => say(e.message, true)) }, "List"),
      h("button", { type: "button", id: "dl-replay-all", class: "plain", onclick: () => replayAll().catch((e) => say(e.message, true)) }, "Replay all matching")),
    list);
  await load();
}

async function pluginsPage() {
  const names = await pipelineNames();
  const body = h("div", {});
  const shadowOut = h("div", { id: "shadow-result" });
  view.append(h("h2", {}, "Plugins"), body, shadowOut);
  const load = async () => {
    const v = await api("/v1/plugins");
    const list = Array.isArray(v) ? v : v.plugins;
    body.replaceChildren(...list.map((p) => {
      const file = h("input", { type: "file", class: "plugin-file", accept: ".wasm" });
      const pipeline = select(null, names, names[0]);
      const limit = h("input", { type: "number", min: 1, value: 1000, class: "narrow" });
      const deploy = async () => {
        if (!file.files[0]) { say("choose a component file first", true); return; }
        const r = await api(`/v1/plugins/${encodeURIComponent(p.name)}`, { method: "PUT", body: file.files[0], admin: true });
        say(`deployed ${p.name}: ${r.version ?? pretty(r)}`);
        await load();
      };
      const rollback = async () => {
        const r = await api(`/v1/plugins/${encodeURIComponent(p.name)}/rollback`, { method: "POST", admin: true });
        say(`rolled back ${p.name}: ${r.version ?? pretty(r)}`);
        await load();
      };
      const shadow = async () => {
        if (!file.files[0]) { say("choose a candidate component first", true); return; }
        const q = new URLSearchParams({ pipeline: pipeline.value, limit: limit.value });
        const r = await api(`/v1/plugins/${encodeURIComponent(p.name)}/shadow?${q}`, { method: "POST", body: file.files[0], admin: true });
        shadowOut.replaceChildren(h("h2", {}, `Shadow run of ${p.name} on ${r.pipeline}`),
          h("p", {}, `${r.events} events, ${r.keys} keys: ${r.changed_count} states differ, ${r.emits_differ_count} emits differ; failures: candidate ${r.candidate_failures}, running ${r.current_failures}`),
          ...r.changed.map((c) => h("div", { class: "card" }, h("strong", {}, c.key),
            lineDiff(pretty(c.before), pretty(c.after)))),
          r.failures && r.failures.length ? h("pre", { class: "bad" }, pretty(r.failures)) : "");
      };
      return h("div", { class: "card plugin", "data-plugin": p.name },
        h("h2", {}, p.name, " ", h("span", { class: "muted" }, p.kind)),
        table(["version", "declared", "loaded at", "from", "status", "previous"], [h("tr", {},
          h("td", { class: "plugin-version" }, p.version),
          h("td", {}, p.declared_version ?? ""),
          h("td", {}, when(p.loaded_at_ms)),
          h("td", {}, p.source),
          h("td", { class: p.last_error ? "bad" : "good" }, p.status),
          h("td", { class: "plugin-previous" }, p.previous_version ?? ""))]),
        p.last_error ? h("pre", { class: "bad" }, p.last_error) : "",
        h("div", { class: "row" },
          h("label", {}, "component", file),
          h("button", { type: "button", class: "plugin-deploy", onclick: () => deploy().catch((e) => say(e.message, true)) }, "Deploy"),
          h("button", { type: "button", class: "plain plugin-rollback", disabled: !p.previous_version, onclick: () => rollback().catch((e) => say(e.message, true)) }, "Roll back"),
          h("label", {}, "shadow on", pipeline),
          h("label", {}, "events", limit),
          h("button", { type: "button", class: "plain plugin-shadow", onclick: () => shadow().catch((e) => say(e.message, true)) }, "Shadow run")));
    }));
  };
  await load();
}

async function schemasPage() {
  const subjects = await api("/registry/subjects");
  const pick = select("schema-subject", subjects, subjects[0]);
  const out = h("div", { id: "schema-out" });
  const load = async () => {
    if (!pick.value) { out.replaceChildren(h("p", { class: "muted" }, "no subjects registered")); return; }
    const s = encodeURIComponent(pick.value);
    const versions = await api(`/registry/subjects/${s}/versions`);
    const level = await api(`/registry/config/${s}?defaultToGlobal=true`).catch(() => api("/registry/config"));
    const texts = {};
    for (const v of versions) {
      const r = await api(`/registry/subjects/${s}/versions/${v}`);
      let text = r.schema;
      try { text = pretty(JSON.parse(r.schema)); } catch { /* not JSON (Protobuf) */ }
      texts[v] = { text, id: r.id, type: r.schemaType || "AVRO" };
    }
    const a = select("schema-a", versions.map(String), String(versions[Math.max(0, versions.length - 2)]));
    const b = select("schema-b", versions.map(String), String(versions[versions.length - 1]));
    const diff = h("div", {});
    const compare = () => diff.replaceChildren(lineDiff(texts[a.value].text, texts[b.value].text));
    a.addEventListener("change", compare);
    b.addEventListener("change", compare);
    out.replaceChildren(
      h("p", {}, `compatibility: ${level.compatibilityLevel ?? level.compatibility ?? ""} · versions: ${versions.join(", ")}`),
      table(["version", "id", "type"], versions.map((v) => h("tr", {},
        h("td", { class: "num" }, v), h("td", { class: "num" }, texts[v].id), h("td", {}, texts[v].type)))),
      h("div", { class: "row" }, h("label", {}, "from", a), h("label", {}, "to", b)),
      diff);
    compare();
  };
  pick.addEventListener("change", () => load().catch((e) => say(e.message, true)));
  view.append(h("h2", {}, "Schemas"), h("div", { class: "row" }, h("label", {}, "subject", pick)), out);
  await load();
}

async function clusterPage() {
  let v;
  try {
    v = await api("/v1/cluster");
  } catch (e) {
    if (e.status === 404) {
      view.append(h("h2", {}, "Cluster"), h("p", { class: "muted" }, "This host runs alone ([cluster] is not set)."));
      return;
    }
    throw e;
  }
  view.append(h("h2", {}, "Cluster"),
    h("p", {}, `this host: ${v.host}`, v.conflict ? h("span", { class: "bad" }, ` conflict: ${v.conflict}`) : ""),
    table(["host", "address", "alive", "seen", "partitions owned"], v.hosts.map((x) => h("tr", {},
      h("td", {}, x.host), h("td", {}, x.advertise ?? ""),
      h("td", { class: x.alive ? "good" : "bad" }, x.alive ? "yes" : "no"),
      h("td", {}, `${Math.round(x.seen_ms_ago / 1000)} s ago`),
      h("td", {}, h("pre", {}, pretty(x.pipelines)))))),
    h("h2", {}, "Here"), h("pre", {}, pretty(v.pipelines)));
}

// ----------------------------------------------------------------- router

const pages = {
  pipelines: pipelinesPage,
  state: statePage,
  "dead-letters": deadLettersPage,
  plugins: pluginsPage,
  schemas: schemasPage,
  cluster: clusterPage,
};

async function route() {
  for (const f of cleanups) f();
  cleanups = [];
  const [name, query] = (location.hash.replace(/^#\/?/, "") || "pipelines").split("?");
  const page = pages[name] || pipelinesPage;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("current", a.dataset.page === name);
  }
  view.replaceChildren();
  try {
    await page(new URLSearchParams(query || ""));
  } catch (e) {
    view.append(h("p", { class: "bad" }, e.message));
    say(e.message, true);
  }
}

window.addEventListener("hashchange", route);
route();
