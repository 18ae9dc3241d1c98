"""Stage `analyze`: the dependency compiler. IR graph -> channel groups.

One pass over the graph in topological order; each node's handler (ops/) maps the
channel ids of its inputs to its outputs, unions ids that must be removed together,
records the members it owns (weights, per-channel constants, shape constants) and
where a consumer mixes channels (mask sites). Anything a handler does not
understand pins the ids it sees, which makes their group unprunable with a reason.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .batchaxis import batch_mixing
from .channels import ChannelMap, UnionFind
from .graph import const_value, node_key
from .ops import handler_for


@dataclass
class Member:
    """One place a group touches: a weight or constant slice, a shape constant, an attribute."""

    role: str        # producer | consumer | param | shape | attr
    node: str
    op: str
    tensor: str
    axis: int
    ids: np.ndarray = field(repr=False)

    def to_json(self) -> dict:
        return {"role": self.role, "node": self.node, "op": self.op,
                "tensor": self.tensor, "axis": self.axis}


@dataclass
class MaskSite:
    """A consumer input that mixes channels: masking here equals removing (DESIGN.md)."""

    node: str        # node_key of the consumer
    input_index: int
    tensor: str
    axis: int
    ids: np.ndarray = field(repr=False)
    rank: int = 0    # rank of the consumer's input (the mask is reshaped to it)


@dataclass
class Group:
    id: int
    units: int
    unit_size: int
    prunable: bool
    reason: str | None
    members: list[Member]
    sources: list[str]   # names of the tensors whose channels start this group

    def to_json(self) -> dict:
        return {"id": self.id, "units": self.units, "unit_size": self.unit_size,
                "prunable": self.prunable, "reason": self.reason,
                "sources": self.sources, "members": [m.to_json() for m in self.members]}


@dataclass
class Analysis:
    """The result of the dependency compiler, consumed by instrument and rewrite."""

    graph: gs.Graph
    maps: dict[str, ChannelMap]
    groups: list[Group]
    sites: list[MaskSite]
    ch_group: np.ndarray        # global channel id -> group id
    ch_unit: np.ndarray         # global channel id -> unit index within its group
    notes: dict[str, Any]       # node_key -> what its handler needs at rewrite time
    batch_mixing: list[str] = field(default_factory=list)  # ops that combine samples after a mask

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def group(self, gid: int) -> Group:
        return self.groups[gid]

    def unit_ids(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(group id, unit index) of each global channel id."""
        return self.ch_group[ids], self.ch_unit[ids]


class AnalysisContext:
    """What a handler sees: channel maps of tensors and the recording operations."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
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
        self.members.append(Member(role, node.name or node_key(node), node.op,
                                   tensor.name, axis, np.asarray(ids)))

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
            if node.op == "LayerNormalization" or (node.op == "ReduceMean" and any(
                    c.op == "Sub" for c in node.outputs[0].outputs)):
                return "a LayerNorm (normalizing over the hidden width is a barrier)"
            if node.op in ("GroupNormalization", "LRN", "Softmax"):
                return f"a {node.op} over the channels (a barrier)"
            if node.op == "Gather" and const_value(node.inputs[0]) is not None:
                return "an embedding lookup (Gather)"
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


def analyze(graph: gs.Graph) -> Analysis:
    """Run every node's handler in topological order and assemble the groups."""
    ctx = AnalysisContext(graph)
    for node in graph.nodes:
        _check_subgraph_captures(node, ctx)
        handler_for(node).analyze(node, ctx)
    for out in graph.outputs:
        if (cmap := ctx.map(out)) is not None:
            ctx.pin(cmap.ids, f"reaches graph output '{out.name}'")
    return _assemble(ctx)


def _check_subgraph_captures(node: gs.Node, ctx: AnalysisContext, outer: gs.Node | None = None) -> None:
    """If/Loop/Scan bodies may read outer tensors without listing them as inputs, at any depth."""
    for value in node.attrs.values():
        subgraphs = value if isinstance(value, list) else [value]
        for sub in subgraphs:
            if isinstance(sub, gs.Graph):
                for inner in sub.nodes:
                    for t in inner.inputs:
                        if (cmap := ctx.map(t)) is not None:
                            ctx.pin(cmap.ids, f"read inside a {(outer or node).op} subgraph")
                    _check_subgraph_captures(inner, ctx, outer or node)


def _assemble(ctx: AnalysisContext) -> Analysis:
    """Union-find classes are units; units sharing a source form a group."""
    roots = ctx.uf.roots()
    n = len(roots)
    # group structure: a union-find over roots, joined through each source's channels
    guf = UnionFind()
    guf.add(n)
    for _, ids in ctx.sources:
        r = roots[ids]
        guf.union_arrays(r[:-1], r[1:])
    groot = np.array([guf.find(int(x)) for x in roots], dtype=np.int64) if n else roots

    order = {}  # group root -> group id, in source (topological) order
    for _, ids in ctx.sources:
        for g in groot[ids]:
            order.setdefault(int(g), len(order))
    ch_group = np.array([order[int(g)] for g in groot], dtype=np.int64)

    ch_unit = np.full(n, -1, dtype=np.int64)
    unit_index: dict[int, int] = {}
    counts: dict[int, int] = defaultdict(int)
    for _, ids in ctx.sources:
        for i in ids.tolist():
            r = int(roots[i])
            if r not in unit_index:
                g = int(ch_group[i])
                unit_index[r] = counts[g]
                counts[g] += 1
            ch_unit[i] = unit_index[r]

    reasons: dict[int, list[str]] = defaultdict(list)
    for ids, reason in ctx.pins:
        for g in np.unique(ch_group[ids]).tolist():
            if reason not in reasons[g]:
                reasons[g].append(reason)

    members_of: dict[int, list[Member]] = defaultdict(list)
    for m in ctx.members:
        for g in np.unique(ch_group[m.ids]).tolist() if len(m.ids) else []:
            members_of[g].append(m)
    sources_of: dict[int, list[str]] = defaultdict(list)
    for name, ids in ctx.sources:
        for g in np.unique(ch_group[ids]).tolist():
            sources_of[g].append(name)

    sizes = _unit_sizes(ctx, ch_group, ch_unit)
    groups = []
    for gid in range(len(order)):
        units = counts[gid]
        reason = "; ".join(reasons[gid][:3]) + (" ..." if len(reasons[gid]) > 3 else "") \
            if reasons[gid] else ("only one unit" if units < 2 else None)
        groups.append(Group(gid, units, sizes.get(gid, 1), reason is None,
                            reason, members_of[gid], sources_of[gid]))
    mixing = batch_mixing(ctx.graph)
    return Analysis(ctx.graph, ctx.maps, groups, ctx.sites, ch_group, ch_unit, ctx.notes, mixing)


def _unit_sizes(ctx: AnalysisContext, ch_group, ch_unit) -> dict[int, int]:
    """Channels per unit: head_dim where channels were split into heads, else the most
    channels one unit spans in a single source (1 for conv channels, the coupled positions
    of a grouped conv)."""
    sizes: dict[int, int] = defaultdict(lambda: 1)
    for _, ids in ctx.sources:
        for g in np.unique(ch_group[ids]).tolist():
            count = int(np.bincount(ch_unit[ids[ch_group[ids] == g]]).max())
            sizes[g] = max(sizes[g], count)
    heads: dict[int, int] = {}
    for ids, head_dim in ctx.head_dims:
        for g in np.unique(ch_group[ids]).tolist():
            heads[g] = min(heads.get(g, head_dim), head_dim)
    sizes.update(heads)
    return sizes
