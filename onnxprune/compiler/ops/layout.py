"""Ops that move, cut or join the channel axis: Concat, Split, Slice, Transpose,
Squeeze/Unsqueeze, and Shape (only when the channel dim is not read). Reshape and Flatten,
which fold or split it, are in reshape.py."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..channels import ChannelMap
from ..graph import const_value, input_or_attr, is_present, norm_axis, rank_of, shape_of
from .registry import Handler, axis_is_batch, evaluate, int_vector, register


@register("Transpose")
class Transpose(Handler):
    def mixes_batch(self, node, opset):
        perm = node.attrs.get("perm")
        return perm is None or (perm[0] != 0 and not picks_leading_axis(node))

    def analyze(self, node, ctx):
        cmap, rank = ctx.map(node.inputs[0]), rank_of(node.inputs[0])
        if cmap is None:
            return
        perm = node.attrs.get("perm") or list(range(rank or 0))[::-1]
        if not perm:
            return ctx.pin_inputs(node, "Transpose with unknown rank")
        if len(perm) != (rank or len(perm)) or sorted(perm) != list(range(len(perm))) or \
                max(cmap.axis, cmap.within or 0) >= len(perm):
            return ctx.pin_inputs(node, f"Transpose perm {list(perm)} is not a permutation of "
                                  "its input's axes (a malformed model?)")
        if perm[0] != 0:
            return ctx.pin_inputs(node, "Transpose moves the batch axis")
        perm = list(perm)
        axis = perm.index(cmap.axis)
        within = None if cmap.within is None else perm.index(cmap.within)
        if within is not None and within < axis:
            # (groups, C/groups) swapped: a channel shuffle interleaves the groups' channels
            return ctx.pin_inputs(node, "channel shuffle (Reshape-Transpose-Reshape) interleaves "
                                  "channel groups")
        ctx.set_map(node.outputs[0], ChannelMap(axis, cmap.ids, within))


@register("Squeeze", "Unsqueeze")
class SqueezeUnsqueeze(Handler):
    samplewise = True

    def eval_shape(self, node, dims):
        return dims(node.inputs[0])  # a shape vector is unsqueezed to 1-D (or squeezed from it)

    def analyze(self, node, ctx):
        cmap, rank = ctx.map(node.inputs[0]), rank_of(node.inputs[0])
        if cmap is None:
            return
        axes = input_or_attr(node, 1, "axes", 13, ctx.opset)
        if isinstance(axes, str) or rank is None:
            return ctx.pin_inputs(node, f"{node.op} with run-time axes")
        if axes is not None and not int_vector(axes):
            return ctx.pin_inputs(node, f"{node.op} axes are not a list of integers")
        if node.op == "Squeeze":
            implicit = axes is None
            if implicit:  # "all dims of size 1": once a group is cut to one unit, C would go too
                axes = [i for i, d in enumerate(shape_of(node.inputs[0])) if d == 1]
            if not _axes_ok(np.atleast_1d(axes), rank, distinct=True):
                return ctx.pin_inputs(node, "Squeeze with axes out of range (a malformed model?)")
            axes = [norm_axis(int(a), rank) for a in np.atleast_1d(axes)]
            if cmap.axis in axes:
                return ctx.pin_inputs(node, "Squeeze of the channel axis")
            axis = cmap.axis - sum(a < cmap.axis for a in axes)
            if implicit:
                ctx.note(node, axes)
        else:
            if axes is None:
                return ctx.pin_inputs(node, "Unsqueeze without axes (a malformed model?)")
            out_rank = rank + len(np.atleast_1d(axes))
            if not _axes_ok(np.atleast_1d(axes), out_rank, distinct=True):
                return ctx.pin_inputs(node, "Unsqueeze with axes out of range (a malformed model?)")
            inserted = {norm_axis(int(a), out_rank) for a in np.atleast_1d(axes)}
            kept = [i for i in range(out_rank) if i not in inserted]
            axis = kept[cmap.axis]
        ctx.set_map(node.outputs[0], cmap.moved(axis))


    def rewrite(self, node, rw):
        axes = rw.note(node)
        if axes is None:
            return
        if rw.opset >= 13:
            while len(node.inputs) < 2:
                node.inputs.append(gs.Variable.empty())
            node.inputs[1] = gs.Constant(rw.fresh(f"{node.outputs[0].name}__axes"), np.array(axes, np.int64))
        else:
            node.attrs["axes"] = list(axes)


@register("Concat")
class Concat(Handler):
    """On the channel axis: the output map is the inputs' maps end to end (an input the
    analysis does not track gets fixed ids of its own). On another axis: all inputs carry
    the same channels, so they are one group."""

    def mixes_batch(self, node, opset):
        return axis_is_batch(node, "axis", None)

    def eval_shape(self, node, dims):
        args = [dims(t) for t in node.inputs]
        if any(a is None for a in args) or int(node.attrs.get("axis", 0)) not in (0, -1):
            return None
        return [d for a in args for d in a]

    def analyze(self, node, ctx):
        tracked = ctx.tracked_inputs(node)
        if not tracked:
            return
        rank = rank_of(node.outputs[0])
        if rank is None:
            return ctx.pin_inputs(node, "Concat with unknown rank")
        axis = int(node.attrs.get("axis", 1 << 30))
        if not _axes_ok([axis], rank) or any(rank_of(t) not in (None, rank) for t in node.inputs):
            return ctx.pin_inputs(node, "Concat with an axis out of range or inputs of different "
                                  "ranks (a malformed model?)")
        axis = norm_axis(axis, rank)
        if any(cmap.axis != tracked[0][1].axis for _, cmap in tracked):
            return ctx.pin_inputs(node, "Concat of tensors with channels on different axes")
        if tracked[0][1].axis == axis:
            return self._on_channels(node, ctx, axis)
        first = tracked[0][1]
        consts = self._channel_constants(node, ctx, first, rank)
        if len(tracked) + len(consts) != len(node.inputs):
            behind = [_graph_inputs_behind(t, ctx) for t in node.inputs if ctx.map(t) is None]
            if first.within is None or consts or not all(behind):
                return ctx.pin_inputs(node, "Concat of channel tensors with untracked ones")
            # past keys/values: the heads stay one group, whole, with the reason that matters,
            # unless --prune-cache lets them shrink the cache inputs (members of the group)
            cache = _cache_inputs(node, ctx, first) if ctx.prune_cache else None
            if cache is None:
                ctx.pin_inputs(node, cache_reason(f"graph input '{behind[0][0]}'", ctx.prune_cache))
            for tensor in cache or []:
                ctx.member("cache", node, tensor, first.axis, first.ids)
        for _, cmap in tracked[1:]:
            ctx.union(first.ids, cmap.ids)
        for index, local, via_expand in consts:
            owner = node.inputs[index].inputs[0] if via_expand else node
            tensor = owner.inputs[0] if via_expand else node.inputs[index]
            ctx.member("param", owner, tensor, local, first.ids)
        ctx.note(node, consts)
        ctx.set_map(node.outputs[0], first)

    @staticmethod
    def _channel_constants(node, ctx, first: ChannelMap, rank: int) -> list[tuple[int, int, bool]]:
        """Untracked inputs that are per-channel constants (ViT's class token: a constant
        [1, 1, C] broadcast over the batch by Expand, joined to the patches on the sequence
        axis): (input index, the constant's channel axis, whether through an Expand). They
        are sliced with the group; all or nothing (any other untracked input: [])."""
        out = []
        for i, t in enumerate(node.inputs):
            if ctx.map(t) is not None:
                continue
            found = _per_channel_constant(t, first, rank, ctx)
            if found is None:
                return []
            out.append((i, *found))
        return out

    def rewrite(self, node, rw):
        consts = rw.note(node)
        if not consts or (keep := rw.keep(node.outputs[0])) is None:
            return
        for index, local, via_expand in consts:
            if via_expand:
                rw.slice_input(node.inputs[index].inputs[0], 0, local, keep)
            else:
                rw.slice_input(node, index, local, keep)

    def _on_channels(self, node, ctx, axis):
        pieces = []
        for t in node.inputs:
            cmap = ctx.map(t)
            if cmap is None:
                dim = (shape_of(t) or [None] * (axis + 1))[axis]
                if not isinstance(dim, int):
                    return ctx.pin_inputs(node, "Concat with an input of unknown width")
                ids = ctx.uf.add(dim)
                ctx.sources.append((t.name, ids))
                what = "graph input" if any(i is t for i in ctx.graph.inputs) else "tensor"
                ctx.pin(ids, f"{what} '{t.name}', concatenated at '{node.outputs[0].name}', is not "
                        "tracked: its channels stay (the other inputs' are prunable at their offsets)")
                pieces.append(ids)
            else:
                pieces.append(cmap.ids)
        ctx.set_map(node.outputs[0], ChannelMap(axis, np.concatenate(pieces)))


@register("Split")
class Split(Handler):
    """On the channel axis each output gets its slice of the map; the sizes are members."""

    def mixes_batch(self, node, opset):
        return axis_is_batch(node, "axis", 0)

    def analyze(self, node, ctx):
        cmap = ctx.map(node.inputs[0])
        rank = rank_of(node.inputs[0])
        if cmap is None:
            return
        if rank is None:
            return ctx.pin_inputs(node, "Split with unknown rank")
        axis = int(node.attrs.get("axis", 0))
        if not _axes_ok([axis], rank):
            return ctx.pin_inputs(node, "Split with an axis out of range (a malformed model?)")
        axis = norm_axis(axis, rank)
        if axis != cmap.axis:
            for out in node.outputs:
                ctx.set_map(out, cmap)
            return
        sizes = input_or_attr(node, 1, "split", 13, ctx.opset)
        if isinstance(sizes, str):
            return ctx.pin_inputs(node, "Split with run-time sizes")
        n = len(node.outputs)
        if sizes is None:
            if node.attrs.get("num_outputs") is not None:  # opset 18: ceil-sized chunks, last smaller
                chunk = -(-cmap.size // n)
                sizes = [chunk] * (n - 1) + [cmap.size - chunk * (n - 1)]
            elif cmap.size % n:
                return ctx.pin_inputs(node, "uneven Split without sizes")
            else:
                sizes = [cmap.size // n] * n
        sizes = np.atleast_1d(sizes)
        if not int_vector(sizes) or len(sizes) != n or (sizes < 0).any():
            return ctx.pin_inputs(node, "Split sizes do not fit its outputs (a malformed model?)")
        bounds = np.cumsum([0, *[int(s) for s in sizes]])
        if bounds[-1] != cmap.size:
            return ctx.pin_inputs(node, "Split sizes do not add up to the channels")
        for out, start, stop in zip(node.outputs, bounds[:-1], bounds[1:]):
            ctx.set_map(out, ChannelMap(axis, cmap.ids[start:stop]))
        ctx.member("shape", node, node.inputs[0], axis, cmap.ids)
        ctx.note(node, "channels")

    def rewrite(self, node, rw):
        if rw.note(node) != "channels" or rw.keep(node.inputs[0]) is None:
            return
        sizes = np.array([int(rw.keep_ids(rw.analysis.maps[o.name].ids).sum())
                          for o in node.outputs], dtype=np.int64)
        node.attrs.pop("num_outputs", None)
        if rw.opset >= 13:
            if len(node.inputs) > 1 and is_present(node.inputs[1]):
                rw.set_input(node, 1, sizes)
            else:
                while len(node.inputs) < 2:
                    node.inputs.append(gs.Variable.empty())
                node.inputs[1] = gs.Constant(rw.fresh(f"{node.outputs[0].name}__split_sizes"), sizes)
        else:
            node.attrs["split"] = [int(s) for s in sizes]


@register("Slice")
class Slice(Handler):
    """A step-1 slice of the channel axis keeps the ids in range; starts/ends are members."""

    def mixes_batch(self, node, opset):
        return _slice_cuts_batch(node, opset)

    def eval_shape(self, node, dims):
        """A constant slice of a shape vector (transformers' Conv1D reads `x.size(-1)` as
        Slice(Shape(x), [-1], [INT64_MAX]) for its `view(-1, C)`)."""
        data, params = dims(node.inputs[0]), self._params(node, 13 if len(node.inputs) > 1 else 9)
        if data is None or params is None or not all(int_vector(p) for p in params):
            return None
        starts, ends, axes, steps = (np.atleast_1d(p) for p in params)
        if len(starts) != 1 or len(ends) != 1 or len(axes) != 1 or len(steps) != 1 \
                or int(axes[0]) not in (0, -1) or int(steps[0]) == 0:
            return None
        return data[slice(int(starts[0]), int(ends[0]), int(steps[0]))]

    def analyze(self, node, ctx):
        cmap, rank = ctx.map(node.inputs[0]), rank_of(node.inputs[0])
        if cmap is None:
            return
        params = self._params(node, ctx.opset)
        if params is None or rank is None:
            return ctx.pin_inputs(node, "Slice with run-time bounds")
        if not all(int_vector(p) for p in params):
            return ctx.pin_inputs(node, "Slice bounds are not lists of integers")
        starts, ends, axes, steps = (np.atleast_1d(p) for p in params)
        if len({len(starts), len(ends), len(axes), len(steps)}) != 1 or \
                not _axes_ok(axes, rank, distinct=True):
            return ctx.pin_inputs(node, "Slice whose starts, ends, axes and steps do not match "
                                  "(a malformed model?)")
        axes = [norm_axis(int(a), rank) for a in axes]
        if 0 in axes and (starts[axes.index(0)] != 0 or ends[axes.index(0)] < 2**31 - 1):
            pass  # slicing the batch is harmless for the channels
        if cmap.axis not in axes:
            return ctx.set_map(node.outputs[0], cmap)
        k = axes.index(cmap.axis)
        if int(steps[k]) != 1:
            return ctx.pin_inputs(node, "Slice of the channel axis with a step")
        start, stop, _ = slice(int(starts[k]), int(ends[k])).indices(cmap.size)
        ctx.set_map(node.outputs[0], ChannelMap(cmap.axis, cmap.ids[start:max(start, stop)]))
        ctx.member("shape", node, node.inputs[0], cmap.axis, cmap.ids)
        ctx.note(node, (k, start, max(start, stop)))

    @staticmethod
    def _params(node, opset):
        if opset < 10:
            starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
            if starts is None or ends is None:
                return None
            axes = node.attrs.get("axes", list(range(len(starts))))
            return starts, ends, axes, [1] * len(starts)
        values = [const_value(t) if is_present(t) else None for t in node.inputs[1:5]]
        values += [None] * (4 - len(values))
        starts, ends, axes, steps = values
        if starts is None or ends is None or (len(node.inputs) > 3 and is_present(node.inputs[3])
                                              and axes is None):
            return None
        if len(node.inputs) > 4 and is_present(node.inputs[4]) and steps is None:
            return None
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        return starts, ends, axes, steps

    def rewrite(self, node, rw):
        note = rw.note(node)
        if note is None or (keep := rw.keep(node.inputs[0])) is None:
            return
        k, start, stop = note
        new_start, new_stop = int(keep[:start].sum()), int(keep[:stop].sum())
        if rw.opset < 10:
            node.attrs["starts"] = _with(node.attrs["starts"], k, new_start)
            node.attrs["ends"] = _with(node.attrs["ends"], k, new_stop)
            return
        for index, value in ((1, new_start), (2, new_stop)):
            values = const_value(node.inputs[index]).copy()
            values[k] = value
            rw.set_input(node, index, values)


def _with(values, k, value):
    values = list(values)
    values[k] = value
    return values


def _picks_part(gather: gs.Node, data: gs.Tensor, parts: int | None) -> bool:
    """Gather(data, constant scalar index) on axis 0 (within [-parts, parts) when known)."""
    if gather.op != "Gather" or gather.inputs[0] is not data or data is gather.inputs[1]:
        return False
    rank = rank_of(data)
    index = const_value(gather.inputs[1])
    if rank is None or index is None or index.ndim != 0 or not np.issubdtype(index.dtype, np.integer):
        return False
    if norm_axis(int(gather.attrs.get("axis", 0)), rank) != 0:
        return False
    return parts is None or -parts <= int(index) < parts


def picks_leading_axis(transpose: gs.Node) -> bool:
    """A Transpose that moves another axis in front of the batch and the batch to axis 1, read
    only by Gathers of one constant index on axis 0 (SVTR's q/k/v parts): every Gather's output
    has the batch back on axis 0, so neither combines samples. (Whether the transposed tensor
    is a graph output too, batchaxis.py checks: a node does not know its graph.)"""
    perm = transpose.attrs.get("perm")
    out = transpose.outputs[0]
    if transpose.op != "Transpose" or perm is None or len(perm) < 2 or perm[0] == 0 or \
            perm[1] != 0 or not out.outputs:
        return False
    return all(_picks_part(g, out, None) for g in out.outputs)


def _per_channel_constant(t: gs.Tensor, cmap: ChannelMap, rank: int, ctx) -> tuple[int, bool] | None:
    """(channel axis in the constant, whether through an Expand) when `t` is a constant whose
    dim on the channel axis is the group's width, or Expand(such a constant, target) read only
    here whose target is 1 on the channel axis (so the slice shrinks the output with it)."""
    if cmap.within is not None:
        return None
    via_expand = bool(t.inputs) and t.inputs[0].op == "Expand"
    if via_expand:
        expand = t.inputs[0]
        if len(t.outputs) != 1 or any(o is t for o in ctx.graph.outputs):
            return None
        target = evaluate(expand.inputs[1])
        at = cmap.axis - (rank - len(target)) if target is not None else -1
        if target is None or len(target) > rank or (at >= 0 and target[at] != 1):
            return None
        t = expand.inputs[0]
    value = const_value(t)
    if value is None or value.ndim > rank:
        return None
    local = cmap.axis - (rank - value.ndim)
    if local < 0 or value.shape[local] != cmap.size:
        return None
    return local, via_expand


def _graph_inputs_behind(tensor: gs.Tensor, ctx, limit: int = 64) -> list[str]:
    """The graph inputs a tensor is computed from, when it is computed from graph inputs and
    constants only, without any channel tensor ([] otherwise, or past `limit` tensors)."""
    found, seen, frontier = [], set(), [tensor]
    while frontier:
        t = frontier.pop()
        if t.name in seen or isinstance(t, gs.Constant):
            continue
        seen.add(t.name)
        if ctx.map(t) is not None or len(seen) > limit:
            return []
        if t in ctx.graph.inputs:
            found.append(t.name)
        elif not t.inputs:
            return []
        else:
            frontier.extend(i for i in t.inputs[0].inputs if is_present(i))
    return found


def cache_reason(where: str, opted: bool = False) -> str:
    if opted:
        return (f"attention heads reach the past/present key-value cache ({where}) in a form "
                "--prune-cache does not shrink (a graph input [batch, heads, length, head_dim] "
                "Concat-ed as it is, its head axis read nowhere else)")
    return (f"attention heads reach the past/present key-value cache ({where}): pruning them "
            "would change the model's cache interface (--prune-cache allows it)")


def is_cache_tensor(tensor: gs.Tensor, cmap: ChannelMap) -> bool:
    """A key/value cache layout: [batch, heads, length, head_dim], one unit per head on axis 1."""
    return rank_of(tensor) == 4 and cmap.axis == 1 and cmap.within == 3


def _cache_inputs(node: gs.Node, ctx, first: ChannelMap) -> list[gs.Tensor] | None:
    """The graph inputs behind a past-cache Concat's untracked inputs, each a cache tensor of
    the heads' width (None if any is not)."""
    if not is_cache_tensor(node.outputs[0], first):
        return None
    found = []
    for t in node.inputs:
        if ctx.map(t) is None:
            if (source := _cache_source(t, node, ctx, first)) is None:
                return None
            found.append(source)
    return found


def _cache_source(tensor: gs.Tensor, reader: gs.Node, ctx, cmap: ChannelMap) -> gs.Tensor | None:
    """The graph input `tensor` is, directly or through one-input Concat/Identity copies (the
    legacy exporter's DynamicCache), when its head axis has the group's width and nothing
    else reads it but Shapes that skip the head axis (the past length is Shape(past)[2])."""
    chain = [tensor]
    while not any(i is chain[-1] for i in ctx.graph.inputs):
        t = chain[-1]
        copy = t.inputs[0] if t.inputs else None
        if copy is None or copy.op not in ("Identity", "Concat") or len(copy.inputs) != 1:
            return None
        chain.append(copy.inputs[0])
    source, shape = chain[-1], shape_of(chain[-1])
    if shape is None or len(shape) != 4 or shape[cmap.axis] != cmap.size:
        return None
    allowed = {id(reader)} | {id(t.inputs[0]) for t in chain[:-1]}
    for t in chain:
        if any(o is t for o in ctx.graph.outputs):
            return None
        for consumer in t.outputs:
            if id(consumer) not in allowed and (consumer.op != "Shape" or
                                                _shape_reads_axis(consumer, cmap.axis, 4, ctx)):
                return None
    return source


def _axes_ok(axes, rank: int | None, *, distinct: bool = False) -> bool:
    """Every axis within [-rank, rank) (when the rank is known), and no axis twice."""
    values = [int(a) for a in axes]
    if rank is not None and any(not -rank <= a < rank for a in values):
        return False
    return not distinct or rank is None or len({a % rank for a in values}) == len(values)


def _static(d) -> bool:
    return isinstance(d, (int, np.integer)) and d >= 0


@register("Shape")
class Shape(Handler):
    """Reading the shape of a channel tensor is harmless only if the channel dim is never used:
    every consumer must be a Gather of constant indices that avoid it."""

    samplewise = True

    def eval_shape(self, node, dims):
        """The input's dims, as numbers or dim names."""
        shape = node.inputs[0].shape
        if shape is None:
            return None
        dims = [d if isinstance(d, (int, str)) and d not in ("",) else None for d in shape]
        start = norm_axis(int(node.attrs.get("start", 0)), len(dims))
        end = node.attrs.get("end")
        return dims[start:None if end is None else norm_axis(int(end), len(dims))]

    def analyze(self, node, ctx):
        cmap = ctx.map(node.inputs[0])
        if cmap is None:
            return
        rank = rank_of(node.inputs[0]) or 0
        if any(o is node.outputs[0] for o in ctx.graph.outputs):
            return ctx.pin_inputs(node, "Shape of a channel tensor is a graph output")
        if _shape_reads_axis(node, cmap.axis, rank, ctx):
            return ctx.pin_inputs(node, "Shape of a channel tensor feeds a computation")


def _shape_reads_axis(node: gs.Node, axis: int, rank: int, ctx) -> bool:
    """Whether what a Shape node computes depends on dim `axis` of its input: it covers the
    axis and is read by anything but Gathers of constant indices that avoid it."""
    if any(o is node.outputs[0] for o in ctx.graph.outputs):
        return True
    start = norm_axis(int(node.attrs.get("start", 0)), rank)
    end = node.attrs.get("end")
    if end is not None and not start <= axis < norm_axis(int(end), rank):
        return False  # Shape(start, end) does not read that dim
    for consumer in _through_casts(node.outputs[0], ctx):
        index = const_value(consumer.inputs[1]) if consumer.op == "Gather" else None
        if index is None or rank == 0 or ((np.asarray(index) + start) % rank == axis).any():
            return True
    return False


def _through_casts(tensor: gs.Tensor, ctx, depth: int = 4) -> list[gs.Node]:
    """The readers of a shape vector, looking through Casts (SVTR casts Shape to int32
    before it gathers H and W); a Cast that is a graph output stays a reader itself."""
    out = []
    for consumer in tensor.outputs:
        cast_out = consumer.outputs[0] if consumer.op == "Cast" and depth else None
        if cast_out is None or any(o is cast_out for o in ctx.graph.outputs):
            out.append(consumer)
        else:
            out.extend(_through_casts(cast_out, ctx, depth - 1))
    return out


# ---------------------------------------------------------------------------- batch axis rules


def _slice_cuts_batch(node: gs.Node, opset: int) -> bool:
    """Mixing only if axis 0 is actually cut (not the full 0:INT_MAX:1 range)."""
    rank = rank_of(node.inputs[0])
    if opset < 10:
        starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
        axes, steps = node.attrs.get("axes"), None
    else:
        vals = [const_value(t) if t is not None and t.name else None for t in node.inputs[1:5]]
        starts, ends, axes, steps = (vals + [None] * 4)[:4]
        if axes is None and len(node.inputs) > 3 and node.inputs[3].name:
            return True  # run-time axes
    if rank is None or any(np.ndim(v) > 1 for v in (starts, ends, axes, steps) if v is not None):
        return True
    if axes is not None and 0 not in [norm_axis(int(a), rank) for a in np.atleast_1d(axes)]:
        return False
    if starts is None or ends is None:
        return True
    axes = list(range(len(starts))) if axes is None else [norm_axis(int(a), rank) for a in axes]
    k = axes.index(0)
    step = 1 if steps is None else int(np.atleast_1d(steps)[k])
    return not (int(starts[k]) == 0 and int(ends[k]) >= 2**31 - 1 and step == 1)


