"""Exporters: models from training frameworks (PyTorch, scikit-learn, the LRP Toolbox) to ONNX,
and the digits data and models shipped in models/. PyTorch and skl2onnx are optional extras."""
from __future__ import annotations

import sys

EXIT_USAGE = 2


class ExportError(ValueError):
    """A model cannot be exported: unknown name, unreadable or ill-fitting file, bad format."""


def run_cli(run, args) -> int:
    """Call ``run(args)``; an ExportError is printed as one line and gives exit code 2."""
    try:
        run(args)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0
