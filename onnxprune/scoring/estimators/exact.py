"""Exact Shapley values by enumerating all 2^n coalitions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .game import (
    DEFAULT_BATCH,
    MAX_EXACT_UNITS,
    Aggregate,
    Estimate,
    Game,
    ValueFn,
    check_aggregate,
    mean_plus_2std,
    result,
    trivial,
)


def _shapley_from_table(table: np.ndarray) -> np.ndarray:
    """Shapley values from the values of all 2^n coalitions.

    ``table[c]`` is v(S) for the coalition whose bit i of the code c says whether unit i is in
    S (any trailing axes, e.g. per-sample values, are carried along). For each unit i,
        phi_i = sum_{S not containing i} |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S)),
    summed over differences so that a null player gets exactly 0."""
    n = int(table.shape[0]).bit_length() - 1
    codes = np.arange(1 << n)
    sizes = ((codes[:, None] >> np.arange(n)) & 1).sum(axis=1)
    weight = np.array([1.0 / (n * math.comb(n - 1, s)) for s in range(n)])
    phi = np.empty((n,) + table.shape[1:])
    for i in range(n):
        without = codes[(codes >> i) & 1 == 0]
        diff = table[without | (1 << i)] - table[without]
        phi[i] = np.tensordot(weight[sizes[without]], diff, axes=(0, 0))
    return phi


def estimate_exact(
    value_fn: ValueFn,
    n: int,
    *,
    budget: int | None = None,
    seed: Any = None,
    batch: int = DEFAULT_BATCH,
    aggregate: Aggregate = "mean",
) -> Estimate:
    """Exact Shapley values by enumerating all 2^n coalitions (n <= 16).

    phi_i = sum_S |S|!(n-|S|-1)!/n! (v(S+i) - v(S)) (see ``_shapley_from_table``). With
    ``aggregate="mean"`` the game is the mean over samples (Shapley is linear, so this is the
    mean of the per-sample Shapley values) and only 2^n floats are kept; ``"mean+2std"``
    keeps the per-sample table (2^n * N floats) and aggregates the per-sample Shapley values
    as Ancona et al. do. ``seed`` is accepted for a uniform signature and ignored.
    """
    check_aggregate(aggregate)
    if n > MAX_EXACT_UNITS:
        raise ValueError(f"exact enumeration refuses n = {n} > {MAX_EXACT_UNITS} (2^n coalitions)")
    total = 1 << n
    if budget is not None and budget < total:
        raise ValueError(f"budget {budget} too small: exact enumeration needs 2^{n} = {total}")
    game = Game(value_fn, n, budget=total, batch=batch, cache=False)
    if n == 0:
        return trivial(game, "exact")
    bits = np.arange(n)
    chunk = max(batch, 1024)
    rows = []
    for start in range(0, total, chunk):
        codes = np.arange(start, min(total, start + chunk))
        v = game(((codes[:, None] >> bits) & 1).astype(bool))
        game.v_empty_ps = v[0] if start == 0 else game.v_empty_ps
        game.v_full_ps = v[-1]
        rows.append(v.mean(axis=1) if aggregate == "mean" else v)
    phi = _shapley_from_table(np.concatenate(rows))
    values = phi if aggregate == "mean" else mean_plus_2std(phi.T)
    return result(game, values, np.zeros(n), "exact", info={"aggregate": aggregate})
