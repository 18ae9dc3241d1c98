"""The Python API: the pipeline of DESIGN.md as two calls, `analyze_model` and `prune`.

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
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from .analyze import Analysis, analyze
from .baselines import random_scores, weight_norm_scores
from .calib import Calibration, calibration_from_arrays, input_specs_from_model, load_calibration
from .cost import count_macs, count_params, group_costs
from .errors import OnnxPruneError
from .graph import ModelIdentity
from .load import load_model, model_bytes, save_model
from .normalize import normalize, with_unique_node_names
from .deploy import deploy
from .compensate import site_means, site_stats
from .score import METRICS, GroupScores
from .select import TARGETS, n_removed, select

Progress = Callable[[dict], None]


@dataclass
class AnalyzedModel:
    """A loaded, normalized and analysed model."""

    path: str | None
    proto: onnx.ModelProto
    ident: ModelIdentity
    analysis: Analysis
    seconds: dict[str, float]

    @property
    def graph(self):
        return self.analysis.graph


def analyze_model(model: str | os.PathLike | onnx.ModelProto) -> AnalyzedModel:
    """load -> normalize -> analyze."""
    t0 = time.perf_counter()
    path = None
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        path, proto = str(model), load_model(model)
    t1 = time.perf_counter()
    proto = with_unique_node_names(proto)  # the sessions are built from it; normalize copies
    graph = normalize(proto)
    t2 = time.perf_counter()
    analysis = analyze(graph)
    t3 = time.perf_counter()
    return AnalyzedModel(path, proto, ModelIdentity.of(proto), analysis,
                         {"load": t1 - t0, "normalize": t2 - t1, "analyze": t3 - t2})


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
    from .cost import MIXING, weight_of
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


def _emit(progress: Progress | None, stage: str, done: int = 0, total: int = 0, **info) -> None:
    if progress is not None:
        progress({"stage": stage, "done": done, "total": total, **info})


def scored_groups(am: AnalyzedModel, exclude: Sequence[str] = ()) -> list[int]:
    """Prunable groups, less those whose sources (the tensors whose channels they are) or
    producer nodes match an --exclude pattern; a group merely read by a node stays in."""
    out = []
    for g in am.analysis.prunable:
        names = [*g.sources, *(m.node for m in g.members if m.role == "producer")]
        if not any(fnmatch.fnmatch(n, p) for p in exclude for n in names):
            out.append(g.id)
    return out


def score_model(am: AnalyzedModel, calib: Calibration | None, *, metric: str = "shapley",
                seed: int = 0, device: str = "auto", estimator: str = "auto",
                budget: int | None = None, value: str | None = None,
                means: Mapping[str, np.ndarray] | None = None, ratio: float = 0.5,
                groups: Sequence[int] | None = None, max_memory_mb: float | None = None,
                aggregate: str = "mean", progress: Progress | None = None) -> dict[int, GroupScores]:
    """A score per unit of each group (default: every prunable group)."""
    from .score import (BASELINES, activation_scores, bn_gamma, leave_one_out,
                        shapley_group, taylor)
    if metric not in METRICS:
        raise OnnxPruneError(f"unknown metric '{metric}' (choose from {', '.join(METRICS)})")
    gids = list(groups) if groups is not None else [g.id for g in am.analysis.prunable]
    needs_data = metric == "shapley" or BASELINES.get(metric, (True,))[0]
    if needs_data and calib is None:
        raise OnnxPruneError(f"metric '{metric}' needs calibration data (--calib)")
    out: dict[int, GroupScores] = {}
    if metric in ("random", "l1", "l2", "bn_gamma"):
        for gid in gids:
            values = (random_scores(am.analysis, gid, seed) if metric == "random" else
                      bn_gamma(am.analysis, gid) if metric == "bn_gamma" else
                      weight_norm_scores(am.analysis, gid, 1 if metric == "l1" else 2))
            out[gid] = GroupScores(gid, values, method=metric)
        return out
    if metric in ("mean_activation", "apoz"):
        stats = site_stats(am.analysis, am.ident, calib.inputs, device="cpu")
        key = "abs_mean" if metric == "mean_activation" else "zeros"
        for gid in gids:
            values = activation_scores(am.analysis, stats, gid, key)
            out[gid] = GroupScores(gid, values if metric == "mean_activation" else 1 - values,
                                   method=metric)
        return out
    engine = make_engine(am, calib, value=value, device=device, means=means,
                         max_memory_mb=max_memory_mb)
    t0 = time.perf_counter()
    for i, gid in enumerate(gids):
        n = am.analysis.group(gid).units
        if metric == "shapley":
            out[gid] = shapley_group(engine, gid, estimator=estimator, budget=budget,
                                     seed=seed + gid, k=n_removed(n, ratio), aggregate=aggregate)
        elif metric == "loo":
            out[gid] = leave_one_out(engine, gid)
        else:
            out[gid] = taylor(engine, gid)
        _emit(progress, "score", i + 1, len(gids), evaluations=engine.evaluations,
              elapsed=time.perf_counter() - t0)
    out_info = engine.info()
    for g in out.values():
        g.extra["engine"] = {k: out_info.get(k) for k in ("device", "path", "k_per_run")}
    return out


def value_function(am: AnalyzedModel, calib: Calibration, value: str | None = None):
    """The named value function, or the default for this model's outputs and labels."""
    from .value import default_value_function, make_value_function
    first = am.graph.outputs[0].shape or ()
    value_fn = (make_value_function(value) if value else
                default_value_function(calib.labels is not None, first))
    if value_fn.needs_labels and calib.labels is None:
        raise OnnxPruneError(f"value function '{value_fn.name}' needs a 'labels' array in --calib")
    return value_fn


def make_engine(am: AnalyzedModel, calib: Calibration, *, value: str | None = None,
                device: str = "auto", means=None, max_memory_mb: float | None = None):
    from .engine import Engine
    return Engine(am, calib, value_function(am, calib, value), device=device,
                  max_memory_mb=max_memory_mb, means=means)


def prune(model: str | os.PathLike | onnx.ModelProto | AnalyzedModel,
          calib: str | os.PathLike | Mapping[str, np.ndarray] | Calibration | None = None, *,
          ratio: float = 0.5, metric: str = "shapley", seed: int = 0, device: str = "auto",
          compensate: bool = True, estimator: str = "auto", budget: int | None = None,
          value: str | None = None, round_to: int | str = 1, exclude: Sequence[str] = (),
          global_: bool = False, target: str = "units", steps: int = 1,
          scores: Mapping[int, np.ndarray] | None = None, holdout: float = 0.25,
          latency: bool = True, max_memory_mb: float | None = None, aggregate: str = "mean",
          refit: bool = True, progress: Progress | None = None) -> PruneResult:
    """Score, select, rewrite, verify. `ratio` is the fraction of units removed per group
    (or of the model's parameters/MACs with `target`). Compensation and `refit` are
    guarded: each is kept only if it beats plain removal on held-out samples (deploy.py)."""
    requested_round_to = round_to
    round_to = _round_to(round_to, device)
    _check_options(ratio, steps, round_to, target, scores, aggregate)
    am = model if isinstance(model, AnalyzedModel) else analyze_model(model)
    data = as_calibration(calib, am.proto)
    if not am.analysis.prunable:
        raise OnnxPruneError("no prunable channel group in this model (see 'onnxprune analyze')")
    _check_runs(am, device, data)
    scoring, held_out, held_note = _split(data, holdout, seed)
    original, timings = am, dict(am.seconds)
    guard = _guard(am, held_out or scoring, held_note, value) if compensate or refit else None
    choices = []
    step_ratio = 1 - (1 - ratio) ** (1 / steps) if target == "units" else ratio / steps
    all_scores: dict[int, GroupScores] = {}
    for step in range(steps):
        gids = scored_groups(am, exclude)
        if not gids:
            raise OnnxPruneError("every prunable group is excluded")
        t0 = time.perf_counter()
        means = None
        if compensate and scoring is not None:
            _emit(progress, "means", 0, 1)
            means = site_means(am.analysis, am.ident, scoring.inputs, device="cpu")
        _emit(progress, "score", 0, len(gids), metric=metric, step=step + 1, steps=steps)
        if scores is not None and step == 0:
            step_scores = _reused(am, scores, gids)
        else:
            step_scores = score_model(am, scoring, metric=metric, seed=seed, device=device,
                                      estimator=estimator, budget=budget, value=value,
                                      means=means, ratio=step_ratio, groups=gids,
                                      max_memory_mb=max_memory_mb, aggregate=aggregate,
                                      progress=progress)
        t1 = time.perf_counter()
        step_target = ratio if target == "units" else 1 - (1 - ratio) ** (1 / steps)
        keep = select(am.analysis, {g: s.values for g, s in step_scores.items()},
                      step_ratio if target == "units" else step_target,
                      round_to=round_to, target=target, global_=global_)
        _emit(progress, "rewrite", 0, 1)
        choice = deploy(am.analysis, am.ident, keep, means=means, guard=guard,
                        refit_data=scoring if refit and scoring is not None else None,
                        progress=progress)
        pruned = choice.model
        choices.append(choice.to_json(guard))
        timings[f"score{step + 1}"] = t1 - t0
        timings[f"rewrite{step + 1}"] = time.perf_counter() - t1
        if steps == 1:
            all_scores = step_scores
            break
        am = analyze_model(pruned)
    verification = None
    if data is not None:
        t2 = time.perf_counter()
        _emit(progress, "verify", 0, 1)
        verification = _verify(original.proto, pruned, held_out or scoring, held_note, latency)
        timings["verify"] = time.perf_counter() - t2
    report = build_report(original, pruned, keep if steps == 1 else {}, all_scores, ratio=ratio,
                          metric=metric, seed=seed, verification=verification,
                          n_samples=None if data is None else data.n_samples, seconds=timings,
                          options={"compensate": compensate, "round_to": round_to,
                                   "round_to_requested": requested_round_to,
                                   "target": target, "global": global_, "steps": steps,
                                   "exclude": list(exclude), "estimator": estimator,
                                   "budget": budget, "value": value, "aggregate": aggregate,
                                   "refit": refit})
    report["deploy"] = choices if steps > 1 else choices[0]
    report["hints"] = _hints(ratio, target, steps, metric, scores is not None)
    return PruneResult(pruned, report, {g: s.values for g, s in all_scores.items()},
                       keep if steps == 1 else {}, original.analysis)


STEPS_HINT = ("at ratios above 0.5, --steps 3 (re-score after each third, on the shipped "
              "model) kept much more accuracy in the low-data study (ResNet at 0.75: 0.76 vs "
              "0.53 test accuracy; docs/results_games.md), for about 3x the scoring time")


def _hints(ratio: float, target: str, steps: int, metric: str, reused_scores: bool) -> list[str]:
    """Advice measured in the study (with Shapley) that this run's options did not follow."""
    heavy = target == "units" and ratio > 0.5 and metric == "shapley"
    return [STEPS_HINT] if heavy and steps == 1 and not reused_scores else []


def _guard(am: AnalyzedModel, data: Calibration | None, note: str | None, value: str | None):
    from .deploy import Guard
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
    from .verify import run_batches
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


def _round_to(round_to: int | str, device: str) -> int:
    """`"auto"`: the channel multiple this machine's runtime is fastest at (select.py)."""
    from .select import hardware_multiple
    if isinstance(round_to, str):
        if round_to.strip().lower() == "auto":
            return hardware_multiple("cuda" if device == "cuda" else "cpu")
        try:
            return int(round_to)
        except ValueError:
            raise OnnxPruneError(f"--round-to must be a positive integer or 'auto', got {round_to!r}") from None
    return int(round_to)


def _check_options(ratio, steps, round_to, target, scores, aggregate="mean") -> None:
    if aggregate not in ("mean", "mean+2std"):
        raise OnnxPruneError(f"--aggregate must be mean or mean+2std, got {aggregate}")
    if not 0 <= ratio < 1:
        raise OnnxPruneError(f"--ratio must be in [0, 1), got {ratio}")
    if steps < 1:
        raise OnnxPruneError(f"--steps must be at least 1, got {steps}")
    if round_to < 1:
        raise OnnxPruneError(f"--round-to must be at least 1, got {round_to}")
    if target not in TARGETS:
        raise OnnxPruneError(f"--target must be one of {', '.join(TARGETS)}")
    if scores is not None and steps > 1:
        raise OnnxPruneError("--scores cannot be combined with --steps (rounds re-score)")


def _split(data: Calibration | None, holdout: float, seed: int):
    """(scoring samples, held-out samples or None, a note for the report)."""
    if data is None:
        return None, None, None
    if data.n_samples < 8 or holdout == 0:
        return data, None, (f"verified on the {data.n_samples} calibration samples "
                            "(too few to hold some out)" if holdout else "verified on the calibration samples")
    scoring, held = data.split(holdout, seed)
    return scoring, held, f"verified on {held.n_samples} held-out samples not used for scoring"


def _verify(original: onnx.ModelProto, pruned: onnx.ModelProto, data: Calibration, note: str,
            latency: bool) -> dict[str, Any]:
    from .latency import compare_latency
    from .verify import accuracy, run_model
    names = [o.name for o in original.graph.output]
    want, got = run_model(original, data.inputs), run_model(pruned, data.inputs)
    from .verify import compare
    result: dict[str, Any] = {"samples": data.n_samples, "note": note,
                              "outputs": [f.to_json() for f in compare(names, want, got)]}
    if data.labels is not None:
        result["accuracy_before"] = accuracy(want, data.labels)
        result["accuracy_after"] = accuracy(got, data.labels)
    if latency:
        feeds = {k: v[:32] for k, v in data.inputs.items()}  # a fixed batch: its own size
        result["latency"] = compare_latency(original, pruned, feeds)
        if result["latency"]["speedup"]["median"] < 1:
            result["warnings"] = ["the pruned model measured slower than the original: ONNX "
                                  "Runtime's CPU convs work in blocks of 8 or 16 channels; try "
                                  "--round-to auto (docs/benchmarks.md, End to end)"]
    return result


def build_report(am: AnalyzedModel, pruned: onnx.ModelProto, keep, scores, *, ratio, metric,
                 seed, verification, n_samples, seconds, options) -> dict[str, Any]:
    from . import __version__
    import onnx_graphsurgeon as gs
    after_graph = gs.import_onnx(pruned)
    groups = []
    for g in am.analysis.groups:
        kept = len(keep[g.id]) if g.id in keep else g.units
        row = {"id": g.id, "units": g.units, "kept": kept, "unit_size": g.unit_size,
               "prunable": g.prunable, "reason": g.reason, "sources": g.sources}
        if g.id in scores:
            row.update({k: v for k, v in scores[g.id].to_json().items() if k != "group"})
        if g.id in keep:
            row["kept_units"] = [int(u) for u in keep[g.id]]
        groups.append(row)
    return {
        "model": am.path, "ratio": ratio, "metric": metric, "seed": seed, "options": options,
        "calibration_samples": n_samples,
        "versions": _versions(__version__),
        "before": {"params": count_params(am.graph), "macs": count_macs(am.graph),
                   "bytes": model_bytes(am.proto)},
        "after": {"params": count_params(after_graph), "macs": count_macs(after_graph),
                  "bytes": model_bytes(pruned)},
        "groups": groups,
        "verification": verification,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
    }


def _versions(own: str) -> dict[str, str]:
    import importlib.metadata as md
    versions = {"onnxprune": own, "onnx": onnx.__version__, "numpy": np.__version__}
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnx-graphsurgeon"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return versions
