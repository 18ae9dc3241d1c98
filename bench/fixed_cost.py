"""The default command's stages outside scoring, with scoring stubbed (issue 16, s7-setup).

    PYTHONPATH=.:cli python bench/fixed_cost.py [MODEL] [--profile]

`onnxprune.prune(model, calib, ratio=0.5, latency=False)` on bench/cost.py's model and 64
samples, with the scores replaced by seeded random numbers (the engine, the plan's probes,
the means pass, the candidates, the refit, the guard and verification run as in the command):
seconds per progress stage, the plan's measured stages, and digests of the kept units and
the shipped model's bytes (they must not change with a speed-up). `--profile`: cProfile,
the top 60 by cumulative time, the stats kept in /tmp/fixed_cost_MODEL.prof.
"""
from __future__ import annotations

import cProfile
import hashlib
import io
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cost  # noqa: E402
import onnxprune  # noqa: E402
from onnxprune.scoring import run as scoring_run  # noqa: E402
from onnxprune.scoring.shapley import GroupScores  # noqa: E402


def _random_scores(ctx, metric, gids, plan, progress):
    rng = np.random.default_rng(0)
    return {g: GroupScores(g, rng.random(ctx.analysis.group(g).units), method="shapley/truncated")
            for g in gids}


def main() -> None:
    name = next((a for a in sys.argv[1:] if not a.startswith("--")), "minilm_l6")
    scoring_run._score_groups = _random_scores
    path = cost.model_path(name)
    calib, _, _ = cost.data(name, onnx.load(str(path)), 64)
    marks: list[tuple[str, float]] = []

    def progress(event: dict) -> None:
        if not marks or marks[-1][0] != event.get("stage"):
            marks.append((event.get("stage"), time.perf_counter()))

    prof = cProfile.Profile() if "--profile" in sys.argv else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    res = onnxprune.prune(str(path), calib, ratio=0.5, latency=False, progress=progress)
    if prof:
        prof.disable()
    end = time.perf_counter()
    bounds = [("setup", t0), *marks, ("end", end)]
    for (stage, start), (_, stop) in zip(bounds, bounds[1:]):
        print(f"{stage:10s} {stop - start:7.2f}")
    print(f"total {end - t0:.2f} s, shipped {res.report['deploy'].get('chosen')}")
    print({k: round(v, 3) for k, v in res.report["plan"]["actual_s"].items()})
    keep = b"".join(np.asarray(res.keep[g]).tobytes() for g in sorted(res.keep))
    print("keep", hashlib.sha1(keep).hexdigest()[:8],
          "model", hashlib.sha1(res.model.SerializeToString()).hexdigest()[:8])
    if prof:
        prof.dump_stats(f"/tmp/fixed_cost_{name}.prof")
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(60)
        print(out.getvalue())


if __name__ == "__main__":
    main()
