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

from .analysis import Analysis
from .context import RewriteContext
from .normalize import strip_shapes
from .ops import handler_for


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
    _shrink_cache_io(analysis, keep_channel, graph)
    strip_shapes(graph)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return graph


def _shrink_cache_io(analysis: Analysis, keep_channel: np.ndarray, graph: gs.Graph) -> None:
    """--prune-cache: the declared head count of the key-value cache inputs/outputs whose
    heads went (the graph I/O keep their declared shapes through strip_shapes); the kept
    heads go with the graph (`cache_heads`, written into the model by to_proto)."""
    tensors = graph.tensors()
    graph.cache_heads = {}
    for group in analysis.groups:
        for m in group.members:
            if m.role == "cache" and not (keep := keep_channel[m.ids]).all():
                tensor = tensors[m.tensor]
                shape = list(tensor.shape)
                shape[m.axis] = int(keep.sum())
                tensor.shape = shape
                graph.cache_heads[m.tensor] = (m.axis, np.flatnonzero(keep))

