// The page: loads an lrp_onnx explainer (config.json from `lrp-onnx web`, or a picked/dropped
// .onnx) into onnxruntime-web (WebGPU where the browser offers it, else WASM), explains an image
// and draws the tutorial's heatmap and an overlay. Programs use window.lrpOnnx.ready / .explain.
import * as ort from './vendor/ort.webgpu.min.mjs';
import { argmax, describe, run, UsageError } from './lrp.mjs';

ort.env.wasm.wasmPaths = new URL('./vendor/', import.meta.url).href;   // local files only

/** lrp_onnx.images.PRESETS (tests/test_web.py checks that they agree). */
const PRESETS = {
  none: { mode: 'auto', size: null, range: [0, 1], mean: null, std: null, layout: 'auto', invert: false },
  imagenet: { mode: 'RGB', size: null, range: [0, 1], mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], layout: 'auto', invert: false },
  mnist: { mode: 'L', size: null, range: [-1, 1], mean: null, std: null, layout: 'auto', invert: false },
};
// matplotlib's seismic at 0, .25, .5, .75, 1 (lrp_onnx.render.tutorial_heatmap)
const SEISMIC = [[0, 0, 0.3], [0, 0, 1], [1, 1, 1], [1, 0, 0], [0.5, 0, 0]];

const $ = (id) => document.getElementById(id);
const state = { session: null, info: null, name: null, backend: null, presets: { ...PRESETS }, image: null, last: null };
let queue = Promise.resolve();   // onnxruntime-web runs one session.run at a time
let settle;
const ready = new Promise((resolve, reject) => { settle = { resolve, reject }; });
ready.catch(() => {});

function showError(err) {
  $('error').textContent = err ? String(err.message || err) : '';
  if (err) document.body.dataset.state = 'error';
}

async function createSession(bytes) {
  const forced = new URLSearchParams(window.location.search).get('ep');
  const gpu = !forced && navigator.gpu && await navigator.gpu.requestAdapter().catch(() => null);
  const candidates = forced ? [forced] : (gpu ? ['webgpu', 'wasm'] : ['wasm']);
  let failure;
  for (const backend of candidates) {
    try {
      return { session: await ort.InferenceSession.create(bytes, { executionProviders: [backend] }), backend };
    } catch (err) {
      failure = err;
    }
  }
  throw new UsageError(`onnxruntime-web cannot load this model (${failure.message.split('\n')[0]}); `
    + 'an explainer saved with ONNX IR version 14 or later: `lrp-onnx compile MODEL -o EXPLAINER` writes one it reads');
}

async function loadModel(bytes, name) {
  const { session, backend } = await createSession(bytes);
  const info = describe(session);
  Object.assign(state, { session, info, name, backend, last: null });
  const classes = info.outputShape.slice(1).reduce((a, b) => a * b, 1);
  $('target').replaceChildren(new Option('predicted', ''), ...Array.from({ length: classes }, (_, k) => new Option(String(k), String(k))));
  const shape = (dims) => `[${dims.map((d) => (d === null ? '?' : d)).join(', ')}]`;
  $('status').textContent = `onnxruntime-web ${ort.env.versions.web}, ${backend}; ${name}: `
    + `'${info.input}' ${shape(info.inputShape)} -> '${info.output}' ${shape(info.outputShape)}`;
  settle.resolve();
}

function fillPresets(selected) {
  $('preprocess').replaceChildren(...Object.keys(state.presets).map((k) => new Option(k, k, false, k === selected)));
}

/** The spec resolved against the model's input shape (lrp_onnx.images.fit). */
function fit(spec, shape) {
  const dims = shape.slice(1);
  let layout = spec.layout;
  if (layout === 'auto') {
    const channelsLast = dims.length === 3 && [1, 3].includes(dims[2]) && ![1, 3].includes(dims[0]);
    if (dims.length === 1) layout = 'flat';
    else if (dims.length === 3 && ([1, 3].includes(dims[0]) || [1, 3].includes(dims[2]))) layout = channelsLast ? 'NHWC' : 'NCHW';
    else throw new UsageError(`cannot feed an image to a model input of shape [${shape.join(', ')}]`);
  }
  let channels = 1;
  let size = null;
  if (layout === 'flat') {
    const side = Math.round(Math.sqrt(dims[0]));
    size = side * side === dims[0] ? [side, side] : null;
  } else {
    const [c, h, w] = layout === 'NCHW' ? dims : [dims[2], dims[0], dims[1]];
    channels = c;
    size = h && w ? [h, w] : null;
  }
  size = spec.size || size;
  if (!size) throw new UsageError(`the model input [${shape.join(', ')}] has no fixed image size`);
  return { ...spec, layout, size, mode: spec.mode !== 'auto' ? spec.mode : (channels === 3 ? 'RGB' : 'L') };
}

/** {data, dims, display (RGB floats)}: the image centre-cropped to the model's aspect ratio,
 *  resized (the browser's smoothing), then pixel range, mean/std and layout as in Python. */
function toInput(image, spec) {
  const [height, width] = spec.size;
  const { width: w, height: h } = image;
  let box;
  if (w * height > h * width) {
    const crop = Math.round((h * width) / height);
    box = [Math.floor((w - crop) / 2), 0, crop, h];
  } else {
    const crop = Math.round((w * height) / width);
    box = [0, Math.floor((h - crop) / 2), w, crop];
  }
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(image, ...box, 0, 0, width, height);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const channels = spec.mode === 'L' ? 1 : 3;
  const n = width * height;
  const data = new Float32Array(n * channels);
  const display = new Float32Array(n * 3);
  const [low, high] = spec.range;
  for (let p = 0; p < n; p += 1) {
    const [r, g, b] = rgba.subarray(4 * p, 4 * p + 3);
    const values = channels === 1 ? [(r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16] : [r, g, b];   // PIL's "L"
    for (let c = 0; c < channels; c += 1) {
      const v = spec.invert ? 255 - values[c] : values[c];
      let x = low + (v / 255) * (high - low);
      if (spec.mean) x -= spec.mean[c];
      if (spec.std) x /= spec.std[c];
      data[spec.layout === 'NCHW' ? c * n + p : p * channels + c] = x;
    }
    for (let c = 0; c < 3; c += 1) display[3 * p + c] = (spec.invert ? 255 - values[c % channels] : values[c % channels]) / 255;
  }
  return { data, display };
}

/** One sample's relevance as a height x width map (channels summed; lrp_onnx.images.relevance_map). */
function relevanceMap(relevance, spec) {
  const n = spec.size[0] * spec.size[1];
  const channels = relevance.length / n;
  const map = new Float64Array(n);
  for (let p = 0; p < n; p += 1) {
    for (let c = 0; c < channels; c += 1) map[p] += relevance[spec.layout === 'NCHW' ? c * n + p : p * channels + c];
  }
  return map;
}

/** The tutorial's range b = 10 (mean |R|^3)^(1/3). */
function tutorialRange(map) {
  return 10 * Math.cbrt(map.reduce((s, r) => s + Math.abs(r) ** 3, 0) / map.length);
}

/** RGB floats of the tutorial's heatmap: seismic darkened by 15%, symmetric range b. */
function tutorialHeatmap(map) {
  const b = tutorialRange(map);
  const rgb = new Float32Array(map.length * 3);
  map.forEach((r, p) => {
    const t = b > 0 ? Math.min(1, Math.max(0, 0.5 + r / (2 * b))) : 0.5;
    const low = Math.min(Math.floor(t * 4), 3);
    const frac = t * 4 - low;
    for (let c = 0; c < 3; c += 1) rgb[3 * p + c] = 0.85 * (SEISMIC[low][c] * (1 - frac) + SEISMIC[low + 1][c] * frac);
  });
  return rgb;
}

/** The heatmap over the image in gray, weighted by |R| against half the tutorial's range (render.overlay). */
function overlay(display, map, heat) {
  const scale = tutorialRange(map) / 2;
  return display.map((_, i) => {
    const p = Math.floor(i / 3);
    const weight = scale > 0 ? 0.8 * Math.min(1, Math.abs(map[p]) / scale) : 0;
    const shade = (display[3 * p] + display[3 * p + 1] + display[3 * p + 2]) / 3;
    return (1 - weight) * shade + weight * heat[i];
  });
}

function draw(canvas, rgb, [height, width]) {
  Object.assign(canvas, { width, height });
  const ctx = canvas.getContext('2d');
  const image = ctx.createImageData(width, height);
  for (let p = 0; p < width * height; p += 1) {
    for (let c = 0; c < 3; c += 1) image.data[4 * p + c] = Math.floor(Math.min(1, Math.max(0, rgb[3 * p + c])) * 255 + 0.5);
    image.data[4 * p + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

/** Explains one sample: data (Float32Array, C order) of shape dims = [1, ...the model's input];
 *  target: a class index, or null for the predicted class. */
async function explain(data, dims, target = null) {
  await ready;
  if (dims[0] !== 1) throw new UsageError(`explain takes one sample (dims [1, ...]), got dims [${dims.join(', ')}]`);
  const input = data instanceof Float32Array ? data : Float32Array.from(data);
  const job = queue.then(() => run(ort, state.session, state.info, input, dims, target));
  queue = job.catch(() => {});
  const res = await job;
  return { output: res.output, relevance: res.relevance, target: res.targets[0] };
}

async function explainImage() {
  if (!state.session || !state.image) return;
  document.body.dataset.state = 'explaining';
  const spec = fit(state.presets[$('preprocess').value], state.info.inputShape);
  const { data, display } = toInput(state.image, spec);
  const dims = [1, ...state.info.inputShape.slice(1)];
  const chosen = $('target').value === '' ? null : Number($('target').value);
  const res = await explain(data, dims, chosen);
  const predicted = argmax(res.output);
  state.last = { data, dims, spec, ...res, predicted };
  Object.assign($('predicted'), { textContent: `predicted class ${predicted} (score ${res.output[predicted].toFixed(2)}); explaining class ${res.target}` });
  $('predicted').dataset.class = String(predicted);
  $('scores').replaceChildren(...Array.from(res.output, (s, k) => {
    const span = Object.assign(document.createElement('span'), { textContent: `[${k}] ${s.toFixed(2)}`, title: `explain class ${k}` });
    if (k === res.target) span.className = 'target';
    span.onclick = () => { $('target').value = String(k); guarded(explainImage); };
    return span;
  }));
  const map = relevanceMap(res.relevance, spec);
  const heat = tutorialHeatmap(map);
  draw($('input'), display, spec.size);
  draw($('heatmap'), heat, spec.size);
  draw($('overlay'), overlay(display, map, heat), spec.size);
  document.body.dataset.state = 'explained';
}

async function guarded(action) {
  try {
    showError(null);
    await action();
  } catch (err) {
    showError(err);
  }
}

async function openFile(file) {
  if (file.name.toLowerCase().endsWith('.onnx')) {
    await loadModel(new Uint8Array(await file.arrayBuffer()), file.name);
  } else {
    state.image = await createImageBitmap(file).catch(() => { throw new UsageError(`${file.name} is not an image the browser can read`); });
  }
  await explainImage();
}

async function start() {
  const response = await fetch('config.json').catch(() => null);
  if (!response || !response.ok) {
    fillPresets('none');
    $('status').textContent = `onnxruntime-web ${ort.env.versions.web}: pick or drop an explainer (.onnx)`;
    return;
  }
  const config = await response.json();
  const { name, ...spec } = config.preprocess;
  state.presets[name] = spec;
  fillPresets(name);
  const model = await fetch(config.model);
  if (!model.ok) throw new UsageError(`cannot fetch ${config.model} (${model.status})`);
  await loadModel(new Uint8Array(await model.arrayBuffer()), config.name);
}

window.lrpOnnx = {
  ready, explain, presets: PRESETS,
  get backend() { return state.backend; },
  get last() { return state.last; },
};
$('model-file').onchange = (e) => e.target.files[0] && guarded(() => openFile(e.target.files[0]));
$('image-file').onchange = (e) => e.target.files[0] && guarded(() => openFile(e.target.files[0]));
$('preprocess').onchange = () => guarded(explainImage);
$('target').onchange = () => guarded(explainImage);
document.addEventListener('dragover', (e) => { e.preventDefault(); $('drop').classList.add('over'); });
document.addEventListener('dragleave', () => $('drop').classList.remove('over'));
document.addEventListener('drop', (e) => {
  e.preventDefault();
  $('drop').classList.remove('over');
  if (e.dataTransfer.files[0]) guarded(() => openFile(e.dataTransfer.files[0]));
});
start().catch((err) => { showError(err); settle.reject(err); });
