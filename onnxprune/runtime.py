"""ONNX Runtime sessions: provider choice (CUDA when a session really gets it, CPU otherwise)
and the packaging pitfalls (docs/design.md, Packaging); and the probes of this machine's hardware
(free memory, CPU vector width), so that the stages stay pure functions of their inputs."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata as md
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import OnnxPruneError
from .load import is_heavy, is_large, point_to, split_weights, write_external

INSTALL_HINT = "pip install 'onnxprune[cpu]' (or 'onnxprune[gpu]' for CUDA)"


def ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise OnnxPruneError(f"ONNX Runtime is not installed: {INSTALL_HINT}") from None
    return onnxruntime


def package_warning() -> str | None:
    """onnxruntime and onnxruntime-gpu share one module; both installed breaks it."""
    have = set()
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            md.version(dist)
            have.add(dist)
        except md.PackageNotFoundError:
            pass
    if len(have) == 2:
        return ("both onnxruntime and onnxruntime-gpu are installed; they overwrite each other. "
                "Uninstall both and install one: " + INSTALL_HINT)
    return None


def session_options(threads: int | None = None, *, spinning: bool = True,
                    optimize: bool = True) -> Any:
    rt = ort()
    opts = rt.SessionOptions()
    if not optimize:  # the model as the ONNX spec says, not as ORT's rewrites may read it
        opts.graph_optimization_level = rt.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4  # failures surface as exceptions; the log would only repeat them on stderr
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    if not spinning:  # docs/design.md: spinning threads distort interleaved latency measurements
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def providers_for(device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device in ("cuda", "auto"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise OnnxPruneError(f"unknown device '{device}' (use auto, cpu or cuda)")


def make_session(model: onnx.ModelProto | str | bytes, device: str = "auto",
                 threads: int | None = None, *, spinning: bool = True,
                 optimize: bool = True, disabled_optimizers: Sequence[str] = ()) -> Any:
    """A session on `device`; with 'cuda' it is an error if CUDA is not what the session got.
    `disabled_optimizers`: ORT graph rewrites (by name) this session must not apply."""
    rt = ort()
    wanted = providers_for(device)
    available = rt.get_available_providers()
    providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    opts = session_options(threads, spinning=spinning, optimize=optimize)
    if isinstance(model, onnx.ModelProto) and is_large(model):
        sess = _session_from_file(rt, model, opts, providers, disabled_optimizers)
    else:
        source, weights = session_source(model, opts) if isinstance(model, onnx.ModelProto) else (model, ())
        sess = rt.InferenceSession(source, opts, providers=providers,
                                   disabled_optimizers=list(disabled_optimizers) or None)
        sess.onnxprune_weights = weights  # ORT reads the arrays in place: alive with the session
    if device == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise OnnxPruneError("--device cuda: the CUDA execution provider is not usable here "
                             f"(session got {sess.get_providers()[0]}); install 'onnxprune[gpu]' "
                             "with a matching CUDA, or use --device cpu")
    return sess


SHARED_WEIGHT = 1 << 16  # bytes from which a heavy model's weights reach ORT as arrays


def session_source(model: onnx.ModelProto, opts: Any) -> tuple[bytes, tuple]:
    """The bytes a session is built from, and the arrays it reads in place (keep them as long
    as the session). A heavy model's (load.is_heavy) floating-point weights of SHARED_WEIGHT
    bytes or more are left out of the bytes and handed to ONNX Runtime as arrays
    (`add_external_initializers` on `opts`; integer tensors stay: ORT reads shapes from them):
    serializing them and ORT's parse would copy them twice more (a MiniLM session 0.27 ->
    0.12 s; outputs bit-identical, tests/test_robustness.py)."""
    if not is_heavy(model):
        return model.SerializeToString(), ()
    light, pairs = split_weights(model, SHARED_WEIGHT, floats_only=True)
    try:
        arrays = [numpy_helper.to_array(original) for _, original in pairs]
        values = [ort().OrtValue.ortvalue_from_numpy(a) for a in arrays]
    except (ValueError, TypeError, KeyError, RuntimeError):  # a type ORT's numpy bridge lacks
        return model.SerializeToString(), ()
    for stub, _ in pairs:
        point_to(stub, "onnxprune-in-memory", 0, 0)
    opts.add_external_initializers([stub.name for stub, _ in pairs], values)
    return light.SerializeToString(), (arrays, values)


def _session_from_file(rt: Any, model: onnx.ModelProto, opts: Any, providers: list[str],
                       disabled_optimizers: Sequence[str] = ()) -> Any:
    """A model past protobuf's 2 GB limit cannot be handed over as bytes (and a large one would
    be copied twice on the way): write it with external data to a temporary directory and load
    it from there. The directory goes right after loading (on Linux, data ONNX Runtime has
    mapped stays readable until it unmaps it)."""
    with tempfile.TemporaryDirectory(prefix="onnxprune-session-") as tmp:
        path = write_external(model, Path(tmp) / "model.onnx")
        return rt.InferenceSession(str(path), opts, providers=providers,
                                   disabled_optimizers=list(disabled_optimizers) or None)


def fixed_batch(sess: Any, skip: Mapping[str, Any] | None = None) -> int | None:
    """The batch size the session's inputs (but those in `skip`) fix on axis 0 (None: the
    batch is dynamic)."""
    sizes = {i.shape[0] for i in sess.get_inputs()
             if i.shape and isinstance(i.shape[0], int) and i.name not in (skip or {})}
    return sizes.pop() if len(sizes) == 1 else None


def tensor_outputs(sess: Any) -> list[str]:
    """The session's outputs that are tensors: what value functions and verification read
    (a sequence of maps, skl2onnx's ZipMap, is left out)."""
    return [o.name for o in sess.get_outputs() if o.type.startswith("tensor(")]


def run_chunks(sess: Any, feeds: Mapping[str, np.ndarray], batch: int = 64,
               outputs: list[str] | None = None, *, extra: Mapping[str, np.ndarray] | None = None,
               axes: list[int] | None = None) -> Iterator[tuple[int, int, list[np.ndarray]]]:
    """(start, stop, outputs) over the samples, `batch` at a time. A model exported with a
    fixed batch B runs B at a time: the last chunk is padded by repeating its last sample and
    the outputs are cut back to the real samples, so any number of samples works. `extra`
    feeds (a mask of batch 1) go to every run as they are; `axes` (`batch_axes`) says where
    each output holds the samples: the outputs come back with the samples moved to axis 0."""
    extra = dict(extra or {})
    names = [i.name for i in sess.get_inputs() if i.name not in extra]
    n = len(feeds[names[0]]) if names else len(next(iter(feeds.values())))
    fixed = fixed_batch(sess, skip=extra)
    step = fixed or max(1, batch)
    for start in range(0, n, step):
        stop = min(n, start + step)
        outs = sess.run(outputs, {**{k: pad_rows(feeds[k][start:stop], fixed) for k in names},
                                  **extra})
        if axes is not None:
            outs = [np.moveaxis(o, a, 0) for o, a in zip(outs, axes)]
        if fixed and stop - start < fixed:
            outs = [o[:stop - start] if isinstance(o, np.ndarray) and o.ndim and o.shape[0] == fixed
                    else o for o in outs]
        yield start, stop, outs


def batch_axes(sess: Any, feeds: Mapping[str, np.ndarray], outputs: list[str]) -> list[int]:
    """Per output, the axis that holds the samples (a sequence-first RNN output [T, N, C] has
    them on axis 1): the one axis declared with the inputs' batch symbol; else, with a fixed
    batch B, axis 0 or the one axis of size B in a run; else the one axis whose size follows
    the batch from a run on one sample to a run on two. None found is the user's error."""
    symbols = {i.shape[0] for i in sess.get_inputs() if i.shape and isinstance(i.shape[0], str)}
    declared = {o.name: o.shape for o in sess.get_outputs()}
    axes: list[int | None] = [_declared_axis(declared.get(n), symbols) for n in outputs]
    missing = [n for n, a in zip(outputs, axes) if a is None]
    if missing:
        found = dict(zip(missing, _probed_axes(sess, feeds, missing)))
        axes = [found.get(n, a) for n, a in zip(outputs, axes)]
    for name, axis in zip(outputs, axes):
        if axis is None:
            raise OnnxPruneError(f"cannot tell which axis of output '{name}' holds the samples "
                                 "(no axis follows the input batch); onnxprune needs one")
    return [int(a) for a in axes]  # type: ignore[arg-type]


def _declared_axis(shape: list | None, symbols: set[str]) -> int | None:
    hits = [i for i, d in enumerate(shape or []) if isinstance(d, str) and d in symbols]
    return hits[0] if len(hits) == 1 else None


def _probed_axes(sess: Any, feeds: Mapping[str, np.ndarray], names: list[str]) -> list[int | None]:
    inputs = [i.name for i in sess.get_inputs()]
    fixed = fixed_batch(sess)
    if fixed:  # the batch cannot vary: axis 0 if it has the batch's size, else the one that has
        shapes = [np.shape(o) for o in sess.run(names, {k: pad_rows(feeds[k][:fixed], fixed)
                                                       for k in inputs})]
        return [_only([a for a, d in enumerate(s) if d == fixed], prefer=0) for s in shapes]
    one = sess.run(names, {k: feeds[k][:1] for k in inputs})
    two = sess.run(names, {k: pad_rows(feeds[k][:2], 2) for k in inputs})
    return [_only([a for a, (x, y) in enumerate(zip(np.shape(o), np.shape(t))) if (x, y) == (1, 2)])
            if np.ndim(o) == np.ndim(t) else None for o, t in zip(one, two)]


def _only(axes: list[int], prefer: int | None = None) -> int | None:
    if prefer is not None and prefer in axes:
        return prefer
    return axes[0] if len(axes) == 1 else None


def pad_rows(arr: np.ndarray, rows: int | None) -> np.ndarray:
    """`arr` with its last sample repeated up to `rows` samples (unchanged if it has them)."""
    if not rows or len(arr) >= rows:
        return arr
    return np.concatenate([arr, np.repeat(arr[-1:], rows - len(arr), axis=0)])


def session_device(sess: Any) -> str:
    return "cuda" if sess.get_providers()[0] == "CUDAExecutionProvider" else "cpu"


def available_memory_bytes() -> int:
    """RAM available to new allocations: MemAvailable, else free pages, else 8 GB (a guess)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """numpy's OpenBLAS on one thread while the block runs, restored after. The refit's and
    the statistics' matrices are small (a few hundred columns): OpenBLAS's threads then cost
    more than they give, and on a shared machine, or beside ONNX Runtime's own spinning
    threads, they wait on each other (a 288-column solve took 80 ms on 2 threads under load,
    under 1 ms on one). Process-wide while it runs (other Python threads' BLAS calls too);
    a no-op where numpy's BLAS is not an OpenBLAS we can find."""
    api = _openblas_threads()
    if api is None:
        yield
        return
    get, set_ = api
    before = int(get())
    set_(1)
    try:
        yield
    finally:
        set_(before)


@functools.lru_cache(maxsize=1)
def _openblas_threads() -> tuple[Any, Any] | None:
    """(get, set) of the loaded OpenBLAS's thread count, from the libraries this process mapped."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower()})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""),
                               ("openblas", "64_"), ("openblas", "")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                set_.argtypes, get.restype = [ctypes.c_int], ctypes.c_int
                return get, set_
    return None


def hardware_multiple(device: str = "cpu") -> int:
    """The channel multiple `round_to="auto"` uses: ONNX Runtime's x86 CPU convs run in NCHWc
    blocks of 16 channels with AVX-512F and 8 with AVX2 (other widths are padded or fall
    back to slower kernels); CUDA's tensor cores want multiples of 8; elsewhere no rounding."""
    if device == "cuda":
        return 8
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return 1
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 8
    return 16 if " avx512f" in flags else 8
