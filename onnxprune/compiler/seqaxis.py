"""The batch on an axis other than 0 (batchaxis.py's Axis(k) state): sequence-first recurrent
layers, [T, N, C] after a Transpose. A per-op handler's `mixes_batch` speaks of axis 0, so
each op that keeps samples apart on axis k has its own rule here; an op without one mixes
(fail closed). Rules take the flow, the node and the one live input state and return the
output state (a list: one per output) or None."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_graphsurgeon as gs

from . import batchstate as bst
from .graph import const_value, input_or_attr, rank_of
from .ops.elementwise import UNARY
from .ops.pool import REDUCE

if TYPE_CHECKING:  # pragma: no cover
    from .batchstate import Axis

Flow = Any  # batchaxis._Flow: state(t), graph (not imported: batchaxis imports this module)


def transpose(flow: Flow, node: gs.Node) -> object | None:
    """The batch axis goes where the perm puts it (None: no perm, let the handler say)."""
    perm, k = node.attrs.get("perm"), bst.axis_of(flow.state(node.inputs[0]))
    if perm is None or k is None or k not in perm:
        return None
    return bst.at_axis(list(perm).index(k))


def recurrent(flow: Flow, node: gs.Node) -> list | None:
    """LSTM/GRU/RNN run each sample's sequence on its own: X [T, N, I] (layout 0) or
    [N, T, I] (layout 1); the initial states [D, N, H] / [N, D, H] and sequence_lens [N]
    carry the batch there or are sample-free; Y [T, D, N, H] / [N, T, D, H]."""
    layout = int(node.attrs.get("layout", 0))
    x_k, state_k, y_k = (1, 1, 2) if layout == 0 else (0, 0, 0)
    want = {0: bst.at_axis(x_k), 4: bst.BATCH, 5: bst.at_axis(state_k), 6: bst.at_axis(state_k)}
    if flow.state(node.inputs[0]) != want[0]:
        return None
    for i, t in enumerate(node.inputs[1:], start=1):
        if t is None or not t.name:
            continue
        st = flow.state(t)
        if st != bst.FREE and st != want.get(i):  # W, R, B, P: sample-free only
            return None
    return [bst.at_axis(y_k)] + [bst.at_axis(state_k)] * (len(node.outputs) - 1)


def _elementwise(flow: Flow, node: gs.Node, st: "Axis") -> object | None:
    """Right-aligned broadcasting: every input in state `st` puts its batch at one axis."""
    r_out = rank_of(node.outputs[0])
    ks = set()
    for t in node.inputs:
        if t is not None and t.name and flow.state(t) == st:
            r = rank_of(t)
            if r is None or r_out is None or r_out < r:
                return None
            ks.add(st.k + r_out - r)
    return bst.at_axis(ks.pop()) if len(ks) == 1 else None


def _matmul(flow: Flow, node: gs.Node, st: "Axis") -> object | None:
    """X @ W with a constant W contracts X's last axis only."""
    a, b = node.inputs[:2]
    ra, r_out = rank_of(a), rank_of(node.outputs[0])
    if const_value(b) is None or flow.state(a) != st or ra is None or r_out is None \
            or ra < 2 or st.k >= ra - 1 or r_out < ra:
        return None
    return bst.at_axis(st.k + r_out - ra)


def _softmax(flow: Flow, node: gs.Node, st: "Axis") -> object | None:
    """Softmax over another axis (before opset 13: over all axes from `axis` on)."""
    rank, opset = rank_of(node.inputs[0]), flow.graph.opset
    if rank is None:
        return None
    axis = int(node.attrs.get("axis", -1 if opset >= 13 else 1)) % rank
    return st if (axis != st.k if opset >= 13 else st.k < axis) else None


def _axes(flow: Flow, node: gs.Node, since: int) -> list[int] | None:
    rank = rank_of(node.inputs[0])
    axes = input_or_attr(node, 1, "axes", since, flow.graph.opset)
    if rank is None or axes is None or isinstance(axes, str):
        return None
    return sorted(int(a) % rank for a in np.atleast_1d(axes))


def _reduce(flow: Flow, node: gs.Node, st: "Axis") -> object | None:
    axes = _axes(flow, node, 13 if node.op == "ReduceSum" else 18)
    if not axes or st.k in axes:  # no axes: all of them (or a no-op, not worth a rule)
        return None
    if node.attrs.get("keepdims", 1):
        return st
    return bst.at_axis(st.k - sum(a < st.k for a in axes))


def _squeeze(flow: Flow, node: gs.Node, st: "Axis") -> object | None:
    axes = _axes(flow, node, 13)
    if not axes or st.k in axes:  # no axes: every size-1 axis, the batch's too when N = 1
        return None
    return bst.at_axis(st.k - sum(a < st.k for a in axes))


def _unsqueeze(flow: Flow, node: gs.Node, st: "Axis") -> object | None:
    rank = rank_of(node.outputs[0])
    axes = input_or_attr(node, 1, "axes", 13, flow.graph.opset)
    if rank is None or axes is None or isinstance(axes, str):
        return None
    inserted = {int(a) % rank for a in np.atleast_1d(axes)}
    kept = [i for i in range(rank) if i not in inserted]
    return bst.at_axis(kept[st.k]) if st.k < len(kept) else None


def _concat(flow: Flow, node: gs.Node, st: "Axis") -> object | None:
    """Along another axis, every input of the output's rank (bidirectional halves)."""
    rank = rank_of(node.outputs[0])
    if rank is None or any(rank_of(t) != rank for t in node.inputs):
        return None
    return st if int(node.attrs.get("axis", 0)) % rank != st.k else None


def _split(flow: Flow, node: gs.Node, st: "Axis") -> object | None:
    rank = rank_of(node.inputs[0])
    if rank is None or int(node.attrs.get("axis", 0)) % rank == st.k:
        return None
    return [st] * len(node.outputs)


def _slice(flow: Flow, node: gs.Node, st: "Axis") -> object | None:
    """Constant axes, none of them the batch's (opset >= 10: axes is an input)."""
    rank = rank_of(node.inputs[0])
    if rank is None or flow.graph.opset < 10:
        return None
    starts = const_value(node.inputs[1])
    has_axes = len(node.inputs) > 3 and node.inputs[3] is not None and node.inputs[3].name
    axes = const_value(node.inputs[3]) if has_axes else None if starts is None else np.arange(starts.size)
    if axes is None:
        return None
    return None if st.k in {int(a) % rank for a in np.atleast_1d(axes)} else st


_ELEMENTWISE = (*UNARY, "Dropout", "Clip", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min",
                "Sum", "Mean", "PRelu", "Equal", "Where", "Less", "Greater", "LessOrEqual",
                "GreaterOrEqual", "And", "Or", "Xor")
AXIS_RULES = {**{op: _elementwise for op in _ELEMENTWISE}, "MatMul": _matmul,
              "Softmax": _softmax, "LogSoftmax": _softmax, **{op: _reduce for op in REDUCE},
              "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Concat": _concat,
              "Split": _split, "Slice": _slice}
