"""Calibration means of the masked (consumer-side) tensors, for compensation.

FLAP-style compensation replaces a removed channel by its mean over the calibration set,
folded into the consumer's bias, so pruning removes the channel's variation and keeps
its average contribution. The mean is over samples and all positions (spatial, sequence)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, get_args

import numpy as np

from ..compiler.analysis import Analysis
from ..compiler.graph import ModelIdentity, to_proto
from ..runtime import make_session, run_chunks

# the per-channel statistics of a mask site: its mean, its mean |x|, its fraction of exact zeros
SiteStat = Literal["mean", "abs_mean", "zeros"]
SITE_STATS: tuple[SiteStat, ...] = get_args(SiteStat)


CACHE_BYTES = 128 << 20  # site activations kept for the refit (deploy/refit.py) at most


@dataclass
class SiteActivations:
    """The mask-site tensors of one pass, chunk by chunk as `run_chunks` gave them (`batch`
    samples a chunk): the refit reads them instead of running the model again."""

    batch: int
    chunks: list[tuple[int, int, dict[str, np.ndarray]]] = field(default_factory=list)


def site_means(analysis: Analysis, ident: ModelIdentity, inputs: Mapping[str, np.ndarray], *,
               device: str = "cpu", batch: int = 32) -> dict[str, np.ndarray]:
    """Per mask-site tensor: the per-channel mean over the calibration inputs."""
    return {name: s["mean"] for name, s in site_stats(analysis, ident, inputs, device=device,
                                                      batch=batch, which=("mean",)).items()}


def means_and_activations(analysis: Analysis, ident: ModelIdentity,
                          inputs: Mapping[str, np.ndarray], *, device: str = "cpu",
                          batch: int = 16, max_bytes: int = CACHE_BYTES
                          ) -> tuple[dict[str, np.ndarray], SiteActivations | None]:
    """`site_means`, and the activations it ran over when they fit in `max_bytes` (None
    otherwise): one pass of the model serves the means and the refit."""
    keep = SiteActivations(batch)
    stats = site_stats(analysis, ident, inputs, device=device, batch=batch, keep=keep,
                       max_bytes=max_bytes, which=("mean",))
    means = {name: s["mean"] for name, s in stats.items()}
    return means, (keep if keep.chunks or not stats else None)


def site_stats(analysis: Analysis, ident: ModelIdentity, inputs: Mapping[str, np.ndarray], *,
               device: str = "cpu", batch: int = 32, keep: SiteActivations | None = None,
               max_bytes: int = 0, which: tuple[SiteStat, ...] = SITE_STATS
               ) -> dict[str, dict[SiteStat, np.ndarray]]:
    """Per mask-site tensor, per channel: each of `which` (the mean always). With `keep`, the
    chunks are kept there while their bytes stay within `max_bytes` (past it, none are)."""
    which = ("mean", *(w for w in which if w != "mean"))
    axes = {s.tensor: s.axis for s in analysis.sites}
    if not axes:
        return {}
    graph = analysis.graph.copy()
    tensors = graph.tensors()
    graph.outputs = [tensors[name] for name in axes]
    graph.cleanup(remove_unused_graph_inputs=False)
    for t in graph.outputs:
        if t.dtype is None:
            t.dtype = np.float32
    sess = make_session(to_proto(graph, ident), device)
    acc: dict[str, dict[SiteStat, np.ndarray]] = {}
    counts: dict[str, int] = {}
    held, kept = 0, keep is not None
    for start, stop, outs in run_chunks(sess, inputs, batch, list(axes)):
        for name, value in zip(axes, outs):
            moved = np.moveaxis(value, axes[name], 0).reshape(value.shape[axes[name]], -1)
            a = acc.setdefault(name, dict.fromkeys(which, 0.0))
            a["mean"] = a["mean"] + moved.sum(axis=1, dtype=np.float64)
            if "abs_mean" in a:
                a["abs_mean"] = a["abs_mean"] + np.abs(moved).sum(axis=1, dtype=np.float64)
            if "zeros" in a:
                a["zeros"] = a["zeros"] + (moved == 0).sum(axis=1)
            counts[name] = counts.get(name, 0) + moved.shape[1]
        held += sum(o.nbytes for o in outs)
        kept = kept and held <= max_bytes
        if keep is not None and kept:
            keep.chunks.append((start, stop, dict(zip(axes, outs))))
        elif keep is not None:
            keep.chunks.clear()
    return {name: {k: v / counts[name] for k, v in a.items()} for name, a in acc.items()}
