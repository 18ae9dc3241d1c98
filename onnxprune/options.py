"""The options of a score or prune run, spelled once: typed, frozen, validated here.

The command line (`PruneOptions.from_cli`), the Python keywords (`PruneOptions.from_keywords`)
and the report (`to_json`) all go through these classes. Each choice is a `Literal` whose
values equal its registry's keys (tests/test_options.py checks that they agree); the
tuples the CLI offers are taken from the registries themselves.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, get_args

from .deploy.select import DEFAULT_MIN_KEEP, DEFAULT_TARGET
from .deploy.select import TARGETS as _TARGETS
from .deploy.verify import OUTPUT_KINDS
from .errors import OnnxPruneError
from .scoring.estimators import ESTIMATORS, Aggregate
from .scoring.metrics import METRICS
from .scoring.value import VALUE_FUNCTIONS

MetricName = Literal["shapley", "random", "l1", "l2", "bn_gamma", "mean_activation", "apoz",
                     "loo", "taylor"]
EstimatorName = Literal["auto", "exact", "permutation", "antithetic", "persample", "kernelshap",
                        "adaptive", "cutaware", "truncated", "joint"]
ValueName = Literal["neg_kl", "neg_nmse", "cosine", "neg_cross_entropy", "accuracy"]
Target = Literal["units", "params", "macs"]
Device = Literal["auto", "cpu", "cuda"]

METRIC_NAMES: tuple[str, ...] = tuple(METRICS)
ESTIMATOR_NAMES: tuple[str, ...] = ("auto", *ESTIMATORS)
VALUE_NAMES: tuple[str, ...] = tuple(VALUE_FUNCTIONS)
AGGREGATES: tuple[str, ...] = get_args(Aggregate)
TARGETS: tuple[str, ...] = tuple(_TARGETS)
DEVICES: tuple[str, ...] = get_args(Device)  # the runtime's device names (runtime.py)


def _one_of(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


@dataclass(frozen=True)
class ScoreOptions:
    """How units are scored."""

    metric: MetricName = "shapley"
    seed: int = 0
    estimator: EstimatorName = "auto"
    budget: int | None = None  # coalition evaluations per group (None: 10 x units)
    value: ValueName | None = None  # None: by output shape and labels; '-' and case forgiven
    aggregate: Aggregate = "mean"
    device: Device = "auto"
    max_memory_mb: float | None = None
    time_budget_s: float | None = None  # wall time the run is planned to fit (scoring scales)
    max_memory_mb: float | None = None  # per worker with `workers`
    workers: int = 0  # Ray workers scoring groups in parallel (0: in this process, no Ray)
    ray_address: str | None = None  # join this Ray cluster (None: start a local one)

    @classmethod
    def from_keywords(cls, **keywords: Any) -> ScoreOptions:
        return cls().updated(**keywords)

    @classmethod
    def from_cli(cls, params: Mapping[str, Any]) -> ScoreOptions:
        """From the score command's parameters (click's names)."""
        return cls.from_keywords(**_from_cli(params))

    def updated(self, **keywords: Any) -> ScoreOptions:
        unknown = set(keywords) - _names(ScoreOptions)
        if unknown:
            raise TypeError(f"unknown scoring option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **keywords)

    def validate(self) -> ScoreOptions:
        """Raise OnnxPruneError on the first bad choice; return self."""
        if self.aggregate not in AGGREGATES:
            raise OnnxPruneError(f"--aggregate must be {_one_of(AGGREGATES)}, got {self.aggregate}")
        if self.metric not in METRICS:
            raise OnnxPruneError(f"unknown metric '{self.metric}' (choose from {', '.join(METRICS)})")
        if self.estimator not in ESTIMATOR_NAMES:
            raise OnnxPruneError(f"unknown estimator '{self.estimator}' "
                                 f"(choose from {', '.join(ESTIMATOR_NAMES)})")
        if self.value is not None and _value_key(self.value) not in VALUE_FUNCTIONS:
            raise OnnxPruneError(f"unknown value function '{self.value}'; choose one of "
                                 f"{', '.join(sorted(VALUE_FUNCTIONS))}")
        if self.device not in DEVICES:
            raise OnnxPruneError(f"--device must be one of {', '.join(DEVICES)}, got {self.device}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise OnnxPruneError("--time-budget must be a positive number of minutes, got "
                                 f"{self.time_budget_s / 60:g}")
        if self.workers < 0:
            raise OnnxPruneError(f"--workers must be 0 (no Ray) or more, got {self.workers}")
        if (self.workers or self.ray_address) and importlib.util.find_spec("ray") is None:
            raise OnnxPruneError("--workers/--ray-address need Ray: pip install 'onnxprune[distributed]'")
        return self


@dataclass(frozen=True)
class PruneOptions:
    """What is removed and how the result ships; `score` says how units are ranked."""

    ratio: float = 0.5  # fraction of the prunable cost (`target`) removed
    target: Target = DEFAULT_TARGET  # what the ratio is a fraction of (deploy/select.py)
    uniform: bool = False  # the same fraction from every group instead of a global ranking
    min_keep: float = DEFAULT_MIN_KEEP  # per-group floor: a fraction (< 1) or a count of units
    steps: int = 1  # prune in rounds, re-scoring the shipped model in between
    round_to: int | str = "auto"  # conv widths are kept at multiples of it; "auto": the CPU's
    # channel block (round_multiple; select.width_multiple). Measured: whole-unit widths shipped slower CNNs
    # (docs/benchmarks.md, "Kept widths at the channel block by default")
    exclude: tuple[str, ...] = ()  # glob patterns of tensors/nodes whose groups stay whole
    compensate: bool = True  # also try mean compensation (guarded)
    refit: bool = True  # also try a least-squares refit (guarded)
    holdout: float = 0.25  # fraction of calibration samples held out to guard and verify
    latency: bool = True  # measure latency before and after
    min_fidelity: float = 0.8  # quality gate: the worst output's held-out agreement (verify.py)
    prune_cache: bool = False  # heads may shrink the key-value cache inputs/outputs (axis 1)
    output_kind: tuple[str, ...] = ()  # "NAME=KIND": how the gate judges that output (verify.py)
    score: ScoreOptions = field(default_factory=ScoreOptions)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude))
        kinds = self.output_kind  # a mapping from the Python API, "NAME=KIND" strings from the CLI
        object.__setattr__(self, "output_kind", tuple(
            f"{k}={v}" for k, v in kinds.items()) if isinstance(kinds, Mapping)
            else (kinds,) if isinstance(kinds, str) else tuple(kinds))

    @classmethod
    def from_keywords(cls, **keywords: Any) -> PruneOptions:
        """`prune()`'s keywords: its own fields and ScoreOptions' fields, flat."""
        return cls().updated(**keywords)

    @classmethod
    def from_cli(cls, params: Mapping[str, Any]) -> PruneOptions:
        """From the prune command's option parameters (click's names)."""
        return cls.from_keywords(**_from_cli(params))

    def updated(self, **keywords: Any) -> PruneOptions:
        """A copy with these fields (own or ScoreOptions', flat) changed."""
        if "global_" in keywords:  # the earlier flag: global allocation is now the default
            keywords = dict(keywords)
            keywords["uniform"] = not keywords.pop("global_")
        own = {k: v for k, v in keywords.items() if k in _names(PruneOptions)}
        scoring = {k: v for k, v in keywords.items() if k not in own}
        return dataclasses.replace(self, **own, score=self.score.updated(**scoring))

    def validate(self) -> PruneOptions:
        """Raise OnnxPruneError on the first bad option; return self."""
        round_to = self.round_multiple()
        if not 0 <= self.ratio < 1:
            raise OnnxPruneError(f"--ratio must be in [0, 1), got {self.ratio}")
        if self.steps < 1:
            raise OnnxPruneError(f"--steps must be at least 1, got {self.steps}")
        if round_to < 1:
            raise OnnxPruneError(f"--round-to must be at least 1, got {round_to}")
        if self.target not in TARGETS:
            raise OnnxPruneError(f"--target must be one of {', '.join(TARGETS)}")
        if not 0 <= self.min_fidelity <= 1:
            raise OnnxPruneError(f"--min-fidelity must be in [0, 1], got {self.min_fidelity}")
        if self.min_keep < 0 or (self.min_keep >= 1 and not float(self.min_keep).is_integer()):
            raise OnnxPruneError("--min-keep must be a fraction in [0, 1) or a whole number of "
                                 f"units, got {self.min_keep}")
        self.output_kinds()
        if not isinstance(self.prune_cache, bool):
            raise OnnxPruneError(f"--prune-cache is a flag (True or False), got {self.prune_cache!r}")
        self.score.validate()
        return self

    def output_kinds(self) -> dict[str, str]:
        """--output-kind as {output name: kind}; a malformed entry or unknown kind is a user
        error (an unknown output name is one too, checked against the model: api._prepare)."""
        kinds: dict[str, str] = {}
        for entry in self.output_kind:
            name, sep, kind = str(entry).rpartition("=")
            if not sep or not name:
                raise OnnxPruneError(f"--output-kind takes NAME=KIND, got {entry!r}")
            if kind not in OUTPUT_KINDS:
                raise OnnxPruneError(f"--output-kind {entry}: unknown kind '{kind}' "
                                     f"(choose from {', '.join(OUTPUT_KINDS)})")
            kinds[name] = kind
        return kinds

    def round_multiple(self) -> int:
        """The channel multiple: `round_to`, or for "auto" the one this machine's runtime is
        fastest at (select.py)."""
        from .runtime import hardware_multiple
        if isinstance(self.round_to, str):
            if self.round_to.strip().lower() == "auto":
                return hardware_multiple("cuda" if self.score.device == "cuda" else "cpu")
            try:
                return int(self.round_to)
            except ValueError:
                raise OnnxPruneError("--round-to must be a positive integer or 'auto', "
                                     f"got {self.round_to!r}") from None
        return int(self.round_to)

    def step_min_keep(self) -> float:
        """The floor of each round: a fraction compounds over `steps` rounds to `min_keep`;
        a count stays a count."""
        return self.min_keep ** (1 / self.steps) if self.min_keep < 1 else self.min_keep

    def step_ratio(self) -> float:
        """The ratio of each round, for scoring and selection alike: `steps` rounds of it
        remove `ratio` of the units (or of the params/MACs) in all."""
        return 1 - (1 - self.ratio) ** (1 / self.steps)

    def to_json(self) -> dict[str, Any]:
        """For the report: every option, `round_to` resolved and as requested."""
        s = self.score
        return {"compensate": self.compensate, "round_to": self.round_multiple(),
                "round_to_requested": self.round_to, "target": self.target,
                "uniform": self.uniform, "global": not self.uniform,
                "min_keep": self.min_keep, "steps": self.steps, "exclude": list(self.exclude),
                "estimator": s.estimator, "budget": s.budget, "value": s.value,
                "aggregate": s.aggregate, "refit": self.refit, "ratio": self.ratio,
                "metric": s.metric, "seed": s.seed, "device": s.device,
                "max_memory_mb": s.max_memory_mb, "time_budget_s": _finite_or_text(s.time_budget_s),
                "holdout": self.holdout, "latency": self.latency, "workers": s.workers,
                "ray_address": s.ray_address, "min_fidelity": self.min_fidelity,
                "prune_cache": self.prune_cache, "output_kind": self.output_kinds()}


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _value_key(name: str) -> str:
    """How value.make_value_function forgives spelling."""
    return name.strip().lower().replace("-", "_")


# the CLI's spellings of options whose click parameter names differ from the fields
_CLI_NEGATED = {"no_compensate": "compensate", "no_latency": "latency"}
_CLI_RENAMED = {"max_memory": "max_memory_mb"}
_CLI_MINUTES = {"time_budget": "time_budget_s"}  # given in minutes, kept in seconds


def _from_cli(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name in _CLI_MINUTES:
            out[_CLI_MINUTES[name]] = None if value is None else 60.0 * value
        elif name in _CLI_NEGATED:
            out[_CLI_NEGATED[name]] = not value
        else:
            out[_CLI_RENAMED.get(name, name)] = value
    return out


def _finite_or_text(x: float | None) -> float | str | None:
    """JSON has no infinity: `--time-budget inf` is written as "inf"."""
    return "inf" if x is not None and math.isinf(x) else x
