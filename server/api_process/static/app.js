// flowmap playground: plain browser JavaScript, no build step, no libraries; it talks only to this server
// (GET /v1/models, POST /v1/generate, streamed or not, GET /v1/stats, GET /openapi.json for the limits).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "flowmap-api-key"; // sessionStorage: this tab only, never the URL
const STRIP_STEPS = [1, 2, 3, 4];
const STRIP_MAX_SAMPLES = 8;
const LOG_ROWS = 12;
const POLL_MS = 2000;

const state = {
  key: sessionStorage.getItem(KEY_STORE) || "",
  models: new Map(),
  limits: { maxSteps: 4, maxSamples: 64, maxGuidance: 20, maxDeadline: 30000 },
  lastSeed: null,
  busy: false,
  stats: null,
  statsNote: "",
  polling: false,
  pollGen: 0,
  countTouched: false, // until the user sets it: 16 images, or as many points as allowed
};

// ------------------------------------------------------------------ talking to the server

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The server's own words: 422 -> "field: message" per error, 429 with its Retry-After, others' detail.
function errorMessage(status, statusText, text, retryAfter) {
  let detail = text || statusText;
  try {
    const body = JSON.parse(text);
    detail = body.detail !== undefined ? body.detail : body.error !== undefined ? body.error : detail;
  } catch (_) {
    // not JSON: the text as sent
  }
  if (Array.isArray(detail)) {
    detail = detail
      .map((d) => {
        const where = (d.loc || []).filter((p) => p !== "body").join(".");
        return (where ? where + ": " : "") + d.msg;
      })
      .join("; ");
  } else if (typeof detail !== "string") {
    detail = JSON.stringify(detail);
  }
  let msg = `${status} ${statusText ? statusText + ": " : ""}${detail}`;
  if (status === 429 && retryAfter) msg += ` (retry after ${retryAfter} s)`;
  if (status === 401) msg += " (enter the API key under “API key”)";
  return msg;
}

async function api(path, body) {
  const headers = { Accept: "application/json" };
  if (state.key) headers["X-API-Key"] = state.key;
  const opts = { headers, cache: "no-store" };
  if (body !== undefined) {
    opts.method = "POST";
    headers["Content-Type"] = "application/json";
    opts.body = body;
  }
  const t0 = performance.now();
  let res;
  try {
    res = await fetch(path, opts);
  } catch (e) {
    throw new ApiError(0, `the server could not be reached (${e.message})`);
  }
  const text = await res.text();
  const ms = performance.now() - t0;
  if (!res.ok) {
    const msg = errorMessage(res.status, res.statusText, text, res.headers.get("Retry-After"));
    throw new ApiError(res.status, msg);
  }
  return { text, json: JSON.parse(text), ms };
}

// One server-sent event block ("event: NAME\ndata: JSON") as {event, data}.
function parseEvent(block) {
  const ev = { event: "message", data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) ev.event = line.slice(6).trim();
    else if (line.startsWith("data:")) ev.data += line.slice(5).trim();
  }
  return ev;
}

// POST with "stream": true, read with fetch (EventSource is GET-only): each `preview` goes to onPreview
// as it arrives; resolves with the `result` as api() does; an `error` event or an HTTP error throws.
async function apiStream(path, body, onPreview) {
  const headers = { Accept: "text/event-stream", "Content-Type": "application/json" };
  if (state.key) headers["X-API-Key"] = state.key;
  const t0 = performance.now();
  let res;
  try {
    res = await fetch(path, { method: "POST", headers, body, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, `the server could not be reached (${e.message})`);
  }
  if (!res.ok) {
    const text = await res.text();
    throw new ApiError(res.status, errorMessage(res.status, res.statusText, text, res.headers.get("Retry-After")));
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new ApiError(0, "the stream ended before its result");
    buf += decoder.decode(value, { stream: true });
    for (let cut = buf.indexOf("\n\n"); cut >= 0; cut = buf.indexOf("\n\n")) {
      const ev = parseEvent(buf.slice(0, cut));
      buf = buf.slice(cut + 2);
      if (ev.event === "preview") onPreview(JSON.parse(ev.data), performance.now() - t0);
      if (ev.event === "result") return { text: ev.data, json: JSON.parse(ev.data), ms: performance.now() - t0 };
      if (ev.event === "error") {
        const status = JSON.parse(ev.data).status;
        throw new ApiError(status, errorMessage(status, "", ev.data, null));
      }
    }
  }
}

// ------------------------------------------------------------------ setup: limits, models, key

function schemaMax(prop) {
  if (!prop) return undefined;
  if (typeof prop.maximum === "number") return prop.maximum;
  for (const alt of prop.anyOf || []) if (typeof alt.maximum === "number") return alt.maximum;
  return undefined;
}

async function loadLimits() {
  try {
    const { json } = await api("/openapi.json");
    const p = json.components.schemas.GenerateRequest.properties;
    const l = state.limits;
    l.maxSteps = schemaMax(p.steps) ?? l.maxSteps;
    l.maxSamples = schemaMax(p.num_samples) ?? l.maxSamples;
    l.maxGuidance = schemaMax(p.guidance_scale) ?? l.maxGuidance;
    l.maxDeadline = schemaMax(p.deadline_ms) ?? l.maxDeadline;
  } catch (_) {
    // the defaults above; the server still checks every value
  }
  const l = state.limits;
  const steps = $("steps");
  steps.replaceChildren();
  for (let k = 1; k <= l.maxSteps; k++) steps.append(new Option(`${k}`, `${k}`, k === 1, k === 1));
  steps.append(new Option("auto (deadline)", "auto"));
  $("count").max = l.maxSamples;
  $("guidance").min = -l.maxGuidance;
  $("guidance").max = l.maxGuidance;
  $("deadline").max = l.maxDeadline;
}

function describe(m) {
  const kind = m.image ? `image ${m.shape.join("×")}` : `${m.shape.join("×")}-D points`;
  const cls = m.num_classes ? `${m.num_classes} classes` : "unconditional";
  return `${m.name} (${kind}, ${cls})`;
}

async function loadModels() {
  const select = $("model");
  try {
    const { json } = await api("/v1/models");
    state.models = new Map(json.models.map((m) => [m.name, m]));
    select.replaceChildren(...json.models.map((m) => new Option(describe(m), m.name)));
    select.value = json.default || (json.models[0] && json.models[0].name) || "";
    modelChanged();
    clearError();
    setKeyStatus(state.key ? "Key accepted." : "");
    return true;
  } catch (e) {
    showError(e);
    if (e.status === 401) askForKey(state.key ? "That key was refused." : "This server needs an API key.");
    return false;
  }
}

function askForKey(why) {
  $("key-box").open = true;
  setKeyStatus(why);
  $("api-key").focus();
}

function setKeyStatus(text) {
  $("key-status").textContent = text;
}

function modelChanged() {
  const m = state.models.get($("model").value);
  const cls = $("class");
  if (!m) return;
  if (m.num_classes > 0) {
    const opts = [new Option(`all, cycling 0–${m.num_classes - 1}`, "")];
    for (let c = 0; c < m.num_classes; c++) opts.push(new Option(`${c}`, `${c}`));
    cls.replaceChildren(...opts);
    cls.disabled = false;
    $("class-help").textContent = "One class for every sample, or each sample its own class in turn.";
    $("guidance").disabled = false;
  } else {
    cls.replaceChildren(new Option("none (unconditional model)", ""));
    cls.disabled = true;
    $("class-help").textContent = "This model has no classes.";
    $("guidance").disabled = true;
  }
  if (!state.countTouched) $("count").value = m.image ? Math.min(16, state.limits.maxSamples) : state.limits.maxSamples;
  samplersOf(m);
  rewardsOf(m);
  $("chart-model").textContent = m.name;
  drawStats();
}

function samplersOf(m) {
  const samplers = m.samplers || ["flowmap"];
  const sel = $("sampler");
  sel.replaceChildren(...samplers.map((name) => new Option(name, name)));
  sel.value = m.default_sampler || samplers[0];
  sel.disabled = samplers.length < 2;
  $("sampler-help").textContent =
    samplers.length < 2
      ? `This model serves the ${sel.value} sampler only.`
      : "flowmap: deterministic flow-map steps; consistency: jump to data and re-noise at each step.";
}

// The built-in rewards the server computes for a model of this shape (server/common/steer.py): a digit's
// class log-probability and ink for digits (8x8) and mnist (28x28), ink for other images, a mode's
// log-density for 2-D points.
// Steering runs the consistency sampler, so a model that does not serve it gets no choice.
function rewardsOf(m) {
  const sel = $("steer-reward");
  const opts = [new Option("none", "")];
  const digits = m.shape.length === 3 && ["1x8x8", "1x28x28"].includes(m.shape.join("x"));
  if (digits) for (let c = 0; c < 10; c++) opts.push(new Option(`class:${c} (look like a ${c})`, `class:${c}`));
  if (m.shape.length === 3) opts.push(new Option("ink (brighter strokes)", "ink"));
  if (m.shape.length === 1 && m.shape[0] === 2) {
    for (let k = 0; k < 8; k++) opts.push(new Option(`mode:${k}`, `mode:${k}`));
  }
  const served = (m.samplers || []).includes("consistency");
  sel.replaceChildren(...(served ? opts : opts.slice(0, 1)));
  sel.disabled = !served || opts.length < 2;
  steerChanged();
}

function steerChanged() {
  const off = $("steer-reward").value === "";
  for (const id of ["steer-particles", "steer-scale", "steer-method"]) $(id).disabled = off;
  if (!off) $("sampler").disabled = true; // steering runs the consistency sampler
  else samplersOf(state.models.get($("model").value));
}

// ------------------------------------------------------------------ one request

function randomSeed() {
  const a = new Uint32Array(2);
  crypto.getRandomValues(a);
  return String((a[0] & 0x1fffff) * 2 ** 32 + a[1]); // below 2**53: exact in JavaScript numbers
}

// The JSON body. The seed goes in as its digits (seeds reach 2**63 - 1, past exact JavaScript numbers);
// anything that is not digits goes as a string, so the server names what is wrong with it.
function requestBody(steps, count, seed, stream = false) {
  const m = state.models.get($("model").value);
  const body = { model: $("model").value, num_samples: count, output: m && !m.image ? "npy" : "png" };
  if (stream) body.stream = true;
  if (steps === "auto") {
    body.steps = "auto";
    body.deadline_ms = Number($("deadline").value);
  } else {
    body.steps = Number(steps);
  }
  if (!$("class").disabled && $("class").value !== "") body.class_label = Number($("class").value);
  if (!$("guidance").disabled && $("guidance").value !== "") body.guidance_scale = Number($("guidance").value);
  if (!$("sampler").disabled) body.sampler = $("sampler").value;
  if ($("steer-reward").value !== "") {
    body.steer = {
      reward: $("steer-reward").value,
      particles: Number($("steer-particles").value),
      scale: Number($("steer-scale").value),
      method: $("steer-method").value,
    };
  }
  let json = JSON.stringify(body);
  if (seed !== "") {
    const value = /^[0-9]+$/.test(seed) ? seed : JSON.stringify(seed);
    json = json.slice(0, -1) + `,"seed":${value}}`;
  }
  return json;
}

// onPreview: stream the request, handing it each step's preview
async function generate(steps, count, seed, onPreview) {
  const asked = steps === "auto" ? `auto ≤ ${$("deadline").value} ms` : `${steps}`;
  const row = { model: $("model").value, asked, count };
  try {
    const body = requestBody(steps, count, seed, Boolean(onPreview));
    const r = onPreview ? await apiStream("/v1/generate", body, onPreview) : await api("/v1/generate", body);
    const seedUsed = (r.text.match(/"seed":\s*([0-9]+)/) || [])[1] || String(r.json.seed);
    logRow({ ...row, used: r.json.steps, server: r.json.timings.total_ms, rt: r.ms, status: 200 });
    return { ...r, seedUsed };
  } catch (e) {
    logRow({ ...row, used: "", server: null, rt: null, status: e.status || "error" });
    throw e;
  }
}

// ------------------------------------------------------------------ showing samples

function pngImages(json, label) {
  return json.images.map((b64, i) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    const cls = json.class_labels ? `, class ${json.class_labels[i]}` : "";
    img.alt = `${label} sample ${i + 1}${cls}`;
    img.className = "sample";
    return img;
  });
}

// .npy (float32, little-endian, C order) -> {shape, data}
function parseNpy(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const major = bytes[6];
  const view = new DataView(bytes.buffer);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLen));
  if (!/'descr':\s*'<f4'/.test(header)) throw new Error(`unexpected .npy dtype in ${header}`);
  const shape = (header.match(/'shape':\s*\(([^)]*)\)/)[1].match(/[0-9]+/g) || []).map(Number);
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(bytes.buffer.slice(start + headerLen, start + headerLen + 4 * n));
  return { shape, data };
}

function extent(arrays) {
  let r = 1e-6;
  for (const { data } of arrays) for (const v of data) if (Number.isFinite(v)) r = Math.max(r, Math.abs(v));
  return r * 1.1;
}

// 2-D points (the gmm8 model) drawn as a scatter; `r` is the half-width shown, shared across a strip.
function pointsCanvas(arr, r, label) {
  const size = 220;
  const canvas = document.createElement("canvas");
  canvas.width = size;
  canvas.height = size;
  canvas.className = "points";
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${label}: ${arr.shape[0]} points`);
  const g = canvas.getContext("2d");
  const css = getComputedStyle(document.body);
  g.fillStyle = css.getPropertyValue("--plot-bg").trim() || "#fff";
  g.fillRect(0, 0, size, size);
  g.strokeStyle = css.getPropertyValue("--grid").trim() || "#ddd";
  g.beginPath();
  g.moveTo(size / 2, 0);
  g.lineTo(size / 2, size);
  g.moveTo(0, size / 2);
  g.lineTo(size, size / 2);
  g.stroke();
  g.fillStyle = css.getPropertyValue("--accent").trim() || "#2456a6";
  const dims = arr.shape[1] || 1;
  for (let i = 0; i < arr.shape[0]; i++) {
    const x = arr.data[i * dims];
    const y = dims > 1 ? arr.data[i * dims + 1] : 0;
    g.beginPath();
    g.arc(((x / r + 1) * size) / 2, ((1 - y / r) * size) / 2, 2.5, 0, 2 * Math.PI);
    g.fill();
  }
  return canvas;
}

function fmt(ms) {
  return ms === null || ms === undefined ? "–" : ms < 10 ? ms.toFixed(2) : ms.toFixed(1);
}

function summaryText(r) {
  const j = r.json;
  const t = j.timings;
  return (
    `${j.num_samples} from ${j.model}: ${j.steps} step${j.steps === 1 ? "" : "s"} used` +
    `${j.sampler && j.sampler !== "flowmap" ? ` (${j.sampler} sampler)` : ""}, ` +
    `${j.network_calls_per_sample} network call${j.network_calls_per_sample === 1 ? "" : "s"} per sample, ` +
    `${fmt(t.total_ms)} ms in the server (queue ${fmt(t.queue_ms)}, compute ${fmt(t.compute_ms)}), ` +
    `${fmt(r.ms)} ms round trip, seed ${r.seedUsed}.`
  );
}

// classes cycling 0..C-1: a column per class; otherwise up to eight across
function gridColumns(json) {
  const labels = json.class_labels || [];
  const cycling = labels.length > 1 && labels.every((c, i) => c === i % (Math.max(...labels) + 1));
  const classes = cycling ? Math.max(...labels) + 1 : 0;
  return Math.max(1, cycling && classes > 1 ? Math.min(classes, labels.length) : Math.min(json.num_samples, 8));
}

// a sample's size on screen: a whole number of screen pixels per image pixel, about 75 px across
// (8x8 digits: 9x, 72 px; 28x28 mnist: 3x, 84 px), so pixelated rendering keeps every pixel the same size
function cellSize(modelName) {
  const shape = (state.models.get(modelName) || {}).shape || [];
  const side = shape.length === 3 ? shape[2] : 8;
  return `${side * Math.max(1, Math.round(75 / side))}px`;
}

function showSamples(r) {
  const grid = $("grid");
  if (r.json.images) {
    grid.className = "grid";
    grid.style.setProperty("--cols", String(gridColumns(r.json)));
    grid.style.setProperty("--cell", cellSize(r.json.model));
    grid.replaceChildren(...pngImages(r.json, "grid"));
  } else {
    const arr = parseNpy(r.json.array);
    grid.className = "grid points-grid";
    grid.replaceChildren(pointsCanvas(arr, extent([arr]), `${r.json.model} samples`));
  }
  $("summary").textContent = summaryText(r);
}

// ------------------------------------------------------------------ the request log

function logRow(r) {
  const tr = document.createElement("tr");
  const cells = [
    new Date().toLocaleTimeString(),
    r.model,
    r.asked,
    r.used,
    r.count,
    fmt(r.server),
    fmt(r.rt),
    r.status,
  ];
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = c;
    tr.append(td);
  }
  if (r.status !== 200) tr.className = "failed";
  const body = $("log").tBodies[0];
  body.prepend(tr);
  while (body.rows.length > LOG_ROWS) body.deleteRow(-1);
}

// ------------------------------------------------------------------ errors

function showError(e) {
  const box = $("error");
  box.textContent = e instanceof ApiError ? e.message : `Error: ${e.message}`;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// ------------------------------------------------------------------ the form

function formValues() {
  return {
    steps: $("steps").value,
    count: Number($("count").value),
    seed: $("seed").value.trim(),
  };
}

async function runGenerate() {
  const v = formValues();
  const grid = $("grid");
  grid.dataset.previews = "";
  const onPreview = $("stream").checked ? showPreview : undefined;
  const r = await generate(v.steps, v.count, v.seed, onPreview);
  state.lastSeed = r.seedUsed;
  showSamples(r);
  if (onPreview) $("summary").textContent += ` Previews streamed: steps ${grid.dataset.previews.trim()}.`;
}

// A streamed step: every sample's jump to data so far, drawn where the result will go.
function showPreview(p, ms) {
  const grid = $("grid");
  const model = $("model").value;
  if (p.images) {
    const json = { images: p.images, num_samples: p.images.length, class_labels: null };
    grid.className = "grid preview";
    grid.style.setProperty("--cols", String(Math.min(p.images.length, 8)));
    grid.style.setProperty("--cell", cellSize(model));
    grid.replaceChildren(...pngImages(json, `step ${p.step} preview`));
  } else {
    const arr = { shape: [p.samples.length, (p.samples[0] || []).length], data: p.samples.flat() };
    grid.className = "grid points-grid preview";
    grid.replaceChildren(pointsCanvas(arr, extent([arr]), `${model} step ${p.step} preview`));
  }
  grid.dataset.step = String(p.step);
  grid.dataset.previews += ` ${p.step}`;
  $("summary").textContent = `Step ${p.step} of ${p.steps}: the jump to data, ${fmt(ms)} ms after sending…`;
}

function stripCell(k) {
  const li = document.createElement("li");
  const fig = document.createElement("figure");
  const cap = document.createElement("figcaption");
  cap.textContent = `${k} step${k === 1 ? "" : "s"} · …`;
  const box = document.createElement("div");
  box.className = "strip-samples";
  fig.append(cap, box);
  li.append(fig);
  return { li, cap, box };
}

async function runStrip() {
  const v = formValues();
  const seed = v.seed || state.lastSeed || randomSeed();
  const image = (state.models.get($("model").value) || {}).image !== false;
  const count = image ? Math.min(v.count, STRIP_MAX_SAMPLES) : v.count; // points: one plot each, any count
  const steps = STRIP_STEPS.filter((k) => k <= state.limits.maxSteps);
  const cells = steps.map(stripCell);
  $("strip").replaceChildren(...cells.map((c) => c.li));
  const results = [];
  for (const [i, k] of steps.entries()) {
    // one at a time, so each latency is its own and not a share of a batch with the others
    const r = await generate(String(k), count, seed);
    results.push(r);
    cells[i].cap.textContent = `${k} step${k === 1 ? "" : "s"} · ${fmt(r.json.timings.total_ms)} ms`;
    if (r.json.images) {
      cells[i].box.style.setProperty("--cols", String(Math.min(count, 4)));
      cells[i].box.replaceChildren(...pngImages(r.json, `${k}-step`));
    }
  }
  if (!results[0].json.images) {
    const arrays = results.map((r) => parseNpy(r.json.array));
    const r = extent(arrays);
    arrays.forEach((a, i) => {
      cells[i].box.className = "strip-points";
      cells[i].box.replaceChildren(pointsCanvas(a, r, `${steps[i]}-step samples`));
    });
  }
  state.lastSeed = seed;
  $("strip-h").textContent = `Steps strip (seed ${seed})`;
}

async function onSubmit(event) {
  event.preventDefault();
  if (state.busy) return;
  const action = event.submitter ? event.submitter.value : "generate";
  const section = action === "strip" ? $("strip-section") : $("samples");
  state.busy = true;
  section.setAttribute("aria-busy", "true");
  for (const b of $("gen-form").querySelectorAll("button")) b.disabled = true;
  clearError();
  try {
    await (action === "strip" ? runStrip() : runGenerate());
  } catch (e) {
    showError(e);
    if (e.status === 401) askForKey("The server refused the request: it needs an API key.");
  } finally {
    state.busy = false;
    section.setAttribute("aria-busy", "false");
    for (const b of $("gen-form").querySelectorAll("button")) b.disabled = false;
    if (state.polling) pollStats();
  }
}

async function onKey(event) {
  event.preventDefault();
  state.key = $("api-key").value.trim();
  sessionStorage.setItem(KEY_STORE, state.key);
  $("api-key").value = "";
  setKeyStatus("Checking…");
  if (await loadModels()) {
    $("key-box").open = false;
    $("model").focus();
    startPolling();
  }
}

function forgetKey() {
  state.key = "";
  sessionStorage.removeItem(KEY_STORE);
  $("api-key").value = "";
  setKeyStatus("Key forgotten.");
}

// ------------------------------------------------------------------ the live latency chart

async function pollStats() {
  try {
    const { json } = await api("/v1/stats");
    state.stats = json;
    state.statsNote = "";
  } catch (e) {
    state.statsNote = e.status === 401 ? "needs the API key" : e.message;
    if (e.status === 401) state.polling = false; // until a key is accepted again
  }
  drawStats();
}

function niceMax(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function statsRows() {
  const name = $("model").value;
  const m = state.stats && state.stats.models.find((x) => x.model === name);
  return m ? m.by_steps : [];
}

function drawStats() {
  const rows = statsRows();
  const body = $("stats-table").tBodies[0];
  body.replaceChildren(
    ...rows.map((r) => {
      const tr = document.createElement("tr");
      for (const c of [r.steps, r.count, fmt(r.p50_ms), fmt(r.p99_ms)]) {
        const td = document.createElement("td");
        td.textContent = c;
        tr.append(td);
      }
      return tr;
    }),
  );
  drawChart(rows);
}

function drawChart(rows) {
  const canvas = $("chart");
  const css = getComputedStyle(document.body);
  const color = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 420;
  const h = canvas.clientHeight || 200;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  g.font = "12px system-ui, sans-serif";
  const pad = { l: 48, r: 10, t: 22, b: 36 };
  const pw = w - pad.l - pad.r;
  const ph = h - pad.t - pad.b;
  const steps = [];
  for (let k = 1; k <= state.limits.maxSteps; k++) steps.push(k);
  const top = niceMax(Math.max(1, ...rows.map((r) => r.p99_ms || r.p50_ms || 0)));
  const y = (ms) => pad.t + ph * (1 - Math.min(ms, top) / top);
  g.strokeStyle = color("--grid", "#ddd");
  g.fillStyle = color("--muted", "#666");
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    g.beginPath();
    g.moveTo(pad.l, y(v));
    g.lineTo(w - pad.r, y(v));
    g.stroke();
    g.fillText(`${+v.toPrecision(3)}`, pad.l - 6, y(v));
  }
  g.save();
  g.translate(12, pad.t + ph / 2);
  g.rotate(-Math.PI / 2);
  g.textAlign = "center";
  g.fillText("ms", 0, 0);
  g.restore();
  const slot = pw / steps.length;
  const bw = Math.min(22, slot / 3);
  g.textAlign = "center";
  g.textBaseline = "top";
  const label = [];
  for (const [i, k] of steps.entries()) {
    const cx = pad.l + slot * (i + 0.5);
    g.fillStyle = color("--muted", "#666");
    g.fillText(`${k}`, cx, h - pad.b + 6);
    const r = rows.find((x) => x.steps === k);
    if (!r || r.p50_ms === null) continue;
    g.fillStyle = color("--accent", "#2456a6");
    g.fillRect(cx - bw - 1, y(r.p50_ms), bw, y(0) - y(r.p50_ms));
    g.fillStyle = color("--accent-2", "#e08a1e");
    g.fillRect(cx + 1, y(r.p99_ms), bw, y(0) - y(r.p99_ms));
    label.push(`${k} steps: p50 ${fmt(r.p50_ms)} ms, p99 ${fmt(r.p99_ms)} ms over ${r.count}`);
  }
  g.textAlign = "left";
  g.textBaseline = "alphabetic";
  const legend = [
    ["p50", color("--accent", "#2456a6")],
    ["p99", color("--accent-2", "#e08a1e")],
  ];
  let lx = pad.l;
  for (const [name, c] of legend) {
    g.fillStyle = c;
    g.fillRect(lx, 6, 10, 10);
    g.fillStyle = color("--fg", "#222");
    g.fillText(name, lx + 14, 15);
    lx += 52;
  }
  g.fillStyle = color("--muted", "#666");
  g.fillText(state.statsNote || (rows.length ? "" : "no requests yet"), lx + 8, 15);
  g.textAlign = "center";
  g.fillText("steps", pad.l + pw / 2, h - 3);
  canvas.setAttribute("aria-label", label.length ? label.join("; ") : "No latency data yet");
}

// one loop at a time: a loop left over from before a 401 sees a newer generation and ends
async function pollLoop(gen) {
  if (!state.polling || gen !== state.pollGen) return;
  if (!document.hidden) await pollStats();
  setTimeout(() => pollLoop(gen), POLL_MS);
}

function startPolling() {
  // only once the server has accepted us: polling with a missing key would only collect 401s
  if (state.polling) return;
  state.polling = true;
  state.pollGen += 1;
  pollLoop(state.pollGen);
}

// ------------------------------------------------------------------ start

async function start() {
  $("gen-form").addEventListener("submit", onSubmit);
  $("key-form").addEventListener("submit", onKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("model").addEventListener("change", modelChanged);
  $("steer-reward").addEventListener("change", steerChanged);
  $("count").addEventListener("input", () => {
    state.countTouched = true;
  });
  $("steps").addEventListener("change", () => {
    $("deadline").disabled = $("steps").value !== "auto";
  });
  window.addEventListener("resize", drawStats);
  await loadLimits();
  drawStats();
  if (await loadModels()) startPolling();
  document.body.dataset.ready = "true"; // for tests and scripts: the first load is done
}

start();
