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
        elif g["estimator"] == "truncated":  # stops at its marginal count, within the budget
            d = truncation_depth(n, share)
            want = min(want, 2 + d * planned_chains(n, scoring, d))
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
    from onnxprune.api import _scoring_allowance
    return score_planned(am, data, opts, allowance=_scoring_allowance(opts))


def test_time_budget_lowers_the_evaluations_spent():
    scores, plan = _score()
    short_scores, short = _score(time_budget_s=1e-3)
    assert set(short_scores) == set(scores)  # the run finishes
    assert short.spent_evaluations < plan.spent_evaluations
    for g in short.groups:  # what the estimator needs, no less
        assert g.evaluations == min_evaluations(g.estimator, g.units)
    assert short.warnings and "cannot cover the minimum" in short.warnings[0]


def test_time_budget_never_exceeds_budget():
    _, plan = _score(time_budget_s=3600.0, budget=100)
    assert all(g.evaluations <= 100 for g in plan.groups if g.estimator != "exact")
    assert not plan.warnings


@pytest.mark.parametrize("minutes", ["-1", "0"])
def test_negative_time_budget_is_a_user_error(minutes):
    with pytest.raises(OnnxPruneError, match="--time-budget must be a positive"):
        ScoreOptions(time_budget_s=60 * float(minutes)).validate()
    result = CliRunner().invoke(main, [str(EXAMPLE), "--calib", str(CALIB), "--ratio", "0.5",
                                       "--time-budget", minutes])
    assert result.exit_code == 2 and "error: --time-budget must be a positive" in result.output
