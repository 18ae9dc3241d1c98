"""Stage `select`: scores -> units to keep per group.

Default: `ratio` is the fraction of units removed from every prunable group, rounded to
the nearest unit; at least one unit stays. Lowest scores go first; ties go to the later
unit. Options: `round_to` (kept widths rounded up to multiples of N channels: ONNX Runtime's
CPU convs work in blocks of 8 or 16 channels, and other widths can run slower than the
unpruned model, see docs/benchmarks.md), `target` ("params" or
"macs": the ratio is the fraction of the model's mixing-layer parameters or MACs to
remove), and `global_` (one ranking across groups, so removals land where scores are
lowest; Shapley scores share one unit, the calibration objective, so they compare).
"""
from __future__ import annotations

from math import gcd
from typing import Mapping

import numpy as np

from ..compiler.analysis import Analysis
from ..compiler.cost import CostModel
from ..compiler.rewrite import channel_keep

TARGETS = ("units", "params", "macs")


def n_removed(units: int, ratio: float, multiple: int = 1) -> int:
    """Units to remove. With `multiple`, the kept count is rounded *up* to a multiple (never
    more removed than the ratio asks; a group narrower than two multiples stays whole)."""
    keep = units - min(units - 1, int(np.floor(ratio * units + 0.5)))
    if multiple > 1:
        keep = min(units, -(-keep // multiple) * multiple)
    return units - max(1, keep)


def _order(scores: np.ndarray) -> np.ndarray:
    """Ascending score; later index first on ties."""
    return np.lexsort((-np.arange(len(scores)), scores))


def select(analysis: Analysis, scores: Mapping[int, np.ndarray], ratio: float, *,
           round_to: int = 1, target: str = "units", global_: bool = False) -> dict[int, np.ndarray]:
    """Kept unit indices (sorted) per scored group."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}")
    multiple = {gid: round_to // gcd(round_to, analysis.group(gid).unit_size) for gid in scores}
    if global_:
        keep = _select_global(analysis, scores, ratio, target, multiple)
    elif target == "units":
        keep = _uniform(scores, ratio, multiple)
    else:
        keep = _uniform_to_cost(analysis, scores, ratio, target, multiple)
    return repair_empty(analysis, keep, scores)


def _uniform(scores, ratio, multiple) -> dict[int, np.ndarray]:
    keep = {}
    for gid, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        keep[gid] = np.sort(_order(s)[n_removed(len(s), ratio, multiple[gid]):])
    return keep


def _cost_fraction(cost: CostModel, analysis, keep, target) -> float:
    params, macs = cost.after(channel_keep(analysis, keep))
    return params / max(cost.params, 1) if target == "params" else macs / max(cost.macs, 1)


def _uniform_to_cost(analysis, scores, ratio, target, multiple) -> dict[int, np.ndarray]:
    """The same per-group ratio everywhere, chosen by bisection to remove `ratio` of the cost."""
    cost = CostModel(analysis)
    lo, hi = 0.0, 0.999
    for _ in range(30):
        mid = (lo + hi) / 2
        if _cost_fraction(cost, analysis, _uniform(scores, mid, multiple), target) > 1 - ratio:
            lo = mid
        else:
            hi = mid
    return _uniform(scores, hi, multiple)


def _select_global(analysis, scores, ratio, target, multiple) -> dict[int, np.ndarray]:
    """One ranking over all units (score per unit of cost when a cost is targeted); remove
    the lowest until the target is met (bisection over how many go)."""
    cost = CostModel(analysis) if target != "units" else None
    units = []
    for gid, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        per_unit = 1.0
        if cost is not None:
            group_cost = _group_cost(cost, analysis, gid, target)
            per_unit = max(group_cost / len(s), 1e-12)
        for u in range(len(s)):
            units.append((s[u] / per_unit, gid, u))
    units.sort(key=lambda t: (t[0], t[1], -t[2]))

    def keep_after(n_remove: int) -> dict[int, np.ndarray]:
        removed: dict[int, set[int]] = {gid: set() for gid in scores}
        for _, gid, u in units[:n_remove]:
            if len(scores[gid]) - len(removed[gid]) > 1:
                removed[gid].add(u)
        return {gid: np.array(sorted(set(range(len(scores[gid]))) - removed[gid]))
                for gid in scores}

    total = len(units)
    if cost is None:
        return _round_groups(keep_after(int(np.floor(ratio * total + 0.5))), scores, multiple)
    lo, hi = 0, total
    while lo < hi:
        mid = (lo + hi) // 2
        if _cost_fraction(cost, analysis, keep_after(mid), target) > 1 - ratio:
            lo = mid + 1
        else:
            hi = mid
    return _round_groups(keep_after(lo), scores, multiple)


def _group_cost(cost: CostModel, analysis, gid: int, target: str) -> float:
    full = np.ones(len(analysis.ch_group), dtype=bool)
    params, macs = cost.after(full)
    without = full.copy()
    without[analysis.ch_group == gid] = False
    p2, m2 = cost.after(without)
    return (params - p2) if target == "params" else (macs - m2)


def _round_groups(keep, scores, multiple) -> dict[int, np.ndarray]:
    """Round each group's kept count to its multiple, keeping the best-scored units."""
    out = {}
    for gid, kept in keep.items():
        n, m = len(scores[gid]), multiple[gid]
        if m <= 1 or n < m:
            out[gid] = kept
            continue
        target_keep = min(n, -(-len(kept) // m) * m)  # up: never more removed than asked
        order = _order(np.asarray(scores[gid], dtype=np.float64))[::-1]  # best first
        out[gid] = np.sort(order[:target_keep])
    return out


def repair_empty(analysis: Analysis, keep: dict[int, np.ndarray],
                 scores: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Give back the best-scored unit of any tensor that would lose all of its channels
    (e.g. one piece of a Split whose units all scored low)."""
    for _ in range(len(analysis.maps) + 1):
        keep_ch = channel_keep(analysis, keep)
        empty = next((c for c in analysis.maps.values() if c.size and not keep_ch[c.ids].any()), None)
        if empty is None:
            return keep
        gid = int(analysis.ch_group[empty.ids[0]])
        units = np.unique(analysis.ch_unit[empty.ids[analysis.ch_group[empty.ids] == gid]])
        best = units[np.argmax(np.asarray(scores[gid])[units])]
        keep[gid] = np.union1d(keep[gid], [best])
    raise AssertionError("repair_empty did not converge")
