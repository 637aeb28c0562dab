// onnx-compress web console: plain JS against the /v1 API (no build step, nothing loaded from the network).
"use strict";

const API = "/v1";
const KEY_STORAGE = "onnx-compress.api-key";
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const JOB_POLL_MS = 1000;
const LIST_POLL_MS = 4000;

const $ = (id) => document.getElementById(id);

// ---- API key ----------------------------------------------------------------------------------------------

const keyStore = {
  get: () => sessionStorage.getItem(KEY_STORAGE) || "",
  set: (key) => sessionStorage.setItem(KEY_STORAGE, key),
  clear: () => sessionStorage.removeItem(KEY_STORAGE),
};

let keyPrompt = null; // one dialog at a time; concurrent 401s wait on the same answer
let keyDeclined = false; // the dialog was dismissed: background refreshes stop asking until a key is entered

function askKey(reason, error) {
  if (keyPrompt) return keyPrompt;
  const dialog = $("key-dialog");
  $("key-reason").textContent = reason;
  $("key-error").textContent = error || "";
  $("key-error").hidden = !error;
  $("key-input").value = "";
  keyPrompt = new Promise((resolve, reject) => {
    const done = (key) => {
      dialog.close();
      keyPrompt = null;
      $("key-form").onsubmit = null;
      $("key-cancel").onclick = null;
      dialog.oncancel = null;
      keyDeclined = !key;
      if (key) resolve(key);
      else reject(new Error("an API key is needed to use this service"));
    };
    $("key-form").onsubmit = (event) => {
      event.preventDefault();
      const key = $("key-input").value.trim();
      if (!key) {
        $("key-error").textContent = "Enter the key you were given.";
        $("key-error").hidden = false;
        return;
      }
      keyStore.set(key);
      showKeyState();
      done(key);
    };
    $("key-cancel").onclick = () => done(null);
    dialog.oncancel = () => done(null);
  });
  dialog.showModal();
  $("key-input").focus();
  return keyPrompt;
}

function showKeyState() {
  $("key-state").textContent = keyStore.get() ? "API key set for this tab" : "";
}

// ---- HTTP -------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function detailText(body, status) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => `${(item.loc || []).filter((part) => part !== "body").join(".")}: ${item.msg}`)
      .join("; ");
  }
  return `the server answered ${status}`;
}

// fetch with the key; a 401 asks for the key (saying when the one sent was refused) and retries
async function api(path, options = {}) {
  for (;;) {
    const key = keyStore.get();
    const headers = new Headers(options.headers || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) {
      if (key) {
        keyStore.clear();
        showKeyState();
        await askKey(
          "The service refused the API key.",
          "Wrong API key: the service answered 401 Unauthorized. Check the key and enter it again.",
        );
      } else if (keyDeclined) {
        throw new ApiError(401, "this service needs an API key: enter it with the “API key…” button");
      } else {
        await askKey("This service needs an API key.");
      }
      continue;
    }
    if (!response.ok) {
      let body = null;
      try {
        body = await response.json();
      } catch {
        body = null;
      }
      throw new ApiError(response.status, detailText(body, response.status));
    }
    return response;
  }
}

const getJson = async (path) => (await api(path)).json();

function notice(message) {
  const box = $("notice");
  box.textContent = message || "";
  box.hidden = !message;
}

async function downloadFile(path, filename) {
  try {
    const blob = await (await api(path)).blob();
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = filename;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (error) {
    notice(`Download failed: ${error.message}`);
  }
}

// ---- formatting -------------------------------------------------------------------------------------------

const percent = (fraction) => `${Math.round((fraction || 0) * 100)}%`;
const ratio = (value) => (typeof value === "number" ? `${value.toFixed(2)}×` : "–");
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const ratios = (job) => (job.metrics && job.metrics.ratios) || {};

function cell(row, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  row.append(td);
  return td;
}

function statusBadge(status) {
  const span = document.createElement("span");
  span.className = `badge status-${status}`;
  span.textContent = status;
  return span;
}

// ---- job list ---------------------------------------------------------------------------------------------

async function refreshJobs() {
  let page;
  try {
    page = await getJson(`${API}/jobs?limit=50`);
  } catch (error) {
    notice(`Could not list jobs: ${error.message}`);
    return;
  }
  const body = $("jobs-body");
  body.replaceChildren();
  for (const job of page.items) {
    const row = document.createElement("tr");
    row.dataset.jobId = job.id;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "link";
    open.textContent = job.id.slice(0, 12);
    open.title = `open job ${job.id}`;
    open.addEventListener("click", () => openJob(job.id));
    cell(row, open);
    cell(row, statusBadge(job.status));
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = Math.round(job.progress * 100);
    bar.setAttribute("aria-label", `progress of job ${job.id.slice(0, 12)}`);
    const progress = cell(row, bar);
    progress.append(` ${percent(job.progress)}`);
    cell(row, ratio(ratios(job).size));
    cell(row, ratio(ratios(job).latency));
    cell(row, when(job.created_at));
    body.append(row);
  }
  $("jobs-empty").hidden = page.items.length > 0;
}

// ---- one job ----------------------------------------------------------------------------------------------

const current = { id: null, lastEvent: 0, timer: null, reportShown: false };

function openJob(jobId) {
  if (current.timer) clearTimeout(current.timer);
  Object.assign(current, { id: jobId, lastEvent: 0, timer: null, reportShown: false });
  history.replaceState(null, "", `#job=${encodeURIComponent(jobId)}`);
  $("job").hidden = false;
  $("job-title").textContent = `Job ${jobId}`;
  $("job-events").replaceChildren();
  $("job-report").hidden = true;
  $("job-report").removeAttribute("srcdoc");
  $("job-report-open").hidden = true;
  $("report-title").hidden = true;
  $("job-error").hidden = true;
  $("job").scrollIntoView({ block: "start" });
  pollJob();
}

function closeJob() {
  if (current.timer) clearTimeout(current.timer);
  current.id = null;
  $("job").hidden = true;
  history.replaceState(null, "", location.pathname);
}

function showJob(job) {
  $("job-status").replaceChildren(statusBadge(job.status));
  $("job-stage").textContent = job.stage || "–";
  $("job-progress").value = Math.round(job.progress * 100);
  $("job-progress-text").textContent = percent(job.progress);
  $("job-size").textContent = ratio(ratios(job).size);
  $("job-latency").textContent = ratio(ratios(job).latency);
  $("job-error").hidden = !job.error;
  $("job-error").textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  const done = TERMINAL.has(job.status);
  $("job-cancel").hidden = done;
  $("job-cancel").disabled = job.cancel_requested;
  $("job-download-model").hidden = !job.urls.model;
  $("job-download-metrics").hidden = !job.urls.metrics;
  $("job-download-report").hidden = !done;
}

async function pollEvents(jobId) {
  const events = await getJson(`${API}/jobs/${jobId}/events?after=${current.lastEvent}`);
  const list = $("job-events");
  for (const event of events) {
    current.lastEvent = Math.max(current.lastEvent, event.id);
    const item = document.createElement("li");
    const time = document.createElement("time");
    time.dateTime = event.created_at;
    time.textContent = new Date(event.created_at).toLocaleTimeString();
    item.append(time, ` ${event.kind}: ${event.message}`);
    list.append(item);
  }
  if (events.length) list.scrollTop = list.scrollHeight;
}

async function showReport(jobId) {
  const html = await (await api(`${API}/jobs/${jobId}/report`)).text();
  if (current.id !== jobId) return;
  const frame = $("job-report");
  frame.srcdoc = html;
  const link = $("job-report-open");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([html], { type: "text/html" }));
  link.hidden = false;
  frame.hidden = false;
  $("report-title").hidden = false;
  current.reportShown = true;
}

async function pollJob() {
  const jobId = current.id;
  if (!jobId) return;
  let job;
  try {
    job = await getJson(`${API}/jobs/${jobId}`);
    if (current.id !== jobId) return;
    showJob(job);
    await pollEvents(jobId);
    if (TERMINAL.has(job.status) && !current.reportShown) await showReport(jobId);
  } catch (error) {
    if (current.id !== jobId) return;
    notice(`Job ${jobId}: ${error.message}`);
    if (error instanceof ApiError && error.status === 404) return;
  }
  if (current.id === jobId && !(job && TERMINAL.has(job.status))) {
    current.timer = setTimeout(pollJob, JOB_POLL_MS);
  } else {
    refreshJobs();
  }
}

async function cancelJob() {
  const jobId = current.id;
  if (!jobId) return;
  try {
    showJob(await (await api(`${API}/jobs/${jobId}/cancel`, { method: "POST" })).json());
  } catch (error) {
    notice(`Cancel failed: ${error.message}`);
  }
}

// ---- spec validation against the live step schema ---------------------------------------------------------

let stepSchema = null;

async function loadStepSchema() {
  if (!stepSchema) stepSchema = await getJson(`${API}/steps/schema`);
  return stepSchema;
}

const join = (path, key) => (path ? `${path}.${key}` : key);

function typeOf(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
  return typeof value;
}

function typeMatches(value, type) {
  const actual = typeOf(value);
  return type === "number" ? actual === "number" || actual === "integer" : actual === type;
}

function resolveRef(schema, root) {
  let resolved = schema;
  while (resolved && resolved.$ref) resolved = root.$defs[resolved.$ref.replace("#/$defs/", "")];
  return resolved;
}

// the values a branch accepts for `prop` (a const or enum), through $refs and nested unions
function tagsOf(schema, root, prop, out = new Set()) {
  const resolved = resolveRef(schema, root);
  if (!resolved) return out;
  const field = resolved.properties && resolved.properties[prop];
  if (field && "const" in field) out.add(field.const);
  if (field && field.enum) field.enum.forEach((value) => out.add(value));
  for (const branch of resolved.oneOf || resolved.anyOf || []) tagsOf(branch, root, prop, out);
  return out;
}

const listOf = (values) => [...values].map((value) => JSON.stringify(value)).join(", ");

// the first error of `value` against a JSON schema (the subset pydantic emits), or null
function firstError(value, schema, root, path) {
  schema = resolveRef(schema, root);
  if (!schema || schema === true) return null;
  const isObject = typeOf(value) === "object";
  if (schema.discriminator && isObject) {
    const prop = schema.discriminator.propertyName;
    const mapping = schema.discriminator.mapping || {};
    const tags = Object.keys(mapping);
    if (!(prop in value)) return `${join(path, prop)} is required: one of ${listOf(tags)}`;
    if (!(value[prop] in mapping)) {
      return `${join(path, prop)} must be one of ${listOf(tags)} (got ${JSON.stringify(value[prop])})`;
    }
    return firstError(value, { $ref: mapping[value[prop]] }, root, path);
  }
  const branches = schema.oneOf || schema.anyOf;
  if (branches) {
    const errors = branches.map((branch) => firstError(value, branch, root, path));
    if (errors.some((error) => error === null)) return null;
    if (isObject) {
      const all = new Set();
      branches.forEach((branch) => tagsOf(branch, root, "type", all));
      if (all.size) {
        const index = branches.findIndex((branch) => tagsOf(branch, root, "type").has(value.type));
        if (index >= 0) return errors[index];
        if (!("type" in value)) return `${join(path, "type")} is required: one of ${listOf(all)}`;
        return `${join(path, "type")} must be one of ${listOf(all)} (got ${JSON.stringify(value.type)})`;
      }
    }
    return errors.length === 1 ? errors[0] : `${path || "value"} matches none of its allowed forms: ${errors.join("; or ")}`;
  }
  if ("const" in schema && value !== schema.const) return `${path} must be ${JSON.stringify(schema.const)}`;
  if (schema.enum && !schema.enum.includes(value)) {
    return `${path} must be one of ${listOf(schema.enum)} (got ${JSON.stringify(value)})`;
  }
  if (schema.type) {
    const types = [].concat(schema.type);
    if (!types.some((type) => typeMatches(value, type))) return `${path} must be ${types.join(" or ")} (got ${typeOf(value)})`;
  }
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) return `${path} must be ≥ ${schema.minimum}`;
    if (schema.maximum !== undefined && value > schema.maximum) return `${path} must be ≤ ${schema.maximum}`;
    if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) {
      return `${path} must be > ${schema.exclusiveMinimum}`;
    }
    if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum) {
      return `${path} must be < ${schema.exclusiveMaximum}`;
    }
  }
  if (typeof value === "string") {
    if (schema.minLength !== undefined && value.length < schema.minLength) return `${path} is too short`;
    if (schema.maxLength !== undefined && value.length > schema.maxLength) return `${path} is too long`;
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) {
      return `${path} needs at least ${schema.minItems} item(s)`;
    }
    if (schema.maxItems !== undefined && value.length > schema.maxItems) return `${path} has too many items`;
    if (schema.items) {
      for (let i = 0; i < value.length; i++) {
        const error = firstError(value[i], schema.items, root, `${path}[${i}]`);
        if (error) return error;
      }
    }
  }
  if (isObject) {
    const properties = schema.properties || {};
    for (const name of schema.required || []) {
      if (!(name in value)) return `${join(path, name)} is required`;
    }
    for (const [name, item] of Object.entries(value)) {
      if (name in properties) {
        const error = firstError(item, properties[name], root, join(path, name));
        if (error) return error;
      } else if (schema.additionalProperties === false) {
        return `${join(path, name)} is not a known field (known: ${Object.keys(properties).join(", ")})`;
      } else if (typeof schema.additionalProperties === "object") {
        const error = firstError(item, schema.additionalProperties, root, join(path, name));
        if (error) return error;
      }
    }
  }
  return null;
}

// the spec's steps, or throws an Error naming the first problem
function checkSpec(text, schema) {
  let spec;
  try {
    spec = JSON.parse(text);
  } catch (error) {
    throw new Error(`the spec is not valid JSON: ${error.message}`);
  }
  if (Array.isArray(spec)) spec = { steps: spec };
  if (typeOf(spec) !== "object") throw new Error('the spec must be an object like {"steps": [...]}');
  const unknown = Object.keys(spec).filter((name) => name !== "steps");
  if (unknown.length) throw new Error(`${unknown[0]} is not a known field (known: steps)`);
  if (!Array.isArray(spec.steps) || spec.steps.length === 0) throw new Error("steps must be a non-empty list");
  for (let i = 0; i < spec.steps.length; i++) {
    const error = firstError(spec.steps[i], schema.properties.step, schema, `steps[${i}]`);
    if (error) throw new Error(error);
  }
  return spec.steps;
}

async function validateSpecField() {
  const field = $("spec");
  const out = $("spec-check");
  try {
    checkSpec(field.value, await loadStepSchema());
    field.removeAttribute("aria-invalid");
    out.className = "muted";
    out.textContent = "Spec matches the service's step schema.";
    return true;
  } catch (error) {
    field.setAttribute("aria-invalid", "true");
    out.className = "error";
    out.textContent = error.message;
    return false;
  }
}

// ---- submit -----------------------------------------------------------------------------------------------

async function upload(path, file) {
  const form = new FormData();
  form.append("file", file, file.name);
  return (await api(path, { method: "POST", body: form })).json();
}

function submitError(message) {
  $("submit-error").textContent = message || "";
  $("submit-error").hidden = !message;
}

async function submitJob(event) {
  event.preventDefault();
  submitError("");
  const status = $("submit-status");
  const button = $("submit-button");
  const model = $("model-file").files[0];
  if (!model) {
    submitError("Choose a model file (.onnx).");
    $("model-file").focus();
    return;
  }
  let steps;
  try {
    steps = checkSpec($("spec").value, await loadStepSchema());
  } catch (error) {
    submitError(`Spec: ${error.message}`);
    $("spec").setAttribute("aria-invalid", "true");
    $("spec").focus();
    return;
  }
  button.disabled = true;
  try {
    status.textContent = `Uploading ${model.name}…`;
    const modelOut = await upload(`${API}/models`, model);
    const datasets = {};
    for (const role of ["calibration", "train", "eval"]) {
      const file = $(`data-${role}`).files[0];
      if (!file) continue;
      status.textContent = `Uploading ${role} data ${file.name}…`;
      datasets[role] = (await upload(`${API}/datasets`, file)).id;
    }
    status.textContent = "Submitting the job…";
    const response = await api(`${API}/jobs`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model_id: modelOut.id, steps, datasets }),
    });
    const job = await response.json();
    status.textContent = `Job ${job.id} submitted.`;
    await refreshJobs();
    openJob(job.id);
  } catch (error) {
    status.textContent = "";
    submitError(error.message);
  } finally {
    button.disabled = false;
  }
}

// ---- start ------------------------------------------------------------------------------------------------

let specTimer = null;

function openLinkedJob() {
  const match = location.hash.match(/^#job=([\w-]+)$/);
  if (match && match[1] !== current.id) openJob(decodeURIComponent(match[1]));
}

function start() {
  showKeyState();
  $("jobs-refresh").addEventListener("click", refreshJobs);
  $("job-close").addEventListener("click", closeJob);
  $("job-cancel").addEventListener("click", cancelJob);
  $("job-download-model").addEventListener("click", () =>
    downloadFile(`${API}/jobs/${current.id}/artifacts/model.onnx`, `${current.id}-model.onnx`),
  );
  $("job-download-metrics").addEventListener("click", () =>
    downloadFile(`${API}/jobs/${current.id}/artifacts/metrics.json`, `${current.id}-metrics.json`),
  );
  $("job-download-report").addEventListener("click", () =>
    downloadFile(`${API}/jobs/${current.id}/report`, `${current.id}-report.html`),
  );
  $("key-change").addEventListener("click", () => {
    askKey("Enter the API key for this service.").then(() => {
      notice("");
      refreshJobs();
    }, () => {});
  });
  $("submit-form").addEventListener("submit", submitJob);
  $("spec").addEventListener("input", () => {
    clearTimeout(specTimer);
    specTimer = setTimeout(validateSpecField, 300);
  });
  refreshJobs().then(validateSpecField);
  openLinkedJob();
  window.addEventListener("hashchange", openLinkedJob);
  setInterval(() => {
    // not while hidden, asking for the key, or while the keyboard is in the table (a redraw would lose focus)
    const busy = keyPrompt || $("jobs-table").contains(document.activeElement);
    if (document.visibilityState === "visible" && !busy) refreshJobs();
  }, LIST_POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
