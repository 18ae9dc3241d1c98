"""Small helpers over the onnx-graphsurgeon IR, and the conversions to and from protobuf.

The IR is onnx-graphsurgeon's `Graph`/`Node`/`Variable`/`Constant`; this module only adds
what every stage needs: reading constant values and opset-dependent attributes, and the
ModelProto round trip that keeps a model's identity (IR version, opsets, metadata).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import OnnxPruneError


@dataclass
class ModelIdentity:
    """What a ModelProto carries besides its graph; restored on save."""

    ir_version: int
    opset_import: list[tuple[str, int]]
    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    doc_string: str = ""
    metadata_props: list[tuple[str, str]] = field(default_factory=list)
    functions: list[onnx.FunctionProto] = field(default_factory=list)
    # graph inputs/outputs that are not tensors (skl2onnx's ZipMap: a sequence of maps):
    # onnx-graphsurgeon exports them as tensors of an undefined type, ORT then refuses the model
    io_types: dict[str, onnx.TypeProto] = field(default_factory=dict)

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "ModelIdentity":
        return cls(
            ir_version=model.ir_version,
            opset_import=[(o.domain, o.version) for o in model.opset_import],
            producer_name=model.producer_name, producer_version=model.producer_version,
            domain=model.domain, model_version=model.model_version, doc_string=model.doc_string,
            metadata_props=[(p.key, p.value) for p in model.metadata_props],
            functions=list(model.functions),
            io_types={v.name: v.type for v in [*model.graph.input, *model.graph.output]
                      if v.type.WhichOneof("value") != "tensor_type"})


def to_proto(graph: gs.Graph, ident: ModelIdentity) -> onnx.ModelProto:
    """Export the IR and restore the model's identity."""
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = ident.ir_version
    del model.opset_import[:]
    for domain, version in ident.opset_import:
        model.opset_import.add(domain=domain, version=version)
    model.producer_name, model.producer_version = ident.producer_name, ident.producer_version
    model.domain, model.model_version = ident.domain, ident.model_version
    model.doc_string = ident.doc_string
    del model.metadata_props[:]
    for key, value in ident.metadata_props:
        model.metadata_props.add(key=key, value=value)
    # rewrite's --prune-cache record (vars: graphsurgeon's getattr looks up graph functions)
    if heads := vars(graph).get("cache_heads"):
        from .cache import record_cache_heads
        record_cache_heads(model, heads)
    if ident.functions and not model.functions:
        model.functions.extend(ident.functions)
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in ident.io_types:
            value.type.CopyFrom(ident.io_types[value.name])
    if ident.ir_version < 4:  # IR 3 requires every initializer to be a graph input too
        listed = {i.name for i in model.graph.input}
        model.graph.input.extend(
            onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            for t in model.graph.initializer if t.name not in listed)
    return model


def const_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor (initializer or folded Constant node), else None."""
    if isinstance(tensor, gs.Constant):
        try:
            values = tensor.values
            if isinstance(values, gs.ir.tensor.LazyValues):
                values = values.load()
        except ValueError as exc:  # the user's data does not fill its dims (found by the long fuzz)
            raise OnnxPruneError(f"cannot read the model's tensor '{tensor.name}': "
                                 f"{str(exc).splitlines()[0][:160]}") from None
        return np.asarray(values)
    return None


def shape_of(tensor: gs.Tensor) -> tuple | None:
    """The tensor's shape (ints, dim names or None for unknown dims), or None if unknown."""
    if isinstance(tensor, gs.Constant):
        return tuple(tensor.shape)
    return tuple(tensor.shape) if tensor.shape is not None else None


def rank_of(tensor: gs.Tensor) -> int | None:
    shape = shape_of(tensor)
    return None if shape is None else len(shape)


def static_dims(shape: tuple | None) -> bool:
    return shape is not None and all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape)


def attr(node: gs.Node, name: str, default: Any = None) -> Any:
    return node.attrs.get(name, default)


def input_or_attr(node: gs.Node, index: int, name: str, opset_since: int,
                  opset: int, default: Any = None) -> Any:
    """Read a value that moved from an attribute to an input at `opset_since` (Split, Squeeze, ...).

    Returns a numpy array / python value, `default` if absent, or the string "dynamic"
    when it is an input that is not constant."""
    if opset >= opset_since:
        if len(node.inputs) > index and node.inputs[index] is not None and node.inputs[index].name:
            value = const_value(node.inputs[index])
            return "dynamic" if value is None else value
        return default
    return node.attrs.get(name, default)


def node_key(node: gs.Node) -> str:
    """A stable key for a node across graph copies: the name of its first output (SSA-unique)."""
    return node.outputs[0].name if node.outputs else f"<no-output:{node.name}>"


def is_present(tensor: gs.Tensor | None) -> bool:
    """Optional inputs are encoded as empty-named tensors."""
    return tensor is not None and bool(tensor.name)


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis
