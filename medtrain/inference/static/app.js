// medtrain's service page: the model's card from GET info, predictions from POST predict.
// Server text and file names are shown with textContent only, never parsed as HTML.
"use strict";

const KEY_STORE = "medtrain.apiKey"; // sessionStorage: gone when the tab closes
const REASONS = {
  400: "bad request",
  401: "API key needed",
  404: "not found",
  413: "too large",
  415: "unsupported format",
  422: "cannot use this file",
  429: "server busy, try again",
  500: "server error",
  503: "server busy or starting, try again",
};
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

const $ = (id) => document.getElementById(id);

/** An element with text or child nodes; strings become text nodes. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function table(caption, headers, rows) {
  const head = el("tr", {}, ...headers.map((h) => el("th", { scope: "col", text: h })));
  const body = rows.map((row) => el("tr", {}, ...row.map((cell) => el("td", { text: fmt(cell) }))));
  return el("table", {}, el("caption", { text: caption }), el("thead", {}, head),
    el("tbody", {}, ...body));
}

/** Text of a value; numbers with 3 decimals (counts and pixels as integers unless `decimals`). */
function fmt(value, decimals = false) {
  if (value === null || value === undefined || value === "") return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value) && !decimals) return String(value);
  const size = Math.abs(value);
  return size === 0 || (size >= 0.01 && size < 1e5) ? value.toFixed(3) : value.toExponential(2);
}

function percent(p) {
  return `${(100 * p).toFixed(1)} %`;
}

function keyHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { "X-API-Key": key } : {};
}

/** { status, body }: the JSON answer, or { detail } of a non-JSON one; status 0: no answer. */
async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: keyHeaders() });
  } catch (err) {
    return { status: 0, body: { detail: `cannot reach the server (${err.message})` } };
  }
  const text = await response.text();
  try {
    return { status: response.status, body: JSON.parse(text) };
  } catch {
    return { status: response.status, body: { detail: text.slice(0, 300) || response.statusText } };
  }
}

function refusal(status, body) {
  const detail = body && typeof body.detail === "string" ? body.detail : JSON.stringify(body);
  if (status === 0) return detail;
  const reason = REASONS[status] || "refused";
  return `${status} ${reason}: ${detail}`;
}

// -- the model's card ---------------------------------------------------------------------------
async function loadCard() {
  const status = $("card-status");
  const card = $("card");
  const keyed = sessionStorage.getItem(KEY_STORE) !== null;
  $("key-state").textContent = keyed ? "A key is set for this tab." : "No key set.";
  const { status: code, body } = await call("info");
  card.replaceChildren();
  if (code !== 200) {
    card.hidden = true;
    status.textContent = refusal(code, body);
    if (code === 401) $("key-panel").open = true;
    return;
  }
  status.textContent = "";
  $("title-task").textContent = `· ${body.task}`;
  $("spacing-field").hidden = body.task !== "segmentation";
  card.append(cardList(body), ...metricsTable(body.test_metrics || {}));
  card.hidden = false;
}

function cardList(info) {
  const input = info.input || {};
  const rows = [
    ["Task", info.multilabel ? `${info.task} (multi-label)` : info.task],
    ["Classes", (info.class_names || []).join(", ")],
    ["Input size", input.size ? input.size.join(" × ") : "any"],
    ["Channels", input.channels],
    ["Formats", (input.formats || []).join(", ")],
  ];
  const limits = info.limits || {};
  if (limits.max_upload_mb) {
    const pixels = limits.max_pixels ? `, ${(limits.max_pixels / 1e6).toFixed(1)} megapixels` : "";
    rows.push(["Upload limit", `${limits.max_upload_mb} MB${pixels}`]);
  }
  if (input.window) {
    rows.push(["CT windows", input.window.map((w) => `[${w.join(", ")}]`).join(" ")]);
  }
  if (input.volumes) rows.push(["Volumes", input.volumes.note]);
  if (info.threshold !== null && info.threshold !== undefined) {
    rows.push(["Threshold", [].concat(info.threshold).join(", ")]);
  }
  rows.push(["Model", info.model]);
  rows.push(["Weights SHA-256", el("code", { id: "weights", text: info.weights_sha256 })]);
  rows.push(["medtrain", `${info.medtrain_version} (trained with ${info.trained_with || "?"})`]);
  const list = el("dl");
  for (const [name, value] of rows) {
    list.append(el("dt", { text: name }), el("dd", {}, value instanceof Node ? value : fmt(value)));
  }
  return list;
}

/** test/<metric> with its 95 % interval from test/<metric>_ci_low and _ci_high when given. */
function metricsTable(metrics) {
  const names = Object.keys(metrics).filter((k) => !/_ci_(low|high)$/.test(k));
  if (!names.length) return [];
  const rows = names.map((name) => {
    const low = metrics[`${name}_ci_low`];
    const high = metrics[`${name}_ci_high`];
    const interval = low === undefined || high === undefined ? ""
      : `${fmt(low, true)} – ${fmt(high, true)}`;
    return [name.replace(/^test\//, ""), fmt(metrics[name], true), interval];
  });
  return [table("Test metrics", ["Metric", "Value", "95 % CI"], rows)];
}

// -- predictions --------------------------------------------------------------------------------
async function predict(file) {
  const result = $("result");
  const error = $("error");
  result.hidden = true;
  error.hidden = true;
  $("status").textContent = `Predicting ${file.name}…`;
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("overlay", "true");
  const spacing = $("spacing").value.trim();
  if (spacing && !$("spacing-field").hidden) form.append("spacing", spacing);
  const { status, body } = await call("predict", { method: "POST", body: form });
  if (status !== 200) {
    $("status").textContent = "";
    error.textContent = `${file.name}: ${refusal(status, body)}`;
    error.hidden = false;
    return;
  }
  result.replaceChildren(el("h3", { text: body.file || file.name }), ...render(body, file));
  result.hidden = false;
  $("status").textContent = `Predicted ${file.name}.`; // announced to screen readers
}

function render(answer, file) {
  if (answer.probabilities) return classification(answer);
  if (answer.values || answer.value !== undefined) return regression(answer);
  if (answer.mask || answer.volumes_ml) return segmentation(answer, file);
  return [el("pre", { text: JSON.stringify(answer, null, 2) })];
}

function classification(answer) {
  const chosen = answer.labels || [answer.label];
  const shown = el("strong", { id: "label", text: chosen.join(", ") || "none" });
  const label = el("p", { class: "label" }, answer.labels ? "Labels: " : "Label: ", shown);
  const bars = el("ul", { class: "bars", "aria-label": "Class probabilities" });
  for (const [name, p] of Object.entries(answer.probabilities)) {
    const fill = el("span", { class: "fill" });
    fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
    const row = el("li", { class: chosen.includes(name) ? "chosen" : "" },
      el("span", { class: "name", text: name }),
      el("span", { class: "bar", "aria-hidden": "true" }, fill),
      el("span", { class: "pct", text: percent(p) }));
    row.dataset.class = name;
    bars.append(row);
  }
  return [label, bars];
}

function regression(answer) {
  const values = answer.values || { value: answer.value };
  const rows = Object.entries(values).map(([name, v]) => [name, v]);
  return [table("Predicted values", ["Target", "Value"], rows)];
}

function segmentation(answer, file) {
  const parts = [];
  const picture = answer.overlay || answer.mask;
  if (typeof picture === "string" && BASE64.test(picture)) {
    const src = `data:image/png;base64,${picture}`;
    const what = answer.overlay ? "overlay" : "mask";
    parts.push(el("img", { class: "overlay", src, alt: `Predicted ${what} of ${file.name}` }));
  }
  if (typeof answer.mask === "string" && BASE64.test(answer.mask)) {
    const values = Object.entries(answer.mask_values || {}).map(([n, v]) => `${n} ${v}`);
    const href = `data:image/png;base64,${answer.mask}`;
    const link = el("a", { href, text: "Download the mask" });
    link.download = `${stem(file.name)}_mask.png`;
    parts.push(el("p", {}, link, values.length ? ` (pixel values: ${values.join(", ")})` : ""));
  }
  // Lengths in mm (areas mm²) when the answer has a spacing, else in pixels.
  const mm = answer.units === "mm";
  const [len, area] = mm ? ["mm", "mm2"] : ["px", "px"];
  const areaUnit = mm ? "mm²" : "px";
  const num = (value) => fmt(value, mm); // mm with decimals even when whole; pixels as counts
  if (answer.spacing) parts.push(el("p", { text: `Spacing ${answer.spacing.join(" × ")} mm` }));
  if (answer.note) parts.push(el("p", { class: "note", text: answer.note }));
  if (answer.totals) {
    const rows = answer.totals.map((t) => {
      const total = t[`total_area_${area}`];
      return [t.class, t.count, num(total), t.count ? num(total / t.count) : ""];
    });
    const headers = ["Class", "Objects", `Area (${areaUnit})`, `Mean area (${areaUnit})`];
    parts.push(table("Totals", headers, rows));
  }
  if (answer.measurements && answer.measurements.length) {
    const keys = [`area_${area}`, `perimeter_${len}`, `equivalent_diameter_${len}`,
      `major_axis_${len}`, `minor_axis_${len}`];
    const rows = answer.measurements.map((m) => [m.class, m.object, ...keys.map((k) => num(m[k])),
      `${fmt(m.centroid_row)}, ${fmt(m.centroid_col)}`]);
    const headers = ["Class", "Object", `Area (${areaUnit})`, `Perimeter (${len})`,
      `Eq. diameter (${len})`, `Major axis (${len})`, `Minor axis (${len})`,
      "Centroid (row, col)"];
    const measured = table("Objects", headers, rows);
    measured.id = "measurements";
    parts.push(el("div", { class: "scroll" }, measured));
  }
  if (answer.volumes_ml) {
    const rows = Object.entries(answer.volumes_ml).map(([name, ml]) => [name, ml]);
    parts.push(table("Volumes", ["Class", "Volume (ml)"], rows));
  }
  return parts;
}

function stem(name) {
  return name.replace(/\.(nii\.gz|[^.]*)$/i, "") || "upload";
}

// -- wiring -------------------------------------------------------------------------------------
function setUp() {
  const input = $("file");
  input.addEventListener("change", () => {
    if (input.files.length) predict(input.files[0]);
    input.value = ""; // choosing the same file again predicts again
  });
  const drop = $("drop"); // a file dropped anywhere on the page is predicted
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) drop.classList.remove("over");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const files = event.dataTransfer.files;
    if (files.length) predict(files[0]);
  });
  $("upload-form").addEventListener("submit", (event) => event.preventDefault());
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    $("api-key").value = "";
    loadCard();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    loadCard();
  });
  loadCard();
}

document.addEventListener("DOMContentLoaded", setUp);
