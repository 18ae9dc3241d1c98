"""Tests for onnxprune.scoring.estimators: exactness on known games, axioms, calibration of the
standard errors, budgets, reproducibility, adaptive separation and the joint regression."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune.scoring import estimators as E
from onnxprune.scoring.estimators.adaptive import _unit_pair_marginals

SAMPLING = ["permutation", "antithetic", "persample", "kernelshap", "adaptive", "cutaware"]


# ---------------------------------------------------------------------------------------------
# Games


def toy_game():
    """docs/design.md / Ancona et al. Fig. 1: y = Relu(x @ W1) @ w2 = max(x1, x2); per-sample value
    -(y_S - max(x1, x2))^2 with the hidden units outside S zeroed."""
    x = np.array([[0, 1], [1, 0], [1, 2], [2, 1]], float)
    w1 = np.array([[-0.5, 1, 1, 1], [0.5, -1, 1, 1]])
    w2 = np.array([1, 0.5, 0.5, 0])
    contrib = np.maximum(x @ w1, 0) * w2  # [N, n]: unit j's term of y per sample
    target = x.max(axis=1)

    def value(masks: np.ndarray) -> np.ndarray:
        y = (masks[:, None, :] * contrib[None]).sum(axis=-1)  # [K, N]
        return -((y - target) ** 2)

    return value, np.array([0.375, 0.375, 1.75, 0.0])


def pairwise_game(a: np.ndarray, b: np.ndarray):
    """v_s(S) = sum_{i in S} a_si + sum_{i<j in S} B_sij; Shapley = mean_s(a_s + B_s 1 / 2)."""

    def value(masks: np.ndarray) -> np.ndarray:
        z = masks.astype(float)
        return z @ a.T + 0.5 * np.einsum("kn,snm,km->ks", z, b, z)

    return value, (a + 0.5 * b.sum(axis=-1)).mean(axis=0)


def random_pairwise(rng: np.random.Generator, n: int, n_samples: int, scale: float = 1.0):
    a = rng.normal(size=(n_samples, n))
    b = rng.normal(scale=scale, size=(n_samples, n, n))
    b = 0.5 * (b + b.transpose(0, 2, 1))
    b[:, np.arange(n), np.arange(n)] = 0.0
    return a, b


def tanh_game(rng: np.random.Generator, n: int, n_samples: int = 5):
    """A game with interactions of every order: v_s(S) = tanh(1.5 c_s . 1_S - b_s)."""
    c = rng.normal(size=(n_samples, n))
    b = rng.normal(size=n_samples)
    return lambda masks: np.tanh(1.5 * masks.astype(float) @ c.T - b)


def block_game(a: np.ndarray, c: np.ndarray, gamma: float, block: int = 4):
    """Additive part plus gamma * tanh of a weighted sum inside each block of ``block`` units:
    v_s(S) = sum_{i in S} a_si + gamma sum_blocks tanh(sum_{i in S cap block} c_si).
    Blocks do not interact, so the Shapley values are the additive part plus each block
    game's Shapley values, computed exactly per block."""
    n_samples, n = a.shape

    def value(masks: np.ndarray) -> np.ndarray:
        zc = masks.astype(float)[:, None, :] * c[None]
        blocks = zc.reshape(len(masks), n_samples, n // block, block).sum(axis=-1)
        return masks.astype(float) @ a.T + gamma * np.tanh(blocks).sum(axis=-1)

    phi = a.mean(axis=0)
    for lo in range(0, n, block):
        cb = c[:, lo : lo + block]
        phi[lo : lo + block] += gamma * E.estimate_exact(
            lambda m, cb=cb: np.tanh(m.astype(float) @ cb.T), block
        ).values
    return value, phi


class PerSample:
    """A game given on shared coalitions [K, n] made to take per-sample ones [K, N, n] too:
    every distinct mask on all samples, then each sample's own column."""

    per_sample_masks = True

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, masks):
        if masks.ndim == 2:
            return self.fn(masks)
        k, n_samples, n = masks.shape
        uniq, inv = np.unique(masks.reshape(-1, n), axis=0, return_inverse=True)
        return self.fn(uniq)[inv.reshape(k, n_samples), np.arange(n_samples)]


class Counting:
    """Wraps a value function; records rows and the largest call."""

    def __init__(self, fn):
        self.fn, self.rows, self.largest = fn, 0, 0
        self.per_sample_masks = E.supports_per_sample(fn)

    def __call__(self, masks):
        assert masks.dtype == bool
        self.rows += len(masks)
        self.largest = max(self.largest, len(masks))
        return self.fn(masks)


def brute_force_shapley(value, n: int) -> np.ndarray:
    """Per-sample Shapley values [N, n] by averaging over all n! orders (independent of E)."""
    total = 0.0
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        masks = np.zeros((n + 1, n), bool)
        for k, unit in enumerate(perm):
            masks[k + 1 :, unit] = True
        steps = np.diff(value(masks), axis=0)  # [n, N] by position
        total = total + steps[np.argsort(perm)].T
    return total / len(perms)


def run(name: str, value, n: int, **kw) -> E.Estimate:
    if E.CAPABILITIES[name].needs_k:
        kw.setdefault("k", n // 2)
    if E.CAPABILITIES[name].per_sample and not E.supports_per_sample(value):
        value = PerSample(value)
    return E.estimate(name, value, n, **kw)


def assert_within_stderr(est: E.Estimate, exact: np.ndarray, z: float = 3.0):
    err = np.abs(est.values - exact)
    assert np.all(err <= z * est.stderr + 1e-9), (est.method, est.values, exact, est.stderr)


# ---------------------------------------------------------------------------------------------
# Exact enumeration


def test_exact_toy_example():
    value, expected = toy_game()
    est = E.estimate_exact(value, 4)
    np.testing.assert_allclose(est.values, expected, rtol=0, atol=1e-12)
    assert est.values[3] == 0.0  # null player: exactly
    assert est.evaluations == 16 and est.method == "exact"
    assert np.all(est.stderr == 0)
    assert est.v_full - est.v_empty == pytest.approx(2.5)
    assert abs(est.efficiency_gap) < 1e-12


def test_exact_matches_brute_force_and_mean_plus_2std():
    value, _ = toy_game()
    per_sample = brute_force_shapley(value, 4)
    np.testing.assert_allclose(E.estimate_exact(value, 4).values, per_sample.mean(0), atol=1e-12)
    ancona = E.estimate_exact(value, 4, aggregate="mean+2std")
    np.testing.assert_allclose(
        ancona.values, per_sample.mean(0) + 2 * per_sample.std(0), atol=1e-12
    )


def test_exact_refuses_large_n_and_small_budget():
    never = Counting(lambda m: np.zeros((len(m), 1)))
    with pytest.raises(ValueError, match="refuses"):
        E.estimate_exact(never, 17)
    with pytest.raises(ValueError, match="budget"):
        E.estimate_exact(never, 5, budget=31)
    assert never.rows == 0


def test_symmetry_identical_units_share_credit():
    rng = np.random.default_rng(3)
    c = rng.normal(size=(4, 6))
    c[:, 1] = c[:, 0]  # units 0 and 1 are interchangeable
    est = E.estimate_exact(lambda m: np.tanh(m.astype(float) @ c.T), 6)
    assert est.values[0] == pytest.approx(est.values[1], abs=1e-12)


@pytest.mark.parametrize("name", ["exact", "permutation", "antithetic"])
@pytest.mark.parametrize("aggregate", ["mean", "mean+2std"])
def test_null_player_gets_exactly_zero(name, aggregate):
    value, _ = toy_game()  # unit 3 has output weight 0
    est = E.estimate(name, value, 4, budget=40, aggregate=aggregate)
    assert est.values[3] == 0.0
    if name != "exact":
        assert est.stderr[3] == 0.0


def test_persample_null_player_and_symmetry():
    value, _ = toy_game()  # unit 3 has output weight 0
    est = run("persample", value, 4, budget=40)
    assert est.values[3] == 0.0 and est.stderr[3] == 0.0
    rng = np.random.default_rng(3)
    c = rng.normal(size=(4, 6))
    c[:, 1] = c[:, 0]  # interchangeable units: equal in expectation, within the stderr
    est = run("persample", lambda m: np.tanh(m.astype(float) @ c.T), 6, budget=400, seed=1)
    gap = abs(est.values[0] - est.values[1])
    assert gap <= 3 * np.hypot(est.stderr[0], est.stderr[1])


# ---------------------------------------------------------------------------------------------
# Sampling estimators on the toy and on games with known values


@pytest.mark.parametrize("name", SAMPLING)
def test_sampling_estimators_on_toy(name):
    value, expected = toy_game()
    est = run(name, value, 4, budget=60, seed=1)
    assert est.evaluations <= 60
    assert_within_stderr(est, expected)
    if name != "adaptive":
        assert abs(est.efficiency_gap) < 1e-12


def test_permutation_efficiency_holds_per_permutation():
    rng = np.random.default_rng(0)
    value = tanh_game(rng, 12)
    for name in ("permutation", "antithetic", "persample"):
        est = run(name, value, 12, budget=300, seed=2)
        draws = est.info["draws"]
        assert len(draws) >= 5
        np.testing.assert_allclose(draws.sum(axis=1), est.v_full - est.v_empty, rtol=0, atol=1e-12)
        assert abs(est.efficiency_gap) < 1e-12


@pytest.mark.parametrize("name", ["permutation", "antithetic", "persample", "kernelshap"])
def test_stderr_is_calibrated_on_a_higher_order_game(name):
    """z = (estimate - exact) / stderr over 40 seeds and 8 units: mean z^2 near 1."""
    value = tanh_game(np.random.default_rng(1), 8)
    exact = E.estimate_exact(value, 8).values
    z = np.array(
        [(est.values - exact) / est.stderr
         for est in (run(name, value, 8, budget=300, seed=s) for s in range(40))]
    )  # fmt: skip
    assert 0.5 < np.mean(z**2) < 2.0, np.mean(z**2)
    assert np.mean(np.abs(z) > 3) < 0.02


@given(
    n=st.integers(1, 8),
    n_samples=st.integers(1, 3),
    scale=st.floats(0.0, 2.0),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=30, deadline=None)
def test_pairwise_games_closed_form(n, n_samples, scale, seed):
    """Additive + pairwise games: phi_i = a_i + sum_j B_ij / 2. Exact enumeration matches; so do
    paired KernelSHAP (the two residuals of a complementary pair are equal, so the constrained
    fit is exact once the design is regular) and antithetic permutations (a pair sees each
    partner of i once before and once after i)."""
    a, b = random_pairwise(np.random.default_rng(seed), n, n_samples, scale)
    value, phi = pairwise_game(a, b)
    np.testing.assert_allclose(E.estimate_exact(value, n).values, phi, atol=1e-9)
    ks = E.estimate_kernelshap(value, n, budget=400, seed=seed)
    np.testing.assert_allclose(ks.values, phi, atol=1e-6)
    assert abs(ks.efficiency_gap) < 1e-9
    anti = E.estimate_antithetic(value, n, budget=max(4, 2 * n), seed=seed)
    np.testing.assert_allclose(anti.values, phi, atol=1e-9)
    per = run("persample", value, n, budget=max(4, 2 * n), seed=seed)
    np.testing.assert_allclose(per.values, phi, atol=1e-9)


def test_kernelshap_reports_zero_stderr_when_exact_and_positive_otherwise():
    a, b = random_pairwise(np.random.default_rng(5), 7, 3)
    value, _ = pairwise_game(a, b)
    assert np.all(E.estimate_kernelshap(value, 7, budget=200).stderr < 1e-9)
    higher = E.estimate_kernelshap(tanh_game(np.random.default_rng(5), 7), 7, budget=200)
    assert np.all(higher.stderr > 1e-6) and higher.info["regular"]


# ---------------------------------------------------------------------------------------------
# Truncation


def test_truncation_without_loss_on_a_saturating_game():
    """v(S) = min(1, sum a_i): once a prefix saturates, the remaining marginals are exactly 0,
    so truncation changes nothing but the cost."""
    a = np.linspace(0.15, 0.45, 10)
    value = lambda m: np.minimum(1.0, m.astype(float) @ a)[:, None]  # noqa: E731
    kw = dict(budget=10_000, n_pairs=30, seed=4, cache=False)
    plain = E.estimate_antithetic(value, 10, **kw)
    cut = E.estimate_antithetic(value, 10, tol=1e-12, **kw)
    np.testing.assert_allclose(cut.values, plain.values, atol=1e-12)
    assert cut.evaluations < 0.75 * plain.evaluations
    assert cut.info["truncated_chains"] > 0


def test_truncation_efficiency_gap_is_bounded_by_tol():
    value = tanh_game(np.random.default_rng(6), 10)
    est = E.estimate_antithetic(value, 10, budget=400, seed=0, tol=0.1, cache=False)
    delta = est.v_full - est.v_empty
    gaps = np.abs(est.info["draws"].sum(axis=1) - delta)
    assert np.all(gaps <= 0.1 * abs(delta) + 1e-12)


# ---------------------------------------------------------------------------------------------
# Budget, batching, reproducibility, validation


@pytest.mark.parametrize("name", SAMPLING + ["joint"])
@pytest.mark.parametrize("budget", [40, 97, 500])
@pytest.mark.parametrize("cache", [True, False])
def test_budget_and_batch_respected(name, budget, cache):
    counter = Counting(PerSample(tanh_game(np.random.default_rng(7), 9)))
    kw = {} if name == "joint" else {"cache": cache}
    est = run(name, counter, 9, budget=budget, batch=16, seed=0, **kw)
    assert est.evaluations == counter.rows <= budget
    assert counter.largest <= 16


def test_persample_needs_per_sample_masks_and_beats_shared_orders():
    """Refused without per-sample support (before any evaluation); with it, on a game whose
    samples share their structure, far closer to exact than shared orders at the same budget."""
    never = Counting(lambda m: np.zeros((len(m), 3)))
    with pytest.raises(ValueError, match="per_sample_masks"):
        E.estimate_persample(never, 6)
    assert never.rows == 0
    rng = np.random.default_rng(14)
    c = rng.normal(size=10) + rng.normal(scale=0.3, size=(32, 10))  # 32 similar samples
    value = lambda m: np.tanh(1.5 * m.astype(float) @ c.T - 1.0)  # noqa: E731
    exact = E.estimate_exact(value, 10).values
    err = {name: np.mean([np.mean((run(name, value, 10, budget=100, seed=s).values - exact) ** 2)
                          for s in range(10)]) for name in ("antithetic", "persample")}  # fmt: skip
    assert err["persample"] < err["antithetic"] / 4, err


@pytest.mark.parametrize("name", ["permutation", "antithetic", "persample", "adaptive"])
def test_too_small_budget_is_refused(name):
    with pytest.raises(ValueError, match="budget"):
        run(name, tanh_game(np.random.default_rng(0), 9), 9, budget=9)


@pytest.mark.parametrize("name", SAMPLING + ["joint"])
def test_same_seed_same_result(name):
    value = tanh_game(np.random.default_rng(8), 9)
    first, again = (run(name, value, 9, budget=200, seed=11) for _ in range(2))
    other = run(name, value, 9, budget=200, seed=12)
    np.testing.assert_array_equal(first.values, again.values)
    np.testing.assert_array_equal(first.stderr, again.stderr)
    assert first.evaluations == again.evaluations
    assert not np.array_equal(first.values, other.values)


def test_truncated_result_does_not_depend_on_batch():
    value = tanh_game(np.random.default_rng(9), 10)
    runs = [
        E.estimate_antithetic(value, 10, budget=10_000, n_pairs=8, tol=0.05, batch=b, seed=1)
        for b in (1, 7, 64)
    ]
    for other in runs[1:]:  # same truncation points; values equal up to float rounding
        np.testing.assert_allclose(runs[0].values, other.values, rtol=0, atol=1e-12)
        assert other.info["truncated_chains"] == runs[0].info["truncated_chains"]


def test_small_games():
    value = lambda m: m.astype(float).sum(axis=1, keepdims=True) * 3.0  # noqa: E731
    for name in SAMPLING + ["exact", "joint"]:
        est = run(name, value, 1, budget=40)
        assert est.values.shape == (1,)
        assert est.values[0] == pytest.approx(3.0, abs=1e-2 if name == "joint" else 1e-9)
        empty = run(name, value, 0, budget=40)
        assert empty.values.shape == (0,) and empty.evaluations == 0


def test_value_function_output_is_validated():
    with pytest.raises(ValueError, match="shape"):
        E.estimate_permutation(lambda m: np.zeros((len(m) + 1, 2)), 5)
    with pytest.raises(ValueError, match="non-finite"):
        E.estimate_permutation(lambda m: np.full((len(m), 2), np.nan), 5)


def test_registry_and_defaults():
    assert set(E.ESTIMATORS) == {*SAMPLING, "exact", "joint", "truncated"}
    value, _ = toy_game()
    by_name = E.estimate("exact", value, 4).values
    np.testing.assert_array_equal(by_name, E.estimate_exact(value, 4).values)
    with pytest.raises(ValueError, match="unknown estimator"):
        E.estimate("magic", value, 4)
    assert E.default_budget(50) == 500
    assert E.default_budget(1) >= 4


def test_module_does_not_import_torch():
    code = "import sys, onnxprune.scoring.estimators; assert 'torch' not in sys.modules"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# ---------------------------------------------------------------------------------------------
# Adaptive


def separation_game(n: int, k: int, near: tuple[float, float] | None, gamma: float, spread: float):
    """Bottom k units around 0.15, the rest around 1.25 (with ``near`` values for the k-th and
    (k+1)-th unit when given), plus per-sample noise and tanh block interactions."""
    rng = np.random.default_rng(0)
    mid = list(near) if near else []
    base = np.concatenate(
        [rng.uniform(0, 0.3, k - len(mid) // 2), mid, rng.uniform(1.0, 1.5, n - k - len(mid) // 2)]
    )
    a = base + rng.normal(0, 0.1, (8, n))
    c = rng.normal(0, spread, (8, n))
    return block_game(a, c, gamma)


def test_adaptive_separates_clear_cut_with_fewer_evaluations():
    n, k = 24, 6
    value, phi = separation_game(n, k, None, gamma=0.5, spread=1.0)
    truth = np.sort(np.argsort(phi)[:k])
    adaptive = E.estimate_adaptive(value, n, k=k, budget=5000, seed=0)
    fixed = E.estimate_permutation(value, n, budget=5000, seed=0)
    assert adaptive.info["converged"] and adaptive.separated.all()
    np.testing.assert_array_equal(adaptive.info["bottom"], truth)
    np.testing.assert_array_equal(fixed.bottom(k), truth)
    assert adaptive.evaluations < fixed.evaluations / 10
    assert_within_stderr(adaptive, phi, z=4.0)


def test_adaptive_focuses_on_straddling_units():
    n, k = 40, 10
    value, phi = separation_game(n, k, (0.5, 0.7), gamma=1.0, spread=2.0)
    truth = np.sort(np.argsort(phi)[:k])
    focused = E.estimate_adaptive(value, n, k=k, budget=20_000, seed=0)
    broad = E.estimate_adaptive(value, n, k=k, budget=20_000, seed=0, focus=False)
    for est in (focused, broad):
        assert est.info["converged"]
        np.testing.assert_array_equal(est.info["bottom"], truth)
    assert focused.info["unit_draws"] > 0 and broad.info["unit_draws"] == 0
    assert focused.samples.max() > focused.samples.min()  # extra draws went to a few units
    assert focused.evaluations < broad.evaluations


def test_unit_pair_draws_are_unbiased():
    """The per-unit antithetic draws used by focused rounds average to the Shapley value."""
    value = tanh_game(np.random.default_rng(10), 10)
    exact = E.estimate_exact(value, 10).values
    game = E.Game(value, 10, budget=100_000, batch=256, cache=False)
    game.endpoints()
    units = np.repeat(np.arange(10), 1500)
    draws = _unit_pair_marginals(game, np.random.default_rng(0), units).reshape(10, -1)
    z = (draws.mean(axis=1) - exact) / (draws.std(axis=1, ddof=1) / np.sqrt(draws.shape[1]))
    assert np.all(np.abs(z) < 4), z


def test_adaptive_stops_at_budget_when_cut_is_unresolvable():
    value = lambda m: m.astype(float).sum(axis=1, keepdims=True)  # noqa: E731  all units equal
    value_noisy = lambda m: value(m) + 0.1 * np.sin(7 * m @ np.arange(12.0))[:, None]  # noqa: E731
    est = E.estimate_adaptive(value_noisy, 12, k=6, budget=300, seed=0)
    assert not est.info["converged"] and not est.separated.all()
    assert est.evaluations <= 300


# ---------------------------------------------------------------------------------------------
# Cut-aware (per-sample first pass, then contested units only)


def test_cutaware_finds_a_clear_cut_at_a_fraction_of_the_budget():
    n, k = 24, 6
    value, phi = separation_game(n, k, None, gamma=0.5, spread=1.0)
    truth = np.sort(np.argsort(phi)[:k])
    est = E.estimate_cutaware(PerSample(value), n, k=k, budget=5000, seed=0)
    assert est.info["converged"] and est.info["wrong_side"] < 0.01 * n
    np.testing.assert_array_equal(est.bottom(k), truth)
    assert est.evaluations < 5000 / 10
    assert_within_stderr(est, phi, z=4.0)


def test_cutaware_spends_its_draws_on_the_contested_units():
    n, k = 40, 10
    value, phi = separation_game(n, k, (0.5, 0.7), gamma=1.0, spread=2.0)
    truth = np.sort(np.argsort(phi)[:k])
    est = E.estimate_cutaware(PerSample(value), n, k=k, budget=20_000, seed=0, wrong_tol=0.0)
    np.testing.assert_array_equal(est.bottom(k), truth)
    assert est.info["unit_draws"] > 0
    near = np.argsort(phi)[k - 2 : k + 2]  # two units on either side of the cut
    refined = np.flatnonzero(est.samples > est.samples.min())
    assert 0 < len(refined) and set(refined) <= set(near)  # extra draws went to the cut only
    assert est.evaluations < 20_000 / 4


@pytest.mark.parametrize("k", [0, 3, 6, 12])
def test_cutaware_wrong_side_expectation_is_in_range(k):
    """The expected number of units on the wrong side of the cut is a sum of probabilities:
    in [0, n]; 0 when there is no cut to decide (k = 0 or n), where the first pass stands."""
    n = 12
    value = lambda m: m.astype(float).sum(axis=1, keepdims=True)  # noqa: E731  all units equal
    noisy = PerSample(lambda m: value(m) + 0.1 * np.sin(7 * m @ np.arange(12.0))[:, None])
    est = E.estimate_cutaware(noisy, n, k=k, budget=300, seed=0)
    assert 0.0 <= est.info["wrong_side"] <= n and est.evaluations <= 300
    if k in (0, n):
        assert est.info["wrong_side"] == 0.0 and est.info["rounds"] == 1
    p, _ = E.wrong_side(est.values, est.stderr, k)
    assert np.all((p >= 0) & (p <= 0.5))


def test_cutaware_unit_draws_are_unbiased_per_sample():
    """The per-unit, per-sample antithetic draws of the refining rounds average to the
    Shapley value of each sample's game."""
    from onnxprune.scoring.estimators.cutaware import _unit_draws

    value = PerSample(tanh_game(np.random.default_rng(10), 10, n_samples=3))
    exact = np.stack([E.estimate_exact(lambda m, s=s: value.fn(m)[:, s], 10).values
                      for s in range(3)])  # [N, n]
    game = E.Game(value, 10, budget=100_000, batch=256, cache=False)
    game.endpoints()
    units = np.repeat(np.arange(10), 1500)
    draws = _unit_draws(game, np.random.default_rng(0), units).reshape(10, 1500, 3)
    se = draws.std(axis=1, ddof=1) / np.sqrt(1500)
    z = (draws.mean(axis=1) - exact.T) / se
    assert np.all(np.abs(z) < 4.5), z


def test_cutaware_dead_units_at_the_cut_are_ties_not_doubt():
    """Units that change no output (exactly 0 on every draw) are known exactly: stderr 0, no
    wrong-side probability even when the cut falls among them, no draws spent on them."""
    rng = np.random.default_rng(3)
    a = np.concatenate([np.zeros((6, 8)), rng.uniform(1, 2, (6, 8))], axis=1)  # 8 dead of 16
    value, _ = pairwise_game(a, np.zeros((6, 16, 16)))
    est = E.estimate_cutaware(PerSample(value), 16, k=4, budget=2000, seed=0)
    assert np.all(est.values[:8] == 0) and np.all(est.stderr[:8] == 0)
    assert est.info["wrong_side"] == 0.0 and est.info["rounds"] == 1 and est.evaluations < 100


def test_cutaware_needs_per_sample_masks():
    never = Counting(lambda m: np.zeros((len(m), 3)))
    with pytest.raises(ValueError, match="per_sample_masks"):
        E.estimate_cutaware(never, 6, k=3)
    assert never.rows == 0


# ---------------------------------------------------------------------------------------------
# Joint regression


def test_joint_recovers_ordering_of_additive_multi_group_game():
    sizes = [5, 7, 4]
    rng = np.random.default_rng(12)
    a = rng.permutation(np.linspace(0.1, 2.0, sum(sizes)))
    noise = rng.normal(0, 0.05, (6, sum(sizes)))
    value = lambda m: m.astype(float) @ (a + noise).T  # noqa: E731
    groups = E.estimate_joint(value, sizes, keep_ratio=0.6, budget=400, seed=0)
    assert [g.n for g in groups] == sizes
    lo = 0
    for g in groups:
        truth = a[lo : lo + g.n] + noise[:, lo : lo + g.n].mean(0)
        np.testing.assert_array_equal(np.argsort(g.values), np.argsort(truth))
        np.testing.assert_allclose(g.values, truth, atol=0.02)
        assert g.evaluations == 400 and g.method == "joint"
        lo += g.n


def test_joint_estimates_weighted_banzhaf_not_shapley():
    """With keep probability p, the coefficient of i tends to E[v(S+i) - v(S)], S ~ Bernoulli(p):
    a_i + p * sum_j B_ij for a pairwise game, where Shapley has p = 1/2."""
    a, b = random_pairwise(np.random.default_rng(13), 6, 2, scale=0.5)
    value, _ = pairwise_game(a, b)
    (est,) = E.estimate_joint(value, [6], keep_ratio=0.3, budget=4000, seed=0, ridge=1e-6)
    banzhaf = (a + 0.3 * b.sum(-1)).mean(0)
    np.testing.assert_allclose(est.values, banzhaf, atol=5 * est.stderr.max() + 0.02)


# ---------------------------------------------------------------------------------------------
# Wiring in score.py: auto picks persample only when the engine takes per-sample coalitions


def test_auto_estimator_follows_engine_support():
    from types import SimpleNamespace

    from onnxprune.errors import OnnxPruneError
    from onnxprune.scoring import shapley
    from onnxprune.scoring.shapley import pick_estimator, shapley_group

    assert pick_estimator(40, 400) == "antithetic"
    assert pick_estimator(40, 400, per_sample=True) == "persample"
    assert pick_estimator(6, 60, per_sample=True) == "exact"
    # the cut known: every group in one (truncated) game, small ones too; exact without
    # per-sample coalitions (no truncated game to share)
    assert pick_estimator(6, 60, per_sample=True, cut_known=True) == shapley.DEFAULT_ESTIMATOR
    assert pick_estimator(6, 60, cut_known=True) == "exact"
    assert pick_estimator(40, 400, per_sample=True, cut_known=True) == shapley.DEFAULT_ESTIMATOR
    assert pick_estimator(40, 400, cut_known=True) == "antithetic"
    value = PerSample(tanh_game(np.random.default_rng(15), 10))
    exact = E.estimate_exact(value, 10).values

    def engine(per_sample: bool):
        group = SimpleNamespace(units=10)
        return SimpleNamespace(analysis=SimpleNamespace(group=lambda gid: group),
                               values=lambda gid, c: value(c), per_sample_masks=per_sample)

    with_masks = shapley_group(engine(True), 0, budget=200)
    assert with_masks.method == "shapley/persample"
    assert np.all(np.abs(with_masks.values - exact) <= 4 * with_masks.stderr + 1e-9)
    assert shapley_group(engine(False), 0, budget=200).method == "shapley/antithetic"
    assert shapley_group(engine(True), 0, budget=200, aggregate="mean+2std").method == \
        "shapley/antithetic"
    with pytest.raises(OnnxPruneError, match="per-sample"):
        shapley_group(engine(False), 0, budget=200, estimator="persample")
    at_cut = shapley_group(engine(True), 0, budget=200, k=5, estimator="cutaware")
    assert at_cut.method == "shapley/cutaware"
    assert 0 <= at_cut.to_json()["wrong_side"] <= 10
