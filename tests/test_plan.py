"""The cost preview (issue 14) and the time budget (issue 16): scoring/plan.py, --dry-run,
--time-budget, and the ETA the CLI prints from the plan's figures."""
import json
import shutil

import pytest
from click.testing import CliRunner

from conftest import ROOT
from onnxprune import OnnxPruneError, ScoreOptions
from onnxprune.api import analyze_model, as_calibration, plan_prune, score_planned
from onnxprune.scoring.estimators import truncation_depth
from onnxprune.scoring.estimators.truncated import planned_chains
from onnxprune.scoring.plan import min_evaluations
from onnxprune.scoring.shapley import curve_points
from onnxprune_cli.main import main
from onnxprune_cli.progress import eta_seconds

EXAMPLE = ROOT / "models/digits_cnn.onnx"
CALIB = ROOT / "models/digits_calib.npz"


def test_plan_numbers_add_up():
    plan = plan_prune(EXAMPLE, CALIB, ratio=0.5).to_json()
    groups = plan["groups"]
    assert [g["group"] for g in groups] and all(g["measured"] for g in groups)  # two groups: both
    assert plan["evaluations"] == sum(g["evaluations"] for g in groups)
    assert plan["scoring_s"] == pytest.approx(sum(g["seconds"] for g in groups))
    assert plan["expected_s"]["scoring"] == pytest.approx(plan["scoring_s"])
    assert plan["total_s"] == pytest.approx(sum(plan["expected_s"].values()))
    assert plan["forward_equivalents"] == pytest.approx(plan["total_s"] / plan["forward_s"])
    share, scoring = 1 - 0.5 ** 0.5, 48  # a params budget of 0.5; 64 samples less the hold-out
    for g in groups:  # the default budget, 10 x units, unless exact (2^n) or truncated
        n, want = g["units"], 10 * g["units"]
        if g["estimator"] == "exact":
            want = 2 ** n
        elif g["estimator"] == "truncated":  # stops at its marginal count, within the budget,
            d = truncation_depth(n, share)  # and the loss curve a global allocation reads
            want = min(want, 2 + d * planned_chains(n, scoring, d)) + len(curve_points(n)) + 1
        assert g["evaluations"] == want
        assert g["seconds_per_evaluation"] > 0 and g["minimum"] <= g["evaluations"]


def test_plan_goes_into_the_report_with_actual_figures():
    import onnxprune
    events = []
    result = onnxprune.prune(EXAMPLE, CALIB, ratio=0.5, latency=False, progress=events.append)
    plan = result.report["plan"]
    scored = [g for g in result.report["groups"] if "evaluations" in g]
    assert plan["actual_evaluations"] == sum(g["evaluations"] for g in scored)
    assert plan["actual_evaluations"] <= plan["evaluations"]  # whole pairs within each budget
    assert set(plan["actual_s"]) >= {"means", "engine", "plan", "scoring", "rewrite", "verify"}
    stages = [e["stage"] for e in events]
    assert stages.index("plan") < stages.index("score")  # the plan is printed before scoring
    last = [e for e in events if e["stage"] == "score"][-1]
    assert last["evaluations"] == plan["actual_evaluations"]
    assert last["expected_done_s"] == pytest.approx(last["expected_s"])


def test_dry_run_writes_nothing(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(EXAMPLE, model)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, [str(model), "--calib", str(CALIB), "--ratio", "0.5",
                                       "--report", str(tmp_path / "r.json"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["evaluations"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    text = CliRunner().invoke(main, [str(model), "--calib", str(CALIB), "--ratio", "0.5", "--dry-run"])
    assert text.exit_code == 0 and "expected wall time" in text.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_eta_from_the_plan_scales_with_the_measured_pace():
    # the plan said 10 s in all and 4 s for what is done; it took 8 s: twice as slow
    event = {"stage": "score", "done": 1, "total": 3, "evaluations": 40,
             "evaluations_planned": 100, "expected_s": 10.0, "expected_done_s": 4.0}
    assert eta_seconds(event, elapsed=8.0) == pytest.approx(12.0)
    assert eta_seconds({**event, "expected_done_s": 10.0}, elapsed=9.0) == 0.0
    assert eta_seconds({**event, "expected_done_s": 0.0}, elapsed=0.5) == pytest.approx(10.0)
    # without the plan's figures: per item
    assert eta_seconds({"stage": "refit", "done": 1, "total": 3}, elapsed=2.0) == pytest.approx(4.0)


def _score(**keywords):
    am = analyze_model(EXAMPLE)
    data = as_calibration(CALIB, am.proto)
    opts = ScoreOptions(**keywords).validate()
    from onnxprune.scoring.run import Round, scoring_allowance
    return score_planned(am, data, opts, round_=Round(allowance=scoring_allowance(opts)))


def test_time_budget_lowers_the_evaluations_spent():
    scores, plan = _score()
    short_scores, short = _score(time_budget_s=1e-3)
    assert set(short_scores) == set(scores)  # the run finishes
    assert short.spent_evaluations < plan.spent_evaluations
    for g in short.groups:  # what the estimator needs, no less
        assert g.evaluations == min_evaluations(g.estimator, g.units)
    assert short.warnings and "cannot cover the minimum" in short.warnings[0]
    # ... and, since even the minimum does not fit, fewer samples per evaluation (issue 16)
    assert short.scoring_samples == 4 < short.samples
    assert "scoring on 4 of the" in short.warnings[0]


def test_time_budget_never_exceeds_budget():
    _, plan = _score(time_budget_s=3600.0, budget=100)
    assert all(g.evaluations <= 100 for g in plan.groups if g.estimator != "exact")
    assert not plan.warnings


@pytest.mark.parametrize("minutes", ["-1", "0"])
def test_negative_time_budget_is_a_user_error(minutes, tmp_path):
    with pytest.raises(OnnxPruneError, match="--time-budget must be a positive"):
        ScoreOptions(time_budget_s=60 * float(minutes)).validate()
    # -o: README's first command leaves models/digits_cnn_pruned.onnx, which the default -o
    # would refuse to replace before the option is read
    result = CliRunner().invoke(main, [str(EXAMPLE), "--calib", str(CALIB), "--ratio", "0.5",
                                       "--time-budget", minutes, "-o", str(tmp_path / "p.onnx")])
    assert result.exit_code == 2 and "error: --time-budget must be a positive" in result.output


def test_fit_time_scales_samples_only_when_the_minimum_does_not_fit():
    from onnxprune.scoring.plan import GroupPlan, Sampling, ScorePlan, fit_time

    def plan():
        groups = [GroupPlan(g, 100, "persample", 1000, 200, 0.01, 0.5, 1, True) for g in (0, 1)]
        return ScorePlan("shapley", groups, sampling=Sampling(per_sample=True, samples=64), samples=64)
    roomy = plan()
    fit_time(roomy, 10.0)  # 2 x 0.5 s setup + 2 x 200 x 0.01 s minimum = 5 s: fits
    assert roomy.scoring_samples is None and not roomy.warnings
    tight = plan()
    fit_time(tight, 3.0)  # the minimum takes 5 s: half the samples take 1 + 2 = 3 s
    assert tight.scoring_samples == 32 and tight.scoring_s == pytest.approx(3.0)
    assert "scoring on 32 of the 64" in tight.warnings[0]
    hopeless = plan()
    fit_time(hopeless, 0.5)  # the setups alone are over: the floor, and said so
    assert hopeless.scoring_samples == 4 and "over the budget even so" in hopeless.warnings[0]


@pytest.mark.parametrize("metric", ["loo", "taylor"])
def test_fixed_count_metrics_keep_to_the_time_budget_on_fewer_samples(metric):
    from onnxprune.scoring.plan import GroupPlan, Sampling, ScorePlan, fit_time

    def plan():
        groups = [GroupPlan(g, 100, metric, 101, 101, 0.01, 0.5, 1, True) for g in (0, 1)]
        return ScorePlan(metric, groups, sampling=Sampling(samples=64), samples=64)
    roomy = plan()
    fit_time(roomy, 10.0)  # 2 x 0.5 s setup + 2 x 101 x 0.01 s = 3.02 s: fits
    assert roomy.scoring_samples is None and not roomy.warnings
    tight = plan()
    fit_time(tight, 2.02)  # half the samples (32.3, floored): 1 + 1.01 s
    assert [g.evaluations for g in tight.groups] == [101, 101]  # the count is the metric's
    assert tight.scoring_samples == 32 and tight.scoring_s == pytest.approx(2.01)
    assert f"n + 1 evaluations per group {metric} needs" in tight.warnings[0]
    # through the whole run: the engine scores on the plan's samples
    scores, short = _score(metric=metric, time_budget_s=1e-3)
    assert short.scoring_samples == 4 < short.samples and set(scores) == set(_score(metric=metric)[0])


def test_engine_on_fewer_samples_equals_an_engine_built_on_them():
    import numpy as np
    from onnxprune.calib import Calibration
    from onnxprune.scoring.engine import Engine
    from onnxprune.scoring.value import NegKL
    am = analyze_model(EXAMPLE)
    data = as_calibration(CALIB, am.proto)
    gid = am.analysis.prunable[0].id
    coalitions = np.random.default_rng(0).random((6, am.analysis.group(gid).units)) < 0.5
    full = Engine(am, data, NegKL())
    full.values(gid, coalitions)  # a plan for all samples exists before the switch
    full.use_samples(5)
    small = Engine(am, Calibration({k: v[:5] for k, v in data.inputs.items()}), NegKL())
    assert full.n == 5
    np.testing.assert_array_equal(full.values(gid, coalitions), small.values(gid, coalitions))


def test_probe_reads_the_k_tuning_instead_of_extra_runs():
    """A group whose K the engine tuned costs the plan one evaluation (its setup): the
    per-evaluation cost is the tuning's best timed run, not timed probe runs."""
    from onnxprune.api import make_engine
    from onnxprune.scoring.plan import plan_scoring
    am = analyze_model(EXAMPLE)
    engine = make_engine(am, as_calibration(CALIB, am.proto))
    calls = []
    values = engine.values
    engine.values = lambda gid, c: calls.append((gid, len(c))) or values(gid, c)
    gids = [g.id for g in am.analysis.prunable]
    plan = plan_scoring(engine, am.analysis, gids, metric="shapley")
    assert all(engine.tuned_seconds_per_evaluation(g) is not None for g in gids)
    assert sorted(calls) == sorted((g, 1) for g in gids)  # one coalition per measured group
    assert all(g.seconds_per_evaluation == engine.tuned_seconds_per_evaluation(g.gid)
               for g in plan.groups)


def test_refit_estimate_scales_the_model_by_one_measured_layer(monkeypatch):
    """refit_seconds: the measured median layer, carried to the others by the work at nominal
    rates; machine_rates are measured (only) when no layer can be timed."""
    from onnxprune.scoring import plan as plan_mod
    am = analyze_model(EXAMPLE)
    gids = [g.id for g in am.analysis.prunable]
    work = plan_mod.refit_work(am.analysis, gids, 0.5, 48)
    assert work and all(min(w) > 0 for w in work.values())
    measured_rates = []
    monkeypatch.setattr(plan_mod, "machine_rates",
                        lambda: measured_rates.append(1) or (1e9, 1e9, 1e9))
    timed = []
    scaled = plan_mod.refit_seconds(am.analysis, gids, 0.5, 48,
                                    lambda node: timed.append(node) or 1.0)
    rates = plan_mod._NOMINAL_RATES
    per = {n: p / rates[0] + q / rates[1] + c / rates[2] for n, (p, q, c) in work.items()}
    median = sorted(per, key=per.__getitem__)[len(per) // 2]
    assert timed == [median] and not measured_rates
    assert scaled == pytest.approx(sum(per.values()) / per[median])
    absolute = sum(sum(w) / 1e9 for w in work.values())
    assert plan_mod.refit_seconds(am.analysis, gids, 0.5, 48, lambda node: None) == pytest.approx(absolute)
    assert plan_mod.refit_seconds(am.analysis, gids, 0.5, 48) == pytest.approx(absolute)
    assert len(measured_rates) == 2


def test_time_layer_runs_one_refit_layer_on_kept_activations():
    import numpy as np
    from onnxprune.deploy.refit import time_layer
    from onnxprune.scoring.site_stats import means_and_activations
    am = analyze_model(EXAMPLE)
    inputs = {k: v[:32] for k, v in np.load(CALIB).items()}
    _, acts = means_and_activations(am.analysis, am.ident, inputs, device="cpu", max_bytes=2**26)
    keep = np.ones(len(am.analysis.ch_group), dtype=bool)
    keep[::2] = False
    nodes = [s.node for s in am.analysis.sites]
    seconds = [time_layer(am.analysis, am.ident, keep, inputs, acts, n) for n in nodes]
    assert any(s is not None and s > 0 for s in seconds)
    node = nodes[[s is not None for s in seconds].index(True)]  # not kept: computed for it
    assert time_layer(am.analysis, am.ident, keep, inputs, None, node) > 0
    assert time_layer(am.analysis, am.ident, keep, inputs, acts, "no such node") is None


def test_a_long_plan_is_fitted_to_the_default_cap_unless_inf():
    from onnxprune.scoring.run import DEFAULT_TIME_CAP_S, scoring_allowance
    from onnxprune.options import ScoreOptions
    from onnxprune.scoring.plan import GroupPlan, Sampling, ScorePlan

    def plan(seconds_per_evaluation):
        groups = [GroupPlan(g, 100, "truncated", 1000, 50, seconds_per_evaluation, 0.5, 1, True)
                  for g in (0, 1)]
        return ScorePlan("shapley", groups, sampling=Sampling(per_sample=True, removal=0.3, samples=64), samples=64)
    short = plan(0.01)  # 2 x (0.5 + 10) s: under the cap, nothing changes
    assert scoring_allowance(ScoreOptions())(short) is None and not short.warnings
    long = plan(1.0)  # 2 x 1000 s expected
    seconds = scoring_allowance(ScoreOptions())(long)
    assert seconds == pytest.approx(DEFAULT_TIME_CAP_S) and long.time_budget_s == DEFAULT_TIME_CAP_S
    assert "fitted to the default 10 minutes" in long.warnings[0]
    unbounded = plan(1.0)
    assert scoring_allowance(ScoreOptions(time_budget_s=float("inf")))(unbounded) is None
    assert not unbounded.warnings
    from onnxprune.options import PruneOptions
    inf = PruneOptions(ratio=0.5, score=ScoreOptions(time_budget_s=float("inf")))
    assert inf.to_json()["time_budget_s"] == "inf"  # the report's JSON has no Infinity


def test_truncated_minimum_is_one_chain_as_deep_as_the_cut():
    """The endpoints and one chain as deep as the game (DEPTH_MARGIN x the expected cut), not
    down to the last unit: a time budget scales samples only below that (det_yolox planned
    8,275 for 8,208 units before)."""
    import math

    from onnxprune.scoring.estimators import truncation_depth
    from onnxprune.scoring.estimators.truncated import DEPTH_MARGIN
    assert truncation_depth(100, 0.2, margin=1.0) == 20  # the expected cut itself
    assert min_evaluations("truncated", 100, 0.2) == 2 + truncation_depth(100, 0.2) == \
        2 + math.ceil(DEPTH_MARGIN * 20)
    # not known: half the group is expected to go
    assert min_evaluations("truncated", 100, None) == 2 + math.ceil(DEPTH_MARGIN * 50)
