"""Reshape and Flatten: folding C x H x W into features, splitting C into heads x head_dim
(also SVTR's fused q/k/v split), channel shuffles (Reshape-Transpose-Reshape), and whether a
Reshape keeps the batch on axis 0. The fused split uses layout.py's Transpose/Gather rule."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..channels import ChannelMap
from ..graph import const_value, norm_axis, shape_of
from .layout import _picks_part, _static
from .registry import Handler, int_vector, register


@register("Flatten")
class Flatten(Handler):
    """Flatten(axis=1) is Reshape(x, [0, -1]): channels fold into the feature axis."""

    def mixes_batch(self, node, opset):
        return int(node.attrs.get("axis", 1)) == 0

    def analyze(self, node, ctx):
        cmap = ctx.map(node.inputs[0])
        if cmap is None:
            return
        shape = shape_of(node.inputs[0])
        axis = norm_axis(int(node.attrs.get("axis", 1)), len(shape) if shape else 0)
        if shape is None or axis != 1:
            return ctx.pin_inputs(node, "Flatten that folds channels into the batch axis")
        plan = reshape_plan(ctx, list(shape), [0, -1], cmap)
        if plan is None or plan[0] != "fold":
            return ctx.pin_inputs(node, "Flatten of a tensor with unknown dims")
        ctx.set_map(node.outputs[0], plan[1])


@register("Reshape")
class Reshape(Handler):
    """Batch stays on axis 0. The channel axis either keeps its own output axis (possibly
    merged with dims around it: Flatten into a classifier, NHWC flatten, heads merged back)
    or is split into (heads, head_dim), where one head becomes one unit."""

    def mixes_batch(self, node, opset):
        return _reshape_moves_batch(node)

    def eval_shape(self, node, dims):
        """A shape vector reshaped to itself (`[-1]` or its own length)."""
        data, target = dims(node.inputs[0]), const_value(node.inputs[1])
        if data is None or target is None or target.shape != (1,):
            return None
        return data if int(target[0]) in (-1, len(data)) else None

    def analyze(self, node, ctx):
        cmap = ctx.map(node.inputs[0])
        if cmap is None:
            return
        target = const_value(node.inputs[1])
        in_shape = shape_of(node.inputs[0])
        if target is None or in_shape is None:
            if self._last_axis(node, ctx, cmap, target):
                return None
            return ctx.pin_inputs(node, "Reshape with a run-time target shape")
        if target.ndim != 1 or not np.issubdtype(target.dtype, np.integer):
            return ctx.pin_inputs(node, "Reshape whose target is not a 1-D integer tensor "
                                  "(a malformed model?)")
        if int(node.attrs.get("allowzero", 0)) and 0 in target.tolist():
            return ctx.pin_inputs(node, "Reshape with allowzero and a zero in its target")
        if (shuffle := channel_shuffle(node, cmap)) is not None:
            return _couple_shuffle(node, ctx, cmap, *shuffle)
        plan = reshape_plan(ctx, list(in_shape), [int(t) for t in target], cmap)
        if plan is None and self._last_axis(node, ctx, cmap, target):
            return None
        if plan is None and (parts := _fused_split(in_shape, target, cmap)) is not None:
            if (why := _fused_heads(node, ctx, cmap, list(in_shape), target)) is None:
                return None
            return ctx.pin_inputs(node, f"Reshape splits the channel axis into {parts} (a fused "
                                  f"q/k/v head split, not followed: {why})")
        if plan is None:
            return ctx.pin_inputs(node, "Reshape that mixes the channel axis with other axes "
                                  "(or moves the batch axis, or has unknown dims)")
        kind, out, units = plan
        ctx.set_map(node.outputs[0], out)
        if kind != "same":
            ctx.member("shape", node, node.inputs[1], 0, cmap.ids)
            ctx.note(node, (kind, out.axis, int(target[out.axis]), units))

    @staticmethod
    def _last_axis(node, ctx, cmap: ChannelMap, target) -> bool:
        """Channels last in and out, the target's last entry the literal width (transformers'
        Conv1D: view(-1, C), then view(x.size()[:-1] + (C,)) by a run-time Concat whose last
        piece is the constant C; dynamo's merge of heads [B, S, H, d] -> [-1, H * d]):
        whatever the leading dims do, each run of that many elements stays one row, so the
        channels map 1:1 (heads: head_dim positions each). The literal is the member."""
        shape = shape_of(node.inputs[0])
        rank = None if shape is None else len(shape)
        if rank is None or cmap.axis != rank - (1 if cmap.within is None else 2):
            return False
        per = 1 if cmap.within is None else shape[-1]
        if cmap.within is not None and (cmap.within != rank - 1 or not _static(per)):
            return False
        width = cmap.size * int(per)
        if target is not None:
            if target.ndim != 1 or target.size < 2 or int(target[-1]) != width:
                return False
            out_rank, where = int(target.size), None
        else:
            where = _concat_literal(node, width)
            length = shape_of(node.inputs[1])
            if where is None or not length or not _static(length[0]) or length[0] < 2:
                return False
            out_rank = int(length[0])
        ctx.set_map(node.outputs[0], ChannelMap(out_rank - 1, np.repeat(cmap.ids, int(per))))
        ctx.member("shape", node, node.inputs[1], 0, cmap.ids)
        ctx.note(node, ("last", where, int(per)))
        return True

    def rewrite(self, node, rw):
        note = rw.note(node)
        if note is not None and note[0] in ("shuffle", "qkv"):  # (index in the target, its ids)
            return _rewrite_shuffle(node, rw, *note[1:])
        if note is None or (keep := rw.keep(node.inputs[0])) is None:
            return
        if note[0] == "last":
            return _rewrite_last(node, rw, note[1], note[2] * int(keep.sum()))
        kind, axis, old, units = note
        if old in (0, -1):
            return  # copied or inferred: follows the input by itself
        target = const_value(node.inputs[1]).copy()
        if kind == "fold":
            target[axis] = old // units * int(keep.sum())
        else:
            target[axis] = int(rw.keep_ids(rw.analysis.maps[node.outputs[0].name].ids).sum())
        rw.set_input(node, 1, target)


def _fused_split(in_shape: list, target: np.ndarray, cmap: ChannelMap) -> tuple | None:
    """The factors when channels last are split into three or more trailing axes
    ([B, L, 96] -> [0, -1, 3, 4, 8]: SVTR's qkv), for the reason only."""
    if cmap.within is not None or cmap.axis != len(in_shape) - 1:
        return None
    for k in range(3, target.size):
        tail = [int(t) for t in target[-k:]]
        if all(t > 0 for t in tail) and int(np.prod(tail)) == cmap.size:
            return tuple(tail)
    return None


def _fused_heads(node: gs.Node, ctx, cmap: ChannelMap, in_shape: list, target: np.ndarray) -> str | None:
    """Follow SVTR's fused q/k/v head split (None), or say why not: channels last, split into
    (P parts, H heads, D head_dim) by Reshape [..., P, H, D] read only by a Transpose that puts
    the part axis first and the batch second, read only by Gathers of one constant part on
    axis 0. Head h spans D channels of every part; each Gather gives [B, ..., H, ..., D]."""
    rank = len(in_shape)
    lead = [int(t) for t in target[:-3]]
    if len(lead) != rank - 1 or lead.count(-1) > 1 or any(
            t not in (0, -1) and t != in_shape[i] for i, t in enumerate(lead)):
        return "the leading dims are not kept"
    parts, heads, head_dim = (int(t) for t in target[-3:])
    if parts * heads * head_dim != cmap.size:
        return "the last three target dims do not multiply to the channel width"
    transpose = _only_reader(node.outputs[0], ctx)
    if transpose is None or transpose.op != "Transpose":
        return "its output is not read by one Transpose only"
    perm = [int(p) for p in transpose.attrs.get("perm") or []]
    if sorted(perm) != list(range(rank + 2)) or perm[:2] != [rank - 1, 0]:
        return f"Transpose perm {perm} does not put the q/k/v axis first and the batch second"
    axis, within = perm.index(rank) - 1, perm.index(rank + 1) - 1
    if within < axis:
        return f"Transpose perm {perm} puts head_dim before the heads"
    gathers = transpose.outputs[0].outputs
    if not gathers or any(o is transpose.outputs[0] for o in ctx.graph.outputs) or \
            not all(_picks_part(g, transpose.outputs[0], parts) for g in gathers):
        return "the transposed parts are not each picked by a Gather of a constant index on axis 0"
    blocks = cmap.ids.reshape(parts, heads, head_dim)
    for p in range(parts):
        for d in range(head_dim):
            ctx.union(blocks[0, :, 0], blocks[p, :, d])
    reps = blocks[0, :, 0].copy()
    ctx.head_dims.append((reps, head_dim))
    for gather in gathers:
        ctx.set_map(gather.outputs[0], ChannelMap(axis, reps, within))
    ctx.member("shape", node, node.inputs[1], 0, cmap.ids)
    ctx.note(node, ("qkv", rank, reps))
    return None


def _only_reader(tensor: gs.Tensor, ctx) -> gs.Node | None:
    """The one node reading `tensor`, when it is not a graph output too."""
    if len(tensor.outputs) != 1 or any(o is tensor for o in ctx.graph.outputs):
        return None
    return tensor.outputs[0]


def _target_source(node: gs.Node) -> tuple[gs.Node | None, gs.Node | None]:
    """(the node computing the Reshape's target, the Cast between them or None): SVTR
    builds the target in int32 and casts it to int64."""
    src = node.inputs[1].inputs[0] if node.inputs[1].inputs else None
    if src is None or src.op != "Cast" or not src.inputs[0].inputs:
        return src, None
    return src.inputs[0].inputs[0], src


def _concat_literal(node: gs.Node, size: int) -> int | None:
    """The input index of the Concat (axis 0) that computes the Reshape's target (directly
    or through a Cast), when its last input is a constant vector ending in `size`."""
    src, _ = _target_source(node)
    if src is None or src.op != "Concat" or int(src.attrs.get("axis", 0)) not in (0, -1):
        return None
    last = const_value(src.inputs[-1])
    if last is None or last.ndim != 1 or not last.size or not int_vector(last) \
            or int(last[-1]) != size:
        return None
    return len(src.inputs) - 1


def _rewrite_last(node: gs.Node, rw, where: int | None, kept: int) -> None:
    """The literal width, in the constant target, or in the last piece of a copy of its
    Concat (the Concat may compute the targets of other Reshapes, of other groups, too)."""
    if where is None:
        values = const_value(node.inputs[1]).copy()
        values[-1] = kept
        return rw.set_input(node, 1, values)
    src, cast = _target_source(node)
    values = const_value(src.inputs[where]).copy()
    values[-1] = kept
    name = rw.fresh(f"{node.outputs[0].name}__target")
    piece = gs.Constant(f"{name}_width", values)
    target = gs.Variable(name, dtype=values.dtype)
    rw.graph.nodes.append(gs.Node("Concat", name=name, attrs=dict(src.attrs),
                                  inputs=[*src.inputs[:where], piece], outputs=[target]))
    if cast is not None:
        target, cast_in = gs.Variable(f"{name}_cast", dtype=np.int64), target
        rw.graph.nodes.append(gs.Node("Cast", name=f"{name}_cast", attrs=dict(cast.attrs),
                                      inputs=[cast_in], outputs=[target]))
    node.inputs[1] = target


def channel_shuffle(split: gs.Node, cmap: ChannelMap) -> tuple[gs.Node, int] | None:
    """(the merging Reshape, groups g) when `split` starts a channel shuffle on the channel
    axis c: Reshape C -> (g, C/g) on axes c, c+1 (other dims kept), a Transpose swapping just
    those two axes, and a Reshape merging them back into C; each the only reader of the last."""
    c, size = cmap.axis, cmap.size
    mid, in_shape = shape_of(split.outputs[0]), shape_of(split.inputs[0])
    if mid is None or in_shape is None or len(mid) != len(in_shape) + 1 or c + 1 >= len(mid):
        return None
    g, n = mid[c], mid[c + 1]
    if not (_static(g) and _static(n) and g > 1 and g * n == size) or \
            not _same_dims(list(mid[:c]) + list(mid[c + 2:]), list(in_shape[:c]) + list(in_shape[c + 1:])):
        return None
    readers = split.outputs[0].outputs
    if len(readers) != 1 or readers[0].op != "Transpose":
        return None
    perm = list(range(len(mid)))
    perm[c], perm[c + 1] = c + 1, c
    transpose = readers[0]
    if list(transpose.attrs.get("perm") or []) != perm or len(transpose.outputs[0].outputs) != 1:
        return None
    merge = transpose.outputs[0].outputs[0]
    target = const_value(merge.inputs[1]) if merge.op == "Reshape" else None
    if target is None or target.ndim != 1 or len(target) != len(in_shape) or \
            not _same_dims(list(shape_of(merge.outputs[0]) or []), list(in_shape)):
        return None
    if int(target[c]) not in (-1, size):
        return None
    return merge, int(g)


def _same_dims(a: list, b: list) -> bool:
    """Equal dims; the batch (axis 0) may be named differently (a target of -1 there gives it a
    fresh name) when every other dim is a number, which then pins it to the same size."""
    if len(a) != len(b) or not a or a[1:] != b[1:]:
        return False
    return a[0] == b[0] or all(_static(d) for d in a[1:])


def _couple_shuffle(split: gs.Node, ctx, cmap: ChannelMap, merge: gs.Node, groups: int) -> None:
    """Channel i of every shuffle group lands next to the others (c' = i * g + k for c = k * n
    + i): they are one unit, so every group loses the same positions and the shuffle stays a
    shuffle of g equal groups (the unit spans g channels, as for grouped convs)."""
    blocks = cmap.ids.reshape(groups, -1)
    for k in range(1, groups):
        ctx.union(blocks[0], blocks[k])
    c = cmap.axis
    ctx.set_map(merge.outputs[0], ChannelMap(c, blocks.T.reshape(-1).copy()))
    ctx.member("shape", split, split.inputs[1], 0, cmap.ids)
    ctx.member("shape", merge, merge.inputs[1], 0, cmap.ids)
    ctx.note(split, ("shuffle", c + 1, blocks[0].copy()))   # per-group width n
    ctx.note(merge, ("shuffle", c, cmap.ids.copy()))        # the whole width C


def _rewrite_shuffle(node: gs.Node, rw, index: int, ids: np.ndarray) -> None:
    target = const_value(node.inputs[1]).copy()
    if int(target[index]) in (0, -1) or rw.keep_ids(ids).all():
        return  # copied or inferred: follows the input by itself
    target[index] = int(rw.keep_ids(ids).sum())
    rw.set_input(node, 1, target)


def _prod(dims) -> int | None:
    if any(not _static(d) for d in dims):
        return None
    return int(np.prod(dims)) if dims else 1


def reshape_plan(ctx, in_shape: list, target: list[int], cmap: ChannelMap):
    """How a Reshape moves the channel axis: ("same" | "fold" | "heads", new map, units) or None.

    Leading dims that the output keeps as they are (the batch, a dynamic sequence length:
    target 0, or an equal number) are a common prefix and need not be static; the rest
    must be static so that the channel axis can be followed through the row-major order."""
    out = [in_shape[i] if t == 0 and i < len(in_shape) else t for i, t in enumerate(target)]
    p = 0
    while p < min(len(out), len(in_shape)) and out[p] == in_shape[p] and out[p] != -1 \
            and in_shape[p] is not None:
        p += 1
    if p == 0:
        if not (out and out[0] == -1 and -1 not in out[1:] and _prod(in_shape[1:]) is not None
                and _prod(in_shape[1:]) == _prod(out[1:])):
            return None  # the batch must provably stay on axis 0
        out[0], p = in_shape[0], 1
    if cmap.axis < p:  # the channel axis stays where it is; a literal width in it is a member
        return "fold", cmap, cmap.size
    tail_in, tail_out = list(in_shape[p:]), list(out[p:])
    if -1 in tail_out:
        known, total = _prod([d for d in tail_out if d != -1]), _prod(tail_in)
        if known in (None, 0) or total is None or total % known or tail_out.count(-1) > 1:
            return None
        tail_out[tail_out.index(-1)] = total // known
    if _prod(tail_in) is None or _prod(tail_out) is None or _prod(tail_in) != _prod(tail_out):
        return None
    c = cmap.axis - p
    if (hit := fold_axis(tail_in, c, cmap.size, tail_out)) is not None:
        j, q, k = hit
        return "fold", ChannelMap(p + j, np.tile(np.repeat(cmap.ids, k), q)), cmap.size
    if (hit := split_axis(tail_in, c, cmap.size, tail_out)) is not None:
        j, heads, head_dim = hit
        blocks = cmap.ids.reshape(heads, head_dim)
        for d in range(1, head_dim):
            ctx.union(blocks[:, 0], blocks[:, d])
        ctx.head_dims.append((blocks[:, 0].copy(), head_dim))
        return "heads", ChannelMap(p + j, blocks[:, 0].copy(), within=p + j + 1), heads
    return None


def fold_axis(dims_in: list[int], c: int, size: int, dims_out: list[int]):
    """The channel axis lands whole in output axis j, merged with q outer and k inner
    elements: position b of axis j holds channel (b // k) % C, i.e. the map becomes
    tile(repeat(ids, k), q). Returns (j, q, k) or None."""
    outer, inner = _prod(dims_in[:c]), _prod(dims_in[c + 1:])
    for j in range(len(dims_out)):
        before, after = _prod(dims_out[:j]), _prod(dims_out[j + 1:])
        if before and outer % before == 0 and after and inner % after == 0:
            q, k = outer // before, inner // after
            if dims_out[j] == q * size * k:
                return j, q, k
    return None


def split_axis(dims_in: list[int], c: int, size: int, dims_out: list[int]):
    """C = heads x head_dim on two adjacent output axes. Returns (j, heads, head_dim) or None."""
    outer, inner = _prod(dims_in[:c]), _prod(dims_in[c + 1:])
    for j in range(len(dims_out) - 1):
        if _prod(dims_out[:j]) == outer and dims_out[j] * dims_out[j + 1] == size \
                and _prod(dims_out[j + 2:]) == inner:
            return j, dims_out[j], dims_out[j + 1]
    return None


def _reshape_moves_batch(node: gs.Node) -> bool:
    """Batch kept: target[0] is 0 (copy), or -1 with the rest matching the input's rest."""
    target = const_value(node.inputs[1])
    in_shape = node.inputs[0].shape
    if target is None and _copies_batch(node):
        return False
    if target is None or target.ndim != 1 or not target.size or not in_shape:
        return True
    if int(target[0]) == 0 and not node.attrs.get("allowzero", 0):
        return False
    if target.tolist() == [-1] and sum(d != 1 for d in in_shape) <= 1:
        return False  # a squeeze ([1, N] -> [N]: skl2onnx's label branch) keeps every sample apart
    rest = in_shape[1:]
    if int(target[0]) in (-1, in_shape[0]) and all(isinstance(d, int) for d in rest) \
            and all(int(t) > 0 for t in target[1:]):
        return int(np.prod(target[1:])) != int(np.prod(rest))
    out_shape = node.outputs[0].shape
    return not (out_shape and out_shape[0] == in_shape[0])


def _copies_batch(node: gs.Node) -> bool:
    """A run-time target Concat (axis 0, maybe cast) whose first piece is the constant 0:
    the batch dim is copied (SVTR's unflatten [0, H, W, C])."""
    src, _ = _target_source(node)
    if src is None or src.op != "Concat" or int(src.attrs.get("axis", 0)) not in (0, -1) \
            or node.attrs.get("allowzero", 0):
        return False
    first = const_value(src.inputs[0])
    return first is not None and first.ndim == 1 and first.size > 0 and int(first[0]) == 0
