"""Benchmark of scoring on Ray workers (issue 18): speed-up against workers, per-task costs,
and a model of the wall time on more workers built from them.

    .venv/bin/python bench/distributed.py [--model resnet_basic] [--samples 32] [--workers 1 2] [--repeats 2]

One local Ray instance (num_cpus = this machine's cores) serves every run. Runs are
interleaved (local, 1 worker, 2 workers, local, ...; docs/design.md, Measuring) and medians
reported. `local` is the in-process path (no Ray, ONNX Runtime on all cores); a worker
gets cores / workers ORT threads. Per run:

  setup     starting the actors and building their engines (analysis, session, reference
            pass), all workers in parallel; the model and calibration go to the object store
            once before (`shared` bytes)
  wall      first group handed out -> last group gathered
  compute   sum over groups of the seconds the worker spent scoring it
  overhead  per task: (workers x wall - compute) / tasks: dispatch, transfers, and idle
            workers at the end (the largest-first order bounds that by one group)

The scaling model (printed at the end) takes the measured per-group compute times c_g,
the per-task overhead o and the setup s and predicts
    T(W) = s + LPT_W({c_g + o})    (largest-first greedy over W workers)
which is bounded below by max_g c_g: the work unit is a group.
"""
from __future__ import annotations

import argparse
import os
import pickle
import statistics
import time
from pathlib import Path

import numpy as np

from onnxprune.api import analyze_model, score_model
from onnxprune.calib import Calibration
from onnxprune.options import ScoreOptions
from onnxprune.scoring.distributed import RunStats, score_distributed
from onnxprune.scoring.run import score_context

ROOT = Path(__file__).resolve().parent.parent


def calibration(am, n: int) -> Calibration:
    rng = np.random.default_rng(0)
    return Calibration({t.name: rng.standard_normal([n, *t.shape[1:]]).astype(np.float32)
                        for t in am.graph.inputs})


def run_local(am, data, seed: int) -> dict:
    t0 = time.perf_counter()
    scores = score_model(am, data, seed=seed)
    total = time.perf_counter() - t0
    compute = {g: s.seconds for g, s in scores.items()}
    setup = total - sum(compute.values())  # the engine: session, reference pass, tuning
    return {"wall": total - setup, "setup": setup, "total": total, "scores": scores,
            "compute": compute}


def run_ray(am, data, seed: int, workers: int) -> dict:
    opts = ScoreOptions(seed=seed, workers=workers).validate()
    stats = RunStats()
    gids = [g.id for g in am.analysis.prunable]
    scores = score_distributed(am, data, opts, gids, context=score_context, stats=stats)
    tasks = stats.tasks
    return {"wall": stats.wall_s, "setup": stats.setup_s, "total": stats.wall_s + stats.setup_s,
            "scores": scores, "stats": stats,
            "compute": {t["gid"]: t["seconds"] for t in tasks},
            "evals": statistics.mean(t["evaluations"] for t in tasks),
            "result_bytes": statistics.mean(t["result_bytes"] for t in tasks),
            "arg_bytes": len(pickle.dumps(gids[0])),
            "overhead": (workers * stats.wall_s - sum(t["seconds"] for t in tasks)) / len(tasks)}


def lpt(costs: list[float], workers: int) -> float:
    """Makespan of largest-first greedy assignment (what the driver does)."""
    loads = [0.0] * workers
    for c in sorted(costs, reverse=True):
        loads[loads.index(min(loads))] += c
    return max(loads)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet_basic")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    import ray
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    am = analyze_model(ROOT / "models" / "zoo" / f"{args.model}.onnx")
    data = calibration(am, args.samples)
    print(f"{args.model}: groups {[g.units for g in am.analysis.prunable]} units, "
          f"{args.samples} samples, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    runs: dict[str, list[dict]] = {"local": [], **{f"{w}w": [] for w in args.workers}}
    for _ in range(args.repeats):
        runs["local"].append(run_local(am, data, 0))
        for w in args.workers:
            runs[f"{w}w"].append(run_ray(am, data, 0, w))
    ref = runs["local"][0]["scores"]
    same = all(np.array_equal(r["scores"][g].values, ref[g].values)
               for rs in runs.values() for r in rs for g in ref)
    report(runs, args.workers, same)
    model(runs, args.workers)
    ray.shutdown()


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(runs: dict[str, list[dict]], workers: list[int], same: bool) -> None:
    base = med(runs["local"], "total")
    one = med(runs[f"{workers[0]}w"], "wall")
    print(f"\nscores identical across local and every worker count: {same}")
    print("\n| run | setup s | scoring wall s | total s | total speed-up vs local "
          "| scoring speed-up vs 1 worker | evaluations/task | compute s/task | overhead s/task "
          "| result bytes/task |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        w = 0 if name == "local" else int(name[:-1])
        compute = statistics.median(sum(r["compute"].values()) / len(r["compute"]) for r in rs)
        label = "local (no Ray)" if not w else f"{w} worker{'s' if w > 1 else ''}"
        ray_cols = (f"{one / med(rs, 'wall'):.2f} | {med(rs, 'evals'):.0f} | {compute:.2f} | "
                    f"{med(rs, 'overhead'):.3f} | {med(rs, 'result_bytes'):.0f}") if w else \
            f"- | - | {compute:.2f} | - | -"
        print(f"| {label} | {med(rs, 'setup'):.2f} | {med(rs, 'wall'):.2f} | "
              f"{med(rs, 'total'):.2f} | {base / med(rs, 'total'):.2f} | {ray_cols} |")
    s = runs[f"{workers[0]}w"][0]["stats"]
    print(f"\nshared once per node (object store): {s.shared_bytes / 1e6:.2f} MB; "
          f"task argument: {runs[f'{workers[0]}w'][0]['arg_bytes']} bytes")


def model(runs: dict[str, list[dict]], workers: list[int]) -> None:
    """T(W) from the 1-worker run's per-group compute, overhead and setup."""
    rs = runs[f"{workers[0]}w"]
    gids = list(rs[0]["compute"])
    costs = [statistics.median(r["compute"][g] for r in rs) for g in gids]
    o = max(0.0, med(rs, "overhead"))
    s = med(rs, "setup")
    print(f"\nmodel: T(W) = setup {s:.2f} s + LPT over W workers of (c_g + {o:.3f} s); "
          f"c_g (1 worker) = {', '.join(f'{c:.2f}' for c in costs)}")
    print("| W | predicted wall s (scoring) | speed-up vs 1 | bound: largest group |")
    print("|---|---|---|---|")
    t1 = lpt([c + o for c in costs], 1)
    for w in (1, 2, 4, 8):
        t = lpt([c + o for c in costs], w)
        print(f"| {w} | {t:.2f} | {t1 / t:.2f} | {max(costs):.2f} |")


if __name__ == "__main__":
    main()
