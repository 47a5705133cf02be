"""The ``lrp-onnx`` command line: demo, compile, inspect."""
from __future__ import annotations

import argparse
import sys

from .errors import LRPError

EXIT_USAGE = 2


def _compile(args):
    from .compile import compile_explainer

    compiled = compile_explainer(args.model, args.composite, args.maxpool)
    compiled.save(args.output)
    print(f"wrote {args.output}: inputs {compiled.input_name!r} and 'lrp_target_mask', "
          f"{len(compiled.rules)} layers with rules")


def _inspect(args):
    from .compile import compile_explainer

    compiled = compile_explainer(args.model, args.composite, args.maxpool)
    op_types = {node.name: node.op_type for node in compiled.model.graph.node}
    print(f"{'layer':40s} {'op':18s} rule")
    for name, rule in compiled.rules.items():
        print(f"{name:40s} {op_types[name]:18s} {rule}")


def _demo(args):
    from .demo import run_demo

    run_demo(args.out)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="lrp-onnx", description="Layer-wise Relevance Propagation compiled into ONNX.")
    top.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = top.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="explain digits with the tutorial's MLP and write a heatmap PNG")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.set_defaults(run=_demo)

    for name, fn, text in (("compile", _compile, "write the standalone explainer ONNX model"),
                           ("inspect", _inspect, "list the layers that take a rule and their rules")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("model", help="an ONNX model file")
        cmd.add_argument("--composite", default="epsilon_gamma_box", help="preset name or JSON file")
        cmd.add_argument("--maxpool", choices=("winner", "avg"), default=None, help="override the composite's MaxPool mode")
        if name == "compile":
            cmd.add_argument("-o", "--output", required=True, help="where to write the explainer")
        cmd.set_defaults(run=fn)
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (LRPError, OSError) as exc:
        if args.debug:
            raise
        print(f"lrp-onnx: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
