"""Calibration data: load an ``.npz``, check it against the model's inputs.

The calibration set is the only data onnxprune ever sees, so every problem with it
is reported up front, on one line, naming the file and the key, instead of
surfacing later as an ONNX Runtime shape error in the middle of scoring.

Layout (fixed command-line contract): one array per model input, keyed by the
input's name, samples stacked on axis 0; an optional ``labels`` array unless the
model itself has an input called ``labels`` (then that key is that input and there
are no labels).

Decisions where the contract is silent:

- dtypes are cast to the model's input dtype when no information is lost in kind:
  float64 -> float32/float16 is accepted (finite values that overflow the target
  are an error), any integer -> float is accepted, integer -> integer is accepted
  when every value fits the target (checked), float -> integer is refused, and bool
  is only accepted for bool inputs (and only bool for them). String inputs accept
  ``U``/``S`` arrays.
- axis 0 is always the sample axis and is never checked against the model's first
  dimension, even when that is a static 1: the engine feeds the samples in batches
  of the size the model accepts. Consequently a rank-0 (scalar) model input cannot
  be calibrated and is refused.
- labels: 1-D integer class ids (integer-valued floats are accepted and converted),
  or ``[N, 1]`` ids (squeezed), or ``[N, C]`` one-hot / per-class probability rows
  (each row in [0, 1] summing to 1), reduced by argmax. Anything else is refused,
  because argmax over, say, ``[N, T]`` token ids would silently produce garbage.
- ``max_samples`` keeps the *first* samples in file order (not a random subset) so
  the same file and cap always give the same data; the sample counts must agree
  in the whole file before capping, and NaN/Inf checks only look at kept samples.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError

__all__ = [
    "Calibration",
    "InputSpec",
    "LABELS_KEY",
    "calibration_from_arrays",
    "input_specs_from_model",
    "load_calibration",
]

LABELS_KEY = "labels"

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # local file header, empty archive
_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class InputSpec:
    """One model input as the calibration data must match it.

    ``shape`` holds an int for a static dim and a str (symbolic name) or None
    for a dynamic one. ``shape`` is None when the model does not declare a rank.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None


@dataclass
class Calibration:
    """Validated calibration samples: same N on axis 0 of every array."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)  # suspicious data, said but accepted

    @property
    def n_samples(self) -> int:
        """N; 0 only for an empty held-out part produced by :meth:`split`."""
        for arr in self.inputs.values():
            return int(arr.shape[0])
        return 0 if self.labels is None else int(self.labels.shape[0])

    def take(self, idx: Any) -> Calibration:
        """Samples ``idx`` (int, slice, index or boolean array), keeping axis 0."""
        if isinstance(idx, (int, np.integer)):
            idx = [int(idx)]
        inputs = {k: v[idx] for k, v in self.inputs.items()}
        labels = None if self.labels is None else self.labels[idx]
        return Calibration(inputs, labels)

    def split(self, holdout: float, seed: int) -> tuple[Calibration, Calibration]:
        """Split into (scoring part, held-out verification part), reproducibly.

        The held-out part gets ``round(holdout * N)`` samples chosen by a seeded
        permutation, but at least one when ``holdout > 0`` and never so many that
        the scoring part is empty. So with N == 1 (or holdout == 0) the held-out
        part is empty (``n_samples == 0``) and the caller must verify on the
        scoring samples and say so. Both parts keep the file's sample order.
        """
        if not (0.0 <= holdout < 1.0):  # also rejects NaN
            raise OnnxPruneError(f"held-out fraction must be in [0, 1), got {holdout}")
        n = self.n_samples
        n_hold = min(int(round(holdout * n)), n - 1)
        if holdout > 0 and n >= 2:
            n_hold = max(n_hold, 1)
        perm = np.random.default_rng(seed).permutation(n)
        hold_idx = np.sort(perm[:n_hold])
        score_idx = np.sort(perm[n_hold:])
        return self.take(score_idx), self.take(hold_idx)


# ----------------------------------------------------------------------------
# model side


def input_specs_from_model(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller must feed: graph inputs that are not initializers.

    Older exporters (IR < 4) list every weight as a graph input too; those have a
    default value and are not calibration data.
    """
    initializers = {init.name for init in model.graph.initializer}
    initializers |= {init.name for init in model.graph.sparse_initializer}
    return [_spec_from_value_info(vi) for vi in model.graph.input if vi.name not in initializers]


def _spec_from_value_info(vi: onnx.ValueInfoProto) -> InputSpec:
    kind = vi.type.WhichOneof("value")
    if kind != "tensor_type":
        raise OnnxPruneError(
            f"model input '{vi.name}' is a {kind or 'untyped value'}, not a tensor; "
            "only tensor inputs are supported"
        )
    tensor_type = vi.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    except (KeyError, ValueError, TypeError):
        raise OnnxPruneError(
            f"model input '{vi.name}' has an unsupported element type "
            f"({tensor_type.elem_type})"
        ) from None
    shape = None
    if tensor_type.HasField("shape"):
        shape = tuple(_dim(d) for d in tensor_type.shape.dim)
    return InputSpec(vi.name, dtype, shape)


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.HasField("dim_param") and d.dim_param:
        return d.dim_param
    return None


# ----------------------------------------------------------------------------
# file side


def load_calibration(
    path: str | os.PathLike, specs: Sequence[InputSpec], max_samples: int | None = None
) -> Calibration:
    """Read and validate an ``.npz`` calibration file (see module docstring)."""
    arrays = _read_npz(Path(path))
    return _validate(arrays, specs, max_samples, source=f"calibration file {os.fspath(path)}")


def calibration_from_arrays(
    arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], max_samples: int | None = None
) -> Calibration:
    """Same checks as :func:`load_calibration`, for arrays already in memory."""
    checked: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise OnnxPruneError(
                f"calibration array '{key}' is an object array; "
                "object arrays are not accepted"
            )
        checked[key] = arr
    return _validate(checked, specs, max_samples, source="calibration arrays")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of the archive; never unpickles anything.

    The file is opened here rather than by ``np.load`` because numpy leaks its
    handle when the zip directory is unreadable.
    """
    where = f"calibration file {path}"
    try:
        with open(path, "rb") as fh:
            return _read_open_npz(fh, where)
    except FileNotFoundError:
        raise OnnxPruneError(f"{where} does not exist") from None
    except OSError as exc:
        raise OnnxPruneError(f"{where} cannot be read: {_one_line(exc.strerror or exc)}") from None


def _read_open_npz(fh: BinaryIO, where: str) -> dict[str, np.ndarray]:
    head = fh.read(6)
    if head.startswith(_NPY_MAGIC):
        raise OnnxPruneError(
            f"{where} is a single .npy array, not an .npz archive; save it with "
            "numpy.savez(path, <input name>=array, ...)"
        )
    if not head.startswith(_ZIP_MAGICS):
        raise OnnxPruneError(
            f"{where} is not an .npz archive (no zip header); "
            "save it with numpy.savez"
        )
    fh.seek(0)
    try:
        with np.load(fh, allow_pickle=False) as npz:
            return {key: _read_member(npz, key, where) for key in npz.files}
    except OnnxPruneError:
        raise
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, OSError, ...
        raise OnnxPruneError(
            f"{where} is not a readable .npz archive (truncated or corrupt?): "
            f"{_one_line(exc)}"
        ) from None


def _read_member(npz: Any, key: str, where: str) -> np.ndarray:
    try:
        value = npz[key]
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise OnnxPruneError(
                f"{where}: key '{key}' is an object array (needs pickle); object arrays "
                "are not accepted"
            ) from None
        raise OnnxPruneError(
            f"{where}: key '{key}' is not a readable array: {_one_line(exc)}"
        ) from None
    except Exception as exc:  # EOFError, zlib.error, BadZipFile (CRC), OSError, ...
        raise OnnxPruneError(
            f"{where}: key '{key}' cannot be read (truncated or corrupt?): "
            f"{_one_line(exc)}"
        ) from None
    if not isinstance(value, np.ndarray):  # member without the .npy header, e.g. a raw pickle
        raise OnnxPruneError(
            f"{where}: key '{key}' is not a .npy array (pickled or foreign data is "
            "not accepted)"
        )
    return value


def _one_line(obj: object) -> str:
    return " ".join(str(obj).split()) or type(obj).__name__


def _names(keys: Sequence[str]) -> str:
    return ", ".join(f"'{k}'" for k in keys)


# ----------------------------------------------------------------------------
# validation


def _validate(
    arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], max_samples: int | None, source: str
) -> Calibration:
    if not specs:
        raise OnnxPruneError("the model has no inputs; there is nothing to calibrate")
    labels_is_input = any(s.name == LABELS_KEY for s in specs)
    _check_keys(arrays, specs, labels_is_input, source)
    for spec in specs:
        _check_shape(arrays[spec.name], spec, source)
    raw_labels = None if labels_is_input else arrays.get(LABELS_KEY)
    n = _common_n(arrays, specs, raw_labels, source)
    keep = _cap(n, max_samples)
    inputs = {s.name: _convert(arrays[s.name][:keep], s, source) for s in specs}
    labels = None if raw_labels is None else _convert_labels(raw_labels[:keep], source)
    notes = [w for s in specs if (w := _dtype_warning(arrays[s.name], s, source))]
    if keep < MIN_HOLDOUT_SAMPLES:
        notes.append(f"{source} holds only {keep} sample{'s' if keep > 1 else ''}: scores rest on "
                     f"{'it' if keep == 1 else 'them'} and none can be held out to verify the "
                     f"result (at least {MIN_HOLDOUT_SAMPLES} are needed to hold some out)")
    return Calibration(inputs, labels, notes)


MIN_HOLDOUT_SAMPLES = 8  # below this nothing is held out (pipeline.split_samples)


def _dtype_warning(arr: np.ndarray, spec: InputSpec, source: str) -> str | None:
    """Integer data for a float input is converted as is; 0-255 images for a model that
    expects [0, 1] (or normalized) floats are the usual mistake, so say so."""
    if not (_is_int_like(arr.dtype) and _is_float_like(spec.dtype)) or arr.size == 0:
        return None
    lo, hi = int(arr.min()), int(arr.max())
    hint = " (0-255 pixels? most float models expect them scaled, e.g. / 255)" if hi > 1 else ""
    return (f"{source}: '{spec.name}' is {arr.dtype} (values {lo} to {hi}) but the model input "
            f"is {spec.dtype}: converted without scaling{hint}")


def _check_keys(
    arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], labels_is_input: bool, source: str
) -> None:
    wanted = [s.name for s in specs]
    missing = [k for k in wanted if k not in arrays]
    if missing:
        raise OnnxPruneError(
            f"{source} has no array for model input(s) {_names(missing)} (keys "
            f"found: {_names(sorted(arrays)) or 'none'})"
        )
    allowed = set(wanted) if labels_is_input else set(wanted) | {LABELS_KEY}
    extra = sorted(k for k in arrays if k not in allowed)
    if extra:
        also = "" if labels_is_input else f"; the only other key allowed is '{LABELS_KEY}'"
        raise OnnxPruneError(
            f"{source} has key(s) {_names(extra)} that are not model inputs (inputs: "
            f"{_names(wanted)}{also})"
        )


def _check_shape(arr: np.ndarray, spec: InputSpec, source: str) -> None:
    """Rank and static dims; axis 0 is the sample axis and is not compared."""
    if spec.shape is None:
        if arr.ndim == 0:
            raise OnnxPruneError(
                f"{source}: '{spec.name}' is a scalar; samples must be stacked on axis 0"
            )
        return
    if len(spec.shape) == 0:
        raise OnnxPruneError(
            f"model input '{spec.name}' is a scalar (rank 0); calibration needs a "
            "sample axis 0, so it is not supported"
        )
    if arr.ndim != len(spec.shape):
        raise OnnxPruneError(
            f"{source}: '{spec.name}' has rank {arr.ndim} (shape {arr.shape}) but "
            f"the model input has rank {len(spec.shape)} {_shape_str(spec.shape)}"
        )
    for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
        if axis > 0 and isinstance(want, int) and got != want:
            raise OnnxPruneError(
                f"{source}: '{spec.name}' has size {got} on axis {axis} but the model "
                f"input needs {want} {_shape_str(spec.shape)}"
            )


def _shape_str(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _common_n(
    arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], labels: np.ndarray | None, source: str
) -> int:
    counts = {s.name: int(arrays[s.name].shape[0]) for s in specs}
    if labels is not None:
        if labels.ndim == 0:
            raise OnnxPruneError(
                f"{source}: '{LABELS_KEY}' is a scalar; "
                "it must hold one class id per sample"
            )
        counts[LABELS_KEY] = int(labels.shape[0])
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"'{k}': {v}" for k, v in counts.items())
        raise OnnxPruneError(
            f"{source}: arrays disagree on the number of samples (axis 0): {detail}"
        )
    n = next(iter(counts.values()))
    if n == 0:
        raise OnnxPruneError(
            f"{source} holds zero samples "
            f"(axis 0 of {_names(list(counts))} is empty)"
        )
    return n


def _cap(n: int, max_samples: int | None) -> int:
    if max_samples is None:
        return n
    if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) or max_samples < 1:
        raise OnnxPruneError(f"max_samples must be a positive integer, got {max_samples!r}")
    return min(n, int(max_samples))


def _convert(arr: np.ndarray, spec: InputSpec, source: str) -> np.ndarray:
    """Cast to the model dtype under the rules in the module docstring."""
    src, dst = arr.dtype, spec.dtype
    where = f"{source}: '{spec.name}'"
    if not _cast_allowed(src, dst):
        raise OnnxPruneError(
            f"{where} has dtype {src} which cannot be converted safely to the model "
            f"input dtype {dst}"
        )
    if _is_float_like(src) or src.kind == "c":
        _check_finite(arr, where)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        out = np.ascontiguousarray(arr.astype(dst))
    if _is_int_like(dst) and src != dst:
        _check_int_range(arr, out, where, dst)
    if _is_float_like(dst) and src != dst:
        _check_overflow(out, where, dst)
    return out


def _cast_allowed(src: np.dtype, dst: np.dtype) -> bool:
    if src == dst:
        return True
    if dst.kind == "b" or src.kind == "b":
        return False
    if _is_int_like(dst):
        return src.kind in "iu"
    if _is_float_like(dst):
        return src.kind in "iuf" or _is_float_like(src)
    if dst.kind == "c":
        return src.kind in "iufc"
    if dst.kind in "OUS":
        return src.kind in "US"
    return False


def _is_float_like(dt: np.dtype) -> bool:
    """float kinds, plus ml_dtypes' bfloat16 / float8 (kind 'V')."""
    return dt.kind == "f" or (dt.kind == "V" and dt.name.startswith(("float", "bfloat")))


def _is_int_like(dt: np.dtype) -> bool:
    return dt.kind in "iu" or (dt.kind == "V" and dt.name.startswith(("int", "uint")))


def _check_finite(arr: np.ndarray, where: str) -> None:
    values = arr.astype(np.float64, copy=False) if arr.dtype.kind == "V" else arr
    n_nan = int(np.count_nonzero(np.isnan(values)))
    n_inf = int(np.count_nonzero(np.isinf(values)))
    if n_nan or n_inf:
        parts = [f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else ""]
        raise OnnxPruneError(
            f"{where} holds {' and '.join(p for p in parts if p)} value(s); "
            "calibration data must be finite"
        )


def _check_int_range(arr: np.ndarray, out: np.ndarray, where: str, dst: np.dtype) -> None:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        same = np.array_equal(out.astype(arr.dtype), arr)
    if not same:
        raise OnnxPruneError(
            f"{where} has values outside the range of {dst} "
            f"(min {arr.min()}, max {arr.max()})"
        )


def _check_overflow(out: np.ndarray, where: str, dst: np.dtype) -> None:
    bad = int(np.count_nonzero(~np.isfinite(out.astype(np.float64, copy=False))))
    if bad:
        raise OnnxPruneError(f"{where}: {bad} value(s) overflow the model input dtype {dst}")


def _convert_labels(raw: np.ndarray, source: str) -> np.ndarray:
    """int64 [N] class ids from [N] ids, [N, 1] ids or [N, C] one-hot rows."""
    where = f"{source}: '{LABELS_KEY}'"
    if raw.dtype.kind == "b" or not (raw.dtype.kind in "iuf" or _is_float_like(raw.dtype)):
        raise OnnxPruneError(f"{where} has dtype {raw.dtype}; labels must be integer class ids")
    if _is_float_like(raw.dtype):
        _check_finite(raw, where)
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim == 2:
        return _labels_from_rows(raw, where)
    if raw.ndim != 1:
        raise OnnxPruneError(
            f"{where} has shape {raw.shape}; expected [N] class ids or [N, C] "
            "one-hot rows"
        )
    if raw.dtype.kind not in "iu" and not np.array_equal(raw, np.round(raw)):
        raise OnnxPruneError(f"{where} holds non-integer values; labels must be integer class ids")
    if raw.min() < 0:
        raise OnnxPruneError(
            f"{where} holds negative class ids (min {raw.min()}); "
            "class ids start at 0"
        )
    if raw.dtype.kind == "u" and raw.max() > np.iinfo(np.int64).max:
        raise OnnxPruneError(f"{where} holds class ids too large for int64")
    return np.ascontiguousarray(raw.astype(np.int64))


def _labels_from_rows(raw: np.ndarray, where: str) -> np.ndarray:
    rows = raw.astype(np.float64)
    in_range = bool(np.all((rows >= 0) & (rows <= 1)))
    sums_to_one = bool(np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))
    if not (in_range and sums_to_one):
        raise OnnxPruneError(
            f"{where} has shape {raw.shape} but its rows are not one-hot (values in "
            "[0, 1] summing to 1); give [N] class ids instead"
        )
    return np.argmax(rows, axis=1).astype(np.int64)
