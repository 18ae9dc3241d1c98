"""The ranking metrics: one table (`METRICS`), one signature (`Metric.score(ctx, gid)`).

Every metric gives a score per unit of a group, higher = more important. Shapley values
(score.py) are the default; the baselines let the study (and users) compare like for like.
A metric's entry says what it needs (calibration data, the masking engine, a per-channel
statistic of the mask sites), so the scoring run (run.py) prepares exactly that and loops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..compiler.analysis import Analysis
from ..compiler.graph import const_value
from ..deploy.select import n_removed, width_multiple
from .shapley import GroupScores, shapley_group
from .site_stats import SiteStat

DEFAULT_METRIC = "shapley"


@dataclass(frozen=True)
class ScoreContext:
    """What a metric may read while scoring one group."""

    analysis: Analysis
    seed: int = 0
    estimator: str = "auto"  # Shapley estimator and its settings (ScoreOptions)
    budget: int | None = None
    aggregate: str = "mean"
    ratio: float | None = 0.5  # units each group loses (steers cutaware/adaptive); None: unknown
    engine: Any = None  # the masking engine, for metrics with needs_engine
    site_stat: Mapping[str, np.ndarray] | None = None  # per site tensor: the metric's statistic
    round_to: int = 1  # kept widths rounded up to multiples of this many channels (select)
    budgets: Mapping[int, int] | None = None  # per group, the plan's (scoring/plan.py) budget
    removal: float | None = None  # share of each group's units the run is expected to remove


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    score: Callable[[ScoreContext, int], GroupScores]
    needs_data: bool = False  # reads calibration inputs
    needs_engine: bool = False  # evaluates masked models (the engine reports progress)
    statistic: SiteStat | None = None  # the per-channel site statistic it reads (compensate.py)
    # scores in the objective's units (a change of the value), so they compare across groups
    # as they are; the others are normalized per group before a global ranking (select.py)
    objective_units: bool = False


# ---------------------------------------------------------------------------------------------
# Metrics without a forward pass


def random_scores(analysis: Analysis, gid: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, gid])
    return rng.random(analysis.group(gid).units)


def weight_norm_scores(analysis: Analysis, gid: int, p: int = 1) -> np.ndarray:
    """Sum over the group's producers of the Lp norm (p-th power summed) of each unit's filters,
    so a unit spanning several sources (residual stage) counts all of its filters."""
    group = analysis.group(gid)
    tensors = analysis.graph.tensors()
    total = np.zeros(group.units)
    for m in group.members:
        if m.role != "producer":
            continue
        w = const_value(tensors.get(m.tensor))
        if w is None:
            continue
        w = np.moveaxis(np.abs(w.astype(np.float64)), m.axis, 0).reshape(w.shape[m.axis], -1)
        per_channel = (w ** p).sum(axis=1)
        inside = analysis.ch_group[m.ids] == gid
        np.add.at(total, analysis.ch_unit[m.ids[inside]], per_channel[inside])
    return total ** (1.0 / p)


def bn_gamma(analysis: Analysis, gid: int) -> np.ndarray:
    """Sum over the group's BatchNorm members of |scale|; groups without BN fall back to L1."""
    from ..compiler.graph import const_value
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


# ---------------------------------------------------------------------------------------------
# Metrics from calibration statistics and from the engine


def activation_scores(analysis: Analysis, stat: Mapping[str, np.ndarray], gid: int) -> np.ndarray:
    """Average of a per-channel statistic (per site tensor) over the unit's channels at the
    group's sites."""
    group = analysis.group(gid)
    total, count = np.zeros(group.units), np.zeros(group.units)
    for site in analysis.sites:
        if site.tensor not in stat:
            continue
        inside = analysis.ch_group[site.ids] == gid
        if not inside.any():
            continue
        values = stat[site.tensor][inside]
        np.add.at(total, analysis.ch_unit[site.ids[inside]], values)
        np.add.at(count, analysis.ch_unit[site.ids[inside]], 1)
    return total / np.maximum(count, 1)


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


# ---------------------------------------------------------------------------------------------
# The table: adapters to the one signature


def _shapley(ctx: ScoreContext, gid: int) -> GroupScores:
    group = ctx.analysis.group(gid)
    multiple = width_multiple(group, ctx.round_to)  # as select() rounds
    k = None if ctx.ratio is None else n_removed(group.units, ctx.ratio, multiple)
    budget = ctx.budgets.get(gid, ctx.budget) if ctx.budgets else ctx.budget
    return shapley_group(ctx.engine, gid, estimator=ctx.estimator, budget=budget,
                         seed=ctx.seed + gid, aggregate=ctx.aggregate, k=k,
                         removal=ctx.removal)


def _static(name: str, fn: Callable[[ScoreContext, int], np.ndarray]) -> Callable[[ScoreContext, int], GroupScores]:
    """A metric computed from the model (and its statistics) alone, named `name`."""
    return lambda ctx, gid: GroupScores(gid, fn(ctx, gid), method=name)


def _metric_table(*metrics: Metric) -> dict[str, Metric]:
    return {m.name: m for m in metrics}


METRICS: dict[str, Metric] = _metric_table(
    Metric("shapley", "Shapley value of the unit in its group's game (score.py)", _shapley,
           needs_data=True, needs_engine=True, objective_units=True),
    Metric("random", "uniformly random (seeded)",
           _static("random", lambda ctx, gid: random_scores(ctx.analysis, gid, ctx.seed))),
    Metric("l1", "L1 norm of the unit's filters",
           _static("l1", lambda ctx, gid: weight_norm_scores(ctx.analysis, gid, 1))),
    Metric("l2", "L2 norm of the unit's filters",
           _static("l2", lambda ctx, gid: weight_norm_scores(ctx.analysis, gid, 2))),
    Metric("bn_gamma", "|gamma| of the BatchNorm after the unit's producer",
           _static("bn_gamma", lambda ctx, gid: bn_gamma(ctx.analysis, gid))),
    Metric("mean_activation", "mean |activation| of the unit's channels at its consumers",
           _static("mean_activation",
                   lambda ctx, gid: activation_scores(ctx.analysis, ctx.site_stat, gid)),
           needs_data=True, statistic="abs_mean"),
    Metric("apoz", "1 - average percentage of zeros of the unit's channels",
           _static("apoz", lambda ctx, gid: 1 - activation_scores(ctx.analysis, ctx.site_stat, gid)),
           needs_data=True, statistic="zeros"),
    Metric("loo", "leave-one-out: v(all) - v(all without the unit)",
           lambda ctx, gid: leave_one_out(ctx.engine, gid), needs_data=True, needs_engine=True,
           objective_units=True),
    Metric("taylor", "first-order Taylor: finite difference of v on the unit's mask",
           lambda ctx, gid: taylor(ctx.engine, gid), needs_data=True, needs_engine=True,
           objective_units=True),
)
# the metrics the study compares Shapley against
BASELINES: dict[str, Metric] = {k: m for k, m in METRICS.items() if k != DEFAULT_METRIC}
