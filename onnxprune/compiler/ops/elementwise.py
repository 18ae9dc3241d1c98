"""Element-wise ops: channel c of the output depends only on channel c of the inputs.

Unary ops pass the map through. Binary (and variadic) ops broadcast: two channel
tensors on the same axis are one group (residual Add, SE gate Mul, Max); a constant
with a full channel dimension is a per-channel member, sliced with the channels; an
untracked activation is fine only when it broadcasts along the channel axis.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..channels import ChannelMap
from ..graph import const_value, input_or_attr, is_present, norm_axis, rank_of, shape_of
from .registry import Handler, add, handler_for, register

UNARY = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Softsign", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Cast", "Identity", "Mish",
    "ThresholdedRelu", "Shrink", "Not", "IsNaN", "IsInf", "CastLike", "Swish",
)


@register(*UNARY)
class Unary(Handler):
    samplewise = True

    def eval_shape(self, node, dims):
        return dims(node.inputs[0]) if node.op in ("Cast", "Identity") else None

    def analyze(self, node, ctx):
        cmap = ctx.map(node.inputs[0])
        for t in node.inputs[1:]:  # CastLike's target: type only
            if node.op != "CastLike" and ctx.map(t) is not None:
                return ctx.pin_inputs(node, f"{node.op} with a channel tensor as parameter")
        if cmap is not None:
            ctx.set_map(node.outputs[0], cmap)


# com.microsoft's fused activations (ORT's offline optimizer writes x * sigmoid(x) as
# QuickGelu): one input, element-wise
class FusedActivation(Unary):
    """FastGelu's optional bias is a per-channel parameter this handler does not slice."""

    def analyze(self, node, ctx):
        if any(is_present(t) for t in node.inputs[1:]):
            return ctx.pin_inputs(node, f"{node.op} with a bias input (not handled)")
        super().analyze(node, ctx)


add(FusedActivation(), "QuickGelu", "Gelu", "FastGelu", domain="com.microsoft")


@register("Dropout")
class Dropout(Handler):
    samplewise = True

    def analyze(self, node, ctx):
        cmap = ctx.map(node.inputs[0])
        if cmap is None:
            return
        if len(node.outputs) > 1 and node.outputs[1].outputs:
            return ctx.pin_inputs(node, "Dropout mask output is used")
        ctx.set_map(node.outputs[0], cmap)


@register("Clip")
class Clip(Handler):
    """min/max are scalars (attributes before opset 11, inputs after)."""

    samplewise = True

    def analyze(self, node, ctx):
        cmap = ctx.map(node.inputs[0])
        if cmap is None:
            return
        for t in node.inputs[1:]:
            if is_present(t) and (ctx.map(t) is not None or _size(t) not in (1, None)):
                return ctx.pin_inputs(node, "Clip with per-channel bounds")
        ctx.set_map(node.outputs[0], cmap)


def _size(t: gs.Tensor) -> int | None:
    shape = shape_of(t)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return int(np.prod(shape)) if shape else 1


@register("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu")
class Broadcast(Handler):
    """Numpy-style broadcasting (PRelu: the slope broadcasts onto X)."""

    samplewise = True

    def eval_shape(self, node, dims):
        arith = _ARITH.get(node.op)
        return None if arith is None else _elementwise(arith, [dims(t) for t in node.inputs])

    def analyze(self, node, ctx):
        tracked = ctx.tracked_inputs(node)
        if not tracked:
            return
        out_rank = rank_of(node.outputs[0])
        ranks = [rank_of(t) for t in node.inputs]
        if out_rank is None or any(r is None for r in ranks):
            return ctx.pin_inputs(node, f"{node.op} with unknown ranks")
        if any(r > out_rank for r in ranks):
            return ctx.pin_inputs(node, f"{node.op} whose output has a lower rank than an input "
                                  "(a malformed model?)")
        axes = {out_rank - ranks[i] + cmap.axis for i, cmap in tracked}
        if len(axes) != 1:
            return ctx.pin_inputs(node, f"{node.op} of tensors with channels on different axes")
        axis = axes.pop()
        first = tracked[0][1]
        for _, cmap in tracked[1:]:
            if cmap.size != first.size:
                return ctx.pin_inputs(node, f"{node.op} of channel tensors of different widths")
            ctx.union(first.ids, cmap.ids)
        params = []
        for i, t in enumerate(node.inputs):
            if ctx.map(t) is not None:
                continue
            local = axis - (out_rank - ranks[i])        # the channel axis in this input's own dims
            dim = shape_of(t)[local] if local >= 0 else 1
            if dim == 1:
                continue
            if dim == first.size and const_value(t) is not None:
                params.append((i, local))
                ctx.member("param", node, t, local, first.ids)
            elif "LayerNorm" not in ctx.explain(t) and \
                    (norm := _layernorm_reading(node.outputs[0], axis, ctx.opset)) is not None:
                # the untracked operand is a residual stream; tracked or not, the stream and
                # the channels joining it would be one width, normalized by this LayerNorm
                return ctx.pin_inputs(node, f"{node.op} joins channels into a residual stream "
                                      f"that a LayerNorm normalizes ('{norm}'): normalizing over "
                                      "the hidden width is a barrier")
            else:
                return ctx.pin_inputs(node, f"{node.op} joins channels from {ctx.explain(t)} "
                                      f"('{t.name}')")
        ctx.note(node, params)
        ctx.set_map(node.outputs[0], ChannelMap(axis, first.ids))

    def rewrite(self, node, rw):
        keep = rw.keep(node.outputs[0])
        if keep is None:
            return
        for index, axis in rw.note(node) or []:
            rw.slice_input(node, index, axis, keep)


def _layernorm_reading(t: gs.Tensor, axis: int, opset: int) -> str | None:
    """The name of a LayerNorm over `axis` that reads t: LayerNormalization, or the mean of
    one written out by hand (ReduceMean feeding a Sub, or ReduceSum * 1/C)."""
    from .norm import LAYERNORM
    rank = rank_of(t)
    for c in t.outputs:
        if rank is None:
            return None
        if c.op == "LayerNormalization" and axis >= norm_axis(int(c.attrs.get("axis", -1)), rank):
            return c.name or c.outputs[0].name
        if c.op in ("ReduceMean", "ReduceSum") and handler_for(c).explain(c) == LAYERNORM:
            axes = input_or_attr(c, 1, "axes", 13 if c.op == "ReduceSum" else 18, opset)
            if axes is not None and not isinstance(axes, str) and np.ndim(axes) <= 1 and \
                    axis in [norm_axis(int(a), rank) for a in np.atleast_1d(axes)]:
                return c.name or c.outputs[0].name
    return None


# shape vectors (shapes.py): the arithmetic exporters put between Shape and Reshape
_ARITH = {"Add": lambda x, y: x + y, "Sub": lambda x, y: x - y, "Mul": lambda x, y: x * y,
          "Div": lambda x, y: x // y if y else None}


def _elementwise(fn, args: list, strings: bool = False) -> list | None:
    """`fn` entry by entry (broadcasting a single entry); with `strings`, dim names reach `fn`."""
    a, b = args
    if a is None or b is None:
        return None
    if len(a) == 1 and len(b) > 1:
        a = a * len(b)
    if len(b) == 1 and len(a) > 1:
        b = b * len(a)
    if len(a) != len(b):
        return None
    if strings:
        return [fn(x, y) for x, y in zip(a, b)]
    return [fn(x, y) if isinstance(x, int) and isinstance(y, int) else None for x, y in zip(a, b)]


@register("Equal")
class Equal(Handler):
    """Only a shape fact: entries of a shape vector compared with constants. A dim is never
    negative, so a named dim is known to differ from a negative constant (torch's
    `expand(b, -1, s, s)` lowering: Where(Equal(t, -1), 1, t))."""

    samplewise = True

    def eval_shape(self, node, dims):
        a, b = (dims(t) for t in node.inputs)
        return _elementwise(_equal, [a, b], strings=True)


@register("Where")
class Where(Handler):
    """Only a shape fact: Where(cond, x, y) over shape vectors picks per known condition."""

    samplewise = True

    def eval_shape(self, node, dims):
        cond, x, y = (dims(t) for t in node.inputs)
        if cond is None or x is None or y is None:
            return None
        n = max(len(cond), len(x), len(y))
        if any(len(v) not in (1, n) for v in (cond, x, y)):
            return None
        cond, x, y = ([v[0]] * n if len(v) == 1 else v for v in (cond, x, y))
        return [None if not isinstance(c, int) else (a if c else b) for c, a, b in zip(cond, x, y)]


def _equal(x, y) -> int | None:
    """1/0 where known: two numbers, or a dim name (>= 0) against a negative number."""
    if isinstance(x, int) and isinstance(y, int):
        return int(x == y)
    if isinstance(x, str) and isinstance(y, int) and y < 0 or \
            isinstance(y, str) and isinstance(x, int) and x < 0:
        return 0
    return None
