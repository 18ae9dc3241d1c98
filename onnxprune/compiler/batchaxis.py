"""Ops that mix samples along the batch axis (axis 0), downstream of mask sites.

Scoring gives every sample its own coalition (the mask has a batch axis). That is only
sound if nothing after a mask site combines samples: a Softmax or Reduce over axis 0, a
Concat/Slice/Split on it, a Transpose or Reshape that moves it, a MatMul that contracts it.
Such a model can still be pruned exactly; the engine then scores one coalition per run.
Each op's rule is its handler's `mixes_batch` (ops/); unknown ops count as mixing (fail
closed).

Exporters write per-sample computations that a per-op rule cannot see as such, so the
batch axis is followed through the graph (issue 17 Q). Every tensor has a state:
- FREE: computed from constants and shapes only (no sample's data reaches it);
- BATCH: axis 0 is the sample axis, each row one sample's;
- Axis(k): axis k >= 1 is the sample axis (sequence-first recurrent layers: Transpose to
  [T, N, C], LSTM/GRU/RNN with layout 0); only ops with a rule for it keep it (seqaxis.AXIS_RULES),
  anything else on such a tensor counts as mixing;
- Merged(inner, outer): axis 0 holds outer x batch x inner dims row-major (`x.view(-1, C)`,
  Flatten; a CRNN's `view(T * b, h)` has outer = (T,)); ops that keep rows apart keep it,
  and a Reshape that splits the rows back with the batch on an axis of its own restores it;
- Index: a FREE integer tensor whose values are pinned to the batch coordinate: Range(0, B)
  ("b"), b * d ("bs"), b * d + Range(0, d) ("rowsel": row of sample b in a Merged tensor
  with block d), or a GatherND index whose first component is b ("nd").
Only these exact forms are trusted; anything else falls back on the handler's rule."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from . import seqaxis
from .batchstate import BATCH, FREE, Axis, B, Index, Merged, Prod, at_axis, axis_of, factors_of
from .graph import const_value, input_or_attr, rank_of
from .ops import handler_for

if TYPE_CHECKING:  # pragma: no cover
    from .analysis import MaskSite

def batch_mixing(graph: gs.Graph, sites: Iterable["MaskSite"] = ()) -> list[str]:
    """Ops on activations (rank >= 2, not constant) that may combine, reorder or resize samples.

    Anywhere in the graph: upstream of a mask site such an op makes the site's batch differ
    from the inputs' samples; downstream it mixes the coalitions. A mask site whose tensor
    holds the batch merged behind other axes counts too: a per-sample mask [N, units] does not
    broadcast over its rows; with the batch first (B x inner rows) instrument.py reshapes the
    rows to [N, -1, ..] around the mask (`merged_sites`)."""
    flow = _Flow(graph)
    found: list[str] = []
    for node in graph.nodes:
        if not flow.visit(node) or _batch_moved_to_output(node, graph):
            found.append(f"{node.op} '{node.name or node.outputs[0].name}'")
    for tensor in dict.fromkeys(site.tensor for site in sites):
        state = flow.states.get(tensor)
        if isinstance(state, Merged) and state.outer:
            found.append(f"mask site '{tensor}' (axis 0 holds the batch merged with "
                         f"{list(state.outer + state.inner)})")
        elif isinstance(state, Axis):  # a mask [N, C] broadcasts along axis 0 only
            found.append(f"mask site '{tensor}' (the batch is on axis {state.k})")
    return found


def merged_sites(graph: gs.Graph, sites: Iterable["MaskSite"]) -> set[str]:
    """Site tensors whose axis 0 holds B x inner rows, sample-major (GPT-2's Conv1D input)."""
    tensors = {site.tensor for site in sites}
    if not tensors:
        return set()
    flow = _Flow(graph)
    for node in graph.nodes:
        flow.visit(node)
    return {t for t in tensors if isinstance(flow.states.get(t), Merged) and not flow.states[t].outer}


def _batch_moved_to_output(node: gs.Node, graph: gs.Graph) -> bool:
    """A Transpose whose readers put the batch back on axis 0 (ops/layout.py:
    picks_leading_axis) still moves it in a graph output it writes."""
    return node.op == "Transpose" and (node.attrs.get("perm") or [0])[0] != 0 and \
        any(o is node.outputs[0] for o in graph.outputs)


class _Flow:
    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.states: dict[str, object] = {}
        self.alias: dict[str, str] = {}

    # -- states and dims ------------------------------------------------------------------
    def state(self, t: gs.Tensor) -> object:
        if const_value(t) is not None:
            return FREE
        return self.states.get(t.name, BATCH)  # graph inputs: samples on axis 0

    def name(self, d):
        while isinstance(d, str) and d in self.alias:
            d = self.alias[d]
        return d

    def shape(self, t: gs.Tensor) -> list | None:
        if t.shape is None:
            return None
        return [self.name(d) if isinstance(d, (int, str)) and d != "" else None for d in t.shape]

    def dims(self, t: gs.Tensor, depth: int = 0) -> list | None:
        """A shape vector's value (ints, dim names, B for the batch size), like
        `registry.evaluate`, but Shape of a BATCH tensor (or of an Index) reads its batch dim as B."""
        value = const_value(t)
        if value is not None:
            return [int(v) for v in np.atleast_1d(value).reshape(-1)] if value.ndim <= 1 else None
        if depth > 32 or not t.inputs:
            return None
        node = t.inputs[0]
        if node.op == "Shape":
            return self._shape_dims(node)
        if node.op == "Mul" and (prod := self._product(node, depth)) is not None:
            return prod
        out = handler_for(node).eval_shape(node, lambda u: self.dims(u, depth + 1))
        return None if out is None else [self.name(d) for d in out]

    def _shape_dims(self, node: gs.Node) -> list | None:
        x = node.inputs[0]
        dims, st = self.shape(x), self.state(x)
        if dims is None:
            return None
        axis = axis_of(st)
        if isinstance(st, Index) and st.kind != "local":
            axis = st.axis
        if axis is not None and axis < len(dims):
            dims[axis] = B
        start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
        return dims[start:None if end is None else int(end)]

    def _product(self, node: gs.Node, depth: int) -> list | None:
        """[Prod] for a product of two scalar dims, one of them not a number (T * b)."""
        a, b = (self.dims(t, depth + 1) for t in node.inputs[:2])
        if a is None or b is None or len(a) != 1 or len(b) != 1:
            return None
        if isinstance(a[0], int) and isinstance(b[0], int):
            return None  # plain arithmetic: the handler's
        factors = factors_of(a[0]) + factors_of(b[0])
        if any(f is None or (isinstance(f, int) and f < 1) for f in factors):
            return None
        return [Prod(tuple(sorted(factors, key=repr)))]

    # -- one node -------------------------------------------------------------------------
    def visit(self, node: gs.Node) -> bool:
        """Sets the outputs' states; False when the node may mix samples."""
        self._learn_aliases(node)
        data = [t for t in node.inputs if t is not None and t.name and const_value(t) is None]
        states = [self.state(t) for t in data]
        if node.op in ("Shape", "Size") or all(s == FREE or isinstance(s, Index) for s in states):
            self._set(node, _index_rule(self, node) or FREE)
            return True
        special = _SPECIAL.get(node.op)
        out = special(self, node) if special else None
        if out is not None:
            self._set(node, out)
            return True
        live = {s for s in states if s != FREE and not isinstance(s, Index)}
        if any(isinstance(s, Axis) for s in live):  # only ops with a rule for it keep it
            rule = seqaxis.AXIS_RULES.get(node.op) if len(live) == 1 else None
            out = rule(self, node, next(iter(live))) if rule else None
            self._set(node, next(iter(live)) if out is None else out)
            return out is not None
        self._set(node, next(iter(live)) if len(live) == 1 else BATCH)
        if all((rank_of(t) or 0) <= 1 for t in data) and not any(isinstance(s, Merged) for s in live):
            return True  # per-sample vectors (labels); merged rows of rank 1 are still rows
        # a Merged tensor beside a BATCH one (or two blocks) would pair rows of different samples
        return len(live) == 1 and not handler_for(node).mixes_batch(node, self.graph.opset)

    def _set(self, node: gs.Node, state: object) -> None:
        """One state for every output, or a list of them (LSTM's Y and Y_h differ)."""
        states = state if isinstance(state, list) else [state] * len(node.outputs)
        for o, s in zip(node.outputs, states):
            self.states[o.name] = s

    def _learn_aliases(self, node: gs.Node) -> None:
        """Dim names that shape inference gave two names: a Reshape's 0 copies its input's dim."""
        if node.op != "Reshape" or node.attrs.get("allowzero", 0):
            return
        target, src, dst = const_value(node.inputs[1]), node.inputs[0].shape, node.outputs[0].shape
        if target is None or src is None or dst is None or target.ndim != 1 or len(dst) != target.size:
            return
        for i, v in enumerate(target.tolist()):
            if v == 0 and i < len(src):
                a, b = self.name(src[i]), self.name(dst[i])
                if isinstance(a, str) and isinstance(b, str) and a != b:
                    self.alias[b] = a


def _same_product(a: list, b: list) -> bool:
    """prod(a) == prod(b) for every value of the dim names (equal numbers, equal names)."""
    def split(dims):
        dims = [f for d in dims for f in factors_of(d)]
        if any(d is None or d == B or (isinstance(d, int) and d < 1) for d in dims):
            return None
        return (int(np.prod([d for d in dims if isinstance(d, int)], dtype=np.int64)),
                sorted(d for d in dims if isinstance(d, str)))
    sa, sb = split(list(a)), split(list(b))
    return sa is not None and sa == sb


def _target(flow: _Flow, node: gs.Node, in_shape: list) -> list | None:
    """A Reshape's target with 0 (copy) resolved to the input's dim."""
    target = flow.dims(node.inputs[1])
    if target is None:
        return None
    copy = not node.attrs.get("allowzero", 0)
    return [in_shape[i] if copy and d == 0 and i < len(in_shape) else d for i, d in enumerate(target)]


def _reshape(flow: _Flow, node: gs.Node) -> object | None:
    """Merge the batch with the dims around it, split merged rows back, or move the batch
    axis, as the row-major order of the data allows (see `_regroup`)."""
    x = node.inputs[0]
    st, shape = flow.state(x), flow.shape(x)
    k = axis_of(st)
    if shape is None or (k is not None and k >= len(shape)):
        return None
    if k is not None:
        shape = shape[:k] + [B] + shape[k + 1:]  # a 0 there copies the batch size
    layout = _layout(st, shape)
    target = _target(flow, node, shape)
    if layout is None or not target:
        return None
    out = _regroup(*layout, target)
    if out == BATCH and st == BATCH and target[0] == B:
        _alias_free_dim(flow, node, shape, target)
    return out


def _layout(st: object, shape: list) -> tuple[list, list] | None:
    """(dims before the samples, dims after them) in the row-major order of the data."""
    k = axis_of(st)
    if k is not None:
        return shape[:k], shape[k + 1:]
    if isinstance(st, Merged):
        return list(st.outer), list(st.inner) + shape[1:]
    return None


def _regroup(before: list, after: list, target: list) -> object | None:
    """The state after a Reshape to `target` of data laid out as before x B x after.

    The target entry holding the batch (B, a product with B, or else its one -1) must cover
    before[a:] x B x after[:c], the entries ahead of it before[:a] and those behind it
    after[c:] (a side holding the -1 is implied by the others). Alone on its axis the batch
    keeps an axis of its own; merged into axis 0 it is Merged; anything else: None."""
    if target.count(-1) > 1:
        return None
    hits = [j for j, d in enumerate(target) if d == B or (isinstance(d, Prod) and B in d.factors)]
    if len(hits) > 1:
        return None
    if hits:
        j = hits[0]
        entry: list | None = factors_of(target[j])
        entry.remove(B)
        if B in entry:
            return None
    elif -1 in target:
        j, entry = target.index(-1), None
    else:
        return None
    head, tail = target[:j], target[j + 1:]
    for a in range(len(before), -1, -1):
        for c in range(len(after) + 1):
            if (-1 in head or _same_product(head, before[:a])) and \
                    (-1 in tail or _same_product(tail, after[c:])) and \
                    (entry is None or _same_product(entry, before[a:] + after[:c])):
                if a == len(before) and c == 0:
                    return at_axis(j)
                return Merged(tuple(after[:c]), tuple(before[a:])) if j == 0 else None
    return None


def _alias_free_dim(flow: _Flow, node: gs.Node, shape: list, target: list) -> None:
    """[B, ..., -1, ...] over an input of the same rank whose other dims it repeats: the -1 is
    the input's dim there (HF's `mask.view(batch, -1)`), whatever name inference gave it."""
    out = node.outputs[0].shape
    if target.count(-1) != 1 or len(target) != len(shape) or out is None or len(out) != len(shape):
        return
    j = target.index(-1)
    if all(target[i] == shape[i] for i in range(1, len(shape)) if i != j) \
            and isinstance(shape[j], str) and isinstance(out[j], str) and flow.name(out[j]) != shape[j]:
        flow.alias[flow.name(out[j])] = shape[j]


def _flatten(flow: _Flow, node: gs.Node) -> object | None:
    shape = flow.shape(node.inputs[0])
    if flow.state(node.inputs[0]) != BATCH or shape is None:
        return None
    axis = int(node.attrs.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if not 1 <= axis <= len(shape):
        return None
    return Merged(tuple(shape[1:axis])) if axis > 1 else BATCH


def _gather(flow: _Flow, node: gs.Node) -> object | None:
    """Rows b*d .. b*d+d-1 of a Merged tensor with block d (HF mask builders)."""
    data, idx = flow.state(node.inputs[0]), flow.state(node.inputs[1])
    if isinstance(data, Axis):
        return _gather_other_axis(node, data.k) if idx == FREE else None
    if int(node.attrs.get("axis", 0)) != 0:
        return None
    if data == FREE and idx == BATCH:
        return BATCH  # a lookup in a sample-independent table, row by row of the indices
    if not isinstance(data, Merged) or data.outer:  # rows b * d + s: sample-major blocks only
        return None
    ok = isinstance(idx, Index) and idx.kind == "rowsel" and idx.axis == 0 \
        and _same_product([idx.size], list(data.inner))
    return BATCH if ok else None


def _gather_other_axis(node: gs.Node, k: int) -> object | None:
    """Constant indices on an axis other than the batch's (SVTR's q/k/v part at axis 0)."""
    rank, r_idx = rank_of(node.inputs[0]), rank_of(node.inputs[1])
    if rank is None or r_idx is None:
        return None
    g = int(node.attrs.get("axis", 0)) % rank
    return None if g == k else at_axis(k if g > k else k - 1 + r_idx)


def _gather_nd(flow: _Flow, node: gs.Node) -> object | None:
    """data[b, ...] with b the index's own axis-0 coordinate (dynamo's mask gather)."""
    data, idx = flow.state(node.inputs[0]), flow.state(node.inputs[1])
    ok = data == BATCH and int(node.attrs.get("batch_dims", 0)) == 0 \
        and isinstance(idx, Index) and idx.kind == "nd" and idx.axis == 0
    return BATCH if ok else None


def _gather_elements(flow: _Flow, node: gs.Node) -> object | None:
    """out[i] = data[.. idx[i] ..]: with a sample-independent table each output element follows
    its own index element (RoBERTa's position-id lookup in an expanded buffer)."""
    data, idx = flow.state(node.inputs[0]), flow.state(node.inputs[1])
    return BATCH if data == FREE and idx == BATCH else None


_SPECIAL = {"Reshape": _reshape, "Flatten": _flatten, "Gather": _gather, "GatherND": _gather_nd,
            "GatherElements": _gather_elements,
            "Transpose": seqaxis.transpose, "LSTM": seqaxis.recurrent, "GRU": seqaxis.recurrent,
            "RNN": seqaxis.recurrent}


# -- index arithmetic on FREE tensors -------------------------------------------------------
def _index_rule(flow: _Flow, node: gs.Node) -> Index | None:
    rule = _INDEX.get(node.op)
    return rule(flow, node) if rule else None


def _scalar(flow: _Flow, t: gs.Tensor):
    d = flow.dims(t)
    return d[0] if d is not None and len(d) == 1 else None


def _range(flow: _Flow, node: gs.Node) -> Index | None:
    start, limit, delta = (_scalar(flow, t) for t in node.inputs[:3])
    # values in [start, limit) with start a number >= 0 or a dim: inside [0, limit)
    if delta != 1 or limit is None or start is None or start == B or (isinstance(start, int) and start < 0):
        return None
    if start != 0 and limit == B:
        return None
    return Index("b") if limit == B else Index("local", size=limit)


def _shifted(flow: _Flow, node: gs.Node, st: Index, t: gs.Tensor) -> int | None:
    """The batch coordinate's axis in the output (numpy broadcasting aligns on the right)."""
    r_in, r_out = rank_of(t), rank_of(node.outputs[0])
    return None if r_in is None or r_out is None or r_out < r_in else st.axis + r_out - r_in


def _passthrough(flow: _Flow, node: gs.Node) -> Index | None:
    """Cast to a type that holds the values; Expand (a size-B axis only broadcasts when B = 1,
    where there is one sample)."""
    st = flow.state(node.inputs[0])
    if not isinstance(st, Index) or (node.op == "Cast" and node.attrs.get("to") not in _WIDE):
        return None
    if st.kind == "local":
        return st
    axis = _shifted(flow, node, st, node.inputs[0])
    return None if axis is None else Index(st.kind, axis, st.size)


def _unsqueeze(flow: _Flow, node: gs.Node) -> Index | None:
    st, rank = flow.state(node.inputs[0]), rank_of(node.outputs[0])
    axes = input_or_attr(node, 1, "axes", 13, flow.graph.opset)
    if (not isinstance(st, Index) or rank is None or axes is None or isinstance(axes, str)
            or np.ndim(axes) > 1):  # axes of rank 2: a malformed node (found by the long fuzz)
        return None
    if st.kind == "local":
        return st
    inserted = sorted(int(a) % rank for a in np.atleast_1d(axes))
    kept = [i for i in range(rank) if i not in inserted]
    return Index(st.kind, kept[st.axis], st.size) if st.axis < len(kept) else None


def _mul(flow: _Flow, node: gs.Node) -> Index | None:
    for i in (0, 1):
        st, other = flow.state(node.inputs[i]), node.inputs[1 - i]
        d = _scalar(flow, other)
        if isinstance(st, Index) and st.kind == "b" and d is not None and d != B:
            axis = _shifted(flow, node, st, node.inputs[i])
            return None if axis is None else Index("bs", axis, d)
    return None


def _add(flow: _Flow, node: gs.Node) -> Index | None:
    a, b = (flow.state(t) for t in node.inputs[:2])
    for i, (x, y) in enumerate(((a, b), (b, a))):
        if isinstance(x, Index) and isinstance(y, Index) and x.kind == "bs" and y.kind == "local" \
                and x.size == y.size:
            axis = _shifted(flow, node, x, node.inputs[i])
            return None if axis is None else Index("rowsel", axis, x.size)
    return None


def _concat(flow: _Flow, node: gs.Node) -> Index | None:
    """[b, ...] along the last axis: the first component of a GatherND index is b."""
    first, rank = node.inputs[0], rank_of(node.outputs[0])
    st, shape = flow.state(first), first.shape
    if rank is None or int(node.attrs.get("axis", 0)) % rank != rank - 1 or not isinstance(st, Index) \
            or st.kind != "b" or shape is None or shape[-1] != 1 or st.axis >= rank - 1:
        return None
    return Index("nd", st.axis)


_WIDE = (1, 6, 7, 11)  # float, int32, int64, double
_INDEX = {"Range": _range, "Cast": _passthrough, "Expand": _passthrough,
          "Unsqueeze": _unsqueeze, "Mul": _mul, "Add": _add, "Concat": _concat}
