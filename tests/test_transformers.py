"""Attention heads and FFN neurons in exported encoders (issue 6)."""
import json

import numpy as np
import pytest

from conftest import ROOT
from exactness import check_masked_equals_pruned
from onnxprune.load import load_model
from onnxprune.model import analyze_model

MANIFEST = json.loads((ROOT / "models/zoo/manifest.json").read_text())
TRANSFORMERS = sorted(e["file"] for e in MANIFEST if e.get("family") == "transformer")
# batch and sequence length differ from one run to the next: the pruned model must keep
# both dynamic (it is checked at sizes other than any other run used)
DIMS = [{"batch": 1, "seq": 5}, {"batch": 3, "seq": 13}]
HEADS, HEAD_DIM = 4, 8


@pytest.mark.parametrize("file", TRANSFORMERS)
def test_heads_and_ffn_are_units(file):
    groups = analyze_model(ROOT / "models/zoo" / file).analysis.groups
    heads = [g for g in groups if g.prunable and g.unit_size == HEAD_DIM]
    ffn = [g for g in groups if g.prunable and g.unit_size == 1 and g.units in (64, 128)]
    layers = 1 if file.startswith("gpt") else 2
    assert len(heads) == layers and all(g.units == HEADS for g in heads)
    assert len(ffn) == layers
    hidden = [g for g in groups if g.units == 32 and not g.prunable]
    assert hidden, "the residual stream must be reported as not prunable"
    assert all(g.reason for g in hidden)


@pytest.mark.parametrize("file", TRANSFORMERS)
@pytest.mark.parametrize("compensate", [False, True])
def test_masked_equals_pruned_on_transformers(file, compensate):
    dims = DIMS if not file.startswith("vit") else [{"batch": 1}, {"batch": 3}]
    check_masked_equals_pruned(load_model(ROOT / "models/zoo" / file), trials=2,
                               compensate=compensate, dim_sets=dims)


def test_layernorm_is_named_as_the_barrier():
    groups = analyze_model(ROOT / "models/zoo/bert_tiny_opset17.onnx").analysis.groups
    assert any("LayerNorm" in (g.reason or "") for g in groups)


@pytest.mark.parametrize("file", ["bert_tiny.onnx", "bert_tiny_dynamo.onnx", "vit_tiny.onnx"])
def test_command_prunes_half_the_heads_and_runs_at_other_lengths(tmp_path, file):
    """The main command (Shapley + compensation) on calibration of one sequence length; the
    output keeps dynamic batch and sequence length and runs at others."""
    import onnx
    import onnxruntime as ort
    from click.testing import CliRunner
    from onnxprune_cli.main import main

    rng = np.random.default_rng(0)
    text = file.startswith("bert")

    def inputs(batch, seq):
        if text:
            return {"input_ids": rng.integers(0, 100, (batch, seq)).astype(np.int64),
                    "attention_mask": np.ones((batch, seq), np.int64)}
        return {"pixels": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}

    np.savez(tmp_path / "calib.npz", **inputs(16, 16))
    out = tmp_path / "pruned.onnx"
    result = CliRunner().invoke(main, [str(ROOT / "models/zoo" / file), "--calib",
                                       str(tmp_path / "calib.npz"), "--ratio", "0.5", "-o", str(out),
                                       "--no-latency", "--budget", "300", "-q",
                                       "--min-fidelity", "0",  # random weights, 4 held out
                                       "--uniform", "--target", "units"])  # half of each group
    assert result.exit_code == 0, result.output
    pruned = analyze_model(out).analysis.groups
    heads = [g for g in pruned if g.prunable and g.unit_size == HEAD_DIM]
    assert heads and all(g.units == HEADS // 2 for g in heads)
    ffn = [g for g in pruned if g.prunable and g.unit_size == 1 and g.units == 32]
    assert len(ffn) >= 2  # FFN 64 -> 32 in both layers
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(str(ROOT / "models/zoo" / file), providers=["CPUExecutionProvider"])
    for batch, seq in [(1, 5), (3, 23)] if text else [(1, 0), (5, 0)]:
        feeds = inputs(batch, seq)
        got, want = sess.run(None, feeds), original.run(None, feeds)
        assert [g.shape for g in got] == [w.shape for w in want]
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
