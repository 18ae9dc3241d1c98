"""Stage `instrument`: graph + groups -> scoring model with one mask input per group.

Mask input `onnxprune_mask_<gid>` is [batch, units] (float, 1 = keep); each sample of
the batch may carry its own coalition. At every site where a consumer mixes channels
of the group, the input becomes  x * m + (1 - m) * fill  with m the per-channel mask
(fill = 0 by default: zeroing equals removal; a per-channel fill scores the game with
removed units replaced by constants, as compensation deploys it). The per-channel
mask is  mask @ S + b  with S the 0/1 unit-to-channel matrix: one MatMul, any opset.
A site whose rows merge the batch with other axes ([B*S, C], GPT-2's `x.view(-1, C)`) is
reshaped to [N, -1, C] around the mask (N = the mask's rows) and back.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .analysis import Analysis, MaskSite
from .batchaxis import merged_sites
from .graph import node_key
from .ops import handler_for

MASK_PREFIX = "onnxprune_mask_"


def mask_name(gid: int) -> str:
    return f"{MASK_PREFIX}{gid}"


def instrument(analysis: Analysis, groups: Sequence[int] | None = None, *,
               fill: Mapping[tuple[str, int], np.ndarray] | None = None,
               means: Mapping[str, np.ndarray] | None = None,
               batch_dim: str | int = "mask_batch") -> gs.Graph:
    """A copy of the analysed graph with mask inputs for `groups` (default: all prunable).

    `means` (per site tensor name, per channel) scores the game with compensation exactly as
    `rewrite(..., means=...)` deploys it: the consumer's output gets  (1 - m) @ C,  C[c, o] the
    constant contribution of channel c at its mean (see the handlers' `compensation`).
    `fill` maps a site (consumer node key, input index) to per-channel values that replace
    removed channels at the consumer's input (x*m + (1-m)*fill); it equals the deployed
    bias fold only for consumers without spatial padding, so prefer `means`."""
    gids = [g.id for g in analysis.prunable] if groups is None else list(groups)
    for gid in gids:
        if not analysis.group(gid).prunable:
            raise ValueError(f"group {gid} is not prunable: {analysis.group(gid).reason}")
    graph = analysis.graph.copy()
    masks = {gid: gs.Variable(mask_name(gid), np.float32, (batch_dim, analysis.group(gid).units))
             for gid in gids}
    graph.inputs.extend(masks.values())
    nodes = {node_key(n): n for n in graph.nodes}
    selected = set(gids)
    merged = merged_sites(analysis.graph, analysis.sites)
    for k, site in enumerate(analysis.sites):
        touched = [g for g in np.unique(analysis.ch_group[site.ids]).tolist() if g in selected]
        if touched:
            _mask_site(graph, nodes[site.node], site, analysis, {g: masks[g] for g in touched},
                       None if fill is None else fill.get((site.node, site.input_index)), k,
                       None if means is None else means.get(site.tensor), site.tensor in merged)
    graph.toposort()
    return graph


def _mask_site(graph: gs.Graph, node: gs.Node, site: MaskSite, analysis: Analysis,
               masks: dict[int, gs.Variable], fill: np.ndarray | None, k: int,
               mean: np.ndarray | None = None, merged: bool = False) -> None:
    x = node.inputs[site.input_index]
    tag = f"onnxprune_site{k}"
    rows = x
    if merged:  # [N*S, .., C] -> [N, S, .., C]: the mask broadcasts over each sample's rows
        x = _per_sample_rows(graph, x, next(iter(masks.values())), f"{tag}_rows")
    per_channel = None
    for gid, mask in masks.items():
        select, outside = _selection(analysis, site.ids, gid)
        m = _op(graph, "MatMul", [mask, gs.Constant(f"{tag}_g{gid}_S", select)], f"{tag}_g{gid}")
        m = _op(graph, "Add", [m, gs.Constant(f"{tag}_g{gid}_b", outside)], f"{tag}_g{gid}_m")
        per_channel = m if per_channel is None else _op(graph, "Mul", [per_channel, m], f"{tag}_gm{gid}")
    rank, axis = site.rank + merged, site.axis + merged
    target = np.ones(rank, dtype=np.int64)
    target[0], target[axis] = 0, len(site.ids)
    m = _op(graph, "Reshape", [per_channel, gs.Constant(f"{tag}_shape", target)], f"{tag}_mask")
    if x.dtype is not None and np.dtype(x.dtype) != np.float32:
        m = _op(graph, "Cast", [m], f"{tag}_cast", attrs={"to": _onnx_type(x.dtype)})
    out = _op(graph, "Mul", [x, m], f"{tag}_masked")
    if fill is not None:
        shape = [1] * rank
        shape[axis] = len(site.ids)
        fill_c = gs.Constant(f"{tag}_fill", np.asarray(fill, dtype=x.dtype or np.float32).reshape(shape))
        removed = _op(graph, "Sub", [gs.Constant(f"{tag}_one", np.ones([1] * rank, x.dtype or np.float32)), m], f"{tag}_removed")
        out = _op(graph, "Add", [out, _op(graph, "Mul", [removed, fill_c], f"{tag}_fillv")], f"{tag}_filled")
    if merged:
        out = _op(graph, "Reshape", [out, _op(graph, "Shape", [rows], f"{tag}_rshape")], f"{tag}_back")
    node.inputs[site.input_index] = out
    if mean is not None:
        mask = next(iter(masks.values())) if merged else None
        _compensate(graph, node, per_channel, np.asarray(mean, np.float64), tag, site.rank, mask)


def _compensate(graph: gs.Graph, node: gs.Node, per_channel: gs.Variable, mean: np.ndarray,
                tag: str, rank: int, merged_by: gs.Variable | None = None) -> None:
    """y + (1 - m) @ C, broadcast along the consumer's output channel axis. (The consumers
    with a site keep the rank of their input: Conv, Gemm, MatMul.) `merged_by`: y's rows
    merge the batch, grouped per sample by that mask's rows around the Add."""
    comp = handler_for(node).compensation(node, mean)
    assert comp is not None, f"{node.op} has a mask site but its handler no compensation"
    matrix, out_axis = comp
    y = node.outputs[0]
    dtype = np.dtype(y.dtype) if y.dtype is not None else np.dtype(np.float32)
    removed = _op(graph, "Sub", [gs.Constant(f"{tag}_one1", np.ones(1, np.float32)), per_channel],
                  f"{tag}_gone")
    comp = _op(graph, "MatMul", [removed, gs.Constant(f"{tag}_C", matrix.astype(np.float32))],
               f"{tag}_comp")
    merged = merged_by is not None
    target = np.ones(rank + merged, dtype=np.int64)
    target[0], target[out_axis + merged] = 0, matrix.shape[1]
    comp = _op(graph, "Reshape", [comp, gs.Constant(f"{tag}_cshape", target)], f"{tag}_compb")
    if dtype != np.float32:
        comp = _op(graph, "Cast", [comp], f"{tag}_ccast", attrs={"to": _onnx_type(dtype)})
    raw = gs.Variable(f"{tag}_raw", dtype=y.dtype)
    node.outputs[0] = raw
    if not merged:
        graph.nodes.append(gs.Node("Add", name=f"{tag}_compensated", inputs=[raw, comp], outputs=[y]))
        return
    grouped = _per_sample_rows(graph, raw, merged_by, f"{tag}_yrows")
    added = _op(graph, "Add", [grouped, comp], f"{tag}_compensated")
    shape = _op(graph, "Shape", [raw], f"{tag}_yshape")
    graph.nodes.append(gs.Node("Reshape", name=f"{tag}_yback", inputs=[added, shape], outputs=[y]))


def _per_sample_rows(graph: gs.Graph, x: gs.Variable, mask: gs.Variable, name: str) -> gs.Variable:
    """x [N*S, ...] as [N, S, ...] with N the mask's rows (1 for one coalition on all samples)."""
    def dims(t: gs.Variable, start: int, end: int, tag: str) -> gs.Variable:  # Slice: opset >= 10
        bounds = [gs.Constant(f"{name}_{tag}{i}", np.array([v], np.int64)) for i, v in enumerate((start, end))]
        return _op(graph, "Slice", [_op(graph, "Shape", [t], f"{name}_{tag}s"), *bounds], f"{name}_{tag}")
    n, rest = dims(mask, 0, 1, "n"), dims(x, 1, 1 << 62, "rest")
    target = _op(graph, "Concat", [n, gs.Constant(f"{name}_m1", np.array([-1], np.int64)), rest],
                 f"{name}_target", attrs={"axis": 0})
    return _op(graph, "Reshape", [x, target], name)


def _onnx_type(dtype) -> int:
    return int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def _selection(analysis: Analysis, ids: np.ndarray, gid: int) -> tuple[np.ndarray, np.ndarray]:
    """S [units, C] with S[u, c] = 1 if channel c is unit u of the group; b[c] = 1 outside it."""
    units = analysis.group(gid).units
    inside = analysis.ch_group[ids] == gid
    select = np.zeros((units, len(ids)), dtype=np.float32)
    select[analysis.ch_unit[ids][inside], np.nonzero(inside)[0]] = 1.0
    return select, (~inside).astype(np.float32)


def _op(graph: gs.Graph, op: str, inputs: list, name: str, attrs: dict | None = None) -> gs.Variable:
    out = gs.Variable(name, dtype=None)
    graph.nodes.append(gs.Node(op, name=name, attrs=attrs or {}, inputs=inputs, outputs=[out]))
    return out
