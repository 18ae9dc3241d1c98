"""Shapley-value estimators for scoring the units of one channel group (pure numpy).

The game
--------
A *value function* ``value_fn(coalitions) -> values`` takes a bool array ``[K, n]`` (row ``k`` is
a coalition S; ``True`` = unit kept) and returns float64 ``[K, N]``: the value of each coalition on
each of the N calibration samples (higher is better). The game value is the mean over samples,
v(S) = mean_s v_s(S). The Shapley value is linear in the game, so the Shapley value of v is the
mean over samples of the per-sample Shapley values; every estimator below averages over samples
first unless ``aggregate="mean+2std"`` (Ancona et al.) asks for the per-sample spread.

    phi_i = sum_{S subset of N minus i}  |S|! (n-|S|-1)! / n!  * (v(S + i) - v(S))
          = E_pi [ v(Pre_pi(i) + i) - v(Pre_pi(i)) ]        (pi a uniform random permutation)

Evaluations and budget
----------------------
One *evaluation* is one coalition row sent to ``value_fn``. Rows are sent in calls of at most
``batch`` rows, and every estimator stops before ``evaluations`` would exceed ``budget``.
Sampling estimators keep a cache of evaluated coalitions (``cache=True``): a coalition drawn
twice (typical for the sizes 1 and n-1 in KernelSHAP) is evaluated once. Cache hits are free, so
with the cache a run may draw up to ``_CACHE_STRETCH`` times ``budget`` rows in total; the cache
stops growing at ``_CACHE_MAX_FLOATS`` stored values.

Per-sample coalitions
---------------------
``persample`` needs a value function that also accepts bool ``[K, N, n]``: row k evaluates sample
s with its own coalition ``masks[k, s]`` (same cost as a ``[K, n]`` row: one pass over the N
samples). It still accepts ``[K, n]`` (every sample with the same coalition). The engine's
masks already have one row per (coalition, sample); a value function says it supports this with
an attribute ``per_sample_masks = True``.

Standard errors
---------------
``Estimate.stderr`` is the Monte Carlo standard error of ``Estimate.values`` over the estimator's
own randomness (permutations / coalitions drawn), for the fixed calibration set. It does *not*
include the sampling error of the calibration set itself. ``inf`` means "not enough draws to
tell" (fewer than two), ``0`` means exact.

Estimators (``ESTIMATORS``; all take ``budget``, ``seed``, ``batch``)
----------
exact        all 2^n coalitions, n <= 16                        stderr 0
permutation  random orders, n - 1 evaluations each              sd over permutations / sqrt(P)
antithetic   pairs (pi, reversed pi), optional truncation       sd over pairs / sqrt(pairs)
persample    antithetic pairs drawn independently per sample     pooled per-sample sd / sqrt(P N^2)
kernelshap   paired kernel samples, constrained least squares   sandwich over pairs
adaptive     antithetic rounds until the bottom-k cut is clear  per-unit sd / sqrt(draws), shrunk
cutaware     per-sample first pass, then draws for contested units  as persample, per-unit counts
truncated    per-sample removal chains, full group down to depth d  sd of a unit's marginals / sqrt(count)
             (a truncated game, not the full game's Shapley value; stops at a marginal count per unit)
joint        ridge over random sub-models of several groups     ridge sandwich (not Shapley)

References
----------
- Castro, Gomez, Tejada (2009): polynomial calculation of the Shapley value by sampling.
- Ancona, Oztireli, Gross (2020): Shapley value as principled metric for structured network
  pruning (arXiv 2006.01795): permutation sampling, mean + 2 std aggregation over samples.
- Ghorbani & Zou (2019): Data Shapley, truncated Monte Carlo (TMC).
- Covert & Lee (2021): Improving KernelSHAP: paired sampling, variance estimates.
- Dery et al. (2024): Everybody Prune Now (Bonsai): regression over random sub-models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .adaptive import estimate_adaptive
from .cutaware import estimate_cutaware, wrong_side
from .exact import estimate_exact
from .game import (
    DEFAULT_BATCH,
    MAX_EXACT_UNITS,
    Aggregate,
    Estimate,
    Game,
    ValueFn,
    default_budget,
)
from .joint import estimate_joint
from .kernelshap import estimate_kernelshap
from .truncated import DEFAULT_MARGINALS, estimate_truncated, truncation_depth
from .permutation import (
    estimate_antithetic,
    estimate_permutation,
    estimate_persample,
    supports_per_sample,
)

__all__ = [
    "Aggregate",
    "CAPABILITIES",
    "Capability",
    "DEFAULT_BATCH",
    "ESTIMATORS",
    "Estimate",
    "Game",
    "MAX_EXACT_UNITS",
    "ValueFn",
    "default_budget",
    "estimate",
    "estimate_adaptive",
    "estimate_antithetic",
    "estimate_cutaware",
    "estimate_exact",
    "estimate_joint",
    "estimate_kernelshap",
    "estimate_permutation",
    "estimate_persample",
    "estimate_truncated",
    "DEFAULT_MARGINALS",
    "truncation_depth",
    "supports_per_sample",
    "wrong_side",
]


# ---------------------------------------------------------------------------------------------
# Registry


def _joint_single(value_fn: ValueFn, n: int, **kw: Any) -> Estimate:
    """``estimate_joint`` on a single group, for the uniform (value_fn, n) signature."""
    return estimate_joint(value_fn, [n], **kw)[0]


ESTIMATORS: dict[str, Callable[..., Estimate]] = {
    "exact": estimate_exact,
    "permutation": estimate_permutation,
    "antithetic": estimate_antithetic,
    "persample": estimate_persample,
    "kernelshap": estimate_kernelshap,
    "adaptive": estimate_adaptive,
    "cutaware": estimate_cutaware,
    "truncated": estimate_truncated,
    "joint": _joint_single,
}


@dataclass(frozen=True)
class Capability:
    """What a caller must know about an estimator before running it (instead of its name)."""

    per_sample: bool = False  # needs a value function with per_sample_masks (n >= 2)
    aggregates: bool = False  # takes aggregate="mean+2std" (keeps per-sample values)
    exhaustive: bool = False  # evaluates all 2^n coalitions: no seed, budget >= 2^n
    needs_k: bool = False  # steered by k, the number of units the run removes
    needs_depth: bool = False  # steered by depth, the removal steps of a truncated game
    shapley: bool = True  # False: another attribution (joint: ridge over sub-models)


CAPABILITIES: dict[str, Capability] = {
    "exact": Capability(aggregates=True, exhaustive=True),
    "permutation": Capability(aggregates=True),
    "antithetic": Capability(aggregates=True),
    "persample": Capability(per_sample=True),
    "kernelshap": Capability(),
    "adaptive": Capability(needs_k=True),
    "cutaware": Capability(per_sample=True, needs_k=True),
    "truncated": Capability(per_sample=True, needs_depth=True, shapley=False),
    "joint": Capability(shapley=False),
}


def estimate(name: str, value_fn: ValueFn, n: int, **kw: Any) -> Estimate:
    """Run the estimator registered as ``name`` (see ``ESTIMATORS``) on a game of n units."""
    try:
        fn = ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; choose from {sorted(ESTIMATORS)}") from None
    return fn(value_fn, n, **kw)
