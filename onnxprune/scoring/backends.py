"""Where the engine's data lives between ORT runs: host arrays on CPU, device OrtValues on
CUDA. Both backends answer the same six calls (`Backend`), so the engine's plans, caching
and runs are written once; only `backend_for` looks at the provider the session really got.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Protocol

import numpy as np

from ..runtime import ort, session_device
from .cut import TILE_INPUT

__all__ = ["Backend", "CpuBackend", "CudaBackend", "backend_for"]


class Backend(Protocol):
    """What the engine needs from where its data lives. `device` is "cpu" or "cuda";
    `tile_in_graph` says whether the scoring model tiles its data inputs K times itself
    (cut_model's `tile_in_graph`) instead of being fed K copies."""

    device: ClassVar[str]
    tile_in_graph: ClassVar[bool]

    def put(self, arr: np.ndarray) -> Any:
        """One host array where the runs read it."""
        ...

    def hold(self, data: Mapping[str, Any], k: int) -> dict[str, Any]:
        """A chunk's data inputs, made ready for runs of up to k coalitions."""
        ...

    def tiled(self, held: Mapping[str, Any], k: int, rows: int) -> tuple[dict[str, Any], dict]:
        """(data inputs for a run of k coalitions x `rows` samples, extra host inputs)."""
        ...

    def rows(self, value: Any) -> int:
        """A held value's axis-0 size."""
        ...

    def nbytes(self, value: Any) -> int | None:
        """A held value's size in bytes (None: unknown, the caller estimates)."""
        ...

    def run(self, sess: Any, data: Mapping[str, Any], host: Mapping[str, np.ndarray],
            outputs: list[str], keep: bool = False) -> list[Any]:
        """One ORT run; `keep` leaves the outputs where the backend holds data."""
        ...


class CpuBackend:
    """Host arrays, plain `run`. The K copies of a chunk's data are made once per plan
    (`hold`) and reused by every run: tiling per run cost as much as a late group's suffix."""

    device = "cpu"
    tile_in_graph = False

    def put(self, arr: np.ndarray) -> Any:
        return arr

    def hold(self, data: Mapping[str, np.ndarray], k: int) -> dict[str, Any]:
        """The data inputs tiled for up to k coalitions (row j*n + i is sample i)."""
        if k == 1:
            return dict(data)
        return {name: np.tile(arr, (k,) + (1,) * (arr.ndim - 1)) for name, arr in data.items()}

    def tiled(self, held: Mapping[str, np.ndarray], k: int, rows: int) -> tuple[dict[str, Any], dict]:
        """(data inputs for k coalitions, extra host inputs): leading rows of the held tiles,
        views (contiguous, no copy)."""
        return {name: arr[:k * rows] for name, arr in held.items()}, {}

    def rows(self, value: Any) -> int:
        return int(value.shape[0])

    def nbytes(self, value: Any) -> int | None:
        return int(value.nbytes)

    def run(self, sess: Any, data: Mapping[str, Any], host: Mapping[str, np.ndarray],
            outputs: list[str], keep: bool = False) -> list[Any]:
        return sess.run(outputs, {**data, **host})


class CudaBackend:
    """Data and cached activations live on the GPU as OrtValues; per run only the small host
    inputs (masks, tile count) are bound from CPU. `keep` leaves outputs on the device (the
    prefix cache); otherwise they are copied to the host for the value function."""

    device = "cuda"
    tile_in_graph = True

    def __init__(self, rt: Any, device_id: int = 0) -> None:
        self.rt, self.device_id = rt, device_id

    def hold(self, data: Mapping[str, Any], k: int) -> dict[str, Any]:
        """The device data as is: the scoring model tiles it in the graph."""
        return dict(data)

    def tiled(self, held: Mapping[str, Any], k: int, rows: int) -> tuple[dict[str, Any], dict]:
        """The scoring model tiles on the device; it is only told K."""
        return dict(held), {TILE_INPUT: np.array([k], dtype=np.int64)}

    def put(self, arr: np.ndarray) -> Any:
        return self.rt.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), "cuda", self.device_id)

    def rows(self, value: Any) -> int:
        return int(value.shape()[0])

    def nbytes(self, value: Any) -> int | None:
        return None  # the caller's estimate

    def run(self, sess: Any, data: Mapping[str, Any], host: Mapping[str, np.ndarray],
            outputs: list[str], keep: bool = False) -> list[Any]:
        io = sess.io_binding()
        for name, value in data.items():
            io.bind_ortvalue_input(name, value)
        for name, arr in host.items():
            io.bind_cpu_input(name, np.ascontiguousarray(arr))
        for name in outputs:
            io.bind_output(name, "cuda", self.device_id)
        sess.run_with_iobinding(io)
        return list(io.get_outputs()) if keep else io.copy_outputs_to_cpu()


def backend_for(sess: Any) -> Backend:
    """CUDA only when the session really got the CUDA provider (docs/design.md)."""
    return CudaBackend(ort()) if session_device(sess) == "cuda" else CpuBackend()

