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


def _samples_apart(model: onnx.ModelProto, feeds: dict, axis: int = 0) -> bool:
    """Perturbing sample 0 of every input leaves samples 1.. (on `axis`) of every output unchanged."""
    sess = session(model)
    before = sess.run(None, feeds)
    changed = {k: v.copy() for k, v in feeds.items()}
    for v in changed.values():
        v[0] = (1 - v[0]) if v.dtype == np.int64 else v[0] * 3 + 1
    after = sess.run(None, changed)
    return all(np.array_equal(np.moveaxis(a, axis, 0)[1:], np.moveaxis(b, axis, 0)[1:])
               for a, b in zip(before, after))


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


@pytest.mark.parametrize("compensate", [False, True])
def test_mask_site_on_merged_rows_is_masked_per_sample(compensate):
    """A consumer of the merged rows is a mask site: instrument.py groups the rows per sample
    ([N, S, C]) around the mask, so per-sample masks equal single-sample runs, with and
    without compensation, and masked == pruned."""
    from exactness import check_masked_equals_pruned
    from onnxprune.compiler.graph import ModelIdentity, to_proto
    from onnxprune.compiler.instrument import instrument, mask_name
    model = _conv1d(["b1", "s1"], hidden_site=True)
    assert not _mixing(model), _mixing(model)
    analysis = check_masked_equals_pruned(model, trials=3, batch=3, compensate=compensate)
    (group,) = analysis.prunable
    site = next(s for s in analysis.sites if s.tensor == "hr")
    means = {site.tensor: np.linspace(-1, 1, len(site.ids))} if compensate else None
    sess = session(to_proto(instrument(analysis, means=means), ModelIdentity.of(model)))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    masks = (rng.random((3, group.units)) < 0.5).astype(np.float32)
    both = sess.run(None, {"x": x, mask_name(group.id): masks})[0]
    for i in range(3):
        one = sess.run(None, {"x": x[i:i + 1], mask_name(group.id): masks[i:i + 1]})[0]
        np.testing.assert_allclose(both[i:i + 1], one, rtol=1e-5, atol=1e-6)
    # one coalition (a mask of batch 1) for every sample: the mixing path's feed
    shared = sess.run(None, {"x": x, mask_name(group.id): masks[:1]})[0]
    np.testing.assert_allclose(shared[:1], both[:1], rtol=1e-5, atol=1e-6)


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


# -- sequence-first recurrent layers: the batch on axis 1 (compiler/seqaxis.py) -------------
def _crnn(restore: tuple[str, str] = ("t1", "b1"), head: str = "MatMul", layout: int = 0) -> onnx.ModelProto:
    """A CRNN as torch.onnx.export writes it with a dynamic batch: image [N, 1, 4, W] ->
    Conv -> Relu -> Conv -> Transpose(3, 0, 1, 2) [W, N, C, H] -> Reshape [T, b, C*H] from
    Shape -> LSTM (bidirectional, sequence first) -> Transpose(0, 2, 1, 3) -> Reshape [0, 0, -1]
    -> `view(T * b, 2H)` -> MatMul (or Softmax over `head`'s axis) -> `view(T, b, -1)`.
    `layout` 1: the LSTM reads [N, T, C] (batch first all along)."""
    rng = np.random.default_rng(0)
    c, hid = 4, 3
    w = lambda *s: _c("w%d" % len(inits), rng.standard_normal(s) * 0.5, np.float32)  # noqa: E731
    inits = []
    for shape in ((c, 1, 3, 3), (c,), (c, c, 3, 3), (c,), (2, 4 * hid, 2 * c), (2, 4 * hid, hid),
                  (2, 8 * hid), (2 * hid, 5)):
        inits.append(w(*shape))
    to_seq = [3, 0, 1, 2] if layout == 0 else [0, 3, 1, 2]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "w1"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w2", "w3"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 1]),
        helper.make_node("Transpose", ["c1"], ["seq"], perm=to_seq),
        helper.make_node("Shape", ["seq"], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["d0"], axis=0),
        helper.make_node("Gather", ["shp", "one"], ["d1"], axis=0),
        helper.make_node("Unsqueeze", ["d0", "ax0"], ["d0v"]),
        helper.make_node("Unsqueeze", ["d1", "ax0"], ["d1v"]),
        helper.make_node("Concat", ["d0v", "d1v", "ch"], ["tgt"], axis=0),
        helper.make_node("Reshape", ["seq", "tgt"], ["feat"]),
        helper.make_node("LSTM", ["feat", "w4", "w5", "w6"], ["y", "yh", "yc"], direction="bidirectional",
                         hidden_size=hid, layout=layout),
        helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3] if layout == 0 else [0, 1, 2, 3]),
        helper.make_node("Reshape", ["yt", "keep2"], ["ys"]),
        helper.make_node("Shape", ["ys"], ["shp2"]),
        helper.make_node("Gather", ["shp2", "zero"], ["t"], axis=0),
        helper.make_node("Gather", ["shp2", "one"], ["b"], axis=0),
        helper.make_node("Mul", ["t", "b"], ["tb"]),
        helper.make_node("Unsqueeze", ["tb", "ax0"], ["tb1"]),
        helper.make_node("Unsqueeze", ["t", "ax0"], ["t1"]),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
        helper.make_node("Concat", ["tb1", "h2"], ["flat_t"], axis=0),
        helper.make_node("Reshape", ["ys", "flat_t"], ["rows"])]
    nodes.append(helper.make_node("MatMul", ["rows", "w7"], ["logits"]) if head == "MatMul" else
                 helper.make_node("Softmax", ["rows"], ["logits"], axis=0))
    nodes += [helper.make_node("Concat", [*restore, "axm1"], ["out_t"], axis=0),
              helper.make_node("Reshape", ["logits", "out_t"], ["out"])]
    inits += DIM_INITS + [_c("ch", [2 * c]), _c("keep2", [0, 0, -1]), _c("h2", [2 * hid])]
    x = helper.make_tensor_value_info("x", F, ["N", 1, 4, "W"])
    return _model(nodes, [x], [helper.make_tensor_value_info("out", F, None)], inits)


def _image(n: int = 3, w: int = 6) -> np.ndarray:
    return np.random.default_rng(4).standard_normal((n, 1, 4, w)).astype(np.float32)


@pytest.mark.parametrize("layout", [0, 1])
def test_sequence_first_lstm_keeps_samples_apart(layout):
    model = _crnn(layout=layout)
    assert not _mixing(model), _mixing(model)
    if layout == 0:  # ONNX Runtime's CPU LSTM refuses layout 1: the analysis only
        assert _samples_apart(model, {"x": _image()}, axis=1)


@pytest.mark.parametrize("restore,head,culprit", [
    (("b1", "t1"), "MatMul", "Reshape"),   # rows of sample b split as if batch-major
    (("t1", "b1"), "Softmax", "Softmax"),  # over the merged T x N rows
])
def test_sequence_first_near_misses_are_mixing(restore, head, culprit):
    model = _crnn(restore, head)
    assert any(m.startswith(culprit) for m in _mixing(model)), _mixing(model)
    if head == "Softmax":
        assert not _samples_apart(model, {"x": _image()}, axis=1)


def test_sequence_first_lstm_with_a_batch_first_initial_state_is_mixing():
    """initial_h [N, D, H] read by a layout-0 LSTM, which takes its axis 1 as the batch."""
    model = _crnn()
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    at = list(model.graph.node).index(lstm)
    model.graph.node.insert(at, helper.make_node("Reshape", ["h0", "h0shape"], ["h0r"]))
    model.graph.node.insert(at, helper.make_node("ReduceMean", ["c1"], ["h0"], axes=[1, 2], keepdims=0))
    model.graph.initializer.append(_c("h0shape", [0, 2, 3]))  # [N, W] -> [N, 2, 3] at W = 6
    lstm.input.extend(["", "h0r"])
    assert any(m.startswith("LSTM") for m in _mixing(model)), _mixing(model)
    assert not _samples_apart(model, {"x": _image(2)}, axis=1)  # N = D = 2 for ORT's shape check


def test_sequence_first_masked_values_equal_single_sample_runs():
    """Per-sample coalitions through the engine (K x N mask rows, outputs read on axis 1)
    equal one run per sample of the instrumented model, and masked == pruned."""
    from exactness import check_masked_equals_pruned
    from onnxprune.calib import Calibration
    from onnxprune.compiler.graph import to_proto
    from onnxprune.compiler.instrument import instrument, mask_name
    from onnxprune.model import analyze_model
    from onnxprune.scoring.engine import Engine
    from test_engine import Probe
    model = _crnn()
    check_masked_equals_pruned(model, trials=3, batch=3)
    am = analyze_model(model)
    assert not am.analysis.batch_mixing and am.analysis.prunable
    x = _image(4)
    engine = Engine(am, Calibration({"x": x}), Probe())
    assert engine.out_axes == [1]
    gid = am.analysis.prunable[0].id
    units = am.analysis.group(gid).units
    coal = np.random.default_rng(5).random((3, 4, units)) < 0.5
    got = engine.values(gid, coal)
    sess = session(to_proto(instrument(am.analysis, [gid]), am.ident))
    want = np.empty_like(got)
    for k in range(3):
        for i in range(4):
            out = sess.run(None, {"x": x[i:i + 1], mask_name(gid): coal[k, i][None].astype(np.float32)})[0]
            want[k, i] = engine.value_fn([np.moveaxis(out, 1, 0)[None]])[0, 0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("file", ["hf_gpt2.onnx", "hf_gpt2_dynamo.onnx"])
def test_gpt2_conv1d_sites_take_per_sample_masks(file):
    """GPT-2's Conv1D sites (x.view(-1, C)): per-sample masks on every group, with
    compensation, give each sample of a batch what it gets alone."""
    from pathlib import Path
    from onnxprune.compiler.graph import ModelIdentity, to_proto
    from onnxprune.compiler.instrument import instrument, mask_name
    from onnxprune.load import load_model
    model = load_model(Path(__file__).resolve().parent.parent / "models/zoo" / file)
    analysis = analyze(normalize(model))
    assert not analysis.batch_mixing, analysis.batch_mixing
    rng = np.random.default_rng(0)
    means = {s.tensor: rng.standard_normal(len(s.ids)) for s in analysis.sites}
    sess = session(to_proto(instrument(analysis, means=means), ModelIdentity.of(model)))
    feeds = {}
    for i in sess.get_inputs():
        if i.name.startswith("onnxprune_mask_"):
            continue
        shape = [3, *[d if isinstance(d, int) else 5 for d in i.shape[1:]]]
        feeds[i.name] = rng.integers(1, 4, shape).astype(np.int64) if "int" in i.type else \
            rng.standard_normal(shape).astype(np.float32)
    for g in analysis.prunable:
        feeds[mask_name(g.id)] = (rng.random((3, g.units)) < 0.5).astype(np.float32)
    both = sess.run(None, feeds)
    for i in range(3):
        one = sess.run(None, {k: v[i:i + 1] for k, v in feeds.items()})
        for a, b in zip(both, one):
            np.testing.assert_allclose(a[i:i + 1], b, rtol=1e-4, atol=1e-4 * np.abs(a).max())


def test_gpt2_engine_per_sample_values_equal_single_sample_runs():
    """The engine's per-sample coalitions (K x N mask rows, cached prefix) on GPT-2's merged
    rows give each sample the value of its own single-sample run."""
    from pathlib import Path
    from onnxprune.compiler.graph import to_proto
    from onnxprune.compiler.instrument import instrument, mask_name
    from onnxprune.load import load_model
    from onnxprune.model import analyze_model
    from onnxprune.scoring.engine import Engine
    from test_engine import Probe, calibration
    am = analyze_model(load_model(Path(__file__).resolve().parent.parent / "models/zoo/hf_gpt2.onnx"))
    calib = calibration(am, n=3)
    engine = Engine(am, calib, Probe())
    assert not engine.mixing
    group = am.analysis.prunable[-1]
    coal = np.random.default_rng(1).random((2, 3, group.units)) < 0.5
    got = engine.values(group.id, coal)
    sess = session(to_proto(instrument(am.analysis, [group.id]), am.ident))
    for i in range(3):
        engine.value_fn.prepare([r[i:i + 1] for r in engine.reference], None)
        for k in range(2):
            feeds = {n: v[i:i + 1] for n, v in calib.inputs.items()}
            outs = sess.run(None, {**feeds, mask_name(group.id): coal[k, i][None].astype(np.float32)})
            want = engine.value_fn([np.moveaxis(o, a, 0)[None] for o, a in zip(outs, engine.out_axes)])
            np.testing.assert_allclose(got[k, i], want[0, 0], rtol=1e-5, atol=1e-5 * abs(want[0, 0]))
