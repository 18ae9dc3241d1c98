"""Shared helpers for the masked-equals-pruned invariant (docs/design.md)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.compiler.analysis import Analysis
from onnxprune.compiler.analyze import analyze
from onnxprune.compiler.graph import ModelIdentity, to_proto
from onnxprune.compiler.instrument import instrument, mask_name
from onnxprune.compiler.normalize import infer_shapes, normalize
from onnxprune.compiler.rewrite import channel_keep, empty_tensors, rewrite

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
       "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def random_feeds(sess: ort.InferenceSession, rng: np.random.Generator, batch: int = 2,
                 skip: tuple[str, ...] = (), dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs; named dynamic dims take their size from `dims`, else `batch`."""
    feeds = {}
    for inp in sess.get_inputs():
        if inp.name in skip:
            continue
        shape = [d if isinstance(d, int) else (dims or {}).get(d, batch) for d in inp.shape]
        dtype = _NP[inp.type]
        feeds[inp.name] = (rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                           else rng.integers(0, 4, shape).astype(dtype))
    return feeds


def random_keep(analysis: Analysis, rng: np.random.Generator, *,
                extreme: bool = False) -> dict[int, np.ndarray]:
    """Random kept units for every prunable group (`extreme`: a single unit per group),
    then units given back until no tensor loses all of its channels (a Split piece)."""
    keep = {g.id: set(rng.choice(g.units, size=1 if extreme else int(rng.integers(1, g.units + 1)),
                                 replace=False).tolist()) for g in analysis.prunable}
    while empty := empty_tensors(analysis, channel_keep(analysis, keep)):
        c = int(rng.choice(analysis.maps[empty[0]].ids))
        keep[int(analysis.ch_group[c])].add(int(analysis.ch_unit[c]))
    return {g: np.array(sorted(u)) for g, u in keep.items()}


def check_masked_equals_pruned(model: onnx.ModelProto, *, seed: int = 0, trials: int = 3,
                               batch: int = 2, rtol: float = 1e-4,
                               compensate: bool = False,
                               dim_sets: list[dict[str, int]] | None = None,
                               atol: float = 0.0, require_prunable: bool = True,
                               prune_cache: bool = False) -> Analysis:
    """For random masks: ORT(masked original) == ORT(pruned) up to relative 1e-4 of the
    largest output. With `compensate`, removed channels are replaced by (random) means in
    both. `atol` is for random graphs only (see tests/test_random_graphs.py). Without
    `require_prunable`, a model with no prunable group passes if every group says why.
    With `prune_cache` (heads shrink the key-value cache I/O): the masked model is fed the
    original-width past and its cache outputs are compared on the kept heads only
    (`cache_slices`); the pruned model is fed the past sliced to the kept heads."""
    rng = np.random.default_rng(seed)
    ident = ModelIdentity.of(model)
    graph = normalize(model)
    analysis = analyze(graph, prune_cache=prune_cache)
    if not require_prunable and not analysis.prunable:
        assert all(g.reason for g in analysis.groups), [g.to_json() for g in analysis.groups]
        return analysis
    assert analysis.prunable, "model has no prunable group"
    means = ({s.tensor: rng.standard_normal(len(s.ids)) for s in analysis.sites}
             if compensate else None)
    masked = session(to_proto(instrument(analysis, means=means), ident))
    masks = tuple(mask_name(g.id) for g in analysis.prunable)
    feed_sets = [random_feeds(masked, rng, batch, skip=masks, dims=d) for d in dim_sets or [None]]
    for trial in range(trials):
        keep = random_keep(analysis, rng, extreme=(trial == 0))
        pruned = to_proto(rewrite(analysis, keep, means=means), ident)
        pruned = infer_shapes(pruned)
        onnx.checker.check_model(pruned, full_check=True)
        pruned_session = session(pruned)
        cut = cache_slices(analysis, keep)
        for base_feeds in feed_sets:
            feeds = dict(base_feeds)
            for g in analysis.prunable:
                m = np.zeros((1, g.units), np.float32)
                m[0, keep[g.id]] = 1
                feeds[mask_name(g.id)] = m
            want = masked.run(None, feeds)
            want = [_take(w, cut.get(o.name)) for w, o in zip(want, masked.get_outputs())]
            got = pruned_session.run(None, {k: _take(v, cut.get(k)) for k, v in base_feeds.items()})
            for w, g in zip(want, got):
                assert w.shape == g.shape
                scale = max(float(np.abs(w).max()), 1e-6)
                err = float(np.abs(w - g).max())
                assert err <= rtol * scale + atol, (
                    f"trial {trial}: error {err:.3g}, relative {err / scale:.3g} "
                    f"(max |output| {scale:.3g})")
    return analysis


def cache_slices(analysis: Analysis, keep: dict[int, np.ndarray]) -> dict[str, tuple[int, np.ndarray]]:
    """Per key-value cache input/output (members with role "cache", --prune-cache): its head
    axis and the kept heads' indices on it. A past input of the pruned model is the original's
    past at these indices; so is a present output of the masked model compared with the
    pruned one's."""
    keep_channel = channel_keep(analysis, keep)
    return {m.tensor: (m.axis, np.flatnonzero(keep_channel[m.ids]))
            for g in analysis.prunable for m in g.members if m.role == "cache"}


def _take(value: np.ndarray, cut: tuple[int, np.ndarray] | None) -> np.ndarray:
    return value if cut is None else np.take(value, cut[1], axis=cut[0])
