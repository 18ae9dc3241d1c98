"""The invariant on every zoo model, as the exporters wrote them (models/zoo/manifest.json)."""
import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from conftest import ROOT
from exactness import check_masked_equals_pruned
from onnxprune.load import load_model

MANIFEST = json.loads((ROOT / "models/zoo/manifest.json").read_text())
ZOO = sorted(e["file"] for e in MANIFEST if e.get("family") is None)
# issue 17: real exporters' idioms (Hugging Face, tf2onnx/jax2tf, paddle2onnx, channel shuffle)
ISSUE17 = {e["file"]: e for e in MANIFEST if e.get("family") in ("hf", "exporter_idiom", "shuffle")}
LIGHT_DIR = __import__("pathlib").Path(onnx.__file__).parent / "backend/test/data/light"
LIGHT_MODELS = ["squeezenet", "resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet"]


# whole by necessity besides the head: YOLOv8's 4 x 16 box bins, viewed [n, 4, 16, A] and
# transposed for the DFL softmax over the bins (a fixed decode: no bin can go)
ALSO_WHOLE = {"yolov8_det.onnx": "channel shuffle", "yolov8_det_dynamo.onnx": "channel shuffle"}


@pytest.mark.parametrize("file", ZOO)
def test_masked_equals_pruned_on_zoo(file):
    analysis = check_masked_equals_pruned(load_model(ROOT / "models/zoo" / file), trials=3)
    # only the classifier head (it reaches the graph output) may stay whole
    stuck = [g.reason for g in analysis.groups if not g.prunable and "graph output" not in g.reason]
    assert all(ALSO_WHOLE.get(file, "(none)") in r for r in stuck), stuck
    assert len(stuck) <= (file in ALSO_WHOLE), stuck


@pytest.mark.parametrize("file", ZOO)
def test_compensated_masked_equals_pruned_on_zoo(file):
    """Compensation scored (output-side term) == compensation deployed (bias fold)."""
    check_masked_equals_pruned(load_model(ROOT / "models/zoo" / file), trials=2, compensate=True)


def _dim_sets(entry: dict) -> list[dict[str, int]]:
    """Two batch sizes x two lengths of whatever else is dynamic (seq, past, width); total = past + seq."""
    names = {d for i in entry["inputs"] for d in i["shape"] if isinstance(d, str)} - {"batch"}
    sets = []
    for batch in (1, 3):
        for length in ((5, 11) if names else (0,)):
            dims = {"batch": batch, "seq": length, "past": length - 2, "width": length + 2}
            sets.append(dims | {"total": dims["past"] + dims["seq"]})
    return sets


@pytest.mark.parametrize("file", sorted(ISSUE17))
def test_masked_equals_pruned_on_issue17_zoo(file):
    """Exact at two batch sizes x two sequence lengths; a model with no prunable group yet
    must say why for every group (issue 17 lists what stays whole today)."""
    check_masked_equals_pruned(load_model(ROOT / "models/zoo" / file), trials=2,
                               dim_sets=_dim_sets(ISSUE17[file]), require_prunable=False)


def _cache_dim_sets() -> list[dict[str, int]]:
    """Two batch sizes x two lengths (one: a decoding step) x two past lengths."""
    return [{"batch": b, "seq": s, "past": p, "total": p + s}
            for b in (1, 3) for s in (1, 5) for p in (2, 7)]


@pytest.mark.parametrize("file", ["hf_gpt2_past.onnx", "hf_gpt2_past_dynamo.onnx"])
def test_masked_equals_pruned_with_prune_cache(file):
    """--prune-cache: the heads shrink the past/present cache; the masked model is fed the
    original-width past, the pruned one the past of the kept heads (exactness.cache_slices),
    their present outputs compared on the kept heads."""
    analysis = check_masked_equals_pruned(load_model(ROOT / "models/zoo" / file), trials=2,
                                          dim_sets=_cache_dim_sets(), prune_cache=True)
    assert sum(g.unit_size == 8 and g.units == 4 for g in analysis.prunable) == 2


def test_no_batch_mixing_reported_on_real_exports():
    """Per-sample coalitions stay on for every zoo export (no false alarms)."""
    from onnxprune.compiler.analyze import analyze
    from onnxprune.compiler.normalize import normalize
    for entry in MANIFEST:
        if entry["file"] in ISSUE17:
            continue  # test_no_batch_mixing_on_issue17_zoo, one by one
        analysis = analyze(normalize(load_model(ROOT / "models/zoo" / entry["file"])))
        assert not analysis.batch_mixing, (entry["file"], analysis.batch_mixing)


# still reported: in the legacy GPT-2 with past, the mask gather's row b * total + s with
# s < past + seq (not provably < total). (GPT-2's Conv1D mask sites on batch x seq rows are
# masked per sample by instrument.py.)
BATCH_MIXING_FALSE_ALARMS = {
    "hf_gpt2_past.onnx": "issue 17: the legacy past mask gather's row bound b * total + s is unproven"}


@pytest.mark.parametrize("file", [
    pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=BATCH_MIXING_FALSE_ALARMS[f]))
    if f in BATCH_MIXING_FALSE_ALARMS else f for f in sorted(ISSUE17)])
def test_no_batch_mixing_on_issue17_zoo(file):
    from onnxprune.compiler.analyze import analyze
    from onnxprune.compiler.normalize import normalize
    analysis = analyze(normalize(load_model(ROOT / "models/zoo" / file)))
    assert not analysis.batch_mixing, analysis.batch_mixing


def test_masked_equals_pruned_on_example():
    check_masked_equals_pruned(load_model(ROOT / "models/digits_cnn.onnx"), trials=3)


def _randomized(name: str, seed: int = 0) -> onnx.ModelProto:
    """The light models' weights are ConstantOfShape fills (all equal), which would hide
    wrong slicing; give every float constant random values first."""
    from onnxprune.compiler.graph import ModelIdentity, to_proto
    from onnxprune.compiler.normalize import normalize
    model = load_model(LIGHT_DIR / f"light_{name}.onnx")
    graph = normalize(model)
    rng = np.random.default_rng(seed)
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and t.values.dtype == np.float32 and t.values.size > 1:
            if t.values.ndim == 1:  # biases and norm parameters; positive keeps BN variances valid
                t.values = rng.uniform(0.5, 1.5, t.values.shape).astype(np.float32)
            else:
                scale = 1.0 / np.sqrt(t.values[0].size)
                t.values = (rng.standard_normal(t.values.shape) * scale).astype(np.float32)
    return to_proto(graph, ModelIdentity.of(model))


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_masked_equals_pruned_on_light_models(name):
    check_masked_equals_pruned(_randomized(name), trials=2, batch=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg19", "bvlc_alexnet", "zfnet512"])
def test_masked_equals_pruned_on_large_light_models(name):
    check_masked_equals_pruned(_randomized(name), trials=1, batch=1)


def test_gpt2_past_scores_through_the_prefix_cut():
    """The legacy GPT-2 with past scores one coalition per run (its mask gather is not proven
    per sample); its merged-row mask sites read a row shape that only the instrumentation
    computes, which the prefix (cut from the source graph) cannot: the cut pulls it into the
    suffix (it raised KeyError 'onnxprune_site*_rows_rest' in cut._prefix)."""
    import numpy as np
    from onnxprune import analyze_model
    from onnxprune.api import as_calibration, score_model
    rng = np.random.default_rng(0)
    n, seq, past = 6, 4, 3
    calib = {"input_ids": rng.integers(1, 100, (n, seq)).astype(np.int64),
             "attention_mask": np.ones((n, past + seq), np.int64)}
    for i in range(2):
        for t in ("key", "value"):
            calib[f"past_key_values.{i}.{t}"] = rng.standard_normal((n, 4, past, 8)).astype(np.float32)
    am = analyze_model(str(ROOT / "models/zoo/hf_gpt2_past.onnx"))
    assert am.analysis.batch_mixing  # the path this test is about
    gid = am.analysis.prunable[0].id
    out = score_model(am, as_calibration(calib, am.proto), metric="shapley", budget=130, groups=[gid])
    assert np.isfinite(out[gid].values).all()
