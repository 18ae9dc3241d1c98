"""The scoring engine: its values equal a plain ORT run of the fully instrumented model.

Ground truth everywhere is `exactness.session` (no ORT graph optimizations) on the model
instrumented for the same groups, one coalition per run, all N samples at once (one sample
per run for fixed-batch models). A linear probe value function makes every output element
count, so equal values mean equal outputs.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxprune.scoring.backends as backends_mod
import onnxprune.scoring.cut as cut_mod
import onnxprune.scoring.engine as engine_mod
import onnxprune.scoring.fixedbatch as fixedbatch_mod
from exactness import session
from onnxprune.scoring.backends import backend_for
from onnxprune.calib import Calibration
from onnxprune.scoring.cut import site_fill
from onnxprune.scoring.engine import Engine
from onnxprune.scoring.fixedbatch import make_batch_dynamic
from onnxprune.model import AnalyzedModel, analyze_model
from onnxprune.errors import OnnxPruneError
from onnxprune.compiler.graph import to_proto
from onnxprune.compiler.instrument import instrument, mask_name
from onnxprune.scoring.value import NegKL

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
N = 6


class Probe:
    """v_s = <output_s, W>: a random linear functional of every output element."""

    name = "probe"
    needs_labels = False

    def prepare(self, reference, labels) -> None:
        rng = np.random.default_rng(123)
        self.reference = reference
        self.w = [rng.standard_normal(r.shape[1:]) for r in reference]

    def __call__(self, outputs) -> np.ndarray:
        return sum((o.astype(np.float64) * w).reshape(o.shape[0], o.shape[1], -1).sum(-1)
                   for o, w in zip(outputs, self.w))


@lru_cache(maxsize=None)
def zoo(name: str) -> AnalyzedModel:
    return analyze_model(ZOO / f"{name}.onnx")


def calibration(am: AnalyzedModel, n: int = N, seed: int = 0) -> Calibration:
    """Random inputs: floats ~ N(0, 1), integers (token ids, masks) in [0, 4), other dynamic
    dims (sequence length) 8."""
    rng = np.random.default_rng(seed)

    def one(t) -> np.ndarray:
        shape = [n, *[d if isinstance(d, int) else 8 for d in t.shape[1:]]]
        dtype = np.dtype(t.dtype)
        return rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" \
            else rng.integers(0, 4, shape).astype(dtype)

    return Calibration({t.name: one(t) for t in am.analysis.graph.inputs})


def coalitions(units: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.random((k, units)) < 0.5
    c[0], c[-1] = True, False  # the full and the empty coalition are always in
    return c


def plain_values(am: AnalyzedModel, calib: Calibration, gids: list[int], coal: np.ndarray,
                 fill=None, per_sample: bool = False) -> np.ndarray:
    """The ground truth: the fully instrumented model, one coalition per run."""
    sess = session(to_proto(instrument(am.analysis, gids, fill=fill), am.ident))
    widths = np.cumsum([am.analysis.group(g).units for g in gids])[:-1]
    n = calib.n_samples
    per_coalition = []
    for row in coal.astype(np.float32):
        masks = {mask_name(g): np.repeat(m[None], n, axis=0) for g, m in zip(gids, np.split(row, widths))}
        feeds = {**calib.inputs, **masks}
        if per_sample:  # a fixed batch of 1
            runs = [sess.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(n)]
            per_coalition.append([np.concatenate(o) for o in zip(*runs)])
        else:
            per_coalition.append(sess.run(None, feeds))
    probe = Probe()
    ref = session(am.proto).run(None, {k: v[:1] for k, v in calib.inputs.items()}) if per_sample \
        else session(am.proto).run(None, calib.inputs)
    probe.prepare([np.zeros((n, *r.shape[1:]), r.dtype) for r in ref], None)
    return probe([np.stack(o) for o in zip(*per_coalition)])


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    scale = max(float(np.abs(want).max()), 1e-6)
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= 1e-4 * scale


@pytest.fixture(autouse=True)
def always_cut(monkeypatch):
    """Exactness must hold for every cut, also where the engine would not cut by default
    (an early group whose suffix is most of the model)."""
    monkeypatch.setattr(engine_mod, "_MAX_SUFFIX_SHARE", 1.0)


def positions(am: AnalyzedModel) -> list[int]:
    """An early, a middle and a late prunable group."""
    ids = [g.id for g in am.analysis.prunable]
    return sorted({ids[0], ids[len(ids) // 2], ids[-1]})


# ------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenetv2"])
def test_per_sample_coalitions_reach_their_own_samples(name):
    """Sample i of coalition k is evaluated under its own mask: each entry equals the value
    of that mask given to every sample (the ordinary [K, units] path, itself checked
    against plain runs)."""
    am = zoo(name)
    calib = calibration(am)
    engine = Engine(am, calib, Probe())
    assert engine.per_sample_masks
    for gid in positions(am):
        units = am.analysis.group(gid).units
        rng = np.random.default_rng(gid)
        coal = rng.random((3, calib.n_samples, units)) < 0.5
        got = engine.values(gid, coal)
        for k in range(3):
            for i in range(calib.n_samples):
                want = engine.values(gid, coal[k, i][None])[0, i]
                assert abs(got[k, i] - want) <= 1e-4 * max(abs(want), 1e-6)
    with pytest.raises(ValueError, match="coalitions must be"):
        engine.values(gid, np.ones((2, calib.n_samples + 1, units), bool))


@pytest.mark.parametrize("prefix", ["optimized", "source", None],
                         ids=["prefix", "prefix-source-cut", "no-prefix"])
@pytest.mark.parametrize("name", ["resnet_basic", "mobilenetv2", "vgg_bn", "inception"])
def test_values_equal_plain_run(name, prefix, monkeypatch):
    if prefix == "source":  # the cut of the source graph (CUDA, or ORT cannot save its graph)
        monkeypatch.setattr(cut_mod, "optimized_cpu_model", lambda model: None)
    am = zoo(name)
    calib = calibration(am)
    engine = Engine(am, calib, Probe(), prefix_cache=prefix is not None)
    for gid in positions(am):
        coal = coalitions(am.analysis.group(gid).units, 5, gid)
        assert_same(engine.values(gid, coal), plain_values(am, calib, [gid], coal))
        if prefix:
            assert engine.info()["plans"][str(gid)]["preoptimized"] == (prefix == "optimized")
    assert engine.path == ("batched+prefix" if prefix else "batched")
    assert engine.evaluations == 5 * len(positions(am))


def test_cpu_cut_is_made_on_orts_optimized_graph():
    # ORT's NCHWc tensors are cut tensors too: cached in their blocked layout, given the
    # dtype and dims a probe found, so a residual Add stays fused into its Conv in the suffix
    am = zoo("resnet_bottleneck")
    calib = calibration(am)
    engine = Engine(am, calib, Probe())
    gid = am.analysis.prunable[-1].id
    coal = coalitions(am.analysis.group(gid).units, 4, 0)
    assert_same(engine.values(gid, coal), plain_values(am, calib, [gid], coal))
    cut = engine._plans[(gid,)].cut
    assert cut.preoptimized and cut.plain is not None and cut.plain.mac_share == cut.mac_share
    made = [n for n in cut.cached if n not in engine._source_names]
    ops = {(n.domain, n.op_type) for n in cut.suffix.graph.node}
    if ("com.microsoft.nchwc", "Conv") in ops:  # NCHWc needs AVX2 or better
        assert made, "the residual should be cached in NCHWc layout"
        assert ("", "Add") not in ops  # fused into the Conv
    declared = {vi.name: vi.type.tensor_type for vi in cut.suffix.graph.input}
    for name in made:
        assert declared[name].elem_type and len(declared[name].shape.dim) >= 1
    plan = engine._plans[(gid,)]  # the budget counts what is held, padding included
    assert plan.cache_bytes == sum(plan.feeds[0][n].nbytes for n in cut.cached)


def test_trouble_with_orts_graph_falls_back_to_the_source_cut(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("an ORT graph graphsurgeon cannot read")
    monkeypatch.setattr(cut_mod, "_split_optimized", broken)
    am = zoo("resnet_basic")
    calib = calibration(am)
    engine = Engine(am, calib, Probe())
    gid = positions(am)[-1]
    coal = coalitions(am.analysis.group(gid).units, 3, 2)
    assert_same(engine.values(gid, coal), plain_values(am, calib, [gid], coal))
    plan = engine.info()["plans"][str(gid)]
    assert plan["prefix"] and not plan["preoptimized"]


def test_optimized_cut_without_probe_samples_falls_back_or_stays_exact(monkeypatch):
    # fixed batch 1 (no probe possible): ORT's tensors cannot be cut; values stay exact
    monkeypatch.setattr(engine_mod, "make_batch_dynamic", lambda *a, **k: None)
    am = zoo("resnet_basic_b1")
    calib = calibration(am, n=2)
    engine = Engine(am, calib, Probe())
    gid = positions(am)[-1]
    coal = coalitions(am.analysis.group(gid).units, 2, 1)
    assert_same(engine.values(gid, coal), plain_values(am, calib, [gid], coal, per_sample=True))
    cut = engine._plans[(gid,)].cut
    assert all(n in engine._source_names for n in cut.inputs)


@pytest.mark.parametrize("name", ["c2f", "unet", "nhwc", "resnext", "se_net_dynamo",
                                  "densenet", "audio1d", "bert_tiny", "gpt_block", "vit_tiny"])
def test_values_equal_plain_run_more_models(name):
    if not (ZOO / f"{name}.onnx").exists():
        pytest.skip(f"{name} is not in this zoo")
    am = zoo(name)
    calib = calibration(am)
    engine = Engine(am, calib, Probe())
    for gid in positions(am):
        coal = coalitions(am.analysis.group(gid).units, 4, gid)
        assert_same(engine.values(gid, coal), plain_values(am, calib, [gid], coal))


@pytest.mark.parametrize("name", ["resnet_basic", "se_net", "densenet"])
def test_values_with_fill_equal_plain_run(name):
    am = zoo(name)
    calib = calibration(am)
    rng = np.random.default_rng(5)
    gids = positions(am)
    fill = {g: rng.standard_normal(am.analysis.group(g).units) for g in gids}
    engine = Engine(am, calib, Probe(), fill=fill)
    for gid in gids:
        coal = coalitions(am.analysis.group(gid).units, 4, gid)
        want = plain_values(am, calib, [gid], coal, fill=site_fill(am.analysis, [gid], fill))
        assert_same(engine.values(gid, coal), want)
    # filling differs from zeroing (the fill reaches the outputs)
    zero = Engine(am, calib, Probe())
    coal = coalitions(am.analysis.group(gids[-1]).units, 3, 0)
    assert not np.allclose(zero.values(gids[-1], coal)[1:], engine.values(gids[-1], coal)[1:])


def test_site_fill_expands_units_to_channels():
    a = zoo("resnet_basic").analysis
    gid = 3
    per_unit = np.arange(a.group(gid).units, dtype=np.float64) + 1
    sites = site_fill(a, [gid], {gid: per_unit})
    assert sites
    for site in a.sites:
        inside = a.ch_group[site.ids] == gid
        if inside.any():
            vals = sites[(site.node, site.input_index)]
            np.testing.assert_array_equal(vals[inside], per_unit[a.ch_unit[site.ids][inside]])
    with pytest.raises(OnnxPruneError):
        site_fill(a, [gid], {gid: per_unit[:-1]})


def test_joint_values_equal_plain_run():
    am = zoo("resnet_basic")
    calib = calibration(am)
    gids = [1, 4]
    units = sum(am.analysis.group(g).units for g in gids)
    coal = coalitions(units, 4, 7)
    for prefix in (True, False):
        engine = Engine(am, calib, Probe(), prefix_cache=prefix)
        assert_same(engine.values_joint(gids, coal), plain_values(am, calib, gids, coal))


def test_full_coalition_is_the_reference():
    am = zoo("mobilenetv2")
    engine = Engine(am, calibration(am), NegKL())
    g = am.analysis.prunable[2]
    v = engine.values(g.id, np.ones((2, g.units), bool))
    assert np.all(np.abs(v) < 1e-6)


# ------------------------------------------------------------------------ fixed batch


def test_fixed_batch_made_dynamic():
    am = zoo("resnet_basic_b1")
    calib = calibration(am)
    engine = Engine(am, calib, Probe())
    assert engine.batch == "made dynamic"
    for gid in positions(am):
        coal = coalitions(am.analysis.group(gid).units, 3, gid)
        assert_same(engine.values(gid, coal), plain_values(am, calib, [gid], coal, per_sample=True))
    assert engine.path == "batched+prefix"


@pytest.mark.parametrize("prefix", [True, False], ids=["prefix", "no-prefix"])
def test_fixed_batch_fallback_one_per_run(monkeypatch, prefix):
    monkeypatch.setattr(engine_mod, "make_batch_dynamic", lambda *a, **k: None)
    am = zoo("resnet_basic_b1")
    calib = calibration(am, n=3)
    engine = Engine(am, calib, Probe(), prefix_cache=prefix)
    assert engine.batch == "fixed 1"
    gid = positions(am)[-1]
    coal = coalitions(am.analysis.group(gid).units, 3, 1)
    assert_same(engine.values(gid, coal), plain_values(am, calib, [gid], coal, per_sample=True))
    assert engine.path == "one-per-run (fixed batch)" + ("+prefix" if prefix else "")
    assert engine.info()["k_per_run"] == 1


def _fixed_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its batch dim set to a literal 1 (as a batch-1 export would have it)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for t in [*fixed.graph.input, *fixed.graph.output]:
        dim = t.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 1
    del fixed.graph.value_info[:]
    return fixed


def test_reshape_with_literal_batch_is_made_dynamic():
    # x.view(x.size(0), -1) folds to the target [1, -1] at batch 1: rewritten to [0, -1]
    am = analyze_model(_fixed_batch(onnx.load(ZOO / "flatten_gemm.onnx")))
    reshapes = [n for n in am.graph.nodes if n.op == "Reshape"]
    assert reshapes and int(reshapes[0].inputs[1].values[0]) == 1
    calib = calibration(am)
    engine = Engine(am, calib, Probe())
    assert engine.batch == "made dynamic"
    gid = am.analysis.prunable[0].id
    coal = coalitions(am.analysis.group(gid).units, 3, 2)
    assert_same(engine.values(gid, coal), plain_values(am, calib, [gid], coal, per_sample=True))


def test_constant_of_shape_with_literal_batch_is_not_made_dynamic():
    # y = Concat([Conv(x), ConstantOfShape([1, 2, 4, 4])], axis=1): batch 2 would break it
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], np.ones(12, np.float32))
    shape = helper.make_tensor("s", TensorProto.INT64, [4], [1, 2, 4, 4])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("ConstantOfShape", ["s"], ["z"]),
             helper.make_node("Concat", ["c", "z"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 4, 4])], [w, shape])
    am = analyze_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    samples = {"x": np.ones((2, 3, 4, 4), np.float32)}
    assert make_batch_dynamic(am.analysis, am.ident, samples) is None


def test_probe_tells_per_sample_tensors_from_mixed_ones():
    # r = Relu(x) keeps samples apart; e = Expand(ReduceSum over the batch, Shape(x)) mixes them
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=1, axes=[0]),
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Expand", ["s", "shape"], ["e"]),
             helper.make_node("Add", ["r", "e"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])])
    am = analyze_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]))
    samples = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    assert cut_mod.probe_aligned(am.analysis, am.ident, ["r", "e"], samples) == {"r"}
    assert cut_mod.probe_aligned(am.analysis, am.ident, ["r"], {"x": samples["x"][:1]}) == set()


def test_transformer_cut_tensors_are_probed():
    # shape inference loses the batch dim after the position-embedding Add; the probe finds it
    am = zoo("bert_tiny") if (ZOO / "bert_tiny.onnx").exists() else pytest.skip("no bert_tiny")
    engine = Engine(am, calibration(am), Probe())
    gid = positions(am)[0]
    engine.values(gid, coalitions(am.analysis.group(gid).units, 2, 0))
    assert engine.path == "batched+prefix" and engine._probed["/Add_output_0"]
    # one probe asked for every tensor of unknown batch dim at once (issue 16): the position
    # ids and their embeddings (no batch axis) are told apart, not cut
    assert {n for n, ok in engine._probed.items() if not ok} == {
        "/Slice_output_0", "/position_embeddings/Gather_output_0"}


# ------------------------------------------------------------------------- memory


def test_tiny_memory_budget_gives_small_runs_and_same_values():
    am = zoo("resnet_basic")
    calib = calibration(am, n=12)
    gid = positions(am)[1]
    coal = coalitions(am.analysis.group(gid).units, 6, 3)
    roomy = Engine(am, calib, Probe())
    tiny = Engine(am, calib, Probe(), max_memory_mb=4)
    want = roomy.values(gid, coal)
    got = tiny.values(gid, coal)
    info = tiny.info()
    assert info["k_per_run"] == 1 and info["samples_per_run"] < 12
    assert roomy.info()["plans"][str(gid)]["k_max"] > 1  # K itself is measured (tuning)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_max_coalitions_caps_k():
    am = zoo("vgg_bn")
    calib = calibration(am)
    gid = positions(am)[-1]
    engine = Engine(am, calib, Probe(), max_coalitions=3)
    coal = coalitions(am.analysis.group(gid).units, 7, 4)
    assert_same(engine.values(gid, coal), plain_values(am, calib, [gid], coal))
    assert engine.info()["k_per_run"] == 3


@pytest.mark.parametrize("optimized", [True, False], ids=["optimized-cut", "source-cut"])
def test_no_cut_where_the_suffix_is_most_of_the_model(monkeypatch, optimized):
    # the rule is for cuts of the source graph, which lose ORT fusions; a cut of ORT's
    # optimized graph runs a subset of a full run's kernels and is made at any share
    monkeypatch.setattr(engine_mod, "_MAX_SUFFIX_SHARE", 0.75)
    if not optimized:
        monkeypatch.setattr(cut_mod, "optimized_cpu_model", lambda model: None)
    am = zoo("resnet_basic")
    engine = Engine(am, calibration(am), Probe())
    early, late = positions(am)[0], positions(am)[-1]
    engine.values(early, coalitions(am.analysis.group(early).units, 2, 0))
    assert engine.path == ("batched+prefix" if optimized else "batched")
    engine.values(late, coalitions(am.analysis.group(late).units, 2, 0))
    assert engine.path == "batched+prefix"
    plans = engine.info()["plans"]
    assert plans[str(late)]["suffix_mac_share"] < 0.75 < plans[str(early)]["suffix_mac_share"]


def test_tuning_picks_k_within_the_budget_and_keeps_values():
    am = zoo("vgg_bn")
    calib = calibration(am)
    gid = positions(am)[-1]
    coal = coalitions(am.analysis.group(gid).units, 9, 4)
    fixed = Engine(am, calib, Probe(), tune=False).values(gid, coal)
    engine = Engine(am, calib, Probe(), max_coalitions=4)
    assert_same(engine.values(gid, coal), fixed)
    plan = engine.info()["plans"][str(gid)]
    assert plan["tuned"] and 1 <= plan["k_per_run"] <= plan["k_max"] == 4
    timed = plan["tuned_ms_per_coalition"]
    assert set(timed) <= {1, 2, 4} and plan["k_per_run"] == min(timed, key=timed.get)


def test_held_tiles_are_reused_by_every_run():
    backend = backends_mod.CpuBackend()
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    held = backend.hold({"x": x}, 4)
    assert held["x"].shape == (12, 2) and np.array_equal(held["x"][3:6], x)
    data, extra = backend.tiled(held, 2, 3)
    assert data["x"].shape == (6, 2) and np.shares_memory(data["x"], held["x"]) and not extra
    assert backend.hold({"x": x}, 1)["x"] is x  # one coalition: nothing copied


def test_value_function_gets_whole_blocks_of_runs():
    calls = []

    class Counting(Probe):
        def __call__(self, outputs):
            calls.append(outputs[0].shape[0])
            return super().__call__(outputs)

    am = zoo("resnet_basic")
    calib = calibration(am)
    gid = positions(am)[-1]
    coal = coalitions(am.analysis.group(gid).units, 10, 5)
    engine = Engine(am, calib, Counting(), max_coalitions=2, tune=False)
    assert calls == [1]  # the original's value, checked to be finite once
    calls.clear()
    assert_same(engine.values(gid, coal), plain_values(am, calib, [gid], coal))
    assert engine.info()["k_per_run"] == 2 and calls == [10]  # 5 runs, one value call
    engine._plans[(gid,)].est["value_coalitions"] = 3  # a small output budget: whole runs
    calls.clear()
    engine.values(gid, coal)
    assert calls == [2, 2, 2, 2, 2]


def test_cache_is_held_for_one_group_at_a_time():
    am = zoo("resnet_basic")
    engine = Engine(am, calibration(am), Probe())
    for g in am.analysis.prunable:
        engine.values(g.id, coalitions(g.units, 2, g.id))
    plans = engine.info()["plans"]
    assert len(plans) <= engine_mod._MAX_PLANS
    assert sum(p["cache_mb"] > 0 for p in plans.values()) <= 1


# -------------------------------------------------------------- outputs and errors


def _two_output_model() -> onnx.ModelProto:
    """out = Gemm(Relu(Conv(x))) and aux = ReduceMean(x): aux does not depend on any mask."""
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor("w1", TensorProto.FLOAT, [6, 3, 3, 3], rng.standard_normal(162).astype(np.float32)),
             helper.make_tensor("w2", TensorProto.FLOAT, [5, 6, 3, 3], rng.standard_normal(270).astype(np.float32)),
             helper.make_tensor("fc", TensorProto.FLOAT, [4, 5], rng.standard_normal(20).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["out"], transB=1),
             helper.make_node("ReduceMean", ["x"], ["aux"], axes=[2, 3], keepdims=0)]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 4]),
                               helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["b", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_mask_independent_output_comes_from_the_reference():
    am = analyze_model(_two_output_model())
    calib = calibration(am)
    for prefix in (True, False):
        engine = Engine(am, calib, Probe(), prefix_cache=prefix)
        for g in am.analysis.prunable:
            coal = coalitions(g.units, 4, g.id)
            assert_same(engine.values(g.id, coal), plain_values(am, calib, [g.id], coal))


def test_errors():
    am = zoo("resnet_basic")
    engine = Engine(am, calibration(am), Probe())
    g = am.analysis.prunable[0]
    with pytest.raises(ValueError):
        engine.values(g.id, np.ones((2, g.units + 1), bool))
    with pytest.raises(ValueError):
        engine.values_joint([g.id, g.id], np.ones((2, 2 * g.units), bool))
    unprunable = next(x for x in am.analysis.groups if not x.prunable)
    with pytest.raises(OnnxPruneError):
        engine.values(unprunable.id, np.ones((1, unprunable.units), bool))
    assert engine.values(g.id, np.ones((0, g.units), bool)).shape == (0, N)
    with pytest.raises(OnnxPruneError):
        Engine(am, Calibration({"other": np.zeros((2, 3, 32, 32), np.float32)}), Probe())


# ------------------------------------------------------------------ execution providers


class FakeOrtValue:
    def __init__(self, arr: np.ndarray, device: str) -> None:
        self.arr, self.device = arr, device

    def shape(self) -> list[int]:
        return list(self.arr.shape)


class FakeOrt:
    """Stands in for the onnxruntime module: OrtValues that remember their device."""

    class OrtValue:
        @staticmethod
        def ortvalue_from_numpy(arr, device="cpu", device_id=0):
            return FakeOrtValue(np.array(arr), device)


class FakeBinding:
    def __init__(self, log: list) -> None:
        self.feeds: dict[str, Any] = {}
        self.names: list[str] = []
        self.results: list[np.ndarray] = []
        self.log = log

    def bind_ortvalue_input(self, name, value):
        assert isinstance(value, FakeOrtValue) and value.device == "cuda"
        self.feeds[name] = value.arr
        self.log.append(("device", name))

    def bind_cpu_input(self, name, arr):
        self.feeds[name] = arr
        self.log.append(("host", name))

    def bind_output(self, name, device_type="cpu", device_id=0):
        assert device_type == "cuda"
        self.names.append(name)

    def get_outputs(self):
        return [FakeOrtValue(r, "cuda") for r in self.results]

    def copy_outputs_to_cpu(self):
        return list(self.results)


class FakeCudaSession:
    """A real CPU session that claims the CUDA provider and only runs through IO binding."""

    def __init__(self, real, log: list) -> None:
        self.real, self.log = real, log

    def get_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def get_inputs(self):
        return self.real.get_inputs()

    def get_outputs(self):
        return self.real.get_outputs()

    def io_binding(self):
        return FakeBinding(self.log)

    def run_with_iobinding(self, io):
        io.results = self.real.run(io.names, io.feeds)

    def run(self, *args, **kwargs):
        raise AssertionError("the CUDA path must use IO binding")


def test_backend_follows_the_provider_the_session_got():
    assert backend_for(FakeCudaSession(None, [])).device == "cuda"

    class Cpu:
        def get_providers(self):
            return ["CPUExecutionProvider"]
    assert backend_for(Cpu()).device == "cpu"


def test_cuda_path_binds_data_once_and_masks_per_run(monkeypatch):
    real_make_session = engine_mod.make_session
    log: list = []
    devices = []

    def fake_make_session(model, device="auto", threads=None, *, spinning=True):
        devices.append(device)
        return FakeCudaSession(real_make_session(model, "cpu", threads, spinning=spinning), log)

    for mod in (engine_mod, cut_mod, fixedbatch_mod):  # every session the engine makes
        monkeypatch.setattr(mod, "make_session", fake_make_session)
    for mod in (backends_mod, cut_mod):
        monkeypatch.setattr(mod, "ort", lambda: FakeOrt)
    am = zoo("resnet_basic")
    calib = calibration(am)
    gid = positions(am)[1]
    coal = coalitions(am.analysis.group(gid).units, 4, 9)
    engine = Engine(am, calib, Probe(), device="cuda")
    assert engine.info()["device"] == "cuda" and set(devices) == {"cuda"}
    log.clear()
    got = engine.values(gid, coal)
    assert_same(got, plain_values(am, calib, [gid], coal))
    host = {name for where, name in log if where == "host"}
    assert host == {mask_name(gid), cut_mod.TILE_INPUT}  # only masks cross per run
    assert any(where == "device" for where, _ in log)


def test_cuda_requested_without_cuda_is_an_error():
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    am = zoo("mlp")
    with pytest.raises(OnnxPruneError):
        Engine(am, calibration(am), Probe(), device="cuda")


# ------------------------------------------------------------- fixed batch > 1, any sample count


def _batch4_model() -> onnx.ModelProto:
    from graphs import G
    g = G(shape=(3, 8, 8), batch=4)
    y = g.op("Relu", g.conv(g.x, 8))
    y = g.op("Relu", g.conv(y, 8))
    return g.model(g.gemm(g.gap_flatten(y), 5))


def test_run_chunks_pads_a_fixed_batch():
    """A model exported with batch 4 runs 4 samples at a time; the tail is padded and cut
    back, so 10 samples give the same outputs as 10 single runs of a padded batch."""
    from onnxprune.runtime import fixed_batch, make_session, run_chunks
    sess = make_session(_batch4_model(), "cpu")
    assert fixed_batch(sess) == 4
    x = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)
    chunks = list(run_chunks(sess, {"x": x}, batch=64))
    assert [(a, b) for a, b, _ in chunks] == [(0, 4), (4, 8), (8, 10)]
    got = np.concatenate([o[0] for _, _, o in chunks])
    want = np.concatenate([sess.run(None, {"x": np.repeat(x[i:i + 1], 4, axis=0)})[0][:1]
                           for i in range(10)])
    assert got.shape == (10, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [3, 10])
def test_prune_fixed_batch_with_other_sample_counts(n):
    """Fewer or more samples than the fixed batch (and not a multiple of it) prune, and the
    pruned model keeps the batch it was exported with."""
    import onnxprune
    model = _batch4_model()
    x = np.random.default_rng(1).standard_normal((n, 3, 8, 8)).astype(np.float32)
    res = onnxprune.prune(model, {"x": x}, ratio=0.5, latency=True, round_to=1)
    assert res.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert res.report["after"]["params"] < res.report["before"]["params"]
    ver = res.report["verification"]
    assert 0 < ver["samples"] <= n and all(o["shape_ok"] for o in ver["outputs"])
    assert ver["latency"]["batch"] == 4


# ------------------------------------------------------------- where each output holds the samples


def _seq_first(batch, out_batch_dim, reduce_batch: bool = False) -> onnx.ModelProto:
    """x [B, 4, 6] -> Transpose(2, 0, 1) -> y [6, B, 4]; with `reduce_batch` a second output
    ReduceSum over axis 0 of x ([4, 6]: no axis follows the batch)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 6])
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, out_batch_dim, 4])]
    nodes = [helper.make_node("Transpose", ["x"], ["y"], perm=[2, 0, 1])]
    if reduce_batch:
        nodes.append(helper.make_node("ReduceSum", ["x", "ax"], ["s"], keepdims=0))
        outs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [4, 6]))
    inits = [onnx.numpy_helper.from_array(np.array([0], np.int64), "ax")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], outs, inits),
                             opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("batch,out_dim", [("N", "N"), ("N", None), (1, 1)])
def test_batch_axes_finds_a_sequence_first_output(batch, out_dim):
    """From the declared batch symbol, by two runs (batch 1 and 2), or for a fixed batch of 1
    from the one axis of that size; run_chunks then puts the samples on axis 0."""
    from onnxprune.runtime import batch_axes, make_session, run_chunks
    sess = make_session(_seq_first(batch, out_dim), "cpu")
    x = np.random.default_rng(0).standard_normal((3, 4, 6)).astype(np.float32)
    assert batch_axes(sess, {"x": x}, ["y"]) == [1]
    got = np.concatenate([o[0] for _, _, o in run_chunks(sess, {"x": x}, 64, ["y"], axes=[1])])
    np.testing.assert_array_equal(got, x.transpose(0, 2, 1))


def test_batch_axes_refuses_an_output_without_samples():
    from onnxprune.runtime import batch_axes, make_session
    sess = make_session(_seq_first("N", "N", reduce_batch=True), "cpu")
    x = np.zeros((3, 4, 6), np.float32)
    with pytest.raises(OnnxPruneError, match="output 's'"):
        batch_axes(sess, {"x": x}, ["y", "s"])


@pytest.mark.parametrize("built", ["batch_softmax_mlp", "crnn_seq_first"])
def test_mixing_path_caches_the_prefix_and_stays_exact(built):
    """Batch-mixing models (one coalition per run over the whole set, or per sample with a
    fixed batch 1) run only the suffix per coalition (issue 16); values equal plain runs."""
    import exporters as E
    model, data = getattr(E, built)()
    am = analyze_model(model)
    assert am.analysis.batch_mixing
    calib = Calibration({k: v for k, v in data.items() if k != "labels"})
    fixed = built == "crnn_seq_first"
    cached, plain = Engine(am, calib, Probe()), Engine(am, calib, Probe(), prefix_cache=False)
    for gid in [g.id for g in am.analysis.prunable]:
        coal = coalitions(am.analysis.group(gid).units, 4, gid)
        got = cached.values(gid, coal)
        assert_same(got, plain.values(gid, coal))  # the path before the cache, unchanged
        if not fixed:  # plain_values stacks samples on axis 0: not a sequence-first output
            assert_same(got, plain_values(am, calib, [gid], coal))
    assert cached.path.endswith("+prefix") and not plain.path.endswith("+prefix")


def test_tuning_is_reused_for_a_suffix_of_the_same_size(monkeypatch):
    """K tuning (a dozen runs) is measured once per suffix size class (issue 16)."""
    am = zoo("vgg_bn")
    calib = calibration(am)
    first, second = positions(am)[-2:]
    monkeypatch.setattr(engine_mod, "size_class", lambda plan: (0, 0))
    engine = Engine(am, calib, Probe(), max_coalitions=4)
    fixed = Engine(am, calib, Probe(), tune=False)
    for gid in (first, second):
        coal = coalitions(am.analysis.group(gid).units, 9, gid)
        assert_same(engine.values(gid, coal), fixed.values(gid, coal))
    plans = engine.info()["plans"]
    assert "tuned_ms_per_coalition" in plans[str(first)]
    assert plans[str(second)]["tuned_from_size_class"] == [0, 0]
    assert plans[str(second)]["k_per_run"] == plans[str(first)]["k_per_run"]


def test_tuning_stops_where_the_planned_work_stops_paying():
    """K tuning costs about 6 K coalitions: with the group's planned work known, K is tuned
    up to work / _TUNE_WORK, and a group with under 2 x _TUNE_WORK is not tuned (issue 16:
    on digits_cnn tuning ran more coalitions than scoring); values are unchanged."""
    from onnxprune.scoring.tuning import _TUNE_WORK
    am = zoo("vgg_bn")
    calib = calibration(am)
    gid = positions(am)[-1]
    coal = coalitions(am.analysis.group(gid).units, 9, 4)
    fixed = Engine(am, calib, Probe(), tune=False).values(gid, coal)
    small, capped = Engine(am, calib, Probe()), Engine(am, calib, Probe())
    small.expected[gid], capped.expected[gid] = 2 * _TUNE_WORK - 1, 2 * _TUNE_WORK
    assert_same(small.values(gid, coal), fixed)
    assert_same(capped.values(gid, coal), fixed)
    assert not small.info()["plans"][str(gid)]["tuned"]
    plan = capped.info()["plans"][str(gid)]
    assert plan["tuned"] and set(plan["tuned_ms_per_coalition"]) <= {1, 2}


# ------------------------------------------------------------------ ORT rewrites left out


def _suffix_ops(engine: Engine, gid: int) -> set[str]:
    return {n.op_type for n in engine._plans[(gid,)].cut.suffix.graph.node}


@pytest.mark.parametrize("name", ["bert_tiny", "hf_bert"])
def test_values_without_skiplayernorm_fusion_equal_before_to_float32_rounding(name, monkeypatch):
    """The engine's CPU sessions leave out SkipLayerNormFusion (cut.CPU_DISABLED_OPTIMIZERS:
    slower than LayerNorm + Add). The values are those of the engine with every rewrite,
    to float32 rounding (the fused kernel sums in another order), and the plain run's."""
    am = zoo(name)
    calib = calibration(am)
    gid = positions(am)[1]
    coal = coalitions(am.analysis.group(gid).units, 6, 3)
    new = Engine(am, calib, Probe())
    got = new.values(gid, coal)
    for mod in (cut_mod, engine_mod):
        monkeypatch.setattr(mod, "CPU_DISABLED_OPTIMIZERS", ())
    old = Engine(am, calib, Probe())
    before = old.values(gid, coal)
    assert "SkipLayerNormalization" in _suffix_ops(old, gid)  # the test sees the fusion
    assert "SkipLayerNormalization" not in _suffix_ops(new, gid)
    scale = float(np.abs(before).max())
    assert float(np.abs(got - before).max()) <= 1e-5 * scale
    assert_same(got, plain_values(am, calib, [gid], coal))


def test_tiny_residual_layernorm_values_equal_with_and_without_the_fusion(monkeypatch):
    """x -> MatMul -> Relu -> MatMul -> + x -> LayerNorm: the pattern ORT fuses into
    SkipLayerNormalization; the engine's values without the fusion equal those with it to
    float32 rounding, and the plain run's."""
    rng = np.random.default_rng(5)
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [8, 16], rng.standard_normal(128).tolist())
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [16, 8], rng.standard_normal(128).tolist())
    scale = helper.make_tensor("s", TensorProto.FLOAT, [8], rng.standard_normal(8).tolist())
    bias = helper.make_tensor("b", TensorProto.FLOAT, [8], rng.standard_normal(8).tolist())
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["d"]), helper.make_node("Add", ["d", "x"], ["a"]),
             helper.make_node("LayerNormalization", ["a", "s", "b"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8])],
                              [w1, w2, scale, bias])
    am = analyze_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    (g,) = am.analysis.prunable
    calib = calibration(am)
    coal = coalitions(g.units, 8, 4)
    got = Engine(am, calib, Probe(), prefix_cache=False).values(g.id, coal)
    ops = lambda: {n.op_type for n in cut_mod.optimized_cpu_model(am.proto).graph.node}  # noqa: E731
    assert "SkipLayerNormalization" not in ops()
    for mod in (cut_mod, engine_mod):
        monkeypatch.setattr(mod, "CPU_DISABLED_OPTIMIZERS", ())
    assert "SkipLayerNormalization" in ops()  # the test sees the fusion
    before = Engine(am, calib, Probe(), prefix_cache=False).values(g.id, coal)
    assert float(np.abs(got - before).max()) <= 1e-5 * float(np.abs(before).max())
    assert_same(got, plain_values(am, calib, [g.id], coal))
