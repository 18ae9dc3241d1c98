"""Issue 15: pruning to a budget. Global allocation (one ranking across groups) against the
uniform one (the same fraction from every group), for Shapley and l1, at a parameter budget,
with plain removal and with the default guarded deployment; and the game: `shapley` = the
persample estimator (full game), `truncated` = the truncated per-sample estimator (marginals
only on the coalitions a removal order visits down to a little past the cut).

    nice -n 5 python bench/budget.py                       # 5 models, ratios 0.3 0.5, seed 0
    python bench/budget.py --models cnn_digits --ratios 0.5  # one quick cell (~30 s)
    nice -n 5 python bench/budget.py --allocs guarded --out /tmp/trunc.jsonl  # the defaults only

Protocol = bench/low_data.py's: 128 unlabeled calibration samples (seed 0), prune()'s 25 %
hold-out (the guard), scores on the other 96, test accuracy on models/trained/*_test.npz.
Allocations per (model, metric, ratio, deployment):
  global    the global allocation alone (the guard's uniform fallback disabled)
  uniform   --uniform
  guarded   the default: global, with uniform at the same budget as the guard's fallback
Deployments: plain (--no-compensate --no-refit: units removed outright, the game scored on
the plain model) and default (compensation and refit guarded, the compensated game).
Writes one JSON line per record to --out (default /tmp/budget.jsonl) and prints tables.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import onnxprune  # noqa: E402
import onnxprune.pipeline as pipeline  # noqa: E402
from low_data import HOLDOUT, MODELS, Model, accuracy, log  # noqa: E402
from onnxprune.api import score_model  # noqa: E402
from onnxprune.deploy.select import DEFAULT_MIN_KEEP  # noqa: E402
from onnxprune.scoring.estimators import truncated as truncated_mod  # noqa: E402
from onnxprune.scoring.site_stats import site_means  # noqa: E402

DEPLOYS = {"plain": (False, False), "default": (True, True)}
_ONLY_GLOBAL = {"on": False}
_allocations = pipeline._allocations


def _patched(am, opts, scores, guarded):
    """prune()'s allocations, less the uniform fallback when the bench asks for 'global'."""
    keeps = _allocations(am, opts, scores, guarded)
    return {"global": keeps["global"]} if _ONLY_GLOBAL["on"] and "global" in keeps else keeps


pipeline._allocations = _patched


def scores_for(m: Model, scoring, metric: str, game: bool, ratio: float, seed: int
               ) -> tuple[dict, int]:
    """(scores per group, coalition evaluations spent). Metrics: l1 and the other heuristics;
    `shapley` = the persample estimator (the full game); `truncated` = the truncated per-sample
    estimator at the depth a params budget of `ratio` implies (pipeline._unit_share)."""
    means = site_means(m.am.analysis, m.am.ident, scoring.inputs) if game else None
    kw: dict = {}
    if metric == "shapley":
        kw = {"estimator": "persample"}
    elif metric == "truncated":
        metric, kw = "shapley", {"estimator": "truncated", "removal": 1 - (1 - ratio) ** 0.5}
    out = score_model(m.am, scoring, metric=metric, seed=seed, means=means, **kw)
    return ({g: np.asarray(s.values) for g, s in out.items()},
            sum(s.evaluations for s in out.values()))


def one(m: Model, cal, scores, ratio, deploy, allocation, seed, **extra) -> dict:
    compensate, refit = DEPLOYS[deploy]
    _ONLY_GLOBAL["on"] = allocation == "global"
    try:
        res = onnxprune.prune(m.am, cal, ratio=ratio, scores=scores, compensate=compensate,
                              refit=refit, seed=seed, holdout=HOLDOUT, latency=False,
                              uniform=allocation == "uniform", **extra)
    finally:
        _ONLY_GLOBAL["on"] = False
    d = res.report["deploy"]
    return {"acc": accuracy(res.model, m.test), "removed": res.report["removed"],
            "chosen": d.get("chosen"), "allocation": d.get("allocation")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--ratios", nargs="*", type=float, default=[0.3, 0.5])
    ap.add_argument("--metrics", nargs="*", default=["shapley", "l1", "truncated"])
    ap.add_argument("--allocs", nargs="*", default=["global", "uniform", "guarded"])
    ap.add_argument("--deploys", nargs="*", default=list(DEPLOYS))
    ap.add_argument("--min-keeps", nargs="*", type=float, default=[0.0, 0.1, 0.25])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--marginals", type=int, default=None,
                    help="truncated: per-unit marginal count (default: the library's)")
    ap.add_argument("--margin", type=float, default=None,
                    help="truncated: depth margin (default: the library's)")
    ap.add_argument("--out", default="/tmp/budget.jsonl")
    args = ap.parse_args()
    if args.marginals is not None:
        truncated_mod.DEFAULT_MARGINALS = args.marginals
    if args.margin is not None:
        truncated_mod.DEPTH_MARGIN = args.margin
    out = open(args.out, "a")
    for name in args.models:
        run_model(name, args, out)
    out.close()
    print(summary(args.out))


def run_model(name: str, args, out) -> None:
    """Every (metric, deployment, ratio, allocation) cell of one model, one JSON line each."""
    m = Model(name)
    cal = m.calib(128, args.seed, False)
    scoring, _ = cal.split(HOLDOUT, args.seed)
    for metric in args.metrics:
        for deploy in args.deploys:
            game = DEPLOYS[deploy][0]
            cache = None
            for ratio in args.ratios:
                t0 = time.perf_counter()
                if cache is None or metric == "truncated":
                    cache, evals = scores_for(m, scoring, metric, game, ratio, args.seed)
                secs = time.perf_counter() - t0
                for allocation in args.allocs:
                    for mk in (args.min_keeps if allocation == "global" else [DEFAULT_MIN_KEEP]):
                        rec = one(m, cal, cache, ratio, deploy, allocation, args.seed,
                                  min_keep=mk)
                        rec.update(model=name, metric=metric, deploy=deploy, ratio=ratio,
                                   alloc=allocation, min_keep=mk, score_seconds=secs,
                                   evaluations=evals, seed=args.seed,
                                   marginals=truncated_mod.DEFAULT_MARGINALS,
                                   margin=truncated_mod.DEPTH_MARGIN)
                        out.write(json.dumps(rec) + "\n")
                        out.flush()
                        log(name, metric, deploy, ratio, allocation, mk, f"{rec['acc']:.3f}",
                            rec["allocation"], rec["chosen"], f"evals {evals}")


def summary(path: str) -> str:
    """Mean test accuracy over models and mean evaluations, per (deploy, ratio, alloc, metric)."""
    cells: dict = {}
    for line in open(path):
        r = json.loads(line)
        if r.get("alloc") == "global" and r.get("min_keep") != DEFAULT_MIN_KEEP:
            continue
        knobs = f" m{r.get('marginals', 128)} x{r.get('margin', 1.5)}" if r["metric"] == "truncated" else ""
        key = (r["deploy"], r["ratio"], r["alloc"], r["metric"] + knobs)
        cells.setdefault(key, []).append((r["acc"], r.get("evaluations", 0), r["model"]))
    rows = ["| deploy | params budget | allocation | metric | models | mean test acc | mean evaluations |",
            "|---|---|---|---|---|---|---|"]
    for (dep, ratio, alloc, metric), v in sorted(cells.items()):
        acc, ev = np.mean([a for a, _, _ in v]), np.mean([e for _, e, _ in v])
        rows.append(f"| {dep} | {ratio} | {alloc} | {metric} | {len(v)} | {acc:.3f} | {ev:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
