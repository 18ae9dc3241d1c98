"""Stage `normalize`: ModelProto -> IR graph with weights as constants and shapes inferred.

Exporters hide weights behind `Constant` nodes (Paddle), `Identity` nodes (PyTorch
dynamo), or generate them with `ConstantOfShape` (the onnx backend "light" models),
and compute static shapes at run time (`Shape -> Gather -> Concat -> Reshape`).
Folding all of that into plain constants lets the analysis see weights and shape
targets as numbers, which it needs to decide anything.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER
from onnx_graphsurgeon.util.exception import OnnxGraphSurgeonException

from ..errors import OnnxPruneError
from ..load import all_nodes, check_inference_crashes, check_opset, is_heavy, is_large, split_weights
from .shapes import (fill_expand_shapes, fold_reshape_targets, fold_shape_expands,
                     fold_slice_bounds, probe_reshape_targets, probe_unknown_shapes)


try:  # loaded with the package, as the command's start-up (and its Ctrl-C handling) expects
    import onnxruntime as _ort
except ImportError:  # reported where a session is needed
    _ort = None


@contextmanager
def quiet_folding() -> Iterator[None]:
    """graphsurgeon's warnings about folds it cannot do are expected here (error_ok), and so
    are ONNX Runtime's messages on the pieces it folds: both off for the duration of our
    call only, graphsurgeon's level restored after."""
    before = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.ERROR
    try:
        with _quiet_ort_sessions():
            yield
    finally:
        G_LOGGER.severity = before


@contextmanager
def _quiet_ort_sessions() -> Iterator[None]:
    """ONNX Runtime's global log level cannot be read back (so not restored): instead the
    sessions that graphsurgeon opens meanwhile get their own level (SessionOptions)."""
    if _ort is None:
        yield
        return
    session = _ort.InferenceSession

    def quiet_session(model, sess_options=None, *args, **kwargs):
        if sess_options is None:
            sess_options = _ort.SessionOptions()
            sess_options.log_severity_level = 4  # its failures are expected (error_ok)
        return session(model, sess_options, *args, **kwargs)

    _ort.InferenceSession = quiet_session
    try:
        yield
    finally:
        _ort.InferenceSession = session


def normalize(model: onnx.ModelProto) -> gs.Graph:
    """Fold constants and shape subgraphs, infer shapes, and return the IR graph (sorted).
    The caller's model is not changed (names are made unique in a copy)."""
    check_opset(model)
    with quiet_folding():
        return _normalize(model)


def _normalize(model: onnx.ModelProto) -> gs.Graph:
    work, weights = _working_copy(model)
    unique_node_names(work)
    try:
        graph = gs.import_onnx(infer_shapes(work))
        _restore_weights(graph, weights)
        gs.export_onnx(graph, do_type_check=False)  # names and dims must survive the round trip
        graph.toposort()  # the loader lets unsorted graphs through, and with them cycles
        _check_constants(graph)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, IndexError,
            OnnxGraphSurgeonException) as exc:
        # corrupt tensors (data size vs dims), unknown element types, undecodable strings,
        # a cycle
        raise OnnxPruneError(f"cannot read the model's graph: {str(exc).splitlines()[0][:200]}") from None
    graph.fold_constants(error_ok=True, flatten_subgraphs=False)
    for _ in range(8):  # an inlined branch can make a nested If's condition constant
        if not flatten_constant_ifs(graph):
            break
        graph.fold_constants(error_ok=True, flatten_subgraphs=False)
    fold_reshape_targets(graph)
    fold_slice_bounds(graph)
    fold_shape_expands(graph)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    # Folding can reveal shapes (a Reshape whose target became a constant): infer again.
    graph = _reinfer(graph)
    # Targets whose dims only now have names (or whose names do not match): try again.
    # Each fold can reveal shapes the next one needs (a Slice after a folded Reshape): a few rounds.
    for _ in range(3):
        if not (fold_reshape_targets(graph) | probe_reshape_targets(graph)
                | fold_slice_bounds(graph) | fold_shape_expands(graph) | fill_expand_shapes(graph)):
            break
        graph.cleanup(remove_unused_graph_inputs=False)
        graph = _reinfer(graph)
    # Ranks inference could not give (after ops without a schema): from a probe run. Which
    # shapes came from it is kept on the graph (`probed_shapes`).
    graph.probed_shapes = probe_unknown_shapes(graph)
    return graph


def flatten_constant_ifs(graph: gs.Graph) -> bool:
    """Inline the branch that an If with a constant condition takes, in `graph` and in its
    subgraphs; return whether any was. graphsurgeon's own flattening (`fold_constants`'
    `flatten_subgraphs`, 0.5-0.6) keeps only about half of an If's outputs when it has several
    (it clears them while zipping over them), and leaves a graph ONNX Runtime refuses (Silero
    VAD's LSTM branch: "Node input '/decoder/If_1_output_1' is not a graph input ..."). Each
    If output here takes over the branch output's producer, or gets an Identity where the
    branch output is no node's own (an outer tensor, a constant, a tensor returned twice or
    also read inside the branch). Tensors the branch makes get graphsurgeon's suffix."""
    changed = False
    index = 0
    while index < len(graph.nodes):  # the inlined nodes are looked at in turn
        node = graph.nodes[index]
        cond = node.inputs[0] if node.op == "If" and node.inputs else None
        if not isinstance(cond, gs.Constant) or np.asarray(cond.values).size != 1:
            index += 1
            continue
        branch = node.attrs["then_branch" if bool(np.asarray(cond.values).reshape(-1)[0])
                            else "else_branch"]
        inner = {id(n) for sub in [branch, *branch.subgraphs(recursive=True)] for n in sub.nodes}
        made = [t for n in branch.nodes for t in n.outputs]
        made += [t for t in branch.tensors().values() if isinstance(t, gs.Constant)
                 and t.outputs and all(id(c) in inner for c in t.outputs)]
        for t in {id(t): t for t in made}.values():
            t.name += f"_subg_{index}_{branch.name}"
        outs, inlined = list(node.outputs), list(branch.nodes)
        node.outputs.clear()
        node.inputs.clear()
        for i, (out, sub_out) in enumerate(zip(outs, branch.outputs)):
            producer = sub_out.inputs[0] if len(sub_out.inputs) == 1 else None
            if (producer is not None and id(producer) in inner and not sub_out.outputs
                    and sum(o is sub_out for o in branch.outputs) == 1):
                producer.outputs[[o is sub_out for o in producer.outputs].index(True)] = out
            else:
                inlined.append(gs.Node("Identity", name=f"{node.name}/output_{i}",
                                       inputs=[sub_out], outputs=[out]))
        graph.nodes[index:index + 1] = inlined
        changed = True
    for node in graph.nodes:  # the branches that stay (and Loop/Scan bodies)
        for value in node.attrs.values():
            for sub in value if isinstance(value, list) else [value]:
                if isinstance(sub, gs.Graph):
                    changed |= flatten_constant_ifs(sub)
    return changed


def _working_copy(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list]:
    """A copy to rename and infer. A large model's copy has stubs for its large weights
    (copying them would cost as much memory again), with the (stub, caller's tensor) pairs."""
    if is_large(model):
        return split_weights(model)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    return work, []


def _restore_weights(graph: gs.Graph, weights: list[tuple[onnx.TensorProto, onnx.TensorProto]]) -> None:
    """Point the stubs' constants at the caller's tensors (read lazily, never modified)."""
    originals = {stub.name: tensor for stub, tensor in weights}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.name in originals:
            tensor.values = gs.ir.tensor.LazyValues(originals[tensor.name])


def with_unique_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` itself if its node names are unique, else a renamed copy (for the sessions:
    ONNX Runtime refuses a graph with two nodes of the same name)."""
    names = [n.name for n in all_nodes(model.graph) if n.name]
    if len(names) == len(set(names)):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    unique_node_names(copy)
    return copy


def unique_node_names(model: onnx.ModelProto) -> int:
    """Rename nodes whose name is already taken, in place (in every subgraph too); return how
    many. Names carry no meaning, but ONNX Runtime refuses a graph with two nodes of the same
    name. Nameless nodes stay nameless (that is allowed); the first holder of a name keeps it."""
    nodes = list(all_nodes(model.graph))
    taken = {n.name for n in nodes if n.name}
    seen: set[str] = set()
    renamed = 0
    for node in nodes:
        if not node.name:
            continue
        if node.name in seen:
            k, base = 1, node.name
            while f"{base}_{k}" in taken:
                k += 1
            node.name = f"{base}_{k}"
            taken.add(node.name)
            renamed += 1
        seen.add(node.name)
    return renamed


def _check_constants(graph: gs.Graph) -> None:
    """A Constant whose value is not a tensor (the checker lets an attribute of type GRAPH
    through; found by the long fuzz) would be folded into a constant that cannot be saved;
    a node without inputs whose op needs some (the checker knows no custom-domain schema: a
    com.microsoft QuickGelu with its input dropped, found by the long fuzz) has nothing to
    compute from."""
    for node in graph.nodes:
        if node.op == "Constant" and any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            raise ValueError(f"Constant node '{node.name}' holds a graph, not a tensor")
        if node.inputs or node.op == "Constant":
            continue
        domain = node.domain or ""
        if not (onnx.defs.has(node.op, domain)
                and onnx.defs.get_schema(node.op, domain=domain).min_input == 0):
            raise ValueError(f"node '{node.name}' ({node.op}) has no inputs")


def _reinfer(graph: gs.Graph) -> gs.Graph:
    graph = gs.import_onnx(infer_shapes(gs.export_onnx(graph, do_type_check=False)))
    graph.toposort()
    return graph


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference that keeps going on ops it does not know (custom domains). A heavy
    model (load.is_heavy: 8 MB or more) is inferred without its weights of 1 MB or more (a
    whole model's round trip through onnx's C++ copies its weights 4-5 times; past protobuf's
    2 GB limit it is impossible) and gets the result in place: `model` itself, with what
    inference writes (value_info, output types, nodes' subgraphs) as it would have been."""
    check_inference_crashes(model)
    light = split_weights(model)[0] if is_heavy(model) else None
    try:
        inferred = onnx.shape_inference.infer_shapes(model if light is None else light,
                                                     check_type=False, strict_mode=False,
                                                     data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        raise OnnxPruneError(f"model is inconsistent: {str(exc).splitlines()[0]}") from None
    if light is None:
        return inferred
    for name in ("value_info", "output", "node"):
        del getattr(model.graph, name)[:]
        getattr(model.graph, name).extend(getattr(inferred.graph, name))
    return model


def strip_shapes(graph: gs.Graph) -> None:
    """Forget intermediate shapes (stale after surgery); graph inputs/outputs keep theirs."""
    keep = {id(t) for t in graph.inputs} | {id(t) for t in graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in keep:
            tensor.shape = None
