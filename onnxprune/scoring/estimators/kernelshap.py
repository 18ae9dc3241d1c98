"""Paired-sampling KernelSHAP with an exact efficiency constraint."""

from __future__ import annotations

from typing import Any

import numpy as np

from .game import (
    DEFAULT_BATCH,
    Estimate,
    ValueFn,
    open_game,
    require,
    result,
    stderr_of_mean,
    trivial,
)


def _kernel_coalitions(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """m coalitions [m, n] from the Shapley kernel distribution: size s in 1..n-1 with
    p(s) proportional to 1 / (s (n - s)), then a uniform subset of that size."""
    sizes = np.arange(1, n)
    p = 1.0 / (sizes * (n - sizes))
    s = rng.choice(sizes, size=m, p=p / p.sum())
    ranks = np.argsort(rng.random((m, n)), axis=1).argsort(axis=1)
    return ranks < s[:, None]


def _kkt_inverse(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """Inverse of [[A, 1], [1^T, 0]] (pseudo-inverse when singular) and whether it was regular."""
    n = len(a)
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n], kkt[:n, n], kkt[n, :n] = a, 1.0, 1.0
    try:
        inv = np.linalg.inv(kkt)
        if np.allclose(kkt @ inv, np.eye(n + 1), atol=1e-8):
            return inv, True
    except np.linalg.LinAlgError:
        pass
    return np.linalg.pinv(kkt), False


def _paired_kernel_regression(
    z: np.ndarray, y_z: np.ndarray, y_c: np.ndarray, delta: float
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Constrained least squares over paired samples (Covert & Lee 2021).

    Rows are the sampled coalitions z and their complements, targets y = v(z) - v(empty):
        minimise  mean (y - z^T beta)^2   subject to  1^T beta = delta = v(full) - v(empty),
    i.e. beta = Q b + c with A = mean z z^T, b = mean z y, Q the top-left block of the inverse
    of the KKT matrix [[A, 1], [1^T, 0]]. Sampling z from the Shapley kernel makes the solution
    converge to the Shapley values.

    Standard error: sandwich (delta-method) estimate over the iid pairs: with residuals r and
    g_j = (z_j r_j + zbar_j rbar_j) / 2, Cov(beta) ~= Q Cov(g) Q^T / M. For games with at most
    pairwise interactions paired sampling is exact (the two residuals of a pair are equal, g_j
    is proportional to 1, and Q 1 = 0), and the standard error is 0 accordingly.
    """
    m, n = z.shape
    zf, cf = z.astype(float), (~z).astype(float)
    rows, y = np.concatenate([zf, cf]), np.concatenate([y_z, y_c])
    a = rows.T @ rows / len(rows)
    b = rows.T @ y / len(rows)
    inv, regular = _kkt_inverse(a)
    q = inv[:n, :n]
    beta = q @ b + inv[:n, n] * delta
    g = 0.5 * (zf * (y_z - zf @ beta)[:, None] + cf * (y_c - cf @ beta)[:, None])
    h = (g - g.mean(axis=0)) @ q.T
    stderr = stderr_of_mean(h) if m >= 2 else np.full(n, np.inf)
    return beta, stderr, regular


def estimate_kernelshap(
    value_fn: ValueFn,
    n: int,
    *,
    budget: int | None = None,
    seed: Any = 0,
    batch: int = DEFAULT_BATCH,
    n_pairs: int | None = None,
    cache: bool = True,
) -> Estimate:
    """Paired-sampling KernelSHAP (Lundberg & Lee 2017; Covert & Lee 2021).

    Coalitions z are drawn from the Shapley kernel (size s with probability proportional to
    1 / (s (n - s)), then a uniform subset), each together with its complement; the Shapley
    values are the solution of the least-squares problem min E[(v(z) - v(empty) - z^T beta)^2]
    under the efficiency constraint sum beta = v(full) - v(empty), solved exactly (KKT system).
    Efficiency holds exactly. The game value is the mean over samples (linearity).

    stderr: sandwich estimate over the iid pairs (see ``_paired_kernel_regression``); it is a
    large-sample approximation (the regression estimator is consistent but slightly biased
    at small sample sizes). Draws pairs until the budget is spent (at most ``n_pairs``);
    repeated coalitions come from the cache for free.
    """
    game = open_game(value_fn, n, budget, batch, cache)
    if n <= 1:
        return trivial(game, "kernelshap")
    require(game, 2, "one coalition pair")
    rng = np.random.default_rng(seed)
    max_pairs = n_pairs if n_pairs is not None else np.iinfo(np.int64).max
    zs, ys_z, ys_c = [], [], []
    drawn = 0
    while drawn < max_pairs:
        m = min(max_pairs - drawn, game.affordable(2), max(1, game.batch // 2))
        if m <= 0:
            break
        z = _kernel_coalitions(rng, m, n)
        v = game(np.concatenate([z, ~z])).mean(axis=1) - game.v_empty
        zs.append(z)
        ys_z.append(v[:m])
        ys_c.append(v[m:])
        drawn += m
    z = np.concatenate(zs)
    values, stderr, regular = _paired_kernel_regression(
        z, np.concatenate(ys_z), np.concatenate(ys_c), game.v_full - game.v_empty
    )
    return result(
        game, values, stderr, "kernelshap",
        samples=np.full(n, len(z)),
        info={"pairs": len(z), "regular": regular},
    )  # fmt: skip
