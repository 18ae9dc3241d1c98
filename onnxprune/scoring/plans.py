"""Scoring plans: what the engine keeps per set of groups (the cut, its session, how the
samples are chunked, how many coalitions go into one run, the held inputs), and the
helpers that lay the calibration rows and coalition masks out per chunk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .cut import Cut

__all__ = ["Chunk", "Plan", "chunk_rows", "make_chunks", "mask_rows"]


@dataclass(frozen=True)
class Chunk:
    """Samples start:stop of the calibration set, fed as `rows` rows."""

    start: int
    stop: int
    rows: int   # rows fed: stop - start, or the fixed batch (the tail padded)


@dataclass
class Plan:
    """Everything needed to score one set of groups."""

    gids: tuple[int, ...]
    cut: Cut
    session: Any
    chunks: list[Chunk]
    k_run: int                                # coalitions per run
    k_max: int                                # what the memory budget (and the user) allow
    est: dict[str, Any]                       # byte estimates behind k_run and chunks
    feeds: list[dict[str, Any]] | None = None  # per chunk: suffix input -> held data
    cache_bytes: int = 0
    tuned: bool = False                       # k_run was measured (CPU), not estimated

    @property
    def prefixed(self) -> bool:
        return self.cut.prefix is not None

    @property
    def k_value(self) -> int:
        """Coalitions per value-function call: whole runs, as many as its output budget holds."""
        return self.k_run * max(1, self.est["value_coalitions"] // self.k_run)


def make_chunks(n: int, per_run: int, fixed_rows: int | None) -> list[Chunk]:
    """The n samples, `per_run` at a time (or the fixed batch's size, the tail padded)."""
    size = fixed_rows or max(1, per_run)
    return [Chunk(s, min(n, s + size), fixed_rows or min(n, s + size) - s)
            for s in range(0, n, size)]


def chunk_rows(arr: np.ndarray, chunk: Chunk) -> np.ndarray:
    """The chunk's samples, the tail padded by repeating the last one (fixed batch)."""
    part = arr[chunk.start:chunk.stop]
    pad = chunk.rows - part.shape[0]
    return np.concatenate([part, np.repeat(part[-1:], pad, axis=0)]) if pad > 0 else part


def mask_rows(mask: np.ndarray, chunk: Chunk) -> np.ndarray:
    """[k, units] (one coalition for all samples) or [k, N, units] (one per sample) -> the
    mask input's rows for the chunk, coalition-major: [k * rows, units]."""
    if mask.ndim == 2:
        return np.repeat(mask, chunk.rows, axis=0)
    return np.stack([chunk_rows(m, chunk) for m in mask]).reshape(-1, mask.shape[-1])

