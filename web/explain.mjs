#!/usr/bin/env node
// node web/explain.mjs EXPLAINER.onnx INPUT.npy --out RELEVANCE.npy [--target K] [--logits OUTPUT.npy]
// Explains INPUT.npy (one sample, or a batch along the first axis) with a saved lrp_onnx explainer
// in onnxruntime-node; writes the relevance (shaped like the input) and, with --logits, the
// model's output. Errors of the user's making exit with code 2 and one line.
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import { describe, run, UsageError } from './lrp.mjs';
import { formatNpy, parseNpy } from './npy.mjs';

const USAGE = 'usage: node web/explain.mjs EXPLAINER.onnx INPUT.npy --out RELEVANCE.npy [--target K] [--logits OUTPUT.npy]';

function options(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv, allowPositionals: true,
      options: { out: { type: 'string' }, target: { type: 'string' }, logits: { type: 'string' } },
    });
  } catch (err) {
    throw new UsageError(`${err.message}; ${USAGE}`);
  }
  const { positionals, values } = parsed;
  if (positionals.length !== 2 || !values.out) throw new UsageError(USAGE);
  const target = values.target === undefined || values.target === 'pred' ? null : Number(values.target);
  if (target !== null && !Number.isInteger(target)) {
    throw new UsageError(`--target must be 'pred' or a class index, got '${values.target}'`);
  }
  return { explainer: positionals[0], input: positionals[1], out: values.out, logits: values.logits, target };
}

function readFile(path, what) {
  if (!existsSync(path)) throw new UsageError(`${what} not found: ${path}`);
  return readFileSync(path);
}

function writeNpy(path, data, shape) {
  const tmp = `${path}.tmp${process.pid}`;   // written, then moved into place
  writeFileSync(tmp, formatNpy(data, shape));
  renameSync(tmp, path);
}

async function main(argv) {
  const args = options(argv);
  const modelBytes = readFile(args.explainer, 'explainer file');
  const array = parseNpy(new Uint8Array(readFile(args.input, 'input file')), args.input);
  const { default: ort } = await import('onnxruntime-node').catch((err) => {
    throw new UsageError(`cannot load onnxruntime-node (${err.message.split('\n')[0]}): run \`npm ci\` in web/`);
  });
  let session;
  try {
    session = await ort.InferenceSession.create(modelBytes);
  } catch (err) {
    const irVersion = /Unsupported model IR version: (\d+)/.exec(err.message);
    throw new UsageError(irVersion
      ? `${args.explainer} has ONNX IR version ${irVersion[1]}, newer than onnxruntime-node ${ort.env.versions.node} reads: `
        + 'compile it again with `lrp-onnx compile MODEL -o EXPLAINER`, which writes the lowest IR version it needs'
      : `${args.explainer} is not a readable ONNX model (${err.message.split('\n')[0]})`);
  }
  const info = describe(session);
  const single = info.inputShape !== null && array.shape.length === info.inputShape.length - 1;
  const dims = single ? [1, ...array.shape] : array.shape;
  const res = await run(ort, session, info, array.data, dims, args.target);
  const outputDims = single ? res.outputDims.slice(1) : res.outputDims;
  writeNpy(args.out, res.relevance, array.shape);
  if (args.logits) writeNpy(args.logits, res.output, outputDims);
  const classes = res.output.length / dims[0];
  res.targets.forEach((t, i) => {
    let sum = 0;
    const size = res.relevance.length / dims[0];
    for (let j = i * size; j < (i + 1) * size; j += 1) sum += res.relevance[j];
    console.log(`sample ${i}: target ${t} (score ${res.output[i * classes + t].toPrecision(4)}), relevance sum ${sum.toPrecision(4)}`);
  });
  console.log(`wrote ${args.out}${args.logits ? ` and ${args.logits}` : ''}`);
}

main(process.argv.slice(2)).catch((err) => {
  const line = String(err.message).split('\n').map((s) => s.trim()).filter((s) => s).join(' ');
  console.error(err instanceof UsageError ? `explain.mjs: error: ${line}` : `explain.mjs: internal error: ${line}`);
  process.exit(err instanceof UsageError ? 2 : 1);
});
