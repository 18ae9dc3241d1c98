"""Fixed-batch models: a graph exported for batch 1 gets a dynamic batch axis when that is
proven safe, so the engine can run many samples and coalitions per ORT run.

Reshape targets' leading 1 becomes 0 (copy the input's batch); the rewrite is kept only if
one batch-2 run reproduces two batch-1 runs. Otherwise the engine runs one coalition x one
sample per run. `same` is the row comparison both this check and the cut's probes use.

`batch_twin` works on the source model instead, before normalize folds run-time shapes into
literals that bake the batch in (a CRNN's Reshape to [T, b, C] becomes [0, 1, 512]): the
batch-symbolic twin that `api.with_batch_twin` scores and prunes when it is proven, and
`with_batch_one` gives the pruned twin back the source's batch-1 interface.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..compiler.analysis import Analysis
from ..compiler.graph import ModelIdentity, const_value, to_proto
from ..compiler.normalize import infer_shapes, strip_shapes
from ..errors import OnnxPruneError
from ..runtime import batch_axes, make_session

BATCH_SYMBOL = "onnxprune_batch"

__all__ = ["BATCH_SYMBOL", "batch_twin", "input_batch", "literal_batch_one", "make_batch_dynamic", "same",
           "with_batch_one"]


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
    return all(same(out, np.concatenate([want[0][j], want[1][j]])) for j, out in enumerate(got))


def _two_samples(arr: np.ndarray) -> np.ndarray:
    """Two different samples (a perturbed copy when there is only one)."""
    if arr.shape[0] >= 2:
        return arr[:2]
    pair = np.concatenate([arr[:1], arr[:1]])
    if np.issubdtype(arr.dtype, np.floating):
        pair[1] = pair[1] * 0.5 + 0.25
    return pair


def same(got: np.ndarray, want: np.ndarray | None, rtol: float = 1e-4) -> bool:
    """Same shape and dtype, values within `rtol` of `want`'s largest magnitude."""
    if want is None or got.shape != want.shape or got.dtype != want.dtype:
        return False
    if not got.size:
        return True
    if not np.issubdtype(want.dtype, np.number):
        return bool(np.array_equal(got, want))
    scale = max(float(np.max(np.abs(want))), 1e-6)
    return float(np.max(np.abs(got.astype(np.float64) - want))) <= rtol * scale


# -- the batch-symbolic twin of a source model (before normalize folds the batch into literals)

TWIN_SAMPLES = 3  # one batch-3 run against three batch-1 runs


def literal_batch_one(model: onnx.ModelProto) -> bool:
    """Whether every graph input (initializers aside) is a tensor whose axis 0 is the literal 1."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    return bool(inputs) and all(
        i.type.HasField("tensor_type") and i.type.tensor_type.HasField("shape")
        and len(i.type.tensor_type.shape.dim) > 0
        and i.type.tensor_type.shape.dim[0].HasField("dim_value")
        and i.type.tensor_type.shape.dim[0].dim_value == 1 for i in inputs)


def batch_twin(model: onnx.ModelProto, samples: Mapping[str, np.ndarray]
               ) -> tuple[onnx.ModelProto | None, str]:
    """(the batch-symbolic twin of a literal-batch-1 `model`, or None; why, in a few words).

    Built from the source model, before normalize folds run-time shapes (Shape -> Gather ->
    Concat -> Reshape) into literals that bake the batch in: input axis 0 becomes a symbol,
    output dims that are the literal 1 are forgotten, intermediate shapes re-inferred. Kept only
    if ONNX Runtime runs it at batch 1 and at batch 3 and the batch-3 run equals three batch-1
    runs of `model`, on the axis `runtime.batch_axes` finds per output (`same`: within 1e-4 of
    the output's largest magnitude, as the masked==pruned check: batched kernels (GEMM for
    GEMV, another blocking) sum in another order; a real mix of samples is far larger)."""
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if any(n not in samples for n in names):
        return None, "calibration data lacks a model input"
    feeds = {n: samples[n] for n in names}
    twin, why = _twin(model, feeds, reshapes=False)
    if twin is None and _literal_batch_reshapes(model):
        again, _ = _twin(model, feeds, reshapes=True)
        if again is not None:
            return again, "batch-3 run equals three batch-1 runs, Reshape targets' leading 1 made 0"
    return twin, why


def _twin(model: onnx.ModelProto, samples: Mapping[str, np.ndarray], reshapes: bool
          ) -> tuple[onnx.ModelProto | None, str]:
    """batch_twin's candidate, with literal Reshape targets' leading 1 made 0 (copy the
    input's batch) where `reshapes`: a static export writes the batch it was traced with
    into them (Ultralytics' YOLOv8: [1, 64, -1], [1, 4, 16, anchors])."""
    inits = {t.name for t in model.graph.initializer}
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    if reshapes:
        _literal_batch_reshapes(twin, rewrite=True)
    for i in twin.graph.input:
        if i.name not in inits:
            i.type.tensor_type.shape.dim[0].dim_param = BATCH_SYMBOL  # clears dim_value
    for o in twin.graph.output:  # a declared batch of 1 (often wrong: [1, seqlen] for [T, N])
        for d in o.type.tensor_type.shape.dim if o.type.HasField("tensor_type") else ():
            if d.HasField("dim_value") and d.dim_value == 1:
                d.Clear()
    del twin.graph.value_info[:]  # inferred for batch 1
    try:
        twin = infer_shapes(twin)
    except OnnxPruneError as exc:
        return None, f"shape inference fails on it ({str(exc)[:120]})"
    why = _twin_differs(model, twin, samples)
    return (None, why) if why else (twin, "batch-3 run equals three batch-1 runs")


def _literal_batch_reshapes(model: onnx.ModelProto, rewrite: bool = False) -> int:
    """Reshapes whose target is a constant (an initializer or a Constant node's tensor)
    starting with 1, allowzero unset; with `rewrite`, each gets its own copy of the target
    with that 1 made 0. Whether the 1 was the batch is not known here: the twin's batch-3
    check decides."""
    targets = {t.name: t for t in model.graph.initializer}
    targets.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                    for a in n.attribute if a.name == "value"})
    count = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in targets or \
                any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        value = onnx.numpy_helper.to_array(targets[node.input[1]]).reshape(-1)
        if not value.size or int(value[0]) != 1:
            continue
        count += 1
        if rewrite:
            fixed = value.astype(np.int64).copy()
            fixed[0] = 0
            name = f"{node.output[0]}__twinbatch"
            model.graph.initializer.append(onnx.numpy_helper.from_array(fixed, name))
            node.input[1] = name
    return count


def _twin_differs(model: onnx.ModelProto, twin: onnx.ModelProto,
                  samples: Mapping[str, np.ndarray]) -> str | None:
    """Why `twin` at batch 3 is not `model` at batch 1 three times (None: it is)."""
    three = {k: _n_samples(v, TWIN_SAMPLES) for k, v in samples.items()}
    if not _distinct(three):
        return f"fewer than {TWIN_SAMPLES} distinct calibration samples to compare"
    try:
        ref = make_session(model, "cpu")
        outs = [o.name for o in ref.get_outputs() if o.type.startswith("tensor(")]
        want = [ref.run(outs, {k: v[i:i + 1] for k, v in three.items()}) for i in range(TWIN_SAMPLES)]
        sess = make_session(twin, "cpu")
        one = sess.run(outs, {k: v[:1] for k, v in three.items()})
        got = sess.run(outs, three)
    except Exception as exc:  # ORT refuses the twin (or a run): not provable
        return f"ONNX Runtime cannot run it at batch {TWIN_SAMPLES} ({str(exc).splitlines()[0][:120]})"
    if not all(same(o, w) for o, w in zip(one, want[0])):
        return "its batch-1 run differs from the model's"
    try:
        axes = batch_axes(sess, three, outs)
    except OnnxPruneError:
        return "no output axis follows the batch"
    for j, (name, axis) in enumerate(zip(outs, axes)):
        rows = np.moveaxis(got[j], axis, 0)
        ref_rows = [np.moveaxis(w[j], axis, 0) for w in want]
        if rows.shape[0] != TWIN_SAMPLES or not all(
                same(rows[i:i + 1], r) for i, r in enumerate(ref_rows)):
            return f"output '{name}' at batch {TWIN_SAMPLES} differs from {TWIN_SAMPLES} batch-1 runs"
    return None


def _n_samples(arr: np.ndarray, n: int) -> np.ndarray:
    """`n` samples of `arr`; where it has fewer, its last one rolled along its last axis (ids
    stay valid ids) and, for floats, scaled and shifted."""
    out = np.concatenate([arr[:n]] + [arr[-1:]] * max(0, n - len(arr)))
    for i in range(len(arr), n):
        out[i] = np.roll(out[i], i, axis=-1) if out[i].ndim else out[i]
        if np.issubdtype(arr.dtype, np.floating):
            out[i] = out[i] * (0.5 + 0.25 * i) + 0.25 * i
    return out


def _distinct(samples: Mapping[str, np.ndarray]) -> bool:
    """Whether no two samples are equal on every input (identical samples hide mixing)."""
    n = len(next(iter(samples.values())))
    return all(any(not np.array_equal(v[i], v[j]) for v in samples.values())
               for i in range(n) for j in range(i + 1, n))


def with_batch_one(model: onnx.ModelProto, source: onnx.ModelProto) -> onnx.ModelProto:
    """A model scored and pruned as the twin, given back the source's interface: the inputs'
    declared shapes as the source has them, the batch symbol elsewhere the literal 1."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    shapes = {i.name: i.type for i in source.graph.input}
    for i in out.graph.input:
        if i.name in shapes:
            i.type.CopyFrom(shapes[i.name])
    for v in [*out.graph.output, *out.graph.value_info]:
        for d in v.type.tensor_type.shape.dim if v.type.HasField("tensor_type") else ():
            if d.HasField("dim_param") and d.dim_param == BATCH_SYMBOL:
                d.dim_value = 1
    return out
