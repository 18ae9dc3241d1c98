"""One tiny graph (at least) per op handler in `onnxprune.compiler.ops.analysis_ops()`.

Each case puts the op between a producer (conv/gemm/matmul) and a consumer and states
  * the prunable groups it expects, as (units, unit_size) pairs;
  * for barriers, the source tensor whose group must be blocked and a word its reason
    contains;
and, when something is prunable, checks the masked-equals-pruned invariant through ONNX
Runtime (docs/design.md). `test_every_handler_has_a_test` fails when a handler is registered
without a case here.

A case that shows a handler bug is kept with `xfail=` (strict): the reason says why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from exactness import check_masked_equals_pruned, random_feeds, session
from graphs import INT64_MAX, G
from onnxprune.compiler.analysis import Analysis
from onnxprune.compiler.analyze import analyze
from onnxprune.compiler.graph import ModelIdentity, to_proto
from onnxprune.compiler.instrument import instrument, mask_name
from onnxprune.compiler.normalize import normalize
from onnxprune.compiler.ops import analysis_ops


@dataclass
class Spec:
    model: onnx.ModelProto
    prunable: list[tuple[int, int]]                       # (units, unit_size) per prunable group
    blocked: dict[str, str] = field(default_factory=dict)  # source -> "word|other" in its reason
    exact: bool = True                                     # run the ORT invariant check
    mixing: str | None = None  # an op that combines samples after a mask: must be reported


@dataclass
class Case:
    id: str
    ops: tuple[str, ...]
    build: Callable[[], Spec]
    xfail: str | None = None


CASES: list[Case] = []


def add(id: str, ops, build, xfail: str | None = None) -> None:
    assert all(c.id != id for c in CASES), id
    CASES.append(Case(id, tuple([ops] if isinstance(ops, str) else ops), build, xfail))


def case(*ops: str, xfail: str | None = None):
    def deco(fn):
        add(fn.__name__.removeprefix("c_"), ops, fn, xfail)
        return fn
    return deco


def sandwich(opset: int, middle, *, c: int = 8, shape=(4, 6, 6), batch="N", k_out: int = 1,
             **kw) -> tuple[G, str, str]:
    """x -> conv(c) -> middle(g, h) -> conv(3): returns (g, producer output, consumer output)."""
    g = G(opset, shape, batch=batch, **kw)
    a = g.conv(g.x, c)
    h = middle(g, a)
    return g, a, g.conv(h, 3, k=k_out)


def simple(opset: int, middle, prunable=((8, 1),), **kw) -> Spec:
    g, _, y = sandwich(opset, middle, **kw)
    return Spec(g.model(y), list(prunable))


def barrier(opset: int, middle, word: str, prunable=(), exact: bool = True, **kw) -> Spec:
    g, a, y = sandwich(opset, middle, **kw)
    return Spec(g.model(y), list(prunable), {a: word}, exact)


# ============================================================================ element-wise unary

def _sig(g, h):
    return g.op("Sigmoid", h)


# op -> (opset, attributes[, an op applied first to keep the input in its domain])
UNARY_CASES = {
    "Relu": (13, {}), "LeakyRelu": (13, {"alpha": 0.1}), "Elu": (13, {}), "Selu": (13, {}),
    "Celu": (12, {}), "Sigmoid": (13, {}), "HardSigmoid": (13, {}), "HardSwish": (14, {}),
    "Tanh": (13, {}), "Softplus": (13, {}), "Softsign": (13, {}), "Gelu": (20, {}),
    "Erf": (13, {}), "Exp": (13, {}), "Log": (13, {}, _sig), "Sqrt": (13, {}, _sig),
    "Abs": (13, {}), "Neg": (13, {}), "Reciprocal": (13, {}, _sig), "Floor": (13, {}),
    "Ceil": (13, {}), "Round": (13, {}), "Sign": (13, {}), "Sin": (13, {}), "Cos": (13, {}),
    "Identity": (13, {}), "Mish": (18, {}), "ThresholdedRelu": (13, {"alpha": 0.3}),
    "Shrink": (13, {"lambd": 0.3, "bias": 0.1}), "Swish": (24, {}),
}


def _unary(op, opset, attrs, pre=None):
    def build():
        return simple(opset, lambda g, h: g.op(op, pre(g, h) if pre else h, **attrs))
    return build


for _op, (_opset, _attrs, *_pre) in UNARY_CASES.items():
    add(f"unary_{_op}", _op, _unary(_op, _opset, _attrs, *_pre))


@case("Cast")
def c_cast_roundtrip():
    """float -> float16 -> float: both Casts pass channels through."""
    return simple(13, lambda g, h: g.op("Cast", g.op("Cast", h, to=TensorProto.FLOAT16),
                                        to=TensorProto.FLOAT))


@case("CastLike")
def c_castlike():
    def mid(g, h):
        half = g.array(np.zeros([1], np.float16))
        return g.op("Cast", g.op("CastLike", h, half), to=TensorProto.FLOAT)
    return simple(15, mid)


@case("Not", "Cast")
def c_not():
    return simple(13, lambda g, h: g.op("Cast", g.op("Not", g.op("Cast", h, to=TensorProto.BOOL)),
                                        to=TensorProto.FLOAT))


@case("IsNaN", "IsInf")
def c_isnan_isinf():
    def mid(g, h):
        a = g.op("Cast", g.op("IsNaN", h), to=TensorProto.FLOAT)
        b = g.op("Cast", g.op("IsInf", h), to=TensorProto.FLOAT)
        return g.op("Add", g.op("Add", a, b), h)
    return simple(13, mid)


@case("Dropout")
def c_dropout_opset13():
    return simple(13, lambda g, h: g.op("Dropout", h))


@case("Dropout")
def c_dropout_opset11_ratio_attr():
    return simple(11, lambda g, h: g.op("Dropout", h, ratio=0.3))


@case("Dropout")
def c_dropout_mask_used_is_barrier():
    g = G(13)
    a = g.conv(g.x, 8)
    out, mask = g.op("Dropout", a, outputs=2)
    m = g.op("Cast", mask, to=TensorProto.FLOAT)
    y = g.conv(g.op("Add", out, m), 3)
    return Spec(g.model(y), [], {a: "mask"}, exact=False)


@case("Clip")
def c_clip_opset9_attrs():
    return simple(9, lambda g, h: g.op("Clip", h, min=0.0, max=6.0))


@case("Clip")
def c_clip_opset11_inputs():
    return simple(11, lambda g, h: g.op("Clip", h, g.floats(0.0), g.floats(6.0)))


@case("Clip")
def c_clip_opset13_min_only():
    return simple(13, lambda g, h: g.op("Clip", h, g.floats(-0.5)))


@case("Clip")
def c_clip_opset13_max_only():
    return simple(13, lambda g, h: g.op("Clip", h, None, g.floats(0.5)))


# ============================================================================ element-wise binary

@case("Add")
def c_add_residual_two_convs():
    """Two convs added: their channels are one group."""
    g = G(13)
    a, b = g.conv(g.x, 8), g.conv(g.x, 8)
    y = g.conv(g.op("Add", a, b), 3)
    return Spec(g.model(y), [(8, 1)])


@case("Add", "Relu")
def c_add_residual_stage():
    """conv a -> relu -> conv b; a + b -> conv: a ResNet stage, one group of 8."""
    g = G(13)
    a = g.op("Relu", g.conv(g.x, 8))
    b = g.conv(g.op("Relu", g.conv(a, 5)), 8)
    y = g.conv(g.op("Add", a, b), 3)
    return Spec(g.model(y), [(8, 1), (5, 1)])


@case("Add")
def c_add_per_channel_const():
    return simple(13, lambda g, h: g.op("Add", h, g.const([8, 1, 1])))


@case("Add")
def c_add_const_first_4d():
    return simple(13, lambda g, h: g.op("Add", g.const([1, 8, 1, 1]), h))


@case("Add")
def c_add_scalar():
    return simple(13, lambda g, h: g.op("Add", h, g.floats(0.7)))


@case("Mul")
def c_mul_spatial_const():
    """A constant that broadcasts along channels ([1, 6, 6]) is no member and no barrier."""
    return simple(13, lambda g, h: g.op("Mul", h, g.const([1, 6, 6])))


@case("Add", "ReduceMean")
def c_add_untracked_broadcast_along_channels():
    """An untracked activation with a channel dim of 1 broadcasts: fine."""
    def mid(g, h):
        return g.op("Add", h, g.op("ReduceMean", g.x, axes=[1], keepdims=1))
    return simple(13, mid)


@case("Add")
def c_add_untracked_channels_is_barrier():
    """Add of a conv output and the graph input itself (4 channels the analysis does not own)."""
    return barrier(13, lambda g, h: g.op("Add", h, g.x), "track|graph input", c=4)


@case("Add", "Transpose")
def c_add_channels_on_different_axes_is_barrier():
    g = G(13, (4, 6, 6))
    a = g.conv(g.x, 6)
    b0 = g.conv(g.x, 6)
    b = g.op("Transpose", b0, perm=[0, 2, 3, 1])
    y = g.conv(g.op("Add", a, b), 3)
    return Spec(g.model(y), [], {a: "axes", b0: "axes"}, exact=False)


@case("Sub")
def c_sub_per_channel():
    return simple(13, lambda g, h: g.op("Sub", g.const([8, 1, 1]), h))


@case("Div")
def c_div_per_channel():
    return simple(13, lambda g, h: g.op("Div", h, g.const([8, 1, 1], positive=True)))


@case("Pow")
def c_pow_per_channel_exponent():
    return simple(13, lambda g, h: g.op("Pow", g.op("Sigmoid", h),
                                        g.const([8, 1, 1], positive=True)))


@case("Pow")
def c_pow_const_base():
    return simple(13, lambda g, h: g.op("Pow", g.const([8, 1, 1], positive=True), h))


@case("Mul", "Sigmoid", "GlobalAveragePool")
def c_mul_squeeze_excitation_gate():
    """SE block: a * sigmoid(conv(relu(conv(gap(a))))) -> the gate's channels join a's group."""
    g = G(13)
    a = g.conv(g.x, 8)
    s = g.conv(g.op("Relu", g.conv(g.op("GlobalAveragePool", a), 2, k=1)), 8, k=1)
    y = g.conv(g.op("Mul", a, g.op("Sigmoid", s)), 3)
    return Spec(g.model(y), [(8, 1), (2, 1)])


@case("Max", "Min")
def c_max_min_of_convs():
    g = G(13)
    a, b, c = g.conv(g.x, 8), g.conv(g.x, 8), g.conv(g.x, 8)
    y = g.conv(g.op("Min", g.op("Max", a, b), c), 3)
    return Spec(g.model(y), [(8, 1)])


@case("Sum", "Mean")
def c_sum_mean_variadic():
    g = G(13)
    a, b, c = g.conv(g.x, 8), g.conv(g.x, 8), g.conv(g.x, 8)
    s = g.op("Sum", a, b, c)
    y = g.conv(g.op("Mean", s, g.const([8, 1, 1]), a), 3)
    return Spec(g.model(y), [(8, 1)])


@case("PRelu")
def c_prelu_per_channel_slope():
    return simple(13, lambda g, h: g.op("PRelu", h, g.const([8, 1, 1], 0.2)))


@case("PRelu")
def c_prelu_shared_slope():
    return simple(13, lambda g, h: g.op("PRelu", h, g.floats([0.2])))


# ============================================================================ cut points

@case("Conv")
def c_conv_plain():
    return simple(13, lambda g, h: g.op("Relu", h))


@case("Conv")
def c_conv_no_bias_strided():
    g = G(13)
    a = g.conv(g.x, 8, bias=False, strides=[2, 2])
    y = g.conv(a, 3, k=3, bias=False)
    return Spec(g.model(y), [(8, 1)])


@case("Conv")
def c_conv_1d():
    g = G(13, (4, 10))
    y = g.conv(g.op("Relu", g.conv(g.x, 8)), 3)
    return Spec(g.model(y), [(8, 1)])


@case("Conv")
def c_conv_grouped_consumer_and_producer():
    """group 2 couples position j of both conv groups: units = C/2 of size 2, on both sides."""
    g = G(13)
    a = g.conv(g.x, 8)
    b = g.conv(a, 8, group=2)
    y = g.conv(b, 3)
    return Spec(g.model(y), [(4, 2), (4, 2)])


@case("Conv")
def c_conv_grouped_4():
    g = G(13)
    a = g.conv(g.x, 8)
    y = g.conv(g.op("Relu", a), 4, group=4, k=1)
    return Spec(g.model(y), [(2, 4)])


@case("Conv")
def c_conv_grouped_producer_on_input():
    g = G(13)
    a = g.conv(g.x, 8, group=2)
    y = g.conv(g.op("Relu", a), 3)
    return Spec(g.model(y), [(4, 2)])


@case("Conv")
def c_conv_depthwise():
    g = G(13)
    a = g.conv(g.x, 6)
    d = g.conv(a, 6, group=6)
    y = g.conv(g.op("Relu", d), 3)
    return Spec(g.model(y), [(6, 1)])


@case("Conv")
def c_conv_depthwise_multiplier_2():
    """group = C_in = 4, C_out = 8: output channel o reads input o // 2; 4 units."""
    g = G(13)
    a = g.conv(g.x, 4)
    d = g.conv(a, 8, group=4)
    y = g.conv(g.op("Relu", d), 3)
    return Spec(g.model(y), [(4, 1)])


@case("Conv")
def c_conv_depthwise_on_graph_input():
    g = G(13)
    d = g.conv(g.x, 8, group=4)
    b = g.conv(d, 6)
    y = g.conv(g.op("Relu", b), 3)
    return Spec(g.model(y), [(6, 1)])


@case("Conv")
def c_conv_runtime_weight_is_barrier():
    g = G(13)
    a = g.conv(g.x, 8)
    w = g.input("w", [3, 8, 1, 1])
    y = g.op("Conv", a, w, kernel_shape=[1, 1])
    return Spec(g.model(y), [], {a: "non-constant"}, exact=False)


@case("ConvTranspose")
def c_conv_transpose_producer_and_consumer():
    g = G(13)
    a = g.op("Relu", g.conv(g.x, 8))
    t = g.op("Relu", g.conv_t(a, 5))
    y = g.conv(t, 3)
    return Spec(g.model(y), [(8, 1), (5, 1)])


@case("ConvTranspose")
def c_conv_transpose_consumer_no_bias():
    g = G(13)
    a = g.conv(g.x, 6)
    y = g.conv_t(g.op("Relu", a), 3, bias=False, k=3, stride=1)
    return Spec(g.model(y), [(6, 1)])


@case("ConvTranspose")
def c_conv_transpose_grouped_is_barrier():
    g = G(13)
    a = g.conv(g.x, 8)
    y = g.conv_t(a, 4, group=2)
    return Spec(g.model(y), [], {a: "ConvTranspose"}, exact=False)


@case("Gemm", "Flatten")
def c_gemm_chain():
    """Flatten of [N, 4, 3, 3] into a Gemm: the conv group has 4 units; the hidden Gemm 6."""
    g = G(13, (4, 3, 3))
    a = g.conv(g.x, 4)
    h = g.op("Relu", g.gemm(g.op("Flatten", a), 6))
    y = g.gemm(h, 3)
    return Spec(g.model(y), [(4, 1), (6, 1)])


@case("Gemm")
def c_gemm_trans_b_and_row_bias():
    g = G(13, (5,))
    h = g.op("Relu", g.gemm(g.x, 6, trans_b=True, bias=[1, 6], alpha=0.5, beta=2.0))
    y = g.gemm(h, 3, trans_b=True)
    return Spec(g.model(y), [(6, 1)])


@case("Gemm")
def c_gemm_scalar_bias_and_no_bias():
    g = G(13, (5,))
    h = g.op("Tanh", g.gemm(g.x, 6, bias=[1]))
    y = g.gemm(h, 3, bias=False)
    return Spec(g.model(y), [(6, 1)])


@case("Gemm")
def c_gemm_trans_a_is_barrier():
    g = G(13, (5,), batch=2)
    a = g.gemm(g.x, 6)
    w = g.const([2, 4])
    y = g.op("Gemm", a, w, transA=1)
    return Spec(g.model(y), [], {a: "transA"}, exact=False)


@case("Gemm")
def c_gemm_runtime_b_is_barrier():
    g = G(13, (5,), batch=2)
    a = g.gemm(g.x, 6)
    b = g.input("b", [6, 3])
    y = g.op("Gemm", a, b)
    return Spec(g.model(y), [], {a: "non-constant"}, exact=False)


@case("MatMul")
def c_matmul_x_at_w():
    """X @ W, bias Add, X @ W again: both cut points."""
    g = G(13)
    a = g.gap_flatten(g.conv(g.x, 8))
    h = g.op("Relu", g.op("Add", g.matmul(a, 6), g.const([6])))
    y = g.matmul(h, 3)
    return Spec(g.model(y), [(8, 1), (6, 1)])


@case("MatMul")
def c_matmul_w_at_x():
    """W @ X on [N, 5, 8]: produces and consumes axis -2."""
    g = G(13, (5, 8))
    h = g.op("Relu", g.matmul(g.x, 6, left=True))
    y = g.matmul(h, 3, left=True)
    return Spec(g.model(y), [(6, 1)])


@case("MatMul")
def c_matmul_passthrough_non_contracted_axis():
    """X @ W tracks axis 2; W2 @ (.) contracts axis 1, so the channels pass through."""
    g = G(13, (5, 8))
    h = g.op("Relu", g.matmul(g.x, 6))
    p = g.matmul(h, 4, left=True)
    y = g.matmul(p, 3)
    return Spec(g.model(y), [(6, 1)])


@case("MatMul")
def c_matmul_on_conv_width_passthrough():
    """conv output [N, 8, 6, 6] @ W [6, 5]: channels on axis 1 pass through to the next conv."""
    g = G(13)
    a = g.conv(g.x, 8)
    y = g.conv(g.matmul(a, 5), 3)
    return Spec(g.model(y), [(8, 1)])


@case("MatMul", "Transpose")
def c_matmul_two_activations_is_barrier():
    g = G(13, (5, 8))
    q, k = g.matmul(g.x, 6), g.matmul(g.x, 6)
    s = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 2, 1]))
    y = g.matmul(s, 3)
    return Spec(g.model(y), [], {q: "MatMul", k: "MatMul"}, exact=False)


@case("Einsum")
def c_einsum_as_matmul():
    """tf2onnx/jax2tf dense layers: 'bld,df->blf' then 'blf,fd->bld' are X @ W cut points."""
    g = G(13, (5, 8))
    h = g.op("Relu", g.op("Einsum", g.x, g.const([8, 6]), equation="bld,df->blf"))
    y = g.op("Einsum", h, g.const([6, 3]), equation="blf,fd->bld")
    return Spec(g.model(y), [(6, 1)])


@case("Einsum")
def c_einsum_weight_first_rank2():
    """The weight as first operand ('fk,bf->bk') and a rank-2 activation ('bd,dk->bk')."""
    g = G(13, (8,))
    h = g.op("Relu", g.op("Einsum", g.x, g.const([8, 6]), equation="bd,dk->bk"))
    y = g.op("Einsum", g.const([6, 3]), h, equation="fk,bf->bk")
    return Spec(g.model(y), [(6, 1)])


@case("Einsum")
def c_einsum_not_a_matmul_is_barrier():
    """Attention scores as an Einsum of two activations: an exact reason, nothing prunable."""
    g = G(13, (5, 8))
    q, k = g.matmul(g.x, 6), g.matmul(g.x, 6)
    s = g.op("Einsum", q, k, equation="bld,bmd->blm")
    y = g.matmul(s, 3)
    return Spec(g.model(y), [], {q: "'bld,bmd->blm' is not a MatMul pattern"}, exact=False)


# ============================================================================ normalizations

@case("BatchNormalization")
def c_batchnorm():
    return simple(13, lambda g, h: g.op("Relu", g.bn(h)))


@case("BatchNormalization")
def c_batchnorm_opset9_no_conv_bias():
    g = G(9)
    a = g.conv(g.x, 8, bias=False)
    y = g.conv(g.bn(a), 3)
    return Spec(g.model(y), [(8, 1)])


@case("BatchNormalization")
def c_batchnorm_training_mode_is_barrier():
    return barrier(14, lambda g, h: g.bn(h, training_mode=1, outputs=3)[0],
                   "training", exact=False)


@case("InstanceNormalization")
def c_instance_norm():
    return simple(13, lambda g, h: g.op("InstanceNormalization", h, g.const([8], positive=True),
                                        g.const([8])))


@case("LayerNormalization")
def c_layernorm_over_width_passes():
    """axis=-1 on NCHW normalizes W only; channels are untouched by the statistics."""
    return simple(17, lambda g, h: g.op("LayerNormalization", h, g.const([6], positive=True),
                                        g.const([6]), axis=-1))


@case("LayerNormalization")
def c_layernorm_over_channels_is_barrier():
    return barrier(17, lambda g, h: g.op("LayerNormalization", h, g.const([8, 6, 6]), axis=1),
                   "LayerNormalization")


@case("LayerNormalization", "MatMul")
def c_layernorm_hidden_width_is_barrier():
    """Transformer-style: X @ W -> LayerNorm(-1) -> @ W2: the hidden group is blocked."""
    g = G(17, (5, 8))
    h = g.matmul(g.x, 6)
    n = g.op("LayerNormalization", h, g.const([6], positive=True), g.const([6]), axis=-1)
    y = g.matmul(n, 3)
    return Spec(g.model(y), [], {h: "LayerNormalization"}, exact=False)


def _decomposed_layernorm(g: G, h: str, jax: bool) -> str:
    """LayerNorm over the last axis written out: ReduceMean/Sub/Pow/.../Div (torch legacy,
    paddle) or ReduceSum * 1/C, Mul(d, d), Reciprocal (jax2tf); gamma broadcast by
    Expand(gamma, Shape(normed)) (jax2tf's broadcast_in_dim)."""
    width = g.shape(h)[-1]
    if jax:
        axes = g.ints([-1])
        inv = g.floats(1.0 / width)
        mean = g.op("Mul", g.op("ReduceSum", h, axes, keepdims=1), inv)
        d = g.op("Sub", h, mean)
        var = g.op("Mul", g.op("ReduceSum", g.op("Mul", d, d), axes, keepdims=1), inv)
        normed = g.op("Mul", d, g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, g.floats(1e-5)))))
    else:
        d = g.op("Sub", h, g.op("ReduceMean", h, axes=[-1], keepdims=1))
        var = g.op("ReduceMean", g.op("Pow", d, g.floats(2.0)), axes=[-1], keepdims=1)
        normed = g.op("Div", d, g.op("Sqrt", g.op("Add", var, g.floats(1e-5))))
    gamma = g.op("Expand", g.const([width], positive=True), g.op("Shape", normed))
    return g.op("Add", g.op("Mul", normed, gamma), g.const([width]))


def _decomposed_ln_case(jax: bool) -> Spec:
    """X @ W -> LayerNorm (decomposed) -> FFN: the hidden width is blocked as a LayerNorm
    (and only as one), the FFN width stays prunable."""
    g = G(13, (5, 8))
    h = g.matmul(g.x, 6)
    n = _decomposed_layernorm(g, h, jax)
    y = g.matmul(g.op("Relu", g.matmul(n, 10)), 3)
    return Spec(g.model(y), [(10, 1)], {h: "LayerNorm (decomposed) over the channel axis"})


@case("ReduceMean", "Sub", "Pow", "Div")
def c_decomposed_layernorm_reducemean():
    return _decomposed_ln_case(jax=False)


@case("ReduceSum", "Sub", "Mul", "Reciprocal")
def c_decomposed_layernorm_reducesum_jax():
    return _decomposed_ln_case(jax=True)


@case("LRN")
def c_lrn_is_barrier():
    return barrier(13, lambda g, h: g.op("LRN", h, size=3), "LRN", exact=False)


@case("GroupNormalization")
def c_groupnorm_opset21_is_barrier():
    return barrier(21, lambda g, h: g.declare(g.op("GroupNormalization", h, g.const([8]),
                                                   g.const([8]), num_groups=2), ["N", 8, 6, 6]),
                   "GroupNormalization", exact=False)


@case("LpNormalization")
def c_lpnorm_over_channels_is_barrier():
    return barrier(13, lambda g, h: g.op("LpNormalization", h, axis=1), "LpNormalization",
                   exact=False)


@case("LpNormalization")
def c_lpnorm_over_width_passes():
    return simple(13, lambda g, h: g.op("LpNormalization", h, axis=-1))


@case("MeanVarianceNormalization")
def c_mvn_over_channels_is_barrier():
    return barrier(13, lambda g, h: g.declare(g.op("MeanVarianceNormalization", h, axes=[1, 2, 3]),
                                              ["N", 8, 6, 6]),
                   "MeanVarianceNormalization", exact=False)


@case("MeanVarianceNormalization")
def c_mvn_default_axes_mix_batch_is_barrier():
    """Default axes [0, 2, 3]: per channel, but across the batch (per-sample masks)."""
    return barrier(13, lambda g, h: g.op("MeanVarianceNormalization", h, axes=[0, 2, 3]),
                   "MeanVarianceNormalization", exact=False)


@case("MeanVarianceNormalization")
def c_mvn_spatial_axes_per_channel():
    return simple(13, lambda g, h: g.op("MeanVarianceNormalization", h, axes=[2, 3]))


# ============================================================================ pooling

@case("MaxPool", "AveragePool")
def c_max_average_pool():
    def mid(g, h):
        p = g.op("MaxPool", h, kernel_shape=[2, 2], strides=[2, 2])
        return g.op("AveragePool", p, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return simple(13, mid)


@case("LpPool")
def c_lp_pool():
    return simple(13, lambda g, h: g.op("LpPool", h, kernel_shape=[2, 2], p=2))


@case("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def c_global_pools():
    def mid(g, h):
        return g.op("Add", g.op("Add", g.op("GlobalAveragePool", h), g.op("GlobalMaxPool", h)),
                    g.op("GlobalLpPool", h))
    return simple(13, mid)


@case("MaxPool")
def c_maxpool_indices_used_is_barrier():
    g = G(13)
    a = g.conv(g.x, 8)
    p, idx = g.op("MaxPool", a, kernel_shape=[2, 2], strides=[2, 2], outputs=2)
    y = g.conv(g.op("Add", p, g.op("Cast", idx, to=TensorProto.FLOAT)), 3)
    return Spec(g.model(y), [], {a: "indices"}, exact=False)


@case("MaxRoiPool")
def c_max_roi_pool_is_barrier():
    def mid(g, h):
        rois = g.floats([[0, 0, 0, 3, 3], [0, 1, 1, 5, 5]])
        return g.op("MaxRoiPool", h, rois, pooled_shape=[2, 2])
    return barrier(13, mid, "MaxRoiPool", exact=False)


# ============================================================================ reductions

REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def _reduce(op, opset, axes, *, keepdims=1, positive=False, g=None, h=None):
    x = g.op("Sigmoid", h) if positive else h
    as_input = opset >= 18 or (op == "ReduceSum" and opset >= 13)
    if axes is None:
        return g.op(op, x, keepdims=keepdims)
    if as_input:
        return g.op(op, x, g.ints(axes), keepdims=keepdims)
    return g.op(op, x, axes=list(axes), keepdims=keepdims)


def _reduce_case(op, opset):
    positive = op in ("ReduceLogSum", "ReduceProd")

    def build():
        return simple(opset, lambda g, h: _reduce(op, opset, [3], positive=positive, g=g, h=h))
    return build


for _op in REDUCE:
    add(f"reduce_{_op}_opset13", _op, _reduce_case(_op, 13))
    add(f"reduce_{_op}_opset18", _op, _reduce_case(_op, 18))
add("reduce_ReduceSum_opset11_attr", "ReduceSum", _reduce_case("ReduceSum", 11))


@case("ReduceMean", "Gemm")
def c_reduce_spatial_no_keepdims_into_gemm():
    g = G(13)
    a = g.conv(g.x, 8)
    r = g.op("ReduceMean", a, axes=[2, 3], keepdims=0)
    y = g.gemm(r, 3)
    return Spec(g.model(y), [(8, 1)])


@case("ReduceSum")
def c_reduce_noop_with_empty_axes():
    return simple(13, lambda g, h: g.op("ReduceSum", h, noop_with_empty_axes=1))


@case("ReduceMean")
def c_reduce_over_channels_is_barrier():
    return barrier(13, lambda g, h: g.op("ReduceMean", h, axes=[1], keepdims=1), "channel",
                   exact=False)


@case("ReduceSum")
def c_reduce_over_channels_opset18_is_barrier():
    return barrier(18, lambda g, h: g.op("ReduceSum", h, g.ints([-3]), keepdims=1), "channel",
                   exact=False)


@case("ReduceMax")
def c_reduce_over_all_axes_is_barrier():
    def mid(g, h):
        r = g.op("ReduceMax", h, keepdims=1)
        return g.op("Add", h, r)
    return barrier(13, mid, "all axes", exact=False)


# ======================================================================= Resize / Upsample / Pad

@case("Resize")
def c_resize_opset10_scales():
    return simple(10, lambda g, h: g.op("Resize", h, g.floats([1, 1, 2, 2])))


@case("Resize")
def c_resize_opset11_roi_scales():
    return simple(11, lambda g, h: g.op("Resize", h, g.floats([]), g.floats([1, 1, 2, 2])))


@case("Resize")
def c_resize_opset13_scales_linear():
    return simple(13, lambda g, h: g.op("Resize", h, None, g.floats([1, 1, 2, 2]), mode="linear"))


@case("Resize")
def c_resize_opset13_sizes():
    """Explicit sizes hold the channel count: a member rewritten with the kept width."""
    return simple(13, lambda g, h: g.op("Resize", h, None, None, g.ints([2, 8, 12, 12])), batch=2)


@case("Resize")
def c_resize_opset11_sizes():
    return simple(11, lambda g, h: g.op("Resize", h, g.floats([]), g.floats([]),
                                        g.ints([2, 8, 9, 9])), batch=2)


@case("Resize")
def c_resize_opset18_axes_spatial():
    return simple(18, lambda g, h: g.op("Resize", h, None, g.floats([2, 2]), axes=[2, 3]))


@case("Resize")
def c_resize_scaling_channels_is_barrier():
    g = G(13)
    a = g.conv(g.x, 8)
    r = g.op("Resize", a, None, g.floats([1, 2, 1, 1]))
    y = g.conv(r, 3)
    return Spec(g.model(y), [], {a: "channel"}, exact=False)


@case("Resize")
def c_resize_sizes_changing_channels_is_barrier():
    g = G(13, batch=2)
    a = g.conv(g.x, 8)
    r = g.op("Resize", a, None, None, g.ints([2, 16, 6, 6]))
    y = g.conv(r, 3)
    return Spec(g.model(y), [], {a: "channel"}, exact=False)


@case("Upsample")
def c_upsample_opset9():
    return simple(9, lambda g, h: g.op("Upsample", h, g.floats([1, 1, 2, 2])))


@case("Upsample")
def c_upsample_opset9_channels_is_barrier():
    g = G(9)
    a = g.conv(g.x, 4)
    y = g.conv(g.op("Upsample", a, g.floats([1, 2, 1, 1])), 3)
    return Spec(g.model(y), [], {a: "channel"}, exact=False)


@case("Pad")
def c_pad_opset9_attr():
    return simple(9, lambda g, h: g.op("Pad", h, pads=[0, 0, 1, 2, 0, 0, 2, 1], value=0.5))


@case("Pad")
def c_pad_opset10_attr_reflect():
    return simple(10, lambda g, h: g.op("Pad", h, pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"))


@case("Pad")
def c_pad_opset11_input():
    return simple(11, lambda g, h: g.op("Pad", h, g.ints([0, 0, 1, 2, 0, 0, 2, 1]), g.floats(0.5)))


@case("Pad")
def c_pad_opset13_edge():
    return simple(13, lambda g, h: g.op("Pad", h, g.ints([0, 0, 1, 1, 0, 0, 1, 1]), mode="edge"))


@case("Pad")
def c_pad_opset18_axes():
    return simple(18, lambda g, h: g.op("Pad", h, g.ints([1, 2, 2, 1]), None, g.ints([2, -1])))


@case("Pad")
def c_pad_opset9_channels_is_barrier():
    return barrier(9, lambda g, h: g.op("Pad", h, pads=[0, 1, 0, 0, 0, 1, 0, 0]), "Pad",
                   exact=False)


@case("Pad")
def c_pad_opset11_channels_is_barrier():
    return barrier(11, lambda g, h: g.op("Pad", h, g.ints([0, 1, 0, 0, 0, 0, 0, 0])), "Pad",
                   exact=False)


@case("Pad")
def c_pad_opset18_axes_channels_is_barrier():
    return barrier(18, lambda g, h: g.op("Pad", h, g.ints([0, 1]), None, g.ints([1])), "Pad",
                   exact=False)


# ============================================================================ Softmax family

def _softmax_cases(op):
    def spatial13():
        return simple(13, lambda g, h: g.op(op, h, axis=-1))

    def channel13():
        return barrier(13, lambda g, h: g.op(op, h, axis=1), op, exact=False)

    def default11():
        """Opset < 13: the default axis 1 coerces [C, H, W] into one row: channels mix."""
        return barrier(11, lambda g, h: g.op(op, h), op, exact=False)

    def spatial11():
        """Opset 11, axis=2: rows are (n, c), normalized over H*W: channels stay apart."""
        return simple(11, lambda g, h: g.op(op, h, axis=2))

    add(f"{op}_opset13_width", op, spatial13)
    add(f"{op}_opset13_channels_is_barrier", op, channel13)
    add(f"{op}_opset11_default_axis_is_barrier", op, default11)
    add(f"{op}_opset11_axis2", op, spatial11)


for _op in ("Softmax", "LogSoftmax", "Hardmax"):
    _softmax_cases(_op)


@case("Softmax")
def c_softmax_opset13_default_axis_on_nchw_width():
    """Opset 13's default axis is -1 (W on NCHW), not the channels."""
    return simple(13, lambda g, h: g.op("Softmax", h))


@case("Softmax", "Gemm")
def c_softmax_over_gemm_features_is_barrier():
    g = G(13, (5,))
    a = g.gemm(g.x, 6)
    y = g.gemm(g.op("Softmax", a, axis=-1), 3)
    return Spec(g.model(y), [], {a: "Softmax"}, exact=False)


# ============================================================================ layout

@case("Transpose")
def c_transpose_nhwc_roundtrip():
    def mid(g, h):
        t = g.op("Relu", g.op("Transpose", h, perm=[0, 2, 3, 1]))
        return g.op("Transpose", t, perm=[0, 3, 1, 2])
    return simple(13, mid)


@case("Transpose", "MatMul")
def c_transpose_nhwc_matmul():
    """NHWC: channels on the last axis meet X @ W; back to NCHW into a conv."""
    g = G(13)
    a = g.conv(g.x, 8)
    m = g.matmul(g.op("Transpose", a, perm=[0, 2, 3, 1]), 5)
    y = g.conv(g.op("Transpose", g.op("Relu", m), perm=[0, 3, 1, 2]), 3)
    return Spec(g.model(y), [(8, 1), (5, 1)])


@case("Transpose")
def c_transpose_moving_batch_is_barrier():
    g = G(13, (4, 6, 6), batch=2)
    a = g.conv(g.x, 8)
    t = g.op("Transpose", a, perm=[1, 0, 2, 3])
    y = g.conv(g.op("Transpose", t, perm=[1, 0, 2, 3]), 3)
    return Spec(g.model(y), [], {a: "batch"}, exact=False)


@case("Transpose")
def c_transpose_default_perm_is_barrier():
    g = G(13, (4, 6, 6), batch=2)
    a = g.conv(g.x, 8)
    y = g.conv(g.op("Transpose", g.op("Transpose", a)), 3)
    return Spec(g.model(y), [], {a: "batch"}, exact=False)


def _squeeze(opset):
    def build():
        g = G(opset)
        a = g.conv(g.x, 8)
        p = g.op("GlobalAveragePool", a)
        s = g.op("Squeeze", p, g.ints([2, 3])) if opset >= 13 else g.op("Squeeze", p, axes=[2, 3])
        y = g.gemm(s, 3)
        return Spec(g.model(y), [(8, 1)])
    return build


def _unsqueeze(opset):
    def build():
        g = G(opset, (5,))
        h = g.op("Relu", g.gemm(g.x, 6))
        u = (g.op("Unsqueeze", h, g.ints([-1, 2])) if opset >= 13
             else g.op("Unsqueeze", h, axes=[-1, 2]))
        y = g.conv(u, 3, k=1)
        return Spec(g.model(y), [(6, 1)])
    return build


for _opset in (11, 13, 21):
    add(f"squeeze_opset{_opset}", "Squeeze", _squeeze(_opset))
    add(f"unsqueeze_opset{_opset}", "Unsqueeze", _unsqueeze(_opset))


@case("Squeeze")
def c_squeeze_without_axes():
    g = G(13, batch=2)
    a = g.conv(g.x, 8)
    y = g.gemm(g.op("Squeeze", g.op("GlobalAveragePool", a)), 3)
    return Spec(g.model(y), [(8, 1)])


@case("Squeeze")
def c_squeeze_of_channel_axis_is_barrier():
    g = G(13)
    a = g.conv(g.x, 1)
    s = g.op("Squeeze", a, g.ints([1]))
    y = g.conv(g.op("Unsqueeze", s, g.ints([1])), 3)
    return Spec(g.model(y), [], {a: "Squeeze"}, exact=False)


@case("Concat")
def c_concat_of_4_and_6():
    """Concat of convs with 4 and 6 channels feeding a conv: two groups."""
    g = G(13)
    a, b = g.conv(g.x, 4), g.conv(g.x, 6)
    y = g.conv(g.op("Concat", a, b, axis=1), 3)
    return Spec(g.model(y), [(4, 1), (6, 1)])


@case("Concat")
def c_concat_negative_axis_three_inputs():
    g = G(13)
    a, b = g.conv(g.x, 4), g.conv(g.x, 6)
    y = g.conv(g.op("Concat", b, a, g.op("Relu", a), axis=-3), 3)
    return Spec(g.model(y), [(4, 1), (6, 1)])


@case("Concat")
def c_concat_with_graph_input():
    """The input's 4 channels are fixed; the conv's group stays prunable."""
    g = G(13)
    a = g.conv(g.x, 6)
    y = g.conv(g.op("Concat", g.x, a, axis=1), 3)
    return Spec(g.model(y), [(6, 1)], {"x": "track"})


@case("Concat")
def c_concat_on_height_merges():
    g = G(13)
    a, b = g.conv(g.x, 8), g.conv(g.x, 8)
    y = g.conv(g.op("Concat", a, b, axis=2), 3)
    return Spec(g.model(y), [(8, 1)])


@case("Concat")
def c_concat_on_height_with_untracked_is_barrier():
    g = G(13)
    a = g.conv(g.x, 4)
    y = g.conv(g.op("Concat", a, g.x, axis=2), 3)
    return Spec(g.model(y), [], {a: "untracked"}, exact=False)


def _class_token(expand_width: int = 1, shared: bool = False, pos: bool = True) -> Spec:
    """ViT: a constant class token [1, 1, C] broadcast over the batch (Expand by a run-time
    target [N, 1, 1]) and joined to the patch tokens on the sequence axis, then a position
    embedding [1, L + 1, C]: the token and the embedding are members of the group."""
    g = G(13, (5, 6))
    a = g.matmul(g.x, 8)
    n = g.op("Gather", g.op("Shape", g.x), g.ints([0]), axis=0)
    cls = g.op("Expand", g.const([1, 1, 8]), g.op("Concat", n, g.ints([1, expand_width]), axis=0))
    h = g.op("Concat", cls, a, axis=1)
    if pos:
        h = g.op("Add", h, g.const([1, 6, 8]))
    y = g.matmul(h, 3)
    outputs = (y, g.op("Relu", cls)) if shared else (y,)
    return Spec(g.model(*outputs), [] if shared or expand_width != 1 else [(8, 1)],
                {a: "untracked"} if shared or expand_width != 1 else {},
                exact=not shared and expand_width == 1)


@case("Concat", "Expand")
def c_concat_class_token_on_sequence_axis():
    return _class_token()


@case("Concat", "Expand")
def c_concat_class_token_without_position_embedding():
    return _class_token(pos=False)


@case("Concat", "Expand")
def c_concat_class_token_expanded_on_channels_is_barrier():
    """The target's channel entry is the width itself: slicing the token would not shrink
    the Expand's output, so the group stays whole."""
    return _class_token(expand_width=8)


@case("Concat", "Expand")
def c_concat_class_token_read_elsewhere_is_barrier():
    return _class_token(shared=True)


def _split(opset, form):
    def build():
        g = G(opset)
        h = g.op("Relu", g.conv(g.x, 8))
        if form == "attr":
            s1, s2 = g.op("Split", h, axis=1, split=[3, 5], outputs=2)
        elif form == "input":
            s1, s2 = g.op("Split", h, g.ints([3, 5]), axis=1, outputs=2)
        elif form == "num_outputs":
            s1, s2 = g.op("Split", h, axis=1, num_outputs=2, outputs=2)
        else:  # equal, no sizes
            s1, s2 = g.op("Split", h, axis=-3, outputs=2)
        a, b = g.conv(s1, 4), g.conv(s2, 4)
        y = g.conv(g.op("Add", a, b), 3)
        return Spec(g.model(y), [(8, 1), (4, 1)])
    return build


add("split_opset11_attr", "Split", _split(11, "attr"))
add("split_opset13_input", "Split", _split(13, "input"))
add("split_opset18_input", "Split", _split(18, "input"))
add("split_opset13_equal", "Split", _split(13, "equal"))
add("split_opset18_num_outputs", "Split", _split(18, "num_outputs"))


@case("Split")
def c_split_opset18_num_outputs_uneven():
    g = G(18)
    h = g.conv(g.x, 8)
    s = g.op("Split", h, axis=1, num_outputs=3, outputs=3)
    y = g.conv(g.op("Concat", s[2], s[0], s[1], axis=1), 3)
    return Spec(g.model(y), [(8, 1)])


@case("Split", "Concat")
def c_split_reordered_concat():
    g = G(13)
    h = g.conv(g.x, 8)
    s = g.op("Split", h, g.ints([2, 3, 3]), axis=1, outputs=3)
    y = g.conv(g.op("Concat", s[2], g.op("Relu", s[0]), axis=1), 3)
    return Spec(g.model(y), [(8, 1)])


@case("Split")
def c_split_on_height():
    g = G(13)
    h = g.conv(g.x, 8)
    s1, s2 = g.op("Split", h, axis=2, outputs=2)
    y = g.conv(g.op("Concat", s2, s1, axis=2), 3)
    return Spec(g.model(y), [(8, 1)])


def _slice(opset, form):
    def build():
        def mid(g, h):
            if form == "attr":
                return g.op("Slice", h, starts=[2], ends=[7], axes=[1])
            if form == "input":
                return g.op("Slice", h, g.ints([2]), g.ints([7]), g.ints([1]))
            if form == "negative":
                return g.op("Slice", h, g.ints([-6, 1]), g.ints([INT64_MAX, 5]), g.ints([-3, 2]),
                            g.ints([1, 1]))
            # no axes: every axis, batch included
            return g.op("Slice", h, g.ints([0, 1, 0, 0]), g.ints([INT64_MAX, 6, 5, INT64_MAX]))
        return simple(opset, mid)
    return build


add("slice_opset9_attrs", "Slice", _slice(9, "attr"))
add("slice_opset10_inputs", "Slice", _slice(10, "input"))
add("slice_opset13_negative_steps", "Slice", _slice(13, "negative"))
add("slice_opset13_no_axes", "Slice", _slice(13, "all"))


@case("Slice")
def c_slice_spatial_only():
    return simple(13, lambda g, h: g.op("Slice", h, g.ints([1]), g.ints([-1]), g.ints([3])))


@case("Slice")
def c_slice_step2_on_channels_is_barrier():
    return barrier(13, lambda g, h: g.op("Slice", h, g.ints([0]), g.ints([8]), g.ints([1]),
                                         g.ints([2])), "step", exact=False)


@case("Slice")
def c_slice_runtime_bounds_is_barrier():
    def mid(g, h):
        s = g.op("Slice", h, g.input("start", [1], np.int64), g.ints([7]), g.ints([1]))
        return g.declare(s, ["N", 5, 6, 6])
    return barrier(13, mid, "run-time", exact=False)


@case("Flatten")
def c_flatten_into_gemm():
    """Flatten of [N, 4, 3, 3] into a Gemm consumer: the conv group has 4 units."""
    g = G(13, (4, 3, 3))
    a = g.conv(g.x, 4)
    y = g.gemm(g.op("Flatten", a), 3)
    return Spec(g.model(y), [(4, 1)])


@case("Flatten", "Transpose")
def c_flatten_nhwc_into_gemm():
    g = G(13, (4, 3, 3))
    a = g.conv(g.x, 4)
    y = g.gemm(g.op("Flatten", g.op("Transpose", a, perm=[0, 2, 3, 1])), 3)
    return Spec(g.model(y), [(4, 1)])


@case("Flatten")
def c_flatten_axis2_is_barrier():
    g = G(13, (4, 3, 3))
    a = g.conv(g.x, 4)
    y = g.gemm(g.op("Flatten", a, axis=2), 3)
    return Spec(g.model(y), [], {a: "Flatten"}, exact=False)


@case("Reshape")
def c_reshape_fold_into_gemm():
    g = G(13, (4, 3, 3))
    a = g.conv(g.x, 4)
    y = g.gemm(g.op("Reshape", a, g.ints([0, -1])), 3)
    return Spec(g.model(y), [(4, 1)])


@case("Reshape")
def c_reshape_fold_explicit_width():
    g = G(13, (4, 3, 3))
    a = g.conv(g.x, 4)
    y = g.gemm(g.op("Reshape", a, g.ints([-1, 36])), 3)
    return Spec(g.model(y), [(4, 1)])


@case("Reshape", "Transpose")
def c_reshape_fold_nhwc_into_matmul():
    g = G(13, (4, 3, 3))
    a = g.conv(g.x, 4)
    t = g.op("Transpose", a, perm=[0, 2, 3, 1])
    y = g.matmul(g.op("Reshape", t, g.ints([0, 9, 4])), 3)
    return Spec(g.model(y), [(4, 1)])


@case("Reshape", "Transpose", "MatMul")
def c_reshape_attention_heads():
    """[N, 5, 8] -> [N, 5, 2 heads, 4] -> transpose -> back: one unit = one head of 4."""
    g = G(13, (5, 8))
    q = g.matmul(g.x, 8)
    h = g.op("Transpose", g.op("Reshape", q, g.ints([0, 5, 2, 4])), perm=[0, 2, 1, 3])
    h = g.op("Transpose", g.op("Relu", h), perm=[0, 2, 1, 3])
    y = g.matmul(g.op("Reshape", h, g.ints([0, 5, 8])), 3)
    return Spec(g.model(y), [(2, 4)])


@case("Reshape")
def c_reshape_conv_channel_blocks():
    """[N, 8, 6, 6] -> [N, 2, 4, 36] -> back: blocks of 4 channels are units."""
    g = G(13)
    a = g.conv(g.x, 8)
    r = g.op("Relu", g.op("Reshape", a, g.ints([0, 2, 4, 36])))
    y = g.conv(g.op("Reshape", r, g.ints([0, 8, 6, 6])), 3)
    return Spec(g.model(y), [(2, 4)])


@case("Reshape", "Transpose")
def c_channel_shuffle_couples_groups():
    """Reshape [0, 2, 4, ..] -> Transpose -> Reshape back (issue 17 N): channel i of each of
    the 2 groups is one unit; both groups lose the same positions."""
    g = G(13)
    a = g.conv(g.x, 8)
    r = g.op("Reshape", a, g.ints([0, 2, 4, 6, 6]))
    t = g.op("Transpose", r, perm=[0, 2, 1, 3, 4])
    y = g.conv(g.op("Reshape", t, g.ints([0, 8, 6, 6])), 3)
    return Spec(g.model(y), [(4, 2)])


@case("Reshape", "Transpose", "Concat")
def c_channel_shuffle_of_concat_dynamo_targets():
    """ShuffleNet v2: two branches concatenated, shuffled (targets [-1, 2, 4, ..] and
    [-1, 8, ..], as dynamo writes them), then a conv of 4 groups: position i of both branches
    and of every conv group go together."""
    g = G(13)
    a, b = g.conv(g.x, 4), g.conv(g.x, 4)
    r = g.op("Reshape", g.op("Concat", a, b, axis=1), g.ints([-1, 2, 4, 6, 6]))
    t = g.op("Transpose", r, perm=[0, 2, 1, 3, 4])
    h = g.conv(g.op("Relu", g.op("Reshape", t, g.ints([-1, 8, 6, 6]))), 4, group=2)
    return Spec(g.model(g.conv(h, 3)), [(2, 2), (2, 2)])


@case("Reshape", "Transpose")
def c_channel_shuffle_read_midway_is_barrier():
    """The transposed tensor is read by another op too: not a plain shuffle, fail closed."""
    g = G(13)
    a = g.conv(g.x, 8)
    r = g.op("Reshape", a, g.ints([0, 2, 4, 6, 6]))
    t = g.op("Transpose", r, perm=[0, 2, 1, 3, 4])
    y = g.conv(g.op("Reshape", t, g.ints([0, 8, 6, 6])), 3)
    z = g.op("ReduceSum", t, keepdims=0)
    return Spec(g.model(y, z), [], {a: "shuffle"}, exact=False)


@case("Slice")
def c_slice_chunk_runtime_bounds_folded():
    """torch chunk(2) on the legacy exporter: ends = (Shape(x)[1] + 1) / 2 * 1, computed at run
    time from the static width; folded to constants, the halves are channel slices."""
    def mid(g, h):
        half = g.op("Mul", g.op("Div", g.op("Add", g.op("Gather", g.op("Shape", h), g.ints([1])),
                                              g.ints([1])), g.ints([2])), g.ints([1]))
        end = g.op("Mul", half, g.ints([2]))
        lo = g.op("Slice", h, g.ints([0]), half, g.ints([1]))
        hi = g.op("Slice", h, half, end, g.ints([1]))
        return g.declare(g.op("Concat", g.conv(lo, 4, c_in=4), hi, axis=1), ["N", 8, 6, 6])
    return simple(13, mid, prunable=((8, 1), (4, 1)))


@case()
def c_quickgelu_unknown_ranks_from_probe():
    """com.microsoft QuickGelu has no onnx schema, so every rank after it is unknown: the shapes
    come from a probe run and the op is element-wise (issue 17 M)."""
    g = G(13, domains={"com.microsoft": 1})
    a = g.conv(g.x, 8)
    q = g.op("QuickGelu", a, domain="com.microsoft", alpha=1.702)
    h = g.op("Relu", g.op("Mul", q, g.const([8, 1, 1])))
    y = g.declare(g.conv(h, 3, c_in=8), ["N", 3, 6, 6])
    return Spec(g.model(y), [(8, 1)])


@case("Reshape")
def c_reshape_mixing_channels_is_barrier():
    g = G(13)
    a = g.conv(g.x, 8)
    r = g.op("Reshape", a, g.ints([0, 4, 72]))
    y = g.conv(g.op("Reshape", r, g.ints([0, 8, 6, 6])), 3)
    return Spec(g.model(y), [], {a: "Reshape"}, exact=False)


@case("Reshape")
def c_reshape_fused_qkv_split_is_barrier():
    """[N, L, 12] -> [0, -1, 3, 2, 2] (q/k/v x heads x head_dim) merged straight back, not
    picked apart by Transpose + Gather: not followed; the reason names the split."""
    g = G(13, (5, 6))
    a = g.matmul(g.x, 12)
    h = g.op("Reshape", g.op("Reshape", a, g.ints([0, -1, 3, 2, 2])), g.ints([0, -1, 12]))
    return Spec(g.model(g.matmul(h, 3)), [], {a: "fused q/k/v"}, exact=False)


def _fused_qkv(perm=(2, 0, 3, 1, 4), gather_axis: int = 0, index=lambda g, i: g.ints(i)) -> tuple:
    """SVTR's attention (issue 17 J): qkv [N, 5, 18] -> Reshape [0, -1, 3, 2 heads, 3] ->
    Transpose -> Gather q, k, v -> softmax(q k^T * s) v -> Transpose [0, 2, 1, 3] ->
    Reshape [0, -1, 6] -> proj. Returns (g, qkv, the transposed parts, y)."""
    g = G(13, (5, 6))
    qkv = g.matmul(g.x, 18)
    t = g.op("Transpose", g.op("Reshape", qkv, g.ints([0, -1, 3, 2, 3])), perm=list(perm))
    q, k, v = (g.op("Gather", t, index(g, i), axis=gather_axis) for i in range(3))
    s = g.op("MatMul", g.op("Mul", q, g.floats(0.5)), g.op("Transpose", k, perm=[0, 1, 3, 2]))
    o = g.op("MatMul", g.op("Softmax", s, axis=-1), v)
    o = g.op("Reshape", g.op("Transpose", o, perm=[0, 2, 1, 3]), g.ints([0, -1, 6]))
    return g, qkv, t, g.matmul(o, 3)


@case("Reshape", "Transpose", "Gather", "MatMul", "Softmax")
def c_fused_qkv_head_split():
    """One unit = one head: head_dim 3 channels of q, of k and of v (9 qkv columns) and 3 proj
    rows; the Transpose/Gather that move the q/k/v axis before the batch keep samples apart."""
    g, _, _, y = _fused_qkv()
    return Spec(g.model(y), [(2, 3)])


@case("Reshape", "Transpose", "Gather")
def c_fused_qkv_head_split_other_perm_is_barrier():
    """The q/k/v axis second (perm [0, 2, 3, 1, 4], Gather on axis 1): not followed."""
    g, qkv, _, y = _fused_qkv(perm=(0, 2, 3, 1, 4), gather_axis=1)
    return Spec(g.model(y), [], {qkv: "fused q/k/v head split, not followed: Transpose perm"},
                exact=False)


@case("Reshape", "Transpose", "Gather")
def c_fused_qkv_head_split_runtime_index_is_barrier():
    """A Gather index that is not a constant: not followed."""
    g, qkv, _, y = _fused_qkv(index=lambda g, i: g.input(f"part{i}", [], np.int64))
    return Spec(g.model(y), [], {qkv: "not each picked by a Gather of a constant"}, exact=False,
                mixing="Gather")


@case("Reshape", "Transpose", "Gather")
def c_fused_qkv_parts_as_graph_output_is_barrier():
    """The transposed parts [3, N, 2, 5, 3] are a graph output too: its channels and its batch
    on axis 1 are not followed (a barrier, and the Transpose is reported as moving the batch)."""
    g, qkv, t, y = _fused_qkv()
    return Spec(g.model(y, t), [], {qkv: "fused q/k/v head split, not followed"}, exact=False,
                mixing="Transpose")


@case("Reshape")
def c_reshape_runtime_target_is_barrier():
    g = G(13, (4, 3, 3))
    a = g.conv(g.x, 4)
    y = g.declare(g.op("Reshape", a, g.input("target", [2], np.int64)), ["N", None])
    return Spec(g.model(y), [], {a: "run-time"}, exact=False)


def _unflatten_cast(width: int) -> Spec:
    """SVTR: tokens [N, H*W, C] back to [N, H, W, C] by Cast(Concat(0, H, W, C) in int32),
    H and W gathered from Cast(Shape(conv out), int32); then NCHW again for a conv."""
    g = G(13, (4, 2, 3))
    a = g.conv(g.x, 8)
    tokens = g.op("Transpose", g.op("Relu", g.op("Reshape", a, g.ints([0, 8, -1]))), perm=[0, 2, 1])
    dims = g.op("Cast", g.op("Shape", a), to=TensorProto.INT32)
    h, w = (g.op("Unsqueeze", g.op("Gather", dims, g.ints(i), axis=0), g.ints([0])) for i in (2, 3))
    if width != 8:  # [N, H, -1, width]: a valid model whose literal is not the channel width
        w = g.array([-1], np.int32)
    target = g.op("Concat", g.array([0], np.int32), h, w, g.array([width], np.int32), axis=0)
    grid = g.op("Reshape", tokens, g.op("Cast", target, to=TensorProto.INT64))
    y = g.conv(g.declare(g.op("Transpose", grid, perm=[0, 3, 1, 2]), ["N", width, 2, 24 // width]), 3)
    return Spec(g.model(y), [(8, 1)] if width == 8 else [], {} if width == 8 else {a: "run-time"})


@case("Reshape", "Cast", "Shape")
def c_reshape_unflatten_cast_target():
    return _unflatten_cast(8)


@case("Reshape", "Cast", "Shape")
def c_reshape_unflatten_cast_target_other_width_is_barrier():
    """The literal is not the channel width ([N, H, -1, 4]): channels not kept last; whole."""
    return _unflatten_cast(4)


@case("Shape")
def c_shape_batch_dim_only():
    """Shape -> Gather(0): only the batch dim is read; the channels stay prunable."""
    g = G(13)
    a = g.conv(g.x, 8)
    n = g.op("Gather", g.op("Shape", a), g.ints(0))
    y = g.conv(g.op("Relu", a), 3)
    return Spec(g.model(y, n), [(8, 1)])


@case("Shape")
def c_shape_start_opset15():
    g = G(15)
    a = g.conv(g.x, 8)
    hw = g.op("Gather", g.op("Shape", a, start=2), g.ints([0, 1]))
    y = g.conv(g.op("Relu", a), 3)
    return Spec(g.model(y, hw), [(8, 1)])


@case("Shape")
def c_shape_to_output_is_barrier():
    g = G(13)
    a = g.conv(g.x, 8)
    s = g.op("Shape", a)
    y = g.conv(a, 3)
    return Spec(g.model(y, s), [], {a: "Shape"}, exact=False)


# ======================================================================= barriers without handler

@case()
def c_graph_output_is_barrier():
    g = G(13)
    a = g.conv(g.x, 8)
    y = g.op("Relu", a)
    return Spec(g.model(y), [], {a: "graph output"}, exact=False)


@case()
def c_unknown_op_einsum_is_barrier():
    return barrier(13, lambda g, h: g.op("Einsum", h, g.const([8]), equation="nchw,c->nchw"),
                   "Einsum", exact=False)


@case()
def c_gather_on_channels_is_barrier():
    return barrier(13, lambda g, h: g.op("Gather", h, g.ints([0, 2, 5]), axis=1), "Gather",
                   exact=False)


@case()
def c_custom_domain_op_is_barrier():
    def mid(g, h):
        return g.declare(g.op("Foo", h, domain="com.example"), ["N", 8, 6, 6])
    return barrier(13, mid, "custom domain", exact=False, domains={"com.example": 1})


@case()
def c_if_subgraph_capture_is_barrier():
    g = G(13)
    a = g.conv(g.x, 8)
    cond = g.input("cond", [], np.bool_)
    out_t = helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, None)
    then = helper.make_graph([helper.make_node("Relu", [a], ["branch_out"])], "then", [], [out_t])
    other = helper.make_graph([helper.make_node("Sigmoid", [a], ["branch_out"])], "else", [],
                              [out_t])
    i = g.op("If", cond, then_branch=then, else_branch=other)
    g.declare(i, ["N", 8, 6, 6])
    y = g.conv(i, 3)
    return Spec(g.model(y), [], {a: "subgraph"}, exact=False)


# ============================================================================ combinations

@case("ReduceMean", "Transpose", "Gemm")
def c_reduce_nhwc_no_keepdims_shifts_axis():
    """NHWC, reduce H and W without keepdims: the channel axis moves from 3 to 1."""
    g = G(13)
    a = g.conv(g.x, 8)
    r = g.op("ReduceMean", g.op("Transpose", a, perm=[0, 2, 3, 1]), axes=[1, 2], keepdims=0)
    y = g.gemm(r, 3)
    return Spec(g.model(y), [(8, 1)])


@case("Unsqueeze", "Squeeze")
def c_unsqueeze_before_channels_and_back():
    def mid(g, h):
        u = g.op("Relu", g.op("Unsqueeze", h, g.ints([1])))
        return g.op("Squeeze", u, g.ints([-4]))
    return simple(13, mid)


@case("LayerNormalization")
def c_layernorm_over_hw_passes():
    return simple(17, lambda g, h: g.op("LayerNormalization", h, g.const([6, 6], positive=True),
                                        axis=-2))


@case("LayerNormalization")
def c_layernorm_stats_used_is_barrier():
    def mid(g, h):
        y, mean, _ = g.op("LayerNormalization", h, g.const([6], positive=True), axis=-1,
                          outputs=3)
        return g.op("Add", y, mean)
    return barrier(17, mid, "statistics", exact=False)


@case("Add")
def c_shared_per_channel_const_two_groups():
    """One [8,1,1] constant read by two groups pruned differently: each gets its own slice."""
    g = G(13)
    a, b = g.conv(g.x, 8), g.conv(g.x, 8)
    k = g.const([8, 1, 1])
    y = g.op("Add", g.conv(g.op("Add", a, k), 3), g.conv(g.op("Mul", b, k), 3))
    return Spec(g.model(y), [(8, 1), (8, 1)])


@case("Conv")
def c_shared_conv_weight_two_producers():
    """Weight tying: one initializer is the filter bank of two convs, pruned differently."""
    g = G(13)
    w = g.const([8, 4, 3, 3], 0.3)
    a = g.op("Conv", g.x, w, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    b = g.op("Conv", g.op("Neg", g.x), w, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = g.op("Add", g.conv(g.op("Relu", a), 3), g.conv(g.op("Relu", b), 3))
    return Spec(g.model(y), [(8, 1), (8, 1)])


@case("Concat")
def c_concat_same_tensor_twice():
    g = G(13)
    a = g.conv(g.x, 4)
    y = g.conv(g.op("Concat", a, a, axis=1), 3)
    return Spec(g.model(y), [(4, 1)])


@case("Conv", "Concat")
def c_grouped_conv_over_concat_couples_sources():
    """group 2 over concat(a: 4, b: 4) couples a's channel j with b's channel j."""
    g = G(13)
    a, b = g.conv(g.x, 4), g.conv(g.x, 4)
    c = g.conv(g.op("Concat", a, b, axis=1), 8, group=2)
    y = g.conv(c, 3)
    return Spec(g.model(y), [(4, 1), (4, 2)])


@case("Conv", "Concat")
def c_depthwise_over_concat_with_input():
    g = G(13)
    a = g.conv(g.x, 4)
    d = g.conv(g.op("Concat", g.x, a, axis=1), 8, group=8)
    y = g.conv(g.op("Relu", d), 3)
    return Spec(g.model(y), [(4, 1)], {"x": "track"})


@case("Split", "Conv")
def c_split_into_depthwise_pieces():
    g = G(13)
    h = g.conv(g.x, 8)
    s1, s2 = g.op("Split", h, g.ints([4, 4]), axis=1, outputs=2)
    y = g.conv(g.op("Concat", g.conv(s1, 4, group=4), g.conv(s2, 8, group=4), axis=1), 3)
    return Spec(g.model(y), [(8, 1)])


@case("Slice")
def c_slice_channels_and_width_step2():
    return simple(13, lambda g, h: g.op("Slice", h, g.ints([1, 0]), g.ints([7, 6]),
                                        g.ints([1, 3]), g.ints([1, 2])))


@case("Resize", "Transpose")
def c_resize_nhwc():
    def mid(g, h):
        t = g.op("Transpose", h, perm=[0, 2, 3, 1])
        r = g.op("Resize", t, None, g.floats([1, 2, 2, 1]))
        return g.op("Transpose", r, perm=[0, 3, 1, 2])
    return simple(13, mid)


@case("Pad", "Transpose")
def c_pad_nhwc():
    def mid(g, h):
        t = g.op("Transpose", h, perm=[0, 2, 3, 1])
        p = g.op("Pad", t, g.ints([0, 1, 1, 0, 0, 1, 1, 0]))
        return g.op("Transpose", p, perm=[0, 3, 1, 2])
    return simple(13, mid)


@case("Pad", "Transpose")
def c_pad_nhwc_channels_is_barrier():
    def mid(g, h):
        t = g.op("Transpose", h, perm=[0, 2, 3, 1])
        p = g.op("Pad", t, g.ints([0, 0, 0, 1, 0, 0, 0, 0]))
        return g.op("Transpose", p, perm=[0, 3, 1, 2])
    return barrier(13, mid, "Pad", exact=False)


@case("Mul", "ReduceMean", "HardSigmoid")
def c_se_gate_with_reducemean():
    g = G(13)
    a = g.conv(g.x, 8)
    s = g.op("ReduceMean", a, axes=[2, 3], keepdims=1)
    s = g.conv(g.op("Relu", g.conv(s, 2, k=1)), 8, k=1)
    y = g.conv(g.op("Mul", g.op("HardSigmoid", s), a), 3)
    return Spec(g.model(y), [(8, 1), (2, 1)])


@case("Add", "Unsqueeze", "Gemm")
def c_embedding_added_to_feature_map():
    """Diffusion-UNet style: gemm(t) [N, 8] -> [N, 8, 1, 1] added to conv features: one group."""
    g = G(13)
    t = g.input("t", ["N", 5])
    e = g.op("Unsqueeze", g.gemm(g.op("Sigmoid", t), 8), g.ints([2, 3]))
    a = g.conv(g.x, 8)
    y = g.conv(g.op("Add", a, e), 3)
    return Spec(g.model(y), [(8, 1)])


@case("Dropout")
def c_dropout_opset13_ratio_and_training_inputs():
    return simple(13, lambda g, h: g.op("Dropout", h, g.floats(0.5), g.array(False, np.bool_)))


@case("Hardmax")
def c_hardmax_opset13_default_axis():
    return simple(13, lambda g, h: g.op("Hardmax", h))


@case("ConvTranspose")
def c_conv_transpose_1d():
    g = G(13, (4, 5))
    a = g.conv(g.x, 6)
    w = g.const([6, 5, 3], 0.3)
    t = g.op("ConvTranspose", g.op("Relu", a), w, kernel_shape=[3], strides=[2])
    y = g.conv(g.op("Relu", t), 3)
    return Spec(g.model(y), [(6, 1), (5, 1)])


@case("MatMul")
def c_matmul_passthrough_rows():
    """W @ X tracks axis 1 of [N, 6, 8]; (.) @ W2 contracts axis 2: the rows pass through."""
    g = G(13, (5, 8))
    h = g.op("Relu", g.matmul(g.x, 6, left=True))
    y = g.matmul(g.matmul(h, 3), 2, left=True)
    return Spec(g.model(y), [(6, 1)])




def _typed_site(elem, np_type):
    def build():
        g = G(13, (5,))
        a = g.op("Cast", g.op("Relu", g.gemm(g.x, 6)), to=elem)
        w = g.array((g.rng.standard_normal([6, 3]) * 0.5).astype(np_type))
        y = g.op("Cast", g.op("MatMul", a, w), to=TensorProto.FLOAT)
        return Spec(g.model(y), [(6, 1)])
    return build


add("mask_site_on_float64_tensor", ("MatMul", "Cast"), _typed_site(TensorProto.DOUBLE, np.float64))
add("mask_site_on_float16_tensor", ("MatMul", "Cast"), _typed_site(TensorProto.FLOAT16, np.float16))


@case("ReduceSum")
def c_reduce_empty_axes_input_noop():
    return simple(13, lambda g, h: g.op("ReduceSum", h, g.ints(np.zeros(0, np.int64)),
                                        noop_with_empty_axes=1))


@case("Slice")
def c_slice_channel_not_first_in_axes():
    return simple(13, lambda g, h: g.op("Slice", h, g.ints([1, 2]), g.ints([5, 7]), g.ints([3, 1])))


@case("Slice")
def c_slice_opset9_default_axes():
    return simple(9, lambda g, h: g.op("Slice", h, starts=[0, 2], ends=[INT64_MAX, 7]))


@case("Reshape", "Transpose", "MatMul")
def c_reshape_heads_inferred_count():
    """Heads written as -1 in the target: the rewrite must leave it inferred."""
    g = G(13, (5, 8))
    q = g.matmul(g.x, 8)
    h = g.op("Transpose", g.op("Reshape", q, g.ints([0, 5, -1, 4])), perm=[0, 2, 1, 3])
    h = g.op("Transpose", g.op("Relu", h), perm=[0, 2, 1, 3])
    y = g.matmul(g.op("Reshape", h, g.ints([0, 5, -1])), 3)
    return Spec(g.model(y), [(2, 4)])


@case("Conv")
def c_depthwise_multiplier_then_grouped():
    """dw x2 gives [a0 a0 a1 a1 a2 a2 a3 a3]; group 2 then couples a0-a2 and a1-a3:
    2 units of 2 channels of a."""
    g = G(13)
    a = g.conv(g.x, 4)
    d = g.conv(a, 8, group=4)
    y = g.conv(g.op("Relu", d), 4, group=2)
    return Spec(g.model(y), [(2, 2)])


@case("MatMul", "Reshape", "Transpose", "Softmax", "Div")
def c_multi_head_attention():
    """q, k, v [N, 5, 8] as 2 heads of 4; softmax(q k^T / 2) v; out projection: q, k and v
    heads meet in the two activation MatMuls, so the three are one group of 2 heads."""
    g = G(13, (5, 8))

    def heads(t):
        return g.op("Transpose", g.op("Reshape", t, g.ints([0, 5, 2, 4])), perm=[0, 2, 1, 3])

    q, k, v = (heads(g.matmul(g.x, 8)) for _ in range(3))
    s = g.op("Div", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), g.floats(2.0))
    o = g.op("MatMul", g.op("Softmax", s, axis=-1), v)
    o = g.op("Reshape", g.op("Transpose", o, perm=[0, 2, 1, 3]), g.ints([0, 5, 8]))
    y = g.matmul(o, 3)
    return Spec(g.model(y), [(2, 4)])


@case("MatMul", "Transpose")
def c_attention_scores_over_channels_is_barrier():
    """q k^T with the channels (not heads) on the contracted axis: a barrier."""
    g = G(13, (5, 8))
    q, k = g.matmul(g.x, 8), g.matmul(g.x, 8)
    s = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 2, 1]))
    y = g.matmul(s, 3)
    return Spec(g.model(y), [], {q: "MatMul", k: "MatMul"}, exact=False)


# ---------------------------------------------------------------- ops that touch the batch axis
# Masks carry one coalition per sample (instrument.py); an op that mixes or resizes the batch
# downstream of a mask site breaks that, even when the single-mask invariant holds.

# Ops that combine samples downstream of a mask site: pruning stays exact (one coalition
# for the whole batch), but per-sample coalitions would leak into each other, so the analysis
# reports them and the engine scores such a model one coalition per run.

@case("ReduceMean")
def c_reduce_over_batch_is_reported():
    g = G(13)
    a = g.conv(g.x, 8)
    b = g.conv(g.op("Relu", a), 8)
    y = g.conv(g.op("Add", b, g.op("ReduceMean", b, axes=[0], keepdims=1)), 3)
    return Spec(g.model(y), [(8, 1)], {b: "batch"}, mixing="ReduceMean")


@case("Softmax", "Gemm")
def c_softmax_over_batch_is_reported():
    g = G(13, (5,))
    a = g.gemm(g.x, 6)
    b = g.gemm(g.op("Relu", a), 6)
    y = g.gemm(g.op("Softmax", b, axis=0), 3)
    return Spec(g.model(y), [(6, 1), (6, 1)], mixing="Softmax")


@case("MatMul")
def c_matmul_w_at_x_contracting_batch_is_reported():
    g = G(13, (5,), batch=2)
    a = g.gemm(g.x, 6)
    y = g.gemm(g.matmul(g.op("Relu", a), 3, left=True), 4)
    return Spec(g.model(y), [], {a: "batch"}, mixing="MatMul")


@case("Concat")
def c_concat_on_batch_is_reported():
    g = G(13)
    a, b = g.conv(g.x, 8), g.conv(g.x, 8)
    y = g.conv(g.op("Concat", a, b, axis=0), 3)
    return Spec(g.model(y), [(8, 1)], mixing="Concat")


@case("Slice")
def c_slice_on_batch_is_reported():
    g = G(13)
    a = g.conv(g.x, 8)
    h = g.op("Slice", g.op("Relu", a), g.ints([1]), g.ints([INT64_MAX]), g.ints([0]))
    return Spec(g.model(g.conv(h, 3)), [(8, 1)], mixing="Slice")


# ============================================================================ the tests

def _source_group(analysis: Analysis, name: str):
    found = [g for g in analysis.groups if name in g.sources]
    assert found, f"no group has source '{name}': {[g.sources for g in analysis.groups]}"
    return found[0]


def _describe(analysis: Analysis) -> str:
    return "\n".join(f"  group {g.id}: units={g.units} size={g.unit_size} prunable={g.prunable} "
                     f"reason={g.reason!r} sources={g.sources}" for g in analysis.groups)


@pytest.mark.parametrize("c", [
    pytest.param(c, id=c.id,
                 marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
    for c in CASES])
def test_op(c: Case):
    spec = c.build()
    ops = {n.op_type for n in spec.model.graph.node}
    assert set(c.ops) <= ops, f"case does not contain {set(c.ops) - ops}"
    graph = normalize(spec.model)
    assert set(c.ops) <= {n.op for n in graph.nodes}, "normalize removed the op under test"
    analysis = analyze(graph)
    got = sorted((g.units, g.unit_size) for g in analysis.prunable)
    assert got == sorted(spec.prunable), "prunable groups differ:\n" + _describe(analysis)
    for source, word in spec.blocked.items():
        group = _source_group(analysis, source)
        assert not group.prunable, f"'{source}' should be blocked:\n" + _describe(analysis)
        reason = (group.reason or "").lower()
        assert any(w.lower() in reason for w in word.split("|")), _describe(analysis)
    if spec.mixing:
        assert any(spec.mixing in m for m in analysis.batch_mixing), analysis.batch_mixing
    if spec.exact and spec.prunable:
        check_masked_equals_pruned(spec.model, seed=0, trials=2, batch=2)
        # flagged models (reported mixing, or an op not known to keep samples apart) are
        # scored one coalition per run; all others must keep per-sample coalitions apart
        if not analysis.batch_mixing:
            check_per_sample_masks(spec.model, analysis)


@pytest.mark.parametrize("build", [c_matmul_x_at_w, c_matmul_w_at_x])
def test_matmul_chain_compensation_is_exact(build):
    """A MatMul that both reads and produces pruned channels, with mean compensation: the
    fold moves its output behind an Add, and its weight's output columns must still be cut
    (issue 14a: they were not, 'Incompatible dimensions' at the compensation Add)."""
    check_masked_equals_pruned(build().model, trials=2, batch=2, compensate=True)


def check_per_sample_masks(model: onnx.ModelProto, analysis: Analysis, seed: int = 0) -> None:
    """Each sample of a batch carries its own coalition (instrument.py): the masked model on
    two samples with two masks equals the masked model on each sample alone. An op that mixes
    the batch downstream of a mask site breaks this. Skipped when the batch is fixed."""
    sess = session(to_proto(instrument(analysis), ModelIdentity.of(model)))
    masks = {mask_name(g.id) for g in analysis.prunable}
    if any(not isinstance(i.shape[0], str) for i in sess.get_inputs()
           if i.name not in masks and i.shape):
        return
    rng = np.random.default_rng(seed)
    feeds = random_feeds(sess, rng, 2, skip=tuple(masks))
    for g in analysis.prunable:
        m = (rng.random((2, g.units)) < 0.5).astype(np.float32)
        m[:, 0] = 1
        feeds[mask_name(g.id)] = m
    together = sess.run(None, feeds)
    for i in range(2):
        alone = sess.run(None, {k: v[i:i + 1] for k, v in feeds.items()})
        for out, t, a in zip(sess.get_outputs(), together, alone):
            if out.shape and isinstance(out.shape[0], str):  # outputs with the batch on axis 0
                np.testing.assert_allclose(t[i:i + 1], a, rtol=1e-4,
                                           atol=1e-5 * max(float(np.abs(t).max()), 1e-6))


def test_every_handler_has_a_test():
    covered = {op for c in CASES for op in c.ops}
    missing = sorted(set(analysis_ops()) - covered)
    assert not missing, f"handlers without a case in test_ops.py: {missing}"



# ============================================================================ malformed nodes
# Nodes that onnx's light checker lets through but that contradict their weights or the
# shapes (issue 8): the handler must make the channels it sees a barrier with a reason,
# never crash. (The loader refuses most such models before analysis, by strict shape
# inference; the handlers are the second line, e.g. for shapes inference cannot see.)

def _set_attr(model: onnx.ModelProto, output: str, name: str, value) -> onnx.ModelProto:
    node = next(n for n in model.graph.node if output in n.output)
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))
    return model


def _reshape_init(model: onnx.ModelProto, name: str, dims: list[int]) -> onnx.ModelProto:
    t = next(t for t in model.graph.initializer if t.name == name)
    del t.dims[:]
    t.dims.extend(dims)
    return model


def _node_input(model: onnx.ModelProto, output: str, index: int) -> str:
    return next(n for n in model.graph.node if output in n.output).input[index]


def _replace_init(model: onnx.ModelProto, name: str, values) -> onnx.ModelProto:
    t = next(t for t in model.graph.initializer if t.name == name)
    t.CopyFrom(onnx.numpy_helper.from_array(np.asarray(values, dtype=onnx.helper.tensor_dtype_to_np_dtype(
        t.data_type)), name))
    return model


def _op_input(model: onnx.ModelProto, op: str, index: int) -> str:
    return next(n for n in model.graph.node if n.op_type == op).input[index]


def m_conv_1d_weight():
    g, a, y = sandwich(13, lambda g, h: g.op("Relu", h))
    m = g.model(y)
    return _reshape_init(m, _node_input(m, y, 1), [3 * 8]), a, "rank 1"


def m_conv_group_does_not_divide():
    g, a, y = sandwich(13, lambda g, h: g.op("Relu", h))
    return _set_attr(g.model(y), a, "group", 3), a, "does not divide its 8 filters"


def m_conv_reads_other_width():
    g, a, y = sandwich(13, lambda g, h: g.op("Relu", h))
    m = g.model(y)
    return _reshape_init(m, _node_input(m, y, 1), [3, 4, 2, 1]), a, "reads 8 channels"


def m_conv_bias_of_other_length():
    g, a, y = sandwich(13, lambda g, h: g.op("Relu", h))
    m = g.model(y)
    return _reshape_init(m, _node_input(m, a, 2), [2, 4]), a, "bias"


def m_batchnorm_param_not_a_vector():
    g, a, y = sandwich(13, lambda g, h: g.bn(h))
    m = g.model(y)
    return _reshape_init(m, _op_input(m, "BatchNormalization", 1), [8, 1]), a, "not a constant vector"


def m_transpose_perm_not_a_permutation():
    g, a, y = sandwich(13, lambda g, h: g.op("Transpose", h, perm=[0, 1, 2, 3]))
    m = g.model(y)
    return _set_attr(m, _op_input(m, "Conv", 0) and next(
        n.output[0] for n in m.graph.node if n.op_type == "Transpose"), "perm", [0, 1, 1, 3]), a, "perm"


def m_split_negative_sizes():
    def middle(g, h):
        p, q = g.op("Split", h, g.ints([4, 4]), axis=1, outputs=2)
        return g.op("Concat", q, p, axis=1)
    g, a, y = sandwich(13, middle)
    m = g.model(y)
    return _replace_init(m, _op_input(m, "Split", 1), [10, -2]), a, "split sizes"


def m_slice_bounds_of_other_lengths():
    g, a, y = sandwich(13, lambda g, h: g.op("Slice", h, g.ints([0]), g.ints([4]), g.ints([1])))
    m = g.model(y)
    return _replace_init(m, _op_input(m, "Slice", 1), [0, 0]), a, "slice"


def m_pad_of_other_length():
    g, a, y = sandwich(13, lambda g, h: g.op("Pad", h, g.ints([0, 0, 1, 1, 0, 0, 1, 1])))
    m = g.model(y)
    return _replace_init(m, _op_input(m, "Pad", 1), [0, 0, 1, 1, 0, 0]), a, "pad"


def m_reshape_target_is_a_matrix():
    g = G(13, (4, 3, 3))
    a = g.conv(g.x, 4)
    y = g.gemm(g.op("Reshape", a, g.ints([0, -1])), 5)
    m = g.model(y)
    return _replace_init(m, _op_input(m, "Reshape", 1), [[0, -1]]), a, "1-d integer"


def m_gemm_weight_of_other_width():
    g = G(13, (4, 3, 3))
    a = g.conv(g.x, 8)
    y = g.gemm(g.gap_flatten(a), 3)
    m = g.model(y)
    return _reshape_init(m, _op_input(m, "Gemm", 1), [6, 4]), a, "gemm"


def m_matmul_contracts_other_width():
    g = G(13, (6, 8), batch=2)
    a = g.matmul(g.x, 8)
    y = g.matmul(g.op("Relu", a), 3)
    m = g.model(y)
    return _reshape_init(m, _node_input(m, y, 1), [4, 6]), a, "matmul"


def m_concat_axis_out_of_range():
    """(with the output's shape declared, as an exporter writes it: inference fails on the node)"""
    g, a, y = sandwich(13, lambda g, h: g.op("Concat", h, h, axis=1))
    m = g.model(y)
    out = next(n.output[0] for n in m.graph.node if n.op_type == "Concat")
    m.graph.value_info.append(helper.make_tensor_value_info(out, TensorProto.FLOAT,
                                                            ["N", 16, 6, 6]))
    return _set_attr(m, out, "axis", 7), a, "axis out of range"


def m_unsqueeze_axes_out_of_range():
    g, a, y = sandwich(13, lambda g, h: g.op("Squeeze", g.op("Unsqueeze", h, g.ints([0])),
                                             g.ints([0])))
    m = g.model(y)
    return _replace_init(m, _op_input(m, "Unsqueeze", 1), [9]), a, "unsqueeze"


def m_reduce_axes_out_of_range():
    g, a, y = sandwich(18, lambda g, h: g.op("ReduceMean", h, g.ints([2])))
    m = g.model(y)
    return _replace_init(m, _op_input(m, "ReduceMean", 1), [7]), a, "axes out of range"


def m_resize_scales_of_other_length():
    g, a, y = sandwich(13, lambda g, h: g.op("Resize", h, None, g.floats([1, 1, 2, 2]),
                                             mode="nearest"))
    m = g.model(y)
    return _replace_init(m, _op_input(m, "Resize", 2), [1, 1, 2]), a, "resize"


def m_declared_shape_contradicts_weights():
    """A producer's declared output shape (value_info) says 6 channels, its weight makes 8:
    the analysis does not follow channels that the shapes contradict (analyze.set_map)."""
    g, a, y = sandwich(13, lambda g, h: g.op("Relu", h))
    m = g.model(y)
    m.graph.value_info.append(helper.make_tensor_value_info(a, TensorProto.FLOAT, ["N", 6, 6, 6]))
    return m, a, "6 positions on axis 1"


MALFORMED = {name.removeprefix("m_"): fn for name, fn in globals().items()
             if name.startswith("m_") and callable(fn)}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_node_is_a_barrier(name):
    model, source, word = MALFORMED[name]()
    onnx.checker.check_model(model)  # what the light checker accepts
    analysis = analyze(normalize(model))  # no traceback
    group = _source_group(analysis, source)
    assert not group.prunable and word.lower() in (group.reason or "").lower(), \
        _describe(analysis)


def test_unflatten_cast_target_keeps_samples_apart():
    """Issue 17 Q: the run-time target [0, H, W, C] copies the batch dim (no false alarm)."""
    analysis = analyze(normalize(_unflatten_cast(8).model))
    assert not analysis.batch_mixing, analysis.batch_mixing
