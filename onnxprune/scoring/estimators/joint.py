"""Bonsai-style joint ridge regression over random sub-models of several groups (not Shapley)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .game import DEFAULT_BATCH, Estimate, Game, ValueFn, default_budget


def _ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge regression of y on x with an unpenalised intercept; penalty
    lambda = ridge * trace(Xc^T Xc) / p. Returns coefficients, their standard errors (sandwich
    for ridge with homoscedastic residual variance RSS / (M - p - 1); inf when M <= p + 1) and
    the intercept. Uses the dual (M x M) system when there are fewer rows than columns."""
    m, p = x.shape
    xc = x - x.mean(axis=0)
    yc = y - y.mean()
    if m <= p + 1:
        gram = xc @ xc.T
        lam = ridge * max(np.trace(gram) / p, 1e-12)
        beta = xc.T @ np.linalg.solve(gram + lam * np.eye(m), yc)
        return beta, np.full(p, np.inf), float(y.mean() - x.mean(axis=0) @ beta)
    g = xc.T @ xc
    lam = ridge * max(np.trace(g) / p, 1e-12)
    g_inv = np.linalg.inv(g + lam * np.eye(p))
    beta = g_inv @ (xc.T @ yc)
    sigma2 = float(((yc - xc @ beta) ** 2).sum()) / (m - p - 1)
    var = sigma2 * np.einsum("ij,jk,ki->i", g_inv, g, g_inv)
    return beta, np.sqrt(np.maximum(var, 0.0)), float(y.mean() - x.mean(axis=0) @ beta)


def estimate_joint(
    value_fn_multi: ValueFn,
    sizes: list[int],
    *,
    keep_ratio: float = 0.5,
    budget: int | None = None,
    seed: Any = 0,
    batch: int = DEFAULT_BATCH,
    ridge: float = 1e-3,
) -> list[Estimate]:
    """Bonsai-style scores for several groups at once (Dery et al. 2024).

    ``value_fn_multi`` takes bool [K, sum(sizes)] (the groups' masks side by side) and returns
    [K, N]. Draws ``budget`` random sub-models keeping each unit independently with probability
    ``keep_ratio`` (independent draws keep the coefficients identifiable; a fixed count per
    group would make each group's mask sum constant), evaluates them, and regresses the mean
    value on the masks (ridge, small penalty, free intercept). The coefficients are the scores.

    These are linear-model attributions, *not* Shapley values: in the large-sample limit the
    OLS coefficient of unit i under independent Bernoulli(p) masks is
    E[v(S + i) - v(S)] with S ~ Bernoulli(p) on all other units (every group varies at once),
    i.e. the p-weighted Banzhaf value of the joint game. It coincides with the Shapley value for
    additive games; in general it weighs coalitions of about p * n units (the pruning regime)
    instead of all sizes equally. No efficiency.

    stderr: ridge-sandwich standard error with homoscedastic residuals (inf when
    budget <= sum(sizes) + 1). ``evaluations`` in every returned Estimate is the shared total.
    """
    sizes = [int(s) for s in sizes]
    if any(s < 0 for s in sizes):
        raise ValueError(f"group sizes must be >= 0, got {sizes}")
    if not 0.0 < keep_ratio < 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1), got {keep_ratio}")
    total = sum(sizes)
    budget = default_budget(total) if budget is None else int(budget)
    if budget < 2:
        raise ValueError(f"budget {budget} too small: joint regression needs at least 2")
    if total == 0:
        return [Estimate(np.zeros(0), np.zeros(0), 0, "joint") for _ in sizes]
    game = Game(value_fn_multi, total, budget=budget, batch=batch, cache=False)
    rng = np.random.default_rng(seed)
    x = rng.random((budget, total)) < keep_ratio
    y = game(x).mean(axis=1)
    beta, stderr, intercept = _ridge(x.astype(float), y, ridge)
    bounds = np.cumsum([0] + sizes)
    info = {"keep_ratio": keep_ratio, "ridge": ridge, "intercept": intercept, "sub_models": budget}
    return [
        Estimate(
            beta[lo:hi], stderr[lo:hi], game.evaluations, "joint",
            samples=np.full(hi - lo, budget), info={**info, "group": g, "offset": int(lo)},
        )  # fmt: skip
        for g, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]
