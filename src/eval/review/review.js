// apunet review page: reads the manifest, decodes one case at a time (deflated, base64 in a
// <script> tag each), and draws CT, expert contours, a sample or a heat overlay on a canvas.
"use strict";
const M = JSON.parse(document.getElementById("manifest").textContent);
const W = M.width, H = M.height, HW = W * H, PACK = Math.ceil(HW / 8);
const EXPERT_COLORS = ["#ffd23f", "#3fd2ff", "#ff6b9e", "#9eff6b", "#c49bff", "#ffa24f"];
const ALL_COLUMNS = [
  ["index", M.volume ? "slice" : "case", 0], ["ged", "GED", 3], ["hm_iou", "HM-IoU", 3], ["sample_diversity", "sample div.", 3],
  ["annotator_diversity", "expert div.", 3], ["entropy", "entropy", 3], ["lesion_px", "lesion px", 0],
  ["experts_agree", "agree", -1],
];
// Only what this page has: predict pages have no expert metrics.
const COLUMNS = ALL_COLUMNS.filter(([k]) => k === "index" || M.cases.some((c) => c[k] != null));
const S = {
  sort: { key: "index", dir: 1 }, filter: { disagree: false, unsure: false }, current: null, data: null,
  sample: 0, showSample: true, overlay: "none", opacity: 0.5, experts: [],
  window: { ...M.default_window }, zoom: 1, pan: [0, 0], cache: new Map(),
};
const $ = (id) => document.getElementById(id);

// ---- decoding -------------------------------------------------------------------------
async function decode(i) {
  if (S.cache.has(i)) return S.cache.get(i);
  const b64 = document.getElementById("case-" + i).textContent.trim();
  const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream("deflate"));
  const buf = new Uint8Array(await new Response(stream).arrayBuffer());
  let o = 0;
  const ct = new Float32Array(HW);
  const dv = new DataView(buf.buffer);
  const [lo, hi] = M.value_range;
  for (let k = 0; k < HW; k++) ct[k] = lo + (dv.getUint16(2 * k, true) / 65535) * (hi - lo);
  o = 2 * HW;
  const bits = (n) => { const out = []; for (let a = 0; a < n; a++) { out.push(buf.subarray(o, o + PACK)); o += PACK; } return out; };
  const experts = bits(M.annotators), samples = bits(M.samples_per_image);
  const mean = buf.subarray(o, o + HW);
  const c = { ct, experts, samples, mean, entropy: entropyOf(mean) };
  if (S.cache.size > 64) S.cache.delete(S.cache.keys().next().value);
  S.cache.set(i, c);
  return c;
}
const bit = (packed, k) => (packed[k >> 3] >> (7 - (k & 7))) & 1;
function entropyOf(mean) {
  const e = new Float32Array(HW);
  for (let k = 0; k < HW; k++) {
    const p = mean[k] / 255;
    e[k] = p <= 0 || p >= 1 ? 0 : -(p * Math.log2(p) + (1 - p) * Math.log2(1 - p));
  }
  return e;
}

// ---- case list ------------------------------------------------------------------------
function visibleCases() {
  let cs = M.cases.slice();
  if (S.filter.disagree) cs = cs.filter((c) => !c.experts_agree);
  if (S.filter.unsure) cs = cs.filter((c) => c.entropy >= M.unsure_entropy);
  const { key, dir } = S.sort;
  const v = (c) => (typeof c[key] === "boolean" ? +c[key] : c[key] ?? -Infinity);
  cs.sort((a, b) => (v(a) - v(b)) * dir || a.index - b.index);
  return cs;
}
function renderList() {
  const head = COLUMNS.map(([k, label]) => {
    const sorted = S.sort.key === k ? ` class="sorted" data-dir="${S.sort.dir > 0 ? " ▲" : " ▼"}"` : "";
    return `<th data-key="${k}"${sorted}>${label}</th>`;
  }).join("");
  const rows = visibleCases().map((c) => {
    const cells = COLUMNS.map(([k, , d]) => `<td>${d < 0 ? (c[k] ? "yes" : "no") : c[k] == null ? "–" : (+c[k]).toFixed(d)}</td>`);
    return `<tr data-i="${c.index}"${c.index === S.current ? ' class="sel"' : ""}>${cells.join("")}</tr>`;
  }).join("");
  $("cases").innerHTML = `<thead><tr>${head}</tr></thead><tbody>${rows}</tbody>`;
  $("count").textContent = `${visibleCases().length} of ${M.cases.length} cases`;
}
function sortBy(key) {
  S.sort = { key, dir: S.sort.key === key ? -S.sort.dir : key === "index" ? 1 : -1 };
  renderList();
}

// ---- drawing --------------------------------------------------------------------------
function heat(t) { // 0..1 -> viridis-like
  const r = Math.max(0, Math.min(1, 1.6 * t - 0.4)), g = Math.max(0, Math.min(1, 1.2 * t)), b = Math.max(0, Math.min(1, 0.8 - 0.9 * (t - 0.45) ** 2 * 4));
  return [255 * r, 255 * g, 255 * b];
}
function hex(c) { return [1, 3, 5].map((k) => parseInt(c.slice(k, k + 2), 16)); }
function draw() {
  const c = S.data;
  if (!c) return;
  const cv = $("canvas"), ctx = cv.getContext("2d");
  const img = ctx.createImageData(W, H), px = img.data;
  const lo = S.window.level - S.window.width / 2, span = Math.max(S.window.width, 1e-6);
  const a = S.opacity;
  for (let k = 0; k < HW; k++) {
    let g = Math.max(0, Math.min(255, ((c.ct[k] - lo) / span) * 255));
    let rgb = [g, g, g];
    if (S.overlay === "mean" || S.overlay === "entropy") {
      const t = S.overlay === "mean" ? c.mean[k] / 255 : c.entropy[k];
      if (t > 0.02) { const h = heat(t); rgb = rgb.map((v, j) => v * (1 - a) + h[j] * a); }
    }
    if (S.showSample && c.samples.length && bit(c.samples[S.sample], k)) {
      rgb = [rgb[0] * (1 - a) + 255 * a, rgb[1] * (1 - a) + 40 * a, rgb[2] * (1 - a) + 40 * a];
    }
    px.set([rgb[0], rgb[1], rgb[2], 255], 4 * k);
  }
  c.experts.forEach((m, e) => {
    if (!S.experts[e]) return;
    const col = hex(EXPERT_COLORS[e % EXPERT_COLORS.length]);
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      const k = y * W + x;
      if (!bit(m, k)) continue;
      const edge = x === 0 || y === 0 || x === W - 1 || y === H - 1 || !bit(m, k - 1) || !bit(m, k + 1) || !bit(m, k - W) || !bit(m, k + W);
      if (edge) px.set([...col, 255], 4 * k);
    }
  });
  ctx.putImageData(img, 0, 0);
  const fit = Math.min(512 / W, 512 / H) * S.zoom;
  cv.style.transform = `translate(${S.pan[0]}px, ${S.pan[1]}px) scale(${fit})`;
  $("sampleLabel").textContent = c.samples.length ? `${S.sample + 1} / ${c.samples.length}` : "none";
}

// ---- one case -------------------------------------------------------------------------
async function select(i) {
  S.current = i;
  history.replaceState(null, "", "#case=" + i);
  S.data = await decode(i);
  S.sample = Math.min(S.sample, Math.max(0, S.data.samples.length - 1));
  $("sample").max = Math.max(0, S.data.samples.length - 1);
  $("sample").value = S.sample;
  const meta = M.cases.find((c) => c.index === i);
  $("metrics").innerHTML = Object.entries(M.definitions).filter(([k]) => meta[k] != null).map(([k, d]) =>
    `<dt>${k.replace(/_/g, " ")}</dt><dd>${typeof meta[k] === "boolean" ? (meta[k] ? "yes" : "no") : (+meta[k]).toFixed(3)}<small>${d}</small></dd>`).join("");
  $("caseTitle").textContent = M.volume ? `slice ${i + 1} of ${M.cases.length}` : `case ${i}`;
  if (M.volume) { $("slice").value = i; $("sliceLabel").textContent = `${i + 1} / ${M.cases.length}`; }
  renderList();
  draw();
  document.body.dataset.ready = "1";
}
function setSample(k) {
  if (!S.data || !S.data.samples.length) return;
  const n = S.data.samples.length;
  S.sample = ((k % n) + n) % n;
  $("sample").value = S.sample;
  draw();
}

// ---- controls -------------------------------------------------------------------------
function setWindow(w) {
  S.window = { ...w };
  $("ww").value = +w.width.toFixed(3); $("wl").value = +w.level.toFixed(3);
  draw();
}
function buildControls() {
  $("presets").innerHTML = M.window_presets.map((p, j) => `<button data-p="${j}">${p.name}</button>`).join(" ");
  $("presets").onclick = (e) => { const j = e.target.dataset.p; if (j != null) setWindow(M.window_presets[j]); };
  $("units").textContent = M.value_units;
  $("ww").oninput = () => { S.window.width = +$("ww").value; draw(); };
  $("wl").oninput = () => { S.window.level = +$("wl").value; draw(); };
  $("sample").oninput = () => setSample(+$("sample").value);
  $("showSample").onchange = () => { S.showSample = $("showSample").checked; draw(); };
  $("overlay").onchange = () => { S.overlay = $("overlay").value; draw(); };
  $("opacity").oninput = () => { S.opacity = +$("opacity").value; draw(); };
  S.experts = Array.from({ length: M.annotators }, () => true);
  // Pages without expert masks (predict) have nothing to filter or outline.
  if (!M.annotators) {
    $("expertsBox").hidden = true;
    $("disagree").parentElement.hidden = true;
  }
  $("experts").innerHTML = S.experts.map((_, e) =>
    `<label><input type="checkbox" data-e="${e}" checked><span class="swatch" style="background:${EXPERT_COLORS[e % EXPERT_COLORS.length]}"></span>expert ${e + 1}</label>`).join("");
  $("experts").onchange = (e) => { S.experts[e.target.dataset.e] = e.target.checked; draw(); };
  $("disagree").onchange = () => { S.filter.disagree = $("disagree").checked; renderList(); };
  $("unsure").onchange = () => { S.filter.unsure = $("unsure").checked; renderList(); };
  $("cases").onclick = (e) => {
    const th = e.target.closest("th"); if (th) return sortBy(th.dataset.key);
    const tr = e.target.closest("tr[data-i]"); if (tr) select(+tr.dataset.i);
  };
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type === "number") return;
    if (e.key === "ArrowRight") { setSample(S.sample + 1); e.preventDefault(); }
    if (e.key === "ArrowLeft") { setSample(S.sample - 1); e.preventDefault(); }
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      const cs = visibleCases(), j = cs.findIndex((c) => c.index === S.current);
      const next = cs[Math.max(0, Math.min(cs.length - 1, j + (e.key === "ArrowDown" ? 1 : -1)))];
      if (next) select(next.index);
      e.preventDefault();
    }
  });
  const stage = $("stage");
  stage.addEventListener("wheel", (e) => {
    e.preventDefault();
    const f = e.deltaY < 0 ? 1.25 : 0.8, r = stage.getBoundingClientRect();
    const mx = e.clientX - r.left, my = e.clientY - r.top;
    S.pan = [mx - (mx - S.pan[0]) * f, my - (my - S.pan[1]) * f];
    S.zoom *= f; draw();
  }, { passive: false });
  let drag = null;
  stage.onmousedown = (e) => { drag = [e.clientX - S.pan[0], e.clientY - S.pan[1]]; };
  window.onmouseup = () => { drag = null; };
  window.onmousemove = (e) => { if (drag) { S.pan = [e.clientX - drag[0], e.clientY - drag[1]]; draw(); } };
  if (M.volume) {
    $("sliceBox").hidden = false;
    $("slice").max = M.cases.length - 1;
    $("slice").oninput = () => select(+$("slice").value);
  }
  $("resetView").onclick = () => { S.zoom = 1; S.pan = [0, 0]; draw(); };
}

// ---- run --------------------------------------------------------------------------------
function curves() {
  const c = M.curves;
  if (!c || !c.epoch.length) return '<p class="muted">no training curves (metrics.csv) found</p>';
  const series = Object.entries(c).filter(([k, v]) => k !== "epoch" && v.some(Number.isFinite));
  return series.map(([name, ys]) => {
    const pts = ys.map((y, j) => [c.epoch[j], y]).filter(([, y]) => Number.isFinite(y));
    const [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
    const [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
    const sx = (x) => 30 + ((x - x0) / Math.max(x1 - x0, 1e-9)) * 250, sy = (y) => 90 - ((y - y0) / Math.max(y1 - y0, 1e-9)) * 75;
    const d = pts.map(([x, y], j) => `${j ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join("");
    return `<svg width="290" height="105"><text x="30" y="10">${name}</text><text x="0" y="18">${y1.toPrecision(3)}</text>` +
      `<text x="0" y="92">${y0.toPrecision(3)}</text><text x="280" y="103" text-anchor="end">epoch ${x1}</text>` +
      `<path d="${d}" fill="none" stroke="#7bf" stroke-width="1.5"/></svg>`;
  }).join("");
}

function init() {
  document.title = M.title;
  $("title").textContent = M.title;
  $("summary").textContent = M.summary;
  $("config").textContent = M.config || "(no config.toml found)";
  $("curves").innerHTML = curves();
  buildControls();
  setWindow(M.default_window);
  renderList();
  // #case=N (kept up to date) opens that case: a link to a case can be shared.
  const asked = +(/case=(\d+)/.exec(location.hash) || [])[1];
  const first = M.cases.some((c) => c.index === asked) ? asked : visibleCases()[0]?.index;
  if (first != null) select(first); else document.body.dataset.ready = "1";
}
window.review = { S, sortBy, select, setSample, visibleCases, draw };
init();
