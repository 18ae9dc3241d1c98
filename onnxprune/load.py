"""Stage `load`: read an ONNX file into a ModelProto, and write one back.

Protobuf is touched only here and in `normalize` (import into the graph IR) and
`save`; every other stage works on the onnx-graphsurgeon IR.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Callable

import onnx
from onnx import numpy_helper
from google.protobuf.message import DecodeError, EncodeError

from .errors import OnnxPruneError

MIN_OPSET = 9
# protobuf cannot serialize (or even size) a message of 2 GB or more. A model that large, or
# merely large (each serialization costs its size in memory again, twice in the C++ tools), is
# shape-inferred and checked without its weights and reaches ONNX Runtime through a file with
# external data. Module constants, so that tests can route small models the same way.
PROTOBUF_LIMIT = 2**31 - 1
LARGE_MODEL = 1 << 28
# Shape inference and the checker read no weight data: a model with this many bytes or more
# is inferred and checked with its weights of 1 MB or more as stubs (dims, no data) rather
# than serialized whole for each (4-5 copies of its weights in onnx's C++ round trip).
HEAVY_MODEL = 1 << 23


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read `path` with its external data; raise OnnxPruneError on anything a user can fix."""
    path = Path(path)
    if not path.is_file():
        raise OnnxPruneError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise OnnxPruneError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise OnnxPruneError(f"{path}: not an ONNX model (no graph nodes)")
    _check_external_files(model, path.parent)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, RuntimeError, onnx.checker.ValidationError) as exc:
        raise OnnxPruneError(f"{path}: cannot read external data ({_first_line(exc)})") from None
    check_opset(model, str(path))
    validate(model, str(path))
    check_tensor_sizes(model, str(path))
    return model


_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def check_tensor_sizes(model: onnx.ModelProto, where: str = "model") -> None:
    """Every initializer's data must match its dims (a truncated or corrupted tensor would
    otherwise surface deep inside a later stage)."""
    for t in onnx.external_data_helper._get_all_tensors(model):
        count = 1
        for d in t.dims:
            count *= d
        if t.data_type == onnx.TensorProto.STRING:
            continue
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            raise OnnxPruneError(f"{where}: tensor '{t.name}' has an unknown element type "
                                 f"({t.data_type})") from None
        if t.HasField("raw_data"):
            packed = t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) \
                if hasattr(onnx.TensorProto, "INT4") else False
            want = (count + 1) // 2 if packed else count * itemsize
            if len(t.raw_data) != want:
                raise OnnxPruneError(f"{where}: tensor '{t.name}' holds {len(t.raw_data)} bytes "
                                     f"but its dims {list(t.dims)} need {want}")
        else:
            have = max((len(getattr(t, f)) for f in _FIELDS), default=0)
            if have and have != count and t.data_type not in (
                    onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128, onnx.TensorProto.FLOAT16,
                    onnx.TensorProto.BFLOAT16, onnx.TensorProto.BOOL, onnx.TensorProto.INT8,
                    onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16):
                raise OnnxPruneError(f"{where}: tensor '{t.name}' holds {have} values but its "
                                     f"dims {list(t.dims)} need {count}")


def validate(model: onnx.ModelProto, where: str = "model") -> None:
    """The ONNX checker, as a one-line error. Node order is not required (normalize sorts)."""
    check_inference_crashes(model, where)
    try:
        check(model)
    except onnx.checker.ValidationError as exc:
        message = _first_line(exc)
        if "topologically sorted" in message or "is not output of any previous nodes" in message:
            return
        raise OnnxPruneError(f"{where}: not a valid ONNX model ({message})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise OnnxPruneError(f"{where}: not a valid ONNX model ({_first_line(exc)})") from None
    check_shapes(model, where)


def check_inference_crashes(model: onnx.ModelProto, where: str = "model") -> None:
    """Nodes on which onnx's shape inference (strict or not) aborts the whole interpreter,
    found by the malformed-node fuzz, refused before it runs: a Split whose `num_outputs`
    is not its number of outputs (onnx 1.23 indexes past a vector: SIGABRT)."""
    for node in all_nodes(model.graph):
        if node.op_type == "Split" and node.domain in ("", "ai.onnx"):
            n = next((a.i for a in node.attribute if a.name == "num_outputs"), None)
            if n is not None and n != len(node.output):
                raise OnnxPruneError(f"{where}: not a valid ONNX model (Split '{node.name}' has "
                                     f"num_outputs={n} but {len(node.output)} outputs)")


def all_nodes(graph: onnx.GraphProto):
    """The graph's nodes and, depth first, those of every subgraph."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from all_nodes(sub)


def check_shapes(model: onnx.ModelProto, where: str = "model") -> None:
    """Strict shape inference, as the full checker runs it on every output we write: a node
    that contradicts its weights or the declared input/output shapes (a Conv whose pads no
    longer give the declared size, a 1-D Conv weight) is the input's fault, and would
    otherwise first fail on the pruned model. Intermediate value_info is left out: it is
    only a hint, often stale, and the output does not keep it."""
    hints = list(model.graph.value_info)
    del model.graph.value_info[:]
    try:
        check(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError,
            UnicodeDecodeError, ValueError) as exc:  # undecodable names, unknown types
        raise OnnxPruneError(f"{where}: not a valid ONNX model ({_first_line(exc)})") from None
    finally:
        model.graph.value_info.extend(hints)


def check(model: onnx.ModelProto, full_check: bool = False) -> None:
    """onnx.checker.check_model, also for a large model: a heavy one's (`is_heavy`) weights
    become references into a sparse file of their size (no disk used), which the checker,
    reading the model from a path, finds in place but never reads (no copy of them either)."""
    if not is_heavy(model):
        onnx.checker.check_model(model, full_check=full_check)
        return
    light, pairs = split_weights(model)
    with tempfile.TemporaryDirectory(prefix="onnxprune-check-") as tmp:
        offset = 0
        for stub, original in pairs:
            length = _raw_length(original)
            point_to(stub, "weights.data", offset, length)
            offset += length
        with open(Path(tmp) / "weights.data", "wb") as f:
            f.truncate(offset)
        onnx.save_model(light, str(Path(tmp) / "model.onnx"))
        onnx.checker.check_model(str(Path(tmp) / "model.onnx"), full_check=full_check)


def check_opset(model: onnx.ModelProto, where: str = "model") -> int:
    """Return the default-domain opset, refusing ones the handlers were not written for."""
    version = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if version is None:
        raise OnnxPruneError(f"{where}: no opset import for the default ONNX domain")
    if version < MIN_OPSET or version > newest:
        raise OnnxPruneError(
            f"{where}: opset {version} is not supported (supported: {MIN_OPSET} to {newest})")
    return version


def default_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *,
               external_data: bool | None = None,
               on_commit: Callable[[], None] | None = None) -> None:
    """Write atomically (temporary file + rename); large models get a sibling `.data` file.
    `on_commit` runs once the files are complete, just before they are renamed into place
    (the command stops honouring Ctrl-C there: a half-renamed pair would be a partial output)."""
    path = Path(path)
    if external_data is None:
        external_data = model.ByteSize() > 1_800_000_000 if fits_protobuf(model) else True
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    data_name = path.name + ".data"
    try:
        if external_data:
            # written under a temporary name, but the model already names the final file
            tmp_data = path.parent / (Path(tmp).name + ".data")
            write_external(model, Path(tmp), tmp_data, data_name, threshold=1024)
        else:
            onnx.save_model(model, tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would survive the rename
        if on_commit is not None:
            on_commit()
        if external_data:
            os.replace(tmp_data, path.parent / data_name)
        os.replace(tmp, path)
    except BaseException:
        for leftover in (Path(tmp), path.parent / (Path(tmp).name + ".data")):
            leftover.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
           onnx.TensorProto.DOUBLE}


def split_weights(model: onnx.ModelProto, threshold: int = 1 << 20, floats_only: bool = False,
                  ) -> tuple[onnx.ModelProto, list[tuple[onnx.TensorProto, onnx.TensorProto]]]:
    """A copy of `model` whose main-graph initializers of `threshold` bytes or more are stubs
    (name, type and dims, no data), and the (stub, original) pairs. This is how a model past
    protobuf's limit is shape-inferred or written without copying its weights or changing it.
    `floats_only`: integer tensors stay (shapes and indices, whose values ORT reads)."""
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    pairs = []
    for t in model.graph.initializer:
        if (t.data_type != onnx.TensorProto.STRING and (t.data_type in _FLOATS or not floats_only)
                and tensor_at_least(t, threshold)):
            stub = light.graph.initializer.add()
            stub.name, stub.data_type = t.name, t.data_type
            stub.dims.extend(t.dims)
            pairs.append((stub, t))
        else:
            light.graph.initializer.add().CopyFrom(t)
    return light, pairs


def write_external(model: onnx.ModelProto, path: Path, data_path: Path | None = None,
                   location: str | None = None, threshold: int = 1 << 20) -> Path:
    """Write `model` to `path` with its large initializers in `data_path` (default: PATH.data),
    which the model names `location` (default: its file name); `model` is not changed. Data
    offsets are page-aligned so that ONNX Runtime can map them instead of copying."""
    data_path = data_path or path.with_name(path.name + ".data")
    light, pairs = split_weights(model, threshold)
    offset = 0
    with open(data_path, "wb") as f:
        for stub, original in pairs:
            data = original.raw_data if original.HasField("raw_data") else \
                numpy_helper.from_array(numpy_helper.to_array(original)).raw_data
            pad = -offset % 4096
            f.write(b"\0" * pad)
            offset += pad
            f.write(data)
            point_to(stub, location or data_path.name, offset, len(data))
            offset += len(data)
    onnx.save_model(light, str(path))
    return path


def point_to(stub: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    stub.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        stub.external_data.add(key=key, value=value)


def _raw_length(t: onnx.TensorProto) -> int:
    """Bytes of the tensor's data in raw (external data) form, without reading it."""
    count = math.prod(t.dims)
    if t.data_type in _PACKED_4BIT:
        return (count + 1) // 2
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except KeyError:  # an element type onnx does not know: the checker says so later
        itemsize = 4
    return count * itemsize


_PACKED_4BIT = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1")
                if hasattr(onnx.TensorProto, n)}


def _copy_fields(src, dst, skip: str) -> None:
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        if repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def tensor_at_least(t: onnx.TensorProto, threshold: int) -> bool:
    """Whether the tensor's serialized size reaches `threshold`: its raw data alone decides
    when it does (sizing a tensor means encoding it, a copy of its data)."""
    if t.HasField("raw_data") and _raw_length(t) >= threshold:
        return True
    return _tensor_bytes(t) >= threshold


def _tensor_bytes(t: onnx.TensorProto) -> int:
    try:
        return t.ByteSize()
    except (ValueError, EncodeError):  # one tensor of 2 GB or more
        return _raw_length(t)


def model_bytes(model: onnx.ModelProto) -> int:
    """The serialized size, also past protobuf's limit (then: the model without its large
    weights, plus their data)."""
    try:  # one encoding (upb sizes a message by encoding it), not one to check and one to size
        size = model.ByteSize()
    except (ValueError, EncodeError):  # protobuf refuses even to size it
        size = PROTOBUF_LIMIT
    if size < PROTOBUF_LIMIT:
        return size
    light, pairs = split_weights(model)
    return light.ByteSize() + sum(_tensor_bytes(t) for _, t in pairs)


def _check_external_files(model: onnx.ModelProto, base: Path) -> None:
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if loc is None or not (base / loc).is_file():
            raise OnnxPruneError(
                f"external data file '{loc}' of tensor '{tensor.name}' not found next to the model")


def _all_tensors(model: onnx.ModelProto):
    yield from onnx.external_data_helper._get_all_tensors(model)


def is_large(model: onnx.ModelProto) -> bool:
    return approx_bytes(model) >= min(LARGE_MODEL, PROTOBUF_LIMIT)


def is_heavy(model: onnx.ModelProto) -> bool:
    """Whether shape inference and the checker take the model without its weights' data."""
    return approx_bytes(model) >= min(HEAVY_MODEL, LARGE_MODEL, PROTOBUF_LIMIT)


def approx_bytes(model: onnx.ModelProto) -> int:
    """The serialized size within a few bytes per message, without encoding the whole model:
    upb sizes a message by encoding it (70 ms for a 90 MB model, and the stages ask dozens of
    times). The main graph's numeric initializers are sized from their dims (their data in raw
    or packed form; varint int64 data is at most 1.25x that), everything else as it is."""
    total = 0
    for fd, value in model.ListFields():
        if fd.name != "graph":
            total += _field_bytes(fd, value)
    for fd, value in model.graph.ListFields():
        if fd.name != "initializer":
            total += _field_bytes(fd, value)
            continue
        for t in value:
            big = t.data_type != onnx.TensorProto.STRING and math.prod(t.dims) >= 1024
            total += (_raw_length(t) + len(t.name) + 12 * len(t.dims) + 16 if big
                      else _tensor_bytes(t) + 6)
    return total


def _field_bytes(fd, value) -> int:
    """A field's serialized size, give or take its tags (a few bytes per element)."""
    repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
    items = list(value) if repeated else [value]
    if fd.message_type is not None:
        return sum(_message_bytes(m) + 6 for m in items)
    return sum(len(v) if isinstance(v, (str, bytes)) else 10 for v in items) + 2 * len(items)


def _message_bytes(m) -> int:
    try:
        return m.ByteSize()
    except (ValueError, EncodeError):  # one message (a Constant's tensor) of 2 GB or more
        return PROTOBUF_LIMIT


def fits_protobuf(model: onnx.ModelProto) -> bool:
    try:
        return model.ByteSize() < PROTOBUF_LIMIT
    except (ValueError, EncodeError):  # protobuf refuses even to size it
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
