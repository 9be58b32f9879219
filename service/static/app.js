// The service's own page: photos -> faces, probabilities and saliency; filter visualisations; the model report.
// Plain DOM code, no framework and nothing fetched from outside the service.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const FACE_COLOURS = ["#ffcc00", "#00d1ff", "#ff5ca8", "#7dff6b", "#ff8a3d", "#b48cff"];
const METHOD_NAMES = { vanilla: "vanilla gradient", smoothgrad: "SmoothGrad", gradcam: "Grad-CAM" };
const ERROR_PREFIX = {
  400: "This could not be used", 404: "Not found", 413: "Too large", 415: "Not an accepted kind of upload",
  422: "The request was not valid", 503: "The service is busy or still starting",
};

// --- talking to the API ----------------------------------------------------------------------------

class ApiError extends Error {}

async function api(url, options = {}) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    // The body-size limit closes the connection early, which the browser reports as a network failure.
    throw new ApiError("The service could not be reached, or it closed the connection (a file larger than it " +
                       "accepts does that).");
  }
  if (!response.ok) throw new ApiError(await describeError(response));
  return response;
}

async function describeError(response) {
  let detail;
  try {
    detail = formatDetail((await response.json()).detail);
  } catch {
    detail = response.statusText || "no explanation given";
  }
  const prefix = ERROR_PREFIX[response.status] || `The service answered with error ${response.status}`;
  const retry = response.status === 503 ? " Please try again in a moment." : "";
  return `${prefix}: ${detail.replace(/\.$/, "")}.${retry}`;
}

function formatDetail(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return JSON.stringify(detail);
}

function percent(p) {
  return `${(p * 100).toFixed(1)}%`;
}

function element(tag, attributes = {}, text = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  return node;
}

function svgElement(tag, attributes = {}, parent = null, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

// --- service status and the model report, fetched once ----------------------------------------------

let modelReport = null; // a promise of GET /model, made once the service is ready
let serviceReady = null; // a promise that resolves once /readyz says ready

async function watchReadiness() {
  const status = $("status");
  for (;;) {
    try {
      const response = await fetch("/readyz");
      const body = await response.json();
      if (response.ok) {
        const m = body.model;
        status.textContent = `Model ${m.name} ${m.version}, on ${m.device} with ${m.backend}.`;
        status.className = "status ok";
        return;
      }
      status.textContent = "The model is loading; this page will be ready in a moment…";
    } catch {
      status.textContent = "The service is not reachable; retrying…";
      status.className = "status error";
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function getModelReport() {
  modelReport = modelReport || serviceReady.then(() => api("/model")).then((r) => r.json());
  modelReport.catch(() => { modelReport = null; }); // let a later view try again
  return modelReport;
}

async function fillTargetClasses() {
  const report = await getModelReport();
  const select = $("target");
  for (const name of report.manifest.classes) select.appendChild(element("option", { value: name }, name));
}

// --- tabs --------------------------------------------------------------------------------------------

const TABS = ["predict", "filters", "model"];
const viewOpened = { filters: openFilters, model: openModel };

function selectTab(name, focus = false) {
  for (const tab of TABS) {
    const selected = tab === name;
    const button = $(`tab-${tab}`);
    button.setAttribute("aria-selected", String(selected));
    button.tabIndex = selected ? 0 : -1;
    $(`view-${tab}`).hidden = !selected;
    if (selected && focus) button.focus();
  }
  history.replaceState(null, "", `#${name}`);
  if (viewOpened[name]) viewOpened[name]();
}

function setUpTabs() {
  for (const tab of TABS) {
    const button = $(`tab-${tab}`);
    button.addEventListener("click", () => selectTab(tab));
    button.addEventListener("keydown", (event) => { // arrow keys move between tabs (WAI-ARIA tabs pattern)
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (step) selectTab(TABS[(TABS.indexOf(tab) + step + TABS.length) % TABS.length], true);
    });
  }
  const fromHash = location.hash.slice(1);
  selectTab(TABS.includes(fromHash) ? fromHash : "predict");
}

// --- photos: predictions and saliency ----------------------------------------------------------------

const photos = []; // {file, card, url, saliencyRequest}

function addFiles(files) {
  const batch = document.createDocumentFragment(); // newest batch on top, in the order it was picked
  for (const file of files) {
    const photo = { file, card: makeCard(file.name), url: null, saliencyRequest: null };
    photos.push(photo);
    batch.appendChild(photo.card);
    analyse(photo);
  }
  $("results").prepend(batch);
  $("predict-hint").hidden = photos.length > 0;
}

function makeCard(filename) {
  const card = $("result-template").content.firstElementChild.cloneNode(true);
  card.querySelector(".filename").textContent = filename;
  card.querySelector(".message").textContent = "Looking for faces…";
  card.querySelector(".panes").hidden = true;
  return card;
}

function uploadOf(photo) {
  const body = new FormData();
  body.append("files", photo.file, photo.file.name);
  return body;
}

async function analyse(photo) {
  const message = photo.card.querySelector(".message");
  let prediction;
  try {
    const response = await api("/predict?faces=auto", { method: "POST", body: uploadOf(photo) });
    prediction = (await response.json()).predictions[0];
  } catch (error) {
    photo.card.classList.add("failed");
    message.textContent = error.message;
    return;
  }
  photo.url = URL.createObjectURL(photo.file);
  const image = photo.card.querySelector(".original");
  image.src = photo.url;
  try {
    await image.decode();
  } catch {
    image.alt = `${photo.file.name} (this browser cannot show its format)`;
  }
  const faces = facesOf(prediction, image);
  message.textContent = describeFaces(prediction, faces);
  image.alt = `${photo.file.name}: ${message.textContent}`;
  photo.card.querySelector(".panes").hidden = false;
  drawBoxes(photo.card.querySelector(".boxes"), faces, prediction.width || image.naturalWidth,
            prediction.height || image.naturalHeight);
  showFaces(photo.card.querySelector(".faces"), faces);
  loadSaliency(photo);
}

// Today's /predict has one prediction for the whole image; the face-aware one lists faces with boxes.
function facesOf(prediction, image) {
  if (Array.isArray(prediction.faces)) return prediction.faces;
  const whole = { x: 0, y: 0, width: image.naturalWidth, height: image.naturalHeight };
  return [{ box: whole, source: "whole_image", detection_score: null, label: prediction.label,
            confidence: prediction.confidence, probabilities: prediction.probabilities }];
}

function describeFaces(prediction, faces) {
  if (faces.length === 0) return `No face to read: ${prediction.reason || "none found"}.`;
  const labels = faces.map((f) => `${f.label} (${percent(f.confidence)})`).join(", ");
  const found = faces.length === 1 ? "One face" : `${faces.length} faces`;
  const truncated = prediction.faces_truncated ? " Only the largest faces are shown." : "";
  return `${found}: ${labels}.${truncated}`;
}

function drawBoxes(svg, faces, width, height) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const fontSize = width / 18; // the photo always fills its column, so this keeps labels one readable size
  faces.forEach((face, i) => {
    const { x, y, width: w, height: h } = face.box;
    const colour = FACE_COLOURS[i % FACE_COLOURS.length];
    svgElement("rect", { x, y, width: w, height: h, class: "box", stroke: colour }, svg);
    const text = `${i + 1} ${face.label}`;
    const labelY = y > fontSize * 1.3 ? y - fontSize * 0.3 : y + fontSize; // above the box, inside at the top edge
    const labelWidth = text.length * fontSize * 0.62;
    svgElement("rect", { x, y: labelY - fontSize, width: labelWidth, height: fontSize * 1.25, fill: colour,
                         class: "box-label-background" }, svg);
    svgElement("text", { x: x + fontSize * 0.2, y: labelY, "font-size": fontSize, class: "box-label" }, svg, text);
  });
}

function showFaces(container, faces) {
  container.replaceChildren();
  faces.forEach((face, i) => {
    const block = element("section", { class: "face" });
    const colour = FACE_COLOURS[i % FACE_COLOURS.length];
    const title = element("h3");
    title.append(element("span", { class: "swatch", style: `background:${colour}`, "aria-hidden": "true" }),
                 `Face ${i + 1}: ${face.label}, ${percent(face.confidence)}`);
    block.appendChild(title);
    const source = face.source === "detector"
      ? `found by the face detector${face.detection_score == null ? "" : ` (score ${face.detection_score.toFixed(2)})`}`
      : "the whole image, read as one face";
    block.appendChild(element("p", { class: "hint" }, source));
    const bars = element("ul", { class: "bars", "aria-label": `Probabilities of face ${i + 1}` });
    for (const [name, p] of Object.entries(face.probabilities)) {
      const row = element("li", { class: name === face.label ? "bar-row top" : "bar-row" });
      row.append(element("span", { class: "bar-name" }, name));
      const bar = element("span", { class: "bar", "aria-hidden": "true" });
      bar.appendChild(element("span", { class: "bar-fill", style: `width:${(p * 100).toFixed(1)}%` }));
      row.append(bar, element("span", { class: "bar-value" }, percent(p)));
      bars.appendChild(row);
    }
    block.appendChild(bars);
    container.appendChild(block);
  });
}

async function loadSaliency(photo) {
  const method = $("method").value;
  const target = $("target").value;
  const figure = photo.card.querySelector(".saliency");
  const overlay = figure.querySelector(".overlay");
  const busy = figure.querySelector(".busy");
  const caption = figure.querySelector(".saliency-caption");
  if (photo.saliencyRequest) photo.saliencyRequest.abort();
  photo.saliencyRequest = new AbortController();
  busy.textContent = `Computing the ${METHOD_NAMES[method]} saliency map…`;
  busy.hidden = false;
  busy.classList.remove("error");
  overlay.classList.add("stale");
  const query = new URLSearchParams({ faces: "auto", method, format: "overlay" });
  if (target) query.set("target", target);
  try {
    const response = await api(`/saliency?${query}`, { method: "POST", body: uploadOf(photo),
                                                        signal: photo.saliencyRequest.signal });
    const blob = await response.blob();
    const explained = response.headers.get("X-Targets") || target || "the predicted class";
    if (overlay.src) URL.revokeObjectURL(overlay.src);
    overlay.src = URL.createObjectURL(blob);
    await overlay.decode();
    overlay.alt = `Saliency map (${METHOD_NAMES[method]}) of ${photo.file.name}: bright where the pixels moved ` +
                  `the score of ${explained} most.`;
    caption.textContent = `Saliency, ${METHOD_NAMES[method]}, explaining ${explained}: bright where pixels matter most.`;
    overlay.hidden = false;
    overlay.classList.remove("stale");
    busy.hidden = true;
  } catch (error) {
    if (error.name === "AbortError") return;
    busy.textContent = `No saliency map. ${error.message}`;
    busy.classList.add("error");
  }
}

function refreshSaliency() {
  for (const photo of photos) if (photo.url) loadSaliency(photo);
}

function clearPhotos() {
  for (const photo of photos) {
    if (photo.saliencyRequest) photo.saliencyRequest.abort();
    if (photo.url) URL.revokeObjectURL(photo.url);
  }
  photos.length = 0;
  $("results").replaceChildren();
  $("predict-hint").hidden = false;
}

function setUpUploads() {
  const input = $("file-input");
  input.addEventListener("change", () => {
    addFiles([...input.files]);
    input.value = ""; // picking the same file again analyses it again
  });
  const zone = $("dropzone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    addFiles([...event.dataTransfer.files]);
  });
  // A drop that misses the zone would otherwise navigate away from the page to the file.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("method").addEventListener("change", refreshSaliency);
  $("target").addEventListener("change", refreshSaliency);
  $("clear").addEventListener("click", clearPhotos);
}

// --- camera ------------------------------------------------------------------------------------------

let cameraStream = null;
let snapshots = 0;

function setUpCamera() {
  if (!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)) return; // the button stays hidden
  $("camera-open").hidden = false;
  $("camera-open").addEventListener("click", openCamera);
  $("camera-close").addEventListener("click", closeCamera);
  $("camera-snap").addEventListener("click", snapshot);
}

async function openCamera() {
  try {
    cameraStream = await navigator.mediaDevices.getUserMedia({ video: true });
  } catch (error) {
    showPhotoMessage(`The camera could not be opened: ${error.message || error.name}.`);
    return;
  }
  $("camera-video").srcObject = cameraStream;
  $("camera").hidden = false;
  $("camera-snap").focus();
}

function closeCamera() {
  if (cameraStream) cameraStream.getTracks().forEach((track) => track.stop());
  cameraStream = null;
  $("camera").hidden = true;
  $("camera-open").focus();
}

function snapshot() {
  const video = $("camera-video");
  const canvas = element("canvas", { width: video.videoWidth, height: video.videoHeight });
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => {
    snapshots += 1;
    addFiles([new File([blob], `camera-${snapshots}.png`, { type: "image/png" })]);
  }, "image/png");
}

function showPhotoMessage(text) {
  const card = makeCard("Camera");
  card.classList.add("failed");
  card.querySelector(".message").textContent = text;
  $("results").prepend(card);
}

// --- filters -----------------------------------------------------------------------------------------

const filterImages = new Map(); // request URL -> {src, caption}: shown again at once
let filterRequest = null;
let layersLoaded = null;

function openFilters() {
  layersLoaded = layersLoaded || loadLayers();
}

async function loadLayers() {
  const status = $("filters-status");
  try {
    await serviceReady;
    const { layers } = await (await api("/filters")).json();
    const select = $("layer");
    for (const layer of layers) {
      select.appendChild(element("option", { value: layer.name },
        `${layer.name} (${layer.filters} filters, ${layer.kernel_size.join("x")} kernels)`));
    }
    showFilters();
  } catch (error) {
    status.textContent = `The layers could not be listed. ${error.message}`;
    status.className = "status error";
    layersLoaded = null;
  }
}

function filtersUrl() {
  const layer = $("layer").value;
  const weights = layer === "conv1" && $("weights").checked;
  const query = new URLSearchParams({ filters: $("filter-range").value.replace(/\s+/g, "") || "0-15" });
  if (weights) query.set("mode", "weights");
  return { url: `/filters/${encodeURIComponent(layer)}?${query}`, layer, weights };
}

async function showFilters() {
  const { url, layer, weights } = filtersUrl();
  $("weights-label").hidden = layer !== "conv1";
  const status = $("filters-status");
  const figure = $("filters-figure");
  if (filterRequest) filterRequest.abort();
  const known = filterImages.get(url);
  if (known) {
    showFilterImage(known);
    status.textContent = "Shown again from this page's memory.";
    status.className = "status ok";
    return;
  }
  filterRequest = new AbortController();
  const request = filterRequest;
  const started = performance.now();
  const what = weights ? `the raw kernels of ${layer}` : `what excites the filters of ${layer}`;
  figure.hidden = true;
  status.className = "status busy";
  status.replaceChildren(element("span", { class: "spinner", "aria-hidden": "true" }),
                         element("span", { id: "filters-progress" }, `Computing ${what}…`));
  // Elapsed time shows that the page is alive while the service climbs gradients (the first time per layer).
  const ticker = setInterval(() => {
    const seconds = Math.round((performance.now() - started) / 1000);
    $("filters-progress").textContent = `Computing ${what}… ${seconds} s (deep layers take longer; ` +
                                        "the result is cached afterwards)";
  }, 1000);
  try {
    const response = await api(url, { signal: request.signal });
    const blob = await response.blob();
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const cached = response.headers.get("X-Cache") === "hit";
    const shown = response.headers.get("X-Filters") || $("filter-range").value;
    const result = {
      src: URL.createObjectURL(blob),
      alt: `${weights ? "Raw kernels" : "Inputs that most activate"} filters ${shown} of layer ${layer}, left to right, ` +
           "top to bottom.",
      caption: `${layer}: ${weights ? "raw kernels" : "inputs that most activate"} filters ${shown.replaceAll(",", ", ")}.`,
    };
    filterImages.set(url, result);
    showFilterImage(result);
    status.textContent = cached ? "From the service's cache." : `Computed in ${seconds} s.`;
    status.className = "status ok";
  } catch (error) {
    if (error.name === "AbortError") return;
    status.textContent = error.message;
    status.className = "status error";
  } finally {
    clearInterval(ticker);
  }
}

function showFilterImage({ src, alt, caption }) {
  const image = $("filters-image");
  image.src = src;
  image.alt = alt;
  $("filters-caption").textContent = caption;
  $("filters-figure").hidden = false;
}

function setUpFilters() {
  $("layer").addEventListener("change", showFilters);
  $("weights").addEventListener("change", showFilters);
  $("filters-form").addEventListener("submit", (event) => { event.preventDefault(); showFilters(); });
}

// --- the model report --------------------------------------------------------------------------------

let modelShown = false;

async function openModel() {
  if (modelShown) return;
  const status = $("model-status");
  status.textContent = "Loading the model report…";
  try {
    const report = await getModelReport();
    renderModel($("model-report"), report);
    modelShown = true;
    status.textContent = "";
  } catch (error) {
    status.textContent = `The model report could not be loaded. ${error.message}`;
    status.className = "status error";
  }
}

function renderModel(container, report) {
  const { model, manifest } = report;
  const validation = manifest.validation;
  const card = section("Model card", definitionList([
    ["name", `${manifest.name} ${manifest.version}`],
    ["created", manifest.created],
    ["network", manifest.architecture],
    ["input", `${manifest.input.height}x${manifest.input.width} grey, resized to ${manifest.preprocessing.resize_to}`],
    ["classes", manifest.classes.join(", ")],
    ["served on", `${model.device} with ${model.backend}`],
    ...(validation ? [
      ["validation accuracy", `${percent(validation.accuracy)} on ${validation.samples} ${validation.split} images` +
                              (validation.tta ? " (with test-time augmentation)" : "")],
      ["macro F1", validation.macro_f1.toFixed(3)],
    ] : [["validation", "not recorded"]]),
  ]));
  const training = section("Training", definitionList(
    Object.entries(manifest.training).map(([key, value]) => [key.replaceAll("_", " "), String(value)])));
  const results = [confusionMatrix(report.confusion_matrix, validation)];
  if (validation) results.unshift(perClassTable(validation));
  container.replaceChildren(pair(card, training), curves(report.history), pair(...results),
                            architectureTable(report.architecture));
}

function pair(...sections) {
  const node = element("div", { class: "pair" });
  node.append(...sections);
  return node;
}

function section(title, ...children) {
  const node = element("section", { class: "report-section" });
  node.append(element("h2", {}, title), ...children);
  return node;
}

function definitionList(pairs) {
  const list = element("dl", { class: "facts" });
  for (const [term, value] of pairs) list.append(element("dt", {}, term), element("dd", {}, value));
  return list;
}

function curves(history) {
  if (!history.length) return section("Training curves", element("p", {}, "This model was exported without its history."));
  const charts = element("div", { class: "charts" });
  charts.append(
    lineChart("Loss", history, [["train_loss", "training"], ["val_loss", "validation"]]),
    lineChart("Accuracy", history, [["train_accuracy", "training"], ["val_accuracy", "validation"]], [0, 1]));
  return section("Training curves", charts);
}

// A small SVG line chart of `series` ([key, name]) against the epoch.
function lineChart(title, rows, series, fixedRange = null) {
  const [width, height, left, right, top, bottom] = [440, 240, 46, 12, 30, 34];
  const present = series.filter(([key]) => rows.some((row) => typeof row[key] === "number"));
  const values = present.flatMap(([key]) => rows.map((row) => row[key]).filter((v) => typeof v === "number"));
  let [low, high] = fixedRange || [Math.min(...values), Math.max(...values)];
  if (high === low) [low, high] = [low - 0.5, high + 0.5];
  const epochs = rows.map((row) => row.epoch);
  const [first, last] = [Math.min(...epochs), Math.max(...epochs)];
  const x = (epoch) => left + (last === first ? 0.5 : (epoch - first) / (last - first)) * (width - left - right);
  const y = (value) => top + (1 - (value - low) / (high - low)) * (height - top - bottom);
  const summary = present.map(([key, name]) => {
    const final = rows[rows.length - 1][key];
    return `${name} ${title.toLowerCase()} ends at ${typeof final === "number" ? final.toFixed(3) : "n/a"}`;
  }).join("; ");
  const svg = svgElement("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
                                  "aria-label": `${title} per epoch: ${summary}` });
  svgElement("title", {}, svg, `${title} per epoch`);
  for (let i = 0; i <= 4; i++) {
    const value = low + (high - low) * i / 4;
    svgElement("line", { x1: left, x2: width - right, y1: y(value), y2: y(value), class: "grid" }, svg);
    svgElement("text", { x: left - 6, y: y(value) + 4, class: "tick", "text-anchor": "end" }, svg,
               value.toFixed(2));
  }
  const step = Math.max(1, Math.ceil((last - first + 1) / 8));
  for (let epoch = first; epoch <= last; epoch += step) {
    svgElement("text", { x: x(epoch), y: height - bottom + 16, class: "tick", "text-anchor": "middle" }, svg, epoch);
  }
  svgElement("text", { x: (left + width - right) / 2, y: height - 4, class: "axis-name", "text-anchor": "middle" },
             svg, "epoch");
  svgElement("text", { x: left, y: 16, class: "chart-title" }, svg, title);
  present.forEach(([key, name], i) => {
    const points = rows.filter((row) => typeof row[key] === "number").map((row) => `${x(row.epoch)},${y(row[key])}`);
    svgElement("polyline", { points: points.join(" "), class: `series series-${i}` }, svg);
    for (const point of points) {
      const [cx, cy] = point.split(",");
      svgElement("circle", { cx, cy, r: 2.5, class: `dot series-${i}` }, svg);
    }
    const legendX = width - right - 170 + i * 90;
    svgElement("line", { x1: legendX, x2: legendX + 18, y1: 12, y2: 12, class: `series series-${i}` }, svg);
    svgElement("text", { x: legendX + 22, y: 16, class: "legend" }, svg, name);
  });
  return svg;
}

function perClassTable(validation) {
  const table = element("table", { class: "numbers" });
  table.appendChild(element("caption", {}, `On ${validation.samples} ${validation.split} images`));
  const head = table.createTHead().insertRow();
  for (const name of ["class", "precision", "recall", "F1", "images"]) head.appendChild(element("th", { scope: "col" }, name));
  const body = table.createTBody();
  for (const [name, m] of Object.entries(validation.per_class)) {
    const row = body.insertRow();
    row.appendChild(element("th", { scope: "row" }, name));
    for (const value of [m.precision.toFixed(3), m.recall.toFixed(3), m.f1.toFixed(3), m.support]) {
      row.appendChild(element("td", {}, String(value)));
    }
  }
  return section("Per class", table);
}

// Rows are the true classes, columns the predicted ones; colour follows the row-normalised share.
function confusionMatrix(matrix, validation) {
  if (!matrix || !matrix.counts) return section("Confusion matrix", element("p", {}, "Not exported with this model."));
  const table = element("table", { class: "confusion" });
  table.appendChild(element("caption", {}, "Rows: true class. Columns: predicted class. Each cell: share of the row (count)."));
  const head = table.createTHead().insertRow();
  head.appendChild(element("td"));
  for (const name of matrix.classes) head.appendChild(element("th", { scope: "col" }, name));
  const body = table.createTBody();
  matrix.counts.forEach((counts, i) => {
    const row = body.insertRow();
    row.appendChild(element("th", { scope: "row" }, matrix.classes[i]));
    counts.forEach((count, j) => {
      const share = matrix.normalized ? matrix.normalized[i][j] : 0;
      const cell = element("td", { class: share > 0.5 ? "dark" : "" });
      cell.style.background = `rgba(37, 99, 235, ${Math.min(1, share * 1.1).toFixed(3)})`;
      cell.append(element("span", { class: "share" }, percent(share)), element("span", { class: "count" }, `(${count})`));
      if (i === j) cell.classList.add("diagonal");
      row.appendChild(cell);
    });
  });
  const wrapper = element("div", { class: "scroll" });
  wrapper.appendChild(table);
  const confused = (validation ? validation.most_confused : []).slice(0, 3)
    .map((pair) => `${pair.true} read as ${pair.predicted} (${percent(pair.rate)})`).join("; ");
  const note = element("p", { class: "hint" }, confused ? `Most confused: ${confused}.` : "");
  return section("Confusion matrix", wrapper, note);
}

function architectureTable(rows) {
  if (!rows.length) return section("Architecture", element("p", {}, "Not exported with this model."));
  const table = element("table", { class: "numbers architecture" });
  const total = rows.reduce((sum, row) => sum + row.parameters, 0);
  const head = table.createTHead().insertRow();
  for (const name of ["layer", "type", "parameters", "output shape"]) head.appendChild(element("th", { scope: "col" }, name));
  const body = table.createTBody();
  for (const layer of rows) {
    const row = body.insertRow();
    row.appendChild(element("th", { scope: "row" }, layer.name));
    row.appendChild(element("td", {}, layer.type));
    row.appendChild(element("td", {}, layer.parameters.toLocaleString("en")));
    row.appendChild(element("td", {}, layer.output_shape.join(" x ")));
  }
  // Long (one row per module): folded, with its totals in the summary.
  const details = element("details", { class: "scroll" });
  details.append(element("summary", {}, `${rows.length} modules, ${total.toLocaleString("en")} parameters: ` +
                                         "show the table"), table);
  return section("Architecture", details);
}

// --- start -------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  serviceReady = watchReadiness();
  setUpUploads();
  setUpCamera();
  setUpFilters();
  setUpTabs();
  fillTargetClasses().catch((error) => {
    $("status").textContent = `The model report could not be loaded. ${error.message}`;
    $("status").className = "status error";
  });
});
