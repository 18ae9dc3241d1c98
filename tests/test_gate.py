"""Issue 14 part B: the quality gate. Each output kind's agreement on tiny synthetic outputs,
and the gate end to end: a prune to garbage exits 3, says FAILED and still writes the file;
a good prune passes."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxprune
from conftest import ROOT
from onnxprune.deploy.verify import accuracy, class_output, compare_one, output_kind, verdict
from onnxprune_cli.main import main

DIGITS = ROOT / "models/digits_cnn.onnx"
DIGITS_CALIB = ROOT / "models/digits_calib.npz"
rng = np.random.default_rng(0)


@pytest.mark.parametrize("shape,dtype,kind", [
    ((4, 3), np.float32, "class_scores"), ((4, 1), np.float32, "regression"),
    ((4, 6, 5), np.float32, "sequence"), ((6, 4, 5), np.float32, "sequence"),
    ((2, 400, 9), np.float32, "detection"),
    # a long last axis is classes: ddddocr's CTC head [N, 22, 8210] was judged a detection by
    # its box overlap and passed the gate with 0.59 of its readings unchanged
    ((2, 9, 400), np.float32, "sequence"), ((2, 22, 8210), np.float32, "sequence"),
    ((2, 1, 8, 8), np.float32, "score_map"), ((2, 4, 8, 8), np.float32, "regression"),
    ((4,), np.int64, "integer"), ((4, 2), np.int32, "integer"), ((4,), np.float32, "regression")])
def test_output_kind(shape, dtype, kind):
    assert output_kind(np.zeros(shape, dtype)) == kind


def test_class_scores_top1_agreement():
    want = np.eye(4, dtype=np.float32)  # argmax 0, 1, 2, 3
    got = want.copy()
    got[3] = [1, 0, 0, 0.5]  # last sample flips to class 0
    f = compare_one("p", want, got)
    assert (f.kind, f.agreement, f.top1_agreement) == ("class_scores", 0.75, 0.75)


def test_sequence_agreement_at_every_position():
    """Not just the first position, and a whole sequence: one flipped step (not the first) of
    2 x 5 positions makes one of the two samples read differently (per position: 0.9).
    Samples are on axis 0 here as verification gives them (run_model moves a sequence-first
    output's samples there; the kinds of both layouts are tested above)."""
    want = rng.standard_normal((2, 5, 7)).astype(np.float32)
    got = want.copy()
    got[1, 3] = -got[1, 3]  # flips the argmax of one position (not the first)
    f = compare_one("seq", want, got)
    assert f.kind == "sequence" and f.agreement == pytest.approx(0.5)
    assert f.top1_agreement == pytest.approx(0.9)


def test_detection_overlap_of_top_boxes():
    """[N, boxes, x y w h obj classes]: top-k boxes by obj x best class. Objectness wiped
    out (0 boxes found) is no agreement at all, although the raw cosine stays high."""
    want = rng.uniform(0, 1, (2, 800, 8)).astype(np.float32)
    want[..., :4] *= 600  # box coordinates dominate the raw values, as in YOLO outputs
    f = compare_one("det", want, want.copy())
    assert (f.kind, f.agreement) == ("detection", 1.0)
    collapsed = want.copy()
    collapsed[..., 4] = rng.uniform(0, 1e-6, (2, 800))
    f = compare_one("det", want, collapsed)
    assert f.agreement < 0.2 and f.cosine > 0.9


def test_score_map_overlap():
    want = rng.uniform(0, 1, (2, 1, 20, 20)).astype(np.float32)
    noisy = want + rng.normal(0, 1e-4, want.shape).astype(np.float32)
    assert compare_one("map", want, noisy).agreement == 1.0
    shifted = np.roll(want, 7, axis=3)
    assert compare_one("map", want, shifted).agreement < 0.5


def test_regression_cosine_and_relative_error():
    want = rng.standard_normal((3, 2)).astype(np.float32)
    f = compare_one("r", want, want * 1.1, "regression")
    assert f.kind == "regression" and f.agreement == pytest.approx(1.0) and f.measure == "cosine"
    assert f.relative_error == pytest.approx(0.1, rel=1e-5)
    assert compare_one("r", want, -want, "regression").agreement == 0.0  # clipped at 0


@pytest.mark.parametrize("shape", [(64,), (64, 1)])
def test_one_value_per_sample_is_judged_by_error_over_spread_not_its_sign(shape):
    """Silero VAD's [N, 1] speech probability: a per-sample cosine of one number is its sign
    and passed a prune whose decisions agreed on 0.785 of the windows."""
    want = rng.uniform(0.05, 0.95, shape).astype(np.float32)
    shuffled = rng.permutation(want.reshape(-1)).reshape(shape)  # same values, unrelated to the inputs
    bad = compare_one("p", want, shuffled)
    assert bad.cosine == pytest.approx(1.0)  # what the gate read before
    assert bad.kind == "regression" and bad.measure == "1 - error / spread over samples"
    assert bad.agreement < 0.3 and verdict([bad], 0.8)["verdict"] == "failed"
    close = want + rng.normal(0, 0.01, shape).astype(np.float32)
    assert compare_one("p", want, close).agreement > 0.9
    assert compare_one("p", want[:1], want[:1] * 1.05).agreement == pytest.approx(0.95, abs=1e-6)


def test_integer_exact_agreement_and_no_cosine():
    want = np.array([0, 1, 2, 2], np.int64)
    f = compare_one("label", want, np.array([0, 1, 2, 0], np.int64))
    assert (f.kind, f.agreement, f.cosine, f.max_abs_diff) == ("integer", 0.75, None, 2.0)


@pytest.mark.parametrize("where", ["original", "pruned"])
def test_non_finite_is_failure(where):
    want = np.ones((2, 3), np.float32)
    got = want.copy()
    (want if where == "original" else got)[0, 1] = np.nan
    f = compare_one("y", want, got)
    assert f.agreement == 0.0 and f.cosine is None and f.max_abs_diff is None
    assert where in f.note
    assert verdict([f], 0.5)["verdict"] == "failed"


def test_shape_mismatch_is_failure():
    f = compare_one("y", np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))
    assert not f.shape_ok and f.agreement == 0.0


def test_verdict_reads_the_worst_output():
    good = compare_one("a", np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32))
    bad = compare_one("b", np.array([0, 1], np.int64), np.array([1, 1], np.int64))
    v = verdict([good, bad], 0.9)
    assert (v["verdict"], v["worst_output"], v["fidelity"]) == ("failed", "b", 0.5)
    assert verdict([good, bad], 0.5)["verdict"] == "passed"
    assert verdict([good, bad], 0.0)["verdict"] == "passed"  # 0: no gate


def test_accuracy_on_the_class_output_not_the_label_output():
    label = np.array([2, 2, 2], np.int64)  # a label output that disagrees with the scores
    probs = np.eye(3, dtype=np.float32)
    assert class_output([label, probs]) == 1
    assert accuracy([label, probs], np.array([0, 1, 2])) == 1.0
    assert accuracy([label], np.array([0, 1, 2])) == pytest.approx(1 / 3)  # labels only: exact


def test_min_fidelity_is_validated():
    with pytest.raises(onnxprune.OnnxPruneError, match="min-fidelity"):
        onnxprune.PruneOptions(min_fidelity=1.5).validate()


# --------------------------------------------------------------------------- end to end

def _run(tmp_path, *args):
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(main, [str(a) for a in (DIGITS, "--calib", DIGITS_CALIB, "-q",
                                                        "--no-latency", "-o", out, "--report",
                                                        rep, *args)])
    return result, out, rep


def test_garbage_prune_exits_3_and_is_written(tmp_path):
    """Random units at ratio 0.9 without compensation or refit: near chance."""
    result, out, rep = _run(tmp_path, "--ratio", 0.9, "--metric", "random", "--no-compensate",
                            "--no-refit")
    assert result.exit_code == 3, result.output
    assert result.stdout.startswith("FAILED")
    assert "verdict: FAILED" in result.stdout
    assert "failed:" in result.stderr and str(out) in result.stderr
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    ver = json.loads(rep.read_text())["verification"]
    assert ver["verdict"] == "failed" and ver["fidelity"] < ver["min_fidelity"] == 0.8
    assert ver["samples"] == 16 and any("16 samples" in w for w in ver["warnings"])


def test_good_prune_passes(tmp_path):
    result, out, rep = _run(tmp_path, "--ratio", 0.25, "--metric", "l1")
    assert result.exit_code == 0, result.output
    ver = json.loads(rep.read_text())["verification"]
    assert ver["verdict"] == "passed" and ver["fidelity"] >= 0.8
    assert ver["outputs"][0]["kind"] == "class_scores"
    assert "verdict: passed" in result.stdout


def test_min_fidelity_zero_turns_the_gate_off(tmp_path):
    result, _, rep = _run(tmp_path, "--ratio", 0.9, "--metric", "random", "--no-compensate",
                          "--no-refit", "--min-fidelity", 0)
    assert result.exit_code == 0, result.output
    assert json.loads(rep.read_text())["options"]["min_fidelity"] == 0


def test_slower_warning_needs_quartiles_apart_and_hints_rounding_only_with_convs():
    """A slower median alone is timing noise on tiny models (a 0.02 ms MLP); the warning
    needs the pruned model's first quartile above the original's third, and the channel
    block hint is given only where the model has convs."""
    from onnx import TensorProto, helper
    from onnxprune.report import CONV_HINT, slower_warning

    def timing(b, a):  # (q1, median, q3) in ms, before and after
        return {"before": dict(zip(("q1_ms", "median_ms", "q3_ms"), b)),
                "after": dict(zip(("q1_ms", "median_ms", "q3_ms"), a))}

    def model(op):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        node = helper.make_node(op, ["x", "w"] if op == "Conv" else ["x"], ["y"])
        w = helper.make_tensor("w", TensorProto.FLOAT, [2, 2, 1, 1], [1.0] * 4)
        return helper.make_model(helper.make_graph([node], "g", [x], [y], [w]))

    overlap = timing((0.020, 0.021, 0.023), (0.021, 0.022, 0.024))
    apart = timing((0.020, 0.021, 0.022), (0.030, 0.031, 0.033))
    assert slower_warning(overlap, model("Conv")) is None
    assert slower_warning(apart, model("Relu")) == "the pruned model measured slower than the original (quartiles apart)"
    assert slower_warning(apart, model("Conv")).endswith(CONV_HINT)


def _ctc_scores(paths, classes=6):
    """One-hot-ish scores [N, T, C] whose argmax follows each path (class 0 the blank)."""
    out = np.full((len(paths), len(paths[0]), classes), -1.0, np.float32)
    for i, path in enumerate(paths):
        out[i, np.arange(len(path)), path] = 1.0
    return out


def test_sequence_agreement_reads_the_decoded_text():
    """Two alignments of the same text (a character held one step longer, a blank moved)
    read the same; a changed, dropped or doubled-across-a-blank character does not."""
    want = _ctc_scores([[0, 1, 1, 0, 2, 0, 0, 0], [0, 3, 0, 3, 0, 4, 0, 0]])  # "12", "334"
    same = _ctc_scores([[0, 1, 0, 0, 2, 2, 0, 0], [3, 3, 0, 0, 3, 4, 4, 0]])
    f = compare_one("seq", want, same)
    assert f.agreement == 1.0 and f.top1_agreement < 0.7 and f.measure == "decoded-sequence agreement"
    for path in ([0, 1, 1, 0, 5, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0], [0, 1, 0, 1, 0, 2, 0, 0]):
        other = _ctc_scores([path, [0, 3, 0, 3, 0, 4, 0, 0]])
        assert compare_one("seq", want, other).agreement == 0.5
