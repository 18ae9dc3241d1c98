"""The analysed model, `AnalyzedModel`, and `analyze_model` (load -> normalize -> analyze).

Its own module so that the lower layers (the scoring engine, say) can name the type without
importing the API facade that is built on them.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import onnx

from .compiler.analysis import Analysis
from .compiler.analyze import analyze
from .compiler.graph import ModelIdentity
from .compiler.normalize import normalize, with_unique_node_names
from .load import load_model


@dataclass
class AnalyzedModel:
    """A loaded, normalized and analysed model."""

    path: str | None
    proto: onnx.ModelProto
    ident: ModelIdentity
    analysis: Analysis
    seconds: dict[str, float]
    # the user's model when this one is its batch-symbolic twin (scoring/fixedbatch.batch_twin):
    # analysed, scored and pruned as the twin, shipped with the source's batch-1 interface
    source: onnx.ModelProto | None = None
    batch_note: str | None = None  # why the twin was used or refused (a batch-1 model only)

    @property
    def graph(self):
        return self.analysis.graph


def analyze_model(model: str | os.PathLike | onnx.ModelProto, *,
                  prune_cache: bool = False) -> AnalyzedModel:
    """load -> normalize -> analyze. `prune_cache`: attention heads that reach the key-value
    cache inputs/outputs may shrink them (their head axis), changing the model's interface."""
    t0 = time.perf_counter()
    path = None
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        path, proto = str(model), load_model(model)
    t1 = time.perf_counter()
    proto = with_unique_node_names(proto)  # the sessions are built from it; normalize copies
    graph = normalize(proto)
    t2 = time.perf_counter()
    analysis = analyze(graph, prune_cache=prune_cache)
    t3 = time.perf_counter()
    return AnalyzedModel(path, proto, ModelIdentity.of(proto), analysis,
                         {"load": t1 - t0, "normalize": t2 - t1, "analyze": t3 - t2})
