"""Stage `optimize`: the pruned graph -> a plain, checked ONNX model.

Dead nodes and unused constants go, shapes are inferred afresh (the old ones are stale),
and the full checker runs: an invalid model is a bug, never something to save."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from ..compiler.graph import ModelIdentity, to_proto
from ..compiler.normalize import infer_shapes
from ..load import check, is_large


def finalize(graph: gs.Graph, ident: ModelIdentity, *, ranks: bool = True) -> onnx.ModelProto:
    """`ranks=False` skips `honest_output_ranks` (a shape inference of its own): for a model
    of the same structure as one where it fixed nothing (`Finalizer`)."""
    return _finalize(graph, ident, ranks)[0]


class Finalizer:
    """`finalize` for the candidates of one selection (plain, compensated, refit): they differ
    in weight values only, so once one needed no output rank fixed, the others skip the check."""

    def __init__(self, ident: ModelIdentity) -> None:
        self.ident, self.ranks = ident, True

    def __call__(self, graph: gs.Graph) -> onnx.ModelProto:
        model, fixed = _finalize(graph, self.ident, self.ranks)
        self.ranks = self.ranks and bool(fixed)
        return model


def _finalize(graph: gs.Graph, ident: ModelIdentity, ranks: bool) -> tuple[onnx.ModelProto, list[str]]:
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = to_proto(graph, ident)
    fixed = honest_output_ranks(model) if ranks else []
    model = infer_shapes(model)
    check(model, full_check=True)  # also past 2 GB (load.check)
    return model, fixed


def honest_output_ranks(model: onnx.ModelProto) -> list[str]:
    """Exporters sometimes declare an output's shape with the wrong rank (ddddocr's CRNN says
    [1, seqlen] of a [T, 1, C] tensor). The original passes the checker because inference
    cannot see through its run-time Reshape targets; once they are folded, the pruned model
    would not. Such a declaration is replaced by the inferred shape; returns the outputs fixed."""
    if is_large(model):  # a copy would cost the model's size again; such models keep theirs
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for out in probe.graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    except onnx.shape_inference.InferenceError:
        return []  # the full check below reports it
    fixed = []
    for declared, found in zip(model.graph.output, inferred.graph.output):
        d, f = declared.type.tensor_type, found.type.tensor_type
        if (declared.type.HasField("tensor_type") and d.HasField("shape") and f.HasField("shape")
                and len(d.shape.dim) != len(f.shape.dim)):
            d.shape.CopyFrom(f.shape)
            fixed.append(declared.name)
    return fixed
