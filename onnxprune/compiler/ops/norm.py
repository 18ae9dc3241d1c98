"""Normalizations. Per-channel ones (BatchNorm, InstanceNorm) pass channels through with
their parameters as members; ones whose statistics mix channels are barriers when
the channels lie in the normalized axes (LayerNorm over the hidden width, GroupNorm, LRN).
"""
from __future__ import annotations

from ..graph import const_value, norm_axis, rank_of
from .registry import Barrier, Handler, add, register


@register("BatchNormalization", "InstanceNormalization")
class PerChannelNorm(Handler):
    """Inputs X, then per-channel tensors on axis 1 (scale, B[, mean, var])."""

    samplewise = True

    def analyze(self, node, ctx):
        cmap = ctx.map(node.inputs[0])
        if cmap is None:
            return
        if cmap.axis != 1:
            return ctx.pin_inputs(node, f"{node.op} over channels on an axis other than 1")
        if any(o.outputs for o in node.outputs[1:]) or node.attrs.get("training_mode", 0):
            return ctx.pin_inputs(node, f"{node.op} in training mode")
        for t in node.inputs[1:]:
            value = const_value(t)
            if value is None or value.shape != (cmap.size,):
                return ctx.pin_inputs(node, f"{node.op} parameter '{t.name}' is not a constant "
                                      f"vector of its {cmap.size} channels")
        for t in node.inputs[1:]:
            ctx.member("param", node, t, 0, cmap.ids)
        ctx.set_map(node.outputs[0], cmap)

    def rewrite(self, node, rw):
        if (keep := rw.keep(node.inputs[0])) is not None:
            for i in range(1, len(node.inputs)):
                rw.slice_input(node, i, 0, keep)


@register("LayerNormalization")
class LayerNorm(Handler):
    """Normalizes axes [axis:]; channels before `axis` are untouched by the statistics."""

    samplewise = True

    def explain(self, node):
        return LAYERNORM

    def analyze(self, node, ctx):
        cmap, rank = ctx.map(node.inputs[0]), rank_of(node.inputs[0])
        if cmap is None:
            return
        if rank is None or cmap.axis >= norm_axis(int(node.attrs.get("axis", -1)), rank):
            return ctx.pin_inputs(node, "LayerNormalization normalizes over the channel axis "
                                  "(exactness not proved for removing channels of its statistics)")
        if any(o.outputs for o in node.outputs[1:]):
            return ctx.pin_inputs(node, "LayerNormalization statistics outputs are used")
        ctx.set_map(node.outputs[0], cmap)


LAYERNORM = "a LayerNorm (normalizing over the hidden width is a barrier)"


class ChannelNorm(Barrier):
    """Statistics over several channels: a barrier, per sample."""

    def explain(self, node):
        return f"a {node.op} over the channels (a barrier)"


add(ChannelNorm("mixes neighbouring channels (local response normalization)", True), "LRN")
add(ChannelNorm("normalizes over groups of channels", True), "GroupNormalization")


@register("LpNormalization", "MeanVarianceNormalization")
class AxisNorm(Handler):
    """Statistics over the listed axes (LpNorm: one axis, default -1; MVN: default [0, 2, 3]):
    per channel as long as neither the channel nor the batch axis is among them."""

    def mixes_batch(self, node, opset):
        rank = rank_of(node.inputs[0])
        axes = ([node.attrs.get("axis", -1)] if node.op == "LpNormalization"
                else node.attrs.get("axes", [0, 2, 3]))
        return rank is None or 0 in {norm_axis(int(a), rank) for a in axes}

    def analyze(self, node, ctx):
        cmap, rank = ctx.map(node.inputs[0]), rank_of(node.inputs[0])
        if cmap is None:
            return
        if rank is None:
            return ctx.pin_inputs(node, f"{node.op} with unknown rank")
        if node.op == "LpNormalization":
            axes = [node.attrs.get("axis", -1)]
        else:
            axes = node.attrs.get("axes", [0, 2, 3])
        axes = {norm_axis(int(a), rank) for a in axes}
        if cmap.axis in axes:
            return ctx.pin_inputs(node, f"{node.op} normalizes over the channel axis")
        if 0 in axes:
            return ctx.pin_inputs(node, f"{node.op} normalizes over the batch axis")
        ctx.set_map(node.outputs[0], cmap)
