"""Issue 15 research: does scoring each group at the depth of ITS allocated cut (depth-consistent
truncation) rank better than the truncated game at one depth d for every group?

    nice -n 10 python bench/depth.py --seeds 0 --out /tmp/depth_s0.json
    nice -n 10 python bench/depth.py --seeds 1 2 --only default shallow0.5 shallow0.25 trunc_all --out /tmp/d.json

d = truncation_depth(n, 1-(1-R)^0.5): DEPTH_MARGIN x the expected cut (the run used margin 1.0,
the default then). The chains are kept with each marginal's step t, so a group's score at any
depth d' <= d is the mean of its marginals with t <= d' (no new evaluation). Variants (scores fed
to prune() with `scores=`, the protocol of bench/peers.py, global allocation):

  default      every group at d (must equal score_model's scores: checked)
  consistent   global allocation -> each group rescored at its allocated cut (capped at d, at
               least 1), re-allocated; up to ITER rounds or until the depths repeat
  fresh        consistent's final depths, scored again by fresh chains at those depths (the same
               128 marginals per unit: the noise of the rescoring taken out; twice the cost)
  fresh_deep   fresh chains at consistent's final cut, uncapped (deeper than d where it is)
  shallowF     a fresh truncated run at depth ceil(F x d) for every group (F in --shallow)
  trunc_all    estimator="truncated" for every group (auto took exact for groups of <= 8 units)

Measured (2026-12-06, margin 1.0, study models, 128 calibration samples, test accuracy mean over
the five models; plain = --no-compensate --no-refit, refit = the default guarded deployment):

  seed 0 screen         plain 0.3  plain 0.5  refit 0.3  refit 0.5
  default               0.831      0.691      0.981      0.979
  consistent            0.798      0.667      0.980      0.979
  fresh                 0.814      0.591      0.982      0.980
  fresh_deep            0.745      0.464      0.982      0.979
  shallow0.5            0.858      0.711      0.982      0.980
  shallow0.25           0.895      0.668      0.983      0.980

  In the seed-0 runs 27 of 76 truncated groups were allocated a cut deeper than d (1.1-3.0x d)
  and 37 less than half of d; every run had at least one group past d (the widest). Scoring
  each group at its own cut ranked worse, most of all where the deep groups went deeper.

  3 seeds, small groups truncated too (trunc_all, then the default)
                        plain 0.3  plain 0.5  refit 0.3  refit 0.5
  default (exact small) 0.807      0.627      0.981      0.978
  trunc_all             0.839      0.651      0.981      0.978
  + shallow0.5          0.893      0.663      0.982      0.979
  + shallow0.25         0.934      0.654      0.983      0.980   (DEPTH_MARGIN 0.25 since)
  loo / taylor (docs/peers.json) 0.947 / 0.941, 0.673 / 0.666; refit 0.982, 0.979 / 0.978
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "models")]

from low_data import MODELS, Model, accuracy, log  # noqa: E402
from peers import CALIB, DEPLOYS, HOLDOUT, op_prune  # noqa: E402

from onnxprune.api import make_engine, score_model  # noqa: E402
from onnxprune.deploy.select import select  # noqa: E402
from onnxprune.scoring.estimators.truncated import planned_chains, truncation_depth  # noqa: E402
from onnxprune.scoring.estimators.game import open_game  # noqa: E402
from onnxprune.scoring.estimators.truncated import _marginals  # noqa: E402
from onnxprune.scoring.shapley import _GroupValue  # noqa: E402
from onnxprune.scoring.site_stats import site_means  # noqa: E402

ITER = 3


def chains(engine, gid: int, n: int, d: int, seed: int, budget: int):
    """(units, steps, marginals) flat, as estimate_truncated draws them (refine off)."""
    game = open_game(_GroupValue(engine, gid), n, budget, 256, cache=False)
    n_samples = len(game.v_full_ps)
    c = min(planned_chains(n, n_samples, d), game.remaining // d)
    rng = np.random.default_rng(seed)
    orders = rng.permuted(np.tile(np.arange(n), (c * n_samples, 1)), axis=1).reshape(c, n_samples, n)
    marg = _marginals(game, orders, d)  # [C, N, d]
    units = orders[:, :, :d]
    steps = np.broadcast_to(np.arange(1, d + 1), units.shape)
    return units.reshape(-1), steps.reshape(-1), marg.reshape(-1), game.evaluations


def rescore(ch, n: int, depth: int) -> np.ndarray:
    units, steps, marg = ch[:3]
    keep = steps <= depth
    count = np.bincount(units[keep], minlength=n)
    total = np.bincount(units[keep], marg[keep], minlength=n)
    mean = np.divide(total, count, out=np.zeros(n), where=count > 0)
    seen = count > 0
    return np.where(seen, mean, mean[seen].max() if seen.any() else 0.0)


def allocate(am, scores, ratio):
    keep = select(am.analysis, scores, ratio, target="params")
    return {g: len(scores[g]) - len(keep[g]) for g in scores}


def variants(m: Model, scoring, seed: int, means, budget: float, shallow, only=None) -> dict:
    """{variant: (scores, info)} for one model, seed, game and budget."""
    am, share = m.am, 1 - (1 - budget) ** 0.5
    t0 = time.perf_counter()
    base = score_model(am, scoring, metric="shapley", seed=seed, means=means, removal=share)
    base_s = time.perf_counter() - t0
    engine = make_engine(am, scoring, means=means)
    trunc = {g: s for g, s in base.items() if s.method == "shapley/truncated"}
    default = {g: np.asarray(s.values, dtype=np.float64) for g, s in base.items()}
    ch, depth, n = {}, {}, {}
    for g in trunc:
        n[g] = len(default[g])
        depth[g] = truncation_depth(n[g], share)
        ch[g] = chains(engine, g, n[g], depth[g], seed + g, 10**9)
        same = np.allclose(rescore(ch[g], n[g], depth[g]), default[g], rtol=0, atol=1e-9)
        assert same, f"{m.name} group {g}: chains differ from score_model's truncated scores"
    out = {"default": (default, {"depth": depth, "seconds": base_s})}
    want = lambda v: not only or v in only  # noqa: E731
    if want("trunc_all"):  # small groups too (not exact: the full game's values)
        ta = score_model(am, scoring, metric="shapley", estimator="truncated", seed=seed,
                         means=means, removal=share)
        out["trunc_all"] = ({g: np.asarray(s.values, dtype=np.float64) for g, s in ta.items()},
                            {"methods": sorted({s.method for s in ta.values()})})
    if not (want("consistent") or want("fresh") or want("fresh_deep") or
            any(want(f"shallow{f:g}") for f in shallow)):
        return out
    # consistent: rescore at the allocated cut, re-allocate
    cur, history, deeper = dict(depth), [dict(depth)], {}
    scores = dict(default)
    for it in range(ITER):
        cut = allocate(am, scores, budget)
        deeper = {g: cut[g] for g in trunc if cut[g] > depth[g]}
        new = {g: int(min(depth[g], max(1, cut[g]))) for g in trunc}
        if new == cur or new in history:
            break
        cur = new
        history.append(new)
        scores = {**default, **{g: rescore(ch[g], n[g], cur[g]) for g in trunc}}
    out["consistent"] = (scores, {"depth": cur, "iterations": len(history) - 1,
                                  "deeper_than_d": deeper, "cut": cut})
    if want("fresh"):  # fresh chains at consistent's depths
        fresh = dict(default)
        for g in trunc:
            fresh[g] = rescore(chains(engine, g, n[g], cur[g], seed + g + 1000, 10**9), n[g], cur[g])
        out["fresh"] = (fresh, {"depth": cur})
    if want("fresh_deep"):  # fresh chains at consistent's final cut, uncapped (deeper than d)
        deep_d = {g: int(min(n[g] - 1, max(1, cut[g], cur[g]))) for g in trunc}
        deep = dict(default)
        for g in trunc:
            deep[g] = rescore(chains(engine, g, n[g], deep_d[g], seed + g + 2000, 10**9), n[g], deep_d[g])
        out["fresh_deep"] = (deep, {"depth": deep_d})
    for f in [f for f in shallow if want(f"shallow{f:g}")]:
        d2 = {g: max(1, math.ceil(f * depth[g])) for g in trunc}
        sc = dict(default)
        for g in trunc:
            sc[g] = rescore(chains(engine, g, n[g], d2[g], seed + g, 10**9), n[g], d2[g])
        out[f"shallow{f:g}"] = (sc, {"depth": d2})
    return out


def run_model(name: str, seeds, budgets, shallow, deploys, only) -> list[dict]:
    m, rows = Model(name), []
    for seed in seeds:
        cal = m.calib(CALIB, seed, False)
        scoring, _ = cal.split(HOLDOUT, seed)
        for deploy in deploys:
            means = site_means(m.am.analysis, m.am.ident, scoring.inputs) if DEPLOYS[deploy][0] else None
            for b in budgets:
                for var, (scores, info) in variants(m, scoring, seed, means, b, shallow, only).items():
                    if only and var not in only:
                        continue
                    ratio, reached, res = op_prune(m, cal, scores, b, deploy, "global", seed)
                    acc = accuracy(res.model, m.test)
                    d = res.report["deploy"]
                    rows.append(dict(model=name, seed=seed, deploy=deploy, budget=b, variant=var,
                                     acc=acc, removed=reached, ratio=ratio,
                                     allocation=d.get("allocation"), chosen=d.get("chosen"),
                                     info=json.loads(json.dumps(info, default=str))))
                    log(f"{name:13s} s{seed} {deploy:7s} b={b} {var:12s} acc {acc:.3f} "
                        f"removed {reached:.3f} ({d.get('allocation')}, {d.get('chosen')}) "
                        f"{ {k: v for k, v in info.items() if k != 'seconds'} }")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.3, 0.5])
    ap.add_argument("--deploys", nargs="+", default=list(DEPLOYS), choices=list(DEPLOYS))
    ap.add_argument("--shallow", nargs="*", type=float, default=[0.25, 0.5])
    ap.add_argument("--only", nargs="*", default=None, help="variants to prune with")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = []
    for name in a.models:
        rows += run_model(name, a.seeds, a.budgets, a.shallow, a.deploys, a.only)
        Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
