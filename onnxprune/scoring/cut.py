"""Graph cutting for prefix caching: the scoring model of a set of groups split into a
mask-free prefix (run once per group on the calibration data) and a masked suffix (run per
coalition batch), and the probes that decide where a cut may be made.

A cut tensor is fed n rows and tiled K times, so it must carry the samples on axis 0: known
from inferred shapes, else proven by a probe run on two samples; failing that, its producer
joins the suffix. On CPU the cut is made on the graph ORT itself runs (`optimized_cpu_model`:
its fusions and NCHWc layout stay as in a full run), on CUDA on the source graph.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..compiler.analysis import Analysis
from ..compiler.cost import count_macs, node_macs
from ..compiler.graph import ModelIdentity, to_proto
from ..compiler.instrument import instrument, mask_name
from ..errors import OnnxPruneError
from ..runtime import make_session, ort, session_options, session_source
from .fixedbatch import same
from .memory import light_copy

TILE_INPUT = "onnxprune_tile"  # the suffix's extra input [K] when it tiles its data itself
# ORT CPU rewrites the engine's sessions leave out. SkipLayerNormalization (a residual Add
# fused into the LayerNorm after it) ran ~7x slower than LayerNorm + Add on this machine
# (ORT 1.32, 2 cores): 21% of a MiniLM forward pass and of every evaluation
# (bench/evalcost.py). Values change only at float32 rounding (the sum order).
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)

__all__ = ["CPU_DISABLED_OPTIMIZERS", "TILE_INPUT", "Aligned", "Cut", "batch_dim_state", "cut_model",
           "optimized_cpu_model",
           "preoptimized_session", "probe_aligned", "shape_aligned", "site_fill"]


@dataclass
class Cut:
    """Where the scoring model of one set of groups is cut."""

    suffix: onnx.ModelProto
    prefix: onnx.ModelProto | None     # computes the cut tensors that are not graph inputs
    inputs: list[str]                  # the suffix's data inputs (cut tensors), n rows each
    cached: list[str]                  # the ones the prefix computes
    outputs: list[str]                 # model outputs that depend on the masks
    mac_share: float                   # the suffix's share of the model's MACs
    plain: Cut | None = None           # set when cut from ORT's optimized graph: the same cut
                                       # of the source graph, whose shapes size the runs

    @property
    def preoptimized(self) -> bool:
        """Prefix and suffix are ORT's optimized graph: sessions must not optimize again."""
        return self.plain is not None


Aligned = Callable[[list[gs.Variable]], set[str]]


def cut_model(analysis: Analysis, ident: ModelIdentity, gids: Sequence[int],
              fill: Mapping[tuple[str, int], np.ndarray] | None, prefix: bool,
              tile_in_graph: bool = False, aligned: Aligned | None = None,
              means: Mapping[str, np.ndarray] | None = None,
              preoptimize: bool = False,
              samples: Mapping[str, np.ndarray] | None = None) -> Cut:
    """Instrument `gids` and split the model into a mask-free prefix and a masked suffix
    (with `tile_in_graph`, one that tiles its data inputs K times itself). `aligned` says
    which tensors carry the samples on axis 0 (default: those whose inferred dim 0 is the
    inputs' batch dim).

    With `preoptimize` (CPU) the split is made on the graph ORT's CPU provider would run for
    the whole instrumented model (`optimized_cpu_model`): fusions and NCHWc layout stay as in
    a full run. Cutting the source graph instead breaks them where a cut tensor feeds a
    residual Add (the Add, a reorder and the Relu then run apart: half of a late group's
    suffix time on resnet_bottleneck). Tensors ORT made are probed on `samples` (None: they
    are not cut, their producers join the suffix). Falls back to the source graph's cut."""
    graph = instrument(analysis, gids, fill=fill, means=means)
    masks = [mask_name(g) for g in gids]
    has_subgraphs = any(isinstance(v, gs.Graph) or (isinstance(v, list) and v and isinstance(v[0], gs.Graph))
                        for n in graph.nodes for v in n.attrs.values())
    cuttable = prefix and not has_subgraphs  # subgraphs may read outer tensors implicitly
    full = to_proto(graph, ident) if cuttable and preoptimize else None  # before the split
    aligned = aligned or shape_aligned(analysis.graph)
    plain = _split(graph, ident, analysis.graph, masks, cuttable, tile_in_graph, aligned)
    total = count_macs(analysis.graph, analysis.measured)
    own = sum(node_macs(n, analysis.measured) for n in graph.nodes
              if not n.name.startswith("onnxprune_"))
    plain.mac_share = own / total if total else 0.0  # the model's own MACs left in the suffix
    optimized = optimized_cpu_model(full) if full is not None and plain.prefix is not None else None
    if optimized is None:
        return plain
    batch = next((t.shape[0] for t in analysis.graph.inputs if t.shape), None)
    try:
        cut = _split_optimized(optimized, masks, aligned, samples, batch)
    except Exception:  # ORT's graph is only a speed-up: any trouble with it, the plain cut
        return plain
    if cut.prefix is None or cut.outputs != plain.outputs:  # nothing left to cache: plain
        return plain
    # the source cut only sizes the runs: its shapes without the weights
    light = dataclasses.replace(plain, suffix=light_copy(plain.suffix, {}),
                                prefix=plain.prefix and light_copy(plain.prefix, {}))
    return dataclasses.replace(cut, mac_share=plain.mac_share, plain=light)


def _split_optimized(optimized: onnx.ModelProto, masks: list[str], aligned: Aligned,
                     samples: Mapping[str, np.ndarray] | None, batch: Any) -> Cut:
    graph = gs.import_onnx(optimized)
    graph.toposort()
    ident, source = ModelIdentity.of(optimized), graph.copy()
    checked = _optimized_aligned(aligned, source, ident, samples, batch)
    return _split(graph, ident, source, masks, True, False, checked)


def _split(graph: gs.Graph, ident: ModelIdentity, source: gs.Graph, masks: list[str],
           cuttable: bool, tile_in_graph: bool, aligned: Aligned) -> Cut:
    """The cut of instrumented `graph` (changed in place) at the tensors its mask-dependent
    nodes read; the prefix is taken from `source`, the same graph without masks."""
    if cuttable:
        suffix_nodes = _dependent(graph, set(masks))
    else:
        suffix_nodes = {id(n) for n in graph.nodes}
    cut = _cut_tensors(graph, suffix_nodes, set(masks), aligned, set(source.tensors()))
    produced = {o.name for n in graph.nodes if id(n) in suffix_nodes for o in n.outputs}
    outputs = [t.name for t in graph.outputs if t.name in produced]
    data_inputs = {t.name for t in graph.inputs}
    cached = [name for name in cut if name not in data_inputs]
    suffix = _suffix(graph, ident, cut, masks, outputs, tile_in_graph)
    return Cut(suffix, _prefix(source, ident, cached), cut, cached, outputs, 1.0)


def optimized_cpu_model(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """`model` after all of ORT's CPU graph optimizations (as saved by ORT: contrib ops, NCHWc
    tensors; valid on this machine and ORT version only), or None if ORT cannot save it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        opts = session_options(1, spinning=False)
        opts.optimized_model_filepath = path
        try:
            source, weights = session_source(model, opts)  # the same bytes saved, 0.39 -> 0.25 s on MiniLM
            ort().InferenceSession(source, opts, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS))
            del weights  # read while the session was built
            return onnx.load(path, load_external_data=False)  # ORT saves its graph inline
        except Exception:  # e.g. a model over 2 GB: the source graph's cut still works
            return None


def _dependent(graph: gs.Graph, sources: set[str]) -> set[int]:
    """Nodes that (transitively) read a mask. The graph is topologically sorted."""
    tainted, nodes = set(sources), set()
    for node in graph.nodes:
        if any(t.name in tainted for t in node.inputs):
            nodes.add(id(node))
            tainted.update(o.name for o in node.outputs)
    return nodes


def _cut_tensors(graph: gs.Graph, suffix_nodes: set[int], masks: set[str],
                 aligned: Aligned, known: set[str]) -> list[str]:
    """Tensors the suffix reads from outside (extends `suffix_nodes` in place).

    A cut tensor is fed n rows and tiled K times, so it must carry the samples on axis 0;
    one that does not (a Shape result, a tensor of unknown shape) has its producer pulled
    into the suffix, until every cut tensor is per-sample or a graph input. So is one that
    only the instrumentation made (not in `known`, the source graph's tensors: the prefix,
    cut from the source, cannot compute it; e.g. the row shape a merged-row mask site reads)."""
    producer = {id(t): t.inputs[0] for n in graph.nodes for t in n.outputs if t.inputs}
    while True:
        produced = {o.name for n in graph.nodes if id(n) in suffix_nodes for o in n.outputs}
        cut: dict[str, gs.Variable] = {}
        for node in graph.nodes:
            if id(node) in suffix_nodes:
                for t in node.inputs:
                    if isinstance(t, gs.Variable) and t.name and t.name not in produced \
                            and t.name not in masks:
                        cut.setdefault(t.name, t)
        inner = [t for t in cut.values() if id(t) in producer]
        ok = aligned([t for t in inner if t.name in known])
        pull = [producer[id(t)] for t in inner if t.name not in ok]
        if not pull:
            return list(cut)
        suffix_nodes.update(id(n) for n in pull)


def batch_dim_state(t: gs.Variable, batch_dims: set) -> bool | None:
    """From inferred shapes: True if dim 0 is the inputs' batch dim, False if it cannot be
    (no shape, no dtype, rank 0, another static size), None if unknown (a dim name that
    shape inference made up, e.g. after broadcasting with an unknown dim)."""
    if not t.shape or t.dtype is None:
        return False
    if t.shape[0] in batch_dims:
        return True
    return None if isinstance(t.shape[0], str) or t.shape[0] is None else False


def shape_aligned(graph: gs.Graph) -> Aligned:
    batch_dims = {t.shape[0] for t in graph.inputs if t.shape}
    return lambda tensors: {t.name for t in tensors if batch_dim_state(t, batch_dims)}


def probe_aligned(analysis: Analysis, ident: ModelIdentity, names: list[str],
                  samples: Mapping[str, np.ndarray]) -> set[str]:
    """The tensors among `names` whose row i depends on sample i only, by running them on two
    samples at once and on each alone (for dims shape inference could not name)."""
    return set(_probe(analysis.graph, ident, names, samples,
                      lambda model: make_session(model, "cpu")))


def _probe(graph: gs.Graph, ident: ModelIdentity, names: list[str],
           samples: Mapping[str, np.ndarray], session: Callable[[onnx.ModelProto], Any]
           ) -> dict[str, np.ndarray]:
    """probe_aligned on any graph: name -> its value on two samples, for those that pass."""
    if min(arr.shape[0] for arr in samples.values()) < 2:
        return {}  # one sample cannot show that rows stay apart
    graph = graph.copy()
    tensors = graph.tensors()
    graph.outputs = [tensors[n] for n in names]
    graph.cleanup(remove_unused_graph_inputs=True)
    try:
        sess = session(to_proto(graph, ident))
        feeds = {i.name: samples[i.name][:2] for i in sess.get_inputs()}
        both = sess.run(None, feeds)
        alone = [sess.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(2)]
    except Exception:  # the probe itself does not run: prove nothing
        return {}
    return {name: both[j] for j, name in enumerate(names)
            if same(both[j], np.concatenate([alone[0][j], alone[1][j]])
                     if alone[0][j].ndim and alone[0][j].shape[0] == 1 else None)}


def preoptimized_session(model: onnx.ModelProto, threads: int | None = None,
                         spinning: bool = False) -> Any:
    """A CPU session for a graph ORT already optimized (optimizing it again is unsupported)."""
    opts = session_options(threads, spinning=spinning)
    opts.graph_optimization_level = ort().GraphOptimizationLevel.ORT_DISABLE_ALL
    source, weights = session_source(model, opts)
    sess = ort().InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    sess.onnxprune_weights = weights  # read in place: alive with the session
    return sess


def _optimized_aligned(aligned: Aligned, graph: gs.Graph, ident: ModelIdentity,
                       samples: Mapping[str, np.ndarray] | None, batch: Any) -> Aligned:
    """`aligned` for ORT's optimized `graph`: the tensors it made (NCHWc ones, say) carry no
    shape or type, so a probe decides, and gives them the dtype and dims the suffix's inputs
    must declare."""
    probed: dict[str, np.ndarray | None] = {}

    def check(tensors: list[gs.Variable]) -> set[str]:
        ok = aligned([t for t in tensors if t.dtype is not None])
        unknown = [t for t in tensors if t.dtype is None]
        new = [t.name for t in unknown if t.name not in probed]
        if new and samples is not None:
            found = _probe(graph, ident, new, samples, preoptimized_session)
            probed.update({n: found.get(n) for n in new})
        for t in unknown:
            value = probed.get(t.name)
            if value is not None:
                t.dtype, t.shape = value.dtype, [batch, *value.shape[1:]]
                ok.add(t.name)
        return ok
    return check


def _suffix(graph: gs.Graph, ident: ModelIdentity, cut: list[str], masks: list[str],
            outputs: list[str], tile_in_graph: bool) -> onnx.ModelProto:
    """The instrumented graph from the cut tensors on (each tiled K times if asked)."""
    tensors = graph.tensors()
    for name in cut:
        tensors[name].inputs.clear()  # detach from the prefix
    graph.inputs = [tensors[n] for n in cut] + [tensors[m] for m in masks]
    graph.outputs = [tensors[n] for n in outputs]
    graph.cleanup(remove_unused_graph_inputs=False)
    if tile_in_graph:
        tile = gs.Variable(TILE_INPUT, np.int64, (1,))
        graph.inputs.append(tile)
        repeats: dict[int, gs.Variable] = {}
        for name in cut:
            _tile_input(graph, tensors[name], tile, repeats)
    graph.toposort()
    return to_proto(graph, ident)


def _tile_input(graph: gs.Graph, x: gs.Variable, tile: gs.Variable,
                repeats: dict[int, gs.Variable]) -> None:
    """Rewire x's consumers to Tile(x, [K, 1, ...]): row k*n + i of the result is x[i]."""
    rank = len(x.shape)
    if rank not in repeats:
        if rank == 1:
            repeats[rank] = tile
        else:
            ones = gs.Constant(f"{TILE_INPUT}_ones{rank}", np.ones(rank - 1, np.int64))
            repeats[rank] = gs.Variable(f"{TILE_INPUT}_r{rank}", np.int64, (rank,))
            graph.nodes.append(gs.Node("Concat", name=f"{TILE_INPUT}_r{rank}", attrs={"axis": 0},
                                       inputs=[tile, ones], outputs=[repeats[rank]]))
    tiled = gs.Variable(f"{x.name}__tiled", x.dtype, None)
    consumers = list(x.outputs)
    graph.nodes.append(gs.Node("Tile", name=f"{x.name}__tile", inputs=[x, repeats[rank]],
                               outputs=[tiled]))
    for node in consumers:
        for i, t in enumerate(node.inputs):
            if t is x:
                node.inputs[i] = tiled
    for i, t in enumerate(graph.outputs):  # a cut tensor that is also an output
        if t is x:
            graph.outputs[i] = tiled


def _prefix(source: gs.Graph, ident: ModelIdentity, cached: list[str]) -> onnx.ModelProto | None:
    if not cached:
        return None
    graph = source.copy()
    tensors = graph.tensors()
    graph.outputs = [tensors[n] for n in cached]
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    return to_proto(graph, ident)


def site_fill(analysis: Analysis, gids: Sequence[int],
              fill: Mapping[int, np.ndarray] | None) -> dict[tuple[str, int], np.ndarray] | None:
    """Per-unit fills of the groups -> per-channel fills at their sites (others get 0)."""
    wanted = [g for g in gids if fill is not None and g in fill]
    if not wanted:
        return None
    out: dict[tuple[str, int], np.ndarray] = {}
    for site in analysis.sites:
        groups, units = analysis.ch_group[site.ids], analysis.ch_unit[site.ids]
        values = np.zeros(len(site.ids), dtype=np.float64)
        touched = False
        for g in wanted:
            inside = groups == g
            if inside.any():
                per_unit = np.asarray(fill[g], dtype=np.float64).reshape(-1)
                if per_unit.shape[0] != analysis.group(g).units:
                    raise OnnxPruneError(f"fill for group {g} has {per_unit.shape[0]} values, "
                                         f"expected {analysis.group(g).units} (one per unit)")
                values[inside] = per_unit[units[inside]]
                touched = True
        if touched:
            out[(site.node, site.input_index)] = values
    return out

