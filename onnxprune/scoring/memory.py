"""Memory estimates for the scoring engine: bytes per sample of a (sub-)model's activations.

The engine sizes its runs (samples and coalitions per ORT run, what it may cache) from these
numbers and a budget; they come from ONNX shape inference alone, before anything runs, so a
run that would not fit is never tried.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx

from ..compiler.normalize import infer_shapes
from ..load import tensor_at_least
from ..runtime import available_memory_bytes

DEFAULT_MAX_MB = 2048.0

__all__ = ["DEFAULT_MAX_MB", "Dims", "activation_dims", "activations", "default_memory_mb",
           "light_copy", "row_bytes"]


def default_memory_mb() -> float:
    """A quarter of the available RAM, capped at 2 GB."""
    return min(available_memory_bytes() / 4 / 2**20, DEFAULT_MAX_MB)


Dims = Mapping[str, Sequence[int]]  # tensor name -> dims after axis 0


def row_bytes(model: onnx.ModelProto, known: Dims | None = None) -> tuple[int, int]:
    """(all activations, the largest one) in bytes per batch row (axis 0), from shapes
    inferred with the graph inputs' other dims taken from `known` (the calibration data's).

    Summing every tensor over-estimates ORT's peak (it reuses buffers), which is the safe
    side for a budget. Dims still unknown count as 1."""
    total = largest = 0
    for itemsize, dims in activations(model, known or {}).values():
        size = int(np.prod(dims, dtype=np.int64)) * itemsize
        total, largest = total + size, max(largest, size)
    return total, largest


def activation_dims(model: onnx.ModelProto, known: Dims) -> dict[str, tuple[int, ...]]:
    """Every activation's dims after axis 0 (unknown ones as 1) for inputs of dims `known`."""
    return {name: dims for name, (_, dims) in activations(model, known).items()}


def activations(model: onnx.ModelProto, known: Dims) -> dict[str, tuple[int, tuple[int, ...]]]:
    graph = infer_shapes(light_copy(model, known)).graph
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


def light_copy(model: onnx.ModelProto, known: Dims) -> onnx.ModelProto:
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
        if not tensor_at_least(init, 4097):  # shape-like constants: inference reads their values
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

