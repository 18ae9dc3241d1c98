"""The rounds of `prune`: score -> select -> rewrite -> deploy, each round on the model the
last one shipped, and what they read (the checked, split samples; the timed forward pass).

Its own module, beside the facade, because a round strings together all three packages
(scoring, deploy, and the compiler again for the next round's analysis); `api.prune` calls
it and turns what it leaves (`Rounds`) into the result and the report."""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from .calib import Calibration
from .deploy.candidates import Choice, Guard, deploy_allocations
from .deploy.select import Budget, select
from .errors import OnnxPruneError
from .model import AnalyzedModel, analyze_model
from .options import PruneOptions
from .progress import ProgressFn, emit
from .scoring.metrics import METRICS
from .scoring.plan import Forward, ScorePlan, measure_forward, refit_seconds, stage_estimates
from .scoring.run import ExpectedCut, Round, score_planned, scoring_allowance, value_function
from .scoring.shapley import GroupScores
from .scoring.site_stats import CACHE_BYTES, SiteActivations, means_and_activations


@dataclass
class Run:
    """What every round reads: the samples, the measured forward pass, the time spent so far."""

    scoring: Calibration | None
    held_out: Calibration | None
    held_note: str | None
    forward: Forward | None
    t0: float  # when the checks began (they count as the stage `check`)
    spent: dict[str, float]  # measured seconds of the stages before the rounds


def split_samples(data: Calibration | None, holdout: float, seed: int):
    """(scoring samples, held-out samples or None, a note for the report)."""
    if data is None:
        return None, None, None
    if data.n_samples < 8 or holdout == 0:
        return data, None, (f"verified on the {data.n_samples} calibration samples "
                            "(too few to hold some out)" if holdout else "verified on the calibration samples")
    scoring, held = data.split(holdout, seed)
    return scoring, held, f"verified on {held.n_samples} held-out samples not used for scoring"


def check_runs(am: AnalyzedModel, device: str, data: Calibration | None) -> Forward | None:
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


PROBE_MAX = 2**30  # bytes of weights above which the probe's copy is not made (dims count as 1)


def measure_sizes(am: AnalyzedModel, data: Calibration | None) -> None:
    """Where the export left the dims that set a mixing node's MACs dynamic (a conv's H and W,
    a sequence), their shape on the first calibration sample, into `am.analysis.measured`
    (compiler/cost.py counts MACs with it): one unoptimized CPU pass with those tensors as
    extra outputs."""
    from .compiler.cost import dynamic_sizes
    from .compiler.graph import node_key
    from .load import approx_bytes
    from .compiler.ops import handler_for
    from .runtime import make_session
    nodes = dynamic_sizes(am.analysis.graph)
    if data is None or not nodes or approx_bytes(am.proto) > PROBE_MAX:
        return
    names = {node_key(n): handler_for(n).size_tensor(n).name for n in nodes}
    arrays = {k: v[:1] for k, v in data.inputs.items()}  # a graph input is its own measure
    wanted = sorted(set(names.values()) - set(arrays))
    if wanted:
        probe = onnx.ModelProto()
        probe.CopyFrom(am.proto)
        known = {o.name for o in probe.graph.output}
        probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted if t not in known)
        try:
            arrays.update(zip(wanted, make_session(probe, "cpu", optimize=False).run(
                wanted, {k: v[:1] for k, v in data.inputs.items()})))
        except Exception as exc:  # noqa: BLE001 - an extra measurement: the old count stands
            data.warnings.append(f"dims the export left dynamic could not be measured "
                                 f"({type(exc).__name__}): their MACs count as 1")
            return
    am.analysis.measured = {key: tuple(int(d) for d in arrays[t].shape) for key, t in names.items()}


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


def make_guard(am: AnalyzedModel, data: Calibration | None, note: str | None,
           value: str | None) -> Guard | None:
    if data is None:
        return None
    where = "held-out samples" if note and "held-out" in note else "calibration samples (too few to hold out)"
    return Guard(am.proto, data, value_function(am, data, value), f"{data.n_samples} {where}")


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


@dataclass
class Rounds:
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


def prune_rounds(am: AnalyzedModel, opts: PruneOptions, run: Run, guard: Guard | None,
                  reused: Mapping[int, np.ndarray] | None, progress: ProgressFn | None) -> Rounds:
    """`steps` rounds of score -> select -> rewrite, each on the model the last one shipped."""
    out = Rounds(None, {}, {}, [], {})  # type: ignore[arg-type]
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
        measured = am.analysis.measured  # pruning channels leaves the other dims as they were
        am = analyze_model(choice.model, prune_cache=opts.prune_cache)
        am.analysis.measured = measured
        run = _narrowed(first_run, choice.model)
    return out


def _narrowed(run: Run, model: onnx.ModelProto) -> Run:
    """The next round's scoring samples for `model`: the past of the heads it kept when its
    heads shrank the key-value cache (--prune-cache); the guard keeps the original's."""
    from .compiler.cache import cache_heads, narrow_feeds
    if run.scoring is None or not cache_heads(model):
        return run
    scoring = dataclasses.replace(run.scoring, inputs=narrow_feeds(model, run.scoring.inputs))
    return dataclasses.replace(run, scoring=scoring)


def _prune_round(am: AnalyzedModel, opts: PruneOptions, step: int, run: Run,
                 guard: Guard | None, reused: Mapping[int, np.ndarray] | None,
                 progress: ProgressFn | None, rounds: Rounds,
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
        scores, plan, means, acts = round_plan(am, opts, run, step, progress)
        measured = plan.measured_s if plan is not None else {}  # None: scored on Ray workers
        took = {k: v for k, v in measured.items() if k in ("means", "engine", "plan")}
        took["scoring"] = time.perf_counter() - t0 - sum(took.values())
        rounds.evaluations += (plan.spent_evaluations or 0) if plan is not None else 0
    t1 = time.perf_counter()
    curves = {g: s.extra["curve"] for g, s in scores.items() if "curve" in s.extra}
    keeps = _allocations(am, opts, {g: s.values for g, s in scores.items()}, guard is not None,
                         curves)
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


def round_plan(am: AnalyzedModel, opts: PruneOptions, run: Run, step: int,
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
    left = opts.steps - step
    cut = ExpectedCut(opts.step_ratio(), _same_cut(opts), opts.round_multiple(), _unit_share(opts))
    this = Round(forward=run.forward, stages=stages, spent=spent, left=left, step=step + 1,
                 of=opts.steps, allowance=scoring_allowance(opts.score, elapsed, left),
                 dry_run=dry_run)
    scores, plan = score_planned(am, run.scoring, opts.score, cut, this, groups=gids,
                                 means=means, progress=progress)
    return scores, plan, means, acts


def _round_groups(am: AnalyzedModel, opts: PruneOptions) -> list[int]:
    gids = scored_groups(am, opts.exclude)
    if not gids:
        raise OnnxPruneError("every prunable group is excluded")
    return gids


def _means(am: AnalyzedModel, opts: PruneOptions, run: Run, progress: ProgressFn | None
           ) -> tuple[dict[str, np.ndarray] | None, SiteActivations | None]:
    """The mask sites' means and, for the refit, the activations they came from (when the
    refit runs and they are small enough to keep)."""
    if not opts.compensate or run.scoring is None:
        return None, None
    emit(progress, "means", 0, 1)
    means, acts = means_and_activations(am.analysis, am.ident, run.scoring.inputs, device="cpu",
                                        max_bytes=CACHE_BYTES if opts.refit else 0)
    return means, acts if opts.refit else None


def _round_stages(am: AnalyzedModel, gids: list[int], opts: PruneOptions, run: Run, step: int,
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


def _refit_timer(am: AnalyzedModel, gids: list[int], ratio: float, run: Run,
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


def _unit_share(opts: PruneOptions) -> float:
    """The share of each group's units a round is expected to remove, for the depth of the
    truncated game: the step ratio of units, or, for a params/MACs budget, the width cut that
    removes that share of a conv chain's cost (both ends of its weights shrink: 1-(1-R)^0.5)."""
    r = opts.step_ratio()
    return r if opts.target == "units" else 1 - (1 - r) ** 0.5


def _same_cut(opts: PruneOptions) -> bool:
    """Whether selection cuts every group at the step ratio: only with --uniform --target
    units (a budget's global allocation puts the cut where scores and costs say)."""
    return opts.uniform and opts.target == "units"


def _allocations(am: AnalyzedModel, opts: PruneOptions, scores: Mapping[int, np.ndarray],
                 guarded: bool, curves: Mapping[int, list] | None = None,
                 ) -> dict[str, dict[int, np.ndarray]]:
    """The kept units of the global allocation (trading groups off by their measured loss
    `curves` where scoring measured them) and, as the guard's fallback, of the uniform one
    at the same budget (or only the uniform one with `uniform`)."""
    normalize = not METRICS[opts.score.metric].objective_units
    kw = dict(round_to=opts.round_multiple(), target=opts.target, min_keep=opts.step_min_keep(),
              normalize=normalize, curves=curves)

    def allocate(uniform: bool) -> dict[int, np.ndarray]:
        return select(am.analysis, scores, opts.step_ratio(), uniform=uniform, **kw)

    if opts.uniform:
        return {"uniform": allocate(True)}
    return {"global": allocate(False), "uniform": allocate(True)} if guarded else {"global": allocate(False)}


def _reused(am: AnalyzedModel, scores: Mapping[int, Any], gids: list[int]) -> dict[int, GroupScores]:
    out = {}
    for gid in gids:
        if gid not in scores:
            continue
        given = scores[gid]  # an array, or score_model's GroupScores (its loss curve kept)
        values = np.asarray(given.values if isinstance(given, GroupScores) else given,
                            dtype=np.float64)
        if values.shape != (am.analysis.group(gid).units,):
            raise OnnxPruneError(f"--scores: group {gid} has {values.size} scores but "
                                 f"{am.analysis.group(gid).units} units; rescore this model")
        curve = given.extra.get("curve") if isinstance(given, GroupScores) else None
        out[gid] = GroupScores(gid, values, method="reused", extra={"curve": curve} if curve else {})
    return out
