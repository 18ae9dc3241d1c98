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

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

ValueFn = Callable[[np.ndarray], np.ndarray]
Aggregate = Literal["mean", "mean+2std"]

DEFAULT_BATCH = 64
MAX_EXACT_UNITS = 16
_CACHE_STRETCH = 4
_CACHE_MAX_FLOATS = 1 << 25  # 256 MB of float64


# ---------------------------------------------------------------------------------------------
# Result


@dataclass
class Estimate:
    """Result of an estimator.

    values:      float64 [n], the estimated score per unit (a Shapley estimate unless the method
                 says otherwise: ``mean+2std`` aggregation, ``joint``).
    stderr:      float64 [n], Monte Carlo standard error of ``values`` (0 when exact, inf when
                 fewer than two independent draws).
    evaluations: coalition rows sent to the value function.
    method:      estimator name.
    v_full, v_empty: game values (mean over samples) of the full and empty coalitions.
    samples:     independent draws behind each unit's value (permutations, antithetic pairs,
                 regression pairs); None for exact.
    separated:   ``adaptive`` only: units whose confidence interval lies on one side of the cut.
    info:        method-specific diagnostics.
    """

    values: np.ndarray
    stderr: np.ndarray
    evaluations: int
    method: str
    v_full: float = math.nan
    v_empty: float = math.nan
    samples: np.ndarray | None = None
    separated: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def efficiency_gap(self) -> float:
        """sum(values) - (v_full - v_empty): 0 up to rounding for efficient methods."""
        return float(self.values.sum() - (self.v_full - self.v_empty))

    def bottom(self, k: int) -> np.ndarray:
        """Sorted indices of the k lowest-valued units (ties broken by index)."""
        return np.sort(np.argsort(self.values, kind="stable")[:k])


def default_budget(n: int, per_unit: int = 10) -> int:
    """About ``per_unit`` evaluations per unit, i.e. about ``per_unit`` permutations
    (a permutation costs n - 1 rows after the shared empty/full coalitions)."""
    return max(4, per_unit * int(n))


# ---------------------------------------------------------------------------------------------
# The game wrapper: batching, counting, budget, cache


class _Game:
    """Wraps ``value_fn``: splits requests into calls of at most ``batch`` rows, counts
    evaluations, refuses to exceed ``budget``, caches coalitions, validates outputs."""

    def __init__(self, value_fn: ValueFn, n: int, *, budget: int, batch: int, cache: bool):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.value_fn, self.n, self.budget, self.batch = value_fn, n, int(budget), int(batch)
        self.evaluations = 0
        self.requested = 0  # rows asked for, cache hits included
        self.n_samples: int | None = None
        self._cache: dict[bytes, np.ndarray] | None = {} if cache else None
        self._cached_floats = 0
        self.v_empty_ps = self.v_full_ps = np.zeros(0)

    @property
    def remaining(self) -> int:
        return self.budget - self.evaluations

    def affordable(self, cost: int) -> int:
        """How many draws of worst-case ``cost`` rows each still fit in the budget (and in the
        cap on requested rows, which only binds when the cache makes draws free)."""
        by_budget = self.remaining // cost
        by_requests = (_CACHE_STRETCH * self.budget - self.requested) // cost
        return max(0, min(by_budget, by_requests))

    def endpoints(self) -> None:
        """Evaluate and keep the per-sample values of the empty and the full coalition."""
        v = self(np.stack([np.zeros(self.n, bool), np.ones(self.n, bool)]))
        self.v_empty_ps, self.v_full_ps = v[0], v[1]

    @property
    def v_empty(self) -> float:
        return float(self.v_empty_ps.mean())

    @property
    def v_full(self) -> float:
        return float(self.v_full_ps.mean())

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        """Values [K, N] of the coalitions ``masks`` [K, n]."""
        masks = np.ascontiguousarray(masks, dtype=bool).reshape(-1, self.n)
        self.requested += len(masks)
        if self._cache is None:
            return self._evaluate(masks)
        keys = [row.tobytes() for row in np.packbits(masks, axis=1)]
        new: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in self._cache and key not in new:
                new[key] = i
        fresh = dict(zip(new, self._evaluate(masks[list(new.values())]))) if new else {}
        self._remember(fresh)
        return np.stack([fresh[k] if k in fresh else self._cache[k] for k in keys])

    def _remember(self, fresh: dict[bytes, np.ndarray]) -> None:
        assert self._cache is not None
        for key, row in fresh.items():
            if self._cached_floats + row.size > _CACHE_MAX_FLOATS:
                return
            self._cache[key] = row
            self._cached_floats += row.size

    def _evaluate(self, masks: np.ndarray) -> np.ndarray:
        if self.evaluations + len(masks) > self.budget:
            raise RuntimeError(  # an estimator bug, never the user's
                f"estimator tried {self.evaluations + len(masks)} evaluations, budget {self.budget}"
            )
        chunks = [self._call(masks[i : i + self.batch]) for i in range(0, len(masks), self.batch)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.n_samples or 0))

    def _call(self, masks: np.ndarray) -> np.ndarray:
        out = np.asarray(self.value_fn(masks.copy()), dtype=np.float64)
        if out.ndim == 1:
            out = out[:, None]
        if out.ndim != 2 or out.shape[0] != len(masks):
            raise ValueError(
                f"value function returned shape {out.shape} for {len(masks)} coalitions; "
                "expected [K, N]"
            )
        if self.n_samples is None:
            self.n_samples = out.shape[1]
        elif out.shape[1] != self.n_samples:
            raise ValueError(
                f"value function returned {self.n_samples} samples, then {out.shape[1]}"
            )
        if not np.all(np.isfinite(out)):
            raise ValueError("value function returned non-finite values")
        self.evaluations += len(masks)
        return out


def _open_game(value_fn: ValueFn, n: int, budget: int | None, batch: int, cache: bool) -> _Game:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    budget = default_budget(n) if budget is None else int(budget)
    game = _Game(value_fn, n, budget=budget, batch=batch, cache=cache)
    if n >= 1:
        _require(game, 2, "the empty and full coalitions")
        game.endpoints()
    return game


def _require(game: _Game, cost: int, what: str) -> None:
    if game.remaining < cost:
        raise ValueError(
            f"budget {game.budget} too small: {what} needs {cost} more evaluations "
            f"({game.evaluations} used)"
        )


def _trivial(game: _Game, method: str) -> Estimate:
    """n <= 1: the single unit (if any) gets v(full) - v(empty), exactly."""
    values = np.full(game.n, game.v_full - game.v_empty) if game.n else np.zeros(0)
    return _result(game, values, np.zeros(game.n), method)


def _result(
    game: _Game, values: np.ndarray, stderr: np.ndarray, method: str, **kw: Any
) -> Estimate:
    v_full = game.v_full if game.n else 0.0
    v_empty = game.v_empty if game.n else 0.0
    return Estimate(values, stderr, game.evaluations, method, v_full, v_empty, **kw)


# ---------------------------------------------------------------------------------------------
# Aggregation helpers


def _check_aggregate(aggregate: str) -> None:
    if aggregate not in ("mean", "mean+2std"):
        raise ValueError(f"aggregate must be 'mean' or 'mean+2std', got {aggregate!r}")


def _mean_plus_2std(per_sample: np.ndarray) -> np.ndarray:
    """Ancona et al.'s aggregation of per-sample scores [N, n]: mean + 2 * std over samples
    (population std, ddof=0)."""
    return per_sample.mean(axis=0) + 2.0 * per_sample.std(axis=0)


def _stderr_of_mean(draws: np.ndarray) -> np.ndarray:
    """Standard error of the mean over axis 0 of iid draws [D, n]; inf when D < 2."""
    if len(draws) < 2:
        return np.full(draws.shape[1], np.inf)
    return draws.std(axis=0, ddof=1) / math.sqrt(len(draws))


def _jackknife_stderr(per_draw: np.ndarray, stat: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Leave-one-draw-out jackknife standard error of ``stat(mean over draws)`` for per-draw
    arrays [D, N, n]; inf when D < 2."""
    d = len(per_draw)
    if d < 2:
        return np.full(per_draw.shape[2], np.inf)
    total = per_draw.sum(axis=0)
    loo = np.stack([stat((total - per_draw[j]) / (d - 1)) for j in range(d)])
    return np.sqrt((d - 1) / d * ((loo - loo.mean(axis=0)) ** 2).sum(axis=0))


class _RunningStats:
    """Per-unit count, mean and sum of squared deviations of scalar draws, merged batch by batch
    (Chan et al.'s parallel update, numerically stable)."""

    def __init__(self, n: int):
        self.count = np.zeros(n, np.int64)
        self.mean = np.zeros(n)
        self.m2 = np.zeros(n)

    def add(self, units: np.ndarray, x: np.ndarray) -> None:
        n = len(self.count)
        cnt = np.bincount(units, minlength=n)
        bmean = np.bincount(units, x, minlength=n) / np.maximum(cnt, 1)
        bm2 = np.bincount(units, (x - bmean[units]) ** 2, minlength=n)
        total = self.count + cnt
        delta = bmean - self.mean
        safe = np.maximum(total, 1)
        self.mean = self.mean + delta * cnt / safe
        self.m2 = self.m2 + bm2 + delta**2 * self.count * cnt / safe
        self.count = total

    def add_all(self, draws: np.ndarray) -> None:
        """Add draws [D, n] that cover every unit."""
        d, n = draws.shape
        self.add(np.tile(np.arange(n), d), draws.reshape(-1))

    def stderr(self, prior_draws: float = 0.0) -> np.ndarray:
        """Standard error of each unit's mean (inf below two draws). With ``prior_draws`` > 0
        each unit's variance is shrunk toward the median variance over units, as if it had
        ``prior_draws`` extra draws at that variance: (df s_i^2 + p s_med^2) / (df + p).
        This keeps a unit whose few draws happen to coincide (variance 0) from looking
        certain, and vanishes as the unit's own draws accumulate."""
        c = self.count
        df = c - 1
        with np.errstate(divide="ignore", invalid="ignore"):
            s2 = np.where(df >= 1, self.m2 / np.maximum(df, 1), np.nan)
            if prior_draws > 0 and np.any(df >= 1):
                pooled = float(np.nanmedian(s2))
                s2 = (df * s2 + prior_draws * pooled) / (df + prior_draws)
            se = np.sqrt(s2 / c)
        return np.where(c >= 2, se, np.inf)


# ---------------------------------------------------------------------------------------------
# 1. Exact enumeration


def _shapley_from_table(table: np.ndarray) -> np.ndarray:
    """Shapley values from the values of all 2^n coalitions.

    ``table[c]`` is v(S) for the coalition whose bit i of the code c says whether unit i is in
    S (any trailing axes, e.g. per-sample values, are carried along). For each unit i,
        phi_i = sum_{S not containing i} |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S)),
    summed over differences so that a null player gets exactly 0."""
    n = int(table.shape[0]).bit_length() - 1
    codes = np.arange(1 << n)
    sizes = ((codes[:, None] >> np.arange(n)) & 1).sum(axis=1)
    weight = np.array([1.0 / (n * math.comb(n - 1, s)) for s in range(n)])
    phi = np.empty((n,) + table.shape[1:])
    for i in range(n):
        without = codes[(codes >> i) & 1 == 0]
        diff = table[without | (1 << i)] - table[without]
        phi[i] = np.tensordot(weight[sizes[without]], diff, axes=(0, 0))
    return phi


def estimate_exact(
    value_fn: ValueFn,
    n: int,
    *,
    budget: int | None = None,
    seed: Any = None,
    batch: int = DEFAULT_BATCH,
    aggregate: Aggregate = "mean",
) -> Estimate:
    """Exact Shapley values by enumerating all 2^n coalitions (n <= 16).

    phi_i = sum_S |S|!(n-|S|-1)!/n! (v(S+i) - v(S)) (see ``_shapley_from_table``). With
    ``aggregate="mean"`` the game is the mean over samples (Shapley is linear, so this is the
    mean of the per-sample Shapley values) and only 2^n floats are kept; ``"mean+2std"``
    keeps the per-sample table (2^n * N floats) and aggregates the per-sample Shapley values
    as Ancona et al. do. ``seed`` is accepted for a uniform signature and ignored.
    """
    _check_aggregate(aggregate)
    if n > MAX_EXACT_UNITS:
        raise ValueError(f"exact enumeration refuses n = {n} > {MAX_EXACT_UNITS} (2^n coalitions)")
    total = 1 << n
    if budget is not None and budget < total:
        raise ValueError(f"budget {budget} too small: exact enumeration needs 2^{n} = {total}")
    game = _Game(value_fn, n, budget=total, batch=batch, cache=False)
    if n == 0:
        return _trivial(game, "exact")
    bits = np.arange(n)
    chunk = max(batch, 1024)
    rows = []
    for start in range(0, total, chunk):
        codes = np.arange(start, min(total, start + chunk))
        v = game(((codes[:, None] >> bits) & 1).astype(bool))
        game.v_empty_ps = v[0] if start == 0 else game.v_empty_ps
        game.v_full_ps = v[-1]
        rows.append(v.mean(axis=1) if aggregate == "mean" else v)
    phi = _shapley_from_table(np.concatenate(rows))
    values = phi if aggregate == "mean" else _mean_plus_2std(phi.T)
    return _result(game, values, np.zeros(n), "exact", info={"aggregate": aggregate})


# ---------------------------------------------------------------------------------------------
# 2-3. Permutation sampling (plain, antithetic, truncated)


@dataclass
class _Draws:
    means: np.ndarray  # [D, n] marginals (mean over samples) per draw
    per_sample: np.ndarray | None  # [D, N, n] when kept (mean+2std aggregation)
    chains: int
    truncated: int


def _prefix_values(game: _Game, rank: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Values [C, len(sizes), N] of the prefixes of the given sizes of each chain; chain c's
    prefix of size k holds the units u with rank[c, u] < k."""
    masks = rank[:, None, :] < sizes[None, :, None]
    c, s = masks.shape[:2]
    return game(masks.reshape(-1, game.n)).reshape(c, s, -1)


def _truncation_block(n: int) -> int:
    """Prefix positions evaluated per chain and step in a truncated walk: about a tenth of the
    chain, so at most that many evaluations are wasted past the truncation point."""
    return max(1, -(-(n - 1) // 10))


def _truncate_chains(game: _Game, rank: np.ndarray, chain: np.ndarray, tol: float) -> int:
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


def _walk_chains(game: _Game, perms: np.ndarray, tol: float | None) -> tuple[np.ndarray, int]:
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


def _sample_permutations(
    game: _Game,
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
        return draws.means.mean(axis=0), _stderr_of_mean(draws.means)
    assert draws.per_sample is not None
    values = _mean_plus_2std(draws.per_sample.mean(axis=0))
    return values, _jackknife_stderr(draws.per_sample, _mean_plus_2std)


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
    _check_aggregate(aggregate)
    game = _open_game(value_fn, n, budget, batch, cache)
    if n <= 1:
        return _trivial(game, "permutation")
    _require(game, n - 1, "one permutation")
    rng = np.random.default_rng(seed)
    max_draws = n_permutations if n_permutations is not None else np.iinfo(np.int64).max
    draws = _sample_permutations(
        game, rng, max_draws, antithetic=False, tol=None, keep_per_sample=aggregate != "mean"
    )
    values, stderr = _summarize(draws, aggregate)
    return _result(
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
    _check_aggregate(aggregate)
    if tol is not None and tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    game = _open_game(value_fn, n, budget, batch, cache)
    if n <= 1:
        return _trivial(game, "antithetic")
    _require(game, 2 * (n - 1), "one antithetic pair")
    rng = np.random.default_rng(seed)
    max_draws = n_pairs if n_pairs is not None else np.iinfo(np.int64).max
    draws = _sample_permutations(
        game, rng, max_draws, antithetic=True, tol=tol, keep_per_sample=aggregate != "mean"
    )
    values, stderr = _summarize(draws, aggregate)
    return _result(
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


def _per_sample_prefixes(game: _Game, rank: np.ndarray) -> np.ndarray:
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


def _per_sample_pairs(game: _Game, rng: np.random.Generator, m: int) -> np.ndarray:
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
    game = _open_game(value_fn, n, budget, batch, cache=False)
    if n <= 1:
        return _trivial(game, "persample")
    _require(game, 2 * (n - 1), "one antithetic pair")
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
    return _result(
        game, values, stderr, "persample",
        samples=np.full(n, pairs * n_samples),
        info={"pairs": pairs, "draws": per_sample.mean(axis=1)},
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 4. Paired KernelSHAP


def _kernel_coalitions(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """m coalitions [m, n] from the Shapley kernel distribution: size s in 1..n-1 with
    p(s) proportional to 1 / (s (n - s)), then a uniform subset of that size."""
    sizes = np.arange(1, n)
    p = 1.0 / (sizes * (n - sizes))
    s = rng.choice(sizes, size=m, p=p / p.sum())
    ranks = np.argsort(rng.random((m, n)), axis=1).argsort(axis=1)
    return ranks < s[:, None]


def _kkt_inverse(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """Inverse of [[A, 1], [1^T, 0]] (pseudo-inverse when singular) and whether it was regular."""
    n = len(a)
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n], kkt[:n, n], kkt[n, :n] = a, 1.0, 1.0
    try:
        inv = np.linalg.inv(kkt)
        if np.allclose(kkt @ inv, np.eye(n + 1), atol=1e-8):
            return inv, True
    except np.linalg.LinAlgError:
        pass
    return np.linalg.pinv(kkt), False


def _paired_kernel_regression(
    z: np.ndarray, y_z: np.ndarray, y_c: np.ndarray, delta: float
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Constrained least squares over paired samples (Covert & Lee 2021).

    Rows are the sampled coalitions z and their complements, targets y = v(z) - v(empty):
        minimise  mean (y - z^T beta)^2   subject to  1^T beta = delta = v(full) - v(empty),
    i.e. beta = Q b + c with A = mean z z^T, b = mean z y, Q the top-left block of the inverse
    of the KKT matrix [[A, 1], [1^T, 0]]. Sampling z from the Shapley kernel makes the solution
    converge to the Shapley values.

    Standard error: sandwich (delta-method) estimate over the iid pairs: with residuals r and
    g_j = (z_j r_j + zbar_j rbar_j) / 2, Cov(beta) ~= Q Cov(g) Q^T / M. For games with at most
    pairwise interactions paired sampling is exact (the two residuals of a pair are equal, g_j
    is proportional to 1, and Q 1 = 0), and the standard error is 0 accordingly.
    """
    m, n = z.shape
    zf, cf = z.astype(float), (~z).astype(float)
    rows, y = np.concatenate([zf, cf]), np.concatenate([y_z, y_c])
    a = rows.T @ rows / len(rows)
    b = rows.T @ y / len(rows)
    inv, regular = _kkt_inverse(a)
    q = inv[:n, :n]
    beta = q @ b + inv[:n, n] * delta
    g = 0.5 * (zf * (y_z - zf @ beta)[:, None] + cf * (y_c - cf @ beta)[:, None])
    h = (g - g.mean(axis=0)) @ q.T
    stderr = _stderr_of_mean(h) if m >= 2 else np.full(n, np.inf)
    return beta, stderr, regular


def estimate_kernelshap(
    value_fn: ValueFn,
    n: int,
    *,
    budget: int | None = None,
    seed: Any = 0,
    batch: int = DEFAULT_BATCH,
    n_pairs: int | None = None,
    cache: bool = True,
) -> Estimate:
    """Paired-sampling KernelSHAP (Lundberg & Lee 2017; Covert & Lee 2021).

    Coalitions z are drawn from the Shapley kernel (size s with probability proportional to
    1 / (s (n - s)), then a uniform subset), each together with its complement; the Shapley
    values are the solution of the least-squares problem min E[(v(z) - v(empty) - z^T beta)^2]
    under the efficiency constraint sum beta = v(full) - v(empty), solved exactly (KKT system).
    Efficiency holds exactly. The game value is the mean over samples (linearity).

    stderr: sandwich estimate over the iid pairs (see ``_paired_kernel_regression``); it is a
    large-sample approximation (the regression estimator is consistent but slightly biased
    at small sample sizes). Draws pairs until the budget is spent (at most ``n_pairs``);
    repeated coalitions come from the cache for free.
    """
    game = _open_game(value_fn, n, budget, batch, cache)
    if n <= 1:
        return _trivial(game, "kernelshap")
    _require(game, 2, "one coalition pair")
    rng = np.random.default_rng(seed)
    max_pairs = n_pairs if n_pairs is not None else np.iinfo(np.int64).max
    zs, ys_z, ys_c = [], [], []
    drawn = 0
    while drawn < max_pairs:
        m = min(max_pairs - drawn, game.affordable(2), max(1, game.batch // 2))
        if m <= 0:
            break
        z = _kernel_coalitions(rng, m, n)
        v = game(np.concatenate([z, ~z])).mean(axis=1) - game.v_empty
        zs.append(z)
        ys_z.append(v[:m])
        ys_c.append(v[m:])
        drawn += m
    z = np.concatenate(zs)
    values, stderr, regular = _paired_kernel_regression(
        z, np.concatenate(ys_z), np.concatenate(ys_c), game.v_full - game.v_empty
    )
    return _result(
        game, values, stderr, "kernelshap",
        samples=np.full(n, len(z)),
        info={"pairs": len(z), "regular": regular},
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 5. Adaptive: sample until the pruning cut is resolved


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


def _unit_pair_marginals(game: _Game, rng: np.random.Generator, units: np.ndarray) -> np.ndarray:
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
    (``_RunningStats.stderr``): with 4 or 5 draws a unit's sample variance is often near 0 by
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
    game = _open_game(value_fn, n, budget, batch, cache)
    if n <= 1:
        est = _trivial(game, "adaptive")
        est.separated = np.ones(n, bool)
        return est
    full_cost = 2 * (n - 1)
    _require(game, 2 * full_cost, "two antithetic pairs")
    rng = np.random.default_rng(seed)
    stats = _RunningStats(n)

    def full_pairs(m: int) -> None:
        draws = _sample_permutations(game, rng, m, antithetic=True, tol=None, keep_per_sample=False)
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
    return _result(
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


# ---------------------------------------------------------------------------------------------
# 6. Joint regression over several groups (Bonsai-style)


def _ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge regression of y on x with an unpenalised intercept; penalty
    lambda = ridge * trace(Xc^T Xc) / p. Returns coefficients, their standard errors (sandwich
    for ridge with homoscedastic residual variance RSS / (M - p - 1); inf when M <= p + 1) and
    the intercept. Uses the dual (M x M) system when there are fewer rows than columns."""
    m, p = x.shape
    xc = x - x.mean(axis=0)
    yc = y - y.mean()
    if m <= p + 1:
        gram = xc @ xc.T
        lam = ridge * max(np.trace(gram) / p, 1e-12)
        beta = xc.T @ np.linalg.solve(gram + lam * np.eye(m), yc)
        return beta, np.full(p, np.inf), float(y.mean() - x.mean(axis=0) @ beta)
    g = xc.T @ xc
    lam = ridge * max(np.trace(g) / p, 1e-12)
    g_inv = np.linalg.inv(g + lam * np.eye(p))
    beta = g_inv @ (xc.T @ yc)
    sigma2 = float(((yc - xc @ beta) ** 2).sum()) / (m - p - 1)
    var = sigma2 * np.einsum("ij,jk,ki->i", g_inv, g, g_inv)
    return beta, np.sqrt(np.maximum(var, 0.0)), float(y.mean() - x.mean(axis=0) @ beta)


def estimate_joint(
    value_fn_multi: ValueFn,
    sizes: list[int],
    *,
    keep_ratio: float = 0.5,
    budget: int | None = None,
    seed: Any = 0,
    batch: int = DEFAULT_BATCH,
    ridge: float = 1e-3,
) -> list[Estimate]:
    """Bonsai-style scores for several groups at once (Dery et al. 2024).

    ``value_fn_multi`` takes bool [K, sum(sizes)] (the groups' masks side by side) and returns
    [K, N]. Draws ``budget`` random sub-models keeping each unit independently with probability
    ``keep_ratio`` (independent draws keep the coefficients identifiable; a fixed count per
    group would make each group's mask sum constant), evaluates them, and regresses the mean
    value on the masks (ridge, small penalty, free intercept). The coefficients are the scores.

    These are linear-model attributions, *not* Shapley values: in the large-sample limit the
    OLS coefficient of unit i under independent Bernoulli(p) masks is
    E[v(S + i) - v(S)] with S ~ Bernoulli(p) on all other units (every group varies at once),
    i.e. the p-weighted Banzhaf value of the joint game. It coincides with the Shapley value for
    additive games; in general it weighs coalitions of about p * n units (the pruning regime)
    instead of all sizes equally. No efficiency.

    stderr: ridge-sandwich standard error with homoscedastic residuals (inf when
    budget <= sum(sizes) + 1). ``evaluations`` in every returned Estimate is the shared total.
    """
    sizes = [int(s) for s in sizes]
    if any(s < 0 for s in sizes):
        raise ValueError(f"group sizes must be >= 0, got {sizes}")
    if not 0.0 < keep_ratio < 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1), got {keep_ratio}")
    total = sum(sizes)
    budget = default_budget(total) if budget is None else int(budget)
    if budget < 2:
        raise ValueError(f"budget {budget} too small: joint regression needs at least 2")
    if total == 0:
        return [Estimate(np.zeros(0), np.zeros(0), 0, "joint") for _ in sizes]
    game = _Game(value_fn_multi, total, budget=budget, batch=batch, cache=False)
    rng = np.random.default_rng(seed)
    x = rng.random((budget, total)) < keep_ratio
    y = game(x).mean(axis=1)
    beta, stderr, intercept = _ridge(x.astype(float), y, ridge)
    bounds = np.cumsum([0] + sizes)
    info = {"keep_ratio": keep_ratio, "ridge": ridge, "intercept": intercept, "sub_models": budget}
    return [
        Estimate(
            beta[lo:hi], stderr[lo:hi], game.evaluations, "joint",
            samples=np.full(hi - lo, budget), info={**info, "group": g, "offset": int(lo)},
        )  # fmt: skip
        for g, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))
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
    "joint": _joint_single,
}


@dataclass(frozen=True)
class Capability:
    """What a caller must know about an estimator before running it (instead of its name)."""

    per_sample: bool = False  # needs a value function with per_sample_masks (n >= 2)
    aggregates: bool = False  # takes aggregate="mean+2std" (keeps per-sample values)
    exhaustive: bool = False  # evaluates all 2^n coalitions: no seed, budget >= 2^n
    needs_k: bool = False  # steered by k, the number of units the run removes
    shapley: bool = True  # False: another attribution (joint: ridge over sub-models)


CAPABILITIES: dict[str, Capability] = {
    "exact": Capability(aggregates=True, exhaustive=True),
    "permutation": Capability(aggregates=True),
    "antithetic": Capability(aggregates=True),
    "persample": Capability(per_sample=True),
    "kernelshap": Capability(),
    "adaptive": Capability(needs_k=True),
    "joint": Capability(shapley=False),
}


def estimate(name: str, value_fn: ValueFn, n: int, **kw: Any) -> Estimate:
    """Run the estimator registered as ``name`` (see ``ESTIMATORS``) on a game of n units."""
    try:
        fn = ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; choose from {sorted(ESTIMATORS)}") from None
    return fn(value_fn, n, **kw)
