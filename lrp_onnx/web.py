"""``lrp-onnx web``: the browser page of ``web/`` with an explainer, served on localhost.

The page is static: ``build_site`` writes it into a folder with ``explainer.onnx`` (the given
explainer, or the explainer compiled from a plain model) and ``config.json`` (the model's file
name and the preprocessing resolved against its input shape); ``serve`` serves that folder with
Python's http.server on 127.0.0.1 only.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import asdict
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import onnx

from .compile import MASK_INPUT, RELEVANCE_OUTPUT, compile_explainer, save_model
from .errors import InputError, ModelError
from .images import fit, preprocess_from
from .load import load_model

WEB = Path(__file__).resolve().parents[1] / "web"   # the source checkout's web/
PAGE = ("index.html", "page.mjs", "lrp.mjs")
VENDOR = ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")

def is_explainer(model: onnx.ModelProto) -> bool:
    """An lrp_onnx explainer has the input ``lrp_target_mask`` and the output ``lrp_relevance``."""
    has_mask = any(i.name == MASK_INPUT for i in model.graph.input)
    has_relevance = any(o.name == RELEVANCE_OUTPUT for o in model.graph.output)
    if has_mask != has_relevance:
        raise ModelError(f"the model has only one of the input {MASK_INPUT!r} and the output {RELEVANCE_OUTPUT!r}: "
                         "not an lrp_onnx explainer; give the model itself or an explainer saved by `lrp-onnx compile`")
    return has_mask


def _input_shape(model: onnx.ModelProto) -> tuple:
    data = [i for i in model.graph.input if i.name != MASK_INPUT]
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in data[0].type.tensor_type.shape.dim)


def build_site(model_path, out_dir, preprocess: str = "none", composite="epsilon_gamma_box", maxpool=None) -> Path:
    """Write the page, onnxruntime-web's files, ``explainer.onnx`` and ``config.json`` into
    ``out_dir``; ``model_path``: an explainer, or a model compiled here with ``composite``."""
    missing = [name for name in VENDOR if not (WEB / "vendor" / name).is_file()]
    if missing or not all((WEB / name).is_file() for name in PAGE):
        raise InputError(f"the page's files are missing under {WEB} ({', '.join(missing) or 'page'}): "
                         "run `npm ci` in web/ (Node.js and npm; it copies onnxruntime-web's files to web/vendor)")
    model = load_model(model_path)   # checked; an explainer is then served as it was saved
    explainer = onnx.load(model_path) if is_explainer(model) else compile_explainer(model, composite, maxpool).model
    shape = _input_shape(explainer)
    spec = preprocess_from(preprocess)
    fitted = fit(spec, shape)
    config = {
        "model": "explainer.onnx",
        "name": os.path.basename(model_path),
        "preprocess": {"name": preprocess if preprocess in ("none", "imagenet", "mnist") else "custom",
                       **asdict(spec), "mode": fitted.mode, "size": list(fitted.size), "layout": fitted.layout},
    }
    out = Path(out_dir)
    (out / "vendor").mkdir(parents=True, exist_ok=True)
    for name in PAGE:
        shutil.copy2(WEB / name, out / name)
    for name in VENDOR:
        shutil.copy2(WEB / "vendor" / name, out / "vendor" / name)
    save_model(explainer, out / "explainer.onnx")
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


class _Handler(SimpleHTTPRequestHandler):
    """Static files, with JavaScript module and WASM types, cross-origin isolation (so that
    onnxruntime-web may use threads) and no request log."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format, *args):
        pass


def serve(model_path, port: int = 8000, **site) -> None:
    """Build the site in a temporary folder and serve it on http://127.0.0.1:port/ until
    interrupted (port 0: a free port)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))   # so that the folder is removed
    with tempfile.TemporaryDirectory(prefix="lrp_onnx_web_") as tmp:
        root = build_site(model_path, tmp, **site)
        try:
            server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Handler, directory=str(root)))
        except OSError as exc:
            raise InputError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}): give another --port (0: a free one)") from None
        with server:
            print(f"serving {os.path.basename(model_path)} at http://127.0.0.1:{server.server_address[1]}/ "
                  "(Ctrl-C to stop)", flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass


def cli(args) -> None:
    """``lrp-onnx web MODEL [--port P] [--preprocess ...] [--export DIR]``."""
    site = dict(preprocess=args.preprocess, composite=args.composite, maxpool=args.maxpool)
    if args.export:
        build_site(args.model, args.export, **site)
        print(f"wrote {args.export}: the page and explainer.onnx; serve the folder with any static web server")
    elif not 0 <= args.port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, got {args.port}")
    else:
        serve(args.model, args.port, **site)
