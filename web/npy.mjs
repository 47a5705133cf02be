// A small .npy reader and writer (format 1.0-3.0): little-endian float32 or float64 arrays in
// C order; float64 is read as float32, and arrays are written as float32.
import { UsageError } from './lrp.mjs';

const MAGIC = '\x93NUMPY';

/** {data: Float32Array, shape: number[]} of a .npy file's bytes (a Uint8Array). */
export function parseNpy(bytes, name = 'input') {
  const text = (start, end) => String.fromCharCode(...bytes.subarray(start, end));
  if (bytes.length < 10 || text(0, 6) !== MAGIC) throw new UsageError(`${name} is not a .npy file`);
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shape) throw new UsageError(`${name}: unreadable .npy header ${header.trim()}`);
  if (fortran[1] === 'True') throw new UsageError(`${name} is in Fortran order; save it in C order (np.ascontiguousarray)`);
  const dims = shape[1].split(',').map((s) => s.trim()).filter((s) => s).map(Number);
  const size = dims.reduce((a, b) => a * b, 1);
  const offset = bytes.byteOffset + start + headerLength;
  const kinds = { '<f4': Float32Array, '<f8': Float64Array };
  const Kind = kinds[descr[1]];
  if (!Kind) throw new UsageError(`${name} has dtype ${descr[1]}; give float32 (or float64) numbers`);
  if (bytes.length - start - headerLength < size * Kind.BYTES_PER_ELEMENT) throw new UsageError(`${name} is truncated`);
  const raw = new Kind(bytes.buffer.slice(offset, offset + size * Kind.BYTES_PER_ELEMENT));
  return { data: Kind === Float32Array ? raw : Float32Array.from(raw), shape: dims };
}

/** The bytes of a .npy (version 1.0) holding data (a Float32Array) with the given shape. */
export function formatNpy(data, shape) {
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(', ');
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${dims}), }`;
  header += ' '.repeat(63 - ((10 + header.length) % 64)) + '\n';   // the data starts 64-byte aligned
  const out = new Uint8Array(10 + header.length + data.byteLength);
  out.set(Array.from(MAGIC, (c) => c.charCodeAt(0)), 0);
  out.set([1, 0, header.length & 0xff, header.length >> 8], 6);
  out.set(new TextEncoder().encode(header), 10);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), 10 + header.length);
  return out;
}
