"""The options objects, the metric table and the registries they are spelled from."""
from typing import get_args

import click
import pytest

import onnxprune
from conftest import ROOT
from onnxprune import OnnxPruneError, PruneOptions, ScoreOptions, api, pipeline
from onnxprune import options as O
from onnxprune.scoring.site_stats import SITE_STATS, SiteStat
from onnxprune.scoring.estimators import CAPABILITIES, ESTIMATORS, Aggregate
from onnxprune.scoring.metrics import METRICS
from onnxprune.deploy.select import TARGETS
from onnxprune.scoring.value import VALUE_FUNCTIONS
from onnxprune_cli.main import main

EXAMPLE = ROOT / "models/digits_cnn.onnx"
CALIB = ROOT / "models/digits_calib.npz"
# the options dict the report had before PruneOptions.to_json
REPORT_KEYS = {"compensate", "round_to", "round_to_requested", "target", "global", "steps",
               "exclude", "estimator", "budget", "value", "aggregate", "refit"}


def test_literals_agree_with_registries():
    assert get_args(O.MetricName) == tuple(METRICS) == O.METRIC_NAMES
    assert get_args(O.EstimatorName) == ("auto", *ESTIMATORS) == O.ESTIMATOR_NAMES
    assert get_args(O.ValueName) == tuple(VALUE_FUNCTIONS) == O.VALUE_NAMES
    assert get_args(O.Target) == tuple(TARGETS) == O.TARGETS
    assert get_args(Aggregate) == O.AGGREGATES
    assert get_args(O.Device) == O.DEVICES
    assert get_args(SiteStat) == SITE_STATS
    assert set(CAPABILITIES) == set(ESTIMATORS)


def test_cli_choices_come_from_the_registries():
    choices = {p.name: tuple(p.type.choices) for p in main.commands["prune"].params
               if isinstance(p.type, click.Choice)}
    assert choices == {"metric": O.METRIC_NAMES, "estimator": O.ESTIMATOR_NAMES,
                       "aggregate": O.AGGREGATES, "device": O.DEVICES, "target": O.TARGETS}


def test_metric_entries_say_what_they_read():
    for name, metric in METRICS.items():
        assert metric.name == name
        assert metric.statistic is None or metric.statistic in SITE_STATS
        assert not metric.needs_engine or metric.needs_data  # the engine runs on calibration data
        assert metric.needs_data or metric.statistic is None


@pytest.mark.parametrize("keywords,words", [
    (dict(ratio=1.0), "--ratio must be in [0, 1), got 1.0"),
    (dict(ratio=-0.1), "--ratio must be in [0, 1)"),
    (dict(steps=0), "--steps must be at least 1, got 0"),
    (dict(round_to=0), "--round-to must be at least 1, got 0"),
    (dict(round_to="sixteen"), "--round-to must be a positive integer or 'auto', got 'sixteen'"),
    (dict(target="flops"), "--target must be one of units, params, macs"),
    (dict(aggregate="max"), "--aggregate must be mean or mean+2std, got max"),
    (dict(metric="l3"), "unknown metric 'l3' (choose from shapley, random,"),
    (dict(estimator="mc"), "unknown estimator 'mc' (choose from auto, exact,"),
    (dict(value="kl"), "unknown value function 'kl'; choose one of accuracy,"),
    (dict(device="gpu"), "--device must be one of auto, cpu, cuda, got gpu"),
    (dict(prune_cache="yes"), "--prune-cache is a flag (True or False), got 'yes'"),
])
def test_validate_raises_user_errors(keywords, words):
    with pytest.raises(OnnxPruneError) as err:
        PruneOptions.from_keywords(**keywords).validate()
    assert words in str(err.value)


def test_valid_options_pass_and_forgive_value_spelling():
    opts = PruneOptions.from_keywords(ratio=0.3, round_to="8", value="Neg-KL", exclude=["a*"])
    assert opts.validate() is opts
    assert opts.round_multiple() == 8 and opts.exclude == ("a*",)
    assert opts.score.value == "Neg-KL"


def test_keywords_split_between_prune_and_score_options():
    opts = PruneOptions.from_keywords(ratio=0.25, metric="l1", seed=3, max_memory_mb=64.0,
                                      uniform=True)
    assert (opts.ratio, opts.uniform) == (0.25, True)
    # the earlier keyword: global allocation (now the default) or not
    assert PruneOptions.from_keywords(global_=False).uniform is True
    assert PruneOptions.from_keywords(global_=True).uniform is False
    assert opts.score == ScoreOptions(metric="l1", seed=3, max_memory_mb=64.0)
    assert opts.updated(seed=4).score.seed == 4 and opts.score.seed == 3
    with pytest.raises(TypeError, match="ratoi"):
        PruneOptions.from_keywords(ratoi=0.5)


def test_from_cli_translates_click_names():
    opts = PruneOptions.from_cli({"no_compensate": True, "no_latency": True, "max_memory": 8.0,
                                  "ratio": 0.5, "exclude": ("x",)})
    assert (opts.compensate, opts.latency, opts.score.max_memory_mb) == (False, False, 8.0)
    assert ScoreOptions.from_cli({"max_memory": 1.0, "metric": "l2"}) == \
        ScoreOptions(metric="l2", max_memory_mb=1.0)


def test_to_json_keeps_every_key_of_the_old_report_options():
    doc = PruneOptions.from_keywords(round_to="auto", exclude=("c*",), estimator="exact").to_json()
    assert REPORT_KEYS <= set(doc)
    assert doc["round_to_requested"] == "auto" and isinstance(doc["round_to"], int)
    assert doc["exclude"] == ["c*"] and doc["estimator"] == "exact" and doc["global"] is True
    assert doc["uniform"] is False and doc["target"] == "macs"  # the defaults of issue 15
    assert doc["prune_cache"] is False and PruneOptions(prune_cache=True).to_json()["prune_cache"]


@pytest.mark.parametrize("target,steps", [("params", 2), ("macs", 3), ("units", 2)])
def test_step_ratio_is_the_same_for_scoring_and_selection(monkeypatch, target, steps):
    """Each round scores and selects with one ratio: `steps` of them remove `ratio` in all."""
    seen: dict[str, list[float]] = {"score": [], "select": []}
    score_planned, select = pipeline.score_planned, pipeline.select  # what prune's rounds call

    def spy_score(am, calib, opts, cut, *args, **kw):
        seen["score"].append(cut.ratio)
        return score_planned(am, calib, opts, cut, *args, **kw)

    def spy_select(analysis, scores, ratio, **kw):
        seen["select"].append(ratio)
        return select(analysis, scores, ratio, **kw)

    monkeypatch.setattr(pipeline, "score_planned", spy_score)
    monkeypatch.setattr(pipeline, "select", spy_select)
    opts = PruneOptions(ratio=0.5, target=target, steps=steps, compensate=False, refit=False,
                        latency=False, score=ScoreOptions(metric="l1"))
    onnxprune.prune(EXAMPLE, CALIB, opts)
    # each round selects twice with its ratio: the global allocation and the guard's uniform one
    assert seen["score"] == [pytest.approx(1 - 0.5 ** (1 / steps))] * steps
    assert seen["select"] == [pytest.approx(1 - 0.5 ** (1 / steps))] * 2 * steps
    assert opts.step_ratio() == pytest.approx(1 - 0.5 ** (1 / steps))


def test_options_object_and_keywords_give_the_same_prune():
    kw = dict(ratio=0.5, metric="l2", round_to=4, latency=False, refit=False)
    a = onnxprune.prune(EXAMPLE, CALIB, **kw)
    b = onnxprune.prune(EXAMPLE, CALIB, PruneOptions.from_keywords(**kw))
    c = onnxprune.prune(EXAMPLE, CALIB, PruneOptions(ratio=0.9), ratio=0.5, metric="l2",
                        round_to=4, latency=False, refit=False)  # keywords amend options
    kept = lambda r: {g: k.tolist() for g, k in r.keep.items()}
    assert kept(a) == kept(b) == kept(c)
    assert a.report["options"] == b.report["options"] == c.report["options"]


def test_score_model_takes_options_or_keywords():
    am = api.analyze_model(EXAMPLE)
    data = api.as_calibration(CALIB, am.proto)
    a = api.score_model(am, data, ScoreOptions(metric="apoz"))
    b = api.score_model(am, data, metric="apoz")
    assert a.keys() == b.keys() and all((a[g].values == b[g].values).all() for g in a)
    assert {s.method for s in a.values()} == {"apoz"}
    with pytest.raises(OnnxPruneError, match="needs calibration data"):
        api.score_model(am, None, metric="mean_activation")


def test_progress_events_carry_stage_done_total():
    events = []
    onnxprune.prune(EXAMPLE, CALIB, ratio=0.5, metric="shapley", budget=64, latency=False,
                    refit=False, progress=events.append)
    assert events and all({"stage", "done", "total"} <= set(e) for e in events)
    assert [e["stage"] for e in events if e["done"] == 0][:4] == ["means", "plan", "score", "rewrite"]


def test_exclude_matches_a_producer_by_its_node_name():
    """--exclude names nodes as people see them (node.name), though the analysis keys nodes
    by their first output: excluding a producer by name leaves its group unscored."""
    from onnxprune.api import scored_groups
    from onnxprune.model import analyze_model
    am = analyze_model("models/digits_cnn.onnx")
    everything = scored_groups(am)
    producer = next(m for g in am.analysis.prunable for m in g.members
                    if m.role == "producer" and m.name and m.name != m.node)
    left = scored_groups(am, [producer.name])
    assert len(left) == len(everything) - 1
