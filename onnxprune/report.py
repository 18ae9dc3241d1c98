"""Stage `report`: the JSON document of a prune run (README, The report).

Typed as TypedDicts, so the report stays a plain dict (JSON as is) whose keys are spelled
here once; the CLI adds `output`, `command` and the `file_bytes` sizes and renders it."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, TypedDict

import numpy as np
import onnx

from .calib import Calibration
from .compiler.cost import count_macs, count_params
from .load import model_bytes
from .options import PruneOptions
from .scoring.metrics import DEFAULT_METRIC
from .scoring.shapley import GroupScores

if TYPE_CHECKING:
    from .model import AnalyzedModel


class Sizes(TypedDict, total=False):
    params: int
    macs: int  # per sample
    bytes: int  # of the serialized proto
    file_bytes: int  # on disk, external data included (the CLI adds it)


class GroupRow(TypedDict, total=False):
    id: int
    units: int
    kept: int
    unit_size: int
    prunable: bool
    reason: str | None
    sources: list[str]
    method: str  # from here on: scored groups only (GroupScores.to_json)
    evaluations: int
    seconds: float
    scores: list[float]
    stderr: list[float] | None
    game: str  # a truncated game: what the scores are (shapley/truncated only)
    kept_units: list[int]  # when pruned in one round


class Verification(TypedDict, total=False):
    samples: int
    note: str
    outputs: list[dict[str, Any]]  # verify.Fidelity.to_json per output
    verdict: str  # the quality gate: "passed" or "failed" (verify.verdict)
    fidelity: float  # the worst output's agreement
    min_fidelity: float
    worst_output: str | None
    measure: str | None  # how the worst output's agreement is measured
    reason: str | None  # why the worst output's agreement is 0 (shape, non-finite values)
    accuracy_output: str  # with labels: the class output accuracy is measured on
    accuracy_before: float  # with labels
    accuracy_after: float
    latency: dict[str, Any]  # latency.compare_latency
    warnings: list[str]
    skipped_outputs: list[str]  # outputs that are not tensors (a ZipMap's sequence of maps)


class Report(TypedDict, total=False):
    model: str | None
    ratio: float
    metric: str
    seed: int
    options: dict[str, Any]  # PruneOptions.to_json
    calibration_samples: int | None
    versions: dict[str, str]
    before: Sizes
    after: Sizes
    groups: list[GroupRow]
    verification: Verification | None
    seconds: dict[str, float]
    deploy: dict[str, Any] | list[dict[str, Any]]  # deploy.Choice.to_json, one per round
    hints: list[str]
    removed: dict[str, float]  # fractions of the prunable units, params and MACs removed
    output: str  # the CLI adds these two
    command: str
    cache_interface: CacheInterface | None  # --prune-cache: how the key-value cache changed


class CacheLayer(TypedDict):
    group: int  # the heads' group (one attention layer)
    axis: int  # the head axis of its cache tensors
    heads: int  # before
    kept_heads: int  # after
    kept: list[int]  # the kept heads' indices in the original: slice a cache as past[:, kept]
    inputs: list[str]  # its cache inputs (past key and value) and outputs (present)
    outputs: list[str]


class CacheInterface(TypedDict):
    changed: bool
    layers: list[CacheLayer]


def build_report(am: AnalyzedModel, pruned: onnx.ModelProto, keep: Mapping[int, np.ndarray],
                 scores: Mapping[int, GroupScores], options: PruneOptions, *,
                 verification: Verification | None, n_samples: int | None,
                 seconds: Mapping[str, float], deploy: dict[str, Any] | list[dict[str, Any]],
                 reused_scores: bool) -> Report:
    """`keep` and `scores` of the one round (empty after several rounds)."""
    import onnx_graphsurgeon as gs

    from .version import __version__
    return {
        "model": am.path, "ratio": options.ratio, "metric": options.score.metric,
        "seed": options.score.seed, "options": options.to_json(),
        "calibration_samples": n_samples,
        "versions": _versions(__version__),
        "before": _sizes(am.graph, am.proto, am.analysis.measured),
        # the original shipped unchanged (nothing removed) is measured as it was analyzed
        "after": _sizes(am.graph, am.proto, am.analysis.measured) if pruned is am.proto else
                 _sizes(gs.import_onnx(pruned), pruned, am.analysis.measured),
        "groups": _group_rows(am, keep, scores),
        "verification": verification,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "deploy": deploy,
        "hints": hints(options, reused_scores),
        "cache_interface": cache_interface(am, pruned),
    }


def cache_interface(am: AnalyzedModel, pruned: onnx.ModelProto) -> CacheInterface | None:
    """Per layer whose heads shrank the key-value cache (--prune-cache; all rounds composed):
    its cache inputs/outputs, the head counts before and after and the kept heads' indices.
    None when the model's interface is unchanged."""
    from .compiler.cache import cache_heads
    heads = cache_heads(pruned)
    if not heads:
        return None
    graph_inputs = {t.name for t in am.graph.inputs}
    layers: list[CacheLayer] = []
    for g in am.analysis.groups:
        cache = [m for m in g.members if m.role == "cache"]
        if not cache or cache[0].tensor not in heads:
            continue
        axis, kept = heads[cache[0].tensor]
        layers.append({"group": g.id, "axis": axis, "heads": len(cache[0].ids),
                       "kept_heads": len(kept), "kept": [int(k) for k in kept],
                       "inputs": [m.tensor for m in cache if m.tensor in graph_inputs],
                       "outputs": [m.tensor for m in cache if m.tensor not in graph_inputs]})
    return {"changed": True, "layers": layers}


def _sizes(graph, proto: onnx.ModelProto, measured: Mapping[str, tuple[int, ...]]) -> Sizes:
    """`measured`: the original's measured dynamic dims (pruning channels leaves them as they were)."""
    return {"params": count_params(graph), "macs": count_macs(graph, measured),
            "bytes": model_bytes(proto)}


def _group_rows(am: AnalyzedModel, keep: Mapping[int, np.ndarray],
                scores: Mapping[int, GroupScores]) -> list[GroupRow]:
    rows: list[GroupRow] = []
    for g in am.analysis.groups:
        kept = len(keep[g.id]) if g.id in keep else g.units
        row: GroupRow = {"id": g.id, "units": g.units, "kept": kept, "unit_size": g.unit_size,
                         "prunable": g.prunable, "reason": g.reason, "sources": g.sources}
        if g.id in scores:
            row.update({k: v for k, v in scores[g.id].to_json().items() if k != "group"})  # type: ignore[typeddict-item]
        if g.id in keep:
            row["kept_units"] = [int(u) for u in keep[g.id]]
        rows.append(row)
    return rows


def _versions(own: str) -> dict[str, str]:
    import importlib.metadata as md
    versions = {"onnxprune": own, "onnx": onnx.__version__, "numpy": np.__version__}
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnx-graphsurgeon"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return versions


STEPS_HINT = ("at ratios above 0.5, --steps 3 (re-score after each third, on the shipped "
              "model) kept much more accuracy in the low-data study (ResNet at 0.75: 0.76 vs "
              "0.53 test accuracy; docs/results_games.md), for about 3x the scoring time")


def hints(options: PruneOptions, reused_scores: bool) -> list[str]:
    """Advice measured in the study (with Shapley) that this run's options did not follow."""
    # a params/MACs budget R removes about 1 - sqrt(1 - R) of the units (both axes shrink)
    units = options.ratio if options.target == "units" else 1 - (1 - options.ratio) ** 0.5
    heavy = units > 0.5 and options.score.metric == DEFAULT_METRIC
    return [STEPS_HINT] if heavy and options.steps == 1 and not reused_scores else []


SLOWER_WARNING = "the pruned model measured slower than the original (quartiles apart)"
CONV_HINT = ("; ONNX Runtime's CPU convs work in blocks of 8 or 16 channels; try --round-to auto "
             "(docs/benchmarks.md, End to end)")


def slower_warning(latency: Mapping[str, Any], pruned: onnx.ModelProto) -> str | None:
    """A warning when the pruned model is clearly slower: its first quartile above the
    original's third (a 0.02 ms MLP's medians swing both ways by themselves); the channel
    block hint only where there are convs for it to be about."""
    if latency["after"]["q1_ms"] <= latency["before"]["q3_ms"]:
        return None
    convs = any(n.op_type == "Conv" for n in pruned.graph.node)
    return SLOWER_WARNING + (CONV_HINT if convs else "")


FEW_SAMPLES = 32


def verify_pruned(original: onnx.ModelProto, pruned: onnx.ModelProto, data: Calibration,
                  note: str, latency: bool, min_fidelity: float,
                  want: list[np.ndarray] | None = None,
                  output_kinds: Mapping[str, str] | None = None) -> Verification:
    """Fidelity of the pruned model's outputs to the original's on `data` (each output by its
    kind, deploy/verify.py), the quality gate's verdict, accuracy with labels and, with
    `latency`, both models' latency on a fixed batch. `want`: the original's outputs on
    `data` when already computed (the guard's), as `run_model` gives them. `output_kinds`:
    the user's kind per output name (--output-kind), over what the graph and shape say."""
    from .compiler.cache import narrow_feeds, widen_outputs
    from .deploy.latency import compare_latency
    from .deploy.verify import (accuracy, class_output, compare, decide_kinds, run_model,
                                tensor_output_names, verdict)
    names = tensor_output_names(original)
    want = run_model(original, data.inputs) if want is None else want
    # --prune-cache: the pruned model reads the past of its kept heads, and its cache outputs
    # are compared with the original's on those heads (compiler/cache.py)
    got = widen_outputs(pruned, names, run_model(pruned, narrow_feeds(pruned, data.inputs)), want)
    kinds = decide_kinds(names, want, original, output_kinds)
    fidelities = compare(names, want, got, kinds)
    result: Verification = {"samples": data.n_samples, "note": note,
                            "outputs": [f.to_json() for f in fidelities],
                            **verdict(fidelities, min_fidelity)}  # type: ignore[typeddict-item]
    if skipped := [o.name for o in original.graph.output if o.name not in names]:
        result["skipped_outputs"] = skipped  # not tensors: neither scored nor compared
    warnings = []
    if data.n_samples < FEW_SAMPLES:
        warnings.append(f"the verdict rests on {data.n_samples} samples only (fewer than "
                        f"{FEW_SAMPLES}): its figures are coarse; give --calib more samples")
    index = class_output(want, [kinds[n][0] for n in names])
    if data.labels is not None and index is not None:
        result["accuracy_output"] = names[index]
        result["accuracy_before"] = accuracy(want, data.labels, index)
        result["accuracy_after"] = accuracy(got, data.labels, index)
    if latency:
        feeds = {k: v[:32] for k, v in data.inputs.items()}  # a fixed batch: its own size
        result["latency"] = compare_latency(original, pruned, feeds,
                                            feeds_b=narrow_feeds(pruned, feeds))
        if (slower := slower_warning(result["latency"], pruned)) is not None:
            warnings.append(slower)
    if warnings:
        result["warnings"] = warnings
    return result
