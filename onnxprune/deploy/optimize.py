"""Stage `optimize`: the pruned graph -> a plain, checked ONNX model.

Dead nodes and unused constants go, shapes are inferred afresh (the old ones are stale),
and the full checker runs: an invalid model is a bug, never something to save."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from ..compiler.graph import ModelIdentity, to_proto
from ..compiler.normalize import infer_shapes
from ..load import check


def finalize(graph: gs.Graph, ident: ModelIdentity) -> onnx.ModelProto:
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = infer_shapes(to_proto(graph, ident))
    check(model, full_check=True)  # also past 2 GB (load.check)
    return model
