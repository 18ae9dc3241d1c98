"""Ops that mix samples along the batch axis (axis 0), downstream of mask sites.

Scoring gives every sample its own coalition (the mask has a batch axis). That is only
sound if nothing after a mask site combines samples: a Softmax or Reduce over axis 0, a
Concat/Slice/Split on it, a Transpose or Reshape that moves it, a MatMul that contracts it.
Such a model can still be pruned exactly; the engine then scores one coalition per run.
Unknown ops count as mixing (fail closed)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from .graph import const_value, input_or_attr, norm_axis, rank_of

# ops that never combine samples (per-element, per-sample or shape plumbing)
SAFE = {
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal",
    "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Cast", "CastLike", "Identity", "Mish",
    "ThresholdedRelu", "Shrink", "Not", "IsNaN", "IsInf", "Dropout", "Clip", "PRelu", "Add", "Sub",
    "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Conv", "ConvTranspose",
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    "LRN", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
    "GlobalLpPool", "Resize", "Upsample", "Pad", "Shape", "Size", "Constant", "ConstantOfShape",
    "Range", "Squeeze", "Unsqueeze", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Trilu",
    "Swish",
}


def _axis_check(attr: str, default: int | None) -> Callable:
    def check(node: gs.Node, opset: int) -> bool:
        rank = rank_of(node.inputs[0])
        axis = node.attrs.get(attr, default)
        return rank is None or axis is None or norm_axis(int(axis), rank) == 0
    return check


def _softmax(node, opset):
    rank = rank_of(node.inputs[0])
    axis = node.attrs.get("axis", 1 if opset < 13 else -1)
    return rank is None or norm_axis(int(axis), rank) == 0


def _reduce(node, opset):
    rank = rank_of(node.inputs[0])
    since = 13 if node.op == "ReduceSum" else 18
    axes = input_or_attr(node, 1, "axes", since, opset)
    if isinstance(axes, str) or rank is None:
        return True
    if axes is None or np.size(axes) == 0:
        return not node.attrs.get("noop_with_empty_axes", 0)
    if np.ndim(axes) > 1:  # malformed: fail closed
        return True
    return 0 in {norm_axis(int(a), rank) for a in np.atleast_1d(axes)}


def _slice(node, opset):
    """Mixing only if axis 0 is actually cut (not the full 0:INT_MAX:1 range)."""
    rank = rank_of(node.inputs[0])
    if opset < 10:
        starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
        axes, steps = node.attrs.get("axes"), None
    else:
        vals = [const_value(t) if t is not None and t.name else None for t in node.inputs[1:5]]
        starts, ends, axes, steps = (vals + [None] * 4)[:4]
        if axes is None and len(node.inputs) > 3 and node.inputs[3].name:
            return True  # run-time axes
    if rank is None or any(np.ndim(v) > 1 for v in (starts, ends, axes, steps) if v is not None):
        return True
    if axes is not None and 0 not in [norm_axis(int(a), rank) for a in np.atleast_1d(axes)]:
        return False
    if starts is None or ends is None:
        return True
    axes = list(range(len(starts))) if axes is None else [norm_axis(int(a), rank) for a in axes]
    k = axes.index(0)
    step = 1 if steps is None else int(np.atleast_1d(steps)[k])
    return not (int(starts[k]) == 0 and int(ends[k]) >= 2**31 - 1 and step == 1)


def _transpose(node, opset):
    perm = node.attrs.get("perm")
    return perm is None or perm[0] != 0


def _reshape(node, opset):
    """Batch kept: target[0] is 0 (copy), or -1 with the rest matching the input's rest."""
    if node.op == "Flatten":
        return int(node.attrs.get("axis", 1)) == 0
    target = const_value(node.inputs[1])
    in_shape = node.inputs[0].shape
    if target is None or target.ndim != 1 or not target.size or not in_shape:
        return True
    if int(target[0]) == 0 and not node.attrs.get("allowzero", 0):
        return False
    rest = in_shape[1:]
    if int(target[0]) in (-1, in_shape[0]) and all(isinstance(d, int) for d in rest) \
            and all(int(t) > 0 for t in target[1:]):
        return int(np.prod(target[1:])) != int(np.prod(rest))
    out_shape = node.outputs[0].shape
    return not (out_shape and out_shape[0] == in_shape[0])


def _matmul(node, opset):
    """X @ W keeps rows apart when X has rank >= 2; W @ X contracts X's axis -2, which is
    the batch for a rank-2 X; two activations mix rows only through their batch dims."""
    a, b = node.inputs[:2]
    ra, rb = rank_of(a), rank_of(b)
    if ra is None or rb is None:
        return True
    if const_value(b) is not None:
        return ra < 2
    return rb < 3


def _gemm(node, opset):
    return bool(node.attrs.get("transA", 0)) or const_value(node.inputs[1]) is None


def _gather(node, opset):
    if const_value(node.inputs[0]) is not None:
        return False  # a lookup in a table (embeddings): the output follows the indices' batch
    rank = rank_of(node.inputs[0])
    if rank is not None and rank <= 1:
        return False  # shape vectors
    return rank is None or norm_axis(int(node.attrs.get("axis", 0)), rank) == 0


def _norm_axes(node, opset):
    rank = rank_of(node.inputs[0])
    axes = ([node.attrs.get("axis", -1)] if node.op == "LpNormalization"
            else node.attrs.get("axes", [0, 2, 3]))
    return rank is None or 0 in {norm_axis(int(a), rank) for a in axes}


CHECKS: dict[str, Callable[[gs.Node, int], bool]] = {
    "LpNormalization": _norm_axes, "MeanVarianceNormalization": _norm_axes,
    "Softmax": _softmax, "LogSoftmax": _softmax, "Hardmax": _softmax,
    "Concat": _axis_check("axis", None), "Split": _axis_check("axis", 0),
    "Slice": _slice, "Transpose": _transpose, "Reshape": _reshape, "Flatten": _reshape,
    "MatMul": _matmul, "Gemm": _gemm, "Gather": _gather,
    "ArgMax": _axis_check("axis", 0), "ArgMin": _axis_check("axis", 0),
    "CumSum": lambda n, o: True, "TopK": _axis_check("axis", -1),
    **{op: _reduce for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                              "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                              "ReduceSumSquare")},
}


def batch_mixing(graph: gs.Graph) -> list[str]:
    """Ops on activations (rank >= 2, not constant) that may combine, reorder or resize samples.

    Anywhere in the graph: upstream of a mask site such an op makes the site's batch differ
    from the inputs' samples; downstream it mixes the coalitions."""
    found: list[str] = []
    for node in graph.nodes:
        if node.op in SAFE:
            continue
        data = [t for t in node.inputs if t is not None and t.name and const_value(t) is None]
        if not data or all((rank_of(t) or 0) <= 1 for t in data):
            continue  # constants and shape vectors
        check = CHECKS.get(node.op)
        if check is None or check(node, graph.opset):
            found.append(f"{node.op} '{node.name or node.outputs[0].name}'")
    return found
