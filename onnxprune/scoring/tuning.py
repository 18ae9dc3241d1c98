"""K tuning: how many coalitions one CPU run of a group's suffix carries (scoring/engine.py).

What pays depends on the suffix's size and on the machine's load, so K is measured: a few
timed runs at K = 1, 2, 4, ... on the group's own data, once per suffix size class, and only
as far as the group's planned work pays for."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from .plans import Plan

_TUNE_ROUNDS = 2          # timed runs per K when tuning (the minimum counts: load only adds)
_TUNE_SLOWER = 1.15       # stop doubling K once a coalition costs this much more than the best
_TUNE_RUN_S = 0.01        # ... or once one run is long enough to amortize its fixed cost (a
                          # run's fixed cost is 0.1-0.3 ms: 10 ms amortize it; tuning was 90%
                          # of the engine stage on digits_cnn at 20 ms and 3 rounds)
_TUNE_GAIN = 0.9          # ... or once doubling K gains under 10% on runs over _TUNE_RUN_S / 4
                          # (the last doublings are most of the tuning's time)
_TUNE_LONG = 10           # a warm-up at K = 1 this many times _TUNE_RUN_S ends tuning at once
_TUNE_WORK = 12           # tuning to K costs about 6 K coalitions: with a group's planned work
                          # known (`expected`), K stops at work / _TUNE_WORK (tuning at most
                          # half of it) and a group under 2 x _TUNE_WORK is not tuned (digits_cnn:
                          # 33 tuning runs against 139 planned evaluations in all)

__all__ = ["size_class", "tune", "tune_cap"]

TimedRun = Callable[[Mapping[str, Any], list, int], float]  # (held data, masks, K) -> seconds


def size_class(plan: Plan) -> tuple[int, int]:
    """Suffixes within a factor of about 1.4 in bytes per run and in MACs want the same K:
    what a run costs in memory traffic and in compute (K tuning is a dozen runs)."""
    rows = plan.chunks[0].rows
    run_bytes = max(1, int(plan.est["suffix_row_bytes"]) * rows)
    macs = max(1e-9, float(plan.est["suffix_mac_share"]))
    return round(2 * np.log2(run_bytes)), round(2 * np.log2(macs))


def tune_cap(plan: Plan, expected: Mapping[int, int]) -> int:
    """The largest K worth tuning towards: K_max, or less where the planned work (`expected`
    evaluations per group) is known and small (1: not worth tuning at all)."""
    if any(g not in expected for g in plan.gids):
        return plan.k_max
    work = sum(expected[g] for g in plan.gids)
    return min(plan.k_max, work // _TUNE_WORK) if work >= 2 * _TUNE_WORK else 1


def tune(plan: Plan, data: Mapping[str, Any], k_max: int, widths: list[int],
         hold: Callable[[Mapping[str, Any], int], Mapping[str, Any]], timed: TimedRun) -> None:
    """Sets `plan.k_run` from timings of the suffix at K = 1, 2, 4, ... up to `k_max`,
    stopping once a coalition costs clearly more than at the best K so far, once doubling
    K gains little on runs already a few ms long, or once one run gets long (tuning stays a
    small part of scoring a group). The cache-size estimate was off both ways: a late
    group's small suffix wanted 4-8x more rows per run."""
    rows = plan.chunks[0].rows
    timings: dict[int, float] = {}
    k = prev = 1
    while True:
        held = hold(data, k)
        masks = [np.ones((k * rows, w), np.float32) for w in widths]
        warm = timed(held, masks, k)  # the arena grows to this K
        if k == 1 and warm > _TUNE_LONG * _TUNE_RUN_S:
            timings[k] = warm  # one coalition already amortizes a run: K = 1, no rounds
            break
        timings[k] = min(timed(held, masks, k) for _ in range(_TUNE_ROUNDS)) / k
        del held
        best = min(timings.values())
        flat = (k > 1 and timings[k] * k > _TUNE_RUN_S / 4
                and timings[k] > _TUNE_GAIN * timings[prev])
        if (k >= k_max or timings[k] > _TUNE_SLOWER * best or flat
                or timings[k] * k > _TUNE_RUN_S):
            break
        prev, k = k, min(2 * k, k_max)
    plan.k_run, plan.tuned = min(timings, key=timings.__getitem__), True
    plan.est["tuned_ms_per_coalition"] = {k: round(t * 1e3, 3) for k, t in timings.items()}
    plan.est["tuned_s_per_coalition"] = timings[plan.k_run]
