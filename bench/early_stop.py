"""Early stopping of the truncated chains (issue 16): evaluations saved and the cut's agreement
with the long-run reference, per stopping target.

    PYTHONPATH=.:cli python bench/early_stop.py [--models digits_cnn resnet_mnist mobilenetv2 c2f bert_tiny]
        [--targets 0 0.01 0.02 0.03] [--seeds 3]

Same game and measure as bench/agreement.py and bench/cost.py (the command's 48 scoring samples,
the mean-compensated game, groups of more than 8 units, the truncated game at the depth of a
params budget of 0.5, agreement of the keep/remove decision at each group's cut), against
bench/cost.py's cached 20x truncated reference (`cost_ref_*_truncated_*.npz`, seed 10000 + group).
Per target (`stop_share`: a group stops after a round once its expected wrong-side count is
below target x its units; 0 = the planned chains, HEAD's default): mean evaluations, agreement
(mean, min..max over seeds), the estimator's own E[wrong side] summed over groups, and the
groups that stopped early (summed over seeds).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from agreement import setup  # noqa: E402
from cost import SHARE, agreement, data, reference  # noqa: E402
from onnxprune.scoring import shapley  # noqa: E402
from onnxprune.scoring.estimators import estimate_truncated, truncated, truncation_depth  # noqa: E402


def run(engine, g, seed: int, **kw):
    # wrong side counted at the cut, as prune() counts it (shapley_group), not at the depth
    return estimate_truncated(shapley._GroupValue(engine, g.id), g.units, budget=10**9,
                              depth=truncation_depth(g.units, SHARE), seed=seed, batch=256,
                              cut=truncation_depth(g.units, SHARE, margin=1.0), **kw)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+",
                    default=["digits_cnn", "resnet_mnist", "mobilenetv2", "c2f", "bert_tiny"])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.0, 0.01, 0.02, 0.03])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ref-mult", type=int, default=20)
    ap.add_argument("--stop-rows", type=int, nargs="+", default=[truncated.STOP_ROWS],
                    help="rows per stop check (truncated.STOP_ROWS; 1000000000: quarters only)")
    args = ap.parse_args()
    print("| model | units (groups) | stop_share / STOP_ROWS | evaluations | agree vs ref (mean, min..max) "
          "| E[wrong side] | groups stopped early |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        path, engine, groups = setup(name)
        calib, _, _ = data(name, onnx.load(str(path)), 64)
        ref = reference(name, path, calib, args.ref_mult, "truncated")
        ref = {g.id: ref[g.id] for g in groups}
        units = sum(g.units for g in groups)
        for target, rows in [(t, r) for t in args.targets for r in args.stop_rows]:
            truncated.STOP_ROWS = rows
            agree, evals, wrong, stopped = [], [], [], 0
            for seed in range(args.seeds):
                ests = {g.id: run(engine, g, seed + g.id, stop_share=target) for g in groups}
                agree.append(agreement({k: e.values for k, e in ests.items()}, ref, SHARE))
                evals.append(sum(e.evaluations for e in ests.values()))
                wrong.append(sum(e.info["wrong_side"] for e in ests.values()))
                stopped += sum(e.info["stopped"] == "confident" for e in ests.values())
            print(f"| {name} | {units} ({len(groups)}) | {target:g} / {rows} | {np.mean(evals):.0f} | "
                  f"{np.mean(agree):.3f} ({min(agree):.3f}..{max(agree):.3f}) | "
                  f"{np.mean(wrong):.1f} | {stopped} of {len(groups) * args.seeds} |", flush=True)


if __name__ == "__main__":
    main()
