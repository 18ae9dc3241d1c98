"""The Python API: the pipeline of docs/design.md as two calls, `analyze_model` and `prune`.
The facade: it checks the user's arguments and builds the result and the report; the work
is behind it, in `scoring/run.py` (a scoring run) and `pipeline.py` (the rounds of `prune`).

    import onnxprune
    result = onnxprune.prune("model.onnx", calib="data.npz", ratio=0.5, metric="l1")
    result.save("model_pruned.onnx")
    print(result.report["after"]["params"])
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from .calib import Calibration, calibration_from_arrays, input_specs_from_model, load_calibration
from .compiler.analysis import Analysis
from .compiler.cost import count_macs, group_costs
from .errors import OnnxPruneError
from .load import save_model
from .model import AnalyzedModel, analyze_model
from .options import PruneOptions, ScoreOptions
from .pipeline import (Run, check_runs, make_guard, measure_sizes, prune_rounds, round_plan,
                       scored_groups, split_samples)
from .progress import ProgressFn, emit
from .report import build_report, verify_pruned
from .scoring.plan import ScorePlan
from .scoring.run import (DEFAULT_TIME_CAP_S, ExpectedCut, Round, make_engine, score_planned,
                          scoring_allowance, value_function)
from .scoring.shapley import GroupScores

__all__ = ["AnalyzedModel", "PruneResult", "analyze_model", "prune", "score_model",
           # the facade's helpers, and the names it re-exports from the modules behind it
           "DEFAULT_TIME_CAP_S", "as_calibration", "group_table", "make_engine", "no_groups_reason",
           "plan_prune", "score_planned", "scored_groups", "value_function", "with_batch_twin"]


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
    cut = ExpectedCut(ratio, at_cut, round_to, removal)
    return score_planned(am, calib, opts, cut, Round(allowance=scoring_allowance(opts)),
                         groups=groups, means=means, progress=progress)[0]


def prune(model: str | os.PathLike | onnx.ModelProto | AnalyzedModel,
          calib: str | os.PathLike | Mapping[str, np.ndarray] | Calibration | None = None,
          options: PruneOptions | None = None, *,
          scores: Mapping[int, np.ndarray | GroupScores] | None = None,
          progress: ProgressFn | None = None, **keywords: Any) -> PruneResult:
    """Score, select, rewrite, verify. Keywords (ratio=, metric=, target=, ...: the fields of
    PruneOptions and ScoreOptions) amend `options`. `ratio` is the fraction of units removed
    per group (or of the model's parameters/MACs with `target`). Compensation and `refit` are
    guarded: each is kept only if it beats plain removal on held-out samples (deploy.py).
    `scores` reuses per-group unit scores instead of scoring (arrays, or `score_model`'s
    GroupScores, whose loss curves the global allocation then reads). Before scoring, the plan
    (scoring/plan.py) is emitted as a `plan` progress event; the report's `plan` holds it with
    what each stage actually took."""
    opts, am, data, run = _prepare(model, calib, options, scores, keywords)
    guard = (make_guard(am, run.held_out or run.scoring, run.held_note, opts.score.value)
             if opts.compensate or opts.refit or not opts.uniform else None)
    run.spent["check"] = time.perf_counter() - run.t0
    rounds = prune_rounds(am, opts, run, guard, scores, progress)
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
                          *_fallback_warnings(am, opts, rounds.scores),
                          *_budget_warnings(am, opts, rounds.removed)]
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
        make_guard(am, run.held_out or run.scoring, run.held_note, opts.score.value)
    run.spent["check"] = time.perf_counter() - run.t0
    plan = round_plan(am, opts, run, 0, progress, dry_run=True)[1]
    if am.batch_note and am.source is None:  # the twin was refused: scoring is one per run
        plan.warnings.insert(0, am.batch_note)
    return plan


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


def _prepare(model: Any, calib: Any, options: PruneOptions | None,
             scores: Mapping[int, np.ndarray | GroupScores] | None, keywords: Mapping[str, Any]):
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
    forward = check_runs(am, opts.score.device, data)
    measure_sizes(am, data)
    scoring, held_out, held_note = split_samples(data, opts.holdout, opts.score.seed)
    return opts, am, data, Run(scoring, held_out, held_note, forward, t0, dict(am.seconds))


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


def _plan_report(plan: ScorePlan, actual: Mapping[str, float], evaluations: int) -> dict[str, Any]:
    """The plan of the first round, with what each stage and the whole run actually took."""
    doc = plan.to_json()
    doc["actual_s"] = {k: round(v, 4) for k, v in actual.items()}
    doc["actual_total_s"] = round(sum(actual.values()), 4)
    doc["actual_evaluations"] = evaluations
    return doc


OVER_BUDGET = 0.05  # removed more than R by this much (of the prunable cost): say so


def _budget_warnings(am: AnalyzedModel, opts: PruneOptions, removed: Mapping[str, float]
                     ) -> list[str]:
    """Say so when far less than the budget was removed (under half of it) or clearly more
    (over R + 0.05: one removal step is coarse, a channel block on a narrow conv), and why
    when rounding is the likely cause."""
    from .deploy.select import width_multiple
    got = removed.get(opts.target)
    if got is None or opts.ratio / 2 <= got <= opts.ratio + OVER_BUDGET:
        return []
    multiple = opts.round_multiple()
    rounded = any(width_multiple(g, multiple) > 1 for g in am.analysis.prunable)
    if got > opts.ratio:
        line = f"removed {got:.2f} of the prunable {opts.target}, more than the {opts.ratio:g} asked"
        return [f"{line}: " + (f"kept conv widths are multiples of {multiple} channels (--round-to "
                               f"{opts.round_to}), coarse steps on this model's narrow convs; "
                               "--round-to 1 meets the budget within one channel (CPU speed-ups "
                               "then may not follow)" if rounded else
                               "one removal step is a large share of this model's cost")]
    line = f"removed {got:.2f} of the prunable {opts.target}, not the {opts.ratio:g} asked"
    if rounded:
        return [f"{line}: kept conv widths are multiples of {multiple} channels (--round-to "
                f"{opts.round_to}), so a {multiple}-channel group keeps every channel and a "
                f"{multiple + 1}-{2 * multiple - 1}-channel one can only go down to {multiple}; "
                "--round-to 1 allows any width (CPU speed-ups then may not follow)"]
    return [f"{line}: the per-group floor (--min-keep) or excluded groups left too little"]


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

