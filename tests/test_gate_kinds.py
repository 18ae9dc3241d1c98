"""The quality gate reads an output's kind from the op computing it as well as its shape:
hidden states (a LayerNorm, a residual Add, Tanh/Gelu) are `features`, judged by their error
against their spread; score heads keep the shape rule; --output-kind overrides both."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.deploy.verify import (compare, compare_one, decide_kinds, kind_misfit, run_model,
                                     tensor_output_names, verdict)
from onnxprune_cli.main import main

N, T, D, H = 48, 32, 32, 64
rng = np.random.default_rng(0)


def _model(nodes, inits, out_shape=("N", T, D), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(v if isinstance(v, np.ndarray) and v.dtype == np.int64
                                 else np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    onnx.checker.check_model(model)
    return model


def _decomposed_layernorm(x: str, out: str) -> list[onnx.NodeProto]:
    """What the legacy PyTorch exporter writes for nn.LayerNorm (opset < 17)."""
    mk = helper.make_node
    return [mk("ReduceMean", [x], ["mu"], axes=[-1]), mk("Sub", [x, "mu"], ["xc"]),
            mk("Pow", ["xc", "two"], ["sq"]), mk("ReduceMean", ["sq"], ["var"], axes=[-1]),
            mk("Add", ["var", "eps"], ["ve"]), mk("Sqrt", ["ve"], ["sd"]),
            mk("Div", ["xc", "sd"], ["xn"]), mk("Identity", ["gamma0"], ["gamma"]),  # a shared
            mk("Mul", ["xn", "gamma"], ["xg"]), mk("Add", ["xg", "beta"], [out])]  # weight


LN_INITS = {"two": 2.0, "eps": 1e-5, "gamma0": np.ones(D), "beta": np.full(D, 0.5)}


def _kind(model: onnx.ModelProto, shape=(N, T, D)) -> tuple[str, str]:
    return decide_kinds(["y"], [np.zeros(shape, np.float32)], model)["y"]


def test_layernormalization_rank3_is_features():
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)
    assert _kind(_model([node], {"g": np.ones(D), "b": np.zeros(D)})) == \
        ("features", "graph: LayerNormalization")


def test_decomposed_layernorm_is_features():
    model = _model(_decomposed_layernorm("x", "y"), LN_INITS)
    assert _kind(model) == ("features", "graph: decomposed normalization (ReduceMean)")


@pytest.mark.parametrize("nodes,inits", [
    ([helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Add", ["z", "c"], ["y"])],
     {"w": np.ones((D, D)), "c": np.ones(D)}),  # a linear head: Add of a constant, no norm
    ([helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Mul", ["z", "c"], ["m"]),
      helper.make_node("Add", ["m", "c"], ["y"])], {"w": np.ones((D, D)), "c": np.ones(D)}),
    ([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], {}),
    ([helper.make_node("Sigmoid", ["x"], ["y"])], {}),
])
def test_score_heads_keep_the_shape_rule(nodes, inits):
    assert _kind(_model(nodes, inits)) == ("sequence", "shape")


@pytest.mark.parametrize("op", ["Tanh", "Gelu"])
def test_activations_and_residual_add_are_features(op):
    act = helper.make_node(op, ["x"], ["y"], **({"domain": "com.microsoft"} if op == "Gelu" else {}))
    model = _model([act], {})
    assert _kind(model) == ("features", f"graph: {op}")
    residual = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])]
    assert _kind(_model(residual, {})) == ("features", "graph: residual Add")


def test_shape_only_ops_after_the_producer_are_walked_through():
    """LayerNorm -> Transpose [T, N, D] -> Reshape: still the LayerNorm's output; a Softmax
    behind the same ops still a sequence."""
    mk = helper.make_node
    tail = [mk("Transpose", ["n"], ["t"], perm=[1, 0, 2]), mk("Reshape", ["t", "s"], ["y"])]
    for head, want in [(_decomposed_layernorm("x", "n"), "features"),
                       ([mk("Softmax", ["x"], ["n"], axis=-1)], "sequence")]:
        model = _model(head + tail, {**LN_INITS, "s": np.array([0, 0, D])}, (T, "N", D))
        assert _kind(model, (T, N, D))[0] == want


def test_rank2_hidden_state_is_features_not_class_scores():
    node = helper.make_node("Tanh", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, ["N", D])],
                              [helper.make_tensor_value_info("y", 1, ["N", D])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert _kind(model, (N, D))[0] == "features"


# ------------------------------------------------------------------ the features measure

def test_features_agreement_is_not_lenient():
    """Centred: an output collapsed to the original's mean, or noise as large as its spread,
    scores 0 although its raw cosine to the original stays high (a shared offset)."""
    want = 3.0 + rng.standard_normal((8, T, D))  # the offset every input shares
    assert compare_one("h", want, want + 1e-3, "features").agreement > 0.99
    collapsed = np.broadcast_to(want.mean((0, 1)), want.shape)
    f = compare_one("h", want, collapsed, "features")
    assert f.agreement == 0.0 and f.cosine > 0.9
    noisy = want + rng.standard_normal(want.shape)
    f = compare_one("h", want, noisy, "features")
    assert f.agreement < 0.2 and f.cosine > 0.9
    assert f.measure == "1 - error / spread"


# ------------------------------------------------------------------ end to end

def _encoder(weak: float = 0.05) -> onnx.ModelProto:
    """x -> MatMul -> Relu -> MatMul -> residual Add -> decomposed LayerNorm: half the FFN
    neurons write almost nothing (`weak`), so removing them is a faithful prune."""
    r = np.random.default_rng(1)
    w2 = r.standard_normal((H, D)) / np.sqrt(H)
    w2[H // 2:] *= weak
    mk = helper.make_node
    nodes = [mk("MatMul", ["x", "w1"], ["h"]), mk("Relu", ["h"], ["a"]),
             mk("MatMul", ["a", "w2"], ["f"]), mk("Add", ["x", "f"], ["res"]),
             *_decomposed_layernorm("res", "y")]
    inits = {**LN_INITS, "w1": r.standard_normal((D, H)) / np.sqrt(D), "w2": w2}
    return _model(nodes, inits, opset=14)


def _calib() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(2).standard_normal((4 * N, T, D)).astype(np.float32)}


def _judge(model, pruned, feeds, kinds=None):
    names = tensor_output_names(model)
    want, got = run_model(model, feeds), run_model(pruned, feeds)
    return compare(names, want, got, decide_kinds(names, want, model, kinds)), want, got


def test_encoder_prune_passes_as_features_and_failed_as_a_sequence():
    model, calib = _encoder(), _calib()
    res = onnxprune.prune(model, calib, ratio=0.4, latency=False, round_to=1)
    ver = res.report["verification"]
    out = ver["outputs"][0]
    assert (out["kind"], out["kind_from"]) == ("features",
                                               "graph: decomposed normalization (ReduceMean)")
    assert ver["verdict"] == "passed" and ver["fidelity"] > 0.95, ver
    # the shape rule (before): the same outputs judged as a sequence of class scores fail
    held = {"x": calib["x"][-N:]}
    want, got = run_model(model, held), run_model(res.model, held)
    assert compare_one("y", want[0], got[0]).agreement < 0.8 == ver["min_fidelity"]
    assert compare_one("y", want[0], got[0]).kind == "sequence"


def test_encoder_broken_prunes_still_fail():
    model, calib = _encoder(), _calib()
    heavy = onnxprune.prune(model, calib, ratio=0.9, metric="random", compensate=False,
                            refit=False, latency=False, min_keep=1)
    ver = heavy.report["verification"]
    assert ver["outputs"][0]["kind"] == "features" and ver["verdict"] == "failed", ver
    assert ver["outputs"][0]["cosine"] > 0.9  # a raw cosine would have passed it
    corrupt = onnx.ModelProto()
    corrupt.CopyFrom(model)
    w1 = next(t for t in corrupt.graph.initializer if t.name == "w1")
    w1.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(w1), "w1"))
    fids, _, _ = _judge(model, corrupt, {"x": calib["x"][:N]})
    assert fids[0].kind == "features" and verdict(fids, 0.8)["verdict"] == "failed"
    assert fids[0].cosine > 0.8


# ------------------------------------------------------------------ --output-kind

def test_output_kind_override_through_the_api():
    model, calib = _encoder(), _calib()
    res = onnxprune.prune(model, calib, ratio=0.4, latency=False, output_kind={"y": "regression"})
    out = res.report["verification"]["outputs"][0]
    assert (out["kind"], out["kind_from"], out["measure"]) == ("regression", "--output-kind", "cosine")
    assert res.report["options"]["output_kind"] == {"y": "regression"}


@pytest.mark.parametrize("entry,words", [
    ("y=logits", "--output-kind y=logits: unknown kind 'logits' (choose from integer,"),
    ("features", "--output-kind takes NAME=KIND, got 'features'"),
])
def test_output_kind_is_validated(entry, words):
    with pytest.raises(onnxprune.OnnxPruneError) as err:
        onnxprune.PruneOptions(output_kind=(entry,)).validate()
    assert words in str(err.value)


def test_output_kind_must_name_an_output_and_fit_it():
    model, calib = _encoder(), _calib()
    with pytest.raises(onnxprune.OnnxPruneError, match="no tensor output 'z'.*outputs: y"):
        onnxprune.prune(model, calib, ratio=0.4, output_kind=("z=features",))
    assert kind_misfit("detection", [None, 12, 4]) and kind_misfit("features", [None])
    assert kind_misfit("detection", [None, 400, 9]) is None


def _cli(tmp_path, *args):
    path, calib = tmp_path / "enc.onnx", tmp_path / "c.npz"
    onnx.save(_encoder(), str(path))
    np.savez(calib, **_calib())
    return CliRunner().invoke(main, [str(a) for a in (
        path, "--calib", calib, "-q", "--no-latency", "--ratio", 0.4, "-o",
        tmp_path / "out.onnx", "--report", tmp_path / "r.json", *args)])


@pytest.mark.parametrize("entry", ["z=features", "y=logits", "y"])
def test_cli_output_kind_user_error_is_one_line_exit_2(tmp_path, entry):
    result = _cli(tmp_path, "--output-kind", entry)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --output-kind") and len(result.stderr.splitlines()) == 1


def test_cli_output_kind_shows_in_the_report(tmp_path):
    result = _cli(tmp_path, "--output-kind", "y=sequence")
    assert "sequence (set by --output-kind)" in result.stdout
    ver = json.loads((tmp_path / "r.json").read_text())["verification"]
    assert ver["outputs"][0]["kind_from"] == "--output-kind"
    result = _cli(tmp_path, "--force")  # without it: features, read from the graph
    assert result.exit_code == 0, result.output
    assert "features" in result.stdout and "set by" not in result.stdout


# ------------------------------------------------------------------ dense heads (PicoDet)

HH, WW, CIN, MID = 6, 5, 8, 16


def _dense_head(weak: float = 0.05) -> onnx.ModelProto:
    """What Paddle's PicoDet head exports per level: Conv -> Split(class, box) -> Sigmoid on
    the classes -> Reshape [N, C, H*W] -> Transpose [N, H*W, C]; half of the hidden channels
    write almost nothing (`weak`)."""
    r = np.random.default_rng(3)
    w2 = r.standard_normal((42, MID, 1, 1)) / np.sqrt(MID)
    w2[:, MID // 2:] *= weak
    mk = helper.make_node
    nodes = [mk("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]), mk("Relu", ["h"], ["a"]),
             mk("Conv", ["a", "w2"], ["o"]), mk("Split", ["o", "split"], ["c", "b"], axis=1),
             mk("Sigmoid", ["c"], ["cs"]),
             mk("Reshape", ["cs", "s10"], ["cr"]), mk("Transpose", ["cr"], ["cls"], perm=[0, 2, 1]),
             mk("Reshape", ["b", "s32"], ["br"]), mk("Transpose", ["br"], ["box"], perm=[0, 2, 1])]
    inits = {"w1": r.standard_normal((MID, CIN, 3, 3)) / np.sqrt(9 * CIN), "w2": w2,
             "split": np.array([10, 32]), "s10": np.array([0, 10, HH * WW]),
             "s32": np.array([0, 32, HH * WW])}
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", CIN, HH, WW])],
        [helper.make_tensor_value_info("cls", TensorProto.FLOAT, ["N", HH * WW, 10]),
         helper.make_tensor_value_info("box", TensorProto.FLOAT, ["N", HH * WW, 32])],
        [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k)
         for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_dense_head_outputs_are_maps_not_sequences():
    model = _dense_head()
    want = [np.zeros((N, HH * WW, 10), np.float32), np.zeros((N, HH * WW, 32), np.float32)]
    kinds = decide_kinds(["cls", "box"], want, model)
    assert kinds == {"cls": ("probability_map", "graph: Sigmoid over a flattened H x W map"),
                     "box": ("regression", "graph: a flattened H x W map, not a sequence")}
    assert [compare_one(n, w, w).kind for n, w in zip(["cls", "box"], want)] == \
        ["sequence", "sequence"]  # what the shape rule alone says


def _conv_reshape_model(in_shape, target, perm=None, sigmoid=False) -> onnx.ModelProto:
    mk = helper.make_node
    nodes = [mk("Sigmoid", ["x"], ["s"])] if sigmoid else [mk("Identity", ["x"], ["s"])]
    nodes.append(mk("Reshape", ["s", "t"], ["r" if perm else "y"]))
    nodes += [mk("Transpose", ["r"], ["y"], perm=perm)] if perm else []
    out = [target[i] for i in perm] if perm else target
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
        [numpy_helper.from_array(np.array([0 if d == "N" else d for d in target]), "t")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("in_shape,target,perm,sigmoid,want", [
    (["N", 40, 1, 12], ["N", 40, 12], [0, 2, 1], False, ("sequence", "shape")),  # a text line
    (["N", 40, 1, 12], ["N", 40, 12], [0, 2, 1], True, ("sequence", "shape")),
    (["N", 6, 5, 10], ["N", 30, 10], None, True,  # NHWC (tf2onnx): [N, H, W, C] -> [N, H*W, C]
     ("probability_map", "graph: Sigmoid over a flattened H x W map")),
    (["N", 32, 6, 5], ["N", 32, 30], [0, 2, 1], False,
     ("regression", "graph: a flattened H x W map, not a sequence")),
])
def test_grid_reshapes_are_told_from_text_lines(in_shape, target, perm, sigmoid, want):
    model = _conv_reshape_model(in_shape, target, perm, sigmoid)
    shape = [N if d == "N" else d for d in ([target[i] for i in perm] if perm else target)]
    assert decide_kinds(["y"], [np.zeros(shape, np.float32)], model)["y"] == want


def test_dense_head_prune_passes_where_the_shape_rule_failed_it():
    """A faithful prune of the dense head (the weak channels removed, refit): judged as maps
    it passes; the same outputs judged by shape alone (whole-sequence top-1 over the box
    logits' 30 positions) fail it. A broken prune still fails as maps."""
    model = _dense_head()
    x = np.random.default_rng(4).standard_normal((4 * N, CIN, HH, WW)).astype(np.float32)
    res = onnxprune.prune(model, {"x": x}, ratio=0.5, latency=False, round_to=1,
                          target="units", min_keep=1)
    ver = res.report["verification"]
    assert [o["kind"] for o in ver["outputs"]] == ["probability_map", "regression"]
    assert ver["verdict"] == "passed", ver
    held = {"x": x[-N:]}
    want, got = run_model(model, held), run_model(res.model, held)
    assert min(compare_one(n, w, g).agreement
               for n, w, g in zip(["cls", "box"], want, got)) < ver["min_fidelity"]
    broken = onnxprune.prune(model, {"x": x}, ratio=0.9, metric="random", compensate=False,
                             refit=False, latency=False, round_to=1, target="units", min_keep=1)
    assert broken.report["verification"]["verdict"] == "failed", broken.report["verification"]


def test_sigmoid_over_a_4d_map_is_probabilities():
    """A DBNet text detector's [N, 1, H, W] probability map, a segmentation's [N, C, H, W]."""
    model = _conv_reshape_model(["N", 1, 8, 8], ["N", 1, 8, 8], sigmoid=True)
    for shape in [(N, 1, 8, 8), (N, 3, 8, 8)]:
        assert decide_kinds(["y"], [np.zeros(shape, np.float32)], model)["y"] == \
            ("probability_map", "graph: Sigmoid")
    assert compare_one("y", np.zeros((N, 1, 8, 8)), np.zeros((N, 1, 8, 8))).kind == "score_map"


def test_probability_map_agreement_is_dice_above_half():
    """Pooled Dice of the entries above 0.5: near-ties among confident entries (a coarse
    level's 30 entries at 0.97-0.99) do not count against it as they do against top-k, and
    dropping half of the positives does; with no positive in the original, top-k decides."""
    r = np.random.default_rng(5)
    want = r.uniform(0.0, 0.2, (8, 1300))
    want[:, :30] = r.uniform(0.97, 0.99, (8, 30))
    got = want.copy()
    got[:, :30] = r.uniform(0.97, 0.99, (8, 30))  # same positives, shuffled among themselves
    same = compare_one("p", want, got, "probability_map")
    assert same.agreement == 1.0 and same.measure == "agreement above 0.5"
    assert compare_one("p", want, got, "score_map").agreement < 0.8  # top-13 of 30 near-ties
    half = want.copy()
    half[:, :15] = 0.3
    assert compare_one("p", want, half, "probability_map").agreement == pytest.approx(2 * 15 / 45)
    quiet = r.uniform(0.0, 0.2, (8, 1300))
    assert compare_one("p", quiet, quiet, "probability_map").agreement == 1.0
    assert compare_one("p", quiet, quiet[::-1], "probability_map").agreement == \
        compare_one("p", quiet, quiet[::-1], "score_map").agreement < 0.5


# ------------------------------------------------------------------ YOLOv8's decoded output

NC, ANCHORS = 6, 400


def _v8_tail() -> onnx.ModelProto:
    """The end of ultralytics' Detect head as exported: Concat((boxes * strides,
    Sigmoid(class logits)), axis 1) = [N, 4 + classes, anchors]."""
    mk = helper.make_node
    nodes = [mk("Split", ["x", "split"], ["b", "c"], axis=1), mk("Mul", ["b", "stride"], ["box"]),
             mk("Sigmoid", ["c"], ["cls"]), mk("Concat", ["box", "cls"], ["y"], axis=1)]
    graph = helper.make_graph(
        nodes, "v8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4 + NC, ANCHORS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4 + NC, ANCHORS])],
        [numpy_helper.from_array(np.array([4, NC]), "split"),
         numpy_helper.from_array(np.full((1, 1, ANCHORS), 8.0, np.float32), "stride")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _v8_input(confident: int = 12) -> np.ndarray:
    """Boxes of 8-32 pixels anywhere in 640 (x 8 by the tail), background class logits, a few
    anchors confident in class 0."""
    x = np.empty((8, 4 + NC, ANCHORS), np.float32)
    x[:, :2] = rng.uniform(0, 80, (8, 2, ANCHORS))
    x[:, 2:4] = rng.uniform(1, 4, (8, 2, ANCHORS))
    x[:, 4:] = rng.standard_normal((8, NC, ANCHORS)) - 7  # none above 0.25 (logit -1.1)
    x[:, 4, :confident] += 10
    return x


def test_yolov8_output_is_judged_by_its_detections():
    """Read from the graph (the shape rule calls [N, 10, 400] a sequence) and judged by the
    decoded detections against the original's: a jitter passes; boxes moved by their own size
    or detections relabelled fail, where the top-k overlap of confident anchors (the figure
    before) stays at 1."""
    from onnxprune.deploy.verify import _box_scores, _topk_overlap
    model, x = _v8_tail(), _v8_input()
    want = run_model(model, {"x": x})
    kinds = decide_kinds(["y"], want, model)
    assert kinds["y"] == ("class_boxes", "graph: Concat of 4 box coordinates and a Sigmoid's classes")
    assert compare_one("y", want[0], want[0]).kind == "sequence"  # shape alone

    def judged(changed: np.ndarray) -> tuple[float, float]:
        got = run_model(model, {"x": changed})[0]
        topk = _topk_overlap(_box_scores(want[0], "class_boxes"), _box_scores(got, "class_boxes"))
        return compare(["y"], want, [got], kinds)[0].agreement, topk

    jitter = x.copy()
    jitter[:, :4] += rng.standard_normal((8, 4, ANCHORS)).astype(np.float32) * 0.02
    assert judged(jitter)[0] == 1.0
    moved, relabelled = x.copy(), x.copy()
    moved[:, :2, :12] += 4
    relabelled[:, 4:6, :12] = x[:, 5:3:-1, :12]  # classes 0 and 1 swapped, same scores
    for changed in (moved, relabelled):
        agreement, topk = judged(changed)
        assert agreement < 0.2 and topk == 1.0


def test_yolov8_with_nothing_detected_falls_back_to_top_k():
    """No box above 0.25 in the original: the top-k figure of the confident anchors stands in."""
    model, x = _v8_tail(), _v8_input(confident=0)
    want = run_model(model, {"x": x})
    kinds = decide_kinds(["y"], want, model)
    assert compare(["y"], want, want, kinds)[0].agreement == 1.0
    shuffled = x.copy()
    shuffled[:, 4:] = x[:, 4:, rng.permutation(ANCHORS)]
    assert compare(["y"], want, run_model(model, {"x": shuffled}), kinds)[0].agreement < 0.3


@pytest.mark.parametrize("file", ["yolov8_det.onnx", "yolov8_det_dynamo.onnx"])
def test_yolov8_exports_are_read_as_class_boxes(file):
    """The zoo's YOLOv8-style detector as both PyTorch exporters wrote it (the legacy one
    leaves the box part's width unnamed)."""
    from conftest import ROOT
    model = onnx.load(str(ROOT / "models/zoo" / file))
    want = run_model(model, {"input": rng.standard_normal((4, 3, 32, 32)).astype(np.float32)})
    name = model.graph.output[0].name
    assert decide_kinds([name], want, model)[name][0] == "class_boxes"
