// The explainer's interface, shared by the page (onnxruntime-web) and the Node CLI
// (onnxruntime-node): a saved lrp_onnx explainer takes <model input> and lrp_target_mask
// (float32, shaped like the output: NaN selects the predicted class, a one-hot row that class)
// and returns <model output> and lrp_relevance (shaped like the input).

export const MASK_INPUT = 'lrp_target_mask';
export const RELEVANCE_OUTPUT = 'lrp_relevance';

/** An error of the user's making (file, model, input, target): one line, exit code 2. */
export class UsageError extends Error {}

function metadata(list, name) {
  const found = (list || []).find((m) => m.name === name);
  return found && found.isTensor ? found.shape.map((d) => (typeof d === 'number' && d > 0 ? d : null)) : null;
}

/** {input, output, inputShape, outputShape} of an explainer session (null for symbolic dims),
 *  or a UsageError when the session is not an lrp_onnx explainer. */
export function describe(session) {
  const inputs = session.inputNames.filter((n) => n !== MASK_INPUT);
  const outputs = session.outputNames.filter((n) => n !== RELEVANCE_OUTPUT);
  if (!session.inputNames.includes(MASK_INPUT) || !session.outputNames.includes(RELEVANCE_OUTPUT)
      || inputs.length !== 1 || outputs.length < 1) {
    throw new UsageError(`not an lrp_onnx explainer (inputs ${JSON.stringify(session.inputNames)}, outputs `
      + `${JSON.stringify(session.outputNames)}; an explainer has one model input plus '${MASK_INPUT}' and the model `
      + `output plus '${RELEVANCE_OUTPUT}'): \`lrp-onnx web MODEL --export DIR\` writes one to DIR/explainer.onnx`);
  }
  const [input] = inputs;
  const [output] = outputs;
  return {
    input, output,
    inputShape: metadata(session.inputMetadata, input),
    outputShape: metadata(session.outputMetadata, output),
  };
}

/** Checks input dims (batch axis first) against the explainer's input shape. */
export function checkDims(info, dims) {
  const want = info.inputShape;
  const fits = want === null
    || (dims.length === want.length && dims.every((d, i) => want[i] === null || want[i] === d));
  if (!fits) {
    const shown = want.map((d) => (d === null ? '?' : d)).join(', ');
    throw new UsageError(`input of shape [${dims.join(', ')}]; the explainer's input '${info.input}' takes [${shown}]`);
  }
}

/** The lrp_target_mask for a batch of n samples: NaN (predicted class) or one-hot at target. */
export function targetMask(n, classes, target) {
  const mask = new Float32Array(n * classes);
  if (target === null || target === undefined) {
    mask.fill(NaN);
    return mask;
  }
  if (!Number.isInteger(target) || target < 0 || target >= classes) {
    throw new UsageError(`target ${target} is out of range: the model has ${classes} classes (0..${classes - 1})`);
  }
  for (let i = 0; i < n; i += 1) mask[i * classes + target] = 1;
  return mask;
}

/** The index of the largest of values[start .. start + length). */
export function argmax(values, start = 0, length = values.length) {
  let best = 0;
  for (let k = 1; k < length; k += 1) if (values[start + k] > values[start + best]) best = k;
  return best;
}

/** Runs the explainer on a batch: data (float32, C order) of shape dims (batch axis first);
 *  target null (each sample's predicted class) or a class index. Returns
 *  {output, relevance, outputDims, targets} (targets: the explained class per sample). */
export async function run(ort, session, info, data, dims, target) {
  checkDims(info, dims);
  if (data.length !== dims.reduce((a, b) => a * b, 1)) {
    throw new UsageError(`${data.length} values do not fill an input of shape [${dims.join(', ')}]`);
  }
  const n = dims[0];
  const rest = info.outputShape ? info.outputShape.slice(1) : null;
  if (rest === null || rest.includes(null)) {
    throw new UsageError(`the explainer's output '${info.output}' has no fixed size after the batch axis`);
  }
  const classes = rest.reduce((a, b) => a * b, 1);
  const feeds = {
    [info.input]: new ort.Tensor('float32', data, dims),
    [MASK_INPUT]: new ort.Tensor('float32', targetMask(n, classes, target), [n, ...rest]),
  };
  const results = await session.run(feeds, [info.output, RELEVANCE_OUTPUT]);
  const output = results[info.output].data;
  const targets = Array.from({ length: n }, (_, i) => (target ?? argmax(output, i * classes, classes)));
  return { output, relevance: results[RELEVANCE_OUTPUT].data, outputDims: results[info.output].dims, targets };
}
