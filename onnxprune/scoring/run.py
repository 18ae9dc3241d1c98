"""The scoring run: the engine and the site statistics a metric reads, the plan (fitted to
the time budget, emitted as a `plan` event), then the scores of each group with progress
events. `api.score_model` is one run; each round of `prune` is another (pipeline.py)."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from ..calib import Calibration
from ..errors import OnnxPruneError
from ..model import AnalyzedModel
from ..options import ScoreOptions
from ..progress import ProgressFn, emit
from .metrics import METRICS, Metric, ScoreContext
from .plan import Forward, ScorePlan, fit_time, plan_scoring
from .shapley import GroupScores
from .site_stats import site_stats

Allowance = Callable[[ScorePlan], "float | None"]


DEFAULT_TIME_CAP_S = 600.0  # without --time-budget, a plan expected to run longer fits this


def scoring_allowance(opts: ScoreOptions, spent: float = 0.0, steps: int = 1) -> Allowance:
    """Seconds a round's scoring may take: the time budget less what is spent and what the
    plan expects of the other stages (rounds still to come included), shared by the rounds.
    Without a time budget, a plan expected to take longer than DEFAULT_TIME_CAP_S is fitted
    to it (a deployment pipeline must not wait hours by default; the plan says so);
    `--time-budget inf` scores at the full budget however long it takes."""
    def allowance(plan: ScorePlan) -> float | None:
        budget = opts.time_budget_s
        if budget is not None and math.isinf(budget):
            return None
        if budget is None:
            if spent + plan.total_s <= DEFAULT_TIME_CAP_S:
                return None
            budget = plan.time_budget_s = DEFAULT_TIME_CAP_S
            plan.warnings.append(
                f"the whole command was expected to take ~{_minutes(spent + plan.total_s)}: "
                f"scoring fitted to the default {DEFAULT_TIME_CAP_S / 60:g} minutes (fewer "
                "evaluations, ranks less certain: see wrong_side per group); --time-budget "
                "MINUTES to choose, --time-budget inf for the full budget")
        others = sum(v for k, v in plan.expected().items() if k != "scoring")
        return (budget - spent - others) / steps
    return allowance


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class ExpectedCut:
    """Where selection is expected to cut the groups (not the model's prefix/suffix cut of
    cut.py): what the cut-aware and truncated estimators are steered by."""

    ratio: float | None = None  # the fraction of units the run removes (None: not known)
    at_cut: bool = True  # whether every group is cut at `ratio` (--uniform --target units)
    round_to: int = 1  # kept widths rounded up to multiples of this many channels, as selected
    removal: float | None = None  # each group's expected share removed (None: `ratio` at_cut)

    @property
    def steering(self) -> float | None:
        """The ratio the cut-aware estimators (cutaware, adaptive) read: only a common cut."""
        return self.ratio if self.at_cut else None

    @property
    def share(self) -> float | None:
        """The depth of the truncated estimator: `removal`, else the common cut's ratio."""
        return self.ratio if self.removal is None and self.at_cut else self.removal


@dataclass(frozen=True)
class Round:
    """Where this scoring run sits in the command (one round of `prune`, or all of
    `score_model`): what the plan reads beside the engine, and what the events say."""

    forward: Forward | None = None  # the timed forward pass the plan's estimates scale
    stages: Mapping[str, float] = field(default_factory=dict)  # the other stages' expected s
    spent: Mapping[str, float] = field(default_factory=dict)  # the stages' measured s so far
    left: int = 1  # rounds still to run, this one included
    step: int = 1  # this round's number, of `of` (the `score` event)
    of: int = 1
    allowance: Allowance | None = None  # seconds the scoring may take, given the plan
    dry_run: bool = False  # plan (and emit it) without scoring


def score_planned(am: AnalyzedModel, calib: Calibration | None, opts: ScoreOptions,
                  cut: ExpectedCut = ExpectedCut(), round_: Round = Round(), *,
                  groups: Sequence[int] | None = None,
                  means: Mapping[str, np.ndarray] | None = None,
                  progress: ProgressFn | None = None,
                  ) -> tuple[dict[int, GroupScores], ScorePlan | None]:
    """Plan (emitted as a `plan` event before scoring), then score `groups` (default: every
    prunable group) unless `round_.dry_run`. `means`: the mask sites' calibration means,
    which the engine's value reads (mean compensation)."""
    metric = METRICS[opts.metric]
    gids = list(groups) if groups is not None else [g.id for g in am.analysis.prunable]
    if metric.needs_data and calib is None:
        raise OnnxPruneError(f"metric '{opts.metric}' needs calibration data (--calib)")
    if (opts.workers or opts.ray_address) and metric.needs_engine and not round_.dry_run:
        from .distributed import score_distributed  # the only way Ray gets imported
        return score_distributed(am, calib, opts, gids, context=score_context, means=means,
                                 ratio=cut.steering, removal=cut.share,
                                 round_to=cut.round_to, progress=progress), None
    t0 = time.perf_counter()
    ctx = score_context(am, calib, opts, means, cut.steering, cut.round_to)
    ctx = dataclasses.replace(ctx, removal=cut.share)
    plan = _plan(ctx, am, gids, opts, cut, round_, t0)
    emit(progress, "plan", 0, 0, plan=plan.to_json())
    if round_.dry_run:
        return {}, plan
    emit(progress, "score", 0, len(gids), metric=opts.metric, step=round_.step, steps=round_.of)
    if ctx.engine is None:
        return _score_groups(ctx, metric, gids, plan, progress), plan
    before = ctx.engine.evaluations
    ctx = dataclasses.replace(ctx, budgets=plan.budgets())
    ctx.engine.expected.update(plan.budgets())  # after fit_time: what K tuning may spend
    out = _score_groups(ctx, metric, gids, plan, progress)
    plan.spent_evaluations = ctx.engine.evaluations - before
    return out, plan


def _plan(ctx: ScoreContext, am: AnalyzedModel, gids: list[int], opts: ScoreOptions,
          cut: ExpectedCut, round_: Round, t0: float) -> ScorePlan:
    """The plan of this run, fitted to its allowance (`t0`: when the engine's setup began)."""
    t1 = time.perf_counter()
    plan = plan_scoring(ctx.engine, am.analysis, gids, metric=opts.metric,
                        estimator=opts.estimator, budget=opts.budget, aggregate=opts.aggregate,
                        forward=round_.forward, removal=cut.share,
                        curve=cut.share is not None and cut.steering is None)  # as _shapley
    plan.measured_s = {**round_.spent, "engine": t1 - t0, "plan": time.perf_counter() - t1}
    plan.stages, plan.steps, plan.time_budget_s = dict(round_.stages), round_.left, opts.time_budget_s
    if round_.allowance is not None and (seconds := round_.allowance(plan)) is not None:
        fit_time(plan, seconds)
        if plan.scoring_samples is not None and ctx.engine is not None:
            ctx.engine.use_samples(plan.scoring_samples)  # the minimum did not fit otherwise
    return plan


_PROGRESS_S = 2.0  # a score event at least this often within a long group


def _score_groups(ctx: ScoreContext, metric: Metric, gids: list[int], plan: ScorePlan,
                  progress: ProgressFn | None) -> dict[int, GroupScores]:
    out: dict[int, GroupScores] = {}
    t0 = last = time.perf_counter()
    engine, by_gid = ctx.engine, {g.gid: g for g in plan.groups}
    start = engine.evaluations if engine is not None else 0
    finished = [0.0, start]  # planned seconds of the finished groups, evaluations at the last

    def report(done: int, evaluations: int) -> None:
        current = by_gid.get(gids[done]) if done < len(gids) else None
        expected = finished[0] + (min(current.seconds, current.setup_s + (evaluations - finished[1])
                                      * current.seconds_per_evaluation) if current else 0.0)
        emit(progress, "score", done, len(gids), evaluations=evaluations - start,
             evaluations_planned=plan.evaluations, expected_s=plan.scoring_s,
             expected_done_s=expected, elapsed=time.perf_counter() - t0)

    def within(evaluations: int) -> None:
        nonlocal last
        if time.perf_counter() - last >= _PROGRESS_S:
            last = time.perf_counter()
            report(len(out), evaluations)

    if engine is not None:
        engine.on_values = within
    try:
        for gid in gids:
            out[gid] = metric.score(ctx, gid)
            if engine is not None:
                finished[:] = [finished[0] + (by_gid[gid].seconds if gid in by_gid else 0.0),
                               engine.evaluations]
                last = time.perf_counter()
                report(len(out), engine.evaluations)
    finally:
        if engine is not None:
            engine.on_values = None
    if engine is not None:
        info = engine.info()
        for g in out.values():
            g.extra["engine"] = {k: info.get(k) for k in ("device", "path", "k_per_run")}
    return out


def score_context(am: AnalyzedModel, calib: Calibration | None, opts: ScoreOptions,
                   means: Mapping[str, np.ndarray] | None, ratio: float | None,
                   round_to: int = 1, threads: int | None = None) -> ScoreContext:
    """Exactly what the metric's entry says it reads: the engine, a site statistic.
    `threads`: ONNX Runtime threads (a Ray worker gets its share of the node's cores)."""
    metric = METRICS[opts.metric]
    engine = (make_engine(am, calib, value=opts.value, device=opts.device, means=means,
                          max_memory_mb=opts.max_memory_mb, threads=threads)
              if metric.needs_engine else None)
    stat = None
    if metric.statistic is not None:
        stats = site_stats(am.analysis, am.ident, calib.inputs, device="cpu")
        stat = {tensor: s[metric.statistic] for tensor, s in stats.items()}
    return ScoreContext(am.analysis, opts.seed, opts.estimator, opts.budget, opts.aggregate,
                        ratio, engine, stat, round_to)


def value_function(am: AnalyzedModel, calib: Calibration, value: str | None = None):
    """The named value function, or the default for this model's outputs and labels."""
    from .value import default_value_function, make_value_function
    tensors = [t for t in am.graph.outputs if t.name not in am.ident.io_types]  # as scored
    first = (tensors[0].shape if tensors else None) or ()
    value_fn = (make_value_function(value) if value else
                default_value_function(calib.labels is not None, first,
                                       _class_box_outputs(am, [t.name for t in tensors])))
    if value_fn.needs_labels and calib.labels is None:
        raise OnnxPruneError(f"value function '{value_fn.name}' needs a 'labels' array in --calib")
    return value_fn


def _class_box_outputs(am: AnalyzedModel, names: list[str]) -> list[int]:
    """Indices of the scored outputs the graph reads as YOLOv8's boxes and classes (the
    quality gate's own reading, so that the two judge such an output alike)."""
    from ..deploy.verify import graph_kinds  # the deploy stage's reading of outputs
    if not any(t.shape is None or len(t.shape) == 3 for t in am.graph.outputs if t.name in names):
        return []  # no shape inference where no output can be one
    kinds = graph_kinds(am.proto)
    return [i for i, name in enumerate(names)
            if name in kinds and kinds[name].kind == "class_boxes"]


def make_engine(am: AnalyzedModel, calib: Calibration, *, value: str | None = None,
                device: str = "auto", means=None, max_memory_mb: float | None = None,
                threads: int | None = None):
    from .engine import Engine
    return Engine(am, calib, value_function(am, calib, value), device=device,
                  max_memory_mb=max_memory_mb, means=means, threads=threads)
