"""What stops a model from being explained, and one summary of it.

Compiling walks every node on the relevance path and collects a ``Blocker`` wherever it cannot
go on (no handler, no gradient, a handler's refusal, an element type or size it cannot take)
instead of stopping at the first: ``compile.assess`` is that walk, and compiling,
``lrp-onnx inspect`` and ``lrp_onnx.coverage`` all call it, so none of them can give an
all-clear that another then refuses.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Type

from onnx import TensorProto

from .errors import LRPError, ModelError, UnsupportedOpError

#: Node names listed per group in a summary; the rest are counted.
NAMES_SHOWN = 3

HINT_HANDLER = ("lrp_onnx has no LRP rule for this op: export the model with supported ops instead "
                "(README, Supported ops)")
HINT_GRADIENT = "use an LRP composite, or a model without this op, for the gradient methods"
HINT_FLOAT32 = ("lrp_onnx explains float32 models (float16/bfloat16 ones are computed in float32): explain the "
                "float32 model this file was converted from")
HINT_NCHWC = ("onnxruntime saved this file at ORT_ENABLE_ALL, in its hardware-specific NCHWc layout: save it with "
              "SessionOptions.graph_optimization_level = ORT_ENABLE_BASIC (or EXTENDED), or explain the original model")
HINT_CONTRIB = ("save the file with SessionOptions.graph_optimization_level = ORT_ENABLE_BASIC, or explain the "
                "model it was optimized from (README, Deployed formats)")
HINT_QUANTIZED = ("lrp_onnx reads per-tensor and per-channel QDQ, QOperator and dynamic int8 models "
                  "(README, Deployed formats); explain the float32 model this one was quantized from")
#: Quantized ops: what remains of them after canonicalization is a form lrp_onnx does not read.
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}
HINT_STATIC = ("export the model with static sizes after the batch axis, or fix them with "
               "`python -m onnxruntime.tools.make_dynamic_shape_fixed --dim_param NAME --dim_value SIZE IN OUT`")


@dataclass(frozen=True)
class Blocker:
    """One reason the model cannot be explained: ``problem`` says what, ``hint`` what to do;
    ``op_type`` (``domain:Op`` outside ONNX's domain) and ``node`` say where, when a node is
    the cause. ``kind``: "no handler", "no gradient", "refused" (by the node's handler),
    "model" (the explained input or output) or "composite". ``error`` is the exception class
    compiling raises for it."""

    problem: str
    hint: str
    op_type: Optional[str] = None
    node: Optional[str] = None
    kind: str = "model"
    error: Type[LRPError] = field(default=ModelError, compare=False)

    def line(self) -> str:
        named = self.node is None or repr(self.node) in self.problem   # a handler's message names its node
        where = "" if named else f": node {self.node!r} ({self.op_type})"
        return f"{self.problem}{where}; {self.hint}" if self.hint else f"{self.problem}{where}"


def from_exception(exc: LRPError, op_type: str, node: str) -> Blocker:
    """A handler's refusal as a blocker (its message names the node and says what it needs)."""
    return Blocker(str(exc), "", op_type, node, "refused", type(exc))


def _quantized(op_type: str, domain: str) -> bool:
    return (op_type in QUANTIZED_OPS or op_type.startswith("QLinear")
            or (domain == "com.microsoft" and op_type == "QGemm"))


def model_blockers(mg, reported: Sequence[str] = ()) -> List[Blocker]:
    """The composite-independent checks on the relevance sources and the explained output of
    ``mg`` (a ModelGraph): float32 element types; and the quantized ops and onnxruntime
    fusions left anywhere in the graph, except the nodes named in ``reported`` (already a
    blocker of their own, with the same hint). Sizes after the batch axis may be dynamic; a
    handler that needs them static says so (ModelGraph.static_shape, with HINT_STATIC)."""
    found = []
    for role, tensor in [("input", t) for t in mg.sources] + [("output", mg.output)]:
        elem = mg.elem_types.get(tensor, 0)
        if elem != TensorProto.FLOAT:
            found.append(Blocker(f"the model {role} {tensor!r} has element type {TensorProto.DataType.Name(elem)}",
                                 HINT_FLOAT32))
    nodes = list(mg.model.graph.node)
    if any(n.domain == "com.microsoft.nchwc" for n in nodes):
        found.append(Blocker("the model uses onnxruntime's NCHWc layout (com.microsoft.nchwc ops)", HINT_NCHWC,
                             error=UnsupportedOpError))
    from .ops.registry import has_handler   # here: ops imports this module's neighbours

    elsewhere = [n for n in nodes if n.name not in set(reported)]
    contrib = sorted({n.op_type for n in elsewhere if n.domain == "com.microsoft" and not has_handler(n)
                      and not _quantized(n.op_type, n.domain)})
    if contrib:
        found.append(Blocker(f"onnxruntime fusions that lrp_onnx does not undo remain ({', '.join(contrib)})",
                             HINT_CONTRIB, error=UnsupportedOpError))
    quantized = sorted({n.op_type for n in elsewhere if _quantized(n.op_type, n.domain)})
    if quantized:
        found.append(Blocker(f"quantized ops remain after canonicalization ({', '.join(quantized)})", HINT_QUANTIZED,
                             error=UnsupportedOpError))
    return found


def summary(blockers: Sequence[Blocker]) -> List[str]:
    """One line per kind of problem: blockers with the same problem, op type and hint (say a
    hundred nodes without a handler) are one line with their count and the first node names."""
    groups: Dict[tuple, List[Blocker]] = defaultdict(list)
    for blocker in blockers:
        groups[blocker.problem, blocker.op_type, blocker.hint].append(blocker)
    lines = []
    for (problem, op_type, hint), members in groups.items():
        if len(members) == 1:
            lines.append(members[0].line())
            continue
        names = ", ".join(repr(b.node) for b in members[:NAMES_SHOWN])
        more = f" and {len(members) - NAMES_SHOWN} more" if len(members) > NAMES_SHOWN else ""
        lines.append(f"{problem}: {len(members)} {op_type} nodes ({names}{more})" + (f"; {hint}" if hint else ""))
    return lines


def raise_blockers(blockers: Sequence[Blocker], supported: Sequence[str] = ()) -> None:
    """Raise one error for all ``blockers`` (none: return): the exception class they share
    (UnsupportedOpError, CompositeError, ...) or else ModelError / LRPError, its message the
    summary, one problem per line, and the ``supported`` op types when an op lacks a handler."""
    if not blockers:
        return
    classes = {b.error for b in blockers}
    if len(classes) == 1:
        error = classes.pop()
    else:
        error = ModelError if all(issubclass(c, ModelError) for c in classes) else LRPError
    lines = summary(blockers)
    message = lines[0] if len(lines) == 1 else (f"lrp_onnx cannot explain this model ({len(lines)} problems):\n"
                                                 + "\n".join(f"  - {line}" for line in lines))
    if supported and any(b.kind in ("no handler", "no gradient") for b in blockers):
        message += f"\nsupported ops: {', '.join(supported)}"
    raise error(message)


def handler_blocker(op_type: str, domain: str, node: str, gradient: bool) -> Blocker:
    """The blocker of a node whose op type has no relevance handler (or no VJP, in gradient
    mode); a quantized op or an onnxruntime fusion gets the hint for those."""
    name = f"{domain}:{op_type}" if domain not in ("", "ai.onnx") else op_type
    hint = (HINT_QUANTIZED if _quantized(op_type, domain) else HINT_CONTRIB if domain == "com.microsoft"
            else HINT_GRADIENT if gradient else HINT_HANDLER)
    if gradient:
        return Blocker("no gradient (vector-Jacobian product) in lrp_onnx", hint, name, node,
                       "no gradient", UnsupportedOpError)
    return Blocker("no relevance handler in lrp_onnx", hint, name, node, "no handler", UnsupportedOpError)
