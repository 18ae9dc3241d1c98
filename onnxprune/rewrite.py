"""Stage `rewrite`: the surgery. Graph + units to keep per group -> smaller graph.

Every node's handler rewrites the members it owns (weights, biases, per-channel
constants, shape constants, attributes) from the keep masks of its input and output
tensors. New constants are always fresh tensors, so a constant shared by two nodes
is never cut for one and read wrongly by the other; dead ones go in cleanup.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from .analyze import Analysis
from .graph import const_value, node_key
from .normalize import strip_shapes
from .ops import handler_for


class RewriteContext:
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
        matrix, _ = handler.compensation(node, np.where(keep_in, 0.0, np.asarray(mean, np.float64)))
        return matrix.sum(axis=0)

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


def channel_keep(analysis: Analysis, keep: Mapping[int, Sequence[int]]) -> np.ndarray:
    """Global per-channel keep mask from kept unit indices per group."""
    keep_channel = np.ones(len(analysis.ch_group), dtype=bool)
    for gid, units in keep.items():
        group = analysis.group(gid)
        units = np.asarray(sorted(set(int(u) for u in units)), dtype=np.int64)
        if not group.prunable:
            raise ValueError(f"group {gid} is not prunable: {group.reason}")
        if len(units) == 0:
            raise ValueError(f"group {gid}: at least one unit must stay")
        if units.min() < 0 or units.max() >= group.units:
            raise ValueError(f"group {gid}: unit index out of range")
        in_group = analysis.ch_group == gid
        keep_channel[in_group] = np.isin(analysis.ch_unit[in_group], units)
    return keep_channel


def empty_tensors(analysis: Analysis, keep_channel: np.ndarray) -> list[str]:
    """Tensors that would lose every channel (a Split piece whose units all went)."""
    return [name for name, cmap in analysis.maps.items()
            if cmap.size and not keep_channel[cmap.ids].any()]


def rewrite(analysis: Analysis, keep: Mapping[int, Sequence[int]],
            means: Mapping[str, np.ndarray] | None = None,
            refits: Mapping[str, Any] | None = None) -> gs.Graph:
    """A pruned copy of the analysed graph; the analysed graph itself is not modified.

    `means` (per mask-site tensor, per channel) turns on compensation: removed channels'
    mean contributions are folded into the consumers' biases. `refits` (per consumer node
    key, from refit.py) replaces those consumers' weights and bias shifts."""
    keep_channel = channel_keep(analysis, keep)
    if empty := empty_tensors(analysis, keep_channel):
        raise ValueError(f"pruning would empty tensor '{empty[0]}'; keep at least one of its units")
    graph = analysis.graph.copy()
    rw = RewriteContext(analysis, keep_channel, graph, means, refits)
    for node in list(graph.nodes):
        rw.apply_refit(node)
        handler_for(node).rewrite(node, rw)
    strip_shapes(graph)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return graph
