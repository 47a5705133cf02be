"""DepthToSpace, SpaceToDepth and Tile: ops that move or copy elements.

DepthToSpace and SpaceToDepth are permutations: relevance takes the inverse permutation (for
DepthToSpace in DCR mode that is SpaceToDepth with the same block size; in CRD mode, and for
SpaceToDepth, the inverse written as Reshape -> Transpose -> Reshape). Tile copies its input:
each element gets the summed relevance of its copies. Both are also their own vector-Jacobian
products (the ``gradient`` composites).
"""
from __future__ import annotations

from ..errors import ModelError
from .gradient import vjp
from .linear import attributes
from .registry import register


def _depth_to_space_back(ctx, node, r):
    """R (N, C, H b, W b) -> (N, C b b, H, W): the inverse of DepthToSpace."""
    b, block = ctx.builder, attributes(node)["blocksize"]
    depth, height, width = ctx.graph.static_shape(node.input[0])
    if attributes(node).get("mode", b"DCR") in (b"DCR", "DCR"):
        return b.op("SpaceToDepth", [r], "r_depth_to_space", blocksize=block)
    channels = depth // (block * block)   # CRD: x -> (N, C, b, b, H, W) -> (0, 1, 4, 2, 5, 3) -> y
    split = b.op("Reshape", [r, b.const([-1, channels, height, block, width, block], "d2s_split", "int64")], "r_d2s")
    moved = b.op("Transpose", [split], "r_d2s", perm=[0, 1, 3, 5, 2, 4])
    return b.op("Reshape", [moved, b.const([-1, depth, height, width], "d2s_shape", "int64")], "r_depth_to_space")


def _space_to_depth_back(ctx, node, r):
    """R (N, C b b, H / b, W / b) -> (N, C, H, W): SpaceToDepth's inverse, DepthToSpace in DCR mode."""
    return ctx.builder.op("DepthToSpace", [r], "r_space_to_depth", blocksize=attributes(node)["blocksize"], mode="DCR")


def _tile_back(ctx, node, r):
    """R of the tiled tensor summed over the copies: (N, r1 d1, r2 d2, ...) -> (N, d1, d2, ...)."""
    b = ctx.builder
    repeats = ctx.graph.constant(node.input[1])
    if repeats is None:
        raise ModelError(f"Tile {node.name!r} has repeats computed at run time; only constant repeats carry relevance")
    repeats = [int(v) for v in repeats.reshape(-1)]
    if repeats[0] != 1:
        raise ModelError(f"Tile {node.name!r} repeats the batch axis ({repeats[0]} times); relevance cannot go back "
                         f"to one sample")
    sizes = ctx.graph.static_shape(node.input[0])
    split = [-1] + [v for pair in zip(repeats[1:], sizes) for v in pair]
    copies = b.op("Reshape", [r, b.const(split, "tile_split", "int64")], "r_tile")
    return b.reduce("ReduceSum", copies, list(range(1, 2 * len(sizes), 2)), keepdims=0, hint="r_tile")


_BACK = {"DepthToSpace": _depth_to_space_back, "SpaceToDepth": _space_to_depth_back, "Tile": _tile_back}


@register("DepthToSpace", "SpaceToDepth", "Tile", family="shape", data_slots=(0,))
def rearrange_back(ctx, node, rule, relevance):
    return [(node.input[0], _BACK[node.op_type](ctx, node, relevance[node.output[0]]))]


@vjp("DepthToSpace", "SpaceToDepth", "Tile")
def rearrange_vjp(ctx, node, g_out):
    return [(node.input[0], _BACK[node.op_type](ctx, node, g_out))]
