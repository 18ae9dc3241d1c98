"""Adaptive antithetic sampling that stops once the pruning cut is resolved."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .game import (
    DEFAULT_BATCH,
    Estimate,
    Game,
    RunningStats,
    ValueFn,
    open_game,
    require,
    result,
    trivial,
)
from .permutation import sample_permutations


def _separation(mean: np.ndarray, se: np.ndarray, k: int, z: float) -> tuple[np.ndarray, float]:
    """Which units' intervals mean +- z se lie strictly on their side of the cut between the
    k-th and (k+1)-th lowest estimate; the cut itself (nan when k is 0 or n)."""
    n = len(mean)
    if k <= 0 or k >= n:
        return np.ones(n, bool), math.nan
    order = np.argsort(mean, kind="stable")
    cut = 0.5 * (mean[order[k - 1]] + mean[order[k]])
    below = np.zeros(n, bool)
    below[order[:k]] = True
    with np.errstate(invalid="ignore"):
        separated = np.where(below, mean + z * se < cut, mean - z * se > cut)
    return separated, float(cut)


def _unit_pair_marginals(game: Game, rng: np.random.Generator, units: np.ndarray) -> np.ndarray:
    """One antithetic marginal per requested unit, 4 evaluations each.

    For unit u draw a uniform random order (keys), S = the units before u, C = the units after
    it: C is S's complement without u, exactly the predecessors of u in the reversed order. The
    draw (v(S+u) - v(S) + v(C+u) - v(C)) / 2 has the same distribution as u's pair-averaged
    marginal in a full antithetic permutation pair, so both kinds of draws are iid samples of
    the same unbiased estimator of phi_u and can be pooled."""
    m, n = len(units), game.n
    rows = np.arange(m)
    keys = rng.random((m, n))
    s = keys < keys[rows, units][:, None]
    s_u = s.copy()
    s_u[rows, units] = True
    v = game(np.concatenate([s, s_u, ~s_u, ~s])).mean(axis=1).reshape(4, m)
    return 0.5 * ((v[1] - v[0]) + (v[3] - v[2]))


def estimate_adaptive(
    value_fn: ValueFn,
    n: int,
    *,
    k: int,
    budget: int | None = None,
    seed: Any = 0,
    batch: int = DEFAULT_BATCH,
    z: float = 3.0,
    min_pairs: int = 4,
    prior_draws: float = 4.0,
    growth: float = 0.25,
    focus: bool = True,
    cache: bool = True,
) -> Estimate:
    """Antithetic sampling in rounds until the k lowest units are separated from the rest.

    After ``min_pairs`` antithetic pairs, and after every further round, each unit gets the
    interval mean +- z * stderr; the cut is the midpoint between the k-th and (k+1)-th lowest
    mean. A unit is *separated* when its interval lies strictly on its side of the cut.
    Sampling stops when all units are separated or the budget is spent
    (``info["converged"]`` says which).

    Rounds grow geometrically (about ``growth`` times the evaluations so far, at least one
    batch) so the number of looks stays logarithmic in the budget. With ``focus`` and fewer
    than (n - 1) / 2 straddling units, a round spends its evaluations on the straddling units
    only, through ``_unit_pair_marginals`` (4 evaluations per draw for one unit instead of
    2 (n - 1) for all units); otherwise it draws full antithetic pairs.

    stderr: standard deviation of the unit's draws / sqrt(count) (``samples`` gives the count),
    with the variance shrunk toward the median over units by ``prior_draws`` pseudo-draws
    (``RunningStats.stderr``): with 4 or 5 draws a unit's sample variance is often near 0 by
    chance (marginals of real networks can take few distinct values), which would separate it
    on no evidence. The reported ``stderr`` is the one the decisions used.

    Correctness: every draw of a unit is an unbiased sample of its Shapley value with the same
    distribution (see ``_unit_pair_marginals``); a unit's value is the mean of its draws.
    How many draws a unit gets depends on earlier draws, as in any sequential test:
    the mean is consistent, with at most a small optional-stopping bias of the order of the
    reported stderr, and repeated looks make the nominal z level optimistic -- hence the
    conservative default z = 3. Efficiency does not hold once units have unequal counts.
    """
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n] = [0, {n}], got {k}")
    game = open_game(value_fn, n, budget, batch, cache)
    if n <= 1:
        est = trivial(game, "adaptive")
        est.separated = np.ones(n, bool)
        return est
    full_cost = 2 * (n - 1)
    require(game, 2 * full_cost, "two antithetic pairs")
    rng = np.random.default_rng(seed)
    stats = RunningStats(n)

    def full_pairs(m: int) -> None:
        draws = sample_permutations(game, rng, m, antithetic=True, tol=None, keep_per_sample=False)
        stats.add_all(draws.means)

    full_pairs(max(2, min_pairs))
    rounds, unit_draws = 1, 0
    while True:
        stderr = stats.stderr(prior_draws)
        separated, cut = _separation(stats.mean, stderr, k, z)
        if separated.all():
            break
        todo = np.flatnonzero(~separated)
        round_evals = max(game.batch, int(growth * game.evaluations))
        if focus and 4 * len(todo) < full_cost:
            ambiguity = np.abs(stats.mean[todo] - cut) / stderr[todo]
            units = _focus_units(todo, ambiguity, round_evals, game.affordable(4))
            if len(units) == 0:
                break
            stats.add(units, _unit_pair_marginals(game, rng, units))
            unit_draws += len(units)
        else:
            m = min(game.affordable(full_cost), max(1, round_evals // full_cost))
            if m == 0:
                break
            full_pairs(m)
        rounds += 1
    return result(
        game, stats.mean.copy(), stderr, "adaptive",
        samples=stats.count.copy(), separated=separated,
        info={"k": k, "z": z, "cut": cut, "converged": bool(separated.all()), "rounds": rounds,
              "unit_draws": unit_draws,
              "bottom": np.sort(np.argsort(stats.mean, kind="stable")[:k])},
    )  # fmt: skip


def _focus_units(
    todo: np.ndarray, ambiguity: np.ndarray, round_evals: int, affordable: int
) -> np.ndarray:
    """Units to draw in a focused round: every straddling unit the same number of times,
    most ambiguous first (smallest |mean - cut| / stderr) when the budget runs short."""
    per_unit = max(1, round_evals // (4 * len(todo)))
    ordered = todo[np.argsort(np.nan_to_num(ambiguity, nan=0.0), kind="stable")]
    return np.tile(ordered, per_unit)[: min(affordable, per_unit * len(todo))]
