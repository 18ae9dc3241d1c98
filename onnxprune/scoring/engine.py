"""Stage `score`, the engine: per-sample values v_s(S) of many coalitions S, cheaply.

    engine = Engine(analyze_model("m.onnx"), calib, NegKL())
    v = engine.values(gid, coalitions)          # bool [K, units] -> float64 [K, N]

Three things make a coalition cheap (docs/design.md, Scoring):

- **Batched coalitions.** The mask input has a batch axis, so one ORT run evaluates K
  coalitions x n samples: the n-sample inputs are tiled K times and row k*n + i carries
  coalition k's mask. On CPU the host tiles once per group and every run feeds views of
  those copies (tiling per run cost as much as a late group's suffix; ORT's Tile kernel
  measured slower than the copy). On CUDA the scoring model tiles in the graph (a `Tile`
  fed by the extra input `onnxprune_tile` = [K]) so the data stays on the device and only
  the masks change between runs. n and the largest K come from a memory budget and the
  sub-model's activation sizes, estimated from inferred shapes; on CPU K itself is then
  measured (`scoring/tuning.py`: a few timed runs at K = 1, 2, 4, ...), since what pays depends
  on the suffix's size and on the machine's load.
- **Prefix caching.** Nodes upstream of a group's masked tensors do not depend on the
  mask. The scoring model is cut there: a prefix (the model with the cut tensors as
  outputs) runs once on the calibration data, and each coalition batch runs only the
  suffix. On CPU the cut is made on the graph ORT itself runs for the whole instrumented
  model (its fusions and NCHWc layout: a blocked residual is cached as such and stays
  fused into its Conv), on CUDA on the source graph. Cut tensors must carry the samples
  on axis 0 (checked from inferred shapes, else by a probe run on two samples; failing
  that, their producer joins the suffix). The cache is per group and only one group's
  cache is held at a time. A source-graph cut whose suffix holds most of the model's MACs
  is not made: the gain is small and it costs ORT fusions.
- **Fixed batch models** (input batch 1): the batch is made dynamic when that is proven on
  the model (Reshape targets' leading 1 becomes 0 = copy, then batch 2 is checked against
  two batch-1 runs); otherwise one coalition x one sample per run.

Removal is zeroing, or with `fill` a per-unit constant: instrument's  x*m + (1-m)*fill.
On CUDA (the session really got the CUDA provider) inputs and cached activations stay on
the device as OrtValues and each run binds only the masks (`CudaBackend`).

The parts live in their own modules: memory.py (activation sizes), fixedbatch.py (batch-1
models made dynamic), cut.py (prefix/suffix and the probes), backends.py (CPU/CUDA data),
plans.py (per-group plans and chunks); this module holds the `Engine` that drives them.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections import OrderedDict
from typing import Any, Callable, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..calib import Calibration
from ..compiler.analysis import Analysis
from ..compiler.graph import to_proto
from ..compiler.instrument import mask_name
from ..errors import OnnxPruneError
from ..model import AnalyzedModel
from ..runtime import batch_axes, make_session, ort, run_chunks
from .backends import Backend, backend_for
from .cut import CPU_DISABLED_OPTIMIZERS, Cut, batch_dim_state, cut_model, preoptimized_session, probe_aligned, site_fill
from .fixedbatch import input_batch, make_batch_dynamic
from .memory import activations, default_memory_mb, row_bytes
from .plans import Chunk, Plan, chunk_rows, make_chunks, mask_rows
from .tuning import size_class, tune, tune_cap
from .value import ValueFunction

_MAX_PLANS = 3          # scoring sessions kept (each holds its sub-model's weights)
_CACHE_SHARE = 0.5      # cached activations may use at most this share of the budget
_MAX_SUFFIX_SHARE = 0.75  # cut only when the suffix has at most this share of the MACs
_CPU_RUN_BYTES = 2 << 20  # CPU, untuned: largest activation of one run (about one L2 cache)
_VALUE_BYTES = 16 << 20   # outputs handed to one value-function call (its overhead is per call)

__all__ = ["Engine"]


class Engine:
    """Evaluates coalitions of one group (or several jointly) on the calibration set.

    device: "auto" (CUDA if the session gets it), "cpu" or "cuda" (an error without CUDA).
    max_memory_mb: budget for cached activations + one run's activations + output buffers
      (default: a quarter of the available RAM, at most 2 GB). ORT's own fixed overhead
      (sessions, weights, thread pools; tens of MB) is not part of it.
    max_coalitions: cap on K, the coalitions evaluated per ORT run.
    fill: per group, one replacement value per unit (None: removed units are zeroed).
    prefix_cache: run the mask-free prefix once per group and only the suffix per batch.
    threads: ORT intra-op threads (default: all cores).
    spinning: ORT worker threads spin while idle; off by default because on a shared
      2-core machine spinning made the same runs about 2x slower (docs/design.md, Measuring).
    tune: on CPU, choose K per group from a few timed runs when its plan is built (about a
      dozen runs' worth of setup); otherwise K comes from activation sizes alone.
    """

    def __init__(self, am: AnalyzedModel, calib: Calibration, value_fn: ValueFunction, *,
                 device: str = "auto", max_memory_mb: float | None = None,
                 max_coalitions: int | None = None,
                 fill: Mapping[int, np.ndarray] | None = None,
                 means: Mapping[str, np.ndarray] | None = None,
                 prefix_cache: bool = True, threads: int | None = None,
                 spinning: bool = False, tune: bool = True) -> None:
        self.ident = am.ident
        self.value_fn = value_fn
        self.fill = fill
        self.means = means  # compensation: removed channels score as their means (instrument)
        self.prefix_cache = prefix_cache
        self.threads = threads or os.cpu_count() or 1
        self.spinning = spinning
        self.tune = tune
        self.max_coalitions = max_coalitions
        self.budget = int((max_memory_mb if max_memory_mb is not None else default_memory_mb()) * 2**20)
        self.evaluations = 0
        self.on_values: Callable[[int], None] | None = None  # told the evaluations after each call
        self.path = "not run yet"
        self._plans: OrderedDict[tuple[int, ...], Plan] = OrderedDict()
        self._probed: dict[str, bool] = {}  # tensor -> carries the samples on axis 0
        # suffix size class -> (K measured there, its seconds per coalition on one chunk)
        self._tuned: dict[tuple[int, int], tuple[int, float]] = {}
        self.expected: dict[int, int] = {}  # group -> planned evaluations (scoring/plan.py)
        self._inputs = self._check_inputs(am.analysis, calib)
        self.n = calib.n_samples
        self.analysis, self.fixed_rows, self.batch = self._batch_mode(
            self._tensor_outputs_only(am.analysis))
        self._source_names = set(self.analysis.graph.tensors())
        # ops that combine samples (analysis.batch_mixing): per-sample coalitions would leak
        # into each other, so each run carries one coalition for all samples (mask batch 1)
        self.mixing = bool(self.analysis.batch_mixing)
        # estimators may give every sample its own coalition ([K, N, units]): the mask input
        # already has one row per (coalition, sample), except on the mixing path
        self.per_sample_masks = not self.mixing
        model = to_proto(self.analysis.graph, self.ident)
        sess = self._session(model, device)
        self.backend: Backend = backend_for(sess)
        self.device = self.backend.device
        self._mixing_sessions: dict[tuple[Any, ...], Any] = {}  # see _values_mixing
        # per-sample dims of every tensor for the calibration inputs' shapes (a sequence
        # length, say): what the memory estimates of sub-models start from (unused when mixing)
        self._acts = {} if self.mixing else activations(
            model, {k: v.shape[1:] for k, v in self._inputs.items()})
        self._dims = {name: dims for name, (_, dims) in self._acts.items()}
        names = [o.name for o in sess.get_outputs()]
        self.out_axes = batch_axes(sess, self._inputs, names)  # [T, N, C] outputs: axis 1
        self.reference = self._reference(model, sess)
        self._labels = calib.labels
        self._full = (self._inputs, self.reference, calib.labels)  # use_samples restores these
        value_fn.prepare(self.reference, calib.labels)
        self._check_reference_value()

    # -- public

    def values(self, gid: int, coalitions: np.ndarray) -> np.ndarray:
        """bool [K, units] (True = kept) -> per-sample values [K, N] (float64)."""
        return self.values_joint([gid], coalitions)

    def values_joint(self, gids: list[int], coalitions: np.ndarray) -> np.ndarray:
        """bool [K, sum of the groups' units], columns in the order of `gids` -> [K, N].
        Per-sample coalitions [K, N, units] give sample i of coalition k its own mask."""
        gids = tuple(int(g) for g in gids)
        if not gids or len(set(gids)) != len(gids):
            raise ValueError(f"groups must be distinct and at least one, got {list(gids)}")
        widths = [self.analysis.group(g).units for g in gids]
        coalitions = np.asarray(coalitions)
        shape = f"[K, {sum(widths)}]" + (f" or [K, {self.n}, {sum(widths)}]" if self.per_sample_masks else "")
        per_sample = coalitions.ndim == 3 and coalitions.shape[1] == self.n and self.per_sample_masks
        if coalitions.ndim not in (2, 3) or coalitions.shape[-1] != sum(widths) or (
                coalitions.ndim == 3 and not per_sample):
            raise ValueError(f"coalitions must be {shape} for groups {list(gids)}, got {coalitions.shape}")
        masks = np.split(coalitions.astype(np.float32), np.cumsum(widths)[:-1], axis=-1)
        out = np.empty((coalitions.shape[0], self.n), dtype=np.float64)
        if coalitions.shape[0] == 0:
            return out
        if self.mixing:
            out[:] = self._values_mixing(gids, masks)
            self._count(coalitions.shape[0])
            return out
        plan = self._activate(gids)
        for start in range(0, coalitions.shape[0], plan.k_value):
            block = slice(start, min(coalitions.shape[0], start + plan.k_value))
            out[block] = self.value_fn(self._outputs(plan, [m[block] for m in masks]))
        self._count(coalitions.shape[0])
        return out

    def use_samples(self, n: int) -> None:
        """Evaluate coalitions on the first `n` calibration samples (all of them when n is at
        least their number): what a time budget too short for the estimators' minimum scales
        down (scoring/plan.py fit_time). Plans are dropped (their chunks and caches are for
        the old n); the value function is prepared again on the reference of those samples."""
        inputs, reference, labels = self._full
        n = max(1, min(int(n), reference[0].shape[0]))
        if n == self.n:
            return
        self._inputs = {k: v[:n] for k, v in inputs.items()}
        self.reference = [r[:n] for r in reference]
        self._labels = None if labels is None else labels[:n]
        self.n = n
        self._plans.clear()
        self._mixing_sessions.clear()
        self.value_fn.prepare(self.reference, self._labels)

    def tuned_seconds_per_evaluation(self, gid: int) -> float | None:
        """ORT seconds of one coalition of group `gid` over all samples, from the K tuning of
        its plan (the best of its timed runs at the chosen K, scaled from the first chunk's
        rows to all chunks); None when the group has no plan or its K was not measured (not
        CPU, K = 1 by the memory budget). The plan (scoring/plan.py) reads it instead of
        timing extra probe runs."""
        plan = self._plans.get((int(gid),))
        seconds = plan.est.get("tuned_s_per_coalition") if plan is not None else None
        if seconds is None:
            return None
        return float(seconds) * sum(c.rows for c in plan.chunks) / plan.chunks[0].rows

    def _count(self, k: int) -> None:
        self.evaluations += k
        if self.on_values is not None:  # progress within a group (run._score_groups)
            self.on_values(self.evaluations)

    def info(self) -> dict[str, Any]:
        plan = next(reversed(self._plans.values()), None)
        return {
            "device": self.backend.device, "path": self.path, "batch": self.batch,
            "samples": self.n, "budget_mb": round(self.budget / 2**20, 1),
            "evaluations": self.evaluations, "threads": self.threads,
            "k_per_run": plan.k_run if plan else None,
            "samples_per_run": plan.chunks[0].stop - plan.chunks[0].start if plan else None,
            "cache_mb": round(sum(p.cache_bytes for p in self._plans.values()) / 2**20, 2),
            "plans": {",".join(map(str, p.gids)): {
                "prefix": p.prefixed, "k_per_run": p.k_run, "k_max": p.k_max, "tuned": p.tuned,
                "chunks": len(p.chunks),
                "cache_mb": round(p.cache_bytes / 2**20, 2),
                **{k: v for k, v in p.est.items()}} for p in self._plans.values()},
        }

    # -- setup

    @staticmethod
    def _check_inputs(analysis: Analysis, calib: Calibration) -> dict[str, np.ndarray]:
        names = [t.name for t in analysis.graph.inputs]
        missing = [n for n in names if n not in calib.inputs]
        if missing:
            raise OnnxPruneError(f"calibration data has no array for model input(s) {missing}")
        if calib.n_samples < 1:
            raise OnnxPruneError("calibration data has no samples")
        return {n: calib.inputs[n] for n in names}

    def _tensor_outputs_only(self, analysis: Analysis) -> Analysis:
        """Value functions read tensors: outputs that are not (a ZipMap's sequence of maps)
        are dropped from the scored graph, with the nodes only they need."""
        if not any(t.name in self.ident.io_types for t in analysis.graph.outputs):
            return analysis
        graph = analysis.graph.copy()
        graph.outputs = [t for t in graph.outputs if t.name not in self.ident.io_types]
        if not graph.outputs:
            raise OnnxPruneError("the model has no tensor output to score (only "
                                 f"{', '.join(self.ident.io_types)})")
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return dataclasses.replace(analysis, graph=graph)

    def _batch_mode(self, analysis: Analysis) -> tuple[Analysis, int | None, str]:
        fixed = input_batch(analysis.graph)
        if fixed is None:
            return analysis, None, "dynamic"
        if fixed == 1:
            dynamic = make_batch_dynamic(analysis, self.ident, self._inputs)
            if dynamic is not None:
                return dynamic, None, "made dynamic"
        return analysis, fixed, f"fixed {fixed}"

    def _session(self, model: onnx.ModelProto, device: str, preoptimized: bool = False) -> Any:
        if not preoptimized:  # CPU: the same rewrites as the cut's optimized graph
            cpu = device == "cpu" or (device == "auto" and "CUDAExecutionProvider"
                                      not in ort().get_available_providers())
            skip = {"disabled_optimizers": CPU_DISABLED_OPTIMIZERS} if cpu else {}
            return make_session(model, device, self.threads, spinning=self.spinning, **skip)
        return preoptimized_session(model, self.threads, self.spinning)

    def _values_mixing(self, gids: tuple[int, ...], masks: list[np.ndarray]) -> np.ndarray:
        """One suffix run per coalition (and chunk) on the whole calibration set, masks of
        batch 1. The mask-free prefix runs once per group: a chunk's suffix reads exactly
        the prefix outputs of that chunk, so no cut tensor needs the samples on axis 0."""
        key = ("mixing", *gids)
        if key not in self._mixing_sessions:
            self._mixing_sessions.clear()  # one group's cached activations at a time
            self._mixing_sessions[key] = self._mixing_plan(gids)
        sess, cut, feeds, chunks = self._mixing_sessions[key]
        names = [t.name for t in self.analysis.graph.outputs]
        index = {names.index(o): j for j, o in enumerate(cut.outputs)}
        values = []
        for row in range(masks[0].shape[0]):
            extra = {mask_name(g): m[row:row + 1] for g, m in zip(gids, masks)}
            parts = [self._run_mixing_chunk(sess, cut, feed, c, extra) for feed, c in zip(feeds, chunks)]
            outs = [np.concatenate(p) for p in zip(*parts)]
            values.append(self.value_fn([(outs[index[i]] if i in index else ref)[None]
                                         for i, ref in enumerate(self.reference)])[0])
        self.path = "one coalition per run (batch-mixing ops)" + ("+prefix" if cut.prefix else "")
        return np.stack(values)

    def _mixing_plan(self, gids: tuple[int, ...]) -> tuple[Any, Cut, list[dict], list[Chunk]]:
        """(suffix session, cut, per-chunk data inputs, chunks) for the mixing path; chunks
        as `run_chunks` makes them (the whole set, or the fixed batch with the tail padded)."""
        chunks = make_chunks(self.n, self.n, self.fixed_rows)
        fill = site_fill(self.analysis, gids, self.fill)
        cut = cut_model(self.analysis, self.ident, gids, fill, self.prefix_cache,
                        aligned=lambda ts: {t.name for t in ts}, means=self.means)
        feeds = self._mixing_feeds(cut, chunks) if cut.prefix is not None else None
        if feeds is None:  # no prefix, or caching it would not pay or fit
            cut = cut_model(self.analysis, self.ident, gids, fill, False, means=self.means)
            feeds = [{k: chunk_rows(v, c) for k, v in self._inputs.items() if k in cut.inputs}
                     for c in chunks]
        return self._session(cut.suffix, self.device), cut, feeds, chunks

    def _mixing_feeds(self, cut: Cut, chunks: list[Chunk]) -> list[dict] | None:
        if cut.mac_share > _MAX_SUFFIX_SHARE:
            return None  # a source-graph cut costs ORT fusions: worth it only for a short suffix
        sess = self._session(cut.prefix, self.device)
        feeds, nbytes = [], 0
        for c in chunks:
            data = {k: chunk_rows(v, c) for k, v in self._inputs.items()}
            outs = sess.run(cut.cached, {i.name: data[i.name] for i in sess.get_inputs()})
            nbytes += sum(np.asarray(o).nbytes for o in outs)
            if nbytes > _CACHE_SHARE * self.budget:
                return None
            feeds.append({**{k: v for k, v in data.items() if k in cut.inputs},
                          **dict(zip(cut.cached, outs))})
        return feeds

    def _run_mixing_chunk(self, sess: Any, cut: Cut, feed: Mapping[str, np.ndarray], c: Chunk,
                          extra: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The mask-dependent outputs of one chunk, samples on axis 0, padding cut off."""
        names = [t.name for t in self.analysis.graph.outputs]
        outs = sess.run(cut.outputs, {**feed, **extra})
        outs = [np.moveaxis(o, self.out_axes[names.index(n)], 0) for o, n in zip(outs, cut.outputs)]
        return [o[:c.stop - c.start] for o in outs]

    def _run_whole(self, sess: Any, masks: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Every output on the whole calibration set at once (a fixed batch: its own size at a
        time), samples on axis 0."""
        names = [o.name for o in self.analysis.graph.outputs]
        parts = [outs for _, _, outs in run_chunks(sess, self._inputs, self.n, names,
                                                   extra=masks, axes=self.out_axes)]
        return [np.concatenate(p) for p in zip(*parts)]

    def _reference(self, model: onnx.ModelProto, sess: Any) -> list[np.ndarray]:
        """The unmasked model's (`sess` runs `model`) outputs on the calibration set."""
        if self.mixing:  # the model sees the whole set at once, as in _values_mixing
            return self._run_whole(sess, {})
        per_row = max(1, row_bytes(model, self._dims)[0])
        chunks = make_chunks(self.n, self.budget // per_row, self.fixed_rows)
        names = [o.name for o in sess.get_outputs()]
        parts = []
        for c in chunks:
            data = {k: self.backend.put(chunk_rows(v, c)) for k, v in self._inputs.items()}
            outs = self.backend.run(sess, data, {}, names)
            parts.append([np.moveaxis(np.asarray(o), a, 0)[:c.stop - c.start]
                          for o, a in zip(outs, self.out_axes)])
        return [np.concatenate(p) for p in zip(*parts)]

    def _check_reference_value(self) -> None:
        """The unmasked model must have a finite value on every sample: a NaN there (a
        diverged checkpoint, NaN weights) would make every coalition's value NaN. The user's
        to fix, so one line naming the outputs and how many samples they fail on."""
        full = np.asarray(self.value_fn([r[None] for r in self.reference]), np.float64)
        if np.isfinite(full).all():
            return
        names = [t.name for t in self.analysis.graph.outputs]
        bad = [(name, int(np.count_nonzero(~np.isfinite(r.reshape(self.n, -1)).all(axis=1))))
               for name, r in zip(names, self.reference)
               if r.size and np.issubdtype(r.dtype, np.floating)]
        bad = [f"'{name}' on {count} of {self.n}" for name, count in bad if count]
        what = (f"output {', '.join(bad)} calibration samples" if bad else
                f"value on {int(np.count_nonzero(~np.isfinite(full)))} of {self.n} calibration samples")
        raise OnnxPruneError(f"the original model's {what} is not finite (NaN or inf): value function "
                             f"'{self.value_fn.name}' cannot rank units on it; check the "
                             "model's weights and the calibration data")

    # -- plans

    def _activate(self, gids: tuple[int, ...]) -> Plan:
        """The plan for `gids`, most recent in the LRU, with its cache filled; others' caches
        are dropped first so that only one set of activations is held."""
        plan = self._plans.pop(gids, None) or self._plan(gids, self.prefix_cache)
        for other in self._plans.values():
            other.feeds, other.cache_bytes = None, 0
        while len(self._plans) >= _MAX_PLANS:
            self._plans.popitem(last=False)
        if plan.feeds is None and not self._fill(plan):
            plan = self._plan(gids, prefix=False)  # the prefix broke the row contract
            self._fill(plan)
        self._plans[gids] = plan
        self.path = ("one-per-run (fixed batch)" if self.fixed_rows else "batched") + \
            ("+prefix" if plan.prefixed else "")
        return plan

    def _plan(self, gids: tuple[int, ...], prefix: bool) -> Plan:
        for g in gids:
            if not self.analysis.group(g).prunable:
                raise OnnxPruneError(f"group {g} is not prunable: {self.analysis.group(g).reason}")
        cut = cut_model(self.analysis, self.ident, gids, site_fill(self.analysis, gids, self.fill),
                        prefix and not self.mixing, self.backend.tile_in_graph, self._aligned,
                        means=self.means, preoptimize=self.backend.device == "cpu",
                        samples=self._inputs if self.fixed_rows is None else None)
        cache_row = self._cache_row(cut)
        cache = cache_row * self.n
        if prefix and cut.prefix is not None and (
                cache > _CACHE_SHARE * self.budget
                or (not cut.preoptimized and cut.mac_share > _MAX_SUFFIX_SHARE)):
            # Caching would eat the budget, or save little: a cut of the source graph costs
            # ORT fusions (a Conv can no longer absorb a residual Add whose operand is a graph
            # input) and can then be slower than the whole model (bench/engine.py).
            return self._plan(gids, prefix=False)
        chunks, k_run, k_max, est = self._sizes(cut, cache)
        est["cache_row_bytes"] = cache_row
        est["preoptimized"] = cut.preoptimized
        session = self._session(cut.suffix, self.device, cut.preoptimized)
        return Plan(gids, cut, session, chunks, k_run, k_max, est)

    def _cache_row(self, cut: Cut) -> int:
        """Bytes per sample of the cached tensors: inferred for the calibration's shapes, or for
        those ORT made (an NCHWc copy pads channels), the dims their probe declared."""
        declared = {vi.name: vi.type.tensor_type for vi in cut.suffix.graph.input}
        total = 0
        for name in cut.cached:
            if name in self._acts:
                size, dims = self._acts[name]
                total += size * int(np.prod(dims, dtype=np.int64))
            elif name in declared:
                tt = declared[name]
                dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim[1:]]
                itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
                total += itemsize * int(np.prod(dims, dtype=np.int64))
        return total

    def _aligned(self, tensors: list[gs.Variable]) -> set[str]:
        """Which candidate cut tensors carry the samples on axis 0: from inferred shapes, and
        where those name no dim, by a probe run (cached per tensor)."""
        batch_dims = {t.shape[0] for t in self.analysis.graph.inputs if t.shape}
        state = {t.name: batch_dim_state(t, batch_dims) for t in tensors}
        unknown = [n for n, v in state.items() if v is None and n not in self._probed
                   and n in self._source_names]  # ORT's new tensors: their producer joins
        if unknown and self.fixed_rows is None:
            if not self._probed:  # the first probe asks for every such tensor of the graph:
                every = self._unknown_tensors(batch_dims)  # one session, not one per group
                ok = probe_aligned(self.analysis, self.ident, every, self._inputs)
                if ok:  # (nothing passing may be one tensor failing the whole probe)
                    self._probed.update({n: n in ok for n in every})
                unknown = [n for n in unknown if n not in self._probed]
            if unknown:
                ok = probe_aligned(self.analysis, self.ident, unknown, self._inputs)
                self._probed.update({n: n in ok for n in unknown})
        return {n for n, v in state.items() if v or (v is None and self._probed.get(n, False))}

    def _unknown_tensors(self, batch_dims: set) -> list[str]:
        """Every computed tensor whose inferred dim 0 may or may not be the batch."""
        return [t.name for t in self.analysis.graph.tensors().values()
                if isinstance(t, gs.Variable) and t.inputs and batch_dim_state(t, batch_dims) is None]

    def _sizes(self, cut: Cut, cache: int) -> tuple[list[Chunk], int, int, dict[str, Any]]:
        """Samples per run n, coalitions per run K (an estimate K tuning may replace) and the
        largest K the budget allows.

        Memory: a run of K coalitions x n samples needs about K*n suffix rows (its inputs, held
        tiled between runs on CPU, included) plus the K*N output buffer; the prefix needs n
        rows of its own; the cache is held throughout; value-function calls get blocks of
        outputs worth up to 1/8 of the rest (at most _VALUE_BYTES).
        Speed: a GPU wants the biggest batch that fits. On CPU more rows stop paying once the
        working set outgrows the caches; without tuning K stops where the largest activation
        of a run reaches _CPU_RUN_BYTES."""
        sizing = cut.plain or cut  # shapes of the source graph (ORT's contrib ops infer none)
        suffix_row, largest = row_bytes(sizing.suffix, self._dims)
        suffix_row += max(0, self._cache_row(cut) - self._cache_row(sizing))  # NCHWc copies
        prefix_row = row_bytes(sizing.prefix, self._dims)[0] if sizing.prefix is not None else 0
        out_row = sum(self.reference[i].nbytes // self.n for i in self._output_index(cut))
        avail = max(self.budget - cache, 1)
        value_bytes = min(avail // 8, _VALUE_BYTES)
        avail -= value_bytes
        est: dict[str, Any] = {
            "suffix_mac_share": round(cut.mac_share, 3), "suffix_row_bytes": suffix_row,
            "prefix_row_bytes": prefix_row, "output_row_bytes": out_row, "cache_bytes": cache,
            "value_coalitions": max(1, value_bytes // max(1, self.n * out_row))}
        if self.fixed_rows:
            return make_chunks(self.n, 0, self.fixed_rows), 1, 1, est
        per_sample = max(prefix_row, suffix_row + out_row, 1)
        n_run = int(min(self.n, max(1, avail // per_sample)))
        k_max = 1
        if n_run == self.n:
            k_max = max(1, avail // max(1, self.n * (suffix_row + out_row)))
        if self.max_coalitions:
            k_max = min(k_max, self.max_coalitions)
        k_run = k_max
        if self.backend.device == "cpu":
            k_run = min(k_max, max(1, _CPU_RUN_BYTES // max(1, largest * self.n)))
        return make_chunks(self.n, n_run, None), int(k_run), int(k_max), est

    def _output_index(self, cut: Cut) -> list[int]:
        names = [t.name for t in self.analysis.graph.outputs]
        return [names.index(o) for o in cut.outputs]

    def _fill(self, plan: Plan) -> bool:
        """Per chunk, the suffix's data inputs: calibration rows and prefix outputs, held for
        K coalitions. False if a prefix output does not have the chunk's rows (then the plan
        must not be cut)."""
        sess = (self._session(plan.cut.prefix, self.device, plan.cut.preoptimized)
                if plan.prefixed else None)
        feeds, nbytes = [], 0
        for c in plan.chunks:
            chunk = {k: self.backend.put(chunk_rows(v, c)) for k, v in self._inputs.items()
                     if k in plan.cut.inputs}
            if sess is not None:
                names = [i.name for i in sess.get_inputs()]
                data = {k: self.backend.put(chunk_rows(self._inputs[k], c)) for k in names}
                outs = self.backend.run(sess, data, {}, plan.cut.cached, keep=True)
                if any(self.backend.rows(o) != c.rows for o in outs):
                    return False
                chunk.update(zip(plan.cut.cached, outs))
                sizes = [self.backend.nbytes(o) for o in outs]  # NCHWc pads channels
                nbytes += sum(sizes) if None not in sizes else plan.est["cache_row_bytes"] * c.rows
            feeds.append(chunk)
        del sess
        if self.tune and not plan.tuned and self.backend.device == "cpu" and plan.k_max > 1:
            size, k_cap = size_class(plan), tune_cap(plan, self.expected)
            if size in self._tuned:  # an earlier group's suffix of this size measured it
                k, seconds = self._tuned[size]
                plan.k_run, plan.tuned = min(plan.k_max, k), True
                plan.est["tuned_from_size_class"] = list(size)
                plan.est["tuned_s_per_coalition"] = seconds
            elif k_cap > 1:
                widths = [self.analysis.group(g).units for g in plan.gids]
                tune(plan, feeds[0], k_cap, widths, self.backend.hold,
                     lambda held, masks, k: self._timed_run(plan, held, masks, k,
                                                            plan.chunks[0].rows))
                if k_cap >= plan.k_max:  # a K capped by little work is not the class's best
                    self._tuned[size] = (plan.k_run, plan.est["tuned_s_per_coalition"])
        copies = 1 if self.backend.tile_in_graph else plan.k_run
        plan.feeds = [self.backend.hold(f, copies) for f in feeds]
        plan.cache_bytes = nbytes * copies
        return True

    # -- running

    def _run(self, plan: Plan, held: Mapping[str, Any], masks: list[np.ndarray], k: int,
             rows: int) -> list[Any]:
        """One ORT run of k coalitions x `rows` samples; masks are [k*rows, units] each."""
        data, extra = self.backend.tiled(held, k, rows)
        host = {mask_name(g): m for g, m in zip(plan.gids, masks)}
        return self.backend.run(plan.session, data, {**host, **extra}, plan.cut.outputs)

    def _timed_run(self, plan: Plan, held: Mapping[str, Any], masks: list[np.ndarray], k: int,
                   rows: int) -> float:
        t0 = time.perf_counter()
        self._run(plan, held, masks, k, rows)
        return time.perf_counter() - t0

    def _outputs(self, plan: Plan, masks: list[np.ndarray]) -> list[np.ndarray]:
        """All model outputs [k, N, ...] for k coalitions (rows of `masks`), k_run per run."""
        k = masks[0].shape[0]
        index = self._output_index(plan.cut)
        bufs = {i: np.empty((k, *self.reference[i].shape), self.reference[i].dtype) for i in index}
        for c, held in zip(plan.chunks, plan.feeds):
            rep = [mask_rows(m, c) for m in masks]  # row j*rows + i: coalition j, sample i
            for s in range(0, k, plan.k_run):
                e = min(k, s + plan.k_run)
                outs = self._run(plan, held, [r[s * c.rows:e * c.rows] for r in rep], e - s, c.rows)
                for i, out in zip(index, outs):
                    out = np.moveaxis(np.asarray(out), self.out_axes[i], 0)
                    out = out.reshape(e - s, c.rows, *out.shape[1:])
                    bufs[i][s:e, c.start:c.stop] = out[:, :c.stop - c.start]
        return [bufs[i] if i in bufs else np.broadcast_to(ref[None], (k, *ref.shape))
                for i, ref in enumerate(self.reference)]
