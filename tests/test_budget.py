"""The budget allocator (deploy/select.py) and the guard between allocations (issue 15)."""
import numpy as np
import pytest

import onnxprune
from graphs import G
from onnxprune.api import as_calibration, value_function
from onnxprune.deploy.candidates import GUARD_Z, Guard, Paired, deploy_allocations
from onnxprune.deploy.select import DEFAULT_TARGET, Budget, floor_keep, lamp, select
from onnxprune.model import analyze_model


def mlp(widths=(16, 32)):
    g = G(shape=(4,), seed=1)
    h = g.x
    for w in widths:
        h = g.op("Relu", g.gemm(h, w))
    return g.model(g.gemm(h, 3))


@pytest.fixture(scope="module")
def am():
    return analyze_model(mlp())


def random_scores(am, seed=0):
    rng = np.random.default_rng(seed)
    return {g.id: rng.standard_normal(g.units) for g in am.analysis.prunable}


def step_cost(am, scores, target, multiple=1):
    """The largest cost fraction one removal step can take (one unit or one block)."""
    budget = Budget(am.analysis, scores)
    i = {"params": 0, "macs": 1}.get(target)
    base = budget.units if i is None else budget.prunable[i]
    return max(budget.unit_cost(g, target) * multiple for g in scores) / base


@pytest.mark.parametrize("target", ["params", "macs", "units"])
@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.5, 0.8])
def test_budget_met_within_one_unit_of_cost(am, target, ratio):
    for seed in range(3):
        scores = random_scores(am, seed)
        keep = select(am.analysis, scores, ratio, target=target, min_keep=1)
        removed = Budget(am.analysis, scores).removed(keep, target)
        assert abs(removed - ratio) <= step_cost(am, scores, target) + 1e-9, (seed, removed)


def cnn(widths=(16, 32)):
    g = G(shape=(3, 8, 8), seed=1)
    h = g.x
    for w in widths:
        h = g.op("Relu", g.conv(h, w))
    return g.model(g.gemm(g.gap_flatten(h), 3))


@pytest.mark.parametrize("round_to", [4, 8])
def test_rounding_keeps_multiples_and_meets_the_budget_within_one_block(round_to):
    am = analyze_model(cnn())
    scores = random_scores(am, 1)
    keep = select(am.analysis, scores, 0.5, target="params", round_to=round_to, min_keep=1)
    for gid, kept in keep.items():
        assert len(kept) % round_to == 0 or len(kept) == len(scores[gid])
    assert any(len(k) < len(scores[g]) for g, k in keep.items())
    removed = Budget(am.analysis, scores).removed(keep, "params")
    assert abs(removed - 0.5) <= step_cost(am, scores, "params", round_to) + 1e-9


def test_gemm_neurons_are_not_rounded(am):
    """Rounding is for channel-blocked ops (Conv): an MLP's widths are as without it."""
    scores = random_scores(am, 1)
    for target in ("params", "units"):
        assert ({g: k.tolist() for g, k in select(am.analysis, scores, 0.5, target=target, round_to=16).items()}
                == {g: k.tolist() for g, k in select(am.analysis, scores, 0.5, target=target).items()})


def test_a_large_step_that_overshoots_is_passed_over_for_smaller_ones(am):
    # g0's units cost 37 params (4 in + bias + 32 out), g1's 20: g0 ranks lowest, and at this
    # ratio its next unit would pass the budget by more than the prefix falls short
    g0, g1 = (g.id for g in am.analysis.prunable)
    scores = {g0: np.linspace(0, 1, 16), g1: np.linspace(10, 20, 32)}
    budget = Budget(am.analysis, scores)
    unit = budget.unit_cost(g1, "params") / budget.prunable[0]
    ratio = 2.45 * budget.unit_cost(g0, "params") / budget.prunable[0]
    keep = select(am.analysis, scores, ratio, target="params", min_keep=1)
    assert len(keep[g0]) == 14 and len(keep[g1]) < 32     # two of g0, the rest from g1
    assert abs(budget.removed(keep, "params") - ratio) <= unit / 2 + 1e-9


def test_global_removes_where_scores_are_lowest(am):
    g0, g1 = (g.id for g in am.analysis.prunable)
    scores = {g0: np.linspace(10, 20, 16), g1: np.linspace(0, 1, 32)}
    keep = select(am.analysis, scores, 0.2, target="units", min_keep=1)
    assert len(keep[g0]) == 16 and len(keep[g1]) == 32 - 10   # 0.2 of 48 units, all from g1
    assert set(keep[g1]) == set(range(10, 32))                 # its lowest-scored ones


@pytest.mark.parametrize("min_keep,least", [(0.25, 8), (0.5, 16), (5, 5), (0, 1)])
def test_floor_holds_however_low_a_group_scores(am, min_keep, least):
    g0, g1 = (g.id for g in am.analysis.prunable)
    scores = {g0: np.linspace(10, 20, 16), g1: np.linspace(0, 1, 32)}
    keep = select(am.analysis, scores, 0.9, target="params", min_keep=min_keep)
    assert len(keep[g1]) == least
    assert floor_keep(32, min_keep) == least


def test_floor_rounds_up_to_the_multiple():
    assert floor_keep(32, 0.1, 8) == 8 and floor_keep(32, 9, 8) == 16 and floor_keep(6, 0.1, 8) == 6


def test_heuristic_scores_are_normalized_per_group(am):
    """A layer's scale must not decide a global ranking of heuristic scores (LAMP)."""
    scores = random_scores(am, 2)
    scores = {g: np.abs(s) for g, s in scores.items()}
    g0 = next(iter(scores))
    scaled = {**scores, g0: scores[g0] * 1000}
    same = lambda a, b: all(np.array_equal(a[g], b[g]) for g in a)
    kw = dict(target="params", min_keep=1)
    assert same(select(am.analysis, scores, 0.5, normalize=True, **kw),
                select(am.analysis, scaled, 0.5, normalize=True, **kw))
    assert not same(select(am.analysis, scores, 0.5, **kw), select(am.analysis, scaled, 0.5, **kw))
    assert lamp(np.array([1.0, 3.0, 2.0])).tolist() == pytest.approx([1 / 6, 1.0, 2 / 5])


def test_uniform_removes_the_same_fraction_everywhere(am):
    scores = random_scores(am, 3)
    keep = select(am.analysis, scores, 0.5, target="units", uniform=True)
    assert [len(k) for k in keep.values()] == [8, 16]
    keep = select(am.analysis, scores, 0.5, target="params", uniform=True)
    removed = Budget(am.analysis, scores).removed(keep, "params")
    assert abs(removed - 0.5) <= step_cost(am, scores, "params") + 1e-9
    widths = [len(k) / len(scores[g]) for g, k in keep.items()]
    assert max(widths) - min(widths) < 0.1


def test_guard_ships_the_allocation_that_wins_on_held_out_samples(am):
    rng = np.random.default_rng(0)
    data = as_calibration({"x": rng.standard_normal((32, 4)).astype(np.float32)}, am.proto)
    guard = Guard(am.proto, data, value_function(am, data), "32 samples")
    g0, g1 = (g.id for g in am.analysis.prunable)
    good = {g0: np.arange(16), g1: np.arange(1, 32)}      # one unit gone
    bad = {g0: np.array([0]), g1: np.array([0])}            # almost everything gone
    for keeps, winner in (({"global": bad, "uniform": good}, "uniform"),
                          ({"global": good, "uniform": bad}, "global"),
                          ({"global": good, "uniform": good}, "global")):
        choice = deploy_allocations(am.analysis, am.ident, keeps, means=None, refit_data=None,
                                    guard=guard)
        assert choice.allocation == winner
        assert all(np.array_equal(choice.keep[g], keeps[winner][g]) for g in keeps[winner])
        if keeps["global"] is not keeps["uniform"]:
            values = choice.to_json(guard)["allocation_values"]
            assert values[winner] == max(values.values()) and len(values) == 2
            assert guard.value(choice.model) == pytest.approx(values[winner], abs=1e-5)


def _paired(g, u, z=2.0):
    return Paired.of(("global", np.asarray(g, float)), ("uniform", np.asarray(u, float)), z)


def test_paired_rule_keeps_global_unless_uniform_wins_beyond_noise():
    rng = np.random.default_rng(0)
    g = rng.normal(-0.2, 0.1, 24)
    assert not _paired(g, g).wins                                  # a tie keeps global
    noisy = g + rng.normal(0.005, 0.05, 24)                       # ahead on the mean, by noise
    assert noisy.mean() > g.mean() and not _paired(g, noisy).wins
    assert _paired(g, noisy, z=0).wins                             # z = 0: the higher mean
    clear = g + rng.normal(0.1, 0.02, 24)
    d = _paired(g, clear)
    assert d.wins and d.difference == pytest.approx(np.mean(clear - g))
    assert d.stderr == pytest.approx(np.std(clear - g, ddof=1) / np.sqrt(24))
    assert not _paired(g, g - 0.5).wins                            # uniform clearly worse


def test_paired_rule_nan_never_wins():
    g = np.full(8, -0.3)
    bad = g.copy()
    bad[3] = np.nan
    assert not _paired(g, bad).wins and not _paired(g, bad, z=0).wins
    assert _paired(bad, g).wins                                    # a broken global loses
    assert not _paired(bad, bad).wins
    assert _paired(g, bad).to_json()["difference"] is None


def test_deploy_allocations_decides_on_the_paired_guard_samples(am):
    """Two allocations one unit apart: the decision is the paired rule on the per-sample
    guard values of each allocation's shipped candidate, at the z given."""
    rng = np.random.default_rng(0)
    data = as_calibration({"x": rng.standard_normal((32, 4)).astype(np.float32)}, am.proto)
    guard = Guard(am.proto, data, value_function(am, data), "32 samples")
    g0, g1 = (g.id for g in am.analysis.prunable)
    keeps = {"global": {g0: np.arange(1, 16), g1: np.arange(32)},
             "uniform": {g0: np.arange(15), g1: np.arange(32)}}
    for z in (0.0, 2.0, 1e6):
        choice = deploy_allocations(am.analysis, am.ident, keeps, means=None, refit_data=None,
                                    guard=guard, z=z)
        d = choice.decision
        assert (d.z, d.samples, d.preferred, d.challenger) == (z, 32, "global", "uniform")
        assert choice.allocation == ("uniform" if d.difference > z * d.stderr else "global")
    assert choice.allocation == "global"  # z = 1e6: no finite lead is beyond the noise


def test_prune_reports_allocation_and_removed_fractions(am):
    rng = np.random.default_rng(0)
    calib = {"x": rng.standard_normal((32, 4)).astype(np.float32)}
    res = onnxprune.prune(am, calib, ratio=0.5, metric="l1", latency=False)
    removed = res.report["removed"]
    assert set(removed) == {"units", "params", "macs"}
    assert abs(removed[DEFAULT_TARGET] - 0.5) <= step_cost(am, res.scores, DEFAULT_TARGET) + 1e-6
    assert res.report["deploy"]["allocation"] in ("global", "uniform")
    rule = res.report["deploy"]["allocation_rule"]  # the guard's paired decision, stated
    assert rule["shipped"] == res.report["deploy"]["allocation"]
    assert (rule["preferred"], rule["challenger"], rule["samples"]) == ("global", "uniform", 8)
    assert rule["rule"] == ("paired" if GUARD_Z > 0 else "mean") and rule["z"] == GUARD_Z
    assert (rule["shipped"] == "uniform") == (rule["difference"] > GUARD_Z * rule["stderr"])
    from onnxprune_cli.render import _allocation_line
    line = _allocation_line(res.report["deploy"])
    assert line.startswith(f"allocation: {rule['shipped']}") and "8 paired samples" in line
    uni = onnxprune.prune(am, calib, ratio=0.5, metric="l1", latency=False, uniform=True,
                          target="units")
    assert uni.report["deploy"]["allocation"] == "uniform"
    assert uni.report["removed"]["units"] == pytest.approx(0.5)


@pytest.mark.parametrize("min_keep", [-0.1, 1.5])
def test_bad_min_keep_is_a_user_error(min_keep):
    with pytest.raises(onnxprune.OnnxPruneError, match="--min-keep"):
        onnxprune.PruneOptions(min_keep=min_keep).validate()


def test_min_keep_compounds_over_steps():
    opts = onnxprune.PruneOptions(min_keep=0.25, steps=2)
    assert opts.step_min_keep() == pytest.approx(0.5)
    assert onnxprune.PruneOptions(min_keep=3, steps=2).step_min_keep() == 3


def test_a_run_far_short_of_the_budget_says_why(am):
    """Under half the budget removed: the report says so; on an MLP (nothing rounded) it
    names the floor, not the rounding."""
    calib = {"x": np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)}
    res = onnxprune.prune(am, calib, ratio=0.8, metric="l1", latency=False, min_keep=0.9)
    short = [w for w in res.report["warnings"] if w.startswith("removed ")]
    assert res.report["removed"][DEFAULT_TARGET] < 0.4 and len(short) == 1, res.report["warnings"]
    assert "--min-keep" in short[0] and "--round-to" not in short[0]
    res = onnxprune.prune(am, calib, ratio=0.5, metric="l1", latency=False)
    assert not any(w.startswith("removed ") for w in res.report["warnings"])


def _dynamic_hw(model):
    """The same model as exported with dynamic H and W (PP-OCR's detector, torch's
    dynamic_axes): input dims named, every shape below it unknown."""
    import onnx
    dyn = onnx.ModelProto()
    dyn.CopyFrom(model)
    dims = dyn.graph.input[0].type.tensor_type.shape.dim
    for i, name in ((2, "H"), (3, "W")):
        dims[i].Clear()
        dims[i].dim_param = name
    del dyn.graph.value_info[:]
    return dyn


def test_dynamic_spatial_dims_are_measured_for_the_mac_budget():
    """MACs of convolutions whose H and W the export left dynamic come from a calibration
    sample: the same network with static and with dynamic H, W costs the same, and a MAC
    budget removes the same units (counted as 1, stride-1 and stride-4 convs would cost
    alike per weight and the budget would be spent as a parameter budget)."""
    g = G(shape=(3, 16, 16), seed=2)
    h = g.op("Relu", g.conv(g.x, 16))
    h = g.op("Relu", g.conv(h, 32, strides=[2, 2]))
    h = g.op("Relu", g.conv(h, 32, strides=[2, 2]))
    static = g.model(g.gemm(g.gap_flatten(h), 3))
    calib = {"x": np.random.default_rng(3).standard_normal((32, 3, 16, 16)).astype(np.float32)}
    opts = dict(ratio=0.5, target="macs", metric="l1", round_to=1, latency=False,
                compensate=False, refit=False, min_fidelity=0)
    a, b = onnxprune.prune(static, calib, **opts), onnxprune.prune(_dynamic_hw(static), calib, **opts)
    assert b.report["before"]["macs"] == a.report["before"]["macs"] > 100_000
    assert b.report["after"]["macs"] == a.report["after"]["macs"]
    assert {k: v.tolist() for k, v in b.keep.items()} == {k: v.tolist() for k, v in a.keep.items()}
    assert b.report["removed"] == a.report["removed"]


def test_analyze_says_dynamic_dims_count_as_one(tmp_path):
    from click.testing import CliRunner
    from onnxprune_cli.main import main
    import onnx
    g = G(shape=(3, 8, 8), seed=2)
    static = g.model(g.gemm(g.gap_flatten(g.op("Relu", g.conv(g.x, 8))), 3))
    for model, says in ((static, False), (_dynamic_hw(static), True)):
        onnx.save(model, str(tmp_path / "m.onnx"))
        out = CliRunner().invoke(main, ["analyze", str(tmp_path / "m.onnx")]).output
        assert ("their MACs count those as 1 here" in out) == says, out


def _tokens_model(flatten: bool):
    """x [N, S, 8] -> Linear(8, 16) -> Relu -> Linear(16, 4), as MatMuls on [N, S, C] or as
    Gemms on x.view(-1, C) (batch x sequence rows; the legacy exporter's idiom)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    r = np.random.default_rng(4)
    w1, w2 = r.standard_normal((8, 16)).astype(np.float32), r.standard_normal((16, 4)).astype(np.float32)
    mk = helper.make_node
    if flatten:
        nodes = [mk("Reshape", ["x", "rows"], ["xr"]), mk("Gemm", ["xr", "w1"], ["h"]),
                 mk("Relu", ["h"], ["a"]), mk("Gemm", ["a", "w2"], ["o"]),
                 mk("Shape", ["x"], ["xs"]), mk("Slice", ["xs", "z", "two"], ["ns"]),
                 mk("Concat", ["ns", "four"], ["ys"], axis=0), mk("Reshape", ["o", "ys"], ["y"])]
    else:
        nodes = [mk("MatMul", ["x", "w1"], ["h"]), mk("Relu", ["h"], ["a"]), mk("MatMul", ["a", "w2"], ["y"])]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array([-1, 8]), "rows"), numpy_helper.from_array(np.array([0]), "z"),
             numpy_helper.from_array(np.array([2]), "two"), numpy_helper.from_array(np.array([4]), "four")]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sequence_rows_count_alike_as_matmul_or_flattened_gemm():
    """MACs per sample are the sequence's tokens times the weights, whether the layers see
    [N, S, C] or x.view(-1, C) rows (measured on one sample: 12 tokens)."""
    from onnxprune.compiler.cost import count_macs
    from onnxprune.pipeline import measure_sizes
    data = as_calibration({"x": np.zeros((4, 12, 8), np.float32)}, _tokens_model(False))
    macs = []
    for flatten in (False, True):
        m = analyze_model(_tokens_model(flatten))
        measure_sizes(m, data)
        macs.append(count_macs(m.graph, m.analysis.measured))
    assert macs == [12 * (8 * 16 + 16 * 4)] * 2


def test_a_graph_input_as_size_tensor_is_measured_from_the_data():
    """A ConvTranspose reading the graph input directly (its MACs scale with its input's
    H and W): measured from the calibration array itself, as in the static model."""
    from onnxprune.compiler.cost import count_macs
    from onnxprune.pipeline import measure_sizes
    g = G(shape=(4, 8, 8), seed=3)
    h = g.op("Relu", g.conv_t(g.x, 8))
    static = g.model(g.gemm(g.gap_flatten(g.op("Relu", g.conv(h, 8))), 3))
    data = as_calibration({"x": np.zeros((2, 4, 8, 8), np.float32)}, static)
    macs = []
    for model in (static, _dynamic_hw(static)):
        m = analyze_model(model)
        measure_sizes(m, data)
        macs.append(count_macs(m.graph, m.analysis.measured))
    assert macs[0] == macs[1] > 8 * 8 * 4 * 8 * 4


def test_uniform_with_rounded_widths_comes_near_the_budget():
    """32- and 64-channel convs at a block of 16: no common ratio removes 0.3 of the MACs
    (the bisection alone took the next ratio that passes it, far past); the uniform
    allocation is filled from the ratio short of it, and each width stays a multiple."""
    am = analyze_model(cnn((32, 64, 32)))
    scores = random_scores(am, 2)
    budget = Budget(am.analysis, scores)
    for ratio in (0.2, 0.3, 0.45):
        keep = select(am.analysis, scores, ratio, target="macs", round_to=16, uniform=True, min_keep=1)
        assert all(len(k) % 16 == 0 for k in keep.values())
        removed = budget.removed(keep, "macs")
        assert abs(removed - ratio) <= step_cost(am, scores, "macs", 16) / 2 + 1e-9, (ratio, removed)


def test_uniform_fill_takes_the_wide_groups_steps_before_halving_a_narrow_one():
    """At a block of 16, a 32-channel conv keeps 32 or 16: the cheapest step, but half of it.
    The fill takes the steps that leave each group's removed fraction lowest first, so the
    narrow conv stays whole while wider groups can meet the budget (PP-OCRv4's recognizer:
    halving its 32-channel conv cost 0.855 against 0.93 of its lines, same scores)."""
    am = analyze_model(cnn((32, 128, 128)))
    scores = random_scores(am, 3)
    widths = {g: len(s) for g, s in scores.items()}
    narrow = next(g for g, n in widths.items() if n == 32)
    for ratio in (0.1, 0.2):
        keep = select(am.analysis, scores, ratio, target="params", round_to=16, uniform=True, min_keep=1)
        assert len(keep[narrow]) == 32, ratio
        assert all(len(k) % 16 == 0 for k in keep.values())
        removed = Budget(am.analysis, scores).removed(keep, "params")
        assert abs(removed - ratio) <= step_cost(am, scores, "params", 16) / 2 + 1e-9, (ratio, removed)


def test_curve_scores_follow_the_measured_loss_and_keep_the_order():
    """Prefix sums along the scores' order meet the measured loss at the convex hull's points;
    the order is the scores'; a loss that falls as more units go counts as flat."""
    from onnxprune.deploy.select import _order, curve_scores
    rng = np.random.default_rng(0)
    s = rng.standard_normal(20)
    curve = [[0, 0.0], [1, 0.01], [2, 0.005], [4, 0.05], [6, 0.06], [10, 0.4], [16, 0.9]]
    c = curve_scores(s, curve)
    order = _order(s)
    assert np.array_equal(_order(c), order)
    steps = c[order]
    assert np.all(np.diff(steps) > 0)  # convex: marginal costs never fall along the order
    prefix = np.r_[0.0, np.cumsum(steps)]
    # the lower convex hull of (0, 0), (1, .01), (2, .01: the fall to .005 counts as flat),
    # (4, .05), (6, .06), (10, .4), (16, .9) runs through k = 0, 2, 6 and 16
    for k, lost in ([0, 0.0], [2, 0.01], [6, 0.06], [16, 0.9]):
        assert prefix[k] == pytest.approx(lost, abs=1e-9)
    assert prefix[4] == pytest.approx(0.035, abs=1e-9) and prefix[10] == pytest.approx(0.396, abs=1e-9)
    assert steps[-1] == pytest.approx((0.9 - 0.06) / 10)  # past the last point: the last slope


def test_global_allocation_trades_groups_off_by_their_measured_curves():
    """Scores that say a group's weakest units are free (negative, as the truncated game's
    deep marginals can be) while removing them costs the most: the curves move the cut to
    the group whose measured loss is lowest."""
    am = analyze_model(mlp((32, 32)))
    a, b = [g.id for g in am.analysis.prunable][:2]
    scores = {a: np.linspace(-1.0, 1.0, 32), b: np.linspace(0.5, 2.0, 32)}
    costly = [[0, 0.0], [4, 2.0], [8, 4.0], [16, 8.0]]
    cheap = [[0, 0.0], [4, 0.01], [8, 0.02], [16, 0.04]]
    plain = select(am.analysis, scores, 0.25, target="units", min_keep=1)
    curved = select(am.analysis, scores, 0.25, target="units", min_keep=1,
                    curves={a: costly, b: cheap})
    assert len(plain[a]) < 32 and len(plain[b]) == 32  # by the scores: group a goes
    assert len(curved[a]) == 32 and len(curved[b]) < 32  # by the measured loss: group b
    uniform = select(am.analysis, scores, 0.25, target="units", uniform=True, min_keep=1,
                     curves={a: costly, b: cheap})
    assert len(uniform[a]) == len(uniform[b])  # the uniform allocation does not read them


def test_default_prune_measures_each_groups_loss_curve():
    """A budget's global allocation: every scored group's report carries its loss curve
    (from k = 0, one point per cut size); `--uniform --target units` measures none."""
    from onnxprune.scoring.shapley import curve_points
    calib = {"x": np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)}
    res = onnxprune.prune(cnn((8, 16)), calib, ratio=0.4, latency=False)
    scored = [g for g in res.report["groups"] if g.get("scores")]
    assert scored and all(g["curve"][0] == [0, 0.0] for g in scored)
    for g in scored:
        assert [k for k, _ in g["curve"][1:]] == curve_points(g["units"])
    same = onnxprune.prune(cnn((8, 16)), calib, ratio=0.4, latency=False, uniform=True, target="units")
    assert not any("curve" in g for g in same.report["groups"])


def test_reused_group_scores_keep_their_loss_curves():
    """score_model's GroupScores passed to prune(scores=...) keep their curves (the global
    allocation reads them); plain arrays have none."""
    from onnxprune.api import score_model
    rng = np.random.default_rng(1)
    calib = {"x": rng.standard_normal((32, 3, 8, 8)).astype(np.float32)}
    am = analyze_model(cnn((8, 16)))
    scored = score_model(am, as_calibration(calib, am.proto), ratio=None, removal=0.3)
    assert all("curve" in s.extra for s in scored.values())
    res = onnxprune.prune(am, calib, ratio=0.4, latency=False, scores=scored)
    curves = {g["id"]: g.get("curve") for g in res.report["groups"] if g.get("scores")}
    assert curves == {g: s.extra["curve"] for g, s in scored.items()}
    plain = onnxprune.prune(am, calib, ratio=0.4, latency=False,
                            scores={g: s.values for g, s in scored.items()})
    assert not any(g.get("curve") for g in plain.report["groups"])
