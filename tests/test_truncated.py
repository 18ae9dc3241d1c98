"""The truncated per-sample estimator (scoring/estimators/truncated.py) on a tiny graph through
ONNX Runtime: y = (x W1) W2 has one group of 10 hidden units and no nonlinearity, so with a
linear probe value function the game is additive, v_s(S) = sum_{i in S} c_si, and every
marginal of unit i on sample s is exactly c_si."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune.scoring.estimators as E
from onnxprune.calib import Calibration
from onnxprune.model import analyze_model
from onnxprune.scoring import shapley
from onnxprune.scoring.engine import Engine
from onnxprune.scoring.shapley import pick_estimator, shapley_group

UNITS = 10


class Probe:
    """v_s = <output_s, w>: linear in the output, hence additive in the hidden units."""

    name = "probe"
    needs_labels = False

    def prepare(self, reference, labels) -> None:
        self.w = np.linspace(-1.0, 2.0, reference[0].shape[1])

    def __call__(self, outputs) -> np.ndarray:
        return (outputs[0].astype(np.float64) * self.w).sum(-1)


def linear_mlp(seed: int = 0):
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((4, UNITS)).astype(np.float32)
    w2 = rng.standard_normal((UNITS, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "linear_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return analyze_model(model), w1, w2


def engine_and_contributions(x: np.ndarray):
    """The engine on inputs x [N, 4] and the exact per-sample contributions c [N, UNITS]."""
    am, w1, w2 = linear_mlp()
    (group,) = am.analysis.prunable
    assert group.units == UNITS
    probe = Probe()
    engine = Engine(am, Calibration({"x": x}), probe, device="cpu")
    c = (x.astype(np.float64) @ w1) * (w2.astype(np.float64) @ probe.w)
    return engine, group.id, c


def value_fn(engine, gid):
    fn = lambda masks: engine.values(gid, masks)  # noqa: E731
    fn.per_sample_masks = engine.per_sample_masks
    return fn


def test_additive_game_gives_each_unit_its_contribution_exactly():
    x = np.tile(np.random.default_rng(1).standard_normal((1, 4)).astype(np.float32), (6, 1))
    engine, gid, c = engine_and_contributions(x)  # the 6 samples are equal: c_si = c_i
    est = E.estimate_truncated(value_fn(engine, gid), UNITS, depth=4, budget=400, seed=0)
    assert est.method == "truncated" and est.info["truncated_game"]
    assert est.info["unseen"] == 0
    np.testing.assert_allclose(est.values, c[0], rtol=1e-5, atol=1e-5)
    assert est.evaluations <= 400


def test_per_sample_orders_average_per_sample_contributions():
    """Samples differ: each marginal is c_si, a unit's value the mean over the samples that
    removed it; with many chains, close to mean_s c_si within the reported stderr."""
    x = np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32)
    engine, gid, c = engine_and_contributions(x)
    est = E.estimate_truncated(value_fn(engine, gid), UNITS, depth=3, budget=2000,
                               marginals=400, seed=3)
    assert np.all(np.abs(est.values - c.mean(0)) <= 4 * est.stderr + 1e-6)
    assert np.all(np.isfinite(est.stderr))


def test_seeded_determinism_and_budget():
    x = np.random.default_rng(4).standard_normal((5, 4)).astype(np.float32)
    engine, gid, _ = engine_and_contributions(x)
    runs = [E.estimate_truncated(value_fn(engine, gid), UNITS, depth=5, budget=60, seed=s,
                                 batch=7) for s in (11, 11, 12)]
    np.testing.assert_array_equal(runs[0].values, runs[1].values)
    np.testing.assert_array_equal(runs[0].stderr, runs[1].stderr)
    assert not np.array_equal(runs[0].values, runs[2].values)
    assert all(r.evaluations <= 60 for r in runs)


def test_depth_is_capped_and_chains_follow_the_marginal_count():
    assert E.truncation_depth(10, 0.9, margin=1.5) == 9  # 13.5 steps, capped at n - 1
    assert E.truncation_depth(10, 0.0) == 1
    assert E.truncation_depth(10, None, margin=1.0) == 5  # not known: half the group
    assert E.truncation_depth(1000, 0.3, margin=1.5) == 450
    assert E.truncation_depth(7, 0.3, margin=1.0) == 3  # rounded up
    x = np.random.default_rng(5).standard_normal((4, 4)).astype(np.float32)
    engine, gid, _ = engine_and_contributions(x)
    est = E.estimate_truncated(value_fn(engine, gid), UNITS, depth=50, budget=10_000,
                               marginals=20, seed=0)
    assert est.info["depth"] == UNITS - 1
    chains = -(-20 * UNITS // (4 * (UNITS - 1)))  # ceil(marginals n / (N d))
    assert est.info["chains"] == chains and est.evaluations == 2 + chains * (UNITS - 1)


def test_a_unit_never_removed_ranks_as_most_important():
    x = np.random.default_rng(6).standard_normal((2, 4)).astype(np.float32)
    engine, gid, _ = engine_and_contributions(x)
    # 3 one-step chains on 2 samples: at most 6 of the 10 units are ever removed
    est = E.estimate_truncated(value_fn(engine, gid), UNITS, depth=1, budget=5, seed=0)
    unseen = est.samples == 0
    assert est.info["unseen"] == unseen.sum() >= 4
    assert np.all(est.values[unseen] == est.values.max())
    assert np.all(np.isinf(est.stderr[unseen]))
    order = np.argsort(est.values, kind="stable")
    assert not np.any(unseen[order[: (~unseen).sum() - 1]])  # never among the first to go


def test_needs_per_sample_masks():
    with pytest.raises(ValueError, match="per_sample_masks"):
        E.estimate_truncated(lambda m: np.zeros((len(m), 2)), 5)


def test_auto_resolves_to_truncated_when_the_cut_is_known():
    x = np.random.default_rng(7).standard_normal((6, 4)).astype(np.float32)
    engine, gid, _ = engine_and_contributions(x)
    assert pick_estimator(40, 400, per_sample=True, cut_known=True) == shapley.DEFAULT_ESTIMATOR
    scores = shapley_group(engine, gid, budget=200, removal=0.3, estimator="truncated")
    assert scores.method == "shapley/truncated"
    game = scores.to_json()["game"]  # DEPTH_MARGIN x the expected cut (3 of 10) deep
    depth = E.truncation_depth(UNITS, 0.3)
    assert "truncated" in game and f"{depth} of 10 units deep (expected cut 3)" in game


def test_small_groups_share_the_truncated_game_when_the_cut_is_known():
    """A global ranking compares scores across groups, so a small group (exact enumeration of
    the full game otherwise) is scored in the same truncated game as the others; the game is
    additive and the samples equal here, so its values are still each unit's contribution."""
    from types import SimpleNamespace

    c = np.tile(np.random.default_rng(11).standard_normal((1, 5)), (6, 1))  # samples x units

    def values(gid, masks):  # [K, N, n] per-sample, or [K, n] shared
        return (masks * c).sum(-1) if masks.ndim == 3 else masks.astype(float) @ c.T

    group = SimpleNamespace(units=5)
    engine = SimpleNamespace(analysis=SimpleNamespace(group=lambda gid: group), values=values,
                             per_sample_masks=True)
    cut = shapley_group(engine, 0, removal=0.3)
    assert cut.method == "shapley/truncated" and "(expected cut 2)" in cut.to_json()["game"]
    np.testing.assert_allclose(cut.values, c[0], atol=1e-12)
    assert shapley_group(engine, 0).method == "shapley/exact"  # no cut: the full game


def test_a_tight_time_budget_still_affords_one_chain():
    """--time-budget cuts the plan to the estimator's minimum: one chain, at any depth."""
    from conftest import ROOT
    from onnxprune.api import analyze_model, as_calibration, score_model

    am = analyze_model(ROOT / "models/digits_cnn.onnx")
    data = as_calibration(ROOT / "models/digits_calib.npz", am.proto)
    scores = score_model(am, data, ratio=0.9, time_budget_s=1e-3)
    sampled = [s for s in scores.values() if s.method == "shapley/truncated"]
    assert sampled and all(s.evaluations <= len(s.values) + 1 for s in sampled)


# --- refinement: stars on the contested units (truncated.py, Refinement) ---------------------


def test_refinement_keeps_an_additive_game_exact_and_stops_when_nothing_is_contested():
    """Equal samples: every marginal, chain or star, is exactly c_i; every stderr is 0, so
    nothing is contested and the rows kept for refinement are not spent."""
    x = np.tile(np.random.default_rng(8).standard_normal((1, 4)).astype(np.float32), (6, 1))
    engine, gid, c = engine_and_contributions(x)
    full = E.estimate_truncated(value_fn(engine, gid), UNITS, depth=4, budget=1000, seed=0,
                                stop_share=0.0)  # every planned chain
    est = E.estimate_truncated(value_fn(engine, gid), UNITS, depth=4, budget=1000, seed=0,
                               refine=0.5)
    np.testing.assert_allclose(est.values, c[0], rtol=1e-5, atol=1e-5)
    assert est.info["refine_rounds"] == 0 and est.info["wrong_side"] == 0.0
    assert est.evaluations < full.evaluations


def test_star_marginals_are_chain_marginals_of_a_size_game():
    """v_s(S) = |S|^2: a chain's marginal at step t is 2 (n - t) + 1, so the truncated value
    of every unit is the mean over t = 1..d; star marginals (t uniform, the unit never among
    the removed) must average to it too. Also: each star arm differs from its base by exactly
    the named unit, which the base keeps."""
    n, d, n_samples = 12, 4, 5
    seen = []

    def fn(masks):
        seen.append(masks.copy())
        return masks.sum(-1).astype(np.float64) ** 2

    fn.per_sample_masks = True
    game = E.game.open_game(fn, n, 10**6, 64, cache=False)
    rng = np.random.default_rng(0)
    slots = rng.integers(0, n, size=(400, 3, n_samples))
    marg = E.truncated._star_marginals(game, rng, slots, d)
    rows = np.concatenate(seen[1:]).reshape(400, 4, n_samples, n)  # after the endpoints
    base, arms = rows[:, :1], rows[:, 1:]
    measured = ~np.isnan(marg)
    np.testing.assert_array_equal((base & ~arms).sum(-1), measured)  # only the unit goes
    assert measured.mean() > 0.7 and np.all(n - base.sum(-1) < d)  # t - 1 < d removed
    truth = np.mean([2 * (n - t) + 1 for t in range(1, d + 1)])
    se = marg[measured].std() / np.sqrt(measured.sum())
    assert abs(marg[measured].mean() - truth) < 4 * se


def test_refinement_on_noisy_samples_stays_unbiased_seeded_and_within_budget():
    """Samples differ: the refined values are still means of per-sample contributions (within
    the reported stderr of mean_s c_si), the same seed gives the same values, and the rows
    spent never exceed the plan without refinement."""
    x = np.random.default_rng(9).standard_normal((8, 4)).astype(np.float32)
    engine, gid, c = engine_and_contributions(x)
    plain = E.estimate_truncated(value_fn(engine, gid), UNITS, depth=3, budget=5000,
                                 marginals=400, seed=3, stop_share=0.0)  # the whole plan
    runs = [E.estimate_truncated(value_fn(engine, gid), UNITS, depth=3, budget=5000,
                                 marginals=400, seed=3, refine=0.6, stop_wrong=0.0)
            for _ in range(2)]
    est = runs[0]
    np.testing.assert_array_equal(runs[0].values, runs[1].values)
    assert est.info["refine_rounds"] >= 1
    assert est.evaluations <= plain.evaluations
    assert np.all(np.abs(est.values - c.mean(0)) <= 4 * est.stderr + 1e-6)
    # the stopping rule: a threshold no estimate can exceed runs no round
    lax = E.estimate_truncated(value_fn(engine, gid), UNITS, depth=3, budget=5000,
                               marginals=400, seed=3, refine=0.6, stop_wrong=1.0)
    assert lax.info["refine_rounds"] == 0 and lax.evaluations < plain.evaluations
    with pytest.raises(ValueError, match="refine"):
        E.estimate_truncated(value_fn(engine, gid), UNITS, refine=1.0)


# --- early stop: chains in rounds, stopping once the cut is clear (truncated.py) -------------


def test_early_stop_ends_a_clear_game_after_one_round():
    """Samples nearly equal: every unit's marginals barely vary, its side of the cut is
    certain after the first round, and the rest of the planned chains are not run."""
    rng = np.random.default_rng(10)
    x = (np.tile(rng.standard_normal((1, 4)), (6, 1)) + 1e-3 * rng.standard_normal((6, 4)))
    engine, gid, c = engine_and_contributions(x.astype(np.float32))
    fn = value_fn(engine, gid)
    full = E.estimate_truncated(fn, UNITS, depth=3, budget=10**6, marginals=64, seed=0,
                                stop_share=0.0)
    est = E.estimate_truncated(fn, UNITS, depth=3, budget=10**6, marginals=64, seed=0,
                               stop_share=0.02)
    planned = full.info["chains"]
    assert full.info["stopped"] == "planned" and full.info["chains_planned"] == planned
    assert est.info["stopped"] == "confident" and est.info["chains_planned"] == planned
    assert est.info["chains"] == -(-planned // E.truncated.STOP_ROUNDS)  # one round
    assert est.evaluations == 2 + est.info["chains"] * 3 < full.evaluations
    np.testing.assert_allclose(est.values, c.mean(0), atol=0.05 * np.abs(c).max())
    assert est.info["wrong_side"] < 0.02 * UNITS


def test_early_stop_runs_every_planned_chain_on_a_contested_game():
    """Samples far apart: many units sit near the cut after every round, so the group never
    stops early and its estimate is the one without early stopping."""
    x = 3 * np.random.default_rng(11).standard_normal((8, 4)).astype(np.float32)
    engine, gid, _ = engine_and_contributions(x)
    fn = value_fn(engine, gid)
    runs = [E.estimate_truncated(fn, UNITS, depth=3, budget=10**6, marginals=32, seed=1,
                                 stop_share=s) for s in (0.0, 0.02)]
    assert runs[1].info["stopped"] == "planned"
    assert runs[1].info["chains"] == runs[1].info["chains_planned"] == runs[0].info["chains"]
    assert runs[1].evaluations == runs[0].evaluations
    np.testing.assert_allclose(runs[1].values, runs[0].values, rtol=1e-6, atol=1e-6)
    assert runs[1].info["wrong_side"] >= 0.02 * UNITS


def test_early_stop_is_seeded_and_reported():
    rng = np.random.default_rng(12)
    x = (np.tile(rng.standard_normal((1, 4)), (5, 1)) + 0.05 * rng.standard_normal((5, 4)))
    engine, gid, _ = engine_and_contributions(x.astype(np.float32))
    fn = value_fn(engine, gid)
    runs = [E.estimate_truncated(fn, UNITS, depth=4, budget=10**6, marginals=64, seed=s,
                                 stop_share=0.03, batch=5) for s in (3, 3)]
    np.testing.assert_array_equal(runs[0].values, runs[1].values)
    assert runs[0].info["chains"] == runs[1].info["chains"]
    with pytest.raises(ValueError, match="stop_share"):
        E.estimate_truncated(fn, UNITS, stop_share=1.0)
    saved = E.truncated.STOP_SHARE
    E.truncated.STOP_SHARE = 0.03  # what shapley_group reports when a group stops early
    try:
        scores = shapley_group(engine, gid, budget=10**4, removal=0.3, estimator="truncated")
    finally:
        E.truncated.STOP_SHARE = saved
    chains = scores.to_json()["chains"]
    assert chains["stopped"] == "confident" and chains["run"] < chains["planned"]
    assert "stopped early" in scores.to_json()["game"]


def test_long_chains_are_checked_after_each_chain():
    """Rounds hold a STOP_ROUNDS-th of the planned chains unless that is over STOP_ROWS rows:
    a FFN-sized chain (113 rows) is a round of its own, short chains keep the quarters."""
    rows = E.truncated.STOP_ROWS
    assert E.truncated.stop_round_chains(15, 113) == 1
    assert E.truncated.stop_round_chains(15, 3) == -(-15 // E.truncated.STOP_ROUNDS)
    assert E.truncated.stop_round_chains(40, rows // 3) == 3
    assert E.truncated.stop_round_chains(1, 1) == 1


@pytest.mark.parametrize("seed", range(4))
def test_the_per_chain_check_stops_no_later_than_the_quarters(seed, monkeypatch):
    """The same chains (one draw of orders) checked after every chain stop at or before the
    chain the quarter rounds stop at, and where they stop the cut is as clear as asked."""
    rng = np.random.default_rng(20 + seed)
    x = np.tile(rng.standard_normal((1, 4)), (5, 1)) + 0.05 * rng.standard_normal((5, 4))
    engine, gid, _ = engine_and_contributions(x.astype(np.float32))
    fn = value_fn(engine, gid)

    def run(stop_rows: int):
        monkeypatch.setattr(E.truncated, "STOP_ROWS", stop_rows)
        return E.estimate_truncated(fn, UNITS, depth=4, budget=10**6, marginals=96, seed=seed,
                                    stop_share=0.03)

    quarters, each = run(10**6), run(4)
    assert each.info["chains_planned"] == quarters.info["chains_planned"] >= 8
    assert each.info["chains"] <= quarters.info["chains"]
    assert each.evaluations == 2 + 4 * each.info["chains"]
    if each.info["stopped"] == "confident":
        assert each.info["wrong_side"] < 0.03 * UNITS


# --- long chains: star rounds on the contested units after LONG_CHAINS chains ----------------


def additive_fn(c: np.ndarray):
    """v_s(S) = sum_{i in S} c[s, i] for per-sample coalitions [K, N, n] (or shared [K, n])."""

    def fn(masks):
        return (masks * c).sum(-1) if masks.ndim == 3 else masks.astype(float) @ c.T

    fn.per_sample_masks = True
    return fn


def test_star_rounds_go_only_to_contested_units_and_to_units_without_marginals():
    """Units 0-2 certainly go and 7-10 certainly stay (every marginal equal: stderr 0), one of
    3-6 goes (noisy, near each other), unit 11 has no marginal yet: the stars name only 3-6 and
    11, and 11 among them."""
    n, n_samples, k = 12, 6, 4
    rng = np.random.default_rng(0)
    c = np.tile(np.r_[-10.0, -9, -8, 0, 0, 0, 0, 10, 11, 12, 13, 14], (n_samples, 1))
    c[:, 3:7] += rng.standard_normal((n_samples, 4))
    game = E.game.open_game(additive_fn(c), n, 10**6, 64, cache=False)
    units = np.repeat(np.arange(11), 3)  # 3 marginals each, none for unit 11
    marg = c[rng.integers(0, n_samples, len(units)), units]
    assert E.truncated._wrong_probs(units, marg, n, k)[11] == 0.5
    out_u, out_m, spent, why = E.truncated._contest_rounds(game, rng, units, marg, 8, k, 200,
                                                           0.01)
    named = set(out_u[len(units):].tolist())
    assert named <= {3, 4, 5, 6, 11} and 11 in named and spent > 0
    assert spent % (E.truncated.STAR_ARMS + 1) == 0 and spent <= 200
    assert game.evaluations == 2 + spent  # the endpoints, then the star rows
    np.testing.assert_allclose(out_m[len(units):], c[0, out_u[len(units):]], atol=4.0)


def noisy_engine():
    x = 3 * np.random.default_rng(11).standard_normal((8, 4)).astype(np.float32)
    engine, gid, c = engine_and_contributions(x)
    return value_fn(engine, gid), c


def test_a_long_chain_group_not_yet_clear_gets_star_rows_after_two_chains(monkeypatch):
    """Chains over STOP_ROWS rows: a contested game runs LONG_CHAINS chains, then star rows
    (within the planned rows), and stays unbiased; the same game with short chains runs its
    chains as before, with no star row."""
    fn, c = noisy_engine()
    kw = dict(depth=3, budget=10**6, marginals=32, seed=1, stop_share=0.02)
    short = E.estimate_truncated(fn, UNITS, **kw)
    monkeypatch.setattr(E.truncated, "STOP_ROWS", 2)  # a 3-row chain is now long
    long = E.estimate_truncated(fn, UNITS, **kw)
    assert short.info["star_rows"] == 0 and short.info["chains"] == short.info["chains_planned"]
    assert long.info["chains"] == E.truncated.LONG_CHAINS < long.info["chains_planned"]
    assert long.info["star_rows"] > 0
    assert long.evaluations == 2 + 3 * long.info["chains"] + long.info["star_rows"]
    assert long.evaluations <= short.evaluations  # the plan stays the upper bound
    assert np.all(np.abs(long.values - c.mean(0)) <= 4 * long.stderr + 1e-6)
    again = E.estimate_truncated(fn, UNITS, **kw)
    np.testing.assert_array_equal(long.values, again.values)


def test_a_long_chain_group_clear_after_its_chains_gets_no_star_row(monkeypatch):
    """Samples nearly equal: the cut is clear after the chains, no star row is drawn."""
    rng = np.random.default_rng(10)
    x = np.tile(rng.standard_normal((1, 4)), (40, 1)) + 1e-3 * rng.standard_normal((40, 4))
    engine, gid, _ = engine_and_contributions(x.astype(np.float32))  # every unit seen twice
    monkeypatch.setattr(E.truncated, "STOP_ROWS", 2)
    est = E.estimate_truncated(value_fn(engine, gid), UNITS, depth=3, budget=10**6,
                               marginals=64, seed=0, stop_share=0.02)
    assert est.info["stopped"] == "confident" and est.info["star_rows"] == 0
    assert est.info["chains"] <= E.truncated.LONG_CHAINS
    assert est.evaluations == 2 + 3 * est.info["chains"]
