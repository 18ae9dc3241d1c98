"""Permutation sampling: plain, antithetic (optionally truncated), antithetic per sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .game import (
    DEFAULT_BATCH,
    Aggregate,
    Estimate,
    Game,
    ValueFn,
    check_aggregate,
    jackknife_stderr,
    mean_plus_2std,
    open_game,
    require,
    result,
    stderr_of_mean,
    trivial,
)


# ---------------------------------------------------------------------------------------------
# 2-3. Permutation sampling (plain, antithetic, truncated)


@dataclass
class _Draws:
    means: np.ndarray  # [D, n] marginals (mean over samples) per draw
    per_sample: np.ndarray | None  # [D, N, n] when kept (mean+2std aggregation)
    chains: int
    truncated: int


def _prefix_values(game: Game, rank: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Values [C, len(sizes), N] of the prefixes of the given sizes of each chain; chain c's
    prefix of size k holds the units u with rank[c, u] < k."""
    masks = rank[:, None, :] < sizes[None, :, None]
    c, s = masks.shape[:2]
    return game(masks.reshape(-1, game.n)).reshape(c, s, -1)


def _truncation_block(n: int) -> int:
    """Prefix positions evaluated per chain and step in a truncated walk: about a tenth of the
    chain, so at most that many evaluations are wasted past the truncation point."""
    return max(1, -(-(n - 1) // 10))


def _truncate_chains(game: Game, rank: np.ndarray, chain: np.ndarray, tol: float) -> int:
    """Fill chain[:, 1:n] walking empty -> full in blocks, with Ghorbani & Zou truncation: at the
    first prefix whose value (mean over samples) is within tol * |v(full) - v(empty)| of v(full),
    stop; every later prefix (v(full) included) takes that prefix's value, so the remaining units
    get marginal 0. All chains step together, ``_truncation_block`` positions at a time (more
    when few chains remain, to keep calls full). Returns the number of chains truncated."""
    n_chains, n = rank.shape
    target = game.v_full
    threshold = tol * abs(game.v_full - game.v_empty)
    active = np.ones(n_chains, bool)
    pos, truncated = 1, 0
    block = _truncation_block(n)
    while pos < n and active.any():
        idx = np.flatnonzero(active)
        stop = min(n, pos + max(block, game.batch // len(idx)))
        chain[idx, pos:stop] = _prefix_values(game, rank[idx], np.arange(pos, stop))
        close = np.abs(chain[idx, pos:stop].mean(axis=2) - target) <= threshold
        for c, row in zip(idx, close):
            if row.any():
                t = pos + int(row.argmax())
                chain[c, t + 1 :] = chain[c, t]
                active[c] = False
                truncated += 1
        pos = stop
    return truncated


def _walk_chains(game: Game, perms: np.ndarray, tol: float | None) -> tuple[np.ndarray, int]:
    """Marginal contributions along each permutation (walked from empty to full).

    Returns marginals [C, N, n] in unit order (marg[c, :, u] = v(Pre(u) + u) - v(Pre(u)) per
    sample) and the number of truncated chains. Without truncation each chain's marginals sum
    to v(full) - v(empty) exactly (a telescoping sum)."""
    n_chains, n = perms.shape
    rank = np.argsort(perms, axis=1)
    chain = np.empty((n_chains, n + 1, len(game.v_full_ps)))
    chain[:, 0], chain[:, n] = game.v_empty_ps, game.v_full_ps
    truncated = 0
    if tol is None:
        chain[:, 1:n] = _prefix_values(game, rank, np.arange(1, n))
    else:
        truncated = _truncate_chains(game, rank, chain, tol)
    steps = np.diff(chain, axis=1)  # [C, n, N] by position
    by_unit = np.take_along_axis(steps, rank[:, :, None], axis=1)
    return by_unit.transpose(0, 2, 1), truncated


def sample_permutations(
    game: Game,
    rng: np.random.Generator,
    max_draws: int,
    *,
    antithetic: bool,
    tol: float | None,
    keep_per_sample: bool,
) -> _Draws:
    """Draw permutations (or antithetic pairs pi, reversed pi) while the budget allows a whole
    draw at its worst-case cost; one draw = one permutation or one pair (averaged)."""
    n = game.n
    chains_per_draw = 2 if antithetic else 1
    cost = chains_per_draw * (n - 1)
    # rows one round sends per step: whole chains, or one block per chain when truncating
    step_rows = cost if tol is None else chains_per_draw * _truncation_block(n)
    means: list[np.ndarray] = []
    per_sample: list[np.ndarray] = []
    chains = truncated = drawn = 0
    while drawn < max_draws:
        m = min(max_draws - drawn, game.affordable(cost), max(1, game.batch // step_rows))
        if m <= 0:
            break
        perms = rng.permuted(np.tile(np.arange(n), (m, 1)), axis=1)
        if antithetic:
            perms = np.stack([perms, perms[:, ::-1]], axis=1).reshape(2 * m, n)
        marg, t = _walk_chains(game, perms, tol)
        if antithetic:
            marg = 0.5 * (marg[0::2] + marg[1::2])
        means.append(marg.mean(axis=1))
        if keep_per_sample:
            per_sample.append(marg)
        drawn, chains, truncated = drawn + m, chains + len(perms), truncated + t
    return _Draws(
        means=np.concatenate(means) if means else np.zeros((0, n)),
        per_sample=np.concatenate(per_sample) if per_sample else None,
        chains=chains,
        truncated=truncated,
    )


def _summarize(draws: _Draws, aggregate: Aggregate) -> tuple[np.ndarray, np.ndarray]:
    """Values and standard errors from iid draws: mean and its standard error over draws, or
    Ancona's mean + 2 std over samples of the per-sample means, with a jackknife standard error
    over draws."""
    if aggregate == "mean":
        return draws.means.mean(axis=0), stderr_of_mean(draws.means)
    assert draws.per_sample is not None
    values = mean_plus_2std(draws.per_sample.mean(axis=0))
    return values, jackknife_stderr(draws.per_sample, mean_plus_2std)


def estimate_permutation(
    value_fn: ValueFn,
    n: int,
    *,
    budget: int | None = None,
    seed: Any = 0,
    batch: int = DEFAULT_BATCH,
    n_permutations: int | None = None,
    aggregate: Aggregate = "mean",
    cache: bool = True,
) -> Estimate:
    """Permutation sampling (Castro et al. 2009), as used by Ancona et al. 2020.

    phi_i = E_pi[v(Pre_pi(i) + i) - v(Pre_pi(i))]: each permutation walks from the empty to the
    full coalition adding one unit at a time; v(empty) and v(full) are evaluated once, so a
    permutation costs n - 1 evaluations. Each permutation's marginals sum exactly to
    v(full) - v(empty) (efficiency per permutation, hence for the average).

    Draws as many permutations as the budget allows (at most ``n_permutations``).
    stderr: standard deviation over permutations of the (sample-mean) marginals / sqrt(P);
    with ``aggregate="mean+2std"`` a jackknife over permutations of that statistic (which
    keeps every permutation's per-sample marginals: P * N * n floats).
    ``info["draws"]`` holds the per-permutation marginals [P, n].
    """
    check_aggregate(aggregate)
    game = open_game(value_fn, n, budget, batch, cache)
    if n <= 1:
        return trivial(game, "permutation")
    require(game, n - 1, "one permutation")
    rng = np.random.default_rng(seed)
    max_draws = n_permutations if n_permutations is not None else np.iinfo(np.int64).max
    draws = sample_permutations(
        game, rng, max_draws, antithetic=False, tol=None, keep_per_sample=aggregate != "mean"
    )
    values, stderr = _summarize(draws, aggregate)
    return result(
        game, values, stderr, "permutation",
        samples=np.full(n, len(draws.means)),
        info={"aggregate": aggregate, "permutations": len(draws.means), "draws": draws.means},
    )  # fmt: skip


def estimate_antithetic(
    value_fn: ValueFn,
    n: int,
    *,
    budget: int | None = None,
    seed: Any = 0,
    batch: int = DEFAULT_BATCH,
    n_pairs: int | None = None,
    tol: float | None = None,
    aggregate: Aggregate = "mean",
    cache: bool = True,
) -> Estimate:
    """Antithetic permutation sampling: permutations in pairs (pi, reversed pi), optionally
    truncated (Ghorbani & Zou's TMC).

    A unit late in pi is early in reversed pi, so the pair's two marginals of a unit are
    typically negatively correlated and their average has lower variance than two independent
    permutations; for games with at most pairwise interactions one pair is exact (each partner
    of a unit comes once before and once after it). Without truncation each pair is efficient:
    marginals sum exactly to v(full) - v(empty). Costs 2 (n - 1) evaluations per pair.

    Truncation (``tol`` not None), direction: both chains of a pair walk empty -> full and are
    compared with v(full), which is known before the walk (cached). The first prefix whose
    value is within tol * |v(full) - v(empty)| of v(full) ends the walk and the units not yet
    added get marginal 0. The direction has to match the target: checking against v(full)
    while walking from full would stop at once. We keep Ghorbani & Zou's direction because in
    saturating games (a network that already works with most of its units) the tail marginals
    are the small ones. The cost: efficiency then holds only up to tol * |v(full) - v(empty)|
    per chain and the estimate is biased toward 0 for units that matter only in nearly-full
    coalitions (the regime that matters for light pruning); the reversed chain limits the
    damage, since a unit truncated in one chain of the pair sits early in the other. Use
    ``tol=None`` (default) for an unbiased estimate. Truncation is checked on the mean over
    samples; evaluated prefixes past the truncation point (inside one block) are discarded,
    so for given permutations the result does not depend on ``batch`` (up to float rounding).

    stderr: standard deviation over pairs of the pair-averaged marginals / sqrt(pairs)
    (jackknife over pairs for ``mean+2std``).
    """
    check_aggregate(aggregate)
    if tol is not None and tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    game = open_game(value_fn, n, budget, batch, cache)
    if n <= 1:
        return trivial(game, "antithetic")
    require(game, 2 * (n - 1), "one antithetic pair")
    rng = np.random.default_rng(seed)
    max_draws = n_pairs if n_pairs is not None else np.iinfo(np.int64).max
    draws = sample_permutations(
        game, rng, max_draws, antithetic=True, tol=tol, keep_per_sample=aggregate != "mean"
    )
    values, stderr = _summarize(draws, aggregate)
    return result(
        game, values, stderr, "antithetic",
        samples=np.full(n, len(draws.means)),
        info={"aggregate": aggregate, "pairs": len(draws.means), "draws": draws.means,
              "tol": tol, "chains": draws.chains, "truncated_chains": draws.truncated},
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 3b. Antithetic permutations drawn independently per calibration sample


def supports_per_sample(value_fn: ValueFn) -> bool:
    """Whether ``value_fn`` accepts per-sample coalitions [K, N, n] (see the module doc)."""
    return bool(getattr(value_fn, "per_sample_masks", False))


def _per_sample_prefixes(game: Game, rank: np.ndarray) -> np.ndarray:
    """Values [C, n-1, N] of the prefixes of sizes 1..n-1 of per-sample orders ``rank``
    [C, N, n] (sample s of chain c keeps the units u with rank[c, s, u] < size). Rows are built
    ``batch`` at a time (a row is N x n bools), counted and budgeted as rows; no cache, since a
    row of N independent coalitions practically never repeats."""
    c, n_samples, n = rank.shape
    total = c * (n - 1)
    if game.evaluations + total > game.budget:
        raise RuntimeError(
            f"estimator tried {game.evaluations + total} evaluations, budget {game.budget}"
        )
    game.requested += total
    out = np.empty((total, n_samples))
    for lo in range(0, total, game.batch):
        idx = np.arange(lo, min(total, lo + game.batch))
        masks = rank[idx // (n - 1)] < (idx % (n - 1) + 1)[:, None, None]
        rows = np.asarray(game.value_fn(masks), dtype=np.float64)
        if rows.shape != (len(idx), n_samples):
            raise ValueError(
                f"value function returned shape {rows.shape} for per-sample coalitions "
                f"{masks.shape}; expected [K, N]"
            )
        if not np.all(np.isfinite(rows)):
            raise ValueError("value function returned non-finite values")
        game.evaluations += len(idx)
        out[idx] = rows
    return out.reshape(c, n - 1, n_samples)


def _per_sample_pairs(game: Game, rng: np.random.Generator, m: int) -> np.ndarray:
    """m antithetic pairs with an independent order per sample: pair-averaged per-sample
    marginals [m, N, n]. Sample s of chain c walks its own order; each (chain, sample) marginal
    sequence telescopes to v_s(full) - v_s(empty)."""
    n, n_samples = game.n, len(game.v_full_ps)
    perms = rng.permuted(np.tile(np.arange(n), (m * n_samples, 1)), axis=1)
    perms = perms.reshape(m, 1, n_samples, n)
    rank = np.argsort(np.concatenate([perms, perms[..., ::-1]], axis=1), axis=-1)  # [m, 2, N, n]
    rank = rank.reshape(2 * m, n_samples, n)
    chain = np.empty((2 * m, n + 1, n_samples))
    chain[:, 0], chain[:, n] = game.v_empty_ps, game.v_full_ps
    chain[:, 1:n] = _per_sample_prefixes(game, rank)
    steps = np.diff(chain, axis=1).transpose(0, 2, 1)  # [2m, N, n] by position
    by_unit = np.take_along_axis(steps, rank, axis=2)
    return 0.5 * (by_unit[0::2] + by_unit[1::2])


def estimate_persample(
    value_fn: ValueFn,
    n: int,
    *,
    budget: int | None = None,
    seed: Any = 0,
    batch: int = DEFAULT_BATCH,
    n_pairs: int | None = None,
    cache: bool = False,
) -> Estimate:
    """Antithetic permutation sampling with an independent permutation pair per calibration
    sample (needs per-sample coalitions, see the module doc).

    The Shapley value of the mean game is the mean over samples of the per-sample Shapley values
    (linearity), so sample s may use its own random orders. With one order shared by all samples
    (``antithetic``) the permutation noise is common to the N samples and averaging over them
    removes none of it; with independent orders the N per-sample errors average out. Same cost per
    pair, 2 (n - 1) rows of N samples; on the zoo's groups the variance per evaluation is 10-40x
    lower than ``antithetic`` (bench/estimators.py). Each draw (pair) stays efficient: every
    sample's marginals telescope, so the draw sums exactly to v(full) - v(empty); null units get
    exactly 0.

    stderr: draws are independent over pairs and samples, so
        Var(value_i) = sum_s Var_s(pair marginal of i) / (P N^2),
    with each sample's variance estimated over its P pairs (pooled over N samples, hence far
    steadier than an sd over P draws). ``info["draws"]`` holds the per-pair means over samples.
    ``cache`` is accepted for a uniform signature and ignored: rows of N independent coalitions
    practically never repeat.
    """
    if n >= 2 and not supports_per_sample(value_fn):
        raise ValueError("the persample estimator needs a value function with per_sample_masks")
    game = open_game(value_fn, n, budget, batch, cache=False)
    if n <= 1:
        return trivial(game, "persample")
    require(game, 2 * (n - 1), "one antithetic pair")
    rng = np.random.default_rng(seed)
    max_pairs = n_pairs if n_pairs is not None else np.iinfo(np.int64).max
    cost = 2 * (n - 1)
    draws: list[np.ndarray] = []
    drawn = 0
    while drawn < max_pairs:
        m = min(max_pairs - drawn, game.affordable(cost), max(1, game.batch // cost))
        if m <= 0:
            break
        draws.append(_per_sample_pairs(game, rng, m))
        drawn += m
    per_sample = np.concatenate(draws)  # [P, N, n]
    pairs, n_samples = per_sample.shape[:2]
    values = per_sample.mean(axis=(0, 1))
    if pairs >= 2:
        var = per_sample.var(axis=0, ddof=1).sum(axis=0) / (pairs * n_samples**2)
        stderr = np.sqrt(var)
    else:
        stderr = np.full(n, np.inf)
    return result(
        game, values, stderr, "persample",
        samples=np.full(n, pairs * n_samples),
        info={"pairs": pairs, "draws": per_sample.mean(axis=1)},
    )  # fmt: skip
