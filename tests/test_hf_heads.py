"""Attention heads in Hugging Face exports (issue 17): one prunable group per layer whose unit
is a head (unit_size == head_dim), in every encoder and decoder of the zoo, from the legacy and
the dynamo exporter. xfail(strict) marks what the analysis cannot do yet; DIAGNOSIS of issue 17
names the barrier of each."""
import json

import pytest

from conftest import ROOT
from onnxprune.api import analyze_model

MANIFEST = json.loads((ROOT / "models/zoo/manifest.json").read_text())
HF = sorted(e["file"] for e in MANIFEST if e.get("family") == "hf")
HEADS, HEAD_DIM, LAYERS = 4, 8, 2

MASK = "the additive mask (Expand + Where(mask, 0, finfo.min)) is not followed, so neither is Softmax"
CONV1D = "GPT-2 Conv1D: Reshape back to Concat(Shape(x)[:2], [C]), a run-time target"
TODAY = {
    "hf_bert.onnx": MASK, "hf_bert_opset17.onnx": MASK, "hf_distilbert.onnx": MASK,
    "hf_roberta.onnx": MASK, "hf_gpt2.onnx": CONV1D, "hf_gpt2_opset18.onnx": CONV1D,
    "hf_gpt2_dynamo.onnx": CONV1D,
    # heads also reach the past key/value inputs and the present outputs (the cache's width)
    "hf_gpt2_past.onnx": CONV1D + "; cache inputs/outputs", "hf_gpt2_past_dynamo.onnx": CONV1D + "; cache",
}


def _param(file: str):
    if file in TODAY:
        return pytest.param(file, marks=pytest.mark.xfail(strict=True, reason=f"issue 17: {TODAY[file]}"))
    return file


def test_every_hf_export_is_listed():
    assert len(HF) == 14 and set(TODAY) <= set(HF)


@pytest.mark.parametrize("file", [_param(f) for f in HF])
def test_attention_heads_are_prunable(file):
    groups = analyze_model(ROOT / "models/zoo" / file).analysis.groups
    heads = [g for g in groups if g.prunable and g.unit_size == HEAD_DIM and g.units == HEADS]
    assert len(heads) == LAYERS, [(g.units, g.unit_size, g.reason) for g in groups]
