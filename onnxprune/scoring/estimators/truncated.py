"""Truncated per-sample removal chains: the game pruning visits, from the full group down to
a little past the cut.

The truncated game
------------------
Pruning never ships a small coalition, yet the full Shapley value weighs coalitions of every
size alike, and far from the full group the value function is dominated by broken networks.
The truncated value of unit i at depth d averages i's marginal contribution v(S) - v(S - i)
over the coalitions S a random removal order visits in its first d steps (sizes n .. n-d+1,
uniform over the steps, uniform over the samples):

    phi_i^d = mean_s  E_{pi, t uniform in 1..d} [ v_s(S_{t-1}) - v_s(S_t) | pi_t = i ]

with S_t = all units minus the first t of pi. It is *not* the Shapley value of the full game
(d = n - 1 gives a one-directional permutation estimate of it); it is a ranking for removal.

Sampling
--------
Each calibration sample s follows its own random removal order (the ``persample`` trick: the
value function takes bool [K, N, n]), so one step of a chain, a single [N, n] row, yields N
marginals, each for the unit that sample removed at that step. A chain costs d rows and gives
N d marginals, d/n of them per unit on average; chains are drawn until every unit has, on
average, ``marginals`` of them (``C = ceil(marginals n / (N d))`` chains, ``C d`` rows, about
``marginals n / N`` evaluations), never above the budget (an upper bound).

A unit's value is the mean of its marginals; its stderr the sd of those marginals / sqrt(count)
(the marginals of one unit come from independent (chain, sample) orders). A unit that no chain
removed within d steps has no marginal: it ranks as the most important unit of the group
(value = the group's highest estimate, stderr inf), since pruning at the cut did not reach it
on any sample.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .game import DEFAULT_BATCH, Estimate, Game, ValueFn, open_game, require, result, trivial
from .cutaware import wrong_side
from .permutation import supports_per_sample

# per-sample marginals per unit (mean over units) the chains aim at: about 128 n / N rows.
# 512 ranked no better with plain removal on the study models (bench/budget.py, seed 0)
DEFAULT_MARGINALS = 128
# depth = margin x the units expected to go. Units past the cut are ranked anyway (every unit
# is removed early in some sample's order); a deeper game (1.5) ranked worse with plain
# removal at 128 marginals (mean test accuracy 0.83 / 0.56 against 0.90 / 0.75 at params
# budgets 0.3 / 0.5) and no better at 512 (docs/benchmarks.md, Budget allocation)
DEPTH_MARGIN = 1.0
# refinement (``refine`` > 0): the planned rows left after the first pass go, in this many
# rounds, to units whose keep/remove decision at the cut is uncertain, until the expected
# number of units on the wrong side is below STOP_WRONG x the group
REFINE_ROUNDS = 4
REFINE_ALLOC = "gain"  # or "p" (bench/agreement.py compares them)
STAR_ARMS = 8  # units measured per sample on one base coalition (refinement)
STOP_WRONG = 0.05


def truncation_depth(n: int, removed_share: float | None, margin: float | None = None) -> int:
    """Removal steps per chain for a group of n units of which ``removed_share`` are expected
    to go (None: not known, half the group): ceil(margin x share x n), in [1, n - 1]
    (margin: ``DEPTH_MARGIN`` when None)."""
    share = 0.5 if removed_share is None else removed_share
    margin = DEPTH_MARGIN if margin is None else margin
    return int(min(max(n - 1, 1), max(1, math.ceil(margin * share * n))))


def planned_chains(n: int, n_samples: int, depth: int, marginals: int | None = None) -> int:
    """Chains for ``marginals`` (None: ``DEFAULT_MARGINALS``) per-sample marginals per unit on
    average (at least 2)."""
    marginals = DEFAULT_MARGINALS if marginals is None else marginals
    return max(2, -(-marginals * n // max(1, n_samples * depth)))


def _chain_values(game: Game, orders: np.ndarray, depth: int) -> np.ndarray:
    """Values [C, depth, N] of steps 1..depth of per-sample removal orders [C, N, n]: at step t
    sample s keeps every unit but orders[c, s, :t]. Rows are sent ``batch`` at a time."""
    c, n_samples, n = orders.shape
    total = c * depth
    if game.evaluations + total > game.budget:  # an estimator bug, never the user's
        raise RuntimeError(f"estimator tried {game.evaluations + total} evaluations, budget {game.budget}")
    rank = np.argsort(orders, axis=2)  # rank[c, s, u]: the step (0-based) that removes u
    game.requested += total
    out = np.empty((total, n_samples))
    for lo in range(0, total, game.batch):
        idx = np.arange(lo, min(total, lo + game.batch))
        masks = rank[idx // depth] > (idx % depth)[:, None, None]  # removed in steps 0..t-1
        rows = np.asarray(game.value_fn(masks), dtype=np.float64)
        if rows.shape != (len(idx), n_samples):
            raise ValueError(f"value function returned shape {rows.shape} for per-sample "
                             f"coalitions {masks.shape}; expected [K, N]")
        if not np.all(np.isfinite(rows)):
            raise ValueError("value function returned non-finite values")
        game.evaluations += len(idx)
        out[idx] = rows
    return out.reshape(c, depth, n_samples)


def _marginals(game: Game, orders: np.ndarray, depth: int) -> np.ndarray:
    """Marginals [C, N, depth]: v_s(S_{t-1}) - v_s(S_t) for the unit orders[c, s, t-1]."""
    c, n_samples, _ = orders.shape
    values = np.empty((c, depth + 1, n_samples))
    values[:, 0] = game.v_full_ps
    values[:, 1:] = _chain_values(game, orders, depth)
    return (values[:, :-1] - values[:, 1:]).transpose(0, 2, 1)


def _position_adjusted(marg: np.ndarray) -> np.ndarray:
    """Marginals minus the step's excess over the mean, h(t) = mean_{c,s} marg[c, s, t] -
    mean(marg): a control variate with mean 0 over the steps. Every unit is removed at every
    step with the same probability, so a unit's expected adjusted mean is unchanged; what
    goes is the noise of which steps its marginals happened to come from (the early steps of
    a chain, on a near-full network, differ from the late ones)."""
    h = marg.mean(axis=(0, 1))
    return marg - (h - h.mean())[None, None, :]


def _balanced_segments(rng: np.random.Generator, n: int, d: int, count: int) -> np.ndarray:
    """``count`` removal sets [count, d] for one sample, each a uniformly random d-subset in
    random order, cut from a stream of random permutations of the n units so that every unit
    appears almost equally often (once per permutation; a permutation's short last segment is
    filled up with random other units)."""
    per_perm = -(-n // d)
    out = np.empty((per_perm * -(-count // per_perm), d), np.int64)
    units = np.arange(n)
    for p in range(len(out) // per_perm):
        perm = rng.permutation(n)
        for j in range(per_perm):
            seg = perm[j * d:(j + 1) * d]
            if len(seg) < d:  # fill with units outside it: still a uniform d-subset
                rest = np.setdiff1d(units, seg, assume_unique=True)
                seg = rng.permutation(np.concatenate([seg, rng.choice(rest, d - len(seg), replace=False)]))
            out[p * per_perm + j] = seg
    return out[rng.permutation(len(out))[:count]]


def _orders(rng: np.random.Generator, chains: int, n_samples: int, n: int, d: int,
            stratified: bool) -> np.ndarray:
    """Per-sample removal orders [chains, N, n]. Stratified: each sample's first-d sets across
    chains come from ``_balanced_segments``, so every unit is removed about equally often on
    every sample (the between-sample spread leaves a unit's estimate); each (chain, sample)
    order is still uniformly random within its first d steps, which is all the game reads."""
    if not stratified:
        return rng.permuted(np.tile(np.arange(n), (chains * n_samples, 1)), axis=1).reshape(
            chains, n_samples, n)
    keys = 1.0 + rng.random((chains, n_samples, n))  # the units past d: any order
    pos = np.broadcast_to(np.arange(d) / d, (chains, d))
    for s in range(n_samples):
        seg = _balanced_segments(rng, n, d, chains)  # [chains, d]
        keys[np.arange(chains)[:, None], s, seg] = pos
    return np.argsort(keys, axis=2)


def _summarize(units: np.ndarray, samples: np.ndarray, marg: np.ndarray, n: int,
               n_samples: int, stratified: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean [n], stderr [n], count [n]) of each unit's marginals. Stratified design: a unit's
    count on each sample is fixed by the design (within one), so the between-sample spread is
    not estimation noise: the stderr uses the spread within (unit, sample) cells where the
    unit has more marginals than cells; otherwise the plain sd / sqrt(count)."""
    count = np.bincount(units, minlength=n)
    total = np.bincount(units, marg, minlength=n)
    mean = np.divide(total, count, out=np.zeros(n), where=count > 0)
    dev, dof = marg - mean[units], count - 1
    if stratified:
        cell = units * n_samples + samples
        c_n = np.bincount(cell, minlength=n * n_samples)
        c_mean = np.bincount(cell, marg, minlength=n * n_samples) / np.maximum(c_n, 1)
        cells = (c_n.reshape(n, n_samples) > 0).sum(1)
        dof = np.where(count > cells, count - cells, dof)
        dev = np.where((count > cells)[units], marg - c_mean[cell], dev)
    sq = np.bincount(units, dev * dev, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.where(count >= 2, np.sqrt(sq / np.maximum(dof, 1) / count), np.inf)
    return mean, se, count


def _star_marginals(game: Game, rng: np.random.Generator, slots: np.ndarray, depth: int
                    ) -> np.ndarray:
    """Marginals [P, K, N] of the units slots [P, K, N] names (star p, arm k, sample s), nan
    where not measured. Star p draws for each sample a step t uniform in 1..depth and a set R
    of t-1 removed units uniform among all units: the base S = all but R (one row); arm k
    removes its unit from S (one row), giving v_s(S) - v_s(S - u) where u is not in R. Given
    u not in R, R is uniform among the (t-1)-subsets of the other units: the marginal is
    distributed exactly as a chain's marginal of u, and K + 1 rows give up to K N of them,
    all for the units named (an arm whose unit is in R is not measured)."""
    stars, arms, n_samples = slots.shape
    n = game.n
    rank = np.argsort(np.argsort(rng.random((stars, n_samples, n)), axis=2), axis=2)
    t = rng.integers(1, depth + 1, size=(stars, n_samples))
    base = rank >= (t - 1)[..., None]  # [P, N, n]
    rows = np.repeat(base[:, None], arms + 1, axis=1)  # [P, K+1, N, n]
    p_i, k_i, s_i = np.indices(slots.shape)
    rows[p_i, k_i + 1, s_i, slots] = False
    measured = base[p_i, s_i, slots]
    flat = rows.reshape(-1, n_samples, n)
    values = np.empty((len(flat), n_samples))
    for lo in range(0, len(flat), game.batch):
        values[lo:lo + game.batch] = _eval_rows(game, flat[lo:lo + game.batch])
    values = values.reshape(stars, arms + 1, n_samples)
    return np.where(measured, values[:, :1] - values[:, 1:], np.nan)


def _eval_rows(game: Game, masks: np.ndarray) -> np.ndarray:
    k = len(masks)
    if game.evaluations + k > game.budget:  # an estimator bug, never the user's
        raise RuntimeError(f"estimator tried {game.evaluations + k} evaluations, budget {game.budget}")
    game.requested += k
    rows = np.asarray(game.value_fn(masks), dtype=np.float64)
    if rows.shape != masks.shape[:2] or not np.all(np.isfinite(rows)):
        raise ValueError(f"value function returned shape {rows.shape} (non-finite or not "
                         f"[K, N]) for per-sample coalitions {masks.shape}")
    game.evaluations += k
    return rows


def _refine_weights(mean: np.ndarray, se: np.ndarray, k: int, p: np.ndarray) -> np.ndarray:
    """Where more marginals lower the expected wrong-side count most: z phi(z), z = the unit's
    distance to the cut in stderrs (a unit on the cut, a tie, gains nothing; one far off is
    settled); ``REFINE_ALLOC == "p"``: the wrong-side probability itself."""
    if REFINE_ALLOC == "p":
        return p
    order = np.argsort(mean, kind="stable")
    cut = 0.5 * (mean[order[k - 1]] + mean[order[k]])
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, np.abs(mean - cut) / se, np.inf)
    w = np.where(np.isfinite(z), z * np.exp(-0.5 * z * z), 0.0)
    return w if w.sum() > 0 else p


def _contested_slots(rng: np.random.Generator, p: np.ndarray, shape: tuple[int, ...]
                     ) -> np.ndarray:
    """Slots of ``shape`` shared among units in proportion to their wrong-side probability p,
    in random places (each unit spread over samples and stars)."""
    total = int(np.prod(shape))
    want = p / p.sum() * total
    alloc = np.floor(want).astype(np.int64)
    alloc[np.argsort(alloc - want)[: total - alloc.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(len(p)), alloc)).reshape(shape)


def estimate_truncated(
    value_fn: ValueFn,
    n: int,
    *,
    depth: int | None = None,
    budget: int | None = None,
    seed: Any = 0,
    batch: int = DEFAULT_BATCH,
    marginals: int | None = None,
    cache: bool = False,
    stratified: bool = True,
    positions: bool = True,
    refine: float = 0.0,
    cut: int | None = None,
    stop_wrong: float | None = None,
) -> Estimate:
    """Truncated per-sample removal chains (module doc): each sample walks its own random
    removal order from the full group ``depth`` steps down (None: half the group; capped at
    n - 1); a unit's value is the mean of its marginals. Chains: enough for ``marginals``
    per-sample marginals per unit on average (None: ``DEFAULT_MARGINALS``), within ``budget``.
    ``stratified``: balanced removal sets per sample; ``positions``: the step control variate
    (module doc, Variance). Not Shapley values of the full game. ``cache`` is accepted for a
    uniform signature and ignored."""
    if n >= 2 and not supports_per_sample(value_fn):
        raise ValueError("the truncated estimator needs a value function with per_sample_masks")
    marginals = DEFAULT_MARGINALS if marginals is None else marginals
    if marginals < 1:
        raise ValueError(f"marginals must be >= 1, got {marginals}")
    game = open_game(value_fn, n, budget, batch, cache=False)
    if n <= 1:
        return trivial(game, "truncated")
    d = truncation_depth(n, None) if depth is None else int(min(max(depth, 1), n - 1))
    require(game, d, "one removal chain")
    n_samples = len(game.v_full_ps)
    planned = min(planned_chains(n, n_samples, d, marginals), game.remaining // d)
    chains = planned if refine <= 0 else max(1, math.ceil(planned * (1 - refine)))
    rng = np.random.default_rng(seed)
    orders = _orders(rng, chains, n_samples, n, d, stratified)
    marg = _marginals(game, orders, d)
    if positions and chains * n_samples >= 2:
        marg = _position_adjusted(marg)
    units = orders[:, :, :d].reshape(-1)
    samples = np.broadcast_to(np.arange(n_samples)[None, :, None], marg.shape).reshape(-1)
    marg = marg.reshape(-1)
    mean, se, count = _summarize(units, samples, marg, n, n_samples, stratified)
    k = min(d, n - 1) if cut is None else cut
    p, _ = wrong_side(mean, se, k)
    rows_left = (planned - chains) * d
    per_round = max(STAR_ARMS + 1, -(-rows_left // REFINE_ROUNDS))
    rounds = 0
    stop = (STOP_WRONG if stop_wrong is None else stop_wrong) * n
    while rows_left >= STAR_ARMS + 1 and p.sum() > 0 and p.sum() >= stop and np.isfinite(se).all():
        stars = min(per_round, rows_left) // (STAR_ARMS + 1)
        slots = _contested_slots(rng, _refine_weights(mean, se, k, p), (stars, STAR_ARMS, n_samples))
        extra = _star_marginals(game, rng, slots, d)
        ok = ~np.isnan(extra)
        units = np.concatenate([units, slots[ok]])
        samples = np.concatenate([samples, np.indices(slots.shape)[2][ok]])
        marg = np.concatenate([marg, extra[ok]])
        mean, se, count = _summarize(units, samples, marg, n, n_samples, False)
        p, _ = wrong_side(mean, se, k)
        rows_left -= stars * (STAR_ARMS + 1)
        rounds += 1
    unseen = count == 0
    values = np.where(unseen, mean[~unseen].max() if (~unseen).any() else 0.0, mean)
    return result(
        game, values, se, "truncated", samples=count,
        info={"depth": d, "chains": chains, "marginals_per_unit": float(count.mean()),
              "unseen": int(unseen.sum()), "truncated_game": True,
              "stratified": stratified, "positions": positions, "refine_rounds": rounds,
              "wrong_side": float(p.sum())},
    )  # fmt: skip
