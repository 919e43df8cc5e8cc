// The live view of a jaxstyle run: one event stream of the run's state, pictures fetched when they change,
// and the loss drawn on a canvas. Everything here ships in the package: no library, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const token = document.body.dataset.token;
const ENDED = ["finished", "stopped", "failed"];
const COLORS = {loss: "#1d1d1f", content: "#1f77b4", style: "#d62728", tv: "#2ca02c", temporal: "#9467bd"};
const LAYER_COLORS = ["#f4a6a6", "#f7c58f", "#c7a79b", "#e6a3cf", "#c9c97a", "#9fd5de", "#b5a8e0"];
const view = {program: -1, points: [], tiles: [], current: 0, pinned: null, status: ""};

// ---- numbers as people read them

function number(x) {
  if (x === null || x === undefined || !isFinite(x)) return "-";
  const a = Math.abs(x);
  return a !== 0 && (a >= 1e5 || a < 1e-3) ? x.toExponential(2) : x.toPrecision(3);
}

function clock(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "-";
  const s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(r)}` : `${m}:${two(r)}`;
}

function bytes(n) {
  if (!n) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// ---- pictures: one request at a time per <img>, always for the newest version

function show(img, url) {
  if (img.dataset.loading === "1") { img.dataset.want = url; return; }
  if (img.dataset.url === url) return;
  img.dataset.loading = "1";
  img.dataset.want = "";
  img.onload = img.onerror = () => {
    img.dataset.loading = "0";
    img.dataset.url = url;
    img.dataset.version = new URL(url, location.href).searchParams.get("v");
    if (img.dataset.want && img.dataset.want !== url) show(img, img.dataset.want);
  };
  img.src = url;
}

const tileUrl = (i) => `tile/${i}.png?v=${view.tiles[i].version}`;

function drawPictures() {
  const chosen = view.pinned ?? view.current;
  if (view.tiles[chosen]) {
    show($("current"), tileUrl(chosen));
    $("caption").textContent = view.tiles[chosen].name + (view.pinned !== null ? " (pinned: click it again to follow the run)" : "");
  }
  const box = $("tiles");
  box.hidden = view.tiles.length < 2;
  view.tiles.forEach((tile, i) => {
    let fig = box.children[i];
    if (!fig) {
      fig = document.createElement("figure");
      fig.innerHTML = "<img alt=''><figcaption></figcaption>";
      fig.onclick = () => { view.pinned = view.pinned === i ? null : i; drawPictures(); };
      box.appendChild(fig);
    }
    fig.querySelector("figcaption").textContent = tile.name;
    fig.classList.toggle("selected", i === chosen);
    show(fig.querySelector("img"), tileUrl(i));
  });
}

// ---- the plot: the loss at every step, and each term at every report, on a log scale

function series() {
  const lines = {loss: view.points.map((p) => [p.step, p.loss])};
  for (const p of view.points) {
    if (!p.terms) continue;
    for (const [name, value] of Object.entries(p.terms)) (lines[name] ??= []).push([p.terms_step, value]);
  }
  const layer = (name) => name.startsWith("style:");  // the terms first, then each style layer's share
  return Object.fromEntries(Object.entries(lines).sort(([a], [b]) => layer(a) - layer(b)));
}

function colour(name, layers) {
  return COLORS[name] ?? LAYER_COLORS[layers.indexOf(name) % LAYER_COLORS.length];
}

function drawPlot() {
  const canvas = $("plot"), ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio; canvas.height = height * ratio;
  canvas.dataset.points = String(view.points.length);
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const lines = series(), layers = Object.keys(lines).filter((k) => k.startsWith("style:"));
  const all = Object.values(lines).flat().filter(([, y]) => y > 0);
  if (!all.length) return;
  const left = 52, right = 10, top = 8, bottom = 26;
  const x0 = Math.min(...all.map(([x]) => x)), x1 = Math.max(x0 + 1, ...all.map(([x]) => x));
  let y0 = Math.floor(Math.log10(Math.min(...all.map(([, y]) => y))));
  let y1 = Math.ceil(Math.log10(Math.max(...all.map(([, y]) => y))));
  if (y1 === y0) y1 += 1;
  const X = (x) => left + ((x - x0) / (x1 - x0)) * (width - left - right);
  const Y = (y) => top + ((y1 - Math.log10(y)) / (y1 - y0)) * (height - top - bottom);
  g.font = "11px system-ui, sans-serif"; g.fillStyle = "#6e6e73"; g.strokeStyle = "#e5e5ea"; g.lineWidth = 1;
  for (let d = y0; d <= y1; d++) {
    g.beginPath(); g.moveTo(left, Y(10 ** d)); g.lineTo(width - right, Y(10 ** d)); g.stroke();
    g.fillText(`1e${d}`, 6, Y(10 ** d) + 4);
  }
  [[x0, "left"], [Math.round((x0 + x1) / 2), "center"], [x1, "right"]].forEach(([x, align]) => {
    g.textAlign = align;
    g.fillText(String(x), X(x), height - 8);
  });
  g.textAlign = "left";
  g.fillText("step", 6, height - 8);
  for (const [name, points] of Object.entries(lines)) {
    const shown = points.filter(([, y]) => y > 0);
    if (!shown.length) continue;
    g.strokeStyle = colour(name, layers);
    g.lineWidth = name === "loss" ? 2 : name.startsWith("style:") ? 1 : 1.5;
    g.setLineDash(name.startsWith("style:") ? [4, 3] : []);
    g.beginPath();
    shown.forEach(([x, y], i) => (i ? g.lineTo(X(x), Y(y)) : g.moveTo(X(x), Y(y))));
    g.stroke();
  }
  g.setLineDash([]);
  $("legend").innerHTML = "";
  for (const [name, points] of Object.entries(lines)) {
    const item = document.createElement("span"), swatch = document.createElement("i");
    swatch.style.background = colour(name, layers);
    item.append(swatch, `${name} ${number(points[points.length - 1][1])}`);
    $("legend").appendChild(item);
  }
}

// ---- the rest of the page

function drawNumbers(m) {
  const s = m.stats || {};
  $("command").textContent = m.command;
  $("step").textContent = s.step === undefined ? "-" : `${s.step} / ${s.steps}` + (s.items > 1 ? ` × ${s.items}` : "");
  $("scale").textContent = s.scale === undefined ? "-" : `${s.scale} / ${s.scales}`;
  $("speed").textContent = number(s.steps_per_second);
  $("left").textContent = clock(s.seconds_left);
  $("elapsed").textContent = clock(s.elapsed);
  $("memory").textContent = s.memory ? `${bytes(s.memory.bytes)} (${s.memory.where})` : "-";
  const table = $("settings");
  if (table.rows.length !== Object.keys(m.settings).length) {
    table.innerHTML = "";
    for (const [key, value] of Object.entries(m.settings)) {
      const row = table.insertRow();
      row.insertCell().textContent = key;
      row.insertCell().textContent = Array.isArray(value) ? value.join(", ") : String(value);
    }
  }
}

function setStatus(status, message) {
  view.status = status;
  $("status").textContent = status;
  $("status").className = `status ${status}`;
  $("message").textContent = message || "";
  $("stop").disabled = status !== "running";
  document.body.dataset.status = status;
}

function update(m) {
  if (m.reset) view.points = [];
  view.program = m.program;
  view.points.push(...m.points);
  view.tiles = m.tiles;
  view.current = m.current;
  if (view.pinned !== null && view.pinned >= view.tiles.length) view.pinned = null;
  setStatus(m.status, m.message);
  drawNumbers(m);
  drawPictures();
  drawPlot();
  if (ENDED.includes(m.status)) events.close();
}

$("stop").onclick = async () => {
  $("stop").disabled = true;
  const answer = await fetch("stop", {method: "POST", headers: {"X-Jaxstyle-Token": token}});
  if (!answer.ok) setStatus(view.status, `stop refused: ${await answer.text()}`);
};

const events = new EventSource("events");
events.onmessage = (e) => update(JSON.parse(e.data));
events.onerror = () => { if (!ENDED.includes(view.status)) setStatus("disconnected", "the run is not answering"); };
window.addEventListener("resize", drawPlot);
