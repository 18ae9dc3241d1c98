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
from .permutation import supports_per_sample

# per-sample marginals per unit (mean over units) the chains aim at: about 128 n / N rows.
# 512 ranked no better with plain removal on the study models (bench/budget.py, seed 0)
DEFAULT_MARGINALS = 128
# depth = margin x the units expected to go. Units past the cut are ranked anyway (every unit
# is removed early in some sample's order); a deeper game (1.5) ranked worse with plain
# removal at 128 marginals (mean test accuracy 0.83 / 0.56 against 0.90 / 0.75 at params
# budgets 0.3 / 0.5) and no better at 512 (docs/benchmarks.md, Budget allocation)
DEPTH_MARGIN = 1.0


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


def _marginals(game: Game, orders: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(units [M], marginals [M]) of the chains: v_s(S_{t-1}) - v_s(S_t) for the unit removed."""
    c, n_samples, _ = orders.shape
    values = np.empty((c, depth + 1, n_samples))
    values[:, 0] = game.v_full_ps
    values[:, 1:] = _chain_values(game, orders, depth)
    marg = (values[:, :-1] - values[:, 1:]).transpose(0, 2, 1)  # [C, N, depth]
    return orders[:, :, :depth].reshape(-1), marg.reshape(-1)


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
) -> Estimate:
    """Truncated per-sample removal chains (module doc): each sample walks its own random
    removal order from the full group ``depth`` steps down (None: half the group; capped at
    n - 1); a unit's value is the mean of its marginals. Chains: enough for ``marginals``
    per-sample marginals per unit on average (None: ``DEFAULT_MARGINALS``), within ``budget``. Not Shapley values of the
    full game. ``cache`` is accepted for a uniform signature and ignored."""
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
    chains = min(planned_chains(n, n_samples, d, marginals), game.remaining // d)
    rng = np.random.default_rng(seed)
    orders = rng.permuted(np.tile(np.arange(n), (chains * n_samples, 1)), axis=1)
    units, marg = _marginals(game, orders.reshape(chains, n_samples, n), d)
    count = np.bincount(units, minlength=n)
    total = np.bincount(units, marg, minlength=n)
    mean = np.divide(total, count, out=np.zeros(n), where=count > 0)
    sq = np.bincount(units, (marg - mean[units]) ** 2, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.where(count >= 2, np.sqrt(sq / np.maximum(count - 1, 1) / count), np.inf)
    unseen = count == 0
    values = np.where(unseen, mean[~unseen].max() if (~unseen).any() else 0.0, mean)
    return result(
        game, values, se, "truncated", samples=count,
        info={"depth": d, "chains": chains, "marginals_per_unit": float(count.mean()),
              "unseen": int(unseen.sum()), "truncated_game": True},
    )  # fmt: skip
