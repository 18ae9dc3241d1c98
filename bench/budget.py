"""Issue 15: pruning to a budget. Global allocation (one ranking across groups) against the
uniform one (the same fraction from every group), for Shapley and l1, at a parameter budget,
with plain removal and with the default guarded deployment; plus one game change for plain
removal (a truncated Shapley estimate: marginals only on coalitions at least the kept size).

    nice -n 5 python bench/budget.py                       # 5 models, ratios 0.3 0.5, seed 0
    python bench/budget.py --models cnn_digits --ratios 0.5  # one quick cell (~30 s)

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
import onnxprune.api as api  # noqa: E402
from low_data import HOLDOUT, MODELS, Model, accuracy, log  # noqa: E402
from onnxprune.api import make_engine, score_model  # noqa: E402
from onnxprune.scoring.site_stats import site_means  # noqa: E402

DEPLOYS = {"plain": (False, False), "default": (True, True)}
_ONLY_GLOBAL = {"on": False}
_allocations = api._allocations


def _patched(am, opts, scores, guarded):
    """prune()'s allocations, less the uniform fallback when the bench asks for 'global'."""
    keeps = _allocations(am, opts, scores, guarded)
    return {"global": keeps["global"]} if _ONLY_GLOBAL["on"] and "global" in keeps else keeps


api._allocations = _patched


def truncated_shapley(engine, gid: int, units: int, kept: int, seed: int,
                      per_unit: int = 10) -> np.ndarray:
    """Shapley restricted to the coalitions pruning visits: random removal orders from the
    full group down to `kept` units; a unit's score is the mean of v(S) - v(S - unit) over the
    steps that removed it (uniform over the sizes n..kept+1). About `per_unit` x units
    evaluations, like the default budget."""
    rng = np.random.default_rng([seed, gid])
    depth = max(1, units - kept)
    chains = max(2, -(-per_unit * units // depth))
    orders = np.stack([rng.permutation(units) for _ in range(chains)])
    masks = np.ones((chains, depth + 1, units), dtype=bool)
    for d in range(1, depth + 1):
        masks[:, d] = masks[:, d - 1]
        masks[np.arange(chains), d, orders[:, d - 1]] = False
    values = engine.values(gid, masks.reshape(-1, units)).mean(axis=1).reshape(chains, depth + 1)
    total, count = np.zeros(units), np.zeros(units)
    np.add.at(total, orders[:, :depth], values[:, :-1] - values[:, 1:])
    np.add.at(count, orders[:, :depth], 1)
    out = np.divide(total, count, out=np.zeros(units), where=count > 0)
    out[count == 0] = out[count > 0].max() if (count > 0).any() else 0.0  # never seen: keep
    return out


def scores_for(m: Model, scoring, metric: str, game: bool, ratio: float, seed: int) -> dict:
    means = site_means(m.am.analysis, m.am.ident, scoring.inputs) if game else None
    if metric != "shapley_trunc":
        out = score_model(m.am, scoring, metric=metric, seed=seed, means=means)
        return {g: np.asarray(s.values) for g, s in out.items()}
    engine = make_engine(m.am, scoring, means=means)
    unit_ratio = 1 - (1 - ratio) ** 0.5  # a params budget R takes about this of each width
    return {g.id: truncated_shapley(engine, g.id, g.units,
                                    max(1, int(round(g.units * (1 - unit_ratio)))), seed)
            for g in m.am.analysis.prunable}


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
    ap.add_argument("--metrics", nargs="*", default=["shapley", "l1", "shapley_trunc"])
    ap.add_argument("--min-keeps", nargs="*", type=float, default=[0.0, 0.1, 0.25])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/budget.jsonl")
    args = ap.parse_args()
    out = open(args.out, "a")
    for name in args.models:
        m = Model(name)
        cal = m.calib(128, args.seed, False)
        scoring, _ = cal.split(HOLDOUT, args.seed)
        for metric in args.metrics:
            for deploy in DEPLOYS:
                if metric == "shapley_trunc" and deploy != "plain":
                    continue
                game = DEPLOYS[deploy][0]
                cache = None
                for ratio in args.ratios:
                    t0 = time.perf_counter()
                    if cache is None or metric == "shapley_trunc":
                        cache = scores_for(m, scoring, metric, game, ratio, args.seed)
                    secs = time.perf_counter() - t0
                    for allocation in ("global", "uniform", "guarded"):
                        for mk in (args.min_keeps if allocation == "global" else [0.1]):
                            rec = one(m, cal, cache, ratio, deploy, allocation, args.seed,
                                      min_keep=mk)
                            rec.update(model=name, metric=metric, deploy=deploy, ratio=ratio,
                                       alloc=allocation, min_keep=mk, score_seconds=secs)
                            out.write(json.dumps(rec) + "\n")
                            out.flush()
                            log(name, metric, deploy, ratio, allocation, mk, f"{rec['acc']:.3f}",
                                rec["allocation"], rec["chosen"])
    out.close()


if __name__ == "__main__":
    main()
