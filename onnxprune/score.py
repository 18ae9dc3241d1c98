"""Stage `score`: a score per unit of every prunable group (higher = more important).

Shapley values are estimated per group with all other groups intact (Ancona et al.),
from coalition values that the engine computes through ONNX Runtime. The baselines share
the same interface so the study (and users) can compare them like for like.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .analyze import Analysis
from .baselines import weight_norm_scores
from .errors import OnnxPruneError
from .estimators import (
    ESTIMATORS,
    Estimate,
    default_budget,
    estimate,
    supports_per_sample,
)

# name -> (needs data, description)
BASELINES = {
    "random": (False, "uniformly random (seeded)"),
    "l1": (False, "L1 norm of the unit's filters"),
    "l2": (False, "L2 norm of the unit's filters"),
    "bn_gamma": (False, "|gamma| of the BatchNorm after the unit's producer"),
    "mean_activation": (True, "mean |activation| of the unit's channels at its consumers"),
    "apoz": (True, "1 - average percentage of zeros of the unit's channels"),
    "loo": (True, "leave-one-out: v(all) - v(all without the unit)"),
    "taylor": (True, "first-order Taylor: finite difference of v on the unit's mask"),
}
METRICS = ("shapley", *BASELINES)
# Best Spearman/overlap per evaluation in bench/estimators.py. It needs per-sample coalitions
# from the engine (and mean aggregation); without them auto falls back to FALLBACK_ESTIMATOR.
DEFAULT_ESTIMATOR = "persample"
FALLBACK_ESTIMATOR = "antithetic"

Progress = Callable[[dict[str, Any]], None]


@dataclass
class GroupScores:
    gid: int
    values: np.ndarray
    stderr: np.ndarray | None = None
    evaluations: int = 0
    method: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"group": self.gid, "method": self.method, "evaluations": self.evaluations,
                "seconds": round(self.seconds, 4), "scores": self.values.tolist(),
                "stderr": None if self.stderr is None else self.stderr.tolist()}


def pick_estimator(n: int, budget: int, name: str = "auto", per_sample: bool = False) -> str:
    """Exact enumeration for small groups (n <= 8 costs at most 256 evaluations) or when it
    fits the budget; the default sampler otherwise (its fallback when ``per_sample`` coalitions
    cannot be evaluated)."""
    if name != "auto":
        if name not in ESTIMATORS:
            raise OnnxPruneError(f"unknown estimator '{name}' (choose from auto, {', '.join(ESTIMATORS)})")
        return name
    if n <= 8 or (n <= 16 and 2 ** n <= budget):
        return "exact"
    return DEFAULT_ESTIMATOR if per_sample else FALLBACK_ESTIMATOR


class _GroupValue:
    """One group's value function; takes per-sample coalitions when the engine does."""

    def __init__(self, engine, gid: int):
        self.engine, self.gid = engine, gid
        self.per_sample_masks = bool(getattr(engine, "per_sample_masks", False))

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        return self.engine.values(self.gid, coalitions)


def shapley_group(engine, gid: int, *, estimator: str = "auto", budget: int | None = None,
                  seed: int = 0, aggregate: str = "mean", k: int | None = None) -> GroupScores:
    """Shapley values of one group's units, all other groups intact."""
    n = engine.analysis.group(gid).units
    budget = budget or default_budget(n)
    fn = _GroupValue(engine, gid)
    name = pick_estimator(n, budget, estimator, supports_per_sample(fn) and aggregate == "mean")
    if name == "persample" and n >= 2 and not supports_per_sample(fn):
        raise OnnxPruneError("the persample estimator needs an engine that evaluates per-sample "
                             "coalitions; use --estimator antithetic")
    if name == "exact":
        budget = max(budget, 2 ** n)
    kwargs: dict[str, Any] = {"budget": budget, "seed": seed, "batch": 256}
    if name in ("exact", "permutation", "antithetic"):
        kwargs["aggregate"] = aggregate
    elif aggregate != "mean":
        raise OnnxPruneError(f"--aggregate {aggregate} needs the exact, permutation or "
                             f"antithetic estimator, not {name}")
    if name == "adaptive":
        kwargs["k"] = k if k is not None else max(1, n // 2)
    if name == "exact":
        kwargs.pop("seed")
    t0 = time.perf_counter()
    try:
        est: Estimate = estimate(name, fn, n, **kwargs)
    except ValueError as exc:
        if "budget" not in str(exc):
            raise
        raise OnnxPruneError(f"--budget {budget} is too small for group {gid} ({n} units, "
                             f"estimator {name}): {exc}") from None
    return GroupScores(gid, est.values, est.stderr, est.evaluations, f"shapley/{name}",
                       time.perf_counter() - t0)


def leave_one_out(engine, gid: int) -> GroupScores:
    n = engine.analysis.group(gid).units
    coalitions = np.ones((n + 1, n), dtype=bool)
    coalitions[np.arange(1, n + 1), np.arange(n)] = False
    v = engine.values(gid, coalitions).mean(axis=1)
    return GroupScores(gid, v[0] - v[1:], None, n + 1, "loo")


def taylor(engine, gid: int, eps: float = 0.05) -> GroupScores:
    """(v(1) - v(1 - eps e_i)) / eps: the mask gradient, forward passes only."""
    n = engine.analysis.group(gid).units
    masks = np.ones((n + 1, n), dtype=np.float32)
    masks[np.arange(1, n + 1), np.arange(n)] = 1 - eps
    v = engine.values(gid, masks).mean(axis=1)
    return GroupScores(gid, (v[0] - v[1:]) / eps, None, n + 1, "taylor")


def bn_gamma(analysis: Analysis, gid: int) -> np.ndarray:
    """Sum over the group's BatchNorm members of |scale|; groups without BN fall back to L1."""
    from .graph import const_value
    group = analysis.group(gid)
    tensors = analysis.graph.tensors()
    total, seen = np.zeros(group.units), False
    for m in group.members:
        if m.op == "BatchNormalization" and m.role == "param":
            if analysis.node(m.node).inputs[1].name != m.tensor:
                continue  # only the scale input, not bias/mean/var
            gamma = np.abs(const_value(tensors[m.tensor]).astype(np.float64))
            inside = analysis.ch_group[m.ids] == gid
            np.add.at(total, analysis.ch_unit[m.ids[inside]], gamma[inside])
            seen = True
    return total if seen else weight_norm_scores(analysis, gid, 1)


def activation_scores(analysis: Analysis, stats: Mapping[str, Mapping[str, np.ndarray]],
                      gid: int, key: str) -> np.ndarray:
    """Average of a per-channel statistic over the unit's channels at the group's sites."""
    group = analysis.group(gid)
    total, count = np.zeros(group.units), np.zeros(group.units)
    for site in analysis.sites:
        if site.tensor not in stats:
            continue
        inside = analysis.ch_group[site.ids] == gid
        if not inside.any():
            continue
        values = stats[site.tensor][key][inside]
        np.add.at(total, analysis.ch_unit[site.ids[inside]], values)
        np.add.at(count, analysis.ch_unit[site.ids[inside]], 1)
    return total / np.maximum(count, 1)
