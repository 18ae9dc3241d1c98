"""Estimate, the game wrapper (batching, counting, budget, cache) and shared aggregation helpers."""

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


class Game:
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


def open_game(value_fn: ValueFn, n: int, budget: int | None, batch: int, cache: bool) -> Game:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    budget = default_budget(n) if budget is None else int(budget)
    game = Game(value_fn, n, budget=budget, batch=batch, cache=cache)
    if n >= 1:
        require(game, 2, "the empty and full coalitions")
        game.endpoints()
    return game


def require(game: Game, cost: int, what: str) -> None:
    if game.remaining < cost:
        raise ValueError(
            f"budget {game.budget} too small: {what} needs {cost} more evaluations "
            f"({game.evaluations} used)"
        )


def trivial(game: Game, method: str) -> Estimate:
    """n <= 1: the single unit (if any) gets v(full) - v(empty), exactly."""
    values = np.full(game.n, game.v_full - game.v_empty) if game.n else np.zeros(0)
    return result(game, values, np.zeros(game.n), method)


def result(
    game: Game, values: np.ndarray, stderr: np.ndarray, method: str, **kw: Any
) -> Estimate:
    v_full = game.v_full if game.n else 0.0
    v_empty = game.v_empty if game.n else 0.0
    return Estimate(values, stderr, game.evaluations, method, v_full, v_empty, **kw)


# ---------------------------------------------------------------------------------------------
# Aggregation helpers


def check_aggregate(aggregate: str) -> None:
    if aggregate not in ("mean", "mean+2std"):
        raise ValueError(f"aggregate must be 'mean' or 'mean+2std', got {aggregate!r}")


def mean_plus_2std(per_sample: np.ndarray) -> np.ndarray:
    """Ancona et al.'s aggregation of per-sample scores [N, n]: mean + 2 * std over samples
    (population std, ddof=0)."""
    return per_sample.mean(axis=0) + 2.0 * per_sample.std(axis=0)


def stderr_of_mean(draws: np.ndarray) -> np.ndarray:
    """Standard error of the mean over axis 0 of iid draws [D, n]; inf when D < 2."""
    if len(draws) < 2:
        return np.full(draws.shape[1], np.inf)
    return draws.std(axis=0, ddof=1) / math.sqrt(len(draws))


def jackknife_stderr(per_draw: np.ndarray, stat: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Leave-one-draw-out jackknife standard error of ``stat(mean over draws)`` for per-draw
    arrays [D, N, n]; inf when D < 2."""
    d = len(per_draw)
    if d < 2:
        return np.full(per_draw.shape[2], np.inf)
    total = per_draw.sum(axis=0)
    loo = np.stack([stat((total - per_draw[j]) / (d - 1)) for j in range(d)])
    return np.sqrt((d - 1) / d * ((loo - loo.mean(axis=0)) ** 2).sum(axis=0))


class RunningStats:
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
