"""onnxprune: structured pruning for ONNX models, ranked by Shapley value.

The pipeline (docs/design.md): load -> normalize -> analyze -> instrument -> score -> select
-> rewrite -> deploy -> verify -> save + report, in three packages: `compiler` (the channel
groups), `scoring` (ranking units) and `deploy` (what ships); `onnxprune.pipeline` strings them
together and `onnxprune.api` is the facade.
"""
from .api import AnalyzedModel, PruneResult, analyze_model, prune, score_model
from .errors import OnnxPruneError
from .options import PruneOptions, ScoreOptions
from .version import __version__

__all__ = ["AnalyzedModel", "OnnxPruneError", "PruneOptions", "PruneResult", "ScoreOptions",
           "analyze_model", "prune", "score_model", "__version__"]
