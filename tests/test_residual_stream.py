"""Issue 17 F: a pre-LayerNorm decoder's residual stream starts at the embedding lookup, which
the analysis does not follow; the channels that each block adds into it (attention and MLP
output projections) stay whole, and the reason names the LayerNorm that normalizes the
stream: that is the exact-by-necessity LayerNorm barrier, not a gap (tracked or not, the
stream and what joins it are one width, and the LayerNorm's statistics run over all of it)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exactness import check_masked_equals_pruned
from onnxprune.compiler.analyze import analyze
from onnxprune.compiler.normalize import normalize


def _c(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _pre_ln_block(decomposed: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    if decomposed:  # legacy exporters before opset 17: x - mean(x), ...
        norm = [helper.make_node("ReduceMean", ["h"], ["mu"], axes=[-1]),
                helper.make_node("Sub", ["h", "mu"], ["d"]),
                helper.make_node("Mul", ["d", "d"], ["d2"]),
                helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
                helper.make_node("Add", ["var", "eps"], ["ve"]),
                helper.make_node("Sqrt", ["ve"], ["sd"]),
                helper.make_node("Div", ["d", "sd"], ["y"])]
    else:
        norm = [helper.make_node("LayerNormalization", ["h", "g", "bt"], ["y"], axis=-1)]
    nodes = [helper.make_node("Gather", ["wte", "ids"], ["e"]),
             helper.make_node("MatMul", ["e", "w1"], ["m1"]),
             helper.make_node("Relu", ["m1"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["m2"], name="c_proj"),
             helper.make_node("Add", ["e", "m2"], ["h"], name="residual")] + norm
    inits = [_c("wte", w(20, 8)), _c("w1", w(8, 16)), _c("w2", w(16, 8)), _c("eps", np.float32(1e-5)),
             _c("g", w(8)), _c("bt", w(8))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("decomposed", [False, True])
def test_channels_joining_a_normalized_residual_stream_name_the_layernorm(decomposed):
    model = _pre_ln_block(decomposed)
    analysis = analyze(normalize(model))
    stream = [g for g in analysis.groups if g.units == 8]
    assert len(stream) == 1 and not stream[0].prunable
    assert "residual stream that a LayerNorm normalizes" in stream[0].reason, stream[0].reason
    assert "hidden width is a barrier" in stream[0].reason
    assert [(g.units, g.prunable) for g in analysis.groups if g.units == 16] == [(16, True)]
    check_masked_equals_pruned(model, trials=2, dim_sets=[{"b": 2, "s": 3}])
