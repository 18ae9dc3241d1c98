"""Spatial ops that keep channels apart: pooling, reductions over other axes, Resize, Pad,
and Softmax-like ops over a non-channel axis."""
from __future__ import annotations

import numpy as np

from ..channels import ChannelMap
from ..graph import const_value, input_or_attr, is_present, norm_axis, rank_of
from .norm import LAYERNORM
from .registry import Handler, int_vector, register


@register("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
          "GlobalLpPool", "MaxRoiPool")
class Pool(Handler):
    """NCHW pools: channels must be on axis 1 (pooling over a channel axis would mix them)."""

    def mixes_batch(self, node, opset):
        return node.op == "MaxRoiPool"  # pools regions of any image of the batch

    def analyze(self, node, ctx):
        cmap = ctx.map(node.inputs[0])
        if cmap is None:
            return
        if cmap.axis != 1 or node.op == "MaxRoiPool":
            return ctx.pin_inputs(node, f"{node.op} pools over the channel axis")
        if len(node.outputs) > 1 and node.outputs[1].outputs:
            return ctx.pin_inputs(node, "MaxPool indices output is used")
        ctx.set_map(node.outputs[0], cmap)


# op -> (input index of axes since opset, that opset)
_REDUCE_AXES_INPUT = {"ReduceSum": 13}
REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


DECOMPOSED_LAYERNORM = "LayerNorm (decomposed) over the channel axis"


def _layernorm_mean(node) -> bool:
    """The mean of a LayerNorm written out by hand: x - ReduceMean(x), or x - ReduceSum(x) * 1/C
    (jax2tf), the reduction's input being the Sub's first operand."""
    if node.op not in ("ReduceMean", "ReduceSum"):
        return False
    mean = node.outputs[0]
    if node.op == "ReduceSum":
        scaled = [c for c in mean.outputs if c.op in ("Mul", "Div") and any(
            const_value(t) is not None and const_value(t).size == 1 for t in c.inputs)]
        if not scaled:
            return False
        mean = scaled[0].outputs[0]
    return any(c.op == "Sub" and c.inputs[0] is node.inputs[0] and c.inputs[1] is mean
               for c in mean.outputs)


def _layernorm_variance(node) -> bool:
    """The variance of a hand-written LayerNorm: a reduction of (x - mean)^2 (Pow 2, or Mul of
    the centred tensor by itself) where the mean is _layernorm_mean's."""
    if node.op not in ("ReduceMean", "ReduceSum") or not node.inputs[0].inputs:
        return False
    square = node.inputs[0].inputs[0]
    if square.op == "Pow" and len(square.inputs) == 2:
        exponent = const_value(square.inputs[1])
        ok = exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0
    else:
        ok = square.op == "Mul" and len(square.inputs) == 2 and square.inputs[0] is square.inputs[1]
    centred = square.inputs[0]
    sub = centred.inputs[0] if ok and centred.inputs else None
    if sub is None or sub.op != "Sub":
        return False
    mean = sub.inputs[1].inputs[0] if sub.inputs[1].inputs else None
    if mean is not None and mean.op in ("Mul", "Div") and mean.inputs[0].inputs:
        mean = mean.inputs[0].inputs[0]
    return mean is not None and _layernorm_mean(mean)


@register(*REDUCE)
class Reduce(Handler):
    def explain(self, node):
        """ReduceMean feeding a Sub: the mean of a LayerNorm that an exporter spelled out."""
        if node.op == "ReduceMean" and any(c.op == "Sub" for c in node.outputs[0].outputs):
            return LAYERNORM
        return LAYERNORM if _layernorm_mean(node) else None

    def mixes_batch(self, node, opset):
        rank = rank_of(node.inputs[0])
        since = 13 if node.op == "ReduceSum" else 18
        axes = input_or_attr(node, 1, "axes", since, opset)
        if isinstance(axes, str) or rank is None:
            return True
        if axes is None or np.size(axes) == 0:
            return not node.attrs.get("noop_with_empty_axes", 0)
        if np.ndim(axes) > 1:  # malformed: fail closed
            return True
        return 0 in {norm_axis(int(a), rank) for a in np.atleast_1d(axes)}

    def analyze(self, node, ctx):
        cmap, rank = ctx.map(node.inputs[0]), rank_of(node.inputs[0])
        if cmap is None:
            return
        axes = input_or_attr(node, 1, "axes", _REDUCE_AXES_INPUT.get(node.op, 18), ctx.opset)
        if rank is None or (isinstance(axes, str)):
            return ctx.pin_inputs(node, f"{node.op} over unknown axes")
        if axes is not None and not int_vector(axes):
            return ctx.pin_inputs(node, f"{node.op} axes are not a list of integers")
        if axes is None or len(np.atleast_1d(axes)) == 0:
            if node.attrs.get("noop_with_empty_axes", 0):
                return ctx.set_map(node.outputs[0], cmap)
            return ctx.pin_inputs(node, f"{node.op} over all axes, channels included")
        if any(not -rank <= int(a) < rank for a in np.atleast_1d(axes)):
            return ctx.pin_inputs(node, f"{node.op} with axes out of range (a malformed model?)")
        axes = sorted(set(norm_axis(int(a), rank) for a in np.atleast_1d(axes)))
        if cmap.axis in axes and (_layernorm_mean(node) or _layernorm_variance(node)):
            return ctx.pin_inputs(node, DECOMPOSED_LAYERNORM)
        if cmap.axis in axes or 0 in axes:
            return ctx.pin_inputs(node, f"{node.op} over the channel (or batch) axis")
        keepdims = int(node.attrs.get("keepdims", 1))
        axis = cmap.axis if keepdims else cmap.axis - sum(a < cmap.axis for a in axes)
        ctx.set_map(node.outputs[0], cmap.moved(axis))


@register("Resize", "Upsample")
class Resize(Handler):
    """Scales must be 1 on the batch and channel axes; explicit sizes must keep the width,
    and hold it (a member). Opset 18 `axes` says which axes scales/sizes list."""

    samplewise = True

    def analyze(self, node, ctx):
        cmap, rank = ctx.map(node.inputs[0]), rank_of(node.inputs[0])
        if cmap is None:
            return
        scales_idx, sizes_idx = (1, None) if node.op == "Upsample" or ctx.opset < 11 else (2, 3)
        scales, sizes = _const_input(node, scales_idx), _const_input(node, sizes_idx)
        if isinstance(scales, str) or isinstance(sizes, str) or rank is None:
            return ctx.pin_inputs(node, f"{node.op} with run-time scales or sizes")
        axes = [norm_axis(int(a), rank) for a in node.attrs.get("axes", range(rank))]
        if any(v is not None and v.size and v.shape != (len(axes),) for v in (scales, sizes)) or \
                (sizes is not None and not int_vector(sizes)):
            return ctx.pin_inputs(node, f"{node.op} scales or sizes do not list one value per "
                                  "axis (a malformed model?)")
        listed = {a: i for i, a in enumerate(axes)}
        if scales is not None and scales.size:
            if any(a in listed and scales[listed[a]] != 1 for a in (0, cmap.axis)):
                return ctx.pin_inputs(node, f"{node.op} scales the channel (or batch) axis")
        if sizes is not None and sizes.size and cmap.axis in listed:
            if int(sizes[listed[cmap.axis]]) != cmap.size:
                return ctx.pin_inputs(node, f"{node.op} changes the number of channels")
            ctx.member("shape", node, node.inputs[sizes_idx], 0, cmap.ids)
            ctx.note(node, (sizes_idx, listed[cmap.axis]))
        ctx.set_map(node.outputs[0], cmap)

    def rewrite(self, node, rw):
        note = rw.note(node)
        if note is None or (keep := rw.keep(node.inputs[0])) is None:
            return
        index, position = note
        sizes = const_value(node.inputs[index]).copy()
        sizes[position] = int(keep.sum())
        rw.set_input(node, index, sizes)


def _const_input(node, index):
    if index is None or len(node.inputs) <= index or not is_present(node.inputs[index]):
        return None
    value = const_value(node.inputs[index])
    return "dynamic" if value is None else value


@register("Pad")
class Pad(Handler):
    samplewise = True

    def analyze(self, node, ctx):
        cmap, rank = ctx.map(node.inputs[0]), rank_of(node.inputs[0])
        if cmap is None:
            return
        pads = input_or_attr(node, 1, "pads", 11, ctx.opset)
        if isinstance(pads, str) or pads is None or rank is None:
            return ctx.pin_inputs(node, "Pad with run-time pads")
        if not int_vector(pads):
            return ctx.pin_inputs(node, "Pad pads are not a list of integers")
        axes = list(range(rank))
        if ctx.opset >= 18 and len(node.inputs) > 3 and is_present(node.inputs[3]):
            value = const_value(node.inputs[3])
            if value is None or not int_vector(value):
                return ctx.pin_inputs(node, "Pad with run-time axes (or axes that are not integers)")
            axes = [norm_axis(int(a), rank) for a in value]
        if np.asarray(pads).shape != (2 * len(axes),) or \
                any(not 0 <= a < rank for a in axes):
            return ctx.pin_inputs(node, "Pad whose pads do not list two values per axis "
                                  "(a malformed model?)")
        pads = np.asarray(pads).reshape(2, -1)
        if cmap.axis in axes and pads[:, axes.index(cmap.axis)].any():
            return ctx.pin_inputs(node, "Pad on the channel axis")
        ctx.set_map(node.outputs[0], cmap)


@register("Softmax", "LogSoftmax", "Hardmax")
class Softmax(Handler):
    """Before opset 13 the op flattens to 2-D at `axis` (default 1) and normalizes the tail."""

    def explain(self, node):
        return "a Softmax over the channels (a barrier)" if node.op == "Softmax" else None

    def mixes_batch(self, node, opset):
        rank = rank_of(node.inputs[0])
        axis = node.attrs.get("axis", 1 if opset < 13 else -1)
        return rank is None or norm_axis(int(axis), rank) == 0

    def analyze(self, node, ctx):
        cmap, rank = ctx.map(node.inputs[0]), rank_of(node.inputs[0])
        if cmap is None:
            return
        if rank is None:
            return ctx.pin_inputs(node, f"{node.op} with unknown rank")
        if ctx.opset < 13:
            axis = norm_axis(int(node.attrs.get("axis", 1)), rank)
            mixes = cmap.axis >= axis
        else:
            mixes = cmap.axis == norm_axis(int(node.attrs.get("axis", -1)), rank)
        if mixes:
            return ctx.pin_inputs(node, f"{node.op} normalizes over the channel axis")
        ctx.set_map(node.outputs[0], ChannelMap(cmap.axis, cmap.ids))
