"""ORT latency of two models, measured side by side (docs/design.md, Measuring).

Sessions are built with the same options and thread spinning off (spinning threads of one
session slow the other down on 2 cores); runs alternate A B A B ... on the same inputs,
and the report gives medians and the interquartile range, never one lone time."""
from __future__ import annotations

import time
from typing import Mapping

import numpy as np
import onnx

from ..runtime import fixed_batch, make_session, pad_rows


def _one_run(sess, feeds) -> float:
    t0 = time.perf_counter()
    sess.run(None, feeds)
    return time.perf_counter() - t0


def compare_latency(a: onnx.ModelProto, b: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *,
                    device: str = "cpu", max_seconds: float = 4.0, max_rounds: int = 50,
                    warmup: int = 2, feeds_b: Mapping[str, np.ndarray] | None = None) -> dict:
    """Interleaved timing of two models on the same feeds (`feeds_b`: b's own, the past of
    its kept heads under --prune-cache); medians and quartiles in ms. A model exported with
    a fixed batch is timed at that batch (the feeds cut or padded)."""
    sa = make_session(a, device, spinning=False)
    sb = make_session(b, device, spinning=False)
    names = [i.name for i in sa.get_inputs()]
    fixed = fixed_batch(sa)
    feeds_b = feeds if feeds_b is None else feeds_b
    feeds_b = {k: pad_rows(feeds_b[k][:fixed], fixed) if fixed else feeds_b[k] for k in names}
    feeds = {k: pad_rows(feeds[k][:fixed], fixed) if fixed else feeds[k] for k in names}
    for _ in range(warmup):
        _one_run(sa, feeds), _one_run(sb, feeds_b)
    times: dict[str, list[float]] = {"before": [], "after": []}
    start = time.perf_counter()
    while len(times["before"]) < max_rounds and (len(times["before"]) < 5 or
                                                 time.perf_counter() - start < max_seconds):
        times["before"].append(_one_run(sa, feeds))
        times["after"].append(_one_run(sb, feeds_b))
    out: dict = {"batch": len(next(iter(feeds.values())))}
    for key, values in times.items():
        ms = 1e3 * np.asarray(values)
        out[key] = {"median_ms": float(np.median(ms)), "q1_ms": float(np.percentile(ms, 25)),
                    "q3_ms": float(np.percentile(ms, 75)), "runs": len(ms)}
    out["speedup"] = {"median": out["before"]["median_ms"] / max(out["after"]["median_ms"], 1e-9)}
    return out
