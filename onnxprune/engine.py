"""Stage `score`, the engine: per-sample values v_s(S) of many coalitions S, cheaply.

    engine = Engine(analyze_model("m.onnx"), calib, NegKL())
    v = engine.values(gid, coalitions)          # bool [K, units] -> float64 [K, N]

Three things make a coalition cheap (DESIGN.md, Scoring):

- **Batched coalitions.** The mask input has a batch axis, so one ORT run evaluates K
  coalitions x n samples: the n-sample inputs are tiled K times and row k*n + i carries
  coalition k's mask. On CPU the host tiles once per group and every run feeds views of
  those copies (tiling per run cost as much as a late group's suffix; ORT's Tile kernel
  measured slower than the copy). On CUDA the scoring model tiles in the graph (a `Tile`
  fed by the extra input `onnxprune_tile` = [K]) so the data stays on the device and only
  the masks change between runs. n and the largest K come from a memory budget and the
  sub-model's activation sizes, estimated from inferred shapes; on CPU K itself is then
  measured (`Engine._tune`: a few timed runs at K = 1, 2, 4, ...), since what pays depends
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
the device as OrtValues and each run binds only the masks (`_CudaBackend`).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .analyze import Analysis
from .calib import Calibration
from .cost import count_macs, node_macs
from .errors import OnnxPruneError
from .graph import ModelIdentity, const_value, to_proto
from .instrument import instrument, mask_name
from .normalize import infer_shapes, strip_shapes
from .runtime import make_session, ort, session_device, session_options
from .value import ValueFunction

if TYPE_CHECKING:  # api will import the engine; avoid the cycle at run time
    from .api import AnalyzedModel

TILE_INPUT = "onnxprune_tile"
BATCH_SYMBOL = "onnxprune_batch"
DEFAULT_MAX_MB = 2048.0
_MAX_PLANS = 3          # scoring sessions kept (each holds its sub-model's weights)
_CACHE_SHARE = 0.5      # cached activations may use at most this share of the budget
_MAX_SUFFIX_SHARE = 0.75  # cut only when the suffix has at most this share of the MACs
_CPU_RUN_BYTES = 2 << 20  # CPU, untuned: largest activation of one run (about one L2 cache)
_VALUE_BYTES = 16 << 20   # outputs handed to one value-function call (its overhead is per call)
_TUNE_ROUNDS = 3          # timed runs per K when tuning (the minimum counts: load only adds)
_TUNE_SLOWER = 1.15       # stop doubling K once a coalition costs this much more than the best
_TUNE_RUN_S = 0.02        # ... or once one run is long enough to amortize its fixed cost

__all__ = ["Engine", "backend_for", "cut_model", "default_memory_mb", "make_batch_dynamic",
           "probe_aligned", "row_bytes", "site_fill"]


# ------------------------------------------------------------------------------- memory


def default_memory_mb() -> float:
    """A quarter of the available RAM, capped at 2 GB."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 8 << 30
    return min(avail / 4 / 2**20, DEFAULT_MAX_MB)


Dims = Mapping[str, Sequence[int]]  # tensor name -> dims after axis 0


def row_bytes(model: onnx.ModelProto, known: Dims | None = None) -> tuple[int, int]:
    """(all activations, the largest one) in bytes per batch row (axis 0), from shapes
    inferred with the graph inputs' other dims taken from `known` (the calibration data's).

    Summing every tensor over-estimates ORT's peak (it reuses buffers), which is the safe
    side for a budget. Dims still unknown count as 1."""
    total = largest = 0
    for itemsize, dims in _activations(model, known or {}).values():
        size = int(np.prod(dims, dtype=np.int64)) * itemsize
        total, largest = total + size, max(largest, size)
    return total, largest


def activation_dims(model: onnx.ModelProto, known: Dims) -> dict[str, tuple[int, ...]]:
    """Every activation's dims after axis 0 (unknown ones as 1) for inputs of dims `known`."""
    return {name: dims for name, (_, dims) in _activations(model, known).items()}


def _activations(model: onnx.ModelProto, known: Dims) -> dict[str, tuple[int, tuple[int, ...]]]:
    graph = infer_shapes(_light_copy(model, known)).graph
    weights = {t.name for t in graph.initializer}
    out = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        tt = vi.type.tensor_type
        if vi.name in weights or not tt.HasField("shape") or not tt.elem_type:
            continue
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 4
        out[vi.name] = (itemsize, tuple(d.dim_value if d.HasField("dim_value") else 1
                                        for d in tt.shape.dim[1:]))
    return out


def _light_copy(model: onnx.ModelProto, known: Dims) -> onnx.ModelProto:
    """The model for shape inference: big weights without their data (dims are enough),
    no stale value_info, graph inputs' dims after axis 0 set from `known`."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.node.extend(model.graph.node)
    g.output.extend(model.graph.output)
    for init in model.graph.initializer:
        if init.ByteSize() <= 4096:  # shape-like constants: inference reads their values
            g.initializer.append(init)
        else:
            empty = g.initializer.add()
            empty.name, empty.data_type = init.name, init.data_type
            empty.dims.extend(init.dims)
    for inp in model.graph.input:
        vi = g.input.add()
        vi.CopyFrom(inp)
        dims = known.get(inp.name)
        shape = vi.type.tensor_type.shape
        if dims is not None and len(shape.dim) == len(dims) + 1:
            for d, value in zip(shape.dim[1:], dims):
                d.Clear()
                d.dim_value = int(value)
    return light


# ---------------------------------------------------------------------- fixed batch


def input_batch(graph: gs.Graph) -> int | None:
    """The static batch of the graph's inputs, or None when axis 0 is dynamic."""
    dims = [t.shape[0] if t.shape else None for t in graph.inputs]
    static = [d for d in dims if isinstance(d, (int, np.integer)) and d > 0]
    return int(max(static)) if static else None


def make_batch_dynamic(analysis: Analysis, ident: ModelIdentity,
                       samples: Mapping[str, np.ndarray]) -> Analysis | None:
    """The analysis with a dynamic batch axis for a batch-1 model, or None if not provably safe.

    Every input and output must have dim 0 == 1; Reshape targets whose leading 1 copies the
    input's batch become 0; a ConstantOfShape with a leading 1 cannot be proven and refuses.
    The result must reproduce two batch-1 runs with one batch-2 run on `samples`."""
    graph = analysis.graph.copy()
    if any(not t.shape or t.shape[0] != 1 for t in [*graph.inputs, *graph.outputs]):
        return None
    if not _rewrite_batch_literals(graph):
        return None
    for t in [*graph.inputs, *graph.outputs]:
        t.shape = [BATCH_SYMBOL, *t.shape[1:]]
    strip_shapes(graph)  # intermediate shapes were inferred for batch 1
    try:
        model = infer_shapes(to_proto(graph, ident))
    except OnnxPruneError:
        return None
    if not _batch_two_matches(to_proto(analysis.graph, ident), model, samples):
        return None
    new_graph = gs.import_onnx(model)
    new_graph.toposort()
    return dataclasses.replace(analysis, graph=new_graph)


def _rewrite_batch_literals(graph: gs.Graph) -> bool:
    for node in graph.nodes:
        if node.op == "Reshape":
            target = const_value(node.inputs[1])
            if target is None or target.size == 0 or int(target.reshape(-1)[0]) != 1:
                continue  # run-time targets follow the batch; verification checks the rest
            shape = node.inputs[0].shape
            if node.attrs.get("allowzero", 0) or not shape or shape[0] != 1:
                return False
            fixed = target.reshape(-1).astype(np.int64).copy()
            fixed[0] = 0  # copy the input's batch
            node.inputs[1] = gs.Constant(f"{node.outputs[0].name}__dynbatch", fixed)
        elif node.op == "ConstantOfShape":
            shape = const_value(node.inputs[0])
            if shape is not None and shape.size and int(shape.reshape(-1)[0]) == 1:
                return False
        # Expand and Tile with a leading 1 broadcast / repeat once: safe for any batch.
    return True


def _batch_two_matches(fixed: onnx.ModelProto, dynamic: onnx.ModelProto,
                       samples: Mapping[str, np.ndarray]) -> bool:
    """Run `dynamic` on two samples at once and `fixed` on each alone; compare (rel 1e-4)."""
    two = {name: _two_samples(arr) for name, arr in samples.items()}
    try:
        got = make_session(dynamic, "cpu").run(None, two)
        ref_sess = make_session(fixed, "cpu")
        want = [ref_sess.run(None, {k: v[i:i + 1] for k, v in two.items()}) for i in range(2)]
    except Exception:  # ORT refuses the rewritten model: not provable
        return False
    return all(_same(out, np.concatenate([want[0][j], want[1][j]])) for j, out in enumerate(got))


# ------------------------------------------------------------------------ the cut


@dataclass
class _Cut:
    """Where the scoring model of one set of groups is cut."""

    suffix: onnx.ModelProto
    prefix: onnx.ModelProto | None     # computes the cut tensors that are not graph inputs
    inputs: list[str]                  # the suffix's data inputs (cut tensors), n rows each
    cached: list[str]                  # the ones the prefix computes
    outputs: list[str]                 # model outputs that depend on the masks
    mac_share: float                   # the suffix's share of the model's MACs
    plain: _Cut | None = None          # set when cut from ORT's optimized graph: the same cut
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
              samples: Mapping[str, np.ndarray] | None = None) -> _Cut:
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
    total = count_macs(analysis.graph)
    own = sum(node_macs(n) for n in graph.nodes if not n.name.startswith("onnxprune_"))
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
    light = dataclasses.replace(plain, suffix=_light_copy(plain.suffix, {}),
                                prefix=plain.prefix and _light_copy(plain.prefix, {}))
    return dataclasses.replace(cut, mac_share=plain.mac_share, plain=light)


def _split_optimized(optimized: onnx.ModelProto, masks: list[str], aligned: Aligned,
                     samples: Mapping[str, np.ndarray] | None, batch: Any) -> _Cut:
    graph = gs.import_onnx(optimized)
    graph.toposort()
    ident, source = ModelIdentity.of(optimized), graph.copy()
    checked = _optimized_aligned(aligned, source, ident, samples, batch)
    return _split(graph, ident, source, masks, True, False, checked)


def _split(graph: gs.Graph, ident: ModelIdentity, source: gs.Graph, masks: list[str],
           cuttable: bool, tile_in_graph: bool, aligned: Aligned) -> _Cut:
    """The cut of instrumented `graph` (changed in place) at the tensors its mask-dependent
    nodes read; the prefix is taken from `source`, the same graph without masks."""
    if cuttable:
        suffix_nodes = _dependent(graph, set(masks))
    else:
        suffix_nodes = {id(n) for n in graph.nodes}
    cut = _cut_tensors(graph, suffix_nodes, set(masks), aligned)
    produced = {o.name for n in graph.nodes if id(n) in suffix_nodes for o in n.outputs}
    outputs = [t.name for t in graph.outputs if t.name in produced]
    data_inputs = {t.name for t in graph.inputs}
    cached = [name for name in cut if name not in data_inputs]
    suffix = _suffix(graph, ident, cut, masks, outputs, tile_in_graph)
    return _Cut(suffix, _prefix(source, ident, cached), cut, cached, outputs, 1.0)


def optimized_cpu_model(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """`model` after all of ORT's CPU graph optimizations (as saved by ORT: contrib ops, NCHWc
    tensors; valid on this machine and ORT version only), or None if ORT cannot save it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        opts = session_options(1, spinning=False)
        opts.optimized_model_filepath = path
        try:
            ort().InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
            return onnx.load(path)
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
                 aligned: Aligned) -> list[str]:
    """Tensors the suffix reads from outside (extends `suffix_nodes` in place).

    A cut tensor is fed n rows and tiled K times, so it must carry the samples on axis 0;
    one that does not (a Shape result, a tensor of unknown shape) has its producer pulled
    into the suffix, until every cut tensor is per-sample or a graph input."""
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
        ok = aligned(inner)
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
            if _same(both[j], np.concatenate([alone[0][j], alone[1][j]])
                     if alone[0][j].ndim and alone[0][j].shape[0] == 1 else None)}


def preoptimized_session(model: onnx.ModelProto, threads: int | None = None,
                         spinning: bool = False) -> Any:
    """A CPU session for a graph ORT already optimized (optimizing it again is unsupported)."""
    opts = session_options(threads, spinning=spinning)
    opts.graph_optimization_level = ort().GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort().InferenceSession(model.SerializeToString(), opts,
                                  providers=["CPUExecutionProvider"])


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


def _two_samples(arr: np.ndarray) -> np.ndarray:
    """Two different samples (a perturbed copy when there is only one)."""
    if arr.shape[0] >= 2:
        return arr[:2]
    pair = np.concatenate([arr[:1], arr[:1]])
    if np.issubdtype(arr.dtype, np.floating):
        pair[1] = pair[1] * 0.5 + 0.25
    return pair


def _same(got: np.ndarray, want: np.ndarray | None, rtol: float = 1e-4) -> bool:
    if want is None or got.shape != want.shape or got.dtype != want.dtype:
        return False
    if not got.size:
        return True
    if not np.issubdtype(want.dtype, np.number):
        return bool(np.array_equal(got, want))
    scale = max(float(np.max(np.abs(want))), 1e-6)
    return float(np.max(np.abs(got.astype(np.float64) - want))) <= rtol * scale


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


# ------------------------------------------------------------------------- backends


class _CpuBackend:
    """Host arrays, plain `run`. The K copies of a chunk's data are made once per plan
    (`hold`) and reused by every run: tiling per run cost as much as a late group's suffix."""

    device = "cpu"
    tile_in_graph = False

    def put(self, arr: np.ndarray) -> Any:
        return arr

    def hold(self, data: Mapping[str, np.ndarray], k: int) -> dict[str, Any]:
        """The data inputs tiled for up to k coalitions (row j*n + i is sample i)."""
        if k == 1:
            return dict(data)
        return {name: np.tile(arr, (k,) + (1,) * (arr.ndim - 1)) for name, arr in data.items()}

    def tiled(self, held: Mapping[str, np.ndarray], k: int, rows: int) -> tuple[dict[str, Any], dict]:
        """(data inputs for k coalitions, extra host inputs): leading rows of the held tiles,
        views (contiguous, no copy)."""
        return {name: arr[:k * rows] for name, arr in held.items()}, {}

    def rows(self, value: Any) -> int:
        return int(value.shape[0])

    def nbytes(self, value: Any) -> int | None:
        return int(value.nbytes)

    def run(self, sess: Any, data: Mapping[str, Any], host: Mapping[str, np.ndarray],
            outputs: list[str], keep: bool = False) -> list[Any]:
        return sess.run(outputs, {**data, **host})


class _CudaBackend:
    """Data and cached activations live on the GPU as OrtValues; per run only the small host
    inputs (masks, tile count) are bound from CPU. `keep` leaves outputs on the device (the
    prefix cache); otherwise they are copied to the host for the value function."""

    device = "cuda"
    tile_in_graph = True

    def __init__(self, rt: Any, device_id: int = 0) -> None:
        self.rt, self.device_id = rt, device_id

    def hold(self, data: Mapping[str, Any], k: int) -> dict[str, Any]:
        """The device data as is: the scoring model tiles it in the graph."""
        return dict(data)

    def tiled(self, held: Mapping[str, Any], k: int, rows: int) -> tuple[dict[str, Any], dict]:
        """The scoring model tiles on the device; it is only told K."""
        return dict(held), {TILE_INPUT: np.array([k], dtype=np.int64)}

    def put(self, arr: np.ndarray) -> Any:
        return self.rt.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), "cuda", self.device_id)

    def rows(self, value: Any) -> int:
        return int(value.shape()[0])

    def nbytes(self, value: Any) -> int | None:
        return None  # the caller's estimate

    def run(self, sess: Any, data: Mapping[str, Any], host: Mapping[str, np.ndarray],
            outputs: list[str], keep: bool = False) -> list[Any]:
        io = sess.io_binding()
        for name, value in data.items():
            io.bind_ortvalue_input(name, value)
        for name, arr in host.items():
            io.bind_cpu_input(name, np.ascontiguousarray(arr))
        for name in outputs:
            io.bind_output(name, "cuda", self.device_id)
        sess.run_with_iobinding(io)
        return list(io.get_outputs()) if keep else io.copy_outputs_to_cpu()


def backend_for(sess: Any) -> _CpuBackend | _CudaBackend:
    """CUDA only when the session really got the CUDA provider (DESIGN.md)."""
    return _CudaBackend(ort()) if session_device(sess) == "cuda" else _CpuBackend()


# ---------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class _Chunk:
    start: int
    stop: int
    rows: int   # rows fed: stop - start, or the fixed batch (the tail padded)


@dataclass
class _Plan:
    """Everything needed to score one set of groups."""

    gids: tuple[int, ...]
    cut: _Cut
    session: Any
    chunks: list[_Chunk]
    k_run: int                                # coalitions per run
    k_max: int                                # what the memory budget (and the user) allow
    est: dict[str, Any]                       # byte estimates behind k_run and chunks
    feeds: list[dict[str, Any]] | None = None  # per chunk: suffix input -> held data
    cache_bytes: int = 0
    tuned: bool = False                       # k_run was measured (CPU), not estimated

    @property
    def prefixed(self) -> bool:
        return self.cut.prefix is not None

    @property
    def k_value(self) -> int:
        """Coalitions per value-function call: whole runs, as many as its output budget holds."""
        return self.k_run * max(1, self.est["value_coalitions"] // self.k_run)


def _chunks(n: int, per_run: int, fixed_rows: int | None) -> list[_Chunk]:
    size = fixed_rows or max(1, per_run)
    return [_Chunk(s, min(n, s + size), fixed_rows or min(n, s + size) - s)
            for s in range(0, n, size)]


def _rows(arr: np.ndarray, chunk: _Chunk) -> np.ndarray:
    """The chunk's samples, the tail padded by repeating the last one (fixed batch)."""
    part = arr[chunk.start:chunk.stop]
    pad = chunk.rows - part.shape[0]
    return np.concatenate([part, np.repeat(part[-1:], pad, axis=0)]) if pad > 0 else part


def _mask_rows(mask: np.ndarray, chunk: _Chunk) -> np.ndarray:
    """[k, units] (one coalition for all samples) or [k, N, units] (one per sample) -> the
    mask input's rows for the chunk, coalition-major: [k * rows, units]."""
    if mask.ndim == 2:
        return np.repeat(mask, chunk.rows, axis=0)
    return np.stack([_rows(m, chunk) for m in mask]).reshape(-1, mask.shape[-1])


# ----------------------------------------------------------------------------- engine


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
      2-core machine spinning made the same runs about 2x slower (DESIGN.md, Measuring).
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
        self.path = "not run yet"
        self._plans: OrderedDict[tuple[int, ...], _Plan] = OrderedDict()
        self._probed: dict[str, bool] = {}  # tensor -> carries the samples on axis 0
        self._inputs = self._check_inputs(am.analysis, calib)
        self.n = calib.n_samples
        self.analysis, self.fixed_rows, self.batch = self._batch_mode(am.analysis)
        self._source_names = set(self.analysis.graph.tensors())
        # ops that combine samples (analysis.batch_mixing): per-sample coalitions would leak
        # into each other, so each run carries one coalition for all samples (mask batch 1)
        self.mixing = bool(self.analysis.batch_mixing)
        # estimators may give every sample its own coalition ([K, N, units]): the mask input
        # already has one row per (coalition, sample), except on the mixing path
        self.per_sample_masks = not self.mixing
        self.reference = self._reference(device)
        value_fn.prepare(self.reference, calib.labels)

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
            self.evaluations += coalitions.shape[0]
            return out
        plan = self._activate(gids)
        for start in range(0, coalitions.shape[0], plan.k_value):
            block = slice(start, min(coalitions.shape[0], start + plan.k_value))
            out[block] = self.value_fn(self._outputs(plan, [m[block] for m in masks]))
        self.evaluations += coalitions.shape[0]
        return out

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
        if not preoptimized:
            return make_session(model, device, self.threads, spinning=self.spinning)
        return preoptimized_session(model, self.threads, self.spinning)

    def _values_mixing(self, gids: tuple[int, ...], masks: list[np.ndarray]) -> np.ndarray:
        """One session run per coalition on the whole calibration set, masks of batch 1."""
        key = ("mixing", *gids)
        if key not in self._mixing_sessions:
            graph = instrument(self.analysis, gids, means=self.means)
            self._mixing_sessions[key] = self._session(to_proto(graph, self.ident), self.device)
        sess = self._mixing_sessions[key]
        values = []
        for row in range(masks[0].shape[0]):
            feeds = {**self._inputs, **{mask_name(g): m[row:row + 1] for g, m in zip(gids, masks)}}
            outs = sess.run([o.name for o in self.analysis.graph.outputs], feeds)
            values.append(self.value_fn([np.asarray(o)[None] for o in outs])[0])
        self.path = "one coalition per run (batch-mixing ops)"
        return np.stack(values)

    def _reference(self, device: str) -> list[np.ndarray]:
        """The unmasked model's outputs on the calibration set (sets the backend)."""
        model = to_proto(self.analysis.graph, self.ident)
        sess = self._session(model, device)
        self.backend = backend_for(sess)
        self.device = self.backend.device
        self._mixing_sessions: dict = {}
        if self.mixing:  # the model sees the whole set at once, as in _values_mixing
            return [np.asarray(o) for o in sess.run(None, dict(self._inputs))]
        # per-sample dims of every tensor for the calibration inputs' shapes (a sequence
        # length, say): what the memory estimates of sub-models start from
        self._acts = _activations(model, {k: v.shape[1:] for k, v in self._inputs.items()})
        self._dims = {name: dims for name, (_, dims) in self._acts.items()}
        per_row = max(1, row_bytes(model, self._dims)[0])
        chunks = _chunks(self.n, self.budget // per_row, self.fixed_rows)
        names = [o.name for o in sess.get_outputs()]
        parts = []
        for c in chunks:
            data = {k: self.backend.put(_rows(v, c)) for k, v in self._inputs.items()}
            outs = self.backend.run(sess, data, {}, names)
            parts.append([o[:c.stop - c.start] for o in outs])
        return [np.concatenate(p) for p in zip(*parts)]

    # -- plans

    def _activate(self, gids: tuple[int, ...]) -> _Plan:
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

    def _plan(self, gids: tuple[int, ...], prefix: bool) -> _Plan:
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
        return _Plan(gids, cut, session, chunks, k_run, k_max, est)

    def _cache_row(self, cut: _Cut) -> int:
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
            ok = probe_aligned(self.analysis, self.ident, unknown, self._inputs)
            self._probed.update({n: n in ok for n in unknown})
        return {n for n, v in state.items() if v or (v is None and self._probed.get(n, False))}

    def _sizes(self, cut: _Cut, cache: int) -> tuple[list[_Chunk], int, int, dict[str, Any]]:
        """Samples per run n, coalitions per run K (an estimate `_tune` may replace) and the
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
            return _chunks(self.n, 0, self.fixed_rows), 1, 1, est
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
        return _chunks(self.n, n_run, None), int(k_run), int(k_max), est

    def _output_index(self, cut: _Cut) -> list[int]:
        names = [t.name for t in self.analysis.graph.outputs]
        return [names.index(o) for o in cut.outputs]

    def _fill(self, plan: _Plan) -> bool:
        """Per chunk, the suffix's data inputs: calibration rows and prefix outputs, held for
        K coalitions. False if a prefix output does not have the chunk's rows (then the plan
        must not be cut)."""
        sess = (self._session(plan.cut.prefix, self.device, plan.cut.preoptimized)
                if plan.prefixed else None)
        feeds, nbytes = [], 0
        for c in plan.chunks:
            chunk = {k: self.backend.put(_rows(v, c)) for k, v in self._inputs.items()
                     if k in plan.cut.inputs}
            if sess is not None:
                names = [i.name for i in sess.get_inputs()]
                data = {k: self.backend.put(_rows(self._inputs[k], c)) for k in names}
                outs = self.backend.run(sess, data, {}, plan.cut.cached, keep=True)
                if any(self.backend.rows(o) != c.rows for o in outs):
                    return False
                chunk.update(zip(plan.cut.cached, outs))
                sizes = [self.backend.nbytes(o) for o in outs]  # NCHWc pads channels
                nbytes += sum(sizes) if None not in sizes else plan.est["cache_row_bytes"] * c.rows
            feeds.append(chunk)
        del sess
        if self.tune and not plan.tuned and self.backend.device == "cpu" and plan.k_max > 1:
            self._tune(plan, feeds[0])
        copies = 1 if self.backend.tile_in_graph else plan.k_run
        plan.feeds = [self.backend.hold(f, copies) for f in feeds]
        plan.cache_bytes = nbytes * copies
        return True

    def _tune(self, plan: _Plan, data: Mapping[str, Any]) -> None:
        """CPU: K from timings of the suffix at K = 1, 2, 4, ... up to what the budget allows,
        stopping once a coalition costs clearly more than at the best K so far or one run gets
        long (tuning stays a small part of scoring a group). The cache-size estimate was off
        both ways: a late group's small suffix wanted 4-8x more rows per run."""
        rows = plan.chunks[0].rows
        widths = [self.analysis.group(g).units for g in plan.gids]
        timings: dict[int, float] = {}
        k = 1
        while True:
            held = self.backend.hold(data, k)
            masks = [np.ones((k * rows, w), np.float32) for w in widths]
            self._run(plan, held, masks, k, rows)  # warm-up: the arena grows to this K
            timings[k] = min(self._timed_run(plan, held, masks, k, rows)
                             for _ in range(_TUNE_ROUNDS)) / k
            del held
            best = min(timings.values())
            if k >= plan.k_max or timings[k] > _TUNE_SLOWER * best or timings[k] * k > _TUNE_RUN_S:
                break
            k = min(2 * k, plan.k_max)
        plan.k_run, plan.tuned = min(timings, key=timings.__getitem__), True
        plan.est["tuned_ms_per_coalition"] = {k: round(t * 1e3, 3) for k, t in timings.items()}

    # -- running

    def _run(self, plan: _Plan, held: Mapping[str, Any], masks: list[np.ndarray], k: int,
             rows: int) -> list[Any]:
        """One ORT run of k coalitions x `rows` samples; masks are [k*rows, units] each."""
        data, extra = self.backend.tiled(held, k, rows)
        host = {mask_name(g): m for g, m in zip(plan.gids, masks)}
        return self.backend.run(plan.session, data, {**host, **extra}, plan.cut.outputs)

    def _timed_run(self, plan: _Plan, held: Mapping[str, Any], masks: list[np.ndarray], k: int,
                   rows: int) -> float:
        t0 = time.perf_counter()
        self._run(plan, held, masks, k, rows)
        return time.perf_counter() - t0

    def _outputs(self, plan: _Plan, masks: list[np.ndarray]) -> list[np.ndarray]:
        """All model outputs [k, N, ...] for k coalitions (rows of `masks`), k_run per run."""
        k = masks[0].shape[0]
        index = self._output_index(plan.cut)
        bufs = {i: np.empty((k, *self.reference[i].shape), self.reference[i].dtype) for i in index}
        for c, held in zip(plan.chunks, plan.feeds):
            rep = [_mask_rows(m, c) for m in masks]  # row j*rows + i: coalition j, sample i
            for s in range(0, k, plan.k_run):
                e = min(k, s + plan.k_run)
                outs = self._run(plan, held, [r[s * c.rows:e * c.rows] for r in rep], e - s, c.rows)
                for i, out in zip(index, outs):
                    out = np.asarray(out)
                    out = out.reshape(e - s, c.rows, *out.shape[1:])
                    bufs[i][s:e, c.start:c.stop] = out[:, :c.stop - c.start]
        return [bufs[i] if i in bufs else np.broadcast_to(ref[None], (k, *ref.shape))
                for i, ref in enumerate(self.reference)]
