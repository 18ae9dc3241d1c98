"""Fixed-batch models: a graph exported for batch 1 gets a dynamic batch axis when that is
proven safe, so the engine can run many samples and coalitions per ORT run.

Reshape targets' leading 1 becomes 0 (copy the input's batch); the rewrite is kept only if
one batch-2 run reproduces two batch-1 runs. Otherwise the engine runs one coalition x one
sample per run. `same` is the row comparison both this check and the cut's probes use.
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
from ..runtime import make_session

BATCH_SYMBOL = "onnxprune_batch"

__all__ = ["BATCH_SYMBOL", "input_batch", "make_batch_dynamic", "same"]


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
