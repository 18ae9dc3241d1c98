"""Ops that mix samples along the batch axis (axis 0), downstream of mask sites.

Scoring gives every sample its own coalition (the mask has a batch axis). That is only
sound if nothing after a mask site combines samples: a Softmax or Reduce over axis 0, a
Concat/Slice/Split on it, a Transpose or Reshape that moves it, a MatMul that contracts it.
Such a model can still be pruned exactly; the engine then scores one coalition per run.
Each op's rule is its handler's `mixes_batch` (ops/); unknown ops count as mixing (fail
closed)."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from .graph import const_value, rank_of
from .ops import handler_for


def batch_mixing(graph: gs.Graph) -> list[str]:
    """Ops on activations (rank >= 2, not constant) that may combine, reorder or resize samples.

    Anywhere in the graph: upstream of a mask site such an op makes the site's batch differ
    from the inputs' samples; downstream it mixes the coalitions."""
    found: list[str] = []
    for node in graph.nodes:
        data = [t for t in node.inputs if t is not None and t.name and const_value(t) is None]
        if not data or all((rank_of(t) or 0) <= 1 for t in data):
            continue  # constants and shape vectors
        if handler_for(node).mixes_batch(node, graph.opset) or _batch_moved_to_output(node, graph):
            found.append(f"{node.op} '{node.name or node.outputs[0].name}'")
    return found


def _batch_moved_to_output(node: gs.Node, graph: gs.Graph) -> bool:
    """A Transpose whose readers put the batch back on axis 0 (ops/layout.py:
    picks_leading_axis) still moves it in a graph output it writes."""
    return node.op == "Transpose" and (node.attrs.get("perm") or [0])[0] != 0 and \
        any(o is node.outputs[0] for o in graph.outputs)
