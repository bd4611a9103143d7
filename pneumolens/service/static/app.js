// PneumoLens page: pick or drop an X-ray, show the prediction, then the explanation overlays.
// Plain JavaScript, no dependencies; talks only to this service's /v1 API.
"use strict";

const NAMES = {
  gradcam: "Grad-CAM", lime: "LIME", kernelshap: "KernelSHAP", shap: "GradientSHAP (expected gradients)",
  ig: "Integrated Gradients", occlusion: "Occlusion",
};

const $ = (id) => document.getElementById(id);
let previewUrl = null;
let overlayUrls = [];  // blob: URLs of the overlays shown, revoked when the next ones replace them
let busy = false;

function show(id, visible) { $(id).hidden = !visible; }

function setStatus(text) { $("status").textContent = text; }

function setError(text) {
  $("error").textContent = text || "";
  show("error", Boolean(text));
}

// The JSON error of the API ({"detail": "..."}) as one line for the page.
async function errorText(response) {
  let detail = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (typeof body.detail === "string") detail = body.detail;
    else if (Array.isArray(body.detail)) detail = body.detail.map((d) => d.msg).join("; ");
  } catch (_) { /* not JSON */ }
  if (response.status === 503 && response.headers.get("Retry-After")) {
    detail += ` (retry in ${response.headers.get("Retry-After")} s)`;
  }
  return detail;
}

async function post(path, form) {
  const response = await fetch(path, { method: "POST", body: form });
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

async function loadMethods() {
  const box = $("methods");
  try {
    const response = await fetch("/v1/explain/methods");
    const data = await response.json();
    $("methods-loading").remove();
    if (!data.methods.length) {
      box.append(Object.assign(document.createElement("span"), { className: "muted", textContent: "not available in this install" }));
      return;
    }
    for (const m of data.methods) {
      const label = document.createElement("label");
      const input = Object.assign(document.createElement("input"), { type: "checkbox", value: m, name: "method" });
      input.checked = data.default.includes(m);
      label.append(input, " " + (NAMES[m] || m));
      box.append(label);
    }
  } catch (err) {
    $("methods-loading").textContent = "could not load the list of methods";
  }
}

function chosenMethods() {
  return [...document.querySelectorAll('#methods input[name="method"]:checked')].map((i) => i.value);
}

function showPrediction(p) {
  $("file-name").textContent = p.file;
  const label = $("label");
  label.textContent = p.label;
  label.className = "label " + (p.label === "PNEUMONIA" ? "positive" : "negative");
  $("probability").textContent = (100 * p.probability).toFixed(1) + " %";
  $("threshold").textContent = (100 * p.threshold).toFixed(1) + " %";
  $("meter-fill").style.width = (100 * p.probability).toFixed(1) + "%";
  $("meter-threshold").style.left = (100 * p.threshold).toFixed(1) + "%";
  // The out-of-distribution guard: shown only when it flagged the image (null = the model has no guard).
  if (p.warning) $("ood-warning-text").textContent = p.warning;
  show("ood-warning", p.in_distribution === false);
  show("result", true);
}

// A base64 PNG as a blob: URL, so a map can be opened full size in a tab of its own.
function pngUrl(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
  overlayUrls.push(url);
  return url;
}

function showExplanations(data) {
  const grid = $("explanations");
  grid.replaceChildren();
  overlayUrls.forEach((u) => URL.revokeObjectURL(u));
  overlayUrls = [];
  const template = $("explanation-template");
  for (const e of data.explanations) {
    const node = template.content.firstElementChild.cloneNode(true);
    const name = NAMES[e.method] || e.method;
    const img = node.querySelector("img");
    const url = pngUrl(e.overlay_png);
    img.src = url;
    img.alt = `${name} map over the X-ray`;
    for (const link of node.querySelectorAll("a.full-size")) {
      link.href = url;
      link.title = `${name}: open full size`;
    }
    node.dataset.method = e.method;
    node.querySelector(".method").textContent = name;
    node.querySelector(".timing").textContent = e.elapsed_s < 1 ? `${Math.round(1000 * e.elapsed_s)} ms` : `${e.elapsed_s.toFixed(1)} s`;
    const legend = node.querySelector(".legend");
    legend.classList.add(e.signed ? "signed" : "heat");
    legend.textContent = e.signed ? "red: for pneumonia · blue: against" : "brighter: more evidence for pneumonia";
    node.querySelector(".timing").title = `computing ${e.elapsed_s.toFixed(2)} s, drawing ${e.render_s.toFixed(2)} s`;
    grid.append(node);
  }
  const input = new Image();
  input.onload = () => { $("input-size").textContent = `${input.naturalWidth}×${input.naturalHeight} grayscale`; };
  input.src = "data:image/png;base64," + data.input_png;
  if ($("preview").dataset.failed === "1") {  // e.g. DICOM: the browser cannot show the file itself
    $("preview").src = input.src;
    $("preview-caption").textContent = "the image as the model sees it";
  }
  show("explanations-section", true);
}

function showPreview(file) {
  const img = $("preview");
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  img.dataset.failed = "0";
  img.onerror = () => { img.dataset.failed = "1"; img.removeAttribute("src"); $("preview-caption").textContent = "preview follows with the explanations"; };
  $("preview-caption").textContent = "your image";
  img.src = previewUrl;
}

async function analyse(file) {
  if (busy) return;
  busy = true;
  document.body.classList.add("working");
  setError("");
  show("explanations-section", false);
  show("result", false);
  showPreview(file);
  try {
    setStatus("Predicting…");
    const form = new FormData();
    form.append("file", file, file.name);
    const predicted = await post("/v1/predict", form);
    showPrediction(predicted.results[0]);
    const methods = chosenMethods();
    if (!methods.length) { setStatus("Done (no explanation method chosen)."); return; }
    setStatus(`Explaining with ${methods.map((m) => NAMES[m] || m).join(", ")}…`);
    const xform = new FormData();
    xform.append("file", file, file.name);
    xform.append("methods", methods.join(","));
    const explained = await post("/v1/explain", xform);
    showExplanations(explained);
    setStatus(`Done in ${explained.elapsed_s.toFixed(1)} s.`);
  } catch (err) {
    setStatus("");
    setError(err.message);
  } finally {
    busy = false;
    document.body.classList.remove("working");
  }
}

function setUpDropZone() {
  const zone = $("drop-zone");
  const input = $("file-input");
  input.addEventListener("change", () => { if (input.files.length) analyse(input.files[0]); });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    const file = ev.dataTransfer && ev.dataTransfer.files[0];
    if (file) analyse(file);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpDropZone();
  loadMethods();
});
