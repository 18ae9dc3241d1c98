"""Least-squares refit of the consumers of pruned channels (ThiNet / channel-pruning style).

Compensation keeps a removed channel's mean. Refit goes further: for each consumer whose
input channels were cut (a 2-D Conv with one group, a Gemm, an X @ W MatMul), the weights
of its *kept* input channels and its bias are re-solved so that, on the calibration
activations of the original model, the consumer's output matches the original output:

    min_{D, b}  || P_rem W_rem^T  -  P_keep D  -  b ||^2  +  lam ||D||^2

(P: the consumer's input rows, im2col patches for a Conv; the first term is exactly what
the removed channels contributed). Mean compensation is the point D = 0 of this problem,
so on the fitting data refit is never worse per layer. The ridge `lam` is chosen on a
fold of samples held out of the fit. Whether the whole model improves is not guaranteed
(layers are fitted on the original's inputs, not the pruned model's), so `api.prune`
keeps a refit only when held-out fidelity says it helps.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np

from ..compiler.analysis import Analysis, MaskSite
from ..compiler.context import RefitLayout
from ..compiler.graph import ModelIdentity, to_proto
from ..compiler.ops import handler_for
from ..runtime import make_session, run_chunks, single_threaded_blas
from ..scoring.site_stats import SiteActivations

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # relative to the mean variance of the kept inputs
MAX_STATS_BYTES = 2**30  # Gram matrices held at once: more sites per pass of the model
MAX_KEPT_COLUMNS = 4096  # wider layers keep mean compensation: the solve is cubic in this
CHUNK_DTYPE = np.float32  # per-chunk products (refit.py _Stats); sums across chunks are float64
POSITIONS = 256  # rows per sample at most (spatial or sequence positions, seeded subset):
                 # enough to fit, and it bounds the cost on large feature maps


@dataclass
class Refit:
    """New values for one consumer, in the *unpruned* layout (the rewrite slices them)."""

    weight: np.ndarray  # the consumer's weight input, refit at kept input channels
    bias: np.ndarray    # added to the consumer's bias, per output channel
    lam: float          # the ridge chosen (relative)


_Layer = RefitLayout  # the handlers' (ops/): rows, weight matrix, keep columns, pack


def refit_consumers(analysis: Analysis, ident: ModelIdentity, keep_channel: np.ndarray,
                    inputs: Mapping[str, np.ndarray], *, device: str = "cpu",
                    batch: int = 16, activations: SiteActivations | None = None,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Refit]:
    """Refits per consumer node key, for the consumers this module knows how to refit.
    `activations`: the mask-site tensors of `inputs` as the means pass kept them (no pass of
    the model then). `progress(done, total)` is called with layers done after each pass."""
    layers = [lay for site in analysis.sites
              if not keep_channel[site.ids].all()
              and (lay := _layer(analysis, site, keep_channel)) is not None
              and lay.keep_cols.sum() <= MAX_KEPT_COLUMNS]
    out: dict[str, Refit] = {}
    for chunk in _by_memory(layers):
        with single_threaded_blas():  # small matrices: threads only wait on each other
            stats = _accumulate(analysis, ident, chunk, inputs, device, batch, activations)
            for lay, (fit, val, shift) in zip(chunk, stats):
                if (refit := _solve(lay, fit, val, shift)) is not None:
                    out[lay.site.node] = refit
        if progress is not None:
            progress(len(out), len(layers))
    return out


def time_layer(analysis: Analysis, ident: ModelIdentity, keep_channel: np.ndarray,
               inputs: Mapping[str, np.ndarray], activations: SiteActivations | None, node: str,
               batch: int = 16) -> float | None:
    """Seconds the refit of consumer `node` takes (statistics and solves), for the plan's
    refit estimate (scoring/plan.py): on the kept `activations`, or, where they do not hold
    its tensor, on that tensor computed first (a pass of the model up to it, not timed);
    None when the refit would not fit this layer."""
    site = next((s for s in analysis.sites if s.node == node and s.input_index == 0), None)
    lay = _layer(analysis, site, keep_channel) if site is not None else None
    if lay is None or lay.keep_cols.sum() > MAX_KEPT_COLUMNS:
        return None
    if (activations is None or activations.batch != batch or not activations.chunks
            or site.tensor not in activations.chunks[0][2]):
        activations = SiteActivations(batch, list(_site_chunks(
            analysis, ident, [site.tensor], inputs, "cpu", batch, None)))
    t0 = time.perf_counter()
    with single_threaded_blas():
        (fit, val, shift), = _accumulate(analysis, ident, [lay], inputs, "cpu", batch, activations)
        _solve(lay, fit, val, shift)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------
# rows and weight layout: the consumer's handler knows them


def _layer(analysis: Analysis, site: MaskSite, keep_channel: np.ndarray) -> _Layer | None:
    if site.input_index != 0:
        return None
    node = analysis.node(site.node)
    return handler_for(node).refit_layout(site, node, keep_channel[site.ids])


def _positions(total: int, rng: np.random.Generator) -> np.ndarray:
    if total <= POSITIONS:
        return np.arange(total)
    return np.sort(rng.choice(total, POSITIONS, replace=False))


# ----------------------------------------------------------------------------
# statistics and solve


@dataclass
class _Stats:
    """Sums over rows of P_keep (k) and of the removed channels' contribution R, both less a
    shift (the layer's first chunk means, `_Shift`): each chunk's products are float32 (half
    the BLAS work of float64), their sums across chunks float64, and the shift keeps a
    column whose mean dwarfs its spread from cancelling in the covariance."""

    n: int = 0
    s_k: np.ndarray | float = 0.0
    s_r: np.ndarray | float = 0.0
    g_kk: np.ndarray | float = 0.0
    g_kr: np.ndarray | float = 0.0
    rr: float = 0.0

    @np.errstate(invalid="ignore", over="ignore")  # non-finite sums are checked in _solve
    def add(self, p_keep: np.ndarray, r: np.ndarray) -> None:
        self.n += len(p_keep)
        self.s_k = self.s_k + p_keep.sum(0, dtype=np.float64)
        self.s_r = self.s_r + r.sum(0, dtype=np.float64)
        self.g_kk = self.g_kk + (p_keep.T @ p_keep).astype(np.float64)  # syrk: symmetric
        self.g_kr = self.g_kr + (p_keep.T @ r).astype(np.float64)
        self.rr += float(np.einsum("ij,ij->", r, r, dtype=np.float64))

    def plus(self, other: "_Stats") -> "_Stats":
        return _Stats(self.n + other.n, self.s_k + other.s_k, self.s_r + other.s_r,
                      self.g_kk + other.g_kk, self.g_kr + other.g_kr, self.rr + other.rr)

    def error(self, d: np.ndarray, b: np.ndarray) -> float:
        """sum over rows of ||R - P_keep D - b||^2, from the sums alone."""
        cross = float(np.sum(d * self.g_kr) + b @ self.s_r)
        fitted = float(np.sum(d * (self.g_kk @ d)) + 2 * (self.s_k @ d) @ b + self.n * b @ b)
        return self.rr - 2 * cross + fitted


@dataclass
class _Shift:
    """Per layer, subtracted from every row before the products (shared by both folds):
    a solve (D, b') in shifted coordinates is (D, b' + r - k @ D) in the original ones."""

    k: np.ndarray  # float32 [kept columns]
    r: np.ndarray  # float32 [C_out]

    def intercept(self, d: np.ndarray, b: np.ndarray) -> np.ndarray:
        return b + self.r.astype(np.float64) - self.k.astype(np.float64) @ d


def _by_memory(layers: list[_Layer]) -> Iterator[list[_Layer]]:
    chunk, used = [], 0
    for lay in layers:
        size = 2 * 8 * int(lay.keep_cols.sum()) * (int(lay.keep_cols.sum()) + lay.w_eff.shape[1])
        if chunk and used + size > MAX_STATS_BYTES:
            yield chunk
            chunk, used = [], 0
        chunk.append(lay)
        used += size
    if chunk:
        yield chunk


@np.errstate(invalid="ignore", over="ignore")  # non-finite activations: checked in _solve
def _accumulate(analysis: Analysis, ident: ModelIdentity, layers: list[_Layer],
                inputs: Mapping[str, np.ndarray], device: str, batch: int,
                activations: SiteActivations | None = None
                ) -> list[tuple[_Stats, _Stats, _Shift | None]]:
    """One pass of the original model (or the kept activations of one); every 4th sample
    goes to the validation fold."""
    names = sorted({lay.site.tensor for lay in layers})
    n = len(next(iter(inputs.values())))
    stats: list[tuple[_Stats, _Stats]] = [(_Stats(), _Stats()) for _ in layers]
    shifts: list[_Shift | None] = [None] * len(layers)
    w_rem = [lay.w_eff[~lay.keep_cols].astype(CHUNK_DTYPE) for lay in layers]
    rng = np.random.default_rng(0)
    val = np.arange(n) % 4 == 3 if n >= 4 else np.zeros(n, dtype=bool)
    for start, stop, values in _site_chunks(analysis, ident, names, inputs, device, batch,
                                            activations):
        for i, (lay, (fit, held)) in enumerate(zip(layers, stats)):
            x = np.asarray(values[lay.site.tensor], dtype=CHUNK_DTYPE)
            in_val = val[start:stop]
            if len(x) != stop - start:  # rows are not samples (a CRNN's batch of 1 merged into
                in_val = np.full(len(x), val[start])  # its time steps): the chunk's fold owns them
            for fold, pick in ((fit, ~in_val), (held, in_val)):
                if pick.any():
                    p = lay.rows(x[pick], lambda total: _positions(total, rng))
                    p_keep, r = p[:, lay.keep_cols], p[:, ~lay.keep_cols] @ w_rem[i]
                    if shifts[i] is None:
                        shifts[i] = _Shift(p_keep.mean(0), r.mean(0))
                    fold.add(p_keep - shifts[i].k, r - shifts[i].r)
    return [(fit, held, shift) for (fit, held), shift in zip(stats, shifts)]


def _site_chunks(analysis: Analysis, ident: ModelIdentity, names: list[str],
                 inputs: Mapping[str, np.ndarray], device: str, batch: int,
                 activations: SiteActivations | None
                 ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """(start, stop, tensor -> chunk): from `activations` when they hold these tensors in
    chunks of `batch`, else from a session of the original cut at them."""
    if (activations is not None and activations.batch == batch and activations.chunks
            and all(name in activations.chunks[0][2] for name in names)):
        yield from activations.chunks
        return
    sess = _site_session(analysis, ident, names, device)
    for start, stop, outs in run_chunks(sess, inputs, batch, names):
        yield start, stop, dict(zip(names, outs))


def _site_session(analysis: Analysis, ident: ModelIdentity, names: list[str], device: str):
    graph = analysis.graph.copy()
    tensors = graph.tensors()
    graph.outputs = [tensors[name] for name in names]
    for t in graph.outputs:
        t.dtype = t.dtype or np.float32
    graph.cleanup(remove_unused_graph_inputs=False)
    return make_session(to_proto(graph, ident), device)


class _Ridge:
    """Centered ridge solutions (the intercept is not penalized), one linear solve per lambda:
    a few solves cost less than one eigendecomposition."""

    def __init__(self, stats: _Stats) -> None:
        n = max(stats.n, 1)
        self.mu_k, self.mu_r = stats.s_k / n, stats.s_r / n
        self.cov_kk = stats.g_kk / n - np.outer(self.mu_k, self.mu_k)
        self.cov_kr = stats.g_kr / n - np.outer(self.mu_k, self.mu_r)
        dim = max(len(self.cov_kk), 1)
        self.scale = max(float(np.trace(self.cov_kk)) / dim, 1e-12)  # the mean eigenvalue

    def solve(self, lam: float) -> tuple[np.ndarray, np.ndarray]:
        a = self.cov_kk.copy()
        a[np.diag_indices_from(a)] += lam * self.scale
        d = np.linalg.solve(a, self.cov_kr)
        return d, self.mu_r - self.mu_k @ d


def _finite(stats: _Stats) -> bool:
    return all(np.isfinite(x).all() for x in (stats.s_k, stats.s_r, stats.g_kk, stats.g_kr, stats.rr))


def _solve(lay: _Layer, fit: _Stats, val: _Stats, shift: _Shift | None) -> Refit | None:
    """None when the activations are not finite (NaN/Inf weights): no refit is offered."""
    if shift is None or not (_finite(fit) and _finite(val)):
        return None
    lam = LAMBDAS[-1]
    try:
        if val.n and fit.n:
            ridge = _Ridge(fit)
            lam = min(LAMBDAS, key=lambda lam: val.error(*ridge.solve(lam)))
        d, b = _Ridge(fit.plus(val)).solve(lam)
    except np.linalg.LinAlgError:  # finite but absurd activations: refit is optional
        return None
    weight, bias = lay.pack(d, shift.intercept(d, b))
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        return None
    return Refit(weight, bias, lam)
