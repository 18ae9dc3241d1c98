"""Parameter and MAC counts, per node and per group, from the analysed graph.

MACs count the channel-mixing ops (Conv, ConvTranspose, Gemm, MatMul) per sample:
the batch counts as 1, and dims the export left dynamic (a conv's H and W, a sequence) are
measured on a calibration sample (`Analysis.measured`; without data they count as 1):
counted as 1, a stride-4 conv would cost as little as a stride-32 one per unit of weight,
and a MAC budget would be spent as a parameter budget. What a node's weight
is and how many MACs it costs are facts of its op handler (ops/).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from .analysis import Analysis
from .graph import const_value, node_key, shape_of
from .ops import HANDLERS, Handler, handler_for

# the op types whose handler declares a weight (for callers that filter nodes or protos)
MIXING = tuple(sorted(op for (domain, op), h in HANDLERS.items()
                      if domain == "" and type(h).weight_input is not Handler.weight_input))


def weight_input(node: gs.Node) -> gs.Tensor | None:
    """The constant weight of a channel-mixing node (its handler knows which input)."""
    return handler_for(node).weight_input(node)


def weight_of(node: gs.Node) -> np.ndarray | None:
    t = weight_input(node)
    return None if t is None else const_value(t)


def node_macs(node: gs.Node, measured: Mapping[str, tuple[int, ...]] | None = None) -> int:
    """Multiply-accumulates of one node for one sample (0 for ops that mix no channels);
    `measured`: size-tensor shapes by node key (`Analysis.measured`)."""
    return handler_for(node).macs(node, (measured or {}).get(node_key(node)))


def count_params(graph: gs.Graph) -> int:
    """Elements of all floating-point constants (weights, biases, norm parameters)."""
    total = 0
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and np.issubdtype(np.dtype(t.dtype), np.floating):
            total += int(np.prod(t.shape))
    return total


def count_macs(graph: gs.Graph, measured: Mapping[str, tuple[int, ...]] | None = None) -> int:
    return sum(node_macs(n, measured) for n in graph.nodes)


def dynamic_sizes(graph: gs.Graph) -> list[gs.Node]:
    """The mixing nodes whose size tensor (that sets their MACs) has dims that are not numbers:
    past axis 0, or on axis 0 a name that is not a graph input's batch (rows of x.view(-1, C))."""
    batch = {(shape_of(t) or (None,))[0] for t in graph.inputs}
    out = []
    for node in graph.nodes:
        handler = handler_for(node)
        t = handler.size_tensor(node) if handler.weight_input(node) is not None else None
        shape = shape_of(t) if t is not None else ()
        if shape is None or any(not isinstance(d, (int, np.integer)) for d in shape[1:]) or \
                (shape and not isinstance(shape[0], (int, np.integer)) and shape[0] not in batch):
            out.append(node)
    return out


@dataclass
class GroupCost:
    params: float   # weight parameters of mixing ops that this group's channels index
    macs: float


def group_costs(analysis: Analysis) -> dict[int, GroupCost]:
    """What removing all of a group's channels would touch, from producer/consumer members."""
    costs = {g.id: GroupCost(0.0, 0.0) for g in analysis.groups}
    for g in analysis.groups:
        kept: dict[str, float] = {}  # node -> fraction of its weight that survives the group
        for m in g.members:
            if m.role not in ("producer", "consumer"):
                continue
            if weight_of(analysis.node(m.node)) is None:
                continue
            # fraction of the member's channel positions in this group (a grouped conv's
            # weight axis holds C_in / group positions for C_in channel ids)
            share = float(np.mean(analysis.ch_group[m.ids] == g.id)) if len(m.ids) else 0.0
            kept[m.node] = kept.get(m.node, 1.0) * (1 - share)  # both axes: counted once
        for key, left in kept.items():
            node = analysis.node(key)
            costs[g.id].params += (1 - left) * weight_of(node).size
            costs[g.id].macs += (1 - left) * node_macs(node, analysis.measured)
    return costs


def coverage(analysis: Analysis) -> tuple[int, float]:
    """(weight params of mixing ops, how many lie in prunable groups on either axis)."""
    prunable = np.array([g.prunable for g in analysis.groups], dtype=bool)
    by_node: dict[str, dict[str, float]] = {}
    for g in analysis.groups:
        for m in g.members:
            if m.role in ("producer", "consumer"):
                frac = by_node.setdefault(m.node, {"producer": 0.0, "consumer": 0.0})
                inside = prunable[analysis.ch_group[m.ids]]
                frac[m.role] = float(inside.mean()) if len(inside) else 0.0
    total, covered = 0, 0.0
    for node in analysis.graph.nodes:
        if (w := weight_of(node)) is None:
            continue
        total += int(w.size)
        frac = by_node.get(node_key(node), {"producer": 0.0, "consumer": 0.0})
        covered += w.size * (1 - (1 - frac["producer"]) * (1 - frac["consumer"]))
    return total, covered


class CostModel:
    """Mixing-layer params and MACs after pruning, straight from keep masks (no rewrite).

    A weight shrinks by the kept fraction along each axis that a member indexes (output
    channels, input channels, a depthwise conv's filters), which is exact for Conv, Gemm
    and MatMul weights, whose size is the product of those axes."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        members: dict[str, dict[int, np.ndarray]] = {}
        seen = set()
        for g in analysis.groups:
            for m in g.members:
                if id(m) in seen or m.role not in ("producer", "consumer", "param"):
                    continue
                seen.add(id(m))
                members.setdefault(m.node, {})[(m.tensor, m.axis)] = m.ids
        self.rows = []  # (params, macs, [id arrays])
        for node in analysis.graph.nodes:
            if (w := weight_input(node)) is None:
                continue
            ids = [ids for (tensor, _), ids in members.get(node_key(node), {}).items()
                   if tensor == w.name]
            self.rows.append((int(np.prod(w.shape)), node_macs(node, analysis.measured), ids))
        self.params = sum(r[0] for r in self.rows)
        self.macs = sum(r[1] for r in self.rows)

    def after(self, keep_channel: np.ndarray) -> tuple[float, float]:
        params = macs = 0.0
        for size, node_mac, ids in self.rows:
            frac = float(np.prod([keep_channel[i].mean() for i in ids])) if ids else 1.0
            params += size * frac
            macs += node_mac * frac
        return params, macs
