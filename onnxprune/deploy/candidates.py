"""Which pruned model to ship: plain removal, mean compensation, or a least-squares refit.

Selection fixes *which* units go; this stage decides how the survivors absorb their loss.
Compensation and refit usually help but can hurt (a mean far from typical inputs, a refit
that overfits a handful of samples), so each candidate is built, run on guard samples that
scoring did not see, and scored with the same value function as the Shapley game (negative
KL to the original, cross-entropy with labels, ...). The best one ships; the report lists
every candidate's figure, so the user sees what the guard decided and why.

The same guard judges the allocation: the global allocation (select.py) and the uniform one
at the same budget, each with its best candidate, so that a global allocation that loses on
held-out samples never ships (`deploy_allocations`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import onnx

from ..calib import Calibration
from ..compiler.analysis import Analysis
from ..compiler.cache import narrow_feeds, widen_outputs
from ..compiler.graph import ModelIdentity
from ..compiler.rewrite import channel_keep, rewrite
from ..scoring.site_stats import SiteActivations
from .optimize import Finalizer
from .verify import run_model, tensor_output_names


class Guard:
    """The original's outputs on the guard samples (`reference`: verification compares with
    them too, on the same samples) and a value function prepared on them."""

    def __init__(self, original: onnx.ModelProto, data: Calibration, value_fn: Any, note: str):
        self.data, self.value_fn, self.note = data, value_fn, note
        self.reference = run_model(original, data.inputs)
        value_fn.prepare(self.reference, data.labels)

    def value(self, model: onnx.ModelProto) -> float:
        # a model whose heads shrank its key-value cache (--prune-cache) reads the past of
        # its kept heads; its cache outputs count on those heads only
        outputs = run_model(model, narrow_feeds(model, self.data.inputs))
        outputs = widen_outputs(model, tensor_output_names(model), outputs, self.reference)
        value = float(np.mean(self.value_fn([o[None] for o in outputs])))
        return value if np.isfinite(value) else -np.inf  # NaN never wins


@dataclass
class Choice:
    model: onnx.ModelProto
    chosen: str
    values: dict[str, float] = field(default_factory=dict)
    refit_layers: int = 0
    allocation: str = "global"  # which selection shipped (deploy_allocations)
    keep: Mapping[int, np.ndarray] = field(default_factory=dict)
    allocations: dict[str, float] = field(default_factory=dict)  # its best value per allocation

    def to_json(self, guard: Guard | None) -> dict[str, Any]:
        out: dict[str, Any] = {"chosen": self.chosen, "allocation": self.allocation}
        if self.allocations:
            out["allocation_values"] = {k: round(v, 6) if np.isfinite(v) else None
                                        for k, v in self.allocations.items()}
        if guard is not None:
            out.update({"value_function": guard.value_fn.name, "guard_samples": guard.note,
                        "values": {k: round(v, 6) if np.isfinite(v) else None
                                   for k, v in self.values.items()}})
        if self.refit_layers:
            out["refit_layers"] = self.refit_layers
        return out


def deploy(analysis: Analysis, ident: ModelIdentity, keep: Mapping[int, np.ndarray], *,
           means: Mapping[str, np.ndarray] | None, refit_data: Calibration | None,
           guard: Guard | None, progress: Callable[[dict], None] | None = None,
           activations: SiteActivations | None = None) -> Choice:
    """Build the candidates and keep the best on the guard samples (the first without one).
    `activations`: `refit_data`'s mask-site tensors, kept by the means pass."""
    emit = progress or (lambda event: None)
    candidates: dict[str, onnx.ModelProto] = {}
    finalize = Finalizer(ident)
    if means is not None:
        candidates["compensated"] = finalize(rewrite(analysis, keep, means=means))
    if means is None or guard is not None:
        candidates["plain"] = finalize(rewrite(analysis, keep))
    layers = 0
    if refit_data is not None:
        from .refit import refit_consumers
        emit({"stage": "refit", "done": 0, "total": 0})
        refits = refit_consumers(
            analysis, ident, channel_keep(analysis, keep), refit_data.inputs,
            activations=activations, progress=lambda done, total: emit({"stage": "refit", "done": done, "total": total,
                                               "unit": "layers"}))
        if refits:
            layers = len(refits)
            candidates["refit"] = finalize(rewrite(analysis, keep, means=means, refits=refits))
    if guard is None:
        name = next(iter(candidates))
        return Choice(candidates[name], name, refit_layers=layers, keep=keep)
    emit({"stage": "deploy", "done": 0, "total": 0})
    values = {name: guard.value(model) for name, model in candidates.items()}
    # ties (ratio 0, nothing to compensate) go to the earlier, simpler-to-explain candidate
    best = max(values, key=lambda k: (values[k], -list(values).index(k)))
    return Choice(candidates[best], best, values, layers, keep=keep)


def deploy_allocations(analysis: Analysis, ident: ModelIdentity,
                       keeps: Mapping[str, Mapping[int, np.ndarray]], *,
                       means: Mapping[str, np.ndarray] | None, refit_data: Calibration | None,
                       guard: Guard | None, progress: Callable[[dict], None] | None = None,
                       activations: SiteActivations | None = None) -> Choice:
    """Deploy each allocation (`keeps`: name -> kept units; the first is preferred on ties)
    and ship the one whose best candidate has the best value on the guard samples."""
    choices: dict[str, Choice] = {}
    for name, keep in keeps.items():
        if any(_same(keep, c.keep) for c in choices.values()):
            continue  # the same selection: nothing to choose between
        choices[name] = deploy(analysis, ident, keep, means=means, refit_data=refit_data,
                               guard=guard, progress=progress, activations=activations)
        choices[name].allocation = name
        if guard is None:
            break
    first = next(iter(choices.values()))
    if len(choices) == 1:
        return first
    values = {name: c.values[c.chosen] for name, c in choices.items()}
    best = max(values, key=lambda k: (values[k], -list(values).index(k)))
    choices[best].allocations = values
    return choices[best]


def _same(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[g], b[g]) for g in a)
