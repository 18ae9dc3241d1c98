"""Stage `analyze`: the dependency compiler. IR graph -> channel groups.

One pass over the graph in topological order; each node's handler (ops/) maps the
channel ids of its inputs to its outputs, unions ids that must be removed together,
records the members it owns (weights, per-channel constants, shape constants) and
where a consumer mixes channels (mask sites). Anything a handler does not
understand pins the ids it sees, which makes their group unprunable with a reason.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from .analysis import Analysis, Group, Member
from .batchaxis import batch_mixing
from .channels import UnionFind
from .context import AnalysisContext
from .ops import handler_for
from .ops.layout import cache_reason, is_cache_tensor


def analyze(graph: gs.Graph, prune_cache: bool = False) -> Analysis:
    """Run every node's handler in topological order and assemble the groups. `prune_cache`:
    attention heads that reach key-value cache inputs/outputs may shrink them (--prune-cache)."""
    ctx = AnalysisContext(graph, describe=lambda node: handler_for(node).explain(node),
                          prune_cache=prune_cache)
    for node in graph.nodes:
        _check_subgraph_captures(node, ctx)
        handler_for(node).analyze(node, ctx)
    for out in graph.outputs:
        if (cmap := ctx.map(out)) is None:
            continue
        if cmap.within is None:
            ctx.pin(cmap.ids, f"reaches graph output '{out.name}'")
        elif ctx.prune_cache and is_cache_tensor(out, cmap):
            ctx.member("cache", out.inputs[0], out, cmap.axis, cmap.ids)
        else:
            ctx.pin(cmap.ids, cache_reason(f"graph output '{out.name}'", ctx.prune_cache))
    analysis = _assemble(ctx)
    analysis.prune_cache = prune_cache
    return analysis


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
    mixing = batch_mixing(ctx.graph, ctx.sites)
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
