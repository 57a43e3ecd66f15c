// streamconv view: live page for the view server's /ws feed.
// Protocol: JSON text messages (hello, state) plus binary image messages;
// the page sends its settings (scaling, plot, probe) back as JSON.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

// Everything known about the current connection; reset on every reconnect
// because the server starts each page afresh.
let ws = null;
let backoffMs = 500;
let colormaps = {};
let historyS = 5;
let latestT = -Infinity;          // newest sample time seen (server clock), the plots' "now"
const streams = new Map();        // stream id -> { id, section, layersEl, layers: Map }

// ---------- small helpers ----------

function setText(el, text) {
  // Skip identical writes: state messages come ~20/s and most fields don't change.
  if (el.textContent !== text) el.textContent = text;
}

function fmt3(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  if (v === 0) return "0";
  // Like printf's %.3g: exponent form for tiny values instead of a long run of zeros.
  return Math.abs(v) < 1e-4 ? v.toExponential(2) : v.toPrecision(3);
}

function make(tag, cls, parent, text) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (text !== undefined) el.textContent = text;
  if (parent) parent.appendChild(el);
  return el;
}

function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
}

// ---------- connection ----------

function setServerState(state) {
  const el = $("#server");
  setText(el, state);
  el.dataset.state = state;
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const sock = new WebSocket(`${proto}//${location.host}/ws`);
  sock.binaryType = "arraybuffer";
  ws = sock;

  sock.onopen = () => {
    backoffMs = 500;
    clearAll();                   // fresh start: the server has no memory of this page
    setServerState("connected");
    $("#server-banner").hidden = true;
    document.body.classList.remove("offline");
  };
  sock.onmessage = (ev) => {
    if (typeof ev.data === "string") onText(ev.data);
    else onImage(ev.data);
  };
  // error is always followed by close, so reconnecting is handled only there.
  sock.onclose = () => {
    if (ws !== sock) return;
    ws = null;
    setServerState("reconnecting");
    $("#server-banner").hidden = false;
    // Without the server the worker's state is unknown, and what is shown is frozen.
    setWorker("waiting", "", null);
    document.body.classList.add("offline");
    setText($("#server-retry"), `(retry in ${(backoffMs / 1000).toFixed(1)} s)`);
    setTimeout(connect, backoffMs);
    backoffMs = Math.min(backoffMs * 2, 5000);
  };
}

function onText(data) {
  let msg;
  try { msg = JSON.parse(data); } catch (e) { console.warn("view: bad JSON from server", e); return; }
  if (msg.type === "hello") onHello(msg);
  else if (msg.type === "state") onState(msg);
}

function onHello(msg) {
  colormaps = msg.colormaps || {};
  if (Number.isFinite(msg.history_s) && msg.history_s > 0) historyS = msg.history_s;
  // The page's own choices survive a reconnect: tell the (fresh) server session about any
  // that differ from its defaults.
  const opts = msg.options || {};
  for (const key of ["scaling", "plot"]) {
    const chosen = $(`#${key}`).value;
    if (opts[key] !== undefined && opts[key] !== chosen) send({ [key]: chosen });
  }
}

function clearAll() {
  for (const id of [...streams.keys()]) removeStream(id);
  latestT = -Infinity;
  setWorker("waiting", "", null);
}

function setWorker(state, endpoint, refused) {
  const el = $("#worker");
  setText(el, state);
  el.dataset.state = state;
  el.title = endpoint || "";
  $("#worker-banner").hidden = state !== "disconnected";
  // A refused handshake (CURVE) says why: waiting would never help until a key changes.
  const banner = $("#worker-banner");
  banner.dataset.refused = refused ? "yes" : "no";
  setText($("#worker-what"), refused ? "the worker refused the view:" : "worker disconnected");
  const where = endpoint ? `(${refused ? "" : "waiting for "}${endpoint})` : "";
  setText($("#worker-endpoint"), refused ? `${refused} ${where}` : where);
}

// ---------- streams and layers ----------

function getStream(id) {
  let s = streams.get(id);
  if (s) return s;
  const section = make("section", "stream");
  section.dataset.stream = id;
  const head = make("header", "stream-head", section);
  make("h2", "stream-name", head, id);
  const status = make("span", "stream-status", head);
  const session = make("span", "stream-session", head);
  const layersEl = make("div", "layers", section);
  // Appending keeps streams in order of first appearance.
  $("#streams").appendChild(section);
  $("#empty").hidden = true;
  s = { id, section, status, session, layersEl, layers: new Map() };
  streams.set(id, s);
  return s;
}

function removeStream(id) {
  const s = streams.get(id);
  if (!s) return;
  for (const name of [...s.layers.keys()]) removeLayer(s, name);
  s.section.remove();
  streams.delete(id);
  $("#empty").hidden = streams.size > 0;
}

function getLayer(s, name) {
  let L = s.layers.get(name);
  if (L) return L;
  const fig = make("figure", "layer");
  fig.dataset.stream = s.id;
  fig.dataset.layer = name;

  const cap = make("figcaption", "layer-head", fig);
  const label = make("span", "name", cap, name);
  const size = make("span", "size", cap);

  const wrap = make("div", "frame-wrap", fig);
  const img = make("img", "frame", wrap);
  img.alt = `${s.id} / ${name}`;
  img.draggable = false;
  const marker = make("div", "probe", wrap);
  marker.hidden = true;

  const bar = make("div", "bar", fig);
  const colorbar = make("canvas", "colorbar", bar);
  colorbar.width = 256;                    // one pixel per colour-map entry, stretched by CSS
  colorbar.height = 1;
  const labels = make("div", "bar-labels", bar);
  const lo = make("span", "bar-lo", labels);
  const hi = make("span", "bar-hi", labels);

  const stats = make("div", "stats", fig);
  const fps = make("span", "fps", stats);
  const latency = make("span", "latency", stats);
  const range = make("span", "range", stats);

  const counters = make("div", "counters", fig);
  const framesBox = make("span", "frames-box", counters, "frames ");
  const frames = make("span", "frames", framesBox, "0");
  const lost = make("span", "lost", counters, "lost 0");
  const resets = make("span", "resets", counters, "resets 0");

  const plotBox = make("div", "plot-box", fig);
  const plotHead = make("div", "plot-head", plotBox);
  const plotLabel = make("span", "plot-label", plotHead);
  const plotValue = make("span", "plot-value", plotHead, "–");
  const plot = make("canvas", "plot", plotBox);

  L = {
    name, fig, img, marker, labels, label, mid: null, cmap: null,
    el: { size, colorbar, lo, hi, fps, latency, range, frames, lost, resets, plot, plotLabel, plotValue },
    points: [], listed: false, created: performance.now(),
    shownUrl: null, pendingUrl: null, pendingVersion: null,
    plotW: 0, plotH: 0,
  };
  img.addEventListener("load", () => onImgLoad(L));
  img.addEventListener("error", () => onImgError(L));
  img.addEventListener("click", (ev) => onProbeClick(s, img, ev));
  // Cache the plot size instead of reading layout inside every redraw.
  L.observer = new ResizeObserver(([entry]) => {
    L.plotW = entry.contentRect.width;
    L.plotH = entry.contentRect.height;
    drawPlot(L);
  });
  L.observer.observe(plot);
  s.layersEl.appendChild(fig);
  s.layers.set(name, L);
  return L;
}

function removeLayer(s, name) {
  const L = s.layers.get(name);
  if (!L) return;
  L.observer.disconnect();
  for (const url of [L.shownUrl, L.pendingUrl]) if (url) URL.revokeObjectURL(url);
  L.fig.remove();
  s.layers.delete(name);
}

function onState(msg) {
  setWorker(msg.worker || "waiting", msg.endpoint || "", msg.refused || null);
  const now = performance.now();
  const seen = new Set();
  for (const st of msg.streams || []) {
    seen.add(st.stream);
    const s = getStream(st.stream);
    setText(s.status, st.status);
    s.status.dataset.status = st.status;
    s.section.dataset.status = st.status;
    setText(s.session, st.session ? `session ${st.session}` : "");
    const names = new Set();
    (st.layers || []).forEach((ld, i) => {
      names.add(ld.layer);
      const L = getLayer(s, ld.layer);
      L.listed = true;
      updateLayer(L, ld);
      // Follow the server's layer order (pipeline order), moving only when needed.
      const at = s.layersEl.children[i];
      if (at !== L.fig) s.layersEl.insertBefore(L.fig, at || null);
    });
    for (const [name, L] of s.layers) {
      // A card made by an image that raced ahead of its first state gets a grace period.
      if (!names.has(name) && (L.listed || now - L.created > 3000)) removeLayer(s, name);
    }
  }
  for (const [id, s] of streams) {
    const young = [...s.layers.values()].some((L) => !L.listed && now - L.created <= 3000);
    if (!seen.has(id) && !young) removeStream(id);
  }
  // Trim every buffer against the newest server time, so a stalled stream's plot drains.
  const cutoff = latestT - historyS;
  for (const s of streams.values()) {
    for (const L of s.layers.values()) {
      let k = 0;
      while (k < L.points.length && L.points[k][0] < cutoff) k++;
      if (k) L.points.splice(0, k);
    }
  }
  schedulePlots();
}

function updateLayer(L, d) {
  const e = L.el;
  // The stream's input: its own look and a plain name (its layer name is not one to show).
  L.fig.classList.toggle("input", !!d.input);
  setText(L.label, d.input ? "input" : L.name);
  setText(e.fps, `${(d.fps ?? 0).toFixed(1)} fps`);
  setText(e.latency, d.latency_ms == null ? "– ms" : `${d.latency_ms.toFixed(1)} ms`);
  setText(e.size, `${d.width}×${d.height}${d.channels > 1 ? `×${d.channels}` : ""}`);
  setText(e.range, `min ${fmt3(d.min)} max ${fmt3(d.max)}`);
  setText(e.frames, String(d.frames ?? 0));
  setText(e.lost, `lost ${d.lost ?? 0}`);
  e.lost.classList.toggle("warn", (d.lost ?? 0) > 0);
  setText(e.resets, `resets ${d.resets ?? 0}`);
  e.resets.classList.toggle("flash", d.reset_ago_s != null && d.reset_ago_s < 3);
  // Reserve the image's shape before the first frame arrives, so the grid doesn't jump.
  if (d.width && d.height) L.img.style.aspectRatio = `${d.width} / ${d.height}`;

  setColormap(L, d.colormap);
  setText(e.lo, fmt3(d.lo));
  setText(e.hi, fmt3(d.hi));
  setProbe(L, d.probe);

  for (const p of d.points || []) {
    L.points.push(p);
    if (p[0] > latestT) latestT = p[0];
  }
}

function setColormap(L, name) {
  // Redraw only on change (or once the hello's maps are known): the maps are static.
  const colors = colormaps[name];
  const key = colors ? name : null;
  if (L.cmap === key && L.cmapSet === colormaps) return;
  L.cmap = key;
  L.cmapSet = colormaps;
  const ctx = L.el.colorbar.getContext("2d");
  const list = colors || Array.from({ length: 256 }, (_, i) => `rgb(${i},${i},${i})`);
  list.forEach((c, i) => { ctx.fillStyle = c; ctx.fillRect(i * 256 / list.length, 0, 256 / list.length + 1, 1); });
  // Diverging maps are centred on zero (lo = -hi), so the middle label is always 0.
  if (name === "diverging" && !L.mid) {
    L.mid = make("span", "bar-mid", null, "0");
    L.labels.insertBefore(L.mid, L.el.hi);
  } else if (name !== "diverging" && L.mid) {
    L.mid.remove();
    L.mid = null;
  }
}

function setProbe(L, probe) {
  const on = Array.isArray(probe) && probe.length === 2;
  L.marker.hidden = !on;
  if (on) {
    L.marker.style.left = `${probe[0] * 100}%`;
    L.marker.style.top = `${probe[1] * 100}%`;
  }
}

function onProbeClick(s, img, ev) {
  const r = img.getBoundingClientRect();
  if (!r.width || !r.height) return;
  const clamp = (v) => Math.min(1, Math.max(0, v));
  const x = clamp((ev.clientX - r.left) / r.width);
  const y = clamp((ev.clientY - r.top) / r.height);
  send({ probe: { stream: s.id, x, y } });
  // Show it at once; the next state message confirms (or corrects) it.
  for (const L of s.layers.values()) setProbe(L, [x, y]);
}

// ---------- images ----------

const decoder = new TextDecoder();

function onImage(buf) {
  if (buf.byteLength < 4) return;
  const n = new DataView(buf).getUint32(0, true);
  let meta;
  try { meta = JSON.parse(decoder.decode(new Uint8Array(buf, 4, n))); } catch (e) {
    console.warn("view: bad image header", e);
    return;
  }
  const L = getLayer(getStream(meta.stream), meta.layer);
  const url = URL.createObjectURL(new Blob([new Uint8Array(buf, 4 + n)], { type: meta.mime || "image/jpeg" }));
  // A newer image replaces one still loading: that load is abandoned, so free it now.
  if (L.pendingUrl) URL.revokeObjectURL(L.pendingUrl);
  L.pendingUrl = url;
  L.pendingVersion = meta.image;
  L.img.src = url;
}

function onImgLoad(L) {
  if (!L.pendingUrl || L.img.getAttribute("src") !== L.pendingUrl) return;
  // Only now is the old picture off screen, so its URL can go without a flash.
  if (L.shownUrl) URL.revokeObjectURL(L.shownUrl);
  L.shownUrl = L.pendingUrl;
  L.pendingUrl = null;
  L.img.dataset.image = String(L.pendingVersion);
}

function onImgError(L) {
  if (!L.pendingUrl || L.img.getAttribute("src") !== L.pendingUrl) return;
  console.warn(`view: could not decode image for ${L.fig.dataset.stream}/${L.name}`);
  URL.revokeObjectURL(L.pendingUrl);
  L.pendingUrl = null;
}

// ---------- plots ----------

let plotsQueued = false;

function schedulePlots() {
  // Coalesce: several state messages per frame still cost one redraw.
  if (plotsQueued) return;
  plotsQueued = true;
  requestAnimationFrame(() => {
    plotsQueued = false;
    for (const s of streams.values()) for (const L of s.layers.values()) drawPlot(L);
  });
}

function drawPlot(L) {
  const mode = $("#plot").value;
  const idx = mode === "pixel" ? 2 : 1;
  setText(L.el.plotLabel, mode === "pixel" ? "probe pixel" : "frame mean");
  let lo = Infinity, hi = -Infinity, last = null;
  for (const p of L.points) {
    const v = p[idx];
    if (v == null) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
    last = v;
  }
  // The value text is kept current even while the canvas has no size yet.
  setText(L.el.plotValue, fmt3(last));
  const c = L.el.plot;
  const w = L.plotW, h = L.plotH;
  if (!w || !h) return;
  const dpr = window.devicePixelRatio || 1;
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
    c.width = Math.round(w * dpr);
    c.height = Math.round(h * dpr);
  }
  const ctx = c.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);

  ctx.font = "10px system-ui, sans-serif";
  if (last === null) {
    ctx.fillStyle = "#9aa1ab";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(mode === "pixel" ? "click the image to probe" : "no data", w / 2, h / 2);
    return;
  }
  if (hi - lo < 1e-9) { const pad = Math.max(Math.abs(hi) * 0.05, 1e-3); lo -= pad; hi += pad; }

  // Tick labels sit in a left gutter (as wide as they need) so the line never runs under them.
  const hiText = fmt3(hi), loText = fmt3(lo);
  const gutter = Math.ceil(Math.max(ctx.measureText(hiText).width, ctx.measureText(loText).width)) + 8;
  const top = 6, bottom = h - 6;
  const t1 = latestT, t0 = t1 - historyS;
  const xOf = (t) => gutter + ((t - t0) / historyS) * (w - gutter - 4);
  const yOf = (v) => bottom - ((v - lo) / (hi - lo)) * (bottom - top);

  ctx.strokeStyle = "#e3e6ea";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (const y of [top, bottom]) { ctx.moveTo(gutter, y + 0.5); ctx.lineTo(w, y + 0.5); }
  ctx.stroke();
  ctx.fillStyle = "#6b7280";
  ctx.textAlign = "right";
  ctx.textBaseline = "top";
  ctx.fillText(hiText, gutter - 4, top - 4);
  ctx.textBaseline = "bottom";
  ctx.fillText(loText, gutter - 4, bottom + 4);

  // Null samples (probe unknown) break the line instead of bridging the gap.
  ctx.strokeStyle = "#2563eb";
  ctx.lineWidth = 1.5;
  ctx.lineJoin = "round";
  ctx.beginPath();
  let penDown = false, lx = 0, ly = 0;
  for (const p of L.points) {
    const v = p[idx];
    if (v == null) continue;       // a burst's older frames have no mean: join across
    lx = xOf(p[0]); ly = yOf(v);
    if (penDown) ctx.lineTo(lx, ly); else ctx.moveTo(lx, ly);
    penDown = true;
  }
  ctx.stroke();
  ctx.fillStyle = "#2563eb";
  ctx.beginPath();
  ctx.arc(lx, ly, 2.5, 0, Math.PI * 2);
  ctx.fill();
}

// ---------- controls ----------

$("#scaling").addEventListener("change", (ev) => send({ scaling: ev.target.value }));
$("#plot").addEventListener("change", (ev) => {
  send({ plot: ev.target.value });
  schedulePlots();                // the buffers hold both series; redraw now
});

connect();
