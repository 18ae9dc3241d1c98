"""Cut points: Conv, ConvTranspose, Gemm and MatMul with a constant weight.

Their input channels end a group (consumer: a mask site, weight columns are members)
and their output channels start one (producer: a new source, weight rows and bias
are members). Depthwise convs pass channels through; grouped convs couple the same
position in every conv group so that the groups stay equal in size.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..channels import ChannelMap
from ..context import Positions, RefitLayout
from ..graph import const_value, is_present, rank_of, shape_of
from .registry import Handler, register


def _bias(node: gs.Node, index: int) -> gs.Tensor | None:
    return node.inputs[index] if len(node.inputs) > index and is_present(node.inputs[index]) else None


QUANTIZED = "weight is quantized (DequantizeLinear): not handled"


def _dequantized(t: gs.Tensor) -> np.ndarray | None:
    """The integer constant behind a weight computed as DequantizeLinear(constant) (QDQ format)."""
    producer = t.inputs[0] if isinstance(t, gs.Variable) and t.inputs else None
    if producer is None or producer.op != "DequantizeLinear" or not producer.inputs:
        return None
    return const_value(producer.inputs[0])


def _static_dim(t: gs.Tensor, axis: int) -> int | None:
    shape = shape_of(t)
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    d = shape[axis]
    return int(d) if isinstance(d, (int, np.integer)) and d > 0 else None


def _opaque(node: gs.Node, ctx, n: int | None, axis: int, reason: str) -> None:
    """A mixing node the analysis cannot cut: its inputs' channels are pinned, and its output
    channels (when their number is known) form a group that is listed, unprunable, with
    the reason, instead of silently starting none."""
    ctx.pin_inputs(node, reason)
    y = node.outputs[0]
    rank = rank_of(y)
    if rank is None or not -rank <= axis < rank:
        return
    n = n if n is not None else _static_dim(y, axis)
    if n:
        out = ctx.new_source(node, y, n, axis % rank)
        ctx.pin(out.ids, reason)


def _vector_of(t: gs.Tensor | None, n: int) -> bool:
    """A constant 1-D tensor of n entries (a bias that can be cut with the channels)."""
    value = const_value(t)
    return value is not None and value.shape == (n,)


def _conv_problem(node: gs.Node, weight: np.ndarray, groups: int, xmap, bias) -> str | None:
    """What is malformed about a Conv (rank, group, widths) that the light checker lets through."""
    if weight.ndim < 3:
        return f"Conv weight '{node.inputs[1].name}' has rank {weight.ndim} (a Conv needs 3 or more)"
    c_out, cin_g = weight.shape[:2]
    if groups < 1 or c_out % groups:
        return f"Conv group {groups} does not divide its {c_out} filters"
    rank = rank_of(node.inputs[0])
    if rank is not None and rank != weight.ndim:
        return f"Conv input of rank {rank} does not match its rank-{weight.ndim} weight"
    if xmap is not None and xmap.size != cin_g * groups:
        return (f"Conv reads {xmap.size} channels but its weight takes {cin_g} x group {groups}")
    if bias is not None and not _vector_of(bias, c_out):
        return f"Conv bias '{bias.name}' is not a constant vector of {c_out}"
    return None


def _static(dims) -> int:
    """Product of the dims that are numbers (batch and sequence names count as 1)."""
    return int(np.prod([d if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in dims]))


def _dims(handler: Handler, node: gs.Node, measured: tuple[int, ...] | None) -> tuple[tuple, int]:
    """The size tensor's dims, and its rows per sample on axis 0: as measured on one sample
    where given (a layer fed x.view(-1, C) has batch x sequence rows there), else as the
    graph declares them (axis 0 is the batch: one row)."""
    if measured is not None:
        return tuple(measured), int(measured[0]) if measured else 1
    return tuple(shape_of(handler.size_tensor(node)) or ()), 1


def _weight_size(node: gs.Node, handler: Handler) -> int:
    w = const_value(handler.weight_input(node))
    return 0 if w is None else int(w.size)


class Mixing(Handler):
    """A cut point: mixes channels through a constant weight at input 1 (Conv, ConvTranspose,
    Gemm)."""

    samplewise = True

    def weight_input(self, node):
        t = node.inputs[1] if len(node.inputs) > 1 else None
        return t if const_value(t) is not None else None


def _couple_conv_groups(ctx, ids: np.ndarray, groups: int) -> None:
    """Position j of every conv group is one unit: removal keeps the groups equal."""
    blocks = ids.reshape(groups, -1)
    for k in range(1, groups):
        ctx.union(blocks[0], blocks[k])


@register("Conv")
class Conv(Mixing):
    channel_blocked = True  # NCHWc when its output channels are a multiple of the block

    def size_tensor(self, node):
        return node.outputs[0]

    def macs(self, node, shape=None):
        dims, rows = _dims(self, node, shape)
        return rows * _static(dims[2:]) * _weight_size(node, self)

    def refit_layout(self, site, node, keep_in):
        return _conv_layout(site, node, keep_in)

    def analyze(self, node, ctx):
        x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
        weight, xmap = const_value(w), ctx.map(x)
        if weight is None:
            q = _dequantized(w)
            return _opaque(node, ctx, q.shape[0] if q is not None and q.ndim else None, 1,
                           QUANTIZED if q is not None else "Conv with a non-constant weight")
        if xmap is not None and xmap.axis != 1:
            return ctx.pin_inputs(node, "Conv reads channels on an axis other than 1")
        groups = int(node.attrs.get("group", 1))
        bias = _bias(node, 2)
        if (problem := _conv_problem(node, weight, groups, xmap, bias)) is not None:
            return _opaque(node, ctx, None, 1, problem)
        c_out, cin_g = weight.shape[0], weight.shape[1]
        if groups > 1 and cin_g == 1:
            return self._depthwise(node, ctx, xmap, groups, c_out, bias)
        if xmap is not None:
            if groups > 1:
                _couple_conv_groups(ctx, xmap.ids, groups)
            ctx.site(node, 0, xmap, rank=weight.ndim)
            ctx.member("consumer", node, w, 1, xmap.ids)
        out = ctx.new_source(node, y, c_out, 1)
        if groups > 1:
            _couple_conv_groups(ctx, out.ids, groups)
        ctx.member("producer", node, w, 0, out.ids)
        if bias is not None:
            ctx.member("param", node, bias, 0, out.ids)

    def _depthwise(self, node, ctx, xmap, groups, c_out, bias):
        """group == C_in: output channel o reads input channel o // multiplier only."""
        if xmap is None:
            return  # fed by something fixed (a graph input): nothing to prune here
        multiplier = c_out // groups
        out = ChannelMap(1, np.repeat(xmap.ids, multiplier))
        ctx.set_map(node.outputs[0], out)
        ctx.member("param", node, node.inputs[1], 0, out.ids)
        ctx.member("attr", node, node.inputs[1], 0, xmap.ids)  # the `group` attribute
        if bias is not None:
            ctx.member("param", node, bias, 0, out.ids)
        ctx.note(node, "depthwise")

    def compensation(self, node, mean):
        """[C_in, C_out]: what a constant input channel c (value mean[c]) adds to each output
        channel, once the kernel has been summed; block-diagonal over conv groups."""
        w = const_value(node.inputs[1])
        groups = int(node.attrs.get("group", 1))
        c_out, cin_g = w.shape[:2]
        ksum = w.reshape(c_out, cin_g, -1).sum(-1).astype(np.float64)
        cout_g = c_out // groups
        matrix = np.zeros((cin_g * groups, c_out))
        for k in range(groups):
            rows, cols = slice(k * cin_g, (k + 1) * cin_g), slice(k * cout_g, (k + 1) * cout_g)
            matrix[rows, cols] = mean[rows, None] * ksum[cols].T
        return matrix, 1

    def rewrite(self, node, rw):
        x, y = node.inputs[0], node.outputs[0]
        keep_in, keep_out = rw.keep(x), rw.keep(y)
        if keep_in is not None and rw.note(node) != "depthwise":
            rw.fold_compensation(node, self, keep_in, bias_index=2, out_axis=1)
        if rw.note(node) == "depthwise":
            if keep_out is not None:
                rw.slice_input(node, 1, 0, keep_out)
                if _bias(node, 2) is not None:
                    rw.slice_input(node, 2, 0, keep_out)
                node.attrs["group"] = int(rw.keep_ids(rw.analysis.maps[x.name].ids).sum())
            return
        groups = int(node.attrs.get("group", 1))
        if keep_out is not None:
            rw.slice_input(node, 1, 0, keep_out)
            if _bias(node, 2) is not None:
                rw.slice_input(node, 2, 0, keep_out)
        if keep_in is not None:
            per_group = keep_in.reshape(groups, -1)
            assert (per_group == per_group[0]).all(), "conv groups must lose the same positions"
            rw.slice_input(node, 1, 1, per_group[0])


@register("ConvTranspose")
class ConvTranspose(Mixing):
    """Weight is [C_in, C_out / group, k...]: input channels on axis 0, outputs on axis 1."""

    def size_tensor(self, node):
        return node.inputs[0]

    def macs(self, node, shape=None):
        dims, rows = _dims(self, node, shape)
        return rows * _static(dims[2:]) * _weight_size(node, self)

    def analyze(self, node, ctx):
        x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
        weight, xmap = const_value(w), ctx.map(x)
        if weight is None:
            q = _dequantized(w)
            return _opaque(node, ctx, None, 1, QUANTIZED if q is not None
                           else "ConvTranspose with a non-constant weight")
        if int(node.attrs.get("group", 1)) != 1:
            return _opaque(node, ctx, None, 1, "ConvTranspose with groups > 1")
        bias = _bias(node, 2)
        if weight.ndim < 3 or (xmap is not None and xmap.size != weight.shape[0]) or \
                (bias is not None and not _vector_of(bias, weight.shape[1])):
            return _opaque(node, ctx, None, 1, "ConvTranspose whose weight (or bias) does not "
                           "fit its input channels (a malformed model?)")
        if xmap is not None:
            if xmap.axis != 1:
                return ctx.pin_inputs(node, "ConvTranspose reads channels on an axis other than 1")
            ctx.site(node, 0, xmap, rank=weight.ndim)
            ctx.member("consumer", node, w, 0, xmap.ids)
        out = ctx.new_source(node, y, weight.shape[1], 1)
        ctx.member("producer", node, w, 1, out.ids)
        if (bias := _bias(node, 2)) is not None:
            ctx.member("param", node, bias, 0, out.ids)

    def compensation(self, node, mean):
        w = const_value(node.inputs[1])
        return mean[:, None] * w.reshape(w.shape[0], w.shape[1], -1).sum(-1), 1

    def rewrite(self, node, rw):
        if (keep_in := rw.keep(node.inputs[0])) is not None:
            rw.fold_compensation(node, self, keep_in, bias_index=2, out_axis=1)
            rw.slice_input(node, 1, 0, keep_in)
        if (keep_out := rw.keep(node.outputs[0])) is not None:
            rw.slice_input(node, 1, 1, keep_out)
            if _bias(node, 2) is not None:
                rw.slice_input(node, 2, 0, keep_out)


@register("Gemm")
class Gemm(Mixing):
    """Y = alpha * A' B' + beta * C with B constant; A's features are consumed, Y's produced."""

    def size_tensor(self, node):
        return node.outputs[0]

    def macs(self, node, shape=None):
        return _dims(self, node, shape)[1] * _weight_size(node, self)

    def refit_layout(self, site, node, keep_in):
        return _gemm_layout(site, node, keep_in)

    def mixes_batch(self, node, opset):
        return bool(node.attrs.get("transA", 0)) or const_value(node.inputs[1]) is None

    def analyze(self, node, ctx):
        a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
        weight, amap = const_value(b), ctx.map(a)
        trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
        if weight is None and _dequantized(b) is not None:
            return _opaque(node, ctx, None, 1, QUANTIZED)
        if weight is None or trans_a:
            return ctx.pin_inputs(node, "Gemm with a non-constant B or transA")
        if weight.ndim != 2 or rank_of(a) not in (None, 2) or (amap is not None and (
                amap.axis != 1 or amap.size != weight.shape[1 if trans_b else 0])):
            return _opaque(node, ctx, None, 1, "Gemm whose B does not fit its input (a "
                           "malformed model?)")
        if amap is not None:
            ctx.site(node, 0, amap, rank=2)
            ctx.member("consumer", node, b, 1 if trans_b else 0, amap.ids)
        n_out = weight.shape[0] if trans_b else weight.shape[1]
        out = ctx.new_source(node, y, n_out, 1)
        ctx.member("producer", node, b, 0 if trans_b else 1, out.ids)
        if (c := _bias(node, 2)) is not None:
            cval = const_value(c)
            if cval is None:
                ctx.pin(out.ids, "Gemm with a non-constant C")
            elif cval.ndim and cval.shape[-1] == n_out and n_out > 1:
                ctx.member("param", node, c, cval.ndim - 1, out.ids)

    def compensation(self, node, mean):
        b = const_value(node.inputs[1])
        b = b.T if int(node.attrs.get("transB", 0)) else b
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        # folded into C, which the op scales by beta
        return alpha / (beta or 1.0) * mean[:, None] * b, 1

    def rewrite(self, node, rw):
        trans_b = int(node.attrs.get("transB", 0))
        if (keep_in := rw.keep(node.inputs[0])) is not None:
            rw.fold_compensation(node, self, keep_in, bias_index=2, out_axis=1)
            rw.slice_input(node, 1, 1 if trans_b else 0, keep_in)
        if (keep_out := rw.keep(node.outputs[0])) is not None:
            rw.slice_input(node, 1, 0 if trans_b else 1, keep_out)
            c = _bias(node, 2)
            if c is not None and (cval := const_value(c)).ndim and cval.shape[-1] == len(keep_out):
                rw.slice_input(node, 2, cval.ndim - 1, keep_out)


@register("MatMul")
class MatMul(Handler):
    """X @ W (W constant, 2-D): X's last axis consumed, output's last axis produced.
    W @ X (W constant, 2-D): X's axis -2 consumed, output's axis -2 produced.
    A tracked axis that the product does not contract passes through unchanged."""

    def weight_input(self, node):
        """Whichever side is constant (B first)."""
        return next((t for t in node.inputs[1::-1] if const_value(t) is not None), None)

    def size_tensor(self, node):
        return node.outputs[0]

    def macs(self, node, shape=None):
        size = _weight_size(node, self)
        out, rows = _dims(self, node, shape)
        if const_value(node.inputs[1]) is not None:           # X [.., K] @ W [K, N]
            return rows * _static(out[1:-1]) * size
        rows = rows if len(out) >= 3 else 1                    # [M, N]: axis 0 is not rows
        return rows * _static(out[1:-2]) * size * _static(out[-1:])  # W [M, K] @ X [.., K, N]

    def refit_layout(self, site, node, keep_in):
        return _matmul_layout(site, node, keep_in)

    def mixes_batch(self, node, opset):
        """X @ W keeps rows apart when X has rank >= 2; W @ X contracts X's axis -2, which is
        the batch for a rank-2 X; two activations mix rows only through their batch dims."""
        a, b = node.inputs[:2]
        ra, rb = rank_of(a), rank_of(b)
        if ra is None or rb is None:
            return True
        if const_value(b) is not None:
            return ra < 2
        return rb < 3

    def analyze(self, node, ctx):
        a, b = node.inputs[0], node.inputs[1]
        wa, wb = const_value(a), const_value(b)
        if wa is None and wb is None and (_dequantized(a) is not None or _dequantized(b) is not None):
            return _opaque(node, ctx, None, -1 if _dequantized(b) is not None else -2, QUANTIZED)
        if wb is not None and wb.ndim == 2:
            return self._side(node, ctx, data=0, weight=1, w=wb)
        if wa is not None and wa.ndim == 2:
            return self._side(node, ctx, data=1, weight=0, w=wa)
        if ctx.tracked_inputs(node):
            self._batched(node, ctx)

    def _batched(self, node, ctx):
        """Two activations (attention scores q @ k^T, probs @ v): channels may only sit on a
        batch axis of the product (the heads axis), which passes through; head h of one
        operand meets head h of the other, so they are one unit."""
        out_rank = rank_of(node.outputs[0])
        axes, maps = set(), []
        for t in node.inputs[:2]:
            cmap, rank = ctx.map(t), rank_of(t)
            if rank is None or out_rank is None or rank < 3 or rank > out_rank:
                return ctx.pin_inputs(node, "MatMul of two activations with unknown or low rank")
            if cmap is None:
                continue
            if cmap.axis >= rank - 2:
                return ctx.pin_inputs(node, "MatMul of two activations contracts a channel axis")
            axes.add(out_rank - rank + cmap.axis)
            maps.append(cmap)
        if len(axes) != 1:
            return ctx.pin_inputs(node, "MatMul of activations with channels on different axes")
        axis = axes.pop()
        if len(maps) == 2:
            if maps[0].size != maps[1].size:
                return ctx.pin_inputs(node, "MatMul of activations with different head counts")
            ctx.union(maps[0].ids, maps[1].ids)
        for t in node.inputs[:2]:
            if ctx.map(t) is None:
                local = axis - (out_rank - rank_of(t))
                if local >= 0 and shape_of(t)[local] != 1:
                    return ctx.pin_inputs(node, f"MatMul with '{t.name}', which has channels "
                                          "the analysis does not track")
        b_map, b_rank = ctx.map(node.inputs[1]), rank_of(node.inputs[1])
        within = out_rank - 1 if b_map is not None and b_map.within == b_rank - 1 else None
        ctx.set_map(node.outputs[0], ChannelMap(axis, maps[0].ids, within))

    def _side(self, node, ctx, data, weight, w):
        x, y = node.inputs[data], node.outputs[0]
        xmap, rank = ctx.map(x), rank_of(x)
        out_rank = rank_of(y)
        if rank is None or out_rank is None or rank < 2 or out_rank != rank:
            return ctx.pin_inputs(node, "MatMul with unknown or broadcasting ranks")
        if data == 1 and rank < 3:
            return ctx.pin_inputs(node, "MatMul W @ X with a rank-2 X contracts the batch axis")
        contracted = rank - 1 if data == 0 else rank - 2   # axis of x that meets the weight
        produced = rank - 1 if data == 0 else rank - 2     # axis of y that the weight makes
        if xmap is not None and xmap.axis != contracted:
            ctx.set_map(y, xmap)  # rows (or columns) pass through untouched
            return ctx.note(node, ("passthrough", data, weight))
        if xmap is not None and xmap.size != w.shape[0 if data == 0 else 1]:
            return _opaque(node, ctx, None, produced, f"MatMul contracts {xmap.size} channels with "
                           f"a weight of shape {list(w.shape)} (a malformed model?)")
        if xmap is not None:
            ctx.site(node, data, xmap)
            ctx.member("consumer", node, node.inputs[weight], 0 if data == 0 else 1, xmap.ids)
        n_out = w.shape[1] if data == 0 else w.shape[0]
        out = ctx.new_source(node, y, n_out, produced)
        ctx.member("producer", node, node.inputs[weight], 1 if data == 0 else 0, out.ids)
        ctx.note(node, ("cut", data, weight))

    def compensation(self, node, mean):
        """X @ W: a constant column c of X adds mean[c] * W[c, :] to every row.
        W @ X: a constant row c of X adds mean[c] * W[:, c] to every column."""
        wb = const_value(node.inputs[1])
        data, weight = (0, 1) if wb is not None and wb.ndim == 2 else (1, 0)
        w = const_value(node.inputs[weight])
        rank = rank_of(node.outputs[0])  # == the data input's rank (checked in analyze)
        if data == 0:
            return mean[:, None] * w, rank - 1
        return mean[:, None] * w.T, rank - 2

    def rewrite(self, node, rw):
        note = rw.note(node)
        if note is None or note[0] != "cut":
            return
        _, data, weight = note
        keep_out = rw.keep(node.outputs[0])  # before the fold moves the output behind an Add
        if (keep_in := rw.keep(node.inputs[data])) is not None:
            rw.fold_compensation(node, self, keep_in, bias_index=None,
                                 out_axis=rank_of(node.inputs[data]) - 1 - data)
            rw.slice_input(node, weight, 0 if data == 0 else 1, keep_in)
        if keep_out is not None:
            rw.slice_input(node, weight, 1 if data == 0 else 0, keep_out)


# ---------------------------------------------------------------------------- refit layouts
# (refit.py: rows P of the consumer's input, in the order of its weight's columns, and the
# weight as a [d, C_out] matrix; `pack` puts a solution back into the weight's own layout)


def _conv_layout(site, node, keep_in) -> RefitLayout | None:
    w = const_value(node.inputs[1])
    if (w is None or w.ndim != 4 or int(node.attrs.get("group", 1)) != 1
            or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
        return None
    c_out, c_in, kh, kw = w.shape
    pads = list(node.attrs.get("pads", [0, 0, 0, 0]))
    strides = list(node.attrs.get("strides", [1, 1]))
    dil = list(node.attrs.get("dilations", [1, 1]))

    def rows(x: np.ndarray, positions: Positions) -> np.ndarray:
        xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        span = ((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1)
        win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=(2, 3))
        win = win[:, :, ::strides[0], ::strides[1], ::dil[0], ::dil[1]]  # [n, C, Ho, Wo, kh, kw]
        ho, wo = win.shape[2:4]
        pick = positions(ho * wo)
        patches = win[:, :, pick // wo, pick % wo]                       # [n, C, P, kh, kw]
        return patches.transpose(0, 2, 1, 3, 4).reshape(-1, c_in * kh * kw)

    def pack(d: np.ndarray, b: np.ndarray):
        flat = w.reshape(c_out, -1).astype(np.float64).copy()
        flat[:, keep_cols] += d.T
        return flat.reshape(w.shape).astype(w.dtype), b

    keep_cols = np.repeat(keep_in, kh * kw)
    return RefitLayout(site, node, rows, w.reshape(c_out, -1).T.astype(np.float64), keep_cols, pack)


def _gemm_layout(site, node, keep_in) -> RefitLayout | None:
    b = const_value(node.inputs[1])
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    if b is None or b.ndim != 2 or int(node.attrs.get("transA", 0)) or beta == 0:
        return None
    trans_b = int(node.attrs.get("transB", 0))
    w_eff = alpha * (b.T if trans_b else b).astype(np.float64)  # [K, N]

    def pack(d: np.ndarray, bias: np.ndarray):
        new = w_eff.copy()
        new[keep_in] += d
        new /= alpha
        return (new.T if trans_b else new).astype(b.dtype), bias / beta  # C is scaled by beta

    return RefitLayout(site, node, lambda x, positions: x.reshape(len(x), -1), w_eff, keep_in, pack)


def _matmul_layout(site, node, keep_in) -> RefitLayout | None:
    w = const_value(node.inputs[1])
    if w is None or w.ndim != 2 or site.axis != site.rank - 1:
        return None  # only X @ W with X's channels last

    def pack(d: np.ndarray, bias: np.ndarray):
        new = w.astype(np.float64).copy()
        new[keep_in] += d
        return new.astype(w.dtype), bias

    def rows(x: np.ndarray, positions: Positions) -> np.ndarray:
        seq = x.reshape(len(x), -1, x.shape[-1])
        return seq[:, positions(seq.shape[1])].reshape(-1, x.shape[-1])

    return RefitLayout(site, node, rows, w.astype(np.float64), keep_in, pack)


# ---------------------------------------------------------------------------- Einsum (tf2onnx, jax2tf)


def einsum_as_matmul(node: gs.Node) -> tuple[int, int] | None:
    """(data index, weight index) when the Einsum is X @ W: two operands, one a constant 2-D
    weight, the equation contracting the activation's last letter with the weight's first
    and keeping every other letter in order ('bld,df->blf'); else None."""
    eq = str(node.attrs.get("equation", "")).replace(" ", "")
    if len(node.inputs) != 2 or "->" not in eq or "." in eq:
        return None
    terms, out = eq.split("->")
    terms = terms.split(",")
    for data, weight in ((0, 1), (1, 0)):
        w = const_value(node.inputs[weight])
        if w is None or w.ndim != 2 or const_value(node.inputs[data]) is not None:
            continue
        x, k = terms[data], terms[weight]
        if len(k) != 2 or len(set(x)) != len(x) or not x or k[0] != x[-1] or k[1] in x:
            continue
        if out == x[:-1] + k[1] and rank_of(node.inputs[data]) in (None, len(x)) and len(x) >= 2:
            return data, weight
    return None


@register("Einsum")
class Einsum(Handler):
    """An Einsum that is X @ W (einsum_as_matmul) is a MatMul cut point: the activation's last
    axis is consumed, the output's last axis produced. Any other equation is a barrier."""

    samplewise = True

    def weight_input(self, node):
        pattern = einsum_as_matmul(node)
        return None if pattern is None else node.inputs[pattern[1]]

    def size_tensor(self, node):
        return node.outputs[0]

    def macs(self, node, shape=None):
        w = const_value(self.weight_input(node))
        out, rows = _dims(self, node, shape)
        return 0 if w is None else rows * _static(out[1:-1]) * int(w.size)

    def mixes_batch(self, node, opset):
        return einsum_as_matmul(node) is None

    def analyze(self, node, ctx):
        pattern = einsum_as_matmul(node)
        if pattern is None:
            eq = node.attrs.get("equation", "")
            return ctx.pin_inputs(node, f"Einsum '{eq}' is not a MatMul pattern")
        data, weight = pattern
        x, y, w = node.inputs[data], node.outputs[0], const_value(node.inputs[weight])
        xmap, rank = ctx.map(x), rank_of(x)
        if rank is None:
            return ctx.pin_inputs(node, "Einsum with an input of unknown rank")
        if xmap is not None and xmap.axis != rank - 1:
            ctx.set_map(y, xmap)  # a kept letter: passes through
            return ctx.note(node, ("passthrough", data, weight))
        if xmap is not None and xmap.size != w.shape[0]:
            return _opaque(node, ctx, None, -1, f"Einsum contracts {xmap.size} channels with a "
                           f"weight of shape {list(w.shape)} (a malformed model?)")
        if xmap is not None:
            ctx.site(node, data, xmap)
            ctx.member("consumer", node, node.inputs[weight], 0, xmap.ids)
        out = ctx.new_source(node, y, w.shape[1], rank - 1)
        ctx.member("producer", node, node.inputs[weight], 1, out.ids)
        ctx.note(node, ("cut", data, weight))

    def compensation(self, node, mean):
        _, weight = einsum_as_matmul(node)
        return mean[:, None] * const_value(node.inputs[weight]), rank_of(node.outputs[0]) - 1

    def refit_layout(self, site, node, keep_in):
        _, weight = einsum_as_matmul(node)
        # RewriteContext.apply_refit swaps in the weight at input 1
        return _matmul_layout(site, node, keep_in) if weight == 1 else None

    def rewrite(self, node, rw):
        note = rw.note(node)
        if note is None or note[0] != "cut":
            return
        _, data, weight = note
        if (keep_in := rw.keep(node.inputs[data])) is not None:
            rw.fold_compensation(node, self, keep_in, bias_index=None,
                                 out_axis=rank_of(node.inputs[data]) - 1)
            rw.slice_input(node, weight, 0, keep_in)
        if (keep_out := rw.keep(node.outputs[0])) is not None:
            rw.slice_input(node, weight, 1, keep_out)
