"""What op handlers see: the analysis context (channel maps and the recording operations)
and the rewrite context (keep masks and the surgery operations), and the refit layout a
handler may offer. This module never imports the op registry (ops/ import it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from .analysis import Analysis, MaskSite, Member
from .channels import ChannelMap, UnionFind
from .graph import const_value, node_key


class AnalysisContext:
    """What a handler sees: channel maps of tensors and the recording operations."""

    def __init__(self, graph: gs.Graph,
                 describe: Callable[[gs.Node], str | None] = lambda node: None,
                 prune_cache: bool = False) -> None:
        self.graph = graph
        self.prune_cache = prune_cache  # heads may shrink the key-value cache inputs/outputs
        self.describe = describe  # the node's handler's `explain` (the registry's, injected)
        self.opset = graph.opset
        self.uf = UnionFind()
        self.maps: dict[str, ChannelMap] = {}
        self.pins: list[tuple[np.ndarray, str]] = []
        self.members: list[Member] = []
        self.sites: list[MaskSite] = []
        self.sources: list[tuple[str, np.ndarray]] = []
        self.notes: dict[str, Any] = {}
        self.head_dims: list[tuple[np.ndarray, int]] = []  # (one id per head, head_dim)

    # -- reading
    def map(self, tensor: gs.Tensor | None) -> ChannelMap | None:
        return None if tensor is None else self.maps.get(tensor.name)

    def tracked_inputs(self, node: gs.Node) -> list[tuple[int, ChannelMap]]:
        return [(i, m) for i, t in enumerate(node.inputs) if (m := self.map(t)) is not None]

    # -- recording
    def set_map(self, tensor: gs.Tensor, cmap: ChannelMap) -> None:
        if (why := _disagrees(tensor, cmap)) is not None:
            # a malformed model (or a handler's view that shape inference contradicts): the
            # channels are pinned and not followed further, never guessed
            self.pin(cmap.ids, f"'{tensor.name}' {why}")
            return
        if cmap.axis == 0:
            # masks carry the batch on axis 0; channels there cannot be masked per sample
            self.pin(cmap.ids, f"channels end up on the batch axis at '{tensor.name}'")
        self.maps[tensor.name] = cmap

    def new_source(self, node: gs.Node, tensor: gs.Tensor, n: int, axis: int) -> ChannelMap:
        ids = self.uf.add(n)
        self.sources.append((tensor.name, ids))
        cmap = ChannelMap(axis, ids)
        self.set_map(tensor, cmap)
        return cmap

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        self.uf.union_arrays(a, b)

    def pin(self, ids: np.ndarray, reason: str) -> None:
        if len(ids):
            self.pins.append((np.asarray(ids, dtype=np.int64), reason))

    def pin_inputs(self, node: gs.Node, reason: str) -> None:
        for _, cmap in self.tracked_inputs(node):
            self.pin(cmap.ids, reason)

    def member(self, role: str, node: gs.Node, tensor: gs.Tensor, axis: int,
               ids: np.ndarray) -> None:
        self.members.append(Member(role, node_key(node), node.op, tensor.name, axis,
                                   np.asarray(ids), node.name or ""))

    def site(self, node: gs.Node, index: int, cmap: ChannelMap, rank: int | None = None) -> None:
        """`rank`: what the consumer knows of its input's rank (a Conv from its weight) when
        shape inference lost it (after an op without a schema)."""
        shape = node.inputs[index].shape
        rank = len(shape) if shape is not None else rank
        if rank is None:  # the mask is reshaped to the tensor's rank
            self.pin(cmap.ids, f"{node.op} reads a tensor of unknown rank")
            return
        self.sites.append(MaskSite(node_key(node), index, node.inputs[index].name,
                                   cmap.axis, cmap.ids, rank))

    def note(self, node: gs.Node, data: Any) -> None:
        self.notes[node_key(node)] = data

    def explain(self, tensor: gs.Tensor, depth: int = 16) -> str:
        """Why a tensor with channels is not tracked: what it comes from, for the report."""
        seen, frontier = set(), [tensor]
        while frontier and depth > 0:
            depth -= 1
            t = frontier.pop(0)
            if id(t) in seen:
                continue
            seen.add(id(t))
            if not t.inputs:
                if isinstance(t, gs.Variable) and t in self.graph.inputs:
                    return f"graph input '{t.name}'"
                continue
            node = t.inputs[0]
            if (what := self.describe(node)) is not None:
                return what
            frontier.extend(i for i in node.inputs if not isinstance(i, gs.Constant))
        return "an op the analysis does not follow"


def _disagrees(tensor: gs.Tensor, cmap: ChannelMap) -> str | None:
    """Why the tensor's inferred shape cannot hold `cmap` (None if it can, or is unknown)."""
    shape = tensor.shape
    if shape is None:
        return None
    if not 0 <= cmap.axis < len(shape):
        return f"has rank {len(shape)}, so no channel axis {cmap.axis} (a malformed model?)"
    dim = shape[cmap.axis]
    if isinstance(dim, (int, np.integer)) and dim >= 0 and dim != cmap.size:
        return (f"has {dim} positions on axis {cmap.axis} where the analysis expects "
                f"{cmap.size} channels (a malformed model?)")
    return None


class RewriteContext:
    """What a handler sees at rewrite time: keep masks of tensors and the surgery operations."""

    def __init__(self, analysis: Analysis, keep_channel: np.ndarray, graph: gs.Graph,
                 means: Mapping[str, np.ndarray] | None = None,
                 refits: Mapping[str, Any] | None = None) -> None:
        self.analysis = analysis
        self.graph = graph
        self.opset = analysis.graph.opset
        self.keep_channel = keep_channel
        self.means = means or {}
        self.refits = refits or {}
        self.sites = {s.node: s for s in analysis.sites}
        self._names = set(graph.tensors().keys())

    def fresh(self, base: str) -> str:
        """A tensor name not used anywhere in the graph (inputs may use any name)."""
        k = 1
        while f"{base}{k}" in self._names:
            k += 1
        self._names.add(f"{base}{k}")
        return f"{base}{k}"

    def fold_compensation(self, node: gs.Node, handler: Any, keep_in: np.ndarray,
                          bias_index: int | None, out_axis: int) -> None:
        """Compensation (FLAP): a removed input channel is replaced by its calibration mean,
        whose constant contribution goes into the bias. Must run before the node's weights are
        sliced (it reads the original weights); the bias is then sliced with the outputs.
        A refit node (refit.py) gets its fitted bias shift instead."""
        delta = self._bias_shift(node, handler, keep_in)
        if delta is None or not delta.any():
            return
        y = node.outputs[0]
        dtype = np.dtype(y.dtype) if y.dtype is not None else np.dtype(np.float32)
        if bias_index is not None:
            while len(node.inputs) <= bias_index:
                node.inputs.append(gs.Variable.empty())
            old = const_value(node.inputs[bias_index]) if node.inputs[bias_index].name else None
            bias = delta if old is None else old + delta  # a Gemm C of [1, N] or [M, N] keeps its shape
            node.inputs[bias_index] = gs.Constant(self.fresh(f"{y.name}__bias"), bias.astype(dtype))
            return
        # no bias input (MatMul): add one after the node, already cut to the kept outputs
        keep_out = self.keep(y)
        delta = delta if keep_out is None else delta[keep_out]
        rank = len(y.shape)
        shape = [1] * (rank - out_axis)
        shape[0] = len(delta)
        raw = gs.Variable(self.fresh(f"{y.name}__before_bias"), dtype=y.dtype)
        node.outputs[0] = raw
        const = gs.Constant(self.fresh(f"{y.name}__bias"), delta.reshape(shape).astype(dtype))
        self.graph.nodes.append(gs.Node("Add", name=self.fresh(f"{y.name}__compensate"),
                                        inputs=[raw, const], outputs=[y]))

    def _bias_shift(self, node: gs.Node, handler: Any, keep_in: np.ndarray) -> np.ndarray | None:
        if (refit := self.refits.get(node_key(node))) is not None:
            return np.asarray(refit.bias, np.float64)
        site = self.sites.get(node_key(node))
        mean = None if site is None else self.means.get(site.tensor)
        if mean is None:
            return None
        comp = handler.compensation(node, np.where(keep_in, 0.0, np.asarray(mean, np.float64)))
        return None if comp is None else comp[0].sum(axis=0)

    def apply_refit(self, node: gs.Node) -> None:
        """Swap in the refit weight (unpruned layout) before the handler slices it."""
        if (refit := self.refits.get(node_key(node))) is not None:
            self.set_input(node, 1, refit.weight)

    def keep(self, tensor: gs.Tensor | None) -> np.ndarray | None:
        """Bool per channel position of a tracked tensor, or None if nothing of it is removed."""
        cmap = None if tensor is None else self.analysis.maps.get(tensor.name)
        if cmap is None:
            return None
        keep = self.keep_channel[cmap.ids]
        return None if keep.all() else keep

    def keep_ids(self, ids: np.ndarray) -> np.ndarray:
        return self.keep_channel[ids]

    def note(self, node: gs.Node) -> Any:
        return self.analysis.notes.get(node_key(node))

    def set_input(self, node: gs.Node, index: int, values: np.ndarray) -> None:
        """Replace input `index` by a new constant (never mutate a possibly shared one)."""
        root = node.inputs[index].name.split("__pruned")[0]  # a weight cut on both axes: one suffix
        node.inputs[index] = gs.Constant(self.fresh(f"{root}__pruned"), np.ascontiguousarray(values))

    def slice_input(self, node: gs.Node, index: int, axis: int, keep: np.ndarray) -> None:
        values = const_value(node.inputs[index])
        assert values is not None, f"{node.op} '{node.name}': member input {index} is not constant"
        self.set_input(node, index, np.compress(keep, values, axis=axis))


Positions = Callable[[int], np.ndarray]  # how many positions there are -> which to use


@dataclass
class RefitLayout:
    """How one consumer turns its input into rows P and what its weight matrix is (refit.py)."""

    site: MaskSite
    node: gs.Node
    rows: Callable[[np.ndarray, Positions], np.ndarray]  # batch -> [rows, d], weight-column order
    w_eff: np.ndarray                         # [d, C_out]: output = rows @ w_eff (+ bias)
    keep_cols: np.ndarray                     # bool [d]
    pack: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (D, b) -> weight, bias
