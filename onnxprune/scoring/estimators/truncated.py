"""Truncated per-sample removal chains: the game pruning visits, from the full group part of
the way to the cut (``DEPTH_MARGIN``).

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
on any sample. ``info["wrong_side"]``: the expected number of units on the wrong side of
the group's cut (``cut``: the units expected to go; default the depth), from the stderrs
(normal approximation, as ``cutaware``).

Early stop (``stop_share``, default ``STOP_SHARE`` = 0.05)
---------------------------------------------------------
The planned chains are drawn at once (the same orders as one batch) and run in rounds of a
``STOP_ROUNDS``-th of them, or of one chain at a time where that would be over ``STOP_ROWS``
rows (long chains: a 1,536-unit FFN group's are 113 rows); after each round but the last the
group stops once its expected wrong-side count is below ``stop_share`` x n (at least one round;
a unit with fewer than 2 marginals counts 0.5). The planned count stays the upper bound, so a
group that stops only finishes sooner. ``info``: ``chains`` run, ``chains_planned``,
``stopped`` ("confident" or "planned"). Measured (docs/benchmarks.md, "Stopping per chain at
5%"): the expectation matches the disagreement with a 16x longer run on MiniLM's last FFN
group, whose chains now stop after 2 (0.952 agreement; 8 at HEAD's 3% in quarters); on the
study models 0-16% fewer evaluations than at 3%, agreement unchanged within seed noise.

Long chains (a chain over ``STOP_ROWS`` rows; MiniLM's FFN groups: 113)
--------------------------------------------------------------------------
There a chain is costly and spreads its marginals over every unit, while after a couple of
chains only the units near the cut are in doubt. A long group runs ``LONG_CHAINS`` chains
(checked after each), then, while not yet clear, star rows (as in Refinement below) in rounds
of a ``STOP_ROUNDS``-th of a chain's rows, shared among the units in proportion to their
wrong-side probability (a unit with under 2 marginals: 0.5, so it is contested, not a reason
to refuse), until the expected wrong-side count is below ``REFINE_SHARE`` (tighter than
``STOP_SHARE``: the expectation was 1.1-1.2x under the measured disagreement on MiniLM's last
FFN group, up to 1.4x on the first, against a noisier reference) x n or the planned chains'
rows are spent. ``info["star_rows"]``: the rows so spent. Measured (docs/benchmarks.md,
"Star rounds on MiniLM's long chains"): one 27-row round takes the last FFN group from 0.946
to 0.964 agreement with a 128-chain reference (a third chain, 113 rows: 0.960), the first
from 0.939 to 0.955 (main's third chain: 0.947). Short-chain groups are unchanged (every study
model: its largest group has 96 units, a chain at most 24 rows).

Refinement (``refine`` > 0, off by default)
-------------------------------------------
The chains spread their marginals over every unit; only units near the cut need precision.
With ``refine`` = f, a share 1 - f of the planned chains runs first, and the remaining rows
go in rounds to units in proportion to their wrong-side probability, through stars: one base
row per sample (a step t in 1..d, t - 1 units removed uniformly) and ``STAR_ARMS``
rows each removing one named unit from it. A unit already removed in the base is skipped
(the step is drawn so that, given it is not, t is uniform in 1..d) and the base is then
uniform among the coalitions a chain visits before removing it, so each star marginal has
exactly a chain marginal's distribution (no reweighting) and the two pool. It stops early once the expected wrong-side count is below
``STOP_WRONG`` x n. Measured (docs/benchmarks.md, "Agreement at the cut"): equal agreement
with a long run, within seed noise, at 2-14% fewer evaluations; not the default.
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
# is removed early in some sample's order). Shallower ranks better with plain removal under
# the global allocation, which cuts groups unevenly (36% of the groups past the expected cut,
# half of them under half of it): 0.25 against 1.0, mean test accuracy over the study's five
# models and 3 seeds 0.934 / 0.654 against 0.839 / 0.651 at params budgets 0.3 / 0.5, refit
# 0.983 / 0.980 against 0.981 / 0.978; 0.5 in between (0.893 / 0.663); scoring each group at
# its own allocated cut ranked worse (bench/depth.py). A deeper game (1.5) ranked worse still
# (docs/benchmarks.md, Budget allocation)
DEPTH_MARGIN = 0.25
# refinement (``refine`` > 0): the planned rows left after the first pass go, in this many
# rounds, to units whose keep/remove decision at the cut is uncertain, until the expected
# number of units on the wrong side is below STOP_WRONG x the group
REFINE_ROUNDS = 4
STAR_ARMS = 8  # units measured per sample on one base coalition (refinement)
STOP_WRONG = 0.05
# early stop (plain chains): the planned chains run in STOP_ROUNDS rounds, and after each the
# group stops once its expected number of units on the wrong side of its cut is below
# STOP_SHARE x its units (0: run them all). Measured in docs/benchmarks.md (Early stopping)
STOP_ROUNDS = 4
# ... but a round holds at most STOP_ROWS rows (at least one chain): long chains are checked
# after each. MiniLM's last FFN group (1,536 units, 113-row chains, 15 planned) at 3% stopped
# after 5.7 chains instead of 8, agreement with a 128-chain reference 0.974 against 0.977; no
# change on the study models, whose chains are 1-12 rows (docs/benchmarks.md, s7-stop)
STOP_ROWS = 64
# 5%: the 95% aim itself. The expectation is calibrated where it matters (MiniLM's last FFN
# group: 74.7 expected against 73.3 measured disagreements with a 128-chain reference after 2
# chains, 26.1 against 28.7 after 15); on the study models 0.05 against 0.03 cost 0-16% fewer
# evaluations at the same agreement (docs/benchmarks.md, s7-stop). 0.03 allowed for a noisy
# reference, which a long run of a 1,536-unit group is not (its halves agree on 0.988)
STOP_SHARE = 0.05
# long chains (a chain over STOP_ROWS rows): after LONG_CHAINS chains a group that has not
# stopped gets star rows on its contested units instead of more chains, until the expected
# wrong-side count is below REFINE_SHARE x its units (module doc, Long chains). 4%, not 5%:
# on MiniLM's last FFN group the expectation was 1.1-1.2x under the measured disagreement
# with a 128-chain reference (5% stopped it after 2 chains at 0.946; docs/benchmarks.md)
LONG_CHAINS = 2
REFINE_SHARE = 0.04


def truncation_depth(n: int, removed_share: float | None, margin: float | None = None) -> int:
    """Removal steps per chain for a group of n units of which ``removed_share`` are expected
    to go (None: not known, half the group): ceil(margin x share x n), in [1, n - 1]
    (margin: ``DEPTH_MARGIN`` when None; 1.0 gives the expected cut itself)."""
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


def _wrong_probs(units: np.ndarray, marg: np.ndarray, n: int, k: int) -> np.ndarray:
    """Per unit, the probability that it is on the wrong side of a cut of k units, from the
    marginals so far (a unit with fewer than 2 has p = 0.5: its side is a coin flip)."""
    mean, se, count = _summarize(units, marg, n)
    seen = count > 0
    values = np.where(seen, mean, mean[seen].max() if seen.any() else 0.0)
    return wrong_side(values, se, k)[0]


def _expected_wrong(units: np.ndarray, marg: np.ndarray, n: int, k: int) -> float:
    """The expected number of units on the wrong side of a cut of k units (``_wrong_probs``)."""
    return float(_wrong_probs(units, marg, n, k).sum())


def _chain_rounds(game: Game, orders: np.ndarray, depth: int, k: int, stop: float
                  ) -> tuple[np.ndarray, np.ndarray, int, str]:
    """(units, marginals) of the chains ``orders`` [C, N, n], run in up to ``STOP_ROUNDS``
    rounds (at least one), stopping once the expected wrong-side count is below ``stop``
    (0: never); also the chains run and why it stopped ("confident" or "planned")."""
    c = len(orders)
    size = stop_round_chains(c, depth) if stop > 0 else c
    units, marg = np.empty(0, np.int64), np.empty(0)
    for lo in range(0, c, size):
        part = orders[lo:lo + size]
        units = np.concatenate([units, part[:, :, :depth].reshape(-1)])
        marg = np.concatenate([marg, _marginals(game, part, depth).reshape(-1)])
        ran = min(c, lo + size)
        if stop > 0 and ran < c and _expected_wrong(units, marg, game.n, k) < stop:
            return units, marg, ran, "confident"
    return units, marg, c, "planned"


def stop_round_chains(chains: int, depth: int) -> int:
    """Chains per stop round: a ``STOP_ROUNDS``-th of the planned chains, fewer where that is
    over ``STOP_ROWS`` rows (at least one chain), so long chains are checked after each."""
    return max(1, min(-(-chains // STOP_ROUNDS), STOP_ROWS // max(1, depth)))


def _summarize(units: np.ndarray, marg: np.ndarray, n: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean [n], stderr [n], count [n]) of each unit's marginals: the stderr is their sd /
    sqrt(count) (a unit's marginals come from independent orders), inf below 2."""
    count = np.bincount(units, minlength=n)
    total = np.bincount(units, marg, minlength=n)
    mean = np.divide(total, count, out=np.zeros(n), where=count > 0)
    sq = np.bincount(units, (marg - mean[units]) ** 2, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.where(count >= 2, np.sqrt(sq / np.maximum(count - 1, 1) / count), np.inf)
    return mean, se, count


def _star_marginals(game: Game, rng: np.random.Generator, slots: np.ndarray, depth: int
                    ) -> np.ndarray:
    """Marginals [P, K, N] of the units slots [P, K, N] names (star p, arm k, sample s), nan
    where not measured. Star p draws for each sample a step t in 1..depth and a set R
    of t-1 removed units uniform among all units: the base S = all but R (one row); arm k
    removes its unit from S (one row), giving v_s(S) - v_s(S - u) where u is not in R. Given
    t and u not in R, R is uniform among the (t-1)-subsets of the other units: the marginal is
    distributed exactly as a chain's marginal of u, and K + 1 rows give up to K N of them,
    all for the units named (an arm whose unit is in R is not measured). The step is drawn
    with probability proportional to 1 / (n - t + 1), since an arm is measured with
    probability (n - t + 1) / n: given that it is, t is uniform, as in a chain."""
    stars, arms, n_samples = slots.shape
    n = game.n
    rank = np.argsort(np.argsort(rng.random((stars, n_samples, n)), axis=2), axis=2)
    steps = np.arange(1, depth + 1)
    weight = 1.0 / (n - steps + 1)  # P(u not in R | t) = (n - t + 1) / n cancels it
    t = rng.choice(steps, size=(stars, n_samples), p=weight / weight.sum())
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


def _contested_slots(rng: np.random.Generator, p: np.ndarray, shape: tuple[int, ...]
                     ) -> np.ndarray:
    """Slots of ``shape`` shared among units in proportion to their wrong-side probability p,
    in random places (each unit spread over samples and stars)."""
    total = int(np.prod(shape))
    want = p / p.sum() * total
    alloc = np.floor(want).astype(np.int64)
    alloc[np.argsort(alloc - want)[: total - alloc.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(len(p)), alloc)).reshape(shape)


def _refine(game: Game, rng: np.random.Generator, units: np.ndarray, marg: np.ndarray,
            depth: int, cut: int, rows: int, stop: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Spend up to ``rows`` more rows, in ``REFINE_ROUNDS`` rounds of stars, on the units whose
    side of the cut is uncertain (in proportion to their wrong-side probability), until the
    expected number of units on the wrong side is below ``stop``. Returns all (units, marginals)
    and the rounds run."""
    n, n_samples, arms = game.n, len(game.v_full_ps), STAR_ARMS
    per_round = max(arms + 1, -(-rows // REFINE_ROUNDS))
    rounds = 0
    while rows >= arms + 1:
        mean, se, _ = _summarize(units, marg, n)
        p, _ = wrong_side(mean, se, cut)
        if not np.isfinite(se).all() or p.sum() <= 0 or p.sum() < stop:
            break
        stars = min(per_round, rows) // (arms + 1)
        slots = _contested_slots(rng, p, (stars, arms, n_samples))
        extra = _star_marginals(game, rng, slots, depth)
        ok = ~np.isnan(extra)
        units, marg = np.concatenate([units, slots[ok]]), np.concatenate([marg, extra[ok]])
        rows -= stars * (arms + 1)
        rounds += 1
    return units, marg, rounds


def _contest_rounds(game: Game, rng: np.random.Generator, units: np.ndarray, marg: np.ndarray,
                    depth: int, k: int, rows: int, stop: float
                    ) -> tuple[np.ndarray, np.ndarray, int, str]:
    """Star rows on the contested units of a long-chain group: rounds of a ``STOP_ROUNDS``-th
    of a chain's rows, shared among the units in proportion to their wrong-side probability (a
    unit with under 2 marginals: 0.5, so none blocks a round, unlike ``_refine``), until the
    expected wrong-side count is below ``stop`` or ``rows`` are spent. Returns all (units,
    marginals), the rows spent and why it ended ("confident" or "planned")."""
    arms, n_samples = STAR_ARMS, len(game.v_full_ps)
    per_round = max(1, depth // STOP_ROUNDS // (arms + 1))  # stars
    spent = 0
    while True:
        p = _wrong_probs(units, marg, game.n, k)
        if p.sum() < stop:
            return units, marg, spent, "confident"
        stars = min(per_round, (rows - spent) // (arms + 1))
        if stars < 1:
            return units, marg, spent, "planned"
        slots = _contested_slots(rng, p, (stars, arms, n_samples))
        extra = _star_marginals(game, rng, slots, depth)
        ok = ~np.isnan(extra)
        units, marg = np.concatenate([units, slots[ok]]), np.concatenate([marg, extra[ok]])
        spent += stars * (arms + 1)


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
    refine: float = 0.0,
    cut: int | None = None,
    stop_wrong: float | None = None,
    stop_share: float | None = None,
) -> Estimate:
    """Truncated per-sample removal chains (module doc): each sample walks its own random
    removal order from the full group ``depth`` steps down (None: half the group; capped at
    n - 1); a unit's value is the mean of its marginals. Chains: enough for ``marginals``
    per-sample marginals per unit on average (None: ``DEFAULT_MARGINALS``), within ``budget``.
    ``refine`` (0 to 1): that share of the planned rows goes to contested units instead
    (module doc, Refinement), stopping once the expected number of units on the wrong side of
    the cut (``cut`` units go; None: ``depth``) is below ``stop_wrong`` (None: ``STOP_WRONG``)
    x n. Without refinement the chains run in rounds and stop once that expectation is below
    ``stop_share`` (None: ``STOP_SHARE``; 0: never) x n (module doc, Early stop). Not Shapley
    values of the full game. ``cache``: ignored (a uniform signature)."""
    if n >= 2 and not supports_per_sample(value_fn):
        raise ValueError("the truncated estimator needs a value function with per_sample_masks")
    marginals = DEFAULT_MARGINALS if marginals is None else marginals
    stop_share = STOP_SHARE if stop_share is None else stop_share
    if marginals < 1 or not 0 <= refine < 1 or not 0 <= stop_share < 1:
        raise ValueError(f"need marginals >= 1, 0 <= refine < 1 and 0 <= stop_share < 1, got "
                         f"{marginals}, {refine}, {stop_share}")
    game = open_game(value_fn, n, budget, batch, cache=False)
    if n <= 1:
        return trivial(game, "truncated")
    d = truncation_depth(n, None) if depth is None else int(min(max(depth, 1), n - 1))
    require(game, d, "one removal chain")
    n_samples = len(game.v_full_ps)
    planned = min(planned_chains(n, n_samples, d, marginals), game.remaining // d)
    chains = max(1, math.ceil(planned * (1 - refine)))
    rng = np.random.default_rng(seed)
    orders = rng.permuted(np.tile(np.arange(n), (chains * n_samples, 1)), axis=1)
    orders = orders.reshape(chains, n_samples, n)
    k = min(max(1, d if cut is None else cut), n - 1)
    early = stop_share * n if refine == 0 else 0.0
    long = early > 0 and d > STOP_ROWS and chains > LONG_CHAINS  # module doc, Long chains
    if long:
        early = min(early, REFINE_SHARE * n)
    units, marg, ran, why = _chain_rounds(game, orders[:LONG_CHAINS] if long else orders, d, k,
                                          early)
    star_rows = 0
    if long and why == "planned":  # not clear after LONG_CHAINS chains: stars, not chains
        units, marg, star_rows, why = _contest_rounds(game, rng, units, marg, d, k,
                                                      (chains - ran) * d, early)
    stop = (STOP_WRONG if stop_wrong is None else stop_wrong) * n
    units, marg, rounds = _refine(game, rng, units, marg, d, k, (planned - chains) * d, stop)
    mean, se, count = _summarize(units, marg, n)
    unseen = count == 0
    values = np.where(unseen, mean[~unseen].max() if (~unseen).any() else 0.0, mean)
    return result(
        game, values, se, "truncated", samples=count,
        info={"depth": d, "chains": ran, "chains_planned": chains, "stopped": why,
              "star_rows": star_rows,
              "marginals_per_unit": float(count.mean()),
              "unseen": int(unseen.sum()), "truncated_game": True, "refine_rounds": rounds,
              "wrong_side": float(wrong_side(values, se, k)[0].sum())},
    )  # fmt: skip
