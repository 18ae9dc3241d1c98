"""The Python API: the pipeline of docs/design.md as two calls, `analyze_model` and `prune`.

    import onnxprune
    result = onnxprune.prune("model.onnx", calib="data.npz", ratio=0.5, metric="l1")
    result.save("model_pruned.onnx")
    print(result.report["after"]["params"])
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from .calib import Calibration, calibration_from_arrays, input_specs_from_model, load_calibration
from .compiler.analysis import Analysis
from .compiler.cost import count_macs, group_costs
from .deploy.candidates import Choice, Guard, deploy_allocations
from .deploy.select import Budget, select
from .errors import OnnxPruneError
from .load import save_model
from .model import AnalyzedModel, analyze_model
from .options import PruneOptions, ScoreOptions
from .progress import ProgressFn, emit
from .report import build_report, verify_pruned
from .scoring.metrics import METRICS, Metric, ScoreContext
from .scoring.plan import (Forward, ScorePlan, fit_time, measure_forward, plan_scoring,
                           refit_seconds, stage_estimates)
from .scoring.shapley import GroupScores
from .scoring.site_stats import (CACHE_BYTES, SiteActivations, means_and_activations,
                                 site_stats)

__all__ = ["AnalyzedModel", "PruneResult", "analyze_model", "prune", "score_model"]


def group_table(am: AnalyzedModel) -> list[dict[str, Any]]:
    """Per group: units, unit size, share of weight params and MACs, prunable or why not."""
    costs = group_costs(am.analysis)
    params = max(1, sum(int(np.prod(t.shape)) for t in _mixing_weights(am)))
    macs = max(1, count_macs(am.graph))
    rows = []
    for g in am.analysis.groups:
        row = g.to_json()
        row["param_share"] = costs[g.id].params / params
        row["mac_share"] = costs[g.id].macs / macs
        rows.append(row)
    return rows


QUANTIZED_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm")
SUBGRAPH_OPS = ("If", "Loop", "Scan")


def no_groups_reason(am: AnalyzedModel) -> str | None:
    """Why the analysis found no channel group at all (None when it found some)."""
    if am.analysis.groups:
        return None
    from .compiler.cost import MIXING
    ops = [n.op for n in am.graph.nodes]
    quantized = sorted({op for op in ops if op in QUANTIZED_OPS})
    if quantized:
        return (f"no channel groups: the model is quantized ({', '.join(quantized)}), and "
                "quantized layers are not pruned; prune the float model, then quantize")
    wrapped = [f"{n.op} '{n.name}'" for n in am.graph.nodes if n.op in SUBGRAPH_OPS]
    if wrapped and not any(op in MIXING for op in ops):
        return (f"no channel groups: the layers are inside the subgraphs of {', '.join(wrapped[:3])}, "
                "which the analysis does not enter; export the model without the control flow")
    return ("no channel groups: no layer with a constant weight (Conv, Gemm, MatMul, ...) "
            "in the main graph")


def _mixing_weights(am: AnalyzedModel):
    from .compiler.cost import MIXING, weight_of
    for node in am.graph.nodes:
        if node.op in MIXING and (w := weight_of(node)) is not None:
            yield w


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: dict[str, Any]
    scores: dict[int, np.ndarray]
    keep: dict[int, np.ndarray]
    analysis: Analysis = field(repr=False)

    def save(self, path: str | os.PathLike) -> None:
        save_model(self.model, path)


def as_calibration(calib: str | os.PathLike | Mapping[str, np.ndarray] | Calibration | None,
                   proto: onnx.ModelProto) -> Calibration | None:
    if calib is None or isinstance(calib, Calibration):
        return calib
    specs = input_specs_from_model(proto)
    if isinstance(calib, Mapping):
        return calibration_from_arrays(calib, specs)
    return load_calibration(calib, specs)


def scored_groups(am: AnalyzedModel, exclude: Sequence[str] = ()) -> list[int]:
    """Prunable groups, less those whose sources (the tensors whose channels they are) or
    producer nodes match an --exclude pattern; a group merely read by a node stays in."""
    out = []
    for g in am.analysis.prunable:
        producers = [m for m in g.members if m.role == "producer"]
        names = [*g.sources, *(m.node for m in producers), *(m.name for m in producers if m.name)]
        if not any(fnmatch.fnmatch(n, p) for p in exclude for n in names):
            out.append(g.id)
    return out


def score_model(am: AnalyzedModel, calib: Calibration | None, options: ScoreOptions | None = None,
                *, means: Mapping[str, np.ndarray] | None = None, ratio: float | None = None,
                at_cut: bool = True, round_to: int = 1,
                groups: Sequence[int] | None = None, progress: ProgressFn | None = None,
                removal: float | None = None, **keywords: Any) -> dict[int, GroupScores]:
    """A score per unit of each group (default: every prunable group). Keywords (metric=,
    seed=, estimator=, ...) amend `options`. `ratio`, the fraction of units the run removes
    (None: not known, scores for any ratio), steers the cut-aware estimators (cutaware,
    adaptive) when `at_cut` says every group is cut at that ratio (kept widths rounded up to
    multiples of `round_to` channels, as selection does). `removal`, the share of each
    group's units the run is expected to remove (default: `ratio` when `at_cut`), sets the
    depth of the truncated estimator.
    With `time_budget_s` the evaluations are planned to fit it (scoring/plan.py)."""
    opts = (options or ScoreOptions()).updated(**keywords).validate()
    return score_planned(am, calib, opts, means=means, ratio=ratio, groups=groups,
                         progress=progress, allowance=_scoring_allowance(opts), at_cut=at_cut,
                         round_to=round_to, removal=removal)[0]


Allowance = Callable[[ScorePlan], "float | None"]


DEFAULT_TIME_CAP_S = 600.0  # without --time-budget, a plan expected to run longer fits this


def _scoring_allowance(opts: ScoreOptions, spent: float = 0.0, steps: int = 1) -> Allowance:
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


def score_planned(am: AnalyzedModel, calib: Calibration | None, opts: ScoreOptions, *,
                  means: Mapping[str, np.ndarray] | None = None, ratio: float | None = None,
                  groups: Sequence[int] | None = None, progress: ProgressFn | None = None,
                  at_cut: bool = True, round_to: int = 1, forward: Forward | None = None, stages: Mapping[str, float] | None = None,
                  spent: Mapping[str, float] | None = None, steps: int = 1,
                  allowance: Allowance | None = None, dry_run: bool = False,
                  step: int = 1, of: int = 1, removal: float | None = None,
                  ) -> tuple[dict[int, GroupScores], ScorePlan | None]:
    """Plan (emitted as a `plan` event before scoring), then score unless `dry_run`.
    `stages` and `spent`: the other stages' expected and already measured seconds; `ratio`,
    `at_cut`, `round_to` and `removal` as for `score_model`."""
    metric = METRICS[opts.metric]
    gids = list(groups) if groups is not None else [g.id for g in am.analysis.prunable]
    if metric.needs_data and calib is None:
        raise OnnxPruneError(f"metric '{opts.metric}' needs calibration data (--calib)")
    if removal is None and at_cut:
        removal = ratio
    if (opts.workers or opts.ray_address) and metric.needs_engine and not dry_run:
        from .scoring.distributed import score_distributed  # the only way Ray gets imported
        return score_distributed(am, calib, opts, gids, context=_score_context, means=means,
                                 ratio=ratio if at_cut else None, removal=removal,
                                 round_to=round_to, progress=progress), None
    t0 = time.perf_counter()
    ctx = _score_context(am, calib, opts, means, ratio if at_cut else None, round_to)
    ctx = dataclasses.replace(ctx, removal=removal)
    t1 = time.perf_counter()
    plan = plan_scoring(ctx.engine, am.analysis, gids, metric=opts.metric,
                        estimator=opts.estimator, budget=opts.budget, aggregate=opts.aggregate,
                        forward=forward, removal=removal)
    plan.measured_s = {**(spent or {}), "engine": t1 - t0, "plan": time.perf_counter() - t1}
    plan.stages, plan.steps, plan.time_budget_s = dict(stages or {}), steps, opts.time_budget_s
    if allowance is not None and (seconds := allowance(plan)) is not None:
        fit_time(plan, seconds)
        if plan.scoring_samples is not None and ctx.engine is not None:
            ctx.engine.use_samples(plan.scoring_samples)  # the minimum did not fit otherwise
    emit(progress, "plan", 0, 0, plan=plan.to_json())
    if dry_run:
        return {}, plan
    emit(progress, "score", 0, len(gids), metric=opts.metric, step=step, steps=of)
    if ctx.engine is None:
        return _score_groups(ctx, metric, gids, plan, progress), plan
    before = ctx.engine.evaluations
    ctx = dataclasses.replace(ctx, budgets=plan.budgets())
    ctx.engine.expected.update(plan.budgets())  # after fit_time: what K tuning may spend
    out = _score_groups(ctx, metric, gids, plan, progress)
    plan.spent_evaluations = ctx.engine.evaluations - before
    return out, plan


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


def _score_context(am: AnalyzedModel, calib: Calibration | None, opts: ScoreOptions,
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
    from .scoring.value import default_value_function, make_value_function
    tensors = [t for t in am.graph.outputs if t.name not in am.ident.io_types]  # as scored
    first = (tensors[0].shape if tensors else None) or ()
    value_fn = (make_value_function(value) if value else
                default_value_function(calib.labels is not None, first))
    if value_fn.needs_labels and calib.labels is None:
        raise OnnxPruneError(f"value function '{value_fn.name}' needs a 'labels' array in --calib")
    return value_fn


def make_engine(am: AnalyzedModel, calib: Calibration, *, value: str | None = None,
                device: str = "auto", means=None, max_memory_mb: float | None = None,
                threads: int | None = None):
    from .scoring.engine import Engine
    return Engine(am, calib, value_function(am, calib, value), device=device,
                  max_memory_mb=max_memory_mb, means=means, threads=threads)


def prune(model: str | os.PathLike | onnx.ModelProto | AnalyzedModel,
          calib: str | os.PathLike | Mapping[str, np.ndarray] | Calibration | None = None,
          options: PruneOptions | None = None, *, scores: Mapping[int, np.ndarray] | None = None,
          progress: ProgressFn | None = None, **keywords: Any) -> PruneResult:
    """Score, select, rewrite, verify. Keywords (ratio=, metric=, target=, ...: the fields of
    PruneOptions and ScoreOptions) amend `options`. `ratio` is the fraction of units removed
    per group (or of the model's parameters/MACs with `target`). Compensation and `refit` are
    guarded: each is kept only if it beats plain removal on held-out samples (deploy.py).
    `scores` reuses per-group unit scores instead of scoring. Before scoring, the plan
    (scoring/plan.py) is emitted as a `plan` progress event; the report's `plan` holds it with
    what each stage actually took."""
    opts, am, data, run = _prepare(model, calib, options, scores, keywords)
    guard = (_guard(am, run.held_out or run.scoring, run.held_note, opts.score.value)
             if opts.compensate or opts.refit or not opts.uniform else None)
    run.spent["check"] = time.perf_counter() - run.t0
    rounds = _prune_rounds(am, opts, run, guard, scores, progress)
    rounds.model = _shipped(am, rounds.model)
    seconds = {**am.seconds, **rounds.seconds}
    verification = None
    if data is not None:
        t0 = time.perf_counter()
        emit(progress, "verify", 0, 1)
        held = run.held_out or run.scoring
        verification = verify_pruned(am.source or am.proto, rounds.model, held, run.held_note, opts.latency,
                                     opts.min_fidelity, want=guard.reference
                                     if guard is not None and guard.data is held else None,
                                     output_kinds=opts.output_kinds())
        seconds["verify"] = rounds.stage_s["verify"] = time.perf_counter() - t0
    report = build_report(am, rounds.model, rounds.keep, rounds.scores, opts,
                          verification=verification,
                          n_samples=None if data is None else data.n_samples, seconds=seconds,
                          deploy=rounds.deploy if opts.steps > 1 else rounds.deploy[0],
                          reused_scores=scores is not None)
    if rounds.plan is not None:
        report["plan"] = _plan_report(rounds.plan, {**run.spent, **rounds.stage_s}, rounds.evaluations)
    if am.batch_note is not None:
        report["batch_twin"] = {"used": am.source is not None, "note": am.batch_note}
    report["warnings"] = [*(data.warnings if data is not None else []),
                          *([am.batch_note] if am.batch_note and am.source is None else []),
                          *_fallback_warnings(am, opts, rounds.scores)]
    report["removed"] = {k: round(v, 6) for k, v in rounds.removed.items()}
    return PruneResult(rounds.model, report, {g: s.values for g, s in rounds.scores.items()},
                       rounds.keep, am.analysis)


def plan_prune(model: str | os.PathLike | onnx.ModelProto | AnalyzedModel,
               calib: str | os.PathLike | Mapping[str, np.ndarray] | Calibration | None = None,
               options: PruneOptions | None = None, *, progress: ProgressFn | None = None,
               **keywords: Any) -> ScorePlan:
    """What `prune` with these arguments would do and cost (`--dry-run`): the first round's
    plan, measured on the engine as `prune` measures it, with nothing scored or written."""
    opts, am, data, run = _prepare(model, calib, options, None, keywords)
    if opts.compensate or opts.refit:
        _guard(am, run.held_out or run.scoring, run.held_note, opts.score.value)
    run.spent["check"] = time.perf_counter() - run.t0
    return _round_plan(am, opts, run, 0, progress, dry_run=True)[1]


def with_batch_twin(am: AnalyzedModel, data: Calibration | None) -> AnalyzedModel:
    """A model whose inputs have the literal batch 1 is analysed, scored and pruned as its
    batch-symbolic twin when that is proven to run each sample as the model does
    (fixedbatch.batch_twin); else as it is, with the reason kept for the report. `prune`,
    `plan_prune` and `onnxprune score` all call it, so reused scores name the same groups."""
    from .scoring.fixedbatch import batch_twin, literal_batch_one
    if data is None or am.source is not None or not literal_batch_one(am.proto):
        return am
    twin, why = batch_twin(am.proto, data.inputs)
    if twin is None:
        return dataclasses.replace(am, batch_note=f"batch-1 model scored one sample per run: a "
                                                  f"batch-symbolic copy was refused ({why})")
    seconds = dict(am.seconds)
    t0 = time.perf_counter()
    twin_am = analyze_model(twin)
    seconds["twin"] = time.perf_counter() - t0
    return dataclasses.replace(twin_am, path=am.path, seconds=seconds, source=am.proto,
                               batch_note=f"batch-1 model scored as a batch-symbolic copy ({why})")


def _shipped(am: AnalyzedModel, model: onnx.ModelProto) -> onnx.ModelProto:
    """The model to ship: the user's interface (a twin's source's batch-1 inputs)."""
    from .scoring.fixedbatch import with_batch_one
    if am.source is None:
        return model
    return am.source if model is am.proto else with_batch_one(model, am.source)


@dataclass
class _Run:
    """What every round reads: the samples, the measured forward pass, the time spent so far."""

    scoring: Calibration | None
    held_out: Calibration | None
    held_note: str | None
    forward: Forward | None
    t0: float  # when the checks began (they count as the stage `check`)
    spent: dict[str, float]  # measured seconds of the stages before the rounds


def _prepare(model: Any, calib: Any, options: PruneOptions | None,
             scores: Mapping[int, np.ndarray] | None, keywords: Mapping[str, Any]):
    """Options, analysed model, calibration, checks, the split and one timed forward pass."""
    opts = (options or PruneOptions()).updated(**keywords).validate()
    if scores is not None and opts.steps > 1:
        raise OnnxPruneError("--scores cannot be combined with --steps (rounds re-score)")
    am = (model if isinstance(model, AnalyzedModel)
          else analyze_model(model, prune_cache=opts.prune_cache))
    if am.analysis.prune_cache != opts.prune_cache:
        raise OnnxPruneError(f"the model was analysed with prune_cache={am.analysis.prune_cache}; "
                             f"analyze_model(..., prune_cache={opts.prune_cache}) to match the options")
    _check_output_kinds(am.proto, opts.output_kinds())
    t0 = time.perf_counter()
    data = as_calibration(calib, am.proto)
    am = with_batch_twin(am, data)
    if not am.analysis.prunable:
        why = no_groups_reason(am)
        raise OnnxPruneError("no prunable channel group in this model" +
                             (why.replace("no channel groups", "") if why else
                              " (see 'onnxprune analyze')"))
    forward = _check_runs(am, opts.score.device, data)
    scoring, held_out, held_note = _split(data, opts.holdout, opts.score.seed)
    return opts, am, data, _Run(scoring, held_out, held_note, forward, t0, dict(am.seconds))


def _check_output_kinds(proto: onnx.ModelProto, kinds: Mapping[str, str]) -> None:
    """--output-kind names outputs of this model, with a kind their known rank fits."""
    from .deploy.verify import kind_misfit, tensor_output_names
    outputs = {o.name: o for o in proto.graph.output}
    for name, kind in kinds.items():
        if name not in tensor_output_names(proto):
            raise OnnxPruneError(f"--output-kind {name}={kind}: the model has no tensor output "
                                 f"'{name}' (its outputs: {', '.join(outputs)})")
        tensor = outputs[name].type.tensor_type
        if tensor.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            if (why := kind_misfit(kind, dims)) is not None:
                raise OnnxPruneError(f"--output-kind {name}={kind}: {why}")


def _round_stages(am: AnalyzedModel, gids: list[int], opts: PruneOptions, run: _Run, step: int,
                  means_done: bool, acts: SiteActivations | None = None) -> dict[str, float]:
    """Expected seconds of the stages after this round's scoring, to the end of the command
    (`acts`: the means pass's kept activations, on which one refit layer is timed)."""
    if run.forward is None:
        return {}
    refit_s = (refit_seconds(am.analysis, gids, opts.step_ratio(), run.scoring.n_samples,
                             _refit_timer(am, gids, opts.step_ratio(), run, acts))
               if opts.refit else 0.0)
    est = stage_estimates(run.forward, scoring=run.scoring.n_samples,
                          held=(run.held_out or run.scoring).n_samples,
                          compensate=opts.compensate, refit=opts.refit, latency=opts.latency,
                          refit_s=refit_s, allocations=_allocation_count(opts),
                          refit_pass=acts is None)
    left = opts.steps - step
    out = {"rewrite": est["rewrite"] * left, "verify": est["verify"]}
    if "means" in est:
        out["means"] = est["means"] * (left - 1 if means_done else left)
    return out


def _refit_timer(am: AnalyzedModel, gids: list[int], ratio: float, run: _Run,
                 acts: SiteActivations | None) -> Callable[[str], "float | None"] | None:
    """Times the refit of one layer (on the kept activations, else on its tensor computed
    for it), each scored group cut to `ratio` of its channels (which ones does not matter
    for the time)."""
    if run.scoring is None:
        return None
    from .deploy.refit import time_layer
    keep = np.ones(len(am.analysis.ch_group), dtype=bool)
    for g in gids:
        channels = np.flatnonzero(am.analysis.ch_group == g)
        keep[channels[int(round((1 - ratio) * len(channels))):]] = False
    return lambda node: time_layer(am.analysis, am.ident, keep, run.scoring.inputs, acts, node)


def _allocation_count(opts: PruneOptions) -> int:
    """Allocations deployed per round (`_allocations`): the global one and, under the guard,
    the uniform fallback (fewer when they coincide)."""
    guarded = opts.compensate or opts.refit or not opts.uniform
    return 1 if opts.uniform or not guarded else 2


def _plan_report(plan: ScorePlan, actual: Mapping[str, float], evaluations: int) -> dict[str, Any]:
    """The plan of the first round, with what each stage and the whole run actually took."""
    doc = plan.to_json()
    doc["actual_s"] = {k: round(v, 4) for k, v in actual.items()}
    doc["actual_total_s"] = round(sum(actual.values()), 4)
    doc["actual_evaluations"] = evaluations
    return doc


@dataclass
class _Rounds:
    """What the pruning rounds leave for the result and the report."""

    model: onnx.ModelProto  # the last round's shipped model
    keep: dict[int, np.ndarray]  # kept units of the one round ({} after several)
    scores: dict[int, GroupScores]  # scores of the one round ({} after several)
    deploy: list[dict[str, Any]]  # what shipped, per round
    seconds: dict[str, float]  # score<i>, rewrite<i>
    plan: ScorePlan | None = None  # the first round's
    stage_s: dict[str, float] = field(default_factory=dict)  # per plan stage, rounds summed
    evaluations: int = 0
    removed: dict[str, float] = field(default_factory=dict)  # of the prunable cost, all rounds


def _prune_rounds(am: AnalyzedModel, opts: PruneOptions, run: _Run, guard: Guard | None,
                  reused: Mapping[int, np.ndarray] | None, progress: ProgressFn | None) -> _Rounds:
    """`steps` rounds of score -> select -> rewrite, each on the model the last one shipped."""
    out = _Rounds(None, {}, {}, [], {})  # type: ignore[arg-type]
    left = {"units": 1.0, "params": 1.0, "macs": 1.0}  # of the prunable cost, over rounds
    first_run = run
    for step in range(opts.steps):
        scores, keep, choice, plan = _prune_round(am, opts, step, run, guard, reused, progress, out)
        out.deploy.append(choice.to_json(guard))
        out.model, out.plan = choice.model, out.plan or plan
        # rounds compose: each removes a fraction of what the previous one left
        fractions = Budget(am.analysis, _round_groups(am, opts)).fractions(keep)
        left = {k: v * (1 - fractions[k]) for k, v in left.items()}
        out.removed = {k: 1 - v for k, v in left.items()}
        if opts.steps == 1:
            out.keep, out.scores = keep, scores
            return out
        am = analyze_model(choice.model, prune_cache=opts.prune_cache)
        run = _narrowed(first_run, choice.model)
    return out


def _narrowed(run: _Run, model: onnx.ModelProto) -> _Run:
    """The next round's scoring samples for `model`: the past of the heads it kept when its
    heads shrank the key-value cache (--prune-cache); the guard keeps the original's."""
    from .compiler.cache import cache_heads, narrow_feeds
    if run.scoring is None or not cache_heads(model):
        return run
    scoring = dataclasses.replace(run.scoring, inputs=narrow_feeds(model, run.scoring.inputs))
    return dataclasses.replace(run, scoring=scoring)


def _prune_round(am: AnalyzedModel, opts: PruneOptions, step: int, run: _Run,
                 guard: Guard | None, reused: Mapping[int, np.ndarray] | None,
                 progress: ProgressFn | None, rounds: _Rounds,
                 ) -> tuple[dict[int, GroupScores], dict[int, np.ndarray], Choice, ScorePlan | None]:
    """One round: (scores, kept units, the deployed choice, its plan); adds what it took to
    `rounds` (seconds, per-stage seconds, evaluations)."""
    t0 = time.perf_counter()
    if opts.ratio == 0:  # nothing to remove: no scoring either, the original ships
        keep = {g: np.arange(am.analysis.group(g).units) for g in _round_groups(am, opts)}
        return {}, keep, Choice(am.proto, "original"), None
    if reused is not None:  # no scoring, but compensation still needs the means
        scores, plan = _reused(am, reused, _round_groups(am, opts)), None
        means, acts = _means(am, opts, run, progress)
        took = {"means": time.perf_counter() - t0}
    else:
        scores, plan, means, acts = _round_plan(am, opts, run, step, progress)
        measured = plan.measured_s if plan is not None else {}  # None: scored on Ray workers
        took = {k: v for k, v in measured.items() if k in ("means", "engine", "plan")}
        took["scoring"] = time.perf_counter() - t0 - sum(took.values())
        rounds.evaluations += (plan.spent_evaluations or 0) if plan is not None else 0
    t1 = time.perf_counter()
    keeps = _allocations(am, opts, {g: s.values for g, s in scores.items()}, guard is not None)
    keep = next(iter(keeps.values()))
    emit(progress, "rewrite", 0, 1)
    if all(all(len(k[g]) == am.analysis.group(g).units for g in k) for k in keeps.values()):
        # nothing removed (rounding kept every unit): the original ships as it is, not a
        # re-exported copy with a no-op compensation
        rounds.seconds[f"score{step + 1}"] = t1 - t0
        return scores, keep, Choice(am.proto, "original"), plan
    choice = deploy_allocations(am.analysis, am.ident, keeps, means=means, guard=guard,
                                refit_data=run.scoring if opts.refit else None, progress=progress,
                                activations=acts)
    keep = dict(choice.keep)
    took["rewrite"] = time.perf_counter() - t1
    for k, v in took.items():
        rounds.stage_s[k] = rounds.stage_s.get(k, 0.0) + v
    rounds.seconds.update({f"score{step + 1}": t1 - t0, f"rewrite{step + 1}": took["rewrite"]})
    return scores, keep, choice, plan


def _allocations(am: AnalyzedModel, opts: PruneOptions, scores: Mapping[int, np.ndarray],
                 guarded: bool) -> dict[str, dict[int, np.ndarray]]:
    """The kept units of the global allocation and, as the guard's fallback, of the uniform
    one at the same budget (or only the uniform one with `uniform`)."""
    normalize = not METRICS[opts.score.metric].objective_units
    kw = dict(round_to=opts.round_multiple(), target=opts.target, min_keep=opts.step_min_keep(),
              normalize=normalize)

    def allocate(uniform: bool) -> dict[int, np.ndarray]:
        return select(am.analysis, scores, opts.step_ratio(), uniform=uniform, **kw)

    if opts.uniform:
        return {"uniform": allocate(True)}
    return {"global": allocate(False), "uniform": allocate(True)} if guarded else {"global": allocate(False)}


def _means(am: AnalyzedModel, opts: PruneOptions, run: _Run, progress: ProgressFn | None
           ) -> tuple[dict[str, np.ndarray] | None, SiteActivations | None]:
    """The mask sites' means and, for the refit, the activations they came from (when the
    refit runs and they are small enough to keep)."""
    if not opts.compensate or run.scoring is None:
        return None, None
    emit(progress, "means", 0, 1)
    means, acts = means_and_activations(am.analysis, am.ident, run.scoring.inputs, device="cpu",
                                        max_bytes=CACHE_BYTES if opts.refit else 0)
    return means, acts if opts.refit else None


def _round_groups(am: AnalyzedModel, opts: PruneOptions) -> list[int]:
    gids = scored_groups(am, opts.exclude)
    if not gids:
        raise OnnxPruneError("every prunable group is excluded")
    return gids


def _round_plan(am: AnalyzedModel, opts: PruneOptions, run: _Run, step: int,
                progress: ProgressFn | None, dry_run: bool = False,
                ) -> tuple[dict[int, GroupScores], ScorePlan | None, dict[str, np.ndarray] | None,
                           SiteActivations | None]:
    """Means (and the activations they came from), the engine, the plan (emitted), then,
    unless `dry_run`, the scores."""
    gids = _round_groups(am, opts)
    t0 = time.perf_counter()
    means, acts = _means(am, opts, run, progress)
    stages = _round_stages(am, gids, opts, run, step, means_done=True, acts=acts)
    # "means" holds the refit layer timed for the estimate too (measured, not lost in scoring)
    spent = {**(run.spent if step == 0 else {}), "means": time.perf_counter() - t0}
    # later rounds: what the command took before this round (the plan's measured_s has the rest)
    elapsed = t0 - run.t0 + sum(v for k, v in run.spent.items() if k != "check") if step else 0.0
    scores, plan = score_planned(
        am, run.scoring, opts.score, means=means, ratio=opts.step_ratio(), groups=gids,
        progress=progress, forward=run.forward, spent=spent,
        stages=stages, steps=opts.steps - step,
        allowance=_scoring_allowance(opts.score, elapsed, opts.steps - step), dry_run=dry_run,
        step=step + 1, of=opts.steps, at_cut=_same_cut(opts), round_to=opts.round_multiple(),
        removal=_unit_share(opts))
    return scores, plan, means, acts


def _unit_share(opts: PruneOptions) -> float:
    """The share of each group's units a round is expected to remove, for the depth of the
    truncated game: the step ratio of units, or, for a params/MACs budget, the width cut that
    removes that share of a conv chain's cost (both ends of its weights shrink: 1-(1-R)^0.5)."""
    r = opts.step_ratio()
    return r if opts.target == "units" else 1 - (1 - r) ** 0.5


def _fallback_warnings(am: AnalyzedModel, opts: PruneOptions,
                       scores: Mapping[int, GroupScores]) -> list[str]:
    """`--estimator auto` scores with the fallback sampler where per-sample coalitions cannot
    be evaluated: say so, with the reason (README, Limits)."""
    from .scoring.shapley import DEFAULT_ESTIMATOR, FALLBACK_ESTIMATOR
    fell = [g for g, s in scores.items() if s.method == f"shapley/{FALLBACK_ESTIMATOR}"]
    if opts.score.estimator != "auto" or not fell:
        return []
    why = (f"--aggregate {opts.score.aggregate}" if opts.score.aggregate != "mean" else
           "the model mixes samples (" + ", ".join(am.analysis.batch_mixing[:3]) + ")"
           if am.analysis.batch_mixing else "the engine cannot evaluate per-sample coalitions")
    return [f"{len(fell)} group(s) scored with the {FALLBACK_ESTIMATOR} estimator instead of "
            f"{DEFAULT_ESTIMATOR}: {why}; its rankings are noisier at the same budget, "
            "raise --budget"]


def _same_cut(opts: PruneOptions) -> bool:
    """Whether selection cuts every group at the step ratio: only with --uniform --target
    units (a budget's global allocation puts the cut where scores and costs say)."""
    return opts.uniform and opts.target == "units"


def _guard(am: AnalyzedModel, data: Calibration | None, note: str | None,
           value: str | None) -> Guard | None:
    if data is None:
        return None
    where = "held-out samples" if note and "held-out" in note else "calibration samples (too few to hold out)"
    return Guard(am.proto, data, value_function(am, data, value), f"{data.n_samples} {where}")


def _check_runs(am: AnalyzedModel, device: str, data: Calibration | None) -> Forward | None:
    """ONNX Runtime must accept and run the original (on every calibration sample, in the
    batches verification uses: a model may fail only beyond one sample; and unoptimized: ORT's
    rewrites can hide an inconsistency that the folded, pruned model then shows); its refusal
    is the user's to fix (an op it lacks, an unknown IR version, contradictory attributes), so
    it becomes one line. Also optimized, as the guard and verification run it (ORT's optimizer
    can throw at initialization on a model the checker accepts): on the CPU the timed forward
    pass of the plan is that check (one session and pass for both); on another device, one
    batch there. Failures on models we build stay bugs with tracebacks. Returns the timed
    forward pass (None without data)."""
    from .runtime import make_session
    from .deploy.verify import run_batches
    device = "cpu" if device == "auto" else device
    with _ort_errors():
        sess = make_session(am.proto, device, optimize=False)
        for _ in run_batches(sess, data.inputs) if data is not None else ():
            pass
        del sess
        if device != "cpu" or data is None:
            sess = make_session(am.proto, device)
            if data is not None:
                next(run_batches(sess, data.inputs), None)
            del sess
        return measure_forward(am.proto, data.inputs) if data is not None else None


@contextlib.contextmanager
def _ort_errors() -> Iterator[None]:
    """ONNX Runtime's refusal of the user's model as one line (an OnnxPruneError)."""
    try:
        yield
    except OnnxPruneError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types
        if type(exc).__module__.startswith("onnxruntime"):
            first = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
            raise OnnxPruneError(f"ONNX Runtime cannot run this model: {first}") from None
        raise


def _reused(am: AnalyzedModel, scores: Mapping[int, Any], gids: list[int]) -> dict[int, GroupScores]:
    out = {}
    for gid in gids:
        if gid not in scores:
            continue
        values = np.asarray(scores[gid], dtype=np.float64)
        if values.shape != (am.analysis.group(gid).units,):
            raise OnnxPruneError(f"--scores: group {gid} has {values.size} scores but "
                                 f"{am.analysis.group(gid).units} units; rescore this model")
        out[gid] = GroupScores(gid, values, method="reused")
    return out


def _split(data: Calibration | None, holdout: float, seed: int):
    """(scoring samples, held-out samples or None, a note for the report)."""
    if data is None:
        return None, None, None
    if data.n_samples < 8 or holdout == 0:
        return data, None, (f"verified on the {data.n_samples} calibration samples "
                            "(too few to hold some out)" if holdout else "verified on the calibration samples")
    scoring, held = data.split(holdout, seed)
    return scoring, held, f"verified on {held.n_samples} held-out samples not used for scoring"
