// app.js — the prefixd web console: four panes over the server's public API
// (tasks, playground, fine-tuning with live loss charts, load). Plain ES
// module, no framework; charts by uPlot (a global from uPlot.iife.min.js,
// absent when the binary was built without it: the page then shows numbers
// only). The API key the user types is kept in sessionStorage and sent as a
// bearer token; the page itself holds none.

const $ = (sel, root = document) => root.querySelector(sel);
const KEY = "prefixd.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

// ---- API --------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(`${status}: ${message}`); this.status = status; }
}

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(method, path, { json, body, headers, signal } = {}) {
  const h = authHeaders(headers);
  if (json !== undefined) { h["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  const r = await fetch(path, { method, headers: h, body, signal });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!r.ok) throw new ApiError(r.status, data?.error?.message ?? (text || r.statusText));
  return data;
}

function setStatus(id, text, isError = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function fmtBytes(n) {
  if (n == null) return "";
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}
const fmtTime = (s) => (s ? new Date(s * 1000).toLocaleString() : "");

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

// ---- /metrics -----------------------------------------------------------------

// Prometheus text into [{name, labels, value}].
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const l of m[3].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g))
      labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

function sumOf(samples, name, filter = () => true) {
  let s = 0, found = false;
  for (const x of samples) if (x.name === name && filter(x.labels)) { s += x.value; found = true; }
  return found ? s : null;
}

// A cumulative histogram summed over its labels but le: Map le -> count.
function buckets(samples, base) {
  const byLe = new Map();
  for (const x of samples) if (x.name === `${base}_bucket`) {
    const le = x.labels.le === "+Inf" ? Infinity : Number(x.labels.le);
    byLe.set(le, (byLe.get(le) ?? 0) + x.value);
  }
  return byLe;
}

// The q-quantile of the observations between two snapshots of buckets()
// (older may be null: since start), linearly interpolated within the
// bucket as Prometheus' histogram_quantile does; null without observations.
function quantile(newer, older, q) {
  const byLe = new Map([...newer].map(([le, c]) => [le, c - (older?.get(le) ?? 0)]));
  const les = [...byLe.keys()].sort((a, b) => a - b);
  const total = byLe.get(Infinity) ?? 0;
  if (!total) return null;
  const rank = q * total;
  let prevLe = 0, prevCum = 0;
  for (const le of les) {
    const cum = byLe.get(le);
    if (cum >= rank) {
      if (le === Infinity) return prevLe;
      return prevLe + (le - prevLe) * (cum > prevCum ? (rank - prevCum) / (cum - prevCum) : 1);
    }
    prevLe = le; prevCum = cum;
  }
  return prevLe;
}

async function fetchMetrics() {
  const r = await fetch("/metrics");
  if (!r.ok) throw new ApiError(r.status, "GET /metrics failed");
  return parseMetrics(await r.text());
}

// ---- charts ----------------------------------------------------------------------

const haveCharts = typeof globalThis.uPlot === "function";

function makeChart(el, series, { height = 160, xTime = true, xLabel } = {}) {
  if (!haveCharts) { el.textContent = "charts unavailable: this build has no uPlot (make deps)"; return null; }
  const colors = ["#2f6fde", "#e07b24", "#1b8a4a", "#a23bc4"];
  const opts = {
    width: Math.max(300, el.clientWidth - 4), height,
    scales: { x: { time: xTime } },
    axes: [xTime ? {} : { label: xLabel, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] }, {}],
    series: [{ label: xLabel ?? "time" }, ...series.map((s, i) => ({
      label: s.label ?? s, stroke: colors[i % colors.length], width: 2, spanGaps: true,
      points: { show: s.points ?? false, size: 5 },
    }))],
  };
  return new globalThis.uPlot(opts, [[], ...series.map(() => [])], el);
}

// ---- health and models -------------------------------------------------------------

let baseModel = "";

async function refreshHealth() {
  const pill = $("#health");
  try {
    const r = await fetch("/health");
    const h = await r.json();
    pill.textContent = h.status === "ok" ? `ready · ${h.model}` : h.status;
    pill.className = `pill ${h.status === "ok" ? "ok" : "bad"}`;
    if (h.model) baseModel = h.model;
  } catch {
    pill.textContent = "unreachable";
    pill.className = "pill bad";
  }
}

async function refreshModels() {
  const list = await api("GET", "/v1/models");
  for (const sel of document.querySelectorAll(".model-select")) {
    const keep = sel.value;
    sel.replaceChildren();
    if (sel.dataset.optional) sel.add(new Option("— none —", ""));
    for (const m of list.data) sel.add(new Option(m.parent ? m.id : `${m.id} (base)`, m.id));
    if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
  }
}

// ---- tasks ---------------------------------------------------------------------------

async function refreshTasks() {
  try {
    const [list, samples] = await Promise.all([api("GET", "/v1/prefixes"), fetchMetrics()]);
    const tbody = $("#tasks-table tbody");
    tbody.replaceChildren();
    for (const p of list.data) {
      const tr = document.createElement("tr");
      tr.dataset.task = p.task;
      const byTask = (name) => sumOf(samples, name, (l) => l.task === p.task) ?? 0;
      cell(tr, p.task, "task");
      cell(tr, p.source);
      cell(tr, p.num_virtual_tokens, "num");
      cell(tr, p.has_bos ? "yes" : "no");
      cell(tr, fmtBytes(p.bytes), "num");
      cell(tr, p.base_fingerprint, "mono").title = `base model ${baseModel}`;
      cell(tr, p.created_at);
      cell(tr, p.last_used_at ? fmtTime(p.last_used_at) : "never");
      cell(tr, p.requests, "num");
      cell(tr, p.resident ? "yes" : "no");
      cell(tr, byTask("prefixd_requests_total"), "num");
      cell(tr, byTask("prefixd_prompt_tokens_total"), "num");
      cell(tr, byTask("prefixd_tokens_generated_total"), "num");
      const del = document.createElement("button");
      del.textContent = "Delete";
      del.className = "danger delete";
      del.addEventListener("click", () => deleteTask(p.task));
      cell(tr, "").appendChild(del);
      tbody.appendChild(tr);
    }
    $("#tasks-table").dataset.loaded = String(list.data.length);
  } catch (e) {
    $("#tasks-table tbody").replaceChildren();  // nothing stale under another key
    setStatus("#tasks-status", `listing failed: ${e.message}`, true);
  }
}

async function deleteTask(task) {
  if (!confirm(`Delete task '${task}'?`)) return;
  try {
    await api("DELETE", `/v1/prefixes/${encodeURIComponent(task)}`);
    setStatus("#tasks-status", `deleted ${task}`);
  } catch (e) {
    setStatus("#tasks-status", `delete ${task} failed: ${e.message}`, true);
  }
  await refreshTasks();
  refreshModels().catch(() => {});
}

// PUT /v1/prefixes/{task} with the request made from the form, reporting
// as "<verb> <task>" / "<past> <task>".
function taskForm(id, verb, past, request) {
  $(id).addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target, task = f.task.value.trim();
    setStatus("#tasks-status", `${verb} ${task}…`);
    try {
      await api("PUT", `/v1/prefixes/${encodeURIComponent(task)}`, request(f));
      setStatus("#tasks-status", `${past} ${task}`);
    } catch (e) {
      setStatus("#tasks-status", `${verb} ${task} failed: ${e.message}`, true);
    }
    await refreshTasks();
    refreshModels().catch(() => {});
  });
}
taskForm("#upload-form", "uploading", "uploaded", (f) => ({
  body: f.file.files[0], headers: { "Content-Type": "application/octet-stream" } }));
taskForm("#prompt-form", "building", "built", (f) => ({ json: { from_prompt: f.text.value } }));

// ---- playground ------------------------------------------------------------------------

let playAbort = null;

// Reads an SSE response, calling onData(json) for every event but [DONE].
async function readSSE(resp, onData) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const payload = line.slice(5).trim();
        if (payload === "[DONE]") return;
        onData(JSON.parse(payload));
      }
    }
  }
}

async function runOne(model, params, out, meta, signal) {
  const chat = params.mode === "chat";
  const body = { model, max_tokens: params.max_tokens, temperature: params.temperature,
                 top_p: params.top_p, stream: true, stream_options: { include_usage: true } };
  if (params.seed !== "") body.seed = Number(params.seed);
  if (chat) body.messages = [{ role: "user", content: params.prompt }];
  else body.prompt = params.prompt;
  out.textContent = "";
  out.dataset.done = "0";
  out.dataset.events = "0";
  meta.textContent = "";
  const t0 = performance.now();
  let first = null, finish = null, usage = null;
  const resp = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
    method: "POST", headers: authHeaders({ "Content-Type": "application/json" }),
    body: JSON.stringify(body), signal,
  });
  if (!resp.ok) {
    const e = await resp.json().catch(() => null);
    throw new ApiError(resp.status, e?.error?.message ?? resp.statusText);
  }
  await readSSE(resp, (ev) => {
    if (ev.usage) usage = ev.usage;
    const c = ev.choices?.[0];
    if (!c) return;
    const piece = chat ? c.delta?.content : c.text;
    if (piece) {
      first ??= performance.now();
      out.textContent += piece;
      out.dataset.events = String(Number(out.dataset.events) + 1);
    }
    if (c.finish_reason) finish = c.finish_reason;
  });
  const ms = performance.now() - t0;
  meta.textContent = `finish: ${finish ?? "?"} · first token ${first ? (first - t0).toFixed(0) : "–"} ms` +
    ` · total ${ms.toFixed(0)} ms` + (usage ? ` · ${usage.completion_tokens} tokens` : "");
  out.dataset.done = "1";
}

$("#play-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const params = { mode: f.mode.value, max_tokens: Number(f.max_tokens.value),
                   temperature: Number(f.temperature.value), top_p: Number(f.top_p.value),
                   seed: f.seed.value, prompt: f.prompt.value };
  const a = f.model_a.value, b = f.model_b.value;
  $("#out-a-title").textContent = a;
  $("#out-b-title").textContent = b;
  $("#out-b-box").hidden = !b;
  playAbort?.abort();
  playAbort = new AbortController();
  setStatus("#play-status", "streaming…");
  const runs = [runOne(a, params, $("#out-a"), $("#out-a-meta"), playAbort.signal)];
  if (b) runs.push(runOne(b, params, $("#out-b"), $("#out-b-meta"), playAbort.signal));
  const res = await Promise.allSettled(runs);
  const err = res.find((r) => r.status === "rejected");
  if (err && err.reason?.name !== "AbortError") setStatus("#play-status", err.reason.message, true);
  else setStatus("#play-status", err ? "stopped" : "done");
});
$("#play-stop").addEventListener("click", () => playAbort?.abort());

// ---- fine-tuning -------------------------------------------------------------------------

let selectedJob = null, lossChart = null, lossTimer = null;

async function uploadFile(file) {
  const fd = new FormData();
  fd.append("purpose", "fine-tune");
  fd.append("file", file, file.name);
  return api("POST", "/v1/files", { body: fd });
}

$("#job-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  try {
    setStatus("#jobs-status", "uploading training data…");
    const train = await uploadFile(f.training.files[0]);
    const valid = f.validation.files[0] ? await uploadFile(f.validation.files[0]) : null;
    const hp = {};
    const num = (k) => { if (f[k].value !== "") hp[k] = Number(f[k].value); };
    if (f.n_epochs.value !== "") hp.n_epochs = f.n_epochs.value === "auto" ? "auto" : Number(f.n_epochs.value);
    ["batch_size", "learning_rate", "num_virtual_tokens", "eval_every"].forEach(num);
    if (f.lr_scheduler_type.value) hp.lr_scheduler_type = f.lr_scheduler_type.value;
    const req = { training_file: train.id, suffix: f.suffix.value.trim(),
                  method: { type: "supervised", supervised: { hyperparameters: hp } } };
    if (valid) req.validation_file = valid.id;
    if (f.seed.value !== "") req.seed = Number(f.seed.value);
    const job = await api("POST", "/v1/fine_tuning/jobs", { json: req });
    setStatus("#jobs-status", `created ${job.id}`);
    await refreshJobs();
    selectJob(job.id);
  } catch (e) {
    setStatus("#jobs-status", `job not created: ${e.message}`, true);
  }
});

async function refreshJobs() {
  let list;
  try {
    list = await api("GET", "/v1/fine_tuning/jobs?limit=20");
  } catch (e) {
    $("#jobs-table tbody").replaceChildren();  // nothing stale under another key
    if (e.status === 401 || e.status === 403) {
      selectedJob = null;
      $("#job-detail").hidden = true;
    }
    setStatus("#jobs-status", `listing failed: ${e.message}`, true);
    return;
  }
  const tbody = $("#jobs-table tbody");
  tbody.replaceChildren();
  for (const j of list.data) {
    const tr = document.createElement("tr");
    tr.dataset.job = j.id;
    tr.dataset.status = j.status;
    if (j.id === selectedJob) tr.className = "selected";
    const link = document.createElement("button");
    link.textContent = j.id;
    link.className = "show";
    link.addEventListener("click", () => selectJob(j.id));
    cell(tr, "").appendChild(link);
    cell(tr, j.user_provided_suffix);
    cell(tr, j.status, "status");
    cell(tr, fmtTime(j.created_at));
    cell(tr, j.trained_tokens, "num");
    cell(tr, j.fine_tuned_model ?? j.error?.message ?? "");
    const td = cell(tr, "");
    if (!TERMINAL.has(j.status)) {
      const c = document.createElement("button");
      c.textContent = "Cancel";
      c.className = "danger cancel";
      c.addEventListener("click", async () => {
        try { await api("POST", `/v1/fine_tuning/jobs/${j.id}/cancel`); }
        catch (e) { setStatus("#jobs-status", `cancel failed: ${e.message}`, true); }
        refreshJobs();
      });
      td.appendChild(c);
    }
    tbody.appendChild(tr);
  }
}

// Every event of a job, oldest first (the API pages newest first).
async function jobEvents(id) {
  const all = [];
  let after = null;
  for (;;) {
    const page = await api("GET", `/v1/fine_tuning/jobs/${id}/events?limit=100` +
                                  (after ? `&after=${after}` : ""));
    all.push(...page.data);
    if (!page.has_more || !page.data.length) break;
    after = page.data[page.data.length - 1].id;
  }
  return all.reverse();
}

function selectJob(id) {
  selectedJob = id;
  $("#job-detail").hidden = false;
  $("#job-detail-id").textContent = id;
  for (const tr of document.querySelectorAll("#jobs-table tbody tr"))
    tr.classList.toggle("selected", tr.dataset.job === id);
  const el = $("#loss-chart");
  el.replaceChildren();
  el.dataset.trainPoints = "0";
  el.dataset.validPoints = "0";
  lossChart = makeChart(el, [{ label: "train loss", points: true }, { label: "valid loss", points: true }],
                        { height: 260, xTime: false, xLabel: "step" });
  clearTimeout(lossTimer);
  pollLoss(id);
}

async function pollLoss(id) {
  if (id !== selectedJob) return;
  let done = false;
  try {
    const [job, events] = await Promise.all([api("GET", `/v1/fine_tuning/jobs/${id}`), jobEvents(id)]);
    if (id !== selectedJob) return;
    done = TERMINAL.has(job.status);
    $("#job-detail-status").textContent = job.status;
    const byStep = new Map();
    let final = null;
    for (const e of events) {
      const d = e.type === "metrics" ? e.data : null;
      if (d?.final) final = d;  // the summary: the curve's points are the steps'
      if (!d || d.step == null || d.final) continue;
      const row = byStep.get(d.step) ?? { train: null, valid: null };
      if (d.train_loss != null) row.train = d.train_loss;
      if (d.valid_loss != null) row.valid = d.valid_loss;
      byStep.set(d.step, row);
    }
    const steps = [...byStep.keys()].sort((a, b) => a - b);
    const train = steps.map((s) => byStep.get(s).train), valid = steps.map((s) => byStep.get(s).valid);
    const el = $("#loss-chart");
    el.dataset.trainPoints = String(train.filter((v) => v != null).length);
    el.dataset.validPoints = String(valid.filter((v) => v != null).length);
    el.dataset.status = job.status;
    el.dataset.series = JSON.stringify([steps, train, valid]);
    const f3 = (v) => (v == null ? "–" : v.toFixed(4));
    $("#job-detail-status").textContent = job.status + (final ? ` · final training loss ${f3(final.train_loss)}` +
      `, validation loss ${f3(final.valid_loss)} (base model ${f3(final.base_valid_loss)})` : "");
    lossChart?.setData([steps, train, valid]);
    const ol = $("#job-events");
    ol.replaceChildren(...events.slice(-50).reverse().map((e) => {
      const li = document.createElement("li");
      li.textContent = `${fmtTime(e.created_at)} ${e.message}`;
      return li;
    }));
  } catch (e) {
    setStatus("#jobs-status", `events of ${id}: ${e.message}`, true);
    if (e.status === 401 || e.status === 403) {  // not this key's to see: stop polling
      selectedJob = null;
      $("#job-detail").hidden = true;
      return;
    }
  }
  if (!done) lossTimer = setTimeout(() => pollLoss(id), 1000);
  else refreshJobs();
}

// ---- load ----------------------------------------------------------------------------------

const WINDOW = 180;     // points kept (seconds)
const LAT_WINDOW = 30;  // latency percentiles over the requests of the last 30 s
const load = { t: [], running: [], queued: [], tps: [], train_tps: [], p50: [], p90: [], p99: [], kv: [],
               prefix: [], prev: null, hist: [], charts: null };

function card(label, value) {
  const d = document.createElement("div");
  d.className = "card";
  const b = document.createElement("b");
  b.textContent = value;
  const s = document.createElement("span");
  s.textContent = label;
  d.append(b, s);
  return d;
}

async function pollLoad() {
  let samples;
  try { samples = await fetchMetrics(); } catch { return; }
  const now = Date.now() / 1000;
  const gen = sumOf(samples, "prefixd_engine_tokens_generated_total") ?? 0;
  let tps = 0;
  if (load.prev && now > load.prev.t) tps = Math.max(0, (gen - load.prev.gen) / (now - load.prev.t));
  load.prev = { t: now, gen };
  const lat = buckets(samples, "prefixd_request_duration_seconds");
  load.hist.push({ t: now, lat });
  while (load.hist.length > 1 && now - load.hist[1].t >= LAT_WINDOW) load.hist.shift();
  const old = load.hist.length > 1 && now - load.hist[0].t >= LAT_WINDOW - 1.5 ? load.hist[0].lat : null;
  const blocks = sumOf(samples, "prefixd_kv_blocks_used"), blockBytes = sumOf(samples, "prefixd_kv_block_bytes");
  const kv = blocks != null && blockBytes != null ? blocks * blockBytes : null;
  const prefix = sumOf(samples, "prefixd_registry_resident_bytes");
  const row = { t: now, running: sumOf(samples, "prefixd_running_sequences") ?? 0,
                queued: sumOf(samples, "prefixd_queue_depth") ?? 0, tps,
                train_tps: sumOf(samples, "prefixd_training_tokens_per_second") ?? 0,
                p50: quantile(lat, old, 0.5), p90: quantile(lat, old, 0.9), p99: quantile(lat, old, 0.99),
                kv: kv == null ? null : kv / 2 ** 20, prefix: prefix == null ? null : prefix / 2 ** 20 };
  for (const k of Object.keys(row)) { load[k].push(row[k]); if (load[k].length > WINDOW) load[k].shift(); }
  const fmt = (v, d = 0) => (v == null ? "–" : v.toFixed(d));
  $("#load-cards").replaceChildren(
    card("running", row.running), card("queued", row.queued), card("generated tokens/s", fmt(tps, 1)),
    card("training tokens/s", fmt(row.train_tps, 0)),
    card("p50 latency (s)", fmt(row.p50, 3)), card("p99 latency (s)", fmt(row.p99, 3)),
    card("KV cache", kv == null ? "–" : fmtBytes(kv)), card("prefixes resident", fmtBytes(prefix)),
    card("tasks", sumOf(samples, "prefixd_registry_tasks") ?? "–"),
    card("training step", `${sumOf(samples, "prefixd_training_step") ?? 0}/${sumOf(samples, "prefixd_training_total_steps") ?? 0}`));
  if (!load.charts && !$("#pane-load").hidden) {
    load.charts = {
      requests: makeChart($("#chart-requests"), ["running", "queued"]),
      tokens: makeChart($("#chart-tokens"), ["generated", "training"]),
      latency: makeChart($("#chart-latency"), ["p50", "p90", "p99"]),
      memory: makeChart($("#chart-memory"), ["KV cache", "prefixes"]),
    };
  }
  if (load.charts) {
    load.charts.requests?.setData([load.t, load.running, load.queued]);
    load.charts.tokens?.setData([load.t, load.tps, load.train_tps]);
    load.charts.latency?.setData([load.t, load.p50, load.p90, load.p99]);
    load.charts.memory?.setData([load.t, load.kv, load.prefix]);
  }
}

// ---- tabs, key, timers -----------------------------------------------------------------------

function show(pane) {
  for (const b of document.querySelectorAll("nav button"))
    b.classList.toggle("active", b.dataset.pane === pane);
  for (const s of document.querySelectorAll(".pane")) s.hidden = s.id !== `pane-${pane}`;
  if (pane === "jobs") refreshJobs();
  if (pane === "tasks") refreshTasks();
  if (pane === "load") pollLoad();
  location.hash = pane;
}
for (const b of document.querySelectorAll("nav button"))
  b.addEventListener("click", () => show(b.dataset.pane));

$("#api-key").value = sessionStorage.getItem(KEY) ?? "";
$("#key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const v = $("#api-key").value.trim();
  if (v) sessionStorage.setItem(KEY, v); else sessionStorage.removeItem(KEY);
  refreshAll();
});
$("#key-clear").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  $("#api-key").value = "";
  refreshAll();
});

function refreshAll() {
  for (const id of ["#tasks-status", "#jobs-status", "#play-status"]) setStatus(id, "");
  refreshModels().catch((e) => setStatus("#play-status", `models: ${e.message}`, true));
  refreshTasks();
  if (!$("#pane-jobs").hidden) refreshJobs();
}

await refreshHealth();
refreshAll();
const start = location.hash.slice(1);
if (["tasks", "playground", "jobs", "load"].includes(start)) show(start);
setInterval(refreshHealth, 5000);
setInterval(() => { if (!$("#pane-tasks").hidden) refreshTasks(); }, 5000);
setInterval(() => { if (!$("#pane-jobs").hidden) refreshJobs(); }, 3000);
setInterval(pollLoad, 1000);
document.body.dataset.ready = "1";
