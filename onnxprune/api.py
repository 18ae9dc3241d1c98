"""The Python API: the pipeline of docs/design.md as two calls, `analyze_model` and `prune`.

    import onnxprune
    result = onnxprune.prune("model.onnx", calib="data.npz", ratio=0.5, metric="l1")
    result.save("model_pruned.onnx")
    print(result.report["after"]["params"])
"""
from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from .calib import Calibration, calibration_from_arrays, input_specs_from_model, load_calibration
from .compiler.analysis import Analysis
from .compiler.cost import count_macs, group_costs
from .deploy.candidates import Choice, Guard, deploy
from .deploy.select import select
from .errors import OnnxPruneError
from .load import save_model
from .model import AnalyzedModel, analyze_model
from .options import PruneOptions, ScoreOptions
from .progress import ProgressFn, emit
from .report import build_report, verify_pruned
from .scoring.metrics import METRICS, ScoreContext
from .scoring.shapley import GroupScores
from .scoring.site_stats import site_means, site_stats

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
                **keywords: Any) -> dict[int, GroupScores]:
    """A score per unit of each group (default: every prunable group). Keywords (metric=,
    seed=, estimator=, ...) amend `options`. `ratio`, the fraction of units the run removes
    (None: not known, scores for any ratio), steers the cut-aware estimators (cutaware,
    adaptive) when `at_cut` says every group is cut at that ratio (kept widths rounded up to
    multiples of `round_to` channels, as selection does)."""
    opts = (options or ScoreOptions()).updated(**keywords).validate()
    metric = METRICS[opts.metric]
    gids = list(groups) if groups is not None else [g.id for g in am.analysis.prunable]
    if metric.needs_data and calib is None:
        raise OnnxPruneError(f"metric '{opts.metric}' needs calibration data (--calib)")
    ctx = _score_context(am, calib, opts, means, ratio if at_cut else None, round_to)
    out: dict[int, GroupScores] = {}
    t0 = time.perf_counter()
    for i, gid in enumerate(gids):
        out[gid] = metric.score(ctx, gid)
        if ctx.engine is not None:
            emit(progress, "score", i + 1, len(gids), evaluations=ctx.engine.evaluations,
                 elapsed=time.perf_counter() - t0)
    if ctx.engine is not None:
        info = ctx.engine.info()
        for g in out.values():
            g.extra["engine"] = {k: info.get(k) for k in ("device", "path", "k_per_run")}
    return out


def _score_context(am: AnalyzedModel, calib: Calibration | None, opts: ScoreOptions,
                   means: Mapping[str, np.ndarray] | None, ratio: float | None,
                   round_to: int = 1) -> ScoreContext:
    """Exactly what the metric's entry says it reads: the engine, a site statistic."""
    metric = METRICS[opts.metric]
    engine = (make_engine(am, calib, value=opts.value, device=opts.device, means=means,
                          max_memory_mb=opts.max_memory_mb) if metric.needs_engine else None)
    stat = None
    if metric.statistic is not None:
        stats = site_stats(am.analysis, am.ident, calib.inputs, device="cpu")
        stat = {tensor: s[metric.statistic] for tensor, s in stats.items()}
    return ScoreContext(am.analysis, opts.seed, opts.estimator, opts.budget, opts.aggregate,
                        ratio, engine, stat, round_to)


def value_function(am: AnalyzedModel, calib: Calibration, value: str | None = None):
    """The named value function, or the default for this model's outputs and labels."""
    from .scoring.value import default_value_function, make_value_function
    first = am.graph.outputs[0].shape or ()
    value_fn = (make_value_function(value) if value else
                default_value_function(calib.labels is not None, first))
    if value_fn.needs_labels and calib.labels is None:
        raise OnnxPruneError(f"value function '{value_fn.name}' needs a 'labels' array in --calib")
    return value_fn


def make_engine(am: AnalyzedModel, calib: Calibration, *, value: str | None = None,
                device: str = "auto", means=None, max_memory_mb: float | None = None):
    from .scoring.engine import Engine
    return Engine(am, calib, value_function(am, calib, value), device=device,
                  max_memory_mb=max_memory_mb, means=means)


def prune(model: str | os.PathLike | onnx.ModelProto | AnalyzedModel,
          calib: str | os.PathLike | Mapping[str, np.ndarray] | Calibration | None = None,
          options: PruneOptions | None = None, *, scores: Mapping[int, np.ndarray] | None = None,
          progress: ProgressFn | None = None, **keywords: Any) -> PruneResult:
    """Score, select, rewrite, verify. Keywords (ratio=, metric=, target=, ...: the fields of
    PruneOptions and ScoreOptions) amend `options`. `ratio` is the fraction of units removed
    per group (or of the model's parameters/MACs with `target`). Compensation and `refit` are
    guarded: each is kept only if it beats plain removal on held-out samples (deploy.py).
    `scores` reuses per-group unit scores instead of scoring."""
    opts = (options or PruneOptions()).updated(**keywords).validate()
    if scores is not None and opts.steps > 1:
        raise OnnxPruneError("--scores cannot be combined with --steps (rounds re-score)")
    am = model if isinstance(model, AnalyzedModel) else analyze_model(model)
    data = as_calibration(calib, am.proto)
    if not am.analysis.prunable:
        raise OnnxPruneError("no prunable channel group in this model (see 'onnxprune analyze')")
    _check_runs(am, opts.score.device, data)
    scoring, held_out, held_note = _split(data, opts.holdout, opts.score.seed)
    guard = (_guard(am, held_out or scoring, held_note, opts.score.value)
             if opts.compensate or opts.refit else None)
    rounds = _prune_rounds(am, opts, scoring, guard, scores, progress)
    seconds = {**am.seconds, **rounds.seconds}
    verification = None
    if data is not None:
        t0 = time.perf_counter()
        emit(progress, "verify", 0, 1)
        verification = verify_pruned(am.proto, rounds.model, held_out or scoring, held_note,
                                     opts.latency)
        seconds["verify"] = time.perf_counter() - t0
    report = build_report(am, rounds.model, rounds.keep, rounds.scores, opts,
                          verification=verification,
                          n_samples=None if data is None else data.n_samples, seconds=seconds,
                          deploy=rounds.deploy if opts.steps > 1 else rounds.deploy[0],
                          reused_scores=scores is not None)
    return PruneResult(rounds.model, report, {g: s.values for g, s in rounds.scores.items()},
                       rounds.keep, am.analysis)


@dataclass
class _Rounds:
    """What the pruning rounds leave for the result and the report."""

    model: onnx.ModelProto  # the last round's shipped model
    keep: dict[int, np.ndarray]  # kept units of the one round ({} after several)
    scores: dict[int, GroupScores]  # scores of the one round ({} after several)
    deploy: list[dict[str, Any]]  # what shipped, per round
    seconds: dict[str, float]  # score<i>, rewrite<i>


def _prune_rounds(am: AnalyzedModel, opts: PruneOptions, scoring: Calibration | None,
                  guard: Guard | None, reused: Mapping[int, np.ndarray] | None, progress: ProgressFn | None) -> _Rounds:
    """`steps` rounds of score -> select -> rewrite, each on the model the last one shipped."""
    deployed: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    for step in range(opts.steps):
        scores, keep, choice, took = _prune_round(am, opts, step, scoring, guard, reused, progress)
        deployed.append(choice.to_json(guard))
        seconds.update(took)
        if opts.steps == 1:
            return _Rounds(choice.model, keep, scores, deployed, seconds)
        am = analyze_model(choice.model)
    return _Rounds(choice.model, {}, {}, deployed, seconds)


def _prune_round(am: AnalyzedModel, opts: PruneOptions, step: int, scoring: Calibration | None,
                 guard: Guard | None, reused: Mapping[int, np.ndarray] | None,
                 progress: ProgressFn | None
                 ) -> tuple[dict[int, GroupScores], dict[int, np.ndarray], Choice, dict[str, float]]:
    """One round: (scores, kept units, the deployed choice, seconds it took)."""
    gids = scored_groups(am, opts.exclude)
    if not gids:
        raise OnnxPruneError("every prunable group is excluded")
    t0 = time.perf_counter()
    means = None
    if opts.compensate and scoring is not None:
        emit(progress, "means", 0, 1)
        means = site_means(am.analysis, am.ident, scoring.inputs, device="cpu")
    emit(progress, "score", 0, len(gids), metric=opts.score.metric, step=step + 1, steps=opts.steps)
    scores = (_reused(am, reused, gids) if reused is not None else
              score_model(am, scoring, opts.score, means=means, ratio=opts.step_ratio(),
                          at_cut=_same_cut(opts), round_to=opts.round_multiple(),
                          groups=gids, progress=progress))
    t1 = time.perf_counter()
    keep = select(am.analysis, {g: s.values for g, s in scores.items()}, opts.step_ratio(),
                  round_to=opts.round_multiple(), target=opts.target, global_=opts.global_)
    emit(progress, "rewrite", 0, 1)
    choice = deploy(am.analysis, am.ident, keep, means=means, guard=guard,
                    refit_data=scoring if opts.refit else None, progress=progress)
    took = {f"score{step + 1}": t1 - t0, f"rewrite{step + 1}": time.perf_counter() - t1}
    return scores, keep, choice, took


def _same_cut(opts: PruneOptions) -> bool:
    """Whether selection cuts every group at the step ratio (not with --global or --target
    params/macs: there the cut falls where the other groups' scores and costs say)."""
    return not opts.global_ and opts.target == "units"


def _guard(am: AnalyzedModel, data: Calibration | None, note: str | None,
           value: str | None) -> Guard | None:
    if data is None:
        return None
    where = "held-out samples" if note and "held-out" in note else "calibration samples (too few to hold out)"
    return Guard(am.proto, data, value_function(am, data, value), f"{data.n_samples} {where}")


def _check_runs(am: AnalyzedModel, device: str, data: Calibration | None) -> None:
    """ONNX Runtime must accept and run the original (on every calibration sample, in the
    batches verification uses: a model may fail only beyond one sample; and unoptimized: ORT's
    rewrites can hide an inconsistency that the folded, pruned model then shows); its refusal
    is the user's to fix (an op it lacks, an unknown IR version, contradictory attributes), so
    it becomes one line. Failures on models we build stay bugs with tracebacks."""
    from .runtime import make_session
    from .deploy.verify import run_batches
    try:
        sess = make_session(am.proto, "cpu" if device == "auto" else device, optimize=False)
        for _ in run_batches(sess, data.inputs) if data is not None else ():
            pass
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
