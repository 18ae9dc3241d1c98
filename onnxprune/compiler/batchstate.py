"""The states of batchaxis.py's flow pass: where a tensor holds the samples."""
from __future__ import annotations

from dataclasses import dataclass

B = "<batch>"  # the batch size, as a dim token
FREE, BATCH = "free", "batch"


@dataclass(frozen=True)
class Axis:
    k: int  # the sample axis, >= 1 (axis 0 is BATCH)


@dataclass(frozen=True)
class Merged:
    inner: tuple  # dims merged into axis 0 after the batch (ints or dim names)
    outer: tuple = ()  # dims merged into axis 0 before the batch


@dataclass(frozen=True)
class Prod:
    """A dim that is the product of dims (a Reshape target's `T * b`), factors sorted."""
    factors: tuple


def at_axis(k: int) -> object:
    return BATCH if k == 0 else Axis(k)


def axis_of(state: object) -> int | None:
    return 0 if state == BATCH else state.k if isinstance(state, Axis) else None


@dataclass(frozen=True)
class Index:
    kind: str  # "b", "bs", "local", "rowsel", "nd"
    axis: int = 0  # the axis that carries the batch coordinate ("local": unused)
    size: object = None  # "bs"/"rowsel": the block d; "local": the bound


def factors_of(d) -> list:
    return list(d.factors) if isinstance(d, Prod) else [d]

