"""Stage `plan`: what a run is about to cost, measured before scoring starts (issues 14, 16).

    forward = measure_forward(proto, inputs)             # one session + one pass, timed
    plan = plan_scoring(engine, analysis, gids, metric="shapley", forward=forward)
    fit_time(plan, seconds=60)                           # optional: scoring within 60 s
    plan.budgets()                                       # per group: the estimator's budget

Per group: units, the estimator, the coalition evaluations planned (the budget the
estimator receives) and what one evaluation costs. The cost is measured on the engine
itself: the first evaluation of a group pays its setup (cut, sessions, K tuning, prefix
run); one evaluation's cost is the K tuning's best timed run (on the CPU), or the next
evaluations timed where K was not tuned. Two groups are measured (the first scored, whose setup
scoring reuses, and the one with the smallest suffix); the others are interpolated
linearly in their suffix MACs (the MACs downstream of the group's mask sites), since a
coalition runs only the suffix. The stages around scoring (means, rewrite with refit and
the guarded choice, verification with latency) are a few sessions and forward passes
each, estimated from one measured session build and one forward pass over the
calibration set; the refit from its operation count at single-thread BLAS rates measured
as the best of a few short runs (`machine_rates`).

With a time budget the evaluations are scaled so that the planned scoring time fits:
never below what the estimator needs (then the plan says so), never above `--budget`
when given (else at most _MAX_STRETCH x the default).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..compiler.analysis import Analysis
from ..compiler.cost import node_macs
from .estimators import CAPABILITIES, default_budget, truncation_depth
from .estimators.truncated import planned_chains

_PROBE_S = 0.2          # untuned K: seconds of timed evaluations per measured group
_PROBE_MAX = 128        # ... at most this many coalitions in one call (estimators send <= 256)
_MAX_STRETCH = 10       # a time budget raises a group's evaluations at most this x the default
_LATENCY_S = 4.0        # deploy/latency.py: max_seconds, at least 5 and at most 50 rounds
_LATENCY_ROUNDS = (5, 50)
_ENGINE_METRICS_FIXED = {"loo", "taylor"}  # n + 1 evaluations per group, no budget
_SHORT_PASS_S = 0.05    # measure_forward: a timed pass shorter than this is timed twice
_MIN_SAMPLES = 4        # a time budget never scores on fewer calibration samples than this
_NOMINAL_RATES = (1.5e11, 2.8e10, 7e8)  # refit_seconds: products, solves (ops/s), copies
                                        # (bytes/s): machine_rates on this project's 2 cores

__all__ = ["Forward", "GroupPlan", "Sampling", "ScorePlan", "measure_forward", "min_evaluations",
           "fit_time", "machine_rates", "plan_scoring", "refit_seconds", "refit_work",
           "stage_estimates", "suffix_macs"]


@dataclass(frozen=True)
class Forward:
    """One session build of the original and one forward pass over the calibration set."""

    session_s: float
    forward_s: float
    samples: int

    def pass_s(self, samples: int) -> float:
        return self.forward_s * samples / max(1, self.samples)


@dataclass
class GroupPlan:
    gid: int
    units: int
    estimator: str
    evaluations: int  # planned: the budget the estimator receives (2^n when exhaustive)
    minimum: int  # the fewest the estimator can run with
    seconds_per_evaluation: float
    setup_s: float  # cut, sessions, tuning and prefix run of the group's first evaluation
    suffix_macs: int
    measured: bool

    @property
    def seconds(self) -> float:
        return self.setup_s + self.evaluations * self.seconds_per_evaluation

    def to_json(self) -> dict[str, Any]:
        return {"group": self.gid, "units": self.units, "estimator": self.estimator,
                "evaluations": self.evaluations, "minimum": self.minimum,
                "seconds_per_evaluation": self.seconds_per_evaluation, "setup_s": self.setup_s,
                "seconds": self.seconds, "suffix_macs": self.suffix_macs, "measured": self.measured}


@dataclass(frozen=True)
class Sampling:
    """How a run's groups are sampled: what `_budgeted` needs besides a group's size."""

    estimator: str = "auto"
    budget: int | None = None  # --budget: an upper bound, None for the estimator's default
    per_sample: bool = False  # the engine takes a coalition per sample
    removal: float | None = None  # the share of units the run removes (truncated depth)
    samples: int = 0  # calibration samples per evaluation
    curve: bool = False  # each group's loss curve is measured too (a global allocation)

    def budgeted(self, metric: str, n: int, budget: int | None = None) -> tuple[str, int, int]:
        """(estimator, planned evaluations, minimum) of a group of `n` units (`budget`
        instead of the run's)."""
        return _budgeted(metric, n, budget if budget is not None else self.budget, self.estimator,
                         self.per_sample, self.removal, self.samples, self.curve)


@dataclass
class ScorePlan:
    """The plan of one run: per-group scoring and the expected seconds of every stage."""

    metric: str
    groups: list[GroupPlan]
    forward: Forward | None = None
    stages: dict[str, float] = field(default_factory=dict)  # expected seconds, scoring excluded
    measured_s: dict[str, float] = field(default_factory=dict)  # already spent (load, engine, plan)
    time_budget_s: float | None = None  # the user's, for the whole command
    scoring_budget_s: float | None = None  # the share of it this round's scoring was fitted to
    steps: int = 1  # rounds left, this one included
    warnings: list[str] = field(default_factory=list)
    spent_evaluations: int | None = None  # after scoring: what the estimators spent
    sampling: Sampling = field(default_factory=Sampling)
    samples: int = 0  # calibration samples each evaluation runs (the engine's N)
    scoring_samples: int | None = None  # fewer, when a time budget scaled them down (fit_time)

    def budgets(self) -> dict[int, int]:
        return {g.gid: g.evaluations for g in self.groups}

    @property
    def evaluations(self) -> int:
        return sum(g.evaluations for g in self.groups)

    @property
    def scoring_s(self) -> float:
        return sum(g.seconds for g in self.groups)

    @property
    def seconds_per_evaluation(self) -> float:
        evals = sum(g.evaluations for g in self.groups)
        return sum(g.evaluations * g.seconds_per_evaluation for g in self.groups) / max(1, evals)

    def expected(self) -> dict[str, float]:
        """Seconds per stage of the whole command: measured so far, scoring for the rounds
        left (later rounds score smaller models: an upper bound) and the other stages'
        estimates (`stages`, rounds included)."""
        out = dict(self.measured_s)
        out["scoring"] = self.scoring_s * self.steps
        for k, v in self.stages.items():
            out[k] = out.get(k, 0.0) + v
        return out

    @property
    def total_s(self) -> float:
        return sum(self.expected().values())

    @property
    def forward_equivalents(self) -> float | None:
        if self.forward is None or self.forward.forward_s <= 0:
            return None
        return self.total_s / self.forward.forward_s

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "groups": [g.to_json() for g in self.groups],
                "evaluations": self.evaluations, "scoring_s": self.scoring_s,
                "seconds_per_evaluation": self.seconds_per_evaluation,
                "forward_s": self.forward.forward_s if self.forward else None,
                "session_s": self.forward.session_s if self.forward else None,
                "expected_s": self.expected(), "total_s": self.total_s,
                "forward_equivalents": self.forward_equivalents, "steps": self.steps,
                "time_budget_s": self.time_budget_s, "scoring_budget_s": self.scoring_budget_s,
                "samples": self.samples, "scoring_samples": self.scoring_samples,
                "warnings": list(self.warnings)}


def measure_forward(proto: Any, inputs: Mapping[str, np.ndarray], device: str = "cpu",
                    batch: int = 64) -> Forward:
    """A session of the original built and run over all samples: one pass after a warm-up,
    the best of two when a pass is short (load only adds; on a large model a pass is the
    cost, and one timed pass is steady enough)."""
    from ..runtime import make_session, run_chunks
    t0 = time.perf_counter()
    sess = make_session(proto, device)
    session_s = time.perf_counter() - t0
    times: list[float] = []
    while len(times) < 2 or (len(times) == 2 and times[1] < _SHORT_PASS_S):
        t0 = time.perf_counter()
        for _ in run_chunks(sess, inputs, batch):
            pass
        times.append(time.perf_counter() - t0)
    return Forward(session_s, min(times[1:]), len(next(iter(inputs.values()))))


def suffix_macs(analysis: Analysis, gid: int) -> int:
    """MACs per sample of the nodes downstream of the group's mask sites (their consumers
    included): what a coalition of this group runs."""
    starts = {s.node for s in analysis.sites if (analysis.ch_group[s.ids] == gid).any()}
    nodes = [analysis.node(k) for k in starts]
    tainted = {o.name for n in nodes for o in n.outputs}
    seen = {id(n) for n in nodes}
    changed = True
    while changed:  # fixed point: works on any node order
        changed = False
        for node in analysis.graph.nodes:
            if id(node) not in seen and any(t.name in tainted for t in node.inputs):
                seen.add(id(node))
                tainted.update(o.name for o in node.outputs)
                changed = True
    return sum(node_macs(n, analysis.measured) for n in analysis.graph.nodes if id(n) in seen)


def min_evaluations(estimator: str, n: int, removal: float | None = None) -> int:
    """The fewest evaluations `estimator` runs with on n units (the estimators' `require`;
    truncated: the full coalition and one chain as deep as `removal` asks)."""
    if n <= 1:
        return 2 * n
    if estimator == "truncated":
        return 2 + truncation_depth(n, removal)
    return {"exact": 2 ** n, "permutation": n + 1, "antithetic": 2 * n, "persample": 2 * n,
            "adaptive": 2 + 4 * (n - 1), "kernelshap": 4, "joint": 2}.get(estimator, 2)


def _budgeted(metric: str, n: int, budget: int | None, estimator: str,
              per_sample: bool, removal: float | None = None,
              n_samples: int = 0, curve: bool = False) -> tuple[str, int, int]:
    """(estimator, planned evaluations, minimum) of one group, as shapley_group decides
    (`removal`: the share of units the run removes, None when not known; `curve`: the
    group's loss curve is measured too, its points counted in both)."""
    from .shapley import curve_points, pick_estimator
    if metric in _ENGINE_METRICS_FIXED:
        return metric, n + 1, n + 1
    budget = budget or default_budget(n)
    name = pick_estimator(n, budget, estimator, per_sample, cut_known=removal is not None)
    if CAPABILITIES[name].exhaustive:
        budget = max(budget, 2 ** n)
    if CAPABILITIES[name].needs_depth and n_samples:  # stops at its marginal count
        d = truncation_depth(n, removal)
        budget = min(int(budget), 2 + d * planned_chains(n, n_samples, d))
    points = len(curve_points(n)) + 1 if curve and CAPABILITIES[name].needs_depth and n > 1 else 0
    return name, int(budget) + points, min_evaluations(name, n, removal) + points


def plan_scoring(engine: Any, analysis: Analysis, gids: Sequence[int], *, metric: str,
                 estimator: str = "auto", budget: int | None = None, aggregate: str = "mean",
                 forward: Forward | None = None, probe: bool = True,
                 removal: float | None = None, curve: bool = False) -> ScorePlan:
    """The scoring plan of `gids` (scored in this order); measures the engine unless there
    is none (metrics without forward passes) or `probe` is off. The first group's setup is
    paid here (its data stays live for scoring), so its plan counts none."""
    per_sample = bool(getattr(engine, "per_sample_masks", False)) and aggregate == "mean"
    n_samples = int(getattr(engine, "n", 0) or 0)
    sampling = Sampling(estimator, budget, per_sample, removal, n_samples, curve)
    if engine is None or not gids:
        return ScorePlan(metric, [], forward, sampling=sampling, samples=n_samples)
    macs = {g: suffix_macs(analysis, g) for g in gids}
    budgeted = {g: sampling.budgeted(metric, analysis.group(g).units) for g in gids}
    planned = {g: evals for g, (_, evals, _) in budgeted.items()}
    if hasattr(engine, "expected"):  # the engine tunes K only as far as the work pays for
        engine.expected.update(planned)
    points = _measure(engine, analysis, list(gids), macs, planned) if probe else {}
    groups = []
    for g in gids:
        name, evals, minimum = budgeted[g]
        setup, per_eval = points[g] if g in points else (
            _interpolate(points, macs, macs[g]) if points else (0.0, 0.0))
        setup = 0.0 if g == gids[0] and g in points else setup
        groups.append(GroupPlan(g, analysis.group(g).units, name, evals, minimum, per_eval,
                                setup, macs[g], g in points))
    return ScorePlan(metric, groups, forward, sampling=sampling, samples=n_samples)


def _measure(engine: Any, analysis: Analysis, gids: list[int], macs: Mapping[int, int],
             planned: Mapping[int, int]) -> dict[int, tuple[float, float]]:
    """(setup seconds, seconds per evaluation) of the smallest suffix's group and of the first
    group, measured in that order so that the first group's data stays live for scoring.
    The probe's evaluations are not counted in `engine.evaluations`."""
    first, smallest = gids[0], min(gids, key=lambda g: macs[g])
    order = [smallest, first] if macs[smallest] < macs[first] else [first]
    before = engine.evaluations
    try:
        return {g: _probe(engine, g, analysis.group(g).units, planned[g]) for g in order}
    finally:
        engine.evaluations = before


def _probe(engine: Any, gid: int, n: int, planned: int) -> tuple[float, float]:
    """Setup and per-evaluation seconds of `gid`; the timed evaluations beyond the first nine
    stay under an eighth of the group's `planned` work (they are thrown away)."""
    rng = np.random.default_rng(gid)

    def timed(k: int) -> float:
        coalitions = rng.random((k, n)) < 0.5
        t0 = time.perf_counter()
        engine.values(gid, coalitions)
        return time.perf_counter() - t0

    first = timed(1)  # pays the group's setup (cut, sessions, prefix run, K tuning)
    tuned = getattr(engine, "tuned_seconds_per_evaluation", lambda g: None)(gid)
    if tuned is not None:  # the tuning's best timed runs: no probe runs of our own
        return max(0.0, first - tuned), tuned
    spent, count = timed(8), 8
    k = int(min(_PROBE_MAX, _PROBE_S / max(spent / count, 1e-9), planned / 8))
    if k > 2 * count:
        spent, count = spent + timed(k), count + k
    per_eval = spent / count
    return max(0.0, first - per_eval), per_eval


def _interpolate(points: Mapping[int, tuple[float, float]], macs: Mapping[int, int],
                 at: int) -> tuple[float, float]:
    """Setup and per-evaluation seconds at `at` suffix MACs, linear between the measured
    groups (clamped at their range: beyond it the fit is a guess either way)."""
    (m0, p0), *rest = sorted((macs[g], v) for g, v in points.items())
    if not rest:
        return p0
    m1, p1 = rest[-1]
    t = min(1.0, max(0.0, (at - m0) / (m1 - m0))) if m1 > m0 else 1.0
    return tuple(a + t * (b - a) for a, b in zip(p0, p1))  # type: ignore[return-value]


def fit_time(plan: ScorePlan, seconds: float) -> None:
    """Scale the sampling groups' evaluations so that the plan's scoring takes `seconds`
    (sets `plan.scoring_budget_s`). When the estimators' minimum does not fit, the
    evaluations stay at that minimum and the calibration samples each one runs are scaled
    down instead (`plan.scoring_samples`; an evaluation's suffix run is about linear in
    them), to no fewer than _MIN_SAMPLES; `plan.warnings` says so, and says when even that
    does not fit. loo and taylor have a fixed count (n + 1 per group): only their samples
    scale, so that they keep to the same time cap as Shapley."""
    plan.scoring_budget_s = seconds
    if not plan.groups:
        return
    if plan.metric in _ENGINE_METRICS_FIXED:
        if plan.scoring_s > seconds * 1.001:
            _fewer_samples(plan, seconds)
        return
    cap = plan.sampling.budget
    fixed = [g for g in plan.groups if g.estimator == "exact" and g.units <= 8]
    flexible = [g for g in plan.groups if g not in fixed]
    left = seconds - sum(g.seconds for g in fixed) - sum(g.setup_s for g in flexible)
    cost = sum(g.evaluations * g.seconds_per_evaluation for g in flexible)
    scale = left / cost if cost > 0 else 1.0
    short = False
    for g in flexible:
        ceiling = cap if cap is not None else _MAX_STRETCH * default_budget(g.units)
        want = min(ceiling, int(math.floor(g.evaluations * scale)))
        name, evals, minimum = plan.sampling.budgeted(plan.metric, g.units, max(2, want))
        if want < minimum:
            short = True
            name, evals, minimum = plan.sampling.budgeted(plan.metric, g.units, minimum)
        g.estimator, g.evaluations, g.minimum = name, evals, minimum
    if short or plan.scoring_s > seconds * 1.001:
        _fewer_samples(plan, seconds)


def _fewer_samples(plan: ScorePlan, seconds: float) -> None:
    """The estimators' minimum does not fit `seconds`: scale every evaluation's samples down
    (every group's, so that scores stay comparable across groups) and say so."""
    n, minimum_s = plan.samples, plan.scoring_s
    scaled = plan.groups if n > _MIN_SAMPLES else []
    fixed = sum(g.setup_s for g in scaled) + sum(g.seconds for g in plan.groups if g not in scaled)
    variable = sum(g.evaluations * g.seconds_per_evaluation for g in scaled)
    want = int(n * (seconds - fixed) / variable) if variable > 0 else n
    fewer = max(_MIN_SAMPLES, min(n - 1, want)) if scaled else n
    if fewer < n:
        plan.scoring_samples = fewer
        for g in plan.groups:
            g.seconds_per_evaluation *= fewer / n
        others = [g.setup_s for g in plan.groups[1:]]
        if others:  # the first group's setup, paid while planning, is paid again on fewer samples
            plan.groups[0].setup_s = float(np.median(others))
    need = (f"the n + 1 evaluations per group {plan.metric} needs"
            if plan.metric in _ENGINE_METRICS_FIXED else "the minimum the estimators need")
    what = (f"scoring on {fewer} of the {n} calibration samples" if fewer < n else
            f"scoring on all {n} calibration samples")
    fits = plan.scoring_s <= seconds * 1.001
    plan.warnings.append(
        f"the time budget ({seconds:.1f} s for scoring) cannot cover {need} ("
        f"{plan.evaluations} evaluations, ~{minimum_s:.1f} s on all samples): {what}, "
        + (f"~{plan.scoring_s:.1f} s" if fits else
           f"~{plan.scoring_s:.1f} s: over the budget even so"))


def refit_work(analysis: Analysis, gids: Sequence[int], ratio: float,
               samples: int) -> dict[str, tuple[float, float, float]]:
    """The least-squares refit's work (deploy/refit.py) when `ratio` of every scored group's
    units goes, per consumer node: (float32 product operations, float64 solve operations,
    bytes of rows). Over a site's rows (samples x at most 256 positions; kept columns k,
    removed m, outputs o): the removed columns' contribution (2 rows m o) and the Gram sums
    (rows (k^2 + 2 k o), the symmetric product counted once); one linear solve per ridge
    candidate and one for the chosen ridge (2/3 k^3 + 2 k^2 o each) and the candidates'
    errors (k^2 o each); and the bytes of its rows (im2col), whose copies dominate small
    layers (mobilenetv2: 70% of the refit)."""
    from ..compiler.cost import weight_of
    from ..deploy.refit import LAMBDAS, POSITIONS
    scored, out = set(gids), {}
    for site in analysis.sites:
        if site.input_index != 0 or not any(
                int(g) in scored for g in np.unique(analysis.ch_group[site.ids])):
            continue
        w = weight_of(analysis.node(site.node))
        if w is None or w.ndim < 2:
            continue
        kernel, cols = int(np.prod(w.shape[2:])) if w.ndim > 2 else 1, len(site.ids)
        k, m = (1 - ratio) * cols * kernel, ratio * cols * kernel
        o = w.shape[0] if w.ndim > 2 else w.size // max(1, cols)
        rows = samples * min(POSITIONS, _positions(analysis, site))
        out[site.node] = (rows * (2 * m * o + k * k + 2 * k * o),
                          (len(LAMBDAS) + 1) * (2 / 3 * k ** 3 + 2 * k * k * o)
                          + len(LAMBDAS) * k * k * o,
                          4 * rows * cols * kernel)
    return out


def _positions(analysis: Analysis, site: Any) -> int:
    shape = getattr(analysis.graph.tensors().get(site.tensor), "shape", None) or ()
    dims = [d for i, d in enumerate(shape) if i not in (0, site.axis % max(1, len(shape)))]
    return int(np.prod(dims)) if all(isinstance(d, int) and d > 0 for d in dims) else 1


def machine_rates(repeats: int = 5) -> tuple[float, float, float]:
    """(float32 product operations, float64 solve operations, bytes gathered) per second on
    one BLAS thread, as the refit runs them (runtime.single_threaded_blas): the best of
    `repeats` short runs of each, since load only adds (one timed product read 0.8-36
    GFLOP/s call to call on a loaded machine)."""
    from ..runtime import single_threaded_blas
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 256)).astype(np.float32)  # 2048 rows cost 130 forward passes
    # of digits_cnn in all; the rates only set the layers' relative costs (time_layer scales)
    g = np.cov(rng.standard_normal((512, 256)), rowvar=False) + np.eye(256)
    b = rng.standard_normal((256, 64))

    def best(fn: Any) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return max(min(times), 1e-9)

    with single_threaded_blas():
        product = 2 * 512 * 256 * 256 / best(lambda: a.T @ a)
        solve = (2 / 3 * 256 ** 3 + 2 * 256 * 256 * 64) / best(lambda: np.linalg.solve(g, b))
    x = rng.standard_normal((8, 32, 16, 16)).astype(np.float32)
    pick = np.sort(rng.permutation(256)[:192])
    copy = 4 * 8 * 192 * 32 * 9 / best(lambda: _im2col(x, pick))  # bytes of rows out
    return product, solve, copy


def _im2col(x: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """The refit's rows of a 3x3 conv at positions `pick`, as its handler builds them
    (compiler/ops/linear.py), and the kept-column copy after: what the refit's copies cost."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    wo = win.shape[3]
    rows = win[:, :, pick // wo, pick % wo].transpose(0, 2, 1, 3, 4).reshape(-1, x.shape[1] * 9)
    return rows[:, : rows.shape[1] // 2] - rows[0, : rows.shape[1] // 2]


def refit_seconds(analysis: Analysis, gids: Sequence[int], ratio: float, samples: int,
                  time_layer: Callable[[str], "float | None"] | None = None) -> float:
    """Expected seconds of one refit (statistics and solves): what `time_layer(node)` (the
    real refit of one layer, deploy/refit.py time_layer) measures on the layer of median
    modelled cost, carried to the others in proportion to their `refit_work` at nominal
    one-thread rates (the rates only weigh products, solves and copies against each other;
    measuring them cost 230 forward passes of digits_cnn, and a model's rates miss the
    refit's Python and copy overheads, 3-20x on the zoo's small layers, which the layer
    measured carries). Without a layer to time: the work at `machine_rates`."""
    work = refit_work(analysis, gids, ratio, samples)
    if not work:
        return 0.0
    if time_layer is not None:  # the measured layer sets the scale: nominal rates only
        order = sorted(work, key=lambda n: _seconds(work[n], _NOMINAL_RATES))  # weigh the mix
        node = order[len(order) // 2]
        measured = time_layer(node)
        modelled = _seconds(work[node], _NOMINAL_RATES)
        if measured is not None and modelled > 0:
            return measured * sum(_seconds(w, _NOMINAL_RATES) for w in work.values()) / modelled
    rates = machine_rates()
    return sum(_seconds(w, rates) for w in work.values())


def _seconds(work: tuple[float, float, float], rates: Sequence[float]) -> float:
    return sum(w / r for w, r in zip(work, rates))


def stage_estimates(forward: Forward, *, scoring: int, held: int, compensate: bool,
                    refit: bool, latency: bool, refit_s: float = 0.0,
                    allocations: int = 1, refit_pass: bool = False) -> dict[str, float]:
    """Expected seconds of the stages around scoring, each a few session builds and passes:
    means (an instrumented session, one pass over the scoring samples); rewrite (the guard's
    original once, then per allocation deployed (`allocations`: the global one and the
    uniform fallback under the guard) each candidate: a session and a pass over the held-out
    samples, and `refit_s` of refit statistics and solves on the activations the means pass
    kept, or with `refit_pass` (too large to keep) after a session and a pass of its own);
    verify (both models on the held-out samples, then latency: both on up to 32
    samples, interleaved)."""
    s, held_pass = forward.session_s, forward.pass_s(held)
    candidates = 1 + int(compensate) + int(refit)
    out = {"means": s + forward.pass_s(scoring)} if compensate else {}
    out["rewrite"] = (2 * s + held_pass
                      + allocations * (candidates * (2 * s + held_pass) + (
                          refit_s + (s + forward.pass_s(scoring) if refit_pass else 0.0)
                          if refit else 0.0)))
    out["verify"] = 2 * (s + held_pass)
    if latency:
        run = forward.pass_s(min(32, held))
        rounds = min(_LATENCY_ROUNDS[1], max(_LATENCY_ROUNDS[0], _LATENCY_S / max(2 * run, 1e-9)))
        out["verify"] += 2 * s + (rounds + 2) * 2 * run
    return out
