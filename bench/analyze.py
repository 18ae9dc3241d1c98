"""How long the dependency compiler takes, and how that grows with the graph.

ResNet-50 (the onnx package's light model) is normalized once; then `analyze` is timed
(median of repeats) on k parallel copies of it (k = 1, 2, 4, 8) in one graph. Linear
growth shows as a constant time per node.

    python bench/analyze.py
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import onnx
import onnx.compose

from onnxprune.compiler.analyze import analyze
from onnxprune.load import load_model
from onnxprune.compiler.normalize import normalize

LIGHT = Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"


def copies(model: onnx.ModelProto, k: int) -> onnx.ModelProto:
    """k independent prefixed copies of the model in one graph."""
    merged = onnx.ModelProto()
    merged.CopyFrom(model)
    del merged.graph.node[:], merged.graph.initializer[:], merged.graph.input[:], merged.graph.output[:]
    del merged.graph.value_info[:]
    for i in range(k):
        part = onnx.compose.add_prefix(model, f"c{i}_")
        for field in ("node", "initializer", "input", "output"):
            getattr(merged.graph, field).extend(getattr(part.graph, field))
    return merged


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    base = load_model(LIGHT)
    print(f"{'copies':>6} {'nodes':>6} {'groups':>6} {'analyze s':>10} {'us/node':>8}")
    for k in (1, 2, 4, 8):
        graph = normalize(copies(base, k))
        result = analyze(graph)
        seconds = median_time(lambda: analyze(graph), repeats=5)
        print(f"{k:>6} {len(graph.nodes):>6} {len(result.groups):>6} {seconds:>10.3f} "
              f"{1e6 * seconds / len(graph.nodes):>8.0f}")


if __name__ == "__main__":
    main()
