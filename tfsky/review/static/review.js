// tfsky stream review: one page, two views (the stream list at "/", one stream at "/stream/<id>").
// Every change is POSTed with the version the page holds; the server answers with the new stream (or 409
// when another tab changed it first, which is shown and not retried). Text from the manifests (labels, file
// names, details) reaches the page only as text: nodes are built with `element` and `new Option`, never from HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let stream = null;   // the stream as the server last sent it
let selected = 0;    // index of the selected frame
let cards = [];      // the frame cards, in frame order
let showSkyMask = false;  // cards show the camera's sky mask tinted over each frame

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({error: `the server answered ${response.status} without JSON`}));
  if (!response.ok || data.error) {
    throw Object.assign(new Error(data.error || response.statusText), {status: response.status});
  }
  return data;
}

// A DOM node: `properties` are set as DOM properties (className, textContent, src...), children appended as
// nodes or text; nothing is parsed as HTML.
function element(tag, properties = {}, children = []) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

function showMessage(text, kind) {
  const box = $("message");
  box.hidden = !text;
  box.className = kind || "";
  box.textContent = text || "";
}

async function listStreams() {
  const streams = await api("/api/streams");
  const header = element("tr", {}, ["stream", "camera", "frames", "left to review"].map(
    (name) => element("th", {textContent: name})));
  const rows = streams.map((s) => element("tr", {}, [
    element("td", {}, [element("a", {href: `/stream/${encodeURIComponent(s.id)}`, textContent: s.id})]),
    ...[s.camera, s.frames, s.left].map((value) => element("td", {textContent: String(value)}))]));
  $("content").replaceChildren(element("table", {className: "streams"}, [header, ...rows]));
  $("title").textContent = `${streams.length} streams`;
}

async function openStream(id) {
  stream = await api(`/api/streams/${encodeURIComponent(id)}`);
  $("title").textContent = `stream ${stream.id} (camera ${stream.camera})`;
  $("label").replaceChildren(...stream.conditions.map((c, i) => new Option(`${i < 9 ? i + 1 + " " : ""}${c}`, c)));
  $("toolbar").hidden = false;
  $("keys").hidden = false;
  $("skymask").hidden = !stream.camera_mask;
  $("skymask").title = stream.camera_mask ? `S: the camera's sky mask (${stream.camera_mask})` : "";
  const grid = element("div", {className: "grid", id: "grid"});
  cards = stream.frames.map((frame, index) => {
    const card = element("div", {className: "card"}, [
      element("img", {loading: "lazy", alt: frame.file, src: thumbnail(frame)}),
      element("div", {className: "badges"}),
      element("div", {className: "meta"}, [
        element("span", {className: "time"}), element("span", {className: "label"})]),
    ]);
    card.dataset.file = frame.file;
    card.addEventListener("click", () => select(index));
    card.addEventListener("dblclick", () => openFrame(index));
    grid.appendChild(card);
    return card;
  });
  $("content").replaceChildren(grid);
  refresh();
  select(0);
  requestAnimationFrame(() => requestAnimationFrame(() => { window.tfskyPainted = performance.now(); }));
}

// The card picture of `frame`: its thumbnail, or with the sky mask shown, the camera's mask tinted over it.
function thumbnail(frame) {
  return `/${showSkyMask ? "skymask" : "thumbs"}/${encodeURIComponent(stream.id)}/${encodeURIComponent(frame.file)}`;
}

function toggleSkyMask() {
  if (!stream.camera_mask) return;
  showSkyMask = !showSkyMask;
  $("skymask").setAttribute("aria-pressed", String(showSkyMask));
  $("skymask").textContent = showSkyMask ? "Hide sky mask" : "Show sky mask";
  stream.frames.forEach((frame, index) => { cards[index].querySelector("img").src = thumbnail(frame); });
}

function refresh() {
  stream.frames.forEach((frame, index) => drawCard(cards[index], frame));
  $("left").textContent = `${stream.left} of ${stream.frames.length} left to review`;
  $("undo").disabled = stream.undo === 0;
  syncToolbar();
}

function drawCard(card, frame) {
  const flags = [];
  if (frame.reason) flags.push([frame.reason, frame.detail]);
  if (frame.review) flags.push([frame.review, "reviewer"]);
  if (stream.moved_from === frame.file) flags.push(["moved-from", "the camera moved at this frame"]);
  if (stream.sky_disagrees.includes(frame.file)) flags.push(["sky_disagrees", "its own sky differs from the camera's"]);
  card.querySelector(".badges").replaceChildren(...flags.map(([name, why]) =>
    element("span", {className: `badge ${name}`, title: String(why), textContent: name.replace("_", " ")})));
  card.classList.toggle("accepted", frame.review === "accepted");
  card.classList.toggle("rejected", frame.review === "rejected");
  card.classList.toggle("unusable", !frame.usable);
  card.querySelector(".time").textContent = frame.timestamp.replace("T", " ");
  const label = card.querySelector(".label");
  const source = frame.label_source === "model" ? "model" : "human";
  label.className = `label ${frame.condition ? source : ""}`;
  const confidence = frame.confidence === null ? "" : ` ${Math.round(frame.confidence * 100)}%`;
  label.textContent = frame.condition ? `${frame.condition}${confidence}` : "unlabelled";
  const predicted = frame.prediction ? `model: ${frame.prediction.condition} ` +
    `${Math.round(frame.prediction.probability * 100)}% (${frame.prediction.model})` : "no model prediction";
  label.title = `${frame.condition ? source + " label" : "no label"}; ${predicted}`;
}

function select(index) {
  if (!cards.length) return;
  selected = Math.max(0, Math.min(cards.length - 1, index));
  cards.forEach((card, i) => card.classList.toggle("selected", i === selected));
  cards[selected].scrollIntoView({block: "nearest"});
  syncToolbar();
}

function syncToolbar() {
  const frame = stream.frames[selected];
  if (!frame) return;
  const select = $("label");
  if (frame.condition && !Array.from(select.options).some((o) => o.value === frame.condition)) {
    select.add(new Option(frame.condition, frame.condition));
  }
  select.value = frame.condition || "";
  $("moved").textContent = stream.moved_from === frame.file ? "Clear camera-moved mark" : "Camera moved from here";
}

// POST a change; true when the server saved it (the page then shows the stream it answered).
async function send(path, body) {
  try {
    stream = await api(path, {...body, version: stream.version});
    showMessage("");
    refresh();
    return true;
  } catch (err) {
    const reload = err.status === 409 ? " — press F5 to reload" : "";
    showMessage(`Not saved: ${err.message}${reload}`);
    return false;
  }
}

// Edit the selected frame; with `advance` the next frame is selected, once the edit is saved (not before: a
// reviewer must see which frame's edit failed).
async function edit(field, value, advance) {
  const frame = stream.frames[selected];
  const saved = await send(`/api/streams/${encodeURIComponent(stream.id)}/edit`, {frame: frame.file, field, value});
  if (saved && advance) select(selected + 1);
  return saved;
}

function toggleReview(value) {
  const frame = stream.frames[selected];
  return edit("review", frame.review === value ? null : value, frame.review !== value);
}

function toggleMoved() {
  const frame = stream.frames[selected];
  return edit("moved_from", stream.moved_from === frame.file ? null : frame.file, false);
}

function undo() {
  return send(`/api/streams/${encodeURIComponent(stream.id)}/undo`, {});
}

function openFrame(index) {
  const frame = stream.frames[index];
  const dialog = document.createElement("dialog");
  const id = encodeURIComponent(stream.id), file = encodeURIComponent(frame.file);
  const panels = [["frame", `/frames/${id}/${file}`], ...stream.demo.map((name) => [name, `/demo/${id}/${name}/${file}`])];
  dialog.append(
    element("p", {textContent: `${frame.file} — ${frame.reason || "passes the checks"} ${frame.detail}`}),
    element("div", {className: "panels"}, panels.map(([name, src]) => element("figure", {}, [
      element("img", {src, alt: name}), element("figcaption", {textContent: name})]))),
    element("form", {method: "dialog"}, [element("button", {textContent: "Close"})]));
  dialog.addEventListener("close", () => dialog.remove());
  document.body.appendChild(dialog);
  dialog.showModal();
}

function selectNextLeft() {
  const count = stream.frames.length;
  for (let step = 1; step <= count; step++) {
    const index = (selected + step) % count;
    if (stream.frames[index].review === null) return select(index);
  }
  showMessage("Every frame of this stream is reviewed.", "info");
}

function columns() {
  const top = cards[0].offsetTop;
  const count = cards.findIndex((card) => card.offsetTop !== top);
  return count < 1 ? cards.length : count;
}

document.addEventListener("keydown", (event) => {
  if (!stream || event.ctrlKey || event.metaKey || event.altKey || event.target.tagName === "SELECT") return;
  if (document.querySelector("dialog[open]")) return;
  const key = event.key.toLowerCase();
  const moves = {arrowright: 1, arrowleft: -1, arrowdown: columns(), arrowup: -columns()};
  if (key in moves) select(selected + moves[key]);
  else if (key === "a") toggleReview("accepted");
  else if (key === "r") toggleReview("rejected");
  else if (key === "m") toggleMoved();
  else if (key === "s") toggleSkyMask();
  else if (key === "u") undo();
  else if (key === "n") selectNextLeft();
  else if (key === "enter") openFrame(selected);
  else if (/^[1-9]$/.test(key) && stream.conditions[Number(key) - 1]) edit("condition", stream.conditions[Number(key) - 1], false);
  else return;
  event.preventDefault();
});

$("accept").addEventListener("click", () => toggleReview("accepted"));
$("reject").addEventListener("click", () => toggleReview("rejected"));
$("moved").addEventListener("click", toggleMoved);
$("undo").addEventListener("click", undo);
$("skymask").addEventListener("click", toggleSkyMask);
$("label").addEventListener("change", (event) => { edit("condition", event.target.value, false); event.target.blur(); });

const route = location.pathname.match(/^\/stream\/(.+)$/);
(route ? openStream(decodeURIComponent(route[1])) : listStreams()).catch((err) => showMessage(err.message));
