"""Cut-aware per-sample sampling: a cheap first pass, then evaluations only where the
keep/remove decision is still uncertain."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .game import DEFAULT_BATCH, Estimate, Game, ValueFn, open_game, require, result, trivial
from .permutation import _per_sample_pairs, supports_per_sample

_SQRT2 = math.sqrt(2.0)


class _PerSampleStats:
    """Per (sample, unit) sums of draws; every unit has the same number of draws on every
    sample (a draw covers all N samples), so a unit's value is the plain mean of its draws."""

    def __init__(self, n_samples: int, n: int):
        self.count = np.zeros(n, np.int64)
        self.s1 = np.zeros((n_samples, n))
        self.s2 = np.zeros((n_samples, n))

    def add(self, units: np.ndarray, draws: np.ndarray) -> None:
        """draws [D, N]: one per-sample marginal of unit units[d] on every sample."""
        np.add.at(self.count, units, 1)
        np.add.at(self.s1.T, units, draws)
        np.add.at(self.s2.T, units, draws * draws)

    def add_all(self, draws: np.ndarray) -> None:
        """draws [P, N, n]: P draws of every unit."""
        self.count += len(draws)
        self.s1 += draws.sum(axis=0)
        self.s2 += (draws * draws).sum(axis=0)

    def mean(self) -> np.ndarray:
        return self.s1.mean(axis=0) / np.maximum(self.count, 1)

    def stderr(self, prior: float = 1.0) -> np.ndarray:
        """sqrt(sum_s Var_s / (count N^2)): samples are independent, each sample's variance
        estimated over its own draws. With few draws (2 per sample after the first pass) a
        unit's summed variance has only N (count - 1) degrees of freedom and can come out
        near 0 by chance, which would call it certain on no evidence: it is shrunk toward the
        median over units as if ``prior`` more draws per sample had that variance (the shrink
        fades as the unit's own draws accumulate). A unit whose every draw was exactly 0 (a
        dead channel: masking it changes no output bit) is a null player, known exactly:
        stderr 0, not shrunk."""
        c = self.count.astype(np.float64)
        n_samples = self.s1.shape[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            var = (np.maximum(self.s2 - self.s1 * self.s1 / c, 0.0) / (c - 1)).sum(axis=0)
            if prior > 0 and np.any(c >= 2):
                df = n_samples * (c - 1)
                var = (df * var + prior * n_samples * float(np.nanmedian(var))) / (
                    df + prior * n_samples)
            se = np.sqrt(var / (c * n_samples**2))
        null = (c >= 1) & ~np.any(self.s2, axis=0)
        return np.where(null, 0.0, np.where(c >= 2, se, np.inf))


def wrong_side(mean: np.ndarray, se: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Per unit, the normal-approximation probability that its true value lies on the other
    side of the cut (the midpoint between the k-th and (k+1)-th lowest estimates); the cut
    (nan when k is 0 or n: nothing to decide, every probability 0). A unit with stderr 0 is
    known exactly: probability 0, even on the cut (a tie: either side loses the same)."""
    n = len(mean)
    if k <= 0 or k >= n:
        return np.zeros(n), math.nan
    order = np.argsort(mean, kind="stable")
    cut = 0.5 * (mean[order[k - 1]] + mean[order[k]])
    gap = np.abs(mean - cut)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, gap / se, np.inf)
    p = 0.5 * np.vectorize(math.erfc)(t / _SQRT2) if n else np.zeros(0)
    return np.asarray(p, dtype=np.float64), float(cut)


def _eval_per_sample(game: Game, masks: np.ndarray) -> np.ndarray:
    """Values [K, N] of per-sample coalitions [K, N, n], counted and budgeted as K rows."""
    k = len(masks)
    if game.evaluations + k > game.budget:
        raise RuntimeError(f"estimator tried {game.evaluations + k} evaluations, budget {game.budget}")
    game.requested += k
    rows = np.asarray(game.value_fn(masks), dtype=np.float64)
    if rows.shape != masks.shape[:2]:
        raise ValueError(f"value function returned shape {rows.shape} for per-sample coalitions "
                         f"{masks.shape}; expected [K, N]")
    if not np.all(np.isfinite(rows)):
        raise ValueError("value function returned non-finite values")
    game.evaluations += k
    return rows


def _unit_draws(game: Game, rng: np.random.Generator, units: np.ndarray) -> np.ndarray:
    """One antithetic per-sample marginal of each listed unit on every sample: [len(units), N],
    4 rows each. Sample s of draw d gets its own random order; S = the units before u, C = those
    after it (the predecessors of u in the reversed order), and the draw is
    (v_s(S+u) - v_s(S) + v_s(C+u) - v_s(C)) / 2: distributed as u's pair-averaged marginal in a
    per-sample antithetic pair, so both kinds of draws pool."""
    n, n_samples = game.n, len(game.v_full_ps)
    out = np.empty((len(units), n_samples))
    step = max(1, game.batch // 4)
    for lo in range(0, len(units), step):
        u = units[lo:lo + step]
        m = len(u)
        keys = rng.random((m, n_samples, n))
        s = keys < np.take_along_axis(keys, np.broadcast_to(u[:, None, None], (m, n_samples, 1)), 2)
        s_u = s.copy()
        s_u[np.arange(m), :, u] = True
        v = _eval_per_sample(game, np.concatenate([s, s_u, ~s_u, ~s])).reshape(4, m, n_samples)
        out[lo:lo + m] = 0.5 * ((v[1] - v[0]) + (v[3] - v[2]))
    return out


def estimate_cutaware(
    value_fn: ValueFn,
    n: int,
    *,
    k: int,
    budget: int | None = None,
    seed: Any = 0,
    batch: int = DEFAULT_BATCH,
    first_pairs: int = 2,
    z: float = 2.0,
    wrong_tol: float = 0.01,
    growth: float = 0.25,
    cache: bool = False,
) -> Estimate:
    """Per-sample antithetic pairs as a first pass, then draws only for contested units.

    First pass: ``first_pairs`` per-sample antithetic pairs (as ``persample``), 2 (n - 1)
    rows each. Then, in rounds: the cut is the midpoint between the k-th and (k+1)-th lowest
    estimate; a unit is *contested* while its interval mean +- z stderr holds the cut, and
    each round gives every contested unit the same number of new draws (4 rows each through
    ``_unit_draws``; a full pair when more than about half the units are contested, since a
    pair gives every unit a draw at 2 (n - 1) rows). Rounds grow geometrically (``growth``
    times the evaluations so far, at least one batch). Sampling stops when no unit is
    contested, when the expected number of units on the wrong side of the cut (the sum of
    the per-unit normal-approximation probabilities, ``info["wrong_side"]``) is at most
    ``wrong_tol`` x n, or when the budget (an upper bound) is spent.

    Every draw is an unbiased per-sample sample of the unit's Shapley value and every unit
    has the same number of draws on every sample, so a unit's value is unbiased up to the
    small optional-stopping bias of any sequential test; stderr as in ``persample``, with
    each unit's own count and its variance shrunk toward the median over units
    (``_PerSampleStats.stderr``): the decisions use this stderr, and report it. Efficiency does not hold once units have unequal counts.
    ``cache`` is accepted for a uniform signature and ignored (per-sample rows never repeat).
    """
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n] = [0, {n}], got {k}")
    if n >= 2 and not supports_per_sample(value_fn):
        raise ValueError("the cutaware estimator needs a value function with per_sample_masks")
    game = open_game(value_fn, n, budget, batch, cache=False)
    if n <= 1:
        return trivial(game, "cutaware")
    pair_cost = 2 * (n - 1)
    require(game, pair_cost, "one antithetic pair")
    rng = np.random.default_rng(seed)
    stats = _PerSampleStats(len(game.v_full_ps), n)
    pairs = max(1, min(first_pairs, game.affordable(pair_cost)))
    stats.add_all(_per_sample_pairs(game, rng, pairs))
    rounds, unit_draws = 1, 0
    threshold = 0.5 * math.erfc(z / _SQRT2)  # p_wrong of a unit whose interval touches the cut
    while True:
        mean, se = stats.mean(), stats.stderr()
        p, cut = wrong_side(mean, se, k)
        todo = np.flatnonzero(p > threshold)
        converged = len(todo) == 0 or p.sum() <= wrong_tol * n
        if converged:
            break
        round_rows = max(game.batch, int(growth * game.evaluations))
        if 4 * len(todo) >= pair_cost:
            m = min(game.affordable(pair_cost), max(1, round_rows // pair_cost))
            if m == 0:
                break
            stats.add_all(_per_sample_pairs(game, rng, m))
        else:
            units = _round_units(todo, p[todo], round_rows, game.affordable(4))
            if len(units) == 0:
                break
            stats.add(units, _unit_draws(game, rng, units))
            unit_draws += len(units)
        rounds += 1
    return result(
        game, mean, se, "cutaware",
        samples=stats.count * len(game.v_full_ps), separated=p <= threshold,
        info={"k": k, "z": z, "cut": cut, "wrong_side": float(p.sum()), "rounds": rounds,
              "unit_draws": unit_draws, "converged": bool(converged)},
    )  # fmt: skip


def _round_units(todo: np.ndarray, p: np.ndarray, round_rows: int, affordable: int) -> np.ndarray:
    """Units to draw this round: every contested unit the same number of times, the likeliest
    to be on the wrong side first when the budget runs short."""
    per_unit = max(1, round_rows // (4 * len(todo)))
    ordered = todo[np.argsort(-p, kind="stable")]
    return np.tile(ordered, per_unit)[: min(affordable, per_unit * len(todo))]
