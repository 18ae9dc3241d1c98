"""Stage `select`: scores -> units to keep per group, within a budget.

`ratio` R is the fraction of the prunable cost to remove. The cost (`target`) is `params`
(default: the Conv/Gemm/MatMul weights that the scored groups can remove), `macs` (their
multiply-accumulates) or `units` (the units of the scored groups). By default removals are
placed by one ranking across groups (global allocation): a unit's score per unit of cost,
lowest first, until the budget is met to within one removal step (one unit, or one
`round_to` block); a step that would pass the budget by more than it falls short is passed
over for smaller ones ranked after it. Shapley, leave-one-out and Taylor scores are in the units of the
objective and compare across groups as they are; heuristic scores (weight norms, activation
statistics) are first normalized per group as LAMP does (Lee et al. 2021: a unit's score over
the sum of the scores at least as large), so that no layer's scale decides.

`uniform` is the earlier rule: the same fraction of units from every group (with a cost
target, one common fraction chosen by bisection to meet the budget). Every group keeps at
least `min_keep` units (a fraction of its width below 1, a count from 1 up; at least one).
`round_to`: kept widths of the groups a Conv produces or reads are multiples of N channels
(ONNX Runtime's CPU convs work in blocks of 8 or 16 channels, docs/benchmarks.md); a group
narrower than N cannot fill one block and keeps any width, as do Gemm/MatMul groups.
Lowest scores go first; ties go to the later unit.
"""
from __future__ import annotations

from functools import partial
from math import ceil, gcd
from typing import Mapping

import numpy as np

from ..compiler.analysis import Analysis, Group
from ..compiler.ops.registry import handler_named
from ..compiler.cost import CostModel
from ..compiler.rewrite import channel_keep

TARGETS = ("units", "params", "macs")
DEFAULT_TARGET = "macs"  # measured (docs/results.md, "Which target by default"): on the study's
# models it removes >= R of the params too, at the params target's accuracy (within 0.002)
DEFAULT_MIN_KEEP = 0.1
FILL_TRIES = 256  # later steps _fill may try (one cost-model evaluation each)


def width_multiple(group: Group, round_to: int) -> int:
    """The multiple (in units) a group's kept width is rounded to: `round_to` channels for a
    group that a channel-blocked op (Conv) produces or reads; 1 for any other (Gemm/MatMul
    neurons, heads: no speed measured to gain, bench/rounding.py) and for a group narrower
    than one block (its conv is not blocked in the original either)."""
    if not any(handler_named(m.op).channel_blocked for m in group.members):
        return 1
    multiple = round_to // gcd(round_to, group.unit_size)
    return 1 if group.units < multiple else multiple


def n_removed(units: int, ratio: float, multiple: int = 1) -> int:
    """Units to remove. With `multiple`, the kept count is rounded *up* to a multiple (never
    more removed than the ratio asks; a group narrower than two multiples stays whole)."""
    keep = units - min(units - 1, int(np.floor(ratio * units + 0.5)))
    if multiple > 1:
        keep = min(units, -(-keep // multiple) * multiple)
    return units - max(1, keep)


def floor_keep(units: int, min_keep: float, multiple: int = 1) -> int:
    """The fewest units a group may keep: `min_keep` of them (a fraction below 1, else a
    count), at least one, rounded up to an allowed width."""
    least = ceil(min_keep * units - 1e-9) if min_keep < 1 else int(min_keep)
    least = max(1, min(units, least))
    return min(units, -(-least // multiple) * multiple) if multiple > 1 else least


def lamp(scores: np.ndarray) -> np.ndarray:
    """LAMP normalization: a score over the sum of the group's scores at least as large
    (shifted to be non-negative first); the group's best unit gets 1."""
    s = np.asarray(scores, dtype=np.float64)
    s = s - min(0.0, float(s.min())) if s.size else s
    order = _order(s)
    tail = np.cumsum(s[order][::-1])[::-1]  # sum over this position and every later one
    out = np.empty_like(s)
    out[order] = np.divide(s[order], tail, out=np.zeros_like(tail), where=tail > 0)
    return out


def curve_scores(scores: np.ndarray, curve) -> np.ndarray:
    """A group's scores for the global ranking from its measured loss curve ([[k, value
    lost with the k lowest-scored units removed], ...] from k = 0, scoring/shapley.py): each
    unit gets the slope of the curve's lower convex hull where the removal order reaches it
    (past the last point, the last slope), so that the scores of any prefix of the order sum
    to the measured loss at the hull's points; the order itself is the scores'. The curve
    is made non-decreasing first (a loss that falls as more units go is noise or the
    compensation's luck, not a gain to plan on)."""
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    ks = np.array([k for k, _ in curve], dtype=np.float64)
    lost = np.maximum.accumulate(np.array([v for _, v in curve], dtype=np.float64))
    hull = [0]  # lower convex hull (Andrew's monotone chain), from the first point
    for i in range(1, len(ks)):
        while len(hull) > 1 and _cross(ks, lost, hull[-2], hull[-1], i) <= 0:
            hull.pop()
        hull.append(i)
    slope, rate = np.zeros(n), 0.0
    for a, b in zip(hull, hull[1:]):
        rate = (lost[b] - lost[a]) / (ks[b] - ks[a])
        slope[int(ks[a]):int(ks[b])] = rate
    slope[int(ks[hull[-1]]):] = rate  # past the last point: the last slope
    order = _order(s)
    out = np.empty(n)
    out[order] = slope + 1e-12 * (1 + np.abs(slope).max()) * np.arange(n)  # keeps the order
    return out


def _cross(x: np.ndarray, y: np.ndarray, o: int, a: int, b: int) -> float:
    return (x[a] - x[o]) * (y[b] - y[o]) - (y[a] - y[o]) * (x[b] - x[o])


def _order(scores: np.ndarray) -> np.ndarray:
    """Ascending score; later index first on ties."""
    return np.lexsort((-np.arange(len(scores)), scores))


class Budget:
    """The cost the scored groups can remove, and how much of it a selection removes."""

    def __init__(self, analysis: Analysis, gids) -> None:
        self.analysis, self.gids = analysis, list(gids)
        self.units = sum(analysis.group(g).units for g in self.gids)
        self.cost = CostModel(analysis)
        self.full = self.cost.after(np.ones(len(analysis.ch_group), dtype=bool))
        none = ~np.isin(analysis.ch_group, self.gids)
        empty = self.cost.after(none)
        self.prunable = (self.full[0] - empty[0], self.full[1] - empty[1])

    def fractions(self, keep: Mapping[int, np.ndarray]) -> dict[str, float]:
        """Fractions of the prunable units, params and MACs that `keep` removes."""
        after = self.cost.after(channel_keep(self.analysis, keep))
        kept = sum(len(keep.get(g, range(self.analysis.group(g).units))) for g in self.gids)
        return {"units": 1 - kept / max(self.units, 1),
                "params": (self.full[0] - after[0]) / max(self.prunable[0], 1e-12),
                "macs": (self.full[1] - after[1]) / max(self.prunable[1], 1e-12)}

    def removed(self, keep: Mapping[int, np.ndarray], target: str) -> float:
        if target == "units":
            kept = sum(len(keep[g]) for g in self.gids)
            return 1 - kept / max(self.units, 1)
        return self.fractions(keep)[target]

    def unit_cost(self, gid: int, target: str) -> float:
        """Cost of one of the group's units (its whole cost over its units, others intact)."""
        if target == "units":
            return 1.0
        without = np.ones(len(self.analysis.ch_group), dtype=bool)
        without[self.analysis.ch_group == gid] = False
        after = self.cost.after(without)
        i = 0 if target == "params" else 1
        return max((self.full[i] - after[i]) / self.analysis.group(gid).units, 1e-12)


def select(analysis: Analysis, scores: Mapping[int, np.ndarray], ratio: float, *,
           round_to: int = 1, target: str = DEFAULT_TARGET, uniform: bool = False,
           min_keep: float = DEFAULT_MIN_KEEP, normalize: bool = False,
           curves: Mapping[int, list] | None = None) -> dict[int, np.ndarray]:
    """Kept unit indices (sorted) per scored group. `normalize`: the scores are heuristic
    (not in the objective's units): LAMP-normalize each group before a global ranking.
    `curves`: per group its measured loss curve along the scores' order (scoring/shapley.py);
    when every group has one, the global ranking trades groups off by them (`curve_scores`)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}")
    multiple = {gid: width_multiple(analysis.group(gid), round_to) for gid in scores}
    least = {gid: floor_keep(len(s), min_keep, multiple[gid]) for gid, s in scores.items()}
    if uniform and target == "units":
        keep = _uniform(scores, ratio, multiple, least)
    elif uniform:
        keep = _uniform_to_cost(Budget(analysis, scores), scores, ratio, target, multiple, least)
    else:
        if normalize:
            ranked = {g: lamp(s) for g, s in scores.items()}
        elif curves and all(g in curves for g in scores):
            ranked = {g: curve_scores(s, curves[g]) for g, s in scores.items()}
        else:
            ranked = scores
        keep = _select_global(Budget(analysis, scores), ranked, ratio, target, multiple, least)
    return repair_empty(analysis, keep, scores)


def _uniform(scores, ratio, multiple, least) -> dict[int, np.ndarray]:
    keep = {}
    for gid, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        drop = min(n_removed(len(s), ratio, multiple[gid]), len(s) - least[gid])
        keep[gid] = np.sort(_order(s)[drop:])
    return keep


def _uniform_to_cost(budget: Budget, scores, ratio, target, multiple, least) -> dict[int, np.ndarray]:
    """The same per-group ratio everywhere, chosen by bisection to remove `ratio` of the cost.
    With rounded widths no common ratio may come near it (a 32-channel conv at a block of 16
    keeps 32 or 16): the ratio just short of the budget is then filled group by group with
    each group's next allowed width, the step leaving the group's removed fraction lowest
    first, while that brings it nearer (`_fill`),
    unless the ratio just past it is nearer still. On a small YOLOv8 at MACs 0.3 the bisection
    alone removed 0.54."""
    lo, hi = 0.0, 0.999
    for _ in range(30):
        mid = (lo + hi) / 2
        if budget.removed(_uniform(scores, mid, multiple, least), target) < ratio:
            lo = mid
        else:
            hi = mid
    short, past = _uniform(scores, lo, multiple, least), _uniform(scores, hi, multiple, least)
    orders = _orders(scores)
    width = {g: len(k) for g, k in short.items()}
    to_keep = partial(_kept, orders)

    # the steps that leave a group's removed fraction lowest go first (the cheapest first
    # halved a 32-channel early conv of PP-OCRv4's recognizer: 0.855 of its lines against
    # 0.930 in this order, same scores, bench/same_scores.py); then the smaller cost
    nxt = [(1 - steps[0] / len(scores[g]), budget.unit_cost(g, target) * (width[g] - steps[0]),
            g, 0, steps[0]) for g in scores if (steps := _steps(width[g], multiple[g], least[g]))]
    nxt = [(cost, g, i, w) for _, cost, g, i, w in sorted(nxt, key=lambda t: t[:2])]
    filled = to_keep(_fill(budget, nxt, width, to_keep, ratio, target))
    gap = lambda k: abs(budget.removed(k, target) - ratio)  # noqa: E731
    return filled if gap(filled) <= gap(past) else past


def _orders(scores) -> dict[int, np.ndarray]:
    """Per group its units, lowest score first (the order removals take)."""
    return {g: _order(np.asarray(s, dtype=np.float64)) for g, s in scores.items()}


def _kept(orders: Mapping[int, np.ndarray], width: Mapping[int, int]) -> dict[int, np.ndarray]:
    """The `width[g]` best-scored units of each group, sorted."""
    return {g: np.sort(order[len(order) - width[g]:]) for g, order in orders.items()}


def _steps(units: int, multiple: int, least: int) -> list[int]:
    """The allowed kept widths from `units` down to `least`: multiples of `multiple`."""
    widths, w = [], units
    while True:
        w = (w - 1) // multiple * multiple if multiple > 1 else w - 1
        if w < least or w < 1:
            return widths
        widths.append(w)


def _select_global(budget: Budget, scores, ratio, target, multiple, least) -> dict[int, np.ndarray]:
    """Rank removal steps of every group by score per unit of cost (a group's steps stay in
    order, lowest-scored units first) and take the prefix whose removed cost is nearest the
    budget: within one step of it, then filled with later steps while that brings it
    nearer (`_fill`)."""
    orders = _orders(scores)
    steps = []  # (score per cost, gid, step index, kept width after the step)
    for gid, s in scores.items():
        s, per_unit = np.asarray(s, dtype=np.float64), budget.unit_cost(gid, target)
        width = len(s)
        for i, w in enumerate(_steps(len(s), multiple[gid], least[gid])):
            block = s[orders[gid][len(s) - width:len(s) - w]]
            steps.append((float(block.mean()) / per_unit, gid, i, w))
            width = w
    steps.sort(key=lambda t: (t[0], t[2], t[1]))

    def widths_after(n: int) -> dict[int, int]:
        width = {gid: len(s) for gid, s in scores.items()}
        for _, gid, _, w in steps[:n]:
            width[gid] = min(width[gid], w)
        return width

    to_keep = partial(_kept, orders)

    def keep_after(n: int) -> dict[int, np.ndarray]:
        return to_keep(widths_after(n))

    lo, hi = 0, len(steps)  # the fewest steps that reach the budget
    while lo < hi:
        mid = (lo + hi) // 2
        if budget.removed(keep_after(mid), target) < ratio - 1e-12:
            lo = mid + 1
        else:
            hi = mid
    if lo > 0:  # one step short may be nearer the budget than one step over
        over = budget.removed(keep_after(lo), target) - ratio
        under = ratio - budget.removed(keep_after(lo - 1), target)
        lo = lo - 1 if under < over else lo
    width = _fill(budget, steps[lo:lo + FILL_TRIES], widths_after(lo), to_keep, ratio, target)
    return to_keep(width)


def _fill(budget: Budget, later, width: dict[int, int], to_keep, ratio: float,
          target: str) -> dict[int, int]:
    """Later steps that bring a prefix that falls short nearer the budget: a step is taken if
    it narrows the gap (passing the budget by less than it fell short), else its group keeps
    its width from then on (a group's steps stay in order). One large step (a channel of a
    first conv, a sizable share of the MACs) no longer leaves the budget short by its cost."""
    gap = ratio - budget.removed(to_keep(width), target)
    passed: set[int] = set()
    for _, gid, _, w in later:
        if gap <= 1e-12:
            break
        if gid in passed:
            continue
        trial = {**width, gid: min(width[gid], w)}
        trial_gap = ratio - budget.removed(to_keep(trial), target)
        if abs(trial_gap) < abs(gap):
            width, gap = trial, trial_gap
        else:
            passed.add(gid)
    return width


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
