"""Channel bookkeeping for the dependency compiler.

Every output channel of a *source* (a Conv/Gemm/MatMul output, or a block the
analysis cannot attribute) gets a global integer id. A tensor that carries channels
has a `ChannelMap`: the axis that holds them and, for each position on that axis,
the global id it came from. Ops rewrite maps (Concat concatenates them, Slice cuts
them, Flatten repeats them); element-wise ops between two channel tensors *union*
ids position by position. Union-find classes of ids are the units: the channels
that must be removed together.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ChannelMap:
    axis: int          # non-negative axis of the tensor that holds the channels
    ids: np.ndarray    # int64 [C]: global channel id at each position of that axis
    within: int | None = None  # after a split into (heads, head_dim): the head_dim axis

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    def moved(self, axis: int) -> "ChannelMap":
        return ChannelMap(axis, self.ids)


class UnionFind:
    """Union-find over global channel ids, grown as sources are allocated."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.parent)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the older id stays root, so units are named after their first source
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union(x, y)

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)
