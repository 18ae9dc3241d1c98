"""Stage `score`: Shapley values of one group's units (higher = more important).

Shapley values are estimated per group with all other groups intact (Ancona et al.),
from coalition values that the engine computes through ONNX Runtime. The other metrics
(baselines) and the table that dispatches between them live in metrics.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..deploy.select import _order
from ..errors import OnnxPruneError
from .estimators import (
    CAPABILITIES,
    ESTIMATORS,
    Estimate,
    default_budget,
    estimate,
    supports_per_sample,
    truncation_depth,
)

# What auto samples with when the run's cut is known (the share of units each group loses:
# always in prune), and PLAIN_ESTIMATOR when it is not (`onnxprune score` without --ratio).
# `truncated` scores the game pruning visits (removal orders from the full group towards the
# expected cut, DEPTH_MARGIN of the way) at about 128 n / N evaluations per group, 6x fewer
# than persample's 10 n, and with plain removal it beats l1 where persample loses to it (bench/budget.py,
# docs/benchmarks.md, Budget allocation). `cutaware` did not earn the default
# (docs/benchmarks.md, Cost). All three need per-sample coalitions from the engine (and
# mean aggregation); without them auto falls back to FALLBACK_ESTIMATOR.
DEFAULT_ESTIMATOR = "truncated"
PLAIN_ESTIMATOR = "persample"
FALLBACK_ESTIMATOR = "antithetic"
# estimators that keep per-sample values, as the --aggregate error names them
_AGGREGATING = [name for name, can in CAPABILITIES.items() if can.aggregates]
# Where a budget's global allocation will cut each group is not known when scoring, so each
# group's loss is also measured along its Shapley order at these fractions of its units (the
# group alone cut, others intact): the cost the allocation trades groups off by (select.py).
# The truncated game's values rank within a group but do not add up to a deep cut's loss:
# on PP-OCRv4's recognizer the lowest-scored units summed to -0.06 where removing them lost
# +0.03, and the global allocation kept 0.70 of its lines against 0.915 by the measured
# losses, same scores (bench/curves.py)
CURVE_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.65, 0.8)


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
                "stderr": None if self.stderr is None else self.stderr.tolist(),
                **({"wrong_side": round(self.extra["wrong_side"], 4)}
                   if "wrong_side" in self.extra else {}),
                **({"game": self.extra["game"]} if "game" in self.extra else {}),
                **({"chains": self.extra["chains"]} if "chains" in self.extra else {}),
                **({"curve": self.extra["curve"]} if "curve" in self.extra else {})}


def pick_estimator(n: int, budget: int, name: str = "auto", per_sample: bool = False,
                   cut_known: bool = False) -> str:
    """The truncated game for every group when the cut is known and ``per_sample``
    coalitions can be evaluated; otherwise exact enumeration for small groups (n <= 8 costs
    at most 256 evaluations) or when it fits the budget, else the plain sampler (the
    fallback without ``per_sample``)."""
    if name != "auto":
        if name not in ESTIMATORS:
            raise OnnxPruneError(f"unknown estimator '{name}' (choose from auto, {', '.join(ESTIMATORS)})")
        return name
    if cut_known and per_sample:
        # one game for every group: a global ranking compares a small group's scores with
        # the others', and the full game's exact values are on another footing (LeNet-5's
        # 6-channel conv1, plain removal: mean test accuracy 0.775 -> 0.934 / 0.771 -> 0.892
        # at params 0.3 / 0.5 over 3 seeds, refit unchanged; bench/depth.py, trunc_all)
        return DEFAULT_ESTIMATOR
    if n <= 8 or (n <= 16 and 2 ** n <= budget):
        return "exact"
    return PLAIN_ESTIMATOR if per_sample else FALLBACK_ESTIMATOR


class _GroupValue:
    """One group's value function; takes per-sample coalitions when the engine does."""

    def __init__(self, engine, gid: int):
        self.engine, self.gid = engine, gid
        self.per_sample_masks = bool(getattr(engine, "per_sample_masks", False))

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        return self.engine.values(self.gid, coalitions)


def curve_points(n: int) -> list[int]:
    """The cut sizes (units removed) the loss curve of a group of n units is measured at."""
    return sorted({min(n - 1, max(1, int(round(f * n)))) for f in CURVE_FRACTIONS}) if n > 1 else []


def loss_curve(fn, values: np.ndarray) -> list[list[float]]:
    """[[k, value lost], ...] from k = 0: the group's value with its k lowest-scored units
    removed (the order select.py removes them in), one evaluation per point."""
    n = len(values)
    ks = curve_points(n)
    order = _order(values)  # the order selection removes them in
    masks = np.ones((len(ks) + 1, n), dtype=bool)
    for row, k in enumerate(ks, 1):
        masks[row, order[:k]] = False
    v = np.asarray(fn(masks), dtype=np.float64).mean(axis=1)
    return [[0, 0.0]] + [[k, float(v[0] - v[i])] for i, k in enumerate(ks, 1)]


def shapley_group(engine, gid: int, *, estimator: str = "auto", budget: int | None = None,
                  seed: int = 0, aggregate: str = "mean", k: int | None = None,
                  removal: float | None = None) -> GroupScores:
    """Shapley values of one group's units, all other groups intact. `k`: the units this
    group loses, when every group is cut at the same ratio; `removal`: the share of its units
    the run is expected to remove (a budget's global allocation), which sets the depth of the
    truncated game (`truncated`, the default when either is known)."""
    n = engine.analysis.group(gid).units
    budget = budget or default_budget(n)
    fn = _GroupValue(engine, gid)
    name = pick_estimator(n, budget, estimator, supports_per_sample(fn) and aggregate == "mean",
                          cut_known=k is not None or removal is not None)
    can = CAPABILITIES[name]
    if can.per_sample and n >= 2 and not supports_per_sample(fn):
        raise OnnxPruneError(f"the {name} estimator needs an engine that evaluates per-sample "
                             f"coalitions; use --estimator {FALLBACK_ESTIMATOR}")
    if can.exhaustive:
        budget = max(budget, 2 ** n)
    kwargs: dict[str, Any] = {"budget": budget, "seed": seed, "batch": 256}
    if can.aggregates:
        kwargs["aggregate"] = aggregate
    elif aggregate != "mean":
        raise OnnxPruneError(f"--aggregate {aggregate} needs the {', '.join(_AGGREGATING[:-1])} "
                             f"or {_AGGREGATING[-1]} estimator, not {name}")
    if can.needs_k:
        kwargs["k"] = k if k is not None else max(1, n // 2)
    if can.exhaustive:
        kwargs.pop("seed")
    curve = k is None and removal is not None and can.needs_depth and n > 1  # a global allocation
    if curve:  # its evaluations come out of the group's budget (the plan counts them in)
        kwargs["budget"] = max(budget - len(curve_points(n)) - 1, 2 + truncation_depth(n, removal))
    if can.needs_depth:
        share = removal if removal is not None else (k / n if k is not None else None)
        kwargs["depth"] = truncation_depth(n, share)  # as the plan computes it
        kwargs["cut"] = truncation_depth(n, share, margin=1.0)  # wrong_side is at the cut
    t0 = time.perf_counter()
    try:
        est: Estimate = estimate(name, fn, n, **kwargs)
    except ValueError as exc:
        if "budget" not in str(exc):
            raise
        raise OnnxPruneError(f"--budget {budget} is too small for group {gid} ({n} units, "
                             f"estimator {name}): {exc}") from None
    extra = {"wrong_side": est.info["wrong_side"]} if "wrong_side" in est.info else {}
    if "stopped" in est.info:  # chains run of the planned, and why they ended
        extra["chains"] = {"run": est.info["chains"], "planned": est.info["chains_planned"],
                           "stopped": est.info["stopped"]}
    if est.info.get("truncated_game"):  # say what the values are: not the full game's
        extra["game"] = (f"truncated: removal orders {est.info['depth']} of {n} units deep "
                         f"(expected cut {kwargs['cut']}), "
                         f"{est.info['marginals_per_unit']:.0f} marginals per unit; "
                         f"{est.info['unseen']} never removed (ranked most important)"
                         + (f"; {est.info['chains']} of {est.info['chains_planned']} planned "
                            "chains (stopped early: the cut was clear)"
                            if est.info.get("stopped") == "confident" else "")
                         + (f"; {est.info['star_rows']} rows on the contested units"
                            if est.info.get("star_rows") else ""))
    evaluations = est.evaluations
    if curve:
        extra["curve"] = loss_curve(fn, est.values)
        evaluations += len(extra["curve"])
    return GroupScores(gid, est.values, est.stderr, evaluations, f"shapley/{name}",
                       time.perf_counter() - t0, extra)

