"""Issue 17 Q: per-sample computations exporters write that a per-op rule took for batch
mixing (compiler/batchaxis.py follows the batch axis through them). Each idiom: the analysis
reports no mixing, and through ONNX Runtime perturbing sample 0 leaves every other sample's
outputs identical; a near miss that does mix samples stays reported (fail closed)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exactness import session
from onnxprune.compiler.analyze import analyze
from onnxprune.compiler.normalize import normalize

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _c(name, value, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _dims(x: str) -> list:
    """b, s: scalar batch size and length of x; b1, s1: the same as 1-D."""
    return [helper.make_node("Shape", [x], ["shp"]),
            helper.make_node("Gather", ["shp", "zero"], ["b"], axis=0),
            helper.make_node("Gather", ["shp", "one"], ["s"], axis=0),
            helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
            helper.make_node("Unsqueeze", ["s", "ax0"], ["s1"])]


DIM_INITS = [_c("zero", 0), _c("one", 1), _c("ax0", [0]), _c("ax1", [1]), _c("axm1", [-1])]


def _mixing(model: onnx.ModelProto) -> list[str]:
    return analyze(normalize(model)).batch_mixing


def _samples_apart(model: onnx.ModelProto, feeds: dict) -> bool:
    """Perturbing sample 0 of every input leaves samples 1.. of every output unchanged."""
    sess = session(model)
    before = sess.run(None, feeds)
    changed = {k: v.copy() for k, v in feeds.items()}
    for v in changed.values():
        v[0] = (1 - v[0]) if v.dtype == np.int64 else v[0] * 3 + 1
    after = sess.run(None, changed)
    return all(np.array_equal(a[1:], b[1:]) for a, b in zip(before, after))


def _conv1d(restore: list[str], hidden_site: bool = False) -> onnx.ModelProto:
    """GPT-2's Conv1D: x.view(-1, C) -> Gemm -> view(B, S, C') by a run-time target."""
    rng = np.random.default_rng(0)
    nodes = _dims("x") + [
        helper.make_node("Reshape", ["x", "flat"], ["x2"]),
        helper.make_node("Gemm", ["x2", "w1", "b1w"], ["h"])]
    if hidden_site:  # a second Gemm on the merged rows: a mask site there
        nodes += [helper.make_node("Relu", ["h"], ["hr"]), helper.make_node("Gemm", ["hr", "w2", "b2w"], ["h2"])]
    last = "h2" if hidden_site else "h"
    width = 3 if hidden_site else 6
    nodes += [helper.make_node("Concat", restore + [f"c{width}"], ["tgt"], axis=0),
              helper.make_node("Reshape", [last, "tgt"], ["y0"])]
    if not hidden_site:
        nodes += [helper.make_node("Relu", ["y0"], ["y1"]), helper.make_node("MatMul", ["y1", "w3"], ["y"])]
    else:
        nodes += [helper.make_node("Identity", ["y0"], ["y"])]
    inits = DIM_INITS + [_c("flat", [-1, 4]), _c("c6", [6]), _c("c3", [3]),
                         _c("w1", rng.standard_normal((4, 6)), np.float32), _c("b1w", rng.standard_normal(6), np.float32),
                         _c("w2", rng.standard_normal((6, 3)), np.float32), _c("b2w", rng.standard_normal(3), np.float32),
                         _c("w3", rng.standard_normal((6, 3)), np.float32)]
    x = helper.make_tensor_value_info("x", F, ["batch", "seq", 4])
    return _model(nodes, [x], [helper.make_tensor_value_info("y", F, None)], inits)


def test_conv1d_merge_and_restore_keeps_samples_apart():
    model = _conv1d(["b1", "s1"])
    assert not _mixing(model), _mixing(model)
    x = np.random.default_rng(1).standard_normal((3, 5, 4)).astype(np.float32)
    assert _samples_apart(model, {"x": x})


def test_conv1d_restore_to_other_split_is_mixing():
    """[S, B, C'] instead of [B, S, C']: rows of different samples share an output row."""
    model = _conv1d(["s1", "b1"])
    assert any("Reshape" in m for m in _mixing(model)), _mixing(model)
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    assert not _samples_apart(model, {"x": x})


def test_mask_site_on_merged_rows_is_reported():
    """A consumer of the merged rows is a mask site: a mask [N, units] cannot be applied per
    sample there, so per-sample coalitions stay off (fail closed)."""
    found = _mixing(_conv1d(["b1", "s1"], hidden_site=True))
    assert any(m.startswith("mask site") for m in found), found


def _mask_gather(scaled: bool) -> onnx.ModelProto:
    """HF's mask builder: Flatten(mask) [B*S, 1] gathered at b * S + s."""
    nodes = _dims("mask") + [
        helper.make_node("Cast", ["mask"], ["mf"], to=F),
        helper.make_node("Flatten", ["mf"], ["flat"], axis=2),
        helper.make_node("Range", ["zero", "b", "one"], ["rb"]),
        helper.make_node("Range", ["zero", "s", "one"], ["rs"]),
        helper.make_node("Unsqueeze", ["rb", "ax1"], ["rb2"]),
        helper.make_node("Unsqueeze", ["rs", "ax0"], ["rs2"]),
        helper.make_node("Mul" if scaled else "Identity", ["rb2", "s"] if scaled else ["rb2"], ["row"]),
        helper.make_node("Add", ["row", "rs2"], ["idx"]),
        helper.make_node("Gather", ["flat", "idx"], ["y"], axis=0)]
    mask = helper.make_tensor_value_info("mask", I64, ["batch", "seq"])
    return _model(nodes, [mask], [helper.make_tensor_value_info("y", F, None)], DIM_INITS)


def test_mask_gather_at_b_times_s_plus_s_keeps_samples_apart():
    model = _mask_gather(scaled=True)
    assert not _mixing(model), _mixing(model)
    mask = np.random.default_rng(2).integers(0, 2, (3, 5)).astype(np.int64)
    assert _samples_apart(model, {"mask": mask})


def test_mask_gather_without_the_row_scale_is_mixing():
    model = _mask_gather(scaled=False)  # b + s: row 1 reads sample 0's positions
    assert any("Gather" in m for m in _mixing(model)), _mixing(model)
    assert not _samples_apart(model, {"mask": np.ones((3, 5), np.int64)})


def _gather_nd(b_first: bool) -> onnx.ModelProto:
    """Dynamo's mask gather: GatherND(mask, [b, s] per position)."""
    nodes = _dims("mask") + [
        helper.make_node("Concat", ["b1", "s1"], ["bs"], axis=0),
        helper.make_node("Range", ["zero", "b", "one"], ["rb"]),
        helper.make_node("Range", ["zero", "s", "one"], ["rs"]),
        helper.make_node("Unsqueeze", ["rb", "ax1"], ["rb2"]),
        helper.make_node("Unsqueeze", ["rs", "ax0"], ["rs2"]),
        helper.make_node("Expand", ["rb2", "bs"], ["eb"]),
        helper.make_node("Expand", ["rs2", "bs"], ["es"]),
        helper.make_node("Unsqueeze", ["eb", "axm1"], ["ib"]),
        helper.make_node("Unsqueeze", ["es", "axm1"], ["is"]),
        helper.make_node("Concat", ["ib", "is"] if b_first else ["is", "ib"], ["idx"], axis=-1),
        helper.make_node("GatherND", ["mask", "idx"], ["y"])]
    mask = helper.make_tensor_value_info("mask", I64, ["batch", "seq"])
    return _model(nodes, [mask], [helper.make_tensor_value_info("y", I64, None)], DIM_INITS)


def test_gather_nd_at_own_row_keeps_samples_apart():
    model = _gather_nd(b_first=True)
    assert not _mixing(model), _mixing(model)
    mask = np.random.default_rng(3).integers(0, 2, (3, 4)).astype(np.int64)
    assert _samples_apart(model, {"mask": mask})


def test_gather_nd_with_swapped_index_is_mixing():
    model = _gather_nd(b_first=False)  # mask[s, b]: a transpose
    assert any("GatherND" in m for m in _mixing(model)), _mixing(model)
    assert not _samples_apart(model, {"mask": np.zeros((3, 3), np.int64)})


@pytest.mark.parametrize("axis,mixes", [(1, False), (-1, False), (0, True)])
def test_cumsum_mixes_only_along_the_batch(axis, mixes):
    """RoBERTa's position ids: cumsum(mask, dim=1)."""
    model = _model([helper.make_node("CumSum", ["mask", "ax"], ["y"])],
                   [helper.make_tensor_value_info("mask", I64, ["batch", "seq"])],
                   [helper.make_tensor_value_info("y", I64, None)], [_c("ax", axis)])
    assert bool(_mixing(model)) == mixes, _mixing(model)
    mask = np.random.default_rng(4).integers(0, 2, (3, 5)).astype(np.int64)
    assert _samples_apart(model, {"mask": mask}) == (not mixes)


def test_gather_elements_in_an_expanded_buffer_keeps_samples_apart():
    """RoBERTa's position-id lookup: a [1, L] buffer expanded to the batch, indexed per sample."""
    nodes = _dims("ids") + [
        helper.make_node("Concat", ["b1", "width"], ["shape"], axis=0),
        helper.make_node("Expand", ["table", "shape"], ["tab"]),
        helper.make_node("GatherElements", ["tab", "ids"], ["y"], axis=1)]
    inits = DIM_INITS + [_c("width", [10]), _c("table", np.arange(10)[None] * 7)]
    model = _model(nodes, [helper.make_tensor_value_info("ids", I64, ["batch", "seq"])],
                   [helper.make_tensor_value_info("y", I64, None)], inits)
    assert not _mixing(model), _mixing(model)
    ids = np.random.default_rng(5).integers(0, 9, (3, 5)).astype(np.int64)
    assert _samples_apart(model, {"ids": ids})


def test_reshape_minus_one_zero_keeps_samples_apart():
    """GPT-2's input_ids.view(-1, S) as Reshape [-1, 0]."""
    model = _model([helper.make_node("Reshape", ["ids", "t"], ["y"])],
                   [helper.make_tensor_value_info("ids", I64, ["batch", "seq"])],
                   [helper.make_tensor_value_info("y", I64, None)], [_c("t", [-1, 0])])
    assert not _mixing(model), _mixing(model)
    assert _samples_apart(model, {"ids": np.arange(15, dtype=np.int64).reshape(3, 5)})


def test_merged_rows_of_rank_one_are_still_checked():
    """x.view(-1) -> Softmax over it -> view(B, S): the Softmax spans every sample's rows."""
    nodes = _dims("x") + [
        helper.make_node("Reshape", ["x", "flat"], ["v"]),
        helper.make_node("Softmax", ["v"], ["p"], axis=0),
        helper.make_node("Concat", ["b1", "s1"], ["bs"], axis=0),
        helper.make_node("Reshape", ["p", "bs"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, ["batch", "seq"])],
                   [helper.make_tensor_value_info("y", F, None)], DIM_INITS + [_c("flat", [-1])])
    assert any("Softmax" in m for m in _mixing(model)), _mixing(model)
    x = np.random.default_rng(6).standard_normal((3, 4)).astype(np.float32)
    assert not _samples_apart(model, {"x": x})
