"""Models exported with a literal batch of 1 are scored and pruned as their batch-symbolic twin
(scoring/fixedbatch.batch_twin) when it provably runs each sample as the model does."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.api import analyze_model, make_engine, prune
from onnxprune.calib import calibration_from_arrays, input_specs_from_model
from onnxprune.scoring.fixedbatch import BATCH_SYMBOL, batch_twin, literal_batch_one

from exactness import check_masked_equals_pruned, session

RNG = np.random.default_rng(0)
C, W, H = 6, 5, 4  # channels, sequence length (image width), LSTM hidden size


def _init(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.5, name)


def _model(nodes, inits, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def crnn() -> onnx.ModelProto:
    """Conv -> Relu -> Conv [1, C, 1, W] -> Transpose [W, 1, C, 1] -> Reshape [0, N, C] with N from
    Shape at run time (normalize folds it to a literal 1) -> LSTM -> Squeeze: [W, N, H], the
    batch on axis 1 as in the real CRNN's [T, N, C]."""
    consts = [numpy_helper.from_array(np.array(v, np.int64), n)
              for n, v in (("zero", [0]), ("one", 1), ("vec", [1]), ("cdim", [C]))]
    consts.append(numpy_helper.from_array(np.array([1], np.int64), "dir_axis"))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("Transpose", ["c2"], ["t"], perm=[3, 0, 1, 2]),
             helper.make_node("Shape", ["t"], ["s"]), helper.make_node("Gather", ["s", "one"], ["n"]),
             helper.make_node("Reshape", ["n", "vec"], ["n1"]),
             helper.make_node("Concat", ["zero", "n1", "cdim"], ["target"], axis=0),
             helper.make_node("Reshape", ["t", "target"], ["seq"]),
             helper.make_node("LSTM", ["seq", "lw", "lr"], ["ly"], hidden_size=H),
             helper.make_node("Squeeze", ["ly", "dir_axis"], ["y"])]
    inits = [_init("w1", 8, 3, 1, 1), _init("w2", C, 8, 1, 1), _init("lw", 1, 4 * H, C),
             _init("lr", 1, 4 * H, H), *consts]
    return _model(nodes, inits, [W, 1, H])


def plain_cnn() -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Flatten: a plain CNN exported with batch 1."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]), helper.make_node("Flatten", ["c2"], ["y"])]
    return _model(nodes, [_init("w1", 8, 3, 1, 1), _init("w2", C, 8, 1, 1)], [1, C * W])


def flattens_the_batch(target: tuple[int, ...] = (1, -1)) -> onnx.ModelProto:
    """... -> Reshape to a literal target with the traced batch in it ([1, -1]; Ultralytics'
    static YOLOv8 export: [1, 64, -1], [1, 4, 16, anchors])."""
    shape = numpy_helper.from_array(np.array(target, np.int64), "flat")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]), helper.make_node("Reshape", ["c2", "flat"], ["y"])]
    out = [1, C * W] if len(target) == 2 else [1, *target[1:]]
    return _model(nodes, [_init("w1", 8, 3, 1, 1), _init("w2", C, 8, 1, 1), shape], out)


def mixes_the_batch() -> onnx.ModelProto:
    """... -> ReduceMean over axis 0 (keepdims) -> Flatten: the output really depends on the
    batch being 1."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("ReduceMean", ["c2"], ["m"], axes=[0], keepdims=1),
             helper.make_node("Flatten", ["m"], ["y"])]
    return _model(nodes, [_init("w1", 8, 3, 1, 1), _init("w2", C, 8, 1, 1)], [1, C * W])


def _samples(n: int = 12) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((n, 3, 1, W)).astype(np.float32)}


def _single_runs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = session(model)
    return np.stack([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


@pytest.mark.parametrize("build", [crnn, plain_cnn])
def test_twin_runs_each_sample_as_the_model(build):
    model, x = build(), _samples(5)["x"]
    assert literal_batch_one(model)
    twin, why = batch_twin(model, {"x": x})
    assert twin is not None, why
    assert twin.graph.input[0].type.tensor_type.shape.dim[0].dim_param == BATCH_SYMBOL
    am = analyze_model(twin)
    assert not am.analysis.batch_mixing and am.analysis.prunable
    check_masked_equals_pruned(twin, batch=3)
    # one batched run of the twin: each sample's output is the model's own batch-1 run
    axis = 1 if build is crnn else 0  # where the samples are: [W, N, H] / [N, C * W]
    got = np.moveaxis(session(twin).run(None, {"x": x})[0], axis, 0)
    want = np.concatenate([np.moveaxis(w, axis, 0) for w in _single_runs(model, x)])
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


def test_crnn_batch_is_folded_without_the_twin():
    """Today's path on the source: normalize bakes the batch into the Reshape target, the
    batch-axis pass reports the mixing (so the twin is what makes per-sample coalitions)."""
    assert analyze_model(crnn()).analysis.batch_mixing


def test_twin_is_refused_when_the_model_depends_on_batch_one():
    twin, why = batch_twin(mixes_the_batch(), _samples(5))
    assert twin is None and "batch" in why


@pytest.mark.parametrize("target", [(1, -1), (1, C, 1, W)])
def test_twin_makes_literal_reshape_batches_follow_the_input(target):
    """A literal target's leading 1 is made 0 when the plain twin is refused (at batch 3 a
    [1, -1] target runs but mixes the samples, a [1, C, 1, W] one fails) and the batch-3 check
    then holds; each sample's output is the model's own."""
    model, x = flattens_the_batch(target), _samples(5)["x"]
    twin, why = batch_twin(model, {"x": x})
    assert twin is not None and "leading 1 made 0" in why, why
    got = session(twin).run(None, {"x": x})[0]
    assert np.max(np.abs(got - _single_runs(model, x)[:, 0])) <= 1e-4 * np.max(np.abs(got))
    check_masked_equals_pruned(twin, batch=3)


@pytest.mark.parametrize("build", [crnn, plain_cnn])
def test_prune_scores_on_the_twin_and_ships_batch_one(build):
    model, data = build(), _samples(16)
    res = prune(model, data, ratio=0.5, seed=0)
    assert res.report["batch_twin"]["used"], res.report["batch_twin"]
    assert not any("refused" in w for w in res.report["warnings"])
    shipped = res.model
    assert shipped.graph.input[0].type == model.graph.input[0].type  # the user's interface
    sess = session(shipped)
    assert sess.get_inputs()[0].shape[0] == 1
    one = {"x": data["x"][:1]}
    assert sess.run(None, one)[0].shape[:2] == session(model).run(None, one)[0].shape[:2]


def test_prune_engine_is_per_sample_on_the_twin():
    model, data = crnn(), _samples(8)
    twin, _ = batch_twin(model, data)
    am = analyze_model(twin)
    calib = calibration_from_arrays(data, input_specs_from_model(twin))
    engine = make_engine(am, calib)
    gid = am.analysis.prunable[0].id
    units = am.analysis.group(gid).units
    masks = np.ones((2, units), np.float32)
    masks[1, : units // 2] = 0
    engine.values(gid, masks)
    assert engine.path.startswith("batched") and engine.batch == "dynamic"


def test_prune_falls_back_with_the_reason():
    res = prune(mixes_the_batch(), _samples(16), ratio=0.5, seed=0)
    assert not res.report["batch_twin"]["used"]
    assert any("refused" in w for w in res.report["warnings"])
    assert res.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_cli_says_why_the_twin_was_refused_in_one_line(tmp_path):
    from click.testing import CliRunner
    from onnxprune_cli.main import main
    onnx.save(mixes_the_batch(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **_samples(16))
    res = CliRunner().invoke(main, [str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npz"),
                                    "--ratio", "0.5", "--metric", "l1", "-q"])
    assert res.exit_code in (0, 3), res.output
    lines = [l for l in res.stderr.splitlines() if "batch-symbolic copy was refused" in l]
    assert len(lines) == 1 and lines[0].startswith("warning: "), res.stderr


def test_cli_scores_reused_on_the_twin(tmp_path):
    from click.testing import CliRunner
    from onnxprune_cli.main import main
    onnx.save(crnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **_samples(16))
    m, c, s = (str(tmp_path / n) for n in ("m.onnx", "c.npz", "s.json"))
    assert CliRunner().invoke(main, ["score", m, "--calib", c, "-o", s, "-q"]).exit_code == 0
    res = CliRunner().invoke(main, [m, "--calib", c, "--ratio", "0.5", "--scores", s, "-q",
                                    "-o", str(tmp_path / "p.onnx")])
    assert res.exit_code in (0, 3), res.output
    shipped = onnx.load(tmp_path / "p.onnx")
    assert shipped.graph.input[0].type == crnn().graph.input[0].type


def test_twin_from_one_sample_compares_distinct_copies():
    x = _samples(1)
    assert batch_twin(crnn(), x)[0] is not None
    assert batch_twin(mixes_the_batch(), x)[0] is None
    same_three = {"x": np.repeat(x["x"][:1], 3, axis=0)}  # identical samples would hide mixing
    twin, why = batch_twin(plain_cnn(), same_three)
    assert twin is None and "distinct" in why


def test_dry_run_says_why_the_twin_was_refused(tmp_path):
    """--dry-run plans the same run prune makes: a refused twin (scoring one sample per run)
    is in the plan's warnings, not only in the prune report."""
    from click.testing import CliRunner
    from onnxprune_cli.main import main
    onnx.save(mixes_the_batch(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **_samples(16))
    res = CliRunner().invoke(main, [str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npz"),
                                    "--ratio", "0.5", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert any("batch-symbolic copy was refused" in w for w in plan["warnings"])
