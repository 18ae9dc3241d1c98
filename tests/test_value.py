"""Value functions: optimum at the original model, hand-computed cases, shapes, bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from onnxprune.errors import OnnxPruneError
from onnxprune.scoring.value import (
    VALUE_FUNCTIONS,
    Accuracy,
    CallableValue,
    Cosine,
    NegCrossEntropy,
    NegKL,
    NegNMSE,
    ValueFunction,
    default_value_function,
    make_value_function,
)

RNG = np.random.default_rng(0)
LOGITS = RNG.standard_normal((6, 4)).astype(np.float32)  # N=6 samples, 4 classes
FEATURES = (10 * RNG.standard_normal((6, 3, 2))).astype(np.float32)  # a second output, other scale
LABELS = np.array([0, 1, 2, 3, 0, 1])


def prepared(vf: ValueFunction, reference: list[np.ndarray], labels=None) -> ValueFunction:
    vf.prepare(reference, labels)
    return vf


def stack(*coalitions: list[np.ndarray]) -> list[np.ndarray]:
    """Per-coalition output lists -> per-output arrays [K, N, ...]."""
    return [np.stack(parts) for parts in zip(*coalitions)]


def one_error_line(call, *names: str) -> None:
    with pytest.raises(OnnxPruneError) as info:
        call()
    assert "\n" not in str(info.value)
    for name in names:
        assert name in str(info.value)


# ---------------------------------------------------------------- registry / protocol


def test_registry_builds_every_function():
    for name in VALUE_FUNCTIONS:
        vf = make_value_function(name)
        assert isinstance(vf, ValueFunction) and vf.name == name
    assert make_value_function("Neg-KL").name == "neg_kl"


def test_unknown_name():
    one_error_line(lambda: make_value_function("bleu"), "'bleu'", "neg_kl")


@pytest.mark.parametrize(
    ("has_labels", "shape", "expected"),
    [
        (False, ("batch", 1000), "neg_kl"),
        (True, (1, 10), "neg_cross_entropy"),
        (False, ("batch", 1), "neg_nmse"),
        (True, ("batch", 3, 32, 32), "neg_nmse"),
        (False, ("batch", "classes"), "neg_nmse"),
        (False, (), "neg_nmse"),
    ],
)
def test_default_value_function(has_labels, shape, expected):
    assert default_value_function(has_labels, shape).name == expected


# ---------------------------------------------------------------- optimum at the reference


@pytest.mark.parametrize(
    ("name", "best"),
    [("neg_kl", 0.0), ("neg_nmse", 0.0), ("cosine", 1.0), ("accuracy", None), ("neg_cross_entropy", None)],
)
def test_identical_outputs_give_the_optimum(name, best):
    reference = [LOGITS, FEATURES]
    vf = prepared(make_value_function(name), reference, LABELS)
    noisy = [LOGITS + RNG.standard_normal(LOGITS.shape).astype(np.float32), FEATURES * 0.5]
    values = vf(stack(reference, noisy, reference))
    assert values.shape == (3, 6) and values.dtype == np.float64
    np.testing.assert_array_equal(values[0], values[2])
    if best is not None:
        np.testing.assert_allclose(values[0], best, atol=1e-12)
        assert np.all(values[1] < best)


# ---------------------------------------------------------------- hand-computed cases


def test_neg_kl_hand_computed():
    # p = softmax([0, 0]) = [.5, .5]; q = softmax([0, ln 3]) = [.25, .75]
    # KL(p || q) = .5 ln(.5/.25) + .5 ln(.5/.75) = .5 ln(4/3)
    vf = prepared(NegKL(), [np.zeros((1, 2), np.float32)], None)
    values = vf([np.array([[[0.0, math.log(3)]]])])
    np.testing.assert_allclose(values, [[-0.5 * math.log(4 / 3)]], rtol=1e-12)


def test_neg_kl_on_probability_outputs_uses_them_directly():
    reference = np.array([[0.5, 0.5]])
    vf = prepared(NegKL(), [reference], None)
    assert vf.probabilities is True
    values = vf([np.array([[[0.25, 0.75]]])])
    np.testing.assert_allclose(values, [[-0.5 * math.log(4 / 3)]], rtol=1e-12)


def test_neg_kl_is_stable_for_huge_logits():
    reference = np.array([[1000.0, 0.0]])
    vf = prepared(NegKL(), [reference], None)
    values = vf([np.array([[[0.0, 1000.0]]])])
    assert np.isfinite(values).all()
    np.testing.assert_allclose(values, [[-1000.0]], rtol=1e-9)


def test_neg_kl_averages_extra_axes():
    reference = np.zeros((1, 2, 2))  # one sample, two positions, two classes
    vf = prepared(NegKL(), [reference], None)
    changed = np.zeros((1, 1, 2, 2))
    changed[0, 0, 1] = [0.0, math.log(3)]  # only the second position differs
    np.testing.assert_allclose(vf([changed]), [[-0.25 * math.log(4 / 3)]], rtol=1e-12)


def test_neg_nmse_hand_computed():
    # reference [1, 3] has variance 1; pruned [2, 3] -> squared errors [1, 0]
    # second output: reference [0, 4] variance 4; pruned [2, 4] -> [4, 0] / 4 = [1, 0]
    vf = prepared(NegNMSE(), [np.array([[1.0], [3.0]]), np.array([0.0, 4.0])], None)
    values = vf([np.array([[[2.0], [3.0]]]), np.array([[2.0, 4.0]])])
    np.testing.assert_allclose(values, [[-1.0, 0.0]])


def test_neg_nmse_zero_variance_reference():
    constant = np.full((3, 2), 5.0)
    vf = prepared(NegNMSE(), [constant], None)
    values = vf([np.stack([constant, constant + 1])])
    assert np.isfinite(values).all()
    np.testing.assert_array_equal(values[0], 0.0)
    # no variance: the scale is floored at 1e-6 * E[ref^2] = 2.5e-5, so an error of 1 is huge
    np.testing.assert_allclose(values[1], -1.0 / 2.5e-5)


def test_neg_nmse_zero_reference_uses_plain_mse():
    zeros = np.zeros((2, 3))
    vf = prepared(NegNMSE(), [zeros], None)
    np.testing.assert_allclose(vf([np.ones((1, 2, 3))]), [[-1.0, -1.0]])


def test_neg_nmse_float16_is_computed_in_float64():
    reference = np.array([[0.0], [60000.0]], np.float16)  # squares overflow float16
    vf = prepared(NegNMSE(), [reference], None)
    values = vf([np.array([[[60000.0], [0.0]]], np.float16)])
    assert np.isfinite(values).all()
    np.testing.assert_allclose(values, [[-4.0, -4.0]], rtol=1e-3)  # var = 30000^2


def test_cosine_hand_computed():
    vf = prepared(Cosine(), [np.array([[1.0, 0.0]])], None)
    out = np.array([[[0.0, 1.0]], [[-1.0, 0.0]], [[2.0, 0.0]], [[1.0, 1.0]]])
    np.testing.assert_allclose(vf([out])[:, 0], [0.0, -1.0, 1.0, math.sqrt(0.5)])


def test_cosine_zero_vectors():
    vf = prepared(Cosine(), [np.array([[0.0, 0.0], [1.0, 0.0]])], None)
    values = vf([np.array([[[0.0, 0.0], [0.0, 0.0]]])])
    np.testing.assert_array_equal(values, [[1.0, 0.0]])


def test_neg_cross_entropy_hand_computed():
    reference = np.array([[0.0, 0.0], [0.0, 0.0]])
    vf = prepared(NegCrossEntropy(), [reference], np.array([1, 0]))
    values = vf([np.array([[[0.0, math.log(3)], [0.0, math.log(3)]]])])
    np.testing.assert_allclose(values, [[math.log(0.75), math.log(0.25)]])


def test_accuracy_hand_computed():
    vf = prepared(Accuracy(), [np.zeros((3, 3))], np.array([0, 1, 2]))
    out = np.array([[[5, 0, 0], [0, 5, 0], [5, 0, 0]], [[0, 0, 1], [0, 0, 1], [0, 0, 1]]], np.float16)
    np.testing.assert_array_equal(vf([out]), [[1, 1, 0], [0, 0, 1]])


# ---------------------------------------------------------------- label problems


@pytest.mark.parametrize("cls", [NegCrossEntropy, Accuracy])
def test_label_functions_need_labels(cls):
    one_error_line(lambda: cls().prepare([LOGITS], None), cls.name, "labels")


@pytest.mark.parametrize("cls", [NegCrossEntropy, Accuracy])
def test_label_out_of_range(cls):
    one_error_line(lambda: cls().prepare([LOGITS], np.array([0, 1, 2, 3, 4, 0])), cls.name, "[0, 3]")


def test_cross_entropy_needs_class_scores():
    one_error_line(lambda: NegCrossEntropy().prepare([FEATURES], LABELS), "neg_cross_entropy", "(6, 3, 2)")


def test_neg_kl_needs_a_class_axis():
    one_error_line(lambda: NegKL().prepare([np.zeros((6, 1))], None), "neg_kl")


# ---------------------------------------------------------------- user callables


def test_callable_value_passes_arguments_and_checks_shape():
    seen = {}

    def mean_first(outputs, reference, labels):
        seen["labels"] = labels
        return outputs[0].mean(axis=-1) - reference[0].mean(axis=-1)

    vf = prepared(CallableValue(mean_first), [LOGITS], LABELS)
    assert vf.name == "mean_first"
    values = vf(stack([LOGITS], [LOGITS + 1]))
    np.testing.assert_allclose(values, [np.zeros(6), np.ones(6)], atol=1e-6)
    assert seen["labels"] is LABELS


@pytest.mark.parametrize("result", [np.zeros(6), np.zeros((6, 2)), np.zeros((2, 6, 1)), "nope"])
def test_callable_value_bad_result(result):
    vf = prepared(CallableValue(lambda o, r, l: result, name="mine"), [LOGITS], None)
    one_error_line(lambda: vf(stack([LOGITS], [LOGITS])), "'mine'", "(2, 6)" if not isinstance(result, str) else "str")


def test_callable_needing_labels():
    one_error_line(lambda: CallableValue(lambda o, r, l: 0, name="f", needs_labels=True).prepare([LOGITS], None), "'f'")


def test_engine_shape_mismatch_is_a_bug_not_a_user_error():
    vf = prepared(NegKL(), [LOGITS], None)
    with pytest.raises(ValueError):
        vf([LOGITS])  # missing K axis


# ---------------------------------------------------------------- properties

logit_arrays = arrays(
    np.float64,
    st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(2, 5)),
    elements=st.floats(-50, 50, allow_nan=False),
)


@settings(max_examples=60, deadline=None)
@given(logit_arrays, st.data())
def test_neg_kl_is_never_positive(outputs, data):
    k, n, c = outputs.shape
    reference = data.draw(arrays(np.float64, (n, c), elements=st.floats(-50, 50, allow_nan=False)))
    values = prepared(NegKL(probabilities=False), [reference], None)([outputs])
    assert values.shape == (k, n)
    assert np.all(values <= 0.0)


@settings(max_examples=60, deadline=None)
@given(logit_arrays, st.data())
def test_cosine_is_bounded(outputs, data):
    k, n, c = outputs.shape
    reference = data.draw(arrays(np.float64, (n, c), elements=st.floats(-1e6, 1e6, allow_nan=False)))
    values = prepared(Cosine(), [reference], None)([outputs])
    assert values.shape == (k, n)
    assert np.all((values >= -1.0) & (values <= 1.0))


def test_probability_detection_is_redone_on_each_prepare():
    vf = NegKL()
    vf.prepare([np.array([[0.5, 0.5]])], None)
    assert vf.probabilities is True
    vf.prepare([np.array([[3.0, -1.0]])], None)
    assert vf.probabilities is False
    assert NegCrossEntropy(probabilities=False).probabilities is False


@pytest.mark.parametrize("name", sorted(VALUE_FUNCTIONS))
def test_blocks_of_coalitions_equal_one_at_a_time(name, monkeypatch):
    """Vectorized over coalitions, in blocks of any size: the same numbers, bit for bit, as
    each coalition on its own (scores must not change with how the engine batches)."""
    import onnxprune.scoring.value as value_module

    rng = np.random.default_rng(1)
    outputs = [rng.standard_normal((9, *LOGITS.shape)).astype(np.float32),
               rng.standard_normal((9, *FEATURES.shape)).astype(np.float32)]
    vf = prepared(make_value_function(name), [LOGITS, FEATURES], LABELS)
    whole = vf(outputs)
    single = np.concatenate([vf([o[j:j + 1] for o in outputs]) for j in range(9)])
    monkeypatch.setattr(value_module, "_BLOCK_FLOATS", 2 * FEATURES.size)  # blocks of 2-3
    blocked = vf(outputs)
    assert whole.shape == (9, 6)
    np.testing.assert_array_equal(whole, single)
    np.testing.assert_array_equal(whole, blocked)


# ---------------------------------------------------------------- YOLOv8's boxes and classes


def _v8_reference(n=3, classes=5, anchors=40):
    """[N, 4 + classes, anchors]: boxes in pixels, class probabilities, anchor 0 confident."""
    ref = np.empty((n, 4 + classes, anchors))
    ref[:, :4] = RNG.uniform(0, 640, (n, 4, anchors))
    ref[:, 4:] = RNG.uniform(0, 0.02, (n, classes, anchors))
    ref[:, 4, 0] = 0.9
    return ref


def test_class_boxes_weigh_boxes_by_confidence_and_classes_apart():
    """One NMSE over pixels and probabilities ranks by the boxes alone (a 10-pixel move of a
    box nothing detects outweighs the detection vanishing); the split one ranks the other way,
    and a confident box's move costs more than a background box's."""
    ref = _v8_reference()
    background, vanished, moved = ref.copy(), ref.copy(), ref.copy()
    background[:, :4, 5] += 10
    vanished[:, 4, 0] = 0.01
    moved[:, :4, 0] += 10
    plain = prepared(NegNMSE(), [ref], None)([np.stack([background, vanished])])
    assert plain[0].mean() < plain[1].mean()
    split = prepared(NegNMSE(class_boxes=[0]), [ref], None)([np.stack([background, vanished, moved])])
    assert split[1].mean() < split[0].mean() and split[2].mean() < 10 * split[0].mean()
    np.testing.assert_array_equal(prepared(NegNMSE(class_boxes=[0]), [ref], None)([ref[None]]), 0.0)


def test_class_boxes_either_layout_and_blocks_alike():
    """Boxes on the longer axis: [N, anchors, 4 + classes] gives the same values, and blocks of
    coalitions the same numbers as one at a time."""
    ref = _v8_reference()
    coalitions = np.stack([ref + RNG.standard_normal(ref.shape) for _ in range(4)])
    values = prepared(NegNMSE(class_boxes=[0]), [ref], None)([coalitions])
    flipped = prepared(NegNMSE(class_boxes=[0]), [ref.transpose(0, 2, 1)], None)(
        [coalitions.transpose(0, 1, 3, 2)])
    np.testing.assert_allclose(values, flipped, rtol=1e-12)
    one = [prepared(NegNMSE(class_boxes=[0]), [ref], None)([c[None]])[0] for c in coalitions]
    np.testing.assert_allclose(values, np.stack(one), rtol=1e-12)


def test_default_value_reads_class_boxes_from_the_graph():
    """The zoo's YOLOv8-style detector gets the split NMSE from both exporters; a model
    without such an output the plain one."""
    import onnxprune
    from conftest import ROOT
    from onnxprune.calib import Calibration
    from onnxprune.scoring.run import _class_box_outputs, value_function
    x = RNG.standard_normal((4, 3, 32, 32)).astype(np.float32)
    for file in ("yolov8_det.onnx", "yolov8_det_dynamo.onnx"):
        am = onnxprune.analyze_model(str(ROOT / "models/zoo" / file))
        vf = value_function(am, Calibration({"input": x}))
        assert vf.name == "neg_nmse" and vf.class_boxes == {0}, file
        assert "boxes apart" in vf.label  # what the report's deploy entry calls it
    am = onnxprune.analyze_model(str(ROOT / "models/zoo/bert_tiny.onnx"))  # [N, T, D] states
    assert _class_box_outputs(am, [t.name for t in am.graph.outputs]) == []
