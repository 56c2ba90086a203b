// visionlab serve: the upload/camera page. Served by visionlab itself; talks to this origin only.
// It renders whatever fields a result has: top_k -> a bar per class, overlay_jpeg -> the overlay,
// legend -> colour swatches, class_shares -> a bar per class share, probabilities (with labels:
// several labels per photo) -> a bar per label, those given marked; explanation (a PNG, asked for with
// ?explain=1 while "Show why" is on) -> laid over the photo; unknown: true (with guess, the closest
// class) -> says in words that the photo looks like none of the model's classes, and still shows the bars.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], current: null, stream: null, asked: 0, why: false, result: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

const pct = (p) => (p >= 0.995 ? "100%" : p < 0.005 && p > 0 ? "<1%" : `${Math.round(p * 100)}%`);

function setStatus(text, kind) {
  $("status-text").textContent = text;
  $("status").className = `status ${kind || ""}`;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function waitReady() {
  for (;;) {
    try {
      const r = await fetch("/ready", { cache: "no-store" });
      if (r.ok) return true;
      const body = await r.json().catch(() => ({}));
      if (body.error) { setStatus("model failed to load", "down"); showError(body.error); return false; }
      setStatus("warming up…");
    } catch (e) {
      setStatus("server unreachable", "down");
    }
    await new Promise((res) => setTimeout(res, 700));
  }
}

function describe(m) {
  const kind = m.kind.charAt(0).toUpperCase() + m.kind.slice(1);
  return `${kind} · ${m.classes.length} classes: ${m.classes.join(", ")}`;
}

function selectModel(task) {
  state.current = state.models.find((m) => m.task === task) || state.models[0];
  for (const b of $("models").children) b.setAttribute("aria-checked", String(b.dataset.task === state.current.task));
  $("model-desc").textContent = describe(state.current);
  const foot = `${state.current.task} · ${state.current.model} · ${state.current.input_size} px · checkpoint ${state.current.checkpoint_sha256.slice(0, 12)}`;
  $("foot-model").textContent = foot;
  if (state.current.synthetic_data) $("foot-model").append(el("span", { class: "badge" }, "trained on synthetic data"));
  $("why").hidden = !state.current.explains;
  if (state.lastFile) predict(state.lastFile);
  else showWhy();
}

async function loadModels() {
  const r = await fetch("/models", { cache: "no-store" });
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || `GET /models: ${r.status}`);
  state.models = (await r.json()).models;
  const box = $("models");
  box.replaceChildren(...state.models.map((m) => {
    const b = el("button", { type: "button", role: "radio", "data-task": m.task, "aria-checked": "false" }, m.task);
    b.addEventListener("click", () => selectModel(m.task));
    return b;
  }));
  box.hidden = state.models.length < 2;
  selectModel(state.models[0].task);
}

function showPhoto(blob) {
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  img.alt = "The photo sent to the model";
  img.hidden = false;
  $("video").hidden = true;
  $("drop-empty").hidden = true;
  $("drop").classList.add("filled");
  state.result = null; // the explanation of the photo before is no longer shown
  showWhy();
}

// "Show why": the answer's explanation over the photo, while the toggle is on and the answer has one.
function showWhy() {
  const on = state.why && !!(state.current && state.current.explains);
  const button = $("why");
  button.setAttribute("aria-pressed", String(on));
  $("why-label").textContent = on ? "Hide why" : "Show why";
  const r = state.result;
  const shown = on && !!(r && r.explanation) && !$("preview").hidden;
  const img = $("why-image");
  if (shown) {
    img.src = `data:image/png;base64,${r.explanation}`;
    img.alt = r.top_k ? `Where the model looked to answer ${guessOf(r)}` : "The model's explanation over the photo";
  }
  img.hidden = !shown;
  const note = $("why-note");
  note.replaceChildren();
  if (shown && r.top_k) note.append("Red marks the parts of the photo that made the model think of ", el("strong", {}, guessOf(r)), ".");
  else if (shown) note.append("The model's explanation of its answer, over the photo.");
  else if (on && r && !r.explanation) note.append("Working out why…");
  note.hidden = !note.textContent;
}

// The class a classifier's answer is about: its label, or for an "unknown" answer the closest guess.
function guessOf(result) {
  if (result.unknown) return result.guess ?? (result.top_k && result.top_k[0] ? result.top_k[0].label : "?");
  return result.label ?? "?";
}

function toggleWhy() {
  state.why = !state.why;
  const r = state.result;
  if (state.why && state.lastFile && !(r && r.explanation)) predict(state.lastFile); // ask again, with the explanation
  showWhy();
}

function barRow(name, value, top, color) {
  const label = el("span", { class: "bar-name" });
  if (color) label.append(el("span", { class: "swatch", style: { background: color } }));
  label.append(name);
  const fill = el("div", { class: "bar-fill", style: { width: `${Math.max(0, Math.min(1, value)) * 100}%` } });
  if (color) fill.style.background = color;
  return el("li", { class: `bar-row${top ? " lead" : ""}` }, label, el("span", { class: "bar-value" }, pct(value)),
    el("div", { class: "bar-track", role: "progressbar", "aria-label": name, "aria-valuemin": "0", "aria-valuemax": "100",
      "aria-valuenow": String(Math.round(value * 100)) }, fill));
}

// An "unknown" answer, in words: the photo looks like none of the classes; the closest guess is named.
function sayUnknown(result) {
  const box = $("unknown");
  const known = state.current ? state.current.classes : [];
  const guess = guessOf(result);
  const p = result.top_k && result.top_k.find((t) => t.label === guess);
  box.replaceChildren(
    `This photo does not look like any of the ${known.length} kinds of things this model knows`,
    known.length && known.length <= 12 ? ` (${known.join(", ")}). ` : ". ",
    "The closest is ", el("strong", {}, guess), p ? ` (${pct(p.probability)})` : "",
    ", but it is probably something else.");
  box.hidden = false;
}

function render(result, seconds) {
  $("result-empty").hidden = true;
  $("result").hidden = false;
  state.result = result;
  const unknown = result.unknown === true;
  $("result").classList.toggle("is-unknown", unknown);
  $("unknown").hidden = true;
  $("label").textContent = unknown ? "Not something it knows"
    : result.labels ? result.labels.join(", ") || "no label" : result.label ?? "—";
  const colors = Object.fromEntries((result.legend || []).map((c) => [c.name, c.color]));
  const conf = $("confidence");
  conf.replaceChildren();
  if (unknown) sayUnknown(result);
  else if (result.top_k) conf.append(el("strong", {}, pct(result.confidence)), " confident");
  else if (result.class_shares) conf.append(el("strong", {}, pct(result.confidence)), " of the image");
  else if (result.labels) conf.append(el("strong", {}, pct(result.confidence)), " sure of exactly these labels");
  const fig = $("figure");
  if (result.overlay_jpeg) {
    $("result-image").src = `data:image/jpeg;base64,${result.overlay_jpeg}`;
    $("result-image").alt = "The photo with each pixel coloured by its predicted class";
    $("figure-caption").textContent = "Predicted classes over the photo";
    fig.hidden = false;
  } else fig.hidden = true;
  const legend = $("legend");
  legend.replaceChildren(...(result.legend || []).map((c) =>
    el("span", {}, el("span", { class: "swatch", style: { background: c.color } }), c.name)));
  legend.hidden = !(result.legend && result.legend.length);
  $("result-kicker").textContent = unknown ? "No match" : result.top_k ? "Prediction" : result.class_shares ? "Mostly" : result.labels ? "Labels" : "Result";
  const rows = [];
  if (result.top_k) {
    result.top_k.forEach((t, i) => rows.push(barRow(t.label, t.probability, i === 0, colors[t.label])));
  } else if (result.class_shares) {
    Object.entries(result.class_shares).sort((a, b) => b[1] - a[1])
      .forEach(([name, share], i) => rows.push(barRow(name, share, i === 0, colors[name])));
  } else if (result.labels && result.probabilities) {
    const given = new Set(result.labels);
    Object.entries(result.probabilities).sort((a, b) => b[1] - a[1])
      .forEach(([name, p]) => rows.push(barRow(name, p, given.has(name), colors[name])));
  }
  $("bars").replaceChildren(...rows);
  $("timing").textContent = seconds != null ? `Answered in ${Math.round(seconds * 1000)} ms by ${state.current.task}` : "";
  showWhy();
}

async function predict(file) {
  if (!state.current) return;
  state.lastFile = file;
  const ask = ++state.asked; // only the answer to the latest question is shown
  showError("");
  document.body.classList.add("busy");
  setStatus("thinking…", "ready");
  try {
    const form = new FormData();
    form.append("image", file, file.name || "photo.jpg");
    const k = state.current.classes.length;
    const why = state.why && state.current.explains ? "&explain=1" : "";
    const r = await fetch(`/predict/${encodeURIComponent(state.current.task)}?top_k=${k}${why}`, { method: "POST", body: form });
    const body = await r.json().catch(() => ({ error: `the server answered ${r.status}` }));
    if (ask !== state.asked) return;
    if (!r.ok) throw new Error(body.error || `the server answered ${r.status}`);
    render(body.results[0], body.seconds);
    setStatus("ready", "ready");
  } catch (e) {
    if (ask !== state.asked) return;
    showError(e.message);
    setStatus("ready", "ready");
  } finally {
    if (ask === state.asked) document.body.classList.remove("busy");
  }
}

function takeFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) { showError(`${file.name} is not an image.`); return; }
  stopCamera();
  showPhoto(file);
  predict(file);
}

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) { $("capture").click(); return; }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  } catch (e) {
    showError(`The camera is not available (${e.name}). Choose a photo instead.`);
    return;
  }
  const video = $("video");
  video.srcObject = state.stream;
  await video.play().catch(() => {});
  if (video.readyState < 2) { // the shutter appears with the first frame
    await new Promise((res) => { video.addEventListener("loadeddata", res, { once: true }); setTimeout(res, 5000); });
  }
  video.hidden = false;
  $("preview").hidden = true;
  showWhy(); // no explanation over the live view
  $("drop-empty").hidden = true;
  $("drop").classList.add("filled");
  $("shutter").hidden = false;
  $("camera-label").textContent = "Stop camera";
}

function stopCamera() {
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
  $("video").hidden = true;
  $("shutter").hidden = true;
  $("camera-label").textContent = "Use camera";
}

function shoot() {
  const video = $("video");
  if (!video.videoWidth) { showError("The camera has no picture yet; try again in a moment."); return; }
  const canvas = $("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => {
    const file = new File([blob], "camera.jpg", { type: "image/jpeg" });
    takeFile(file);
  }, "image/jpeg", 0.92);
}

function wire() {
  $("file").addEventListener("change", (e) => { takeFile(e.target.files[0]); e.target.value = ""; });
  $("capture").addEventListener("change", (e) => { takeFile(e.target.files[0]); e.target.value = ""; });
  $("camera").addEventListener("click", () => (state.stream ? stopCamera() : startCamera()));
  $("shutter").addEventListener("click", shoot);
  $("why").addEventListener("click", toggleWhy);
  const drop = $("drop");
  drop.addEventListener("click", () => { if (!drop.classList.contains("filled")) $("file").click(); });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); takeFile(e.dataTransfer.files[0]); });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
    if (item) takeFile(item.getAsFile());
  });
}

(async () => {
  wire();
  if (!(await waitReady())) return;
  try {
    await loadModels();
    setStatus("ready", "ready");
  } catch (e) {
    setStatus("error", "down");
    showError(e.message);
  }
})();
