"""onnxprune: structured pruning for ONNX models, ranked by Shapley value.

The pipeline (DESIGN.md): load -> normalize -> analyze -> instrument -> score -> select
-> rewrite -> optimize -> verify -> save + report. Each stage is a module of this
package; `onnxprune.api` strings them together.
"""
from .api import AnalyzedModel, PruneResult, analyze_model, prune  # noqa: E402
from .errors import OnnxPruneError  # noqa: E402
from .options import PruneOptions, ScoreOptions  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ["AnalyzedModel", "OnnxPruneError", "PruneOptions", "PruneResult", "ScoreOptions",
           "analyze_model", "prune", "__version__"]
