// The service's own page: photos -> faces, probabilities and saliency; a video's faces over time (and the camera,
// live); filter visualisations; the model report.
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

const TABS = ["predict", "video", "filters", "model"];
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
  if (name !== "video" && liveStream) closeLive(); // the camera is not left posting frames out of sight
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

// Each face's box and caption over a picture of width x height pixels; by default numbered in order, with the
// colour of its number (a video's faces are captioned and coloured by their track).
function drawBoxes(svg, faces, width, height, caption = (face, i) => `${i + 1} ${face.label}`,
                   colourOf = (face, i) => FACE_COLOURS[i % FACE_COLOURS.length]) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const fontSize = width / 18; // the photo always fills its column, so this keeps labels one readable size
  faces.forEach((face, i) => {
    const { x, y, width: w, height: h } = face.box;
    const colour = colourOf(face, i);
    svgElement("rect", { x, y, width: w, height: h, class: "box", stroke: colour }, svg);
    const text = caption(face, i);
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

// --- video: every face followed through a clip; the camera, live ------------------------------------

// A colour per expression, as the service's timeline PNGs have them (matplotlib's tab10).
const CLASS_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"];
const LIVE_INTERVAL_MS = 400; // camera frames posted a few times a second
const trackColour = (face) => FACE_COLOURS[(face.track_id - 1) % FACE_COLOURS.length];
let videoRequest = null;
let videoInfo = null;
let videoFrames = []; // the sampled frames analysed so far, in time order

function setUpVideo() {
  $("video-input").addEventListener("change", () => {
    const file = $("video-input").files[0];
    if (file) analyseVideo(file);
  });
  for (const event of ["timeupdate", "seeked", "loadedmetadata"]) $("video-playback").addEventListener(event, drawVideoBoxes);
  if (!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)) return; // the live button stays hidden
  $("live-open").hidden = false;
  $("live-open").addEventListener("click", openLive);
  $("live-close").addEventListener("click", closeLive);
}

async function analyseVideo(file) {
  if (videoRequest) videoRequest.abort();
  videoRequest = new AbortController();
  const status = $("video-status");
  status.className = "status busy";
  status.replaceChildren(element("span", { class: "spinner", "aria-hidden": "true" }), "Sending the video…");
  $("timelines").replaceChildren();
  videoFrames = [];
  videoInfo = null;
  const player = $("video-playback");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(file);
  $("video-player").hidden = false;
  const query = new URLSearchParams({ format: "ndjson", fps: $("video-fps").value, smoothing: $("video-smoothing").value });
  const body = new FormData();
  body.append("file", file, file.name);
  try {
    await serviceReady;
    const response = await api(`/video?${query}`, { method: "POST", body, signal: videoRequest.signal });
    let summary = null;
    for await (const event of ndjsonEvents(response)) {
      if (event.event === "video") {
        videoInfo = event.video;
      } else if (event.event === "frame") {
        videoFrames.push(event);
        status.lastChild.textContent = ` Analysed ${event.time_s.toFixed(1)} s of the video…`;
        drawVideoBoxes();
      } else if (event.event === "summary") {
        summary = event;
      } else if (event.event === "error") {
        throw new ApiError(`${ERROR_PREFIX[event.status] || "The analysis stopped"}: ${event.detail}.`);
      }
    }
    if (!summary) throw new ApiError("The answer ended before the analysis did. Please try again.");
    showTimelines(summary);
    status.className = "status ok";
    status.textContent = `${summary.tracks.length === 1 ? "One person" : `${summary.tracks.length} people`} in ` +
      `${summary.frames_sampled} frames analysed${summary.dominant ? `; mostly ${summary.dominant}` : ""}.`;
    drawVideoBoxes();
  } catch (error) {
    if (error.name === "AbortError") return;
    status.className = "status error";
    status.textContent = error.message;
  }
}

// The answer's lines as they arrive, each parsed.
async function* ndjsonEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const lines = (pending + value).split("\n");
    pending = lines.pop();
    for (const line of lines) if (line.trim()) yield JSON.parse(line);
  }
  if (pending.trim()) yield JSON.parse(pending);
}

// The last sampled frame at or before `time` (seconds), if it is within one sampling step.
function frameAt(time) {
  let low = 0, high = videoFrames.length - 1, found = null;
  while (low <= high) {
    const middle = (low + high) >> 1;
    if (videoFrames[middle].time_s <= time + 1e-3) { found = videoFrames[middle]; low = middle + 1; } else high = middle - 1;
  }
  return found && time - found.time_s <= 1.5 / videoInfo.sampled_fps ? found : null;
}

function drawVideoBoxes() {
  if (!videoInfo) return;
  const frame = frameAt($("video-playback").currentTime);
  drawBoxes($("video-boxes"), frame ? frame.faces : [], videoInfo.width, videoInfo.height,
            (face) => `#${face.track_id} ${face.smoothed_label}`, trackColour);
}

function showTimelines(summary) {
  const container = $("timelines");
  container.replaceChildren();
  if (!summary.tracks.length) {
    container.appendChild(element("p", { class: "hint" }, "No face was found in the frames analysed."));
    return;
  }
  const classes = Object.keys(summary.tracks[0].share);
  const legend = element("p", { class: "legend", "aria-hidden": "true" });
  classes.forEach((name, i) => legend.appendChild(element("span", { style: `--swatch:${CLASS_COLOURS[i]}` }, name)));
  container.appendChild(legend);
  const step = 1 / videoInfo.sampled_fps;
  const end = videoFrames.length ? videoFrames[videoFrames.length - 1].time_s + step : step;
  for (const track of summary.tracks) {
    const block = element("section", { class: "timeline" });
    const title = element("h3");
    title.append(element("span", { class: "swatch", style: `background:${trackColour({ track_id: track.id })}`,
                                   "aria-hidden": "true" }),
                 `Person #${track.id}: mostly ${track.dominant} (${percent(track.share[track.dominant])} of ` +
                 `${track.frames} frames, ${track.first_s.toFixed(1)}-${track.last_s.toFixed(1)} s)`);
    const shares = classes.filter((name) => track.share[name] > 0)
      .map((name) => `${name} ${percent(track.share[name])}`).join(", ");
    const svg = svgElement("svg", { viewBox: "0 0 1000 36", preserveAspectRatio: "none", role: "img",
                                    "aria-label": `Expression of person #${track.id} over time: ${shares}` });
    for (const frame of videoFrames) {
      const face = frame.faces.find((f) => f.track_id === track.id);
      if (!face) continue;
      const top = 36 * (1 - face.smoothed[face.smoothed_label]); // the bar's height: how sure the smoothed label is
      svgElement("rect", { x: (frame.time_s / end) * 1000, y: top, width: (step / end) * 1000, height: 36 - top,
                           fill: CLASS_COLOURS[classes.indexOf(face.smoothed_label)], class: "timeline-step" }, svg)
        .appendChild(svgElement("title", {}, null, `${frame.time_s.toFixed(1)} s: ${face.smoothed_label} ` +
                                                   `${percent(face.smoothed[face.smoothed_label])}`));
    }
    block.append(title, svg);
    container.appendChild(block);
  }
}

// Live: a camera frame posted to /predict a few times a second; each face's probabilities smoothed over time with
// /video's exponential moving average, each face taking the previous frame's face it overlaps most (a simpler
// match than /video's tracker, enough for the few faces of a webcam).
let liveStream = null;
let liveTimer = null;
let liveFaces = []; // {box, smoothed, time}

async function openLive() {
  try {
    liveStream = await navigator.mediaDevices.getUserMedia({ video: true });
  } catch (error) {
    $("video-status").className = "status error";
    $("video-status").textContent = `The camera could not be opened: ${error.message || error.name}.`;
    return;
  }
  $("live-video").srcObject = liveStream;
  $("live").hidden = false;
  liveFaces = [];
  liveTimer = setInterval(postLiveFrame, LIVE_INTERVAL_MS);
}

function closeLive() {
  clearInterval(liveTimer);
  if (liveStream) liveStream.getTracks().forEach((track) => track.stop());
  liveStream = null;
  $("live").hidden = true;
  $("live-open").focus();
}

let livePosting = false;

async function postLiveFrame() {
  const video = $("live-video");
  if (livePosting || !video.videoWidth) return; // one frame at a time: a slow answer skips frames
  livePosting = true;
  try {
    const canvas = element("canvas", { width: video.videoWidth, height: video.videoHeight });
    canvas.getContext("2d").drawImage(video, 0, 0);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
    const body = new FormData();
    body.append("files", blob, "camera.jpg");
    const prediction = (await (await api("/predict?faces=detect", { method: "POST", body })).json()).predictions[0];
    const now = performance.now() / 1000;
    const tau = Number($("video-smoothing").value) || 0;
    liveFaces = prediction.faces.map((face) => smoothedFace(face, now, tau));
    drawBoxes($("live-boxes"), liveFaces, prediction.width, prediction.height,
              (face) => `${face.label} ${percent(face.confidence)}`);
    $("live-status").textContent = prediction.faces.length ? "" : "No face in view.";
  } catch (error) {
    $("live-status").textContent = error.message;
  } finally {
    livePosting = false;
  }
}

function smoothedFace(face, now, tau) {
  const overlap = (a, b) => {
    const w = Math.min(a.x + a.width, b.x + b.width) - Math.max(a.x, b.x);
    const h = Math.min(a.y + a.height, b.y + b.height) - Math.max(a.y, b.y);
    const inter = Math.max(0, w) * Math.max(0, h);
    return inter / (a.width * a.height + b.width * b.height - inter);
  };
  const previous = liveFaces.reduce((best, old) => (overlap(old.box, face.box) > (best ? overlap(best.box, face.box) : 0.2)
    ? old : best), null);
  const weight = previous && tau > 0 ? 1 - Math.exp(-(now - previous.time) / tau) : 1;
  const smoothed = {};
  for (const [name, p] of Object.entries(face.probabilities)) {
    smoothed[name] = previous ? previous.smoothed[name] + weight * (p - previous.smoothed[name]) : p;
  }
  const label = Object.keys(smoothed).reduce((a, b) => (smoothed[b] > smoothed[a] ? b : a));
  return { box: face.box, smoothed, time: now, label, confidence: smoothed[label] };
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
// The page that `python -m training report` stored in the model directory: the same report, not a second one.

let modelShown = false;

async function openModel() {
  if (modelShown) return;
  const status = $("model-status");
  status.textContent = "Loading the model report…";
  status.className = "status";
  try {
    await serviceReady;
    const page = await (await api("/model/report")).text();
    const frame = $("model-report");
    frame.srcdoc = page;
    frame.hidden = false;
    modelShown = true;
    status.textContent = "";
  } catch (error) {
    status.textContent = `The model report could not be loaded. ${error.message}`;
    status.className = "status error";
  }
}

// --- start -------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  serviceReady = watchReadiness();
  setUpUploads();
  setUpCamera();
  setUpVideo();
  setUpFilters();
  setUpTabs();
  fillTargetClasses().catch((error) => {
    $("status").textContent = `The model report could not be loaded. ${error.message}`;
    $("status").className = "status error";
  });
});
