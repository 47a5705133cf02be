"""``lrp-onnx audit MODEL DATA --out DIR``: the command line's audit (errors are handled by
``lrp_onnx.cli.main``: exit code 2 and one line)."""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from . import run


def run_cli(args) -> None:
    if args.max_clusters < 2:
        raise InputError(f"--max-clusters must be at least 2, got {args.max_clusters}")
    result = run(args.model, args.data, args.out, composite=args.composite, maxpool=args.maxpool, engine=args.engine,
                 address=args.address, workers=args.workers, batch_size=args.batch_size, preprocess=args.preprocess,
                 target=args.target, float16=args.float16, providers=args.providers, image_column=args.image_column,
                 label_column=args.label_column, max_clusters=args.max_clusters, progress=not args.no_progress)
    errors = [e for e in result.table.column("error").to_pylist() if e]
    print(f"explained {len(result.table) - len(errors)} of {len(result.table)} samples ({len(errors)} errors)")
    for c in result.classes:
        if c.spray is not None:
            sizes = ", ".join(map(str, np.bincount(c.spray.clusters)))
            print(f"class {c.target}: {len(c.rows)} samples, {c.spray.k} cluster(s) of {sizes}")
    print("wrote " + ", ".join(result.paths[k] for k in ("table", "relevance", "report", "virelay") if k in result.paths))
