"""Calibration means of the masked (consumer-side) tensors, for compensation.

FLAP-style compensation replaces a removed channel by its mean over the calibration set,
folded into the consumer's bias, so pruning removes the channel's variation and keeps
its average contribution. The mean is over samples and all positions (spatial, sequence)."""
from __future__ import annotations

from typing import Literal, Mapping, get_args

import numpy as np

from ..compiler.analysis import Analysis
from ..compiler.graph import ModelIdentity, to_proto
from ..runtime import make_session, run_chunks

# the per-channel statistics of a mask site: its mean, its mean |x|, its fraction of exact zeros
SiteStat = Literal["mean", "abs_mean", "zeros"]
SITE_STATS: tuple[SiteStat, ...] = get_args(SiteStat)


def site_means(analysis: Analysis, ident: ModelIdentity, inputs: Mapping[str, np.ndarray], *,
               device: str = "cpu", batch: int = 32) -> dict[str, np.ndarray]:
    """Per mask-site tensor: the per-channel mean over the calibration inputs."""
    return {name: s["mean"] for name, s in site_stats(analysis, ident, inputs, device=device,
                                                      batch=batch).items()}


def site_stats(analysis: Analysis, ident: ModelIdentity, inputs: Mapping[str, np.ndarray], *,
               device: str = "cpu", batch: int = 32) -> dict[str, dict[SiteStat, np.ndarray]]:
    """Per mask-site tensor, per channel: each of SITE_STATS."""
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
    for _, _, outs in run_chunks(sess, inputs, batch, list(axes)):
        for name, value in zip(axes, outs):
            moved = np.moveaxis(value.astype(np.float64), axes[name], 0).reshape(value.shape[axes[name]], -1)
            a = acc.setdefault(name, dict.fromkeys(SITE_STATS, 0.0))
            a["mean"] = a["mean"] + moved.sum(axis=1)
            a["abs_mean"] = a["abs_mean"] + np.abs(moved).sum(axis=1)
            a["zeros"] = a["zeros"] + (moved == 0).sum(axis=1)
            counts[name] = counts.get(name, 0) + moved.shape[1]
    return {name: {k: v / counts[name] for k, v in a.items()} for name, a in acc.items()}
