// postinstall: copies onnxruntime-web's WebGPU/WASM build from node_modules to vendor/, so
// that the page loads everything from its own folder (no network, no bundler).
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'node_modules', 'onnxruntime-web', 'dist');
const vendor = join(here, 'vendor');
const FILES = ['ort.webgpu.min.mjs', 'ort-wasm-simd-threaded.asyncify.mjs', 'ort-wasm-simd-threaded.asyncify.wasm'];

mkdirSync(vendor, { recursive: true });
for (const name of FILES) copyFileSync(join(dist, name), join(vendor, name));
console.log(`copied ${FILES.join(', ')} to ${vendor}`);
