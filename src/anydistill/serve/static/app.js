// anydistill serve: the demo page's script. Plain JS, no build step, nothing loaded from outside this server.
//
// Depth / semantic: an image (upload or example) goes to POST image; the input and the prediction are
// shown side by side and in a wipe view (slider). Promptable: POST image embeds the image once and returns
// its id; every change of the prompts (click = object point, right/shift-click = background point, drag =
// box) sends POST segment and draws the 3 masks it returns, the best-scored one selected.
// Coordinates sent are in the original image's pixels; pictures come back at display size.
"use strict";

const $ = (id) => document.getElementById(id);
const main = $("main");
const view = $("view");
const MASK_RGBA = [30, 144, 255, 150];

const state = {
  info: null,
  source: null, // {kind: "file", file} or {kind: "example", index}: what to send again if the id expires
  image: null, // the reply of POST image
  picture: null, // the input as an HTMLImageElement (display size)
  prompts: [], // {kind: "point", x, y, label} or {kind: "box", box: [x0, y0, x1, y1]}, original pixels
  masks: null, // [{canvas, pixels}] overlays at display size
  scores: [],
  best: 0,
  selected: 0,
  seq: 0,
  drag: null,
};

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
  main.dataset.error = isError ? text : "";
}

async function api(method, path, body = undefined, headers = {}) {
  const response = await fetch(path, { method, body, headers });
  let data;
  try {
    data = await response.json();
  } catch {
    data = { error: `${response.status} ${response.statusText}` };
  }
  if (!response.ok) {
    const error = new Error(data.error || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

// Size an image or canvas on screen: its aspect kept, as large as fits in maxWidth x maxHeight CSS px (small
// images are enlarged, large ones shrunk); the page works in the pictures' own pixels either way.
function fit(element, width, height, maxWidth, maxHeight) {
  const k = Math.min(maxWidth / width, maxHeight / height);
  element.style.width = `${Math.round(width * k)}px`;
  element.style.height = `${Math.round(height * k)}px`;
}

const roomy = (most) => Math.max(160, Math.min(most, window.innerWidth - 48));

async function loadImage(url) {
  const img = new Image();
  img.src = url;
  await img.decode();
  return img;
}

// ------------------------------------------------------------------------------------------ start

async function init() {
  try {
    state.info = await api("GET", "info");
  } catch (error) {
    setStatus(`cannot reach the server: ${error.message}`, true);
    return;
  }
  const info = state.info;
  main.dataset.task = info.task;
  const what = { depth: "depth student", semantic: "semantic student", promptable: "promptable model" }[info.task];
  $("model-line").textContent = `${what}: ${info.model}`;
  $("result-caption").textContent = info.task === "depth" ? "depth (near: red, far: blue)" : "classes";
  $("wipe-label").textContent = info.task === "depth" ? "depth" : "classes";
  setStatus(info.task === "promptable" ? "Upload an image, then click on it." : "Upload an image.");
  for (const example of info.examples) {
    const button = document.createElement("button");
    button.type = "button";
    button.title = example.name;
    button.dataset.index = example.index;
    const thumb = document.createElement("img");
    thumb.alt = example.name;
    button.append(thumb);
    button.addEventListener("click", () => send({ kind: "example", index: example.index }));
    $("examples").append(button);
    api("GET", `example/${example.index}`).then((reply) => (thumb.src = reply.image), () => {});
  }
}

$("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  event.target.value = ""; // the same file can be chosen again
  if (!file) return;
  if (state.info && file.size > state.info.max_upload_bytes) {
    const mb = (n) => (n / 2 ** 20).toFixed(1);
    setStatus(`${file.name} is ${mb(file.size)} MB; this server takes at most ${mb(state.info.max_upload_bytes)} MB`, true);
    return;
  }
  send({ kind: "file", file });
});

async function upload(source) {
  if (source.kind === "file") {
    const type = source.file.type || "application/octet-stream";
    return api("POST", "image", source.file, { "Content-Type": type });
  }
  return api("POST", `example/${source.index}`);
}

async function send(source) {
  setStatus(source.kind === "file" ? `sending ${source.file.name}…` : "running the model on the example…");
  main.dataset.busy = "1";
  try {
    const reply = await upload(source);
    state.source = source;
    await show(reply);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    main.dataset.busy = "";
  }
}

async function show(reply) {
  state.image = reply;
  if (reply.task === "promptable") return showPromptable(reply);
  return showDense(reply);
}

// ------------------------------------------------------------------------------------------ depth / semantic

async function showDense(reply) {
  const dense = $("dense");
  dense.dataset.ready = "";
  const pairs = [["input-img", reply.image], ["result-img", reply.result], ["wipe-base", reply.image], ["wipe-top", reply.result]];
  await Promise.all(pairs.map(([id, url]) => {
    $(id).src = url;
    return $(id).decode();
  }));
  const [w, h] = reply.display;
  const half = roomy(1040) / 2 - 8;
  for (const id of ["input-img", "result-img"]) fit($(id), w, h, half, 420);
  fit($("wipe-base"), w, h, roomy(900), 480);
  $("wipe-slider").style.width = $("wipe-base").style.width;
  dense.hidden = false;
  wipe();
  const legend = $("legend");
  legend.replaceChildren();
  legend.hidden = reply.task !== "semantic";
  if (reply.task === "semantic") {
    const found = new Map(reply.legend.map((entry) => [entry.id, entry]));
    const entries = state.info.classes.length ? state.info.classes : reply.legend;
    for (const entry of entries) {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = entry.color;
      const hit = found.get(entry.id);
      item.classList.toggle("absent", !hit);
      item.append(swatch, `${entry.name}${hit ? ` ${(100 * hit.fraction).toFixed(1)}%` : ""}`);
      legend.append(item);
    }
  }
  const extra = reply.task === "depth" ? `, disparity ${reply.range[0]} to ${reply.range[1]}` : "";
  setStatus(`${reply.width}×${reply.height} px, model ${reply.ms} ms${extra}`);
  dense.dataset.ready = "1";
}

function wipe() {
  const share = Number($("wipe-slider").value); // percent of the width showing the prediction, from the left
  $("wipe-top").style.clipPath = `inset(0 ${100 - share}% 0 0)`;
}

$("wipe-slider").addEventListener("input", wipe);

// ------------------------------------------------------------------------------------------ promptable

async function showPromptable(reply) {
  state.picture = await loadImage(reply.image);
  [view.width, view.height] = reply.display;
  fit(view, view.width, view.height, roomy(960), 620);
  state.prompts = [];
  state.masks = null;
  state.seq += 1; // answers to prompts on the previous image are dropped
  $("promptable").hidden = false;
  view.dataset.imageId = reply.image_id;
  draw();
  renderCandidates();
  setStatus(`${reply.width}×${reply.height} px, embedded in ${reply.ms} ms. Click on an object.`);
}

// Display pixels per original pixel, and canvas pixels per CSS pixel.
const scale = () => view.width / state.image.width;

function toImage(event, clamp) {
  const rect = view.getBoundingClientRect();
  const canvasX = (event.clientX - rect.left) * (view.width / rect.width);
  const canvasY = (event.clientY - rect.top) * (view.height / rect.height);
  let x = canvasX / scale();
  let y = canvasY / scale();
  if (clamp) {
    x = Math.min(Math.max(x, 0), state.image.width);
    y = Math.min(Math.max(y, 0), state.image.height);
  }
  return { x, y };
}

view.addEventListener("contextmenu", (event) => event.preventDefault());

view.addEventListener("mousedown", (event) => {
  if (!state.image || state.image.task !== "promptable") return;
  event.preventDefault();
  const at = toImage(event, true);
  state.drag = { start: at, end: at, button: event.button, shift: event.shiftKey,
                 clientX: event.clientX, clientY: event.clientY, moved: false };
});

window.addEventListener("mousemove", (event) => {
  const drag = state.drag;
  if (!drag) return;
  drag.end = toImage(event, true);
  if (Math.hypot(event.clientX - drag.clientX, event.clientY - drag.clientY) > 4) drag.moved = true;
  if (drag.moved) draw();
});

window.addEventListener("mouseup", () => {
  const drag = state.drag;
  if (!drag) return;
  state.drag = null;
  if (!drag.moved) {
    const label = drag.button === 2 || drag.shift ? 0 : 1;
    addPrompt({ kind: "point", x: drag.start.x, y: drag.start.y, label });
    return;
  }
  const box = [Math.min(drag.start.x, drag.end.x), Math.min(drag.start.y, drag.end.y),
               Math.max(drag.start.x, drag.end.x), Math.max(drag.start.y, drag.end.y)];
  if (drag.button === 0 && box[0] < box[2] && box[1] < box[3]) {
    state.prompts = state.prompts.filter((p) => p.kind !== "box"); // one box at a time
    addPrompt({ kind: "box", box });
  } else {
    draw();
  }
});

function addPrompt(prompt) {
  state.prompts.push(prompt);
  draw();
  requestMasks();
}

$("undo").addEventListener("click", () => {
  state.prompts.pop();
  requestMasks();
});

$("clear").addEventListener("click", () => {
  state.prompts = [];
  requestMasks();
});

async function requestMasks(retried = false) {
  const seq = ++state.seq;
  const points = state.prompts.filter((p) => p.kind === "point");
  const box = state.prompts.find((p) => p.kind === "box");
  if (!points.length && !box) {
    state.masks = null;
    draw();
    renderCandidates();
    return;
  }
  const body = JSON.stringify({
    image_id: state.image.image_id,
    points: points.map((p) => [p.x, p.y]),
    labels: points.map((p) => p.label),
    box: box ? box.box : null,
    multimask: true,
  });
  try {
    const reply = await api("POST", "segment", body, { "Content-Type": "application/json" });
    if (seq !== state.seq) return; // a newer request is on its way
    const masks = await Promise.all(reply.masks.map(maskOverlay));
    if (seq !== state.seq) return;
    Object.assign(state, { masks, scores: reply.scores, best: reply.best, selected: reply.best });
    draw();
    renderCandidates();
    const what = `${points.length} point(s)${box ? " and a box" : ""}`;
    setStatus(`${what}: ${masks.length} masks in ${reply.ms} ms, best predicted IoU ${reply.scores[reply.best].toFixed(3)}`);
    view.dataset.responses = String(Number(view.dataset.responses) + 1);
  } catch (error) {
    if (error.status === 404 && !retried && state.source && seq === state.seq) {
      // The server dropped this image's embedding (it keeps a few): send the image again, same prompts.
      try {
        const reply = await upload(state.source);
        state.image.image_id = reply.image_id;
        view.dataset.imageId = reply.image_id;
        return requestMasks(true);
      } catch (again) {
        error = again;
      }
    }
    if (seq === state.seq) setStatus(error.message, true);
  }
}

async function maskOverlay(url) {
  const img = await loadImage(url);
  const canvas = document.createElement("canvas");
  [canvas.width, canvas.height] = [img.naturalWidth, img.naturalHeight];
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const px = data.data;
  let pixels = 0;
  for (let i = 0; i < px.length; i += 4) {
    const on = px[i] > 127;
    pixels += on;
    px[i] = MASK_RGBA[0];
    px[i + 1] = MASK_RGBA[1];
    px[i + 2] = MASK_RGBA[2];
    px[i + 3] = on ? MASK_RGBA[3] : 0;
  }
  ctx.putImageData(data, 0, 0);
  return { canvas, pixels };
}

function draw() {
  const ctx = view.getContext("2d");
  ctx.clearRect(0, 0, view.width, view.height);
  if (!state.picture) return;
  ctx.drawImage(state.picture, 0, 0, view.width, view.height);
  const mask = state.masks ? state.masks[state.selected] : null;
  if (mask) ctx.drawImage(mask.canvas, 0, 0, view.width, view.height);
  view.dataset.maskPixels = String(mask ? mask.pixels : 0);
  const s = scale();
  const unit = view.width / Math.max(1, view.getBoundingClientRect().width); // canvas px per CSS px
  ctx.lineWidth = 2 * unit;
  for (const prompt of state.prompts.filter((p) => p.kind === "box")) {
    const [x0, y0, x1, y1] = prompt.box.map((v) => v * s);
    ctx.strokeStyle = "#facc15";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  const drag = state.drag;
  if (drag && drag.moved) {
    ctx.setLineDash([6 * unit, 4 * unit]);
    ctx.strokeStyle = "#ffffff";
    ctx.strokeRect(drag.start.x * s, drag.start.y * s, (drag.end.x - drag.start.x) * s, (drag.end.y - drag.start.y) * s);
    ctx.setLineDash([]);
  }
  for (const prompt of state.prompts.filter((p) => p.kind === "point")) {
    ctx.beginPath();
    ctx.arc(prompt.x * s, prompt.y * s, 7 * unit, 0, 2 * Math.PI);
    ctx.fillStyle = prompt.label ? "#12b76a" : "#f04438"; // object: green, background: red
    ctx.fill();
    ctx.lineWidth = 3 * unit;
    ctx.strokeStyle = "#ffffff";
    ctx.stroke();
    ctx.lineWidth = 1 * unit;
    ctx.strokeStyle = "#101828";
    ctx.stroke();
  }
}

function renderCandidates() {
  const list = $("candidates");
  list.replaceChildren();
  if (!state.masks) return;
  state.masks.forEach((mask, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "candidate";
    button.classList.toggle("best", i === state.best);
    button.classList.toggle("selected", i === state.selected);
    button.dataset.index = i;
    button.dataset.score = state.scores[i];
    button.dataset.pixels = mask.pixels;
    const thumb = document.createElement("canvas");
    const side = Math.min(1, 200 / view.width);
    [thumb.width, thumb.height] = [Math.round(view.width * side), Math.round(view.height * side)];
    const ctx = thumb.getContext("2d");
    ctx.drawImage(state.picture, 0, 0, thumb.width, thumb.height);
    ctx.drawImage(mask.canvas, 0, 0, thumb.width, thumb.height);
    const label = document.createElement("span");
    label.className = "score";
    const area = (100 * mask.pixels) / (view.width * view.height);
    label.textContent = `IoU ${state.scores[i].toFixed(3)} · ${area.toFixed(1)}%${i === state.best ? " · best" : ""}`;
    button.append(thumb, label);
    button.addEventListener("click", () => {
      state.selected = i;
      draw();
      renderCandidates();
    });
    list.append(button);
  });
}

init();
