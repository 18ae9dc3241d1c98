"""How often the truncated estimator's cut agrees with a long run of the same game, per
design, and how often two long runs agree with each other (the ceiling).

    PYTHONPATH=.:cli python bench/agreement.py [--models digits_cnn resnet_mnist c2f bert_tiny]
        [--ref-mult 20] [--seeds 3]

Per model: the command's scoring samples (48 of 64) and mean-compensated game, as
bench/cost.py builds them; per group of more than 8 units the truncated game at the depth of
a params budget of 0.5 (1-0.5^0.5 of the units). Two references at ref-mult x the default
marginal count (seeds A and B, cached in bench/.cache); each design at the default marginal
count on `--seeds` seeds, agreement (bench/cost.py's measure: the share of units whose
keep/remove decision at the cut agrees) against reference A and against the mean of A and B
(a 2 x ref-mult run), its mean evaluations and its
own expected number of units on the wrong side (summed over groups).

`--allocation global`: the decision the default command makes instead of a cut in every
group: prune()'s global allocation (deploy/select.select, the default floor, no rounding) of
a params budget of 0.5 over these groups, from the design's scores and from the reference's
alike; agreement is over the same units.
"""
from __future__ import annotations

import argparse
import hashlib
from functools import partial
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import onnxprune  # noqa: E402
from cost import CACHE, SHARE, agreement, data, model_path  # noqa: E402
from onnxprune.deploy.select import select  # noqa: E402
from onnxprune.api import as_calibration, make_engine  # noqa: E402
from onnxprune.pipeline import split_samples  # noqa: E402
from onnxprune.scoring import shapley  # noqa: E402
from onnxprune.scoring.estimators import DEFAULT_MARGINALS, estimate_truncated, truncation_depth  # noqa: E402
from onnxprune.scoring.estimators import truncated as truncated_mod  # noqa: E402

DESIGNS = {"chains": {},  # the default
           "refine.5": dict(refine=0.5),
           "refine.7": dict(refine=0.7),
           "refine.7 nostop": dict(refine=0.7, stop_wrong=0.0)}


def setup(name: str):
    path = model_path(name)
    calib, _, _ = data(name, onnx.load(str(path)), 64)
    am = onnxprune.analyze_model(str(path))
    scoring, _, _ = split_samples(as_calibration(calib, am.proto), 0.25, 0)
    from onnxprune.scoring.site_stats import site_means
    means = site_means(am.analysis, am.ident, scoring.inputs, device="cpu")
    engine = make_engine(am, scoring, means=means)
    groups = [g for g in am.analysis.prunable if g.units > 8]
    return path, engine, groups


def run(engine, g, marginals: int, seed: int, **kw):
    return estimate_truncated(shapley._GroupValue(engine, g.id), g.units, budget=10**9,
                              depth=truncation_depth(g.units, SHARE), marginals=marginals,
                              seed=seed, batch=256, **kw)


def references(name, path, engine, groups, mult):
    out = []
    for tag, base in (("A", 10_000), ("B", 20_000)):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        game = "" if truncated_mod.DEPTH_MARGIN == 1.0 else f"_m{truncated_mod.DEPTH_MARGIN:g}"
        file = CACHE / f"agree_ref_{name}_{mult}x_{tag}{game}_{digest}.npz"  # per game depth
        if not file.exists():
            vals = {str(g.id): run(engine, g, mult * DEFAULT_MARGINALS, base + g.id).values
                    for g in groups}
            CACHE.mkdir(parents=True, exist_ok=True)
            np.savez(file, **vals)
        out.append({int(k): v for k, v in np.load(file).items()})
    return out


def _global(analysis, scores: dict, ref: dict, share: float) -> float:
    return global_agreement(analysis, scores, ref)


def global_agreement(analysis, scores: dict, ref: dict, ratio: float = 0.5,
                     target: str = "params") -> float:
    """Share of units whose keep/remove decision agrees when both score sets go through the
    default global allocation of a `target` budget of `ratio` over these groups."""
    mine, theirs = (select(analysis, s, ratio, target=target) for s in (scores, ref))
    same = total = 0
    for gid, r in ref.items():
        a, b = np.zeros(len(r), bool), np.zeros(len(r), bool)
        a[mine[gid]], b[theirs[gid]] = True, True
        same, total = same + int((a == b).sum()), total + len(r)
    return same / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["digits_cnn", "resnet_mnist", "c2f", "bert_tiny"])
    ap.add_argument("--ref-mult", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS))
    ap.add_argument("--marginals", type=int, nargs="+", default=[DEFAULT_MARGINALS])
    ap.add_argument("--allocation", nargs="+", choices=["cut", "global"], default=["cut"],
                    help="cut: each group at its own cut (default); global: prune()'s allocation; "
                         "both: a row each, from the same runs")
    args = ap.parse_args()
    print("| model | units | decision | design | marginals | evaluations | agree vs ref A (mean, min..max over seeds) | vs mean(A, B) | E[wrong side] |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        path, engine, groups = setup(name)
        ref_a, ref_b = references(name, path, engine, groups, args.ref_mult)
        measures = {"cut": agreement, "global": partial(_global, engine.analysis)}
        measures = {k: measures[k] for k in args.allocation}
        ref_ab = {k: 0.5 * (ref_a[k] + ref_b[k]) for k in ref_a}  # a 2 x ref-mult run
        units = sum(g.units for g in groups)
        for how, measure in measures.items():
            print(f"| {name} | {units} | {how} | ref B vs ref A ({args.ref_mult}x) | - | - | "
                  f"{measure(ref_b, ref_a, SHARE):.3f} | | |", flush=True)
        for m in args.marginals:
            for design in args.designs:
                runs = [{g.id: run(engine, g, m, seed + g.id, **DESIGNS[design]) for g in groups}
                        for seed in range(args.seeds)]
                evals = [sum(e.evaluations for e in ests.values()) for ests in runs]
                wrong = [sum(e.info["wrong_side"] for e in ests.values()) for ests in runs]
                for how, measure in measures.items():
                    agree = [measure({k: e.values for k, e in ests.items()}, ref_a, SHARE) for ests in runs]
                    agree2 = [measure({k: e.values for k, e in ests.items()}, ref_ab, SHARE) for ests in runs]
                    print(f"| {name} | {units} | {how} | {design} | {m} | {np.mean(evals):.0f} | "
                          f"{np.mean(agree):.3f} ({min(agree):.3f}..{max(agree):.3f}) | "
                          f"{np.mean(agree2):.3f} | {np.mean(wrong):.1f} |", flush=True)

if __name__ == "__main__":
    main()
