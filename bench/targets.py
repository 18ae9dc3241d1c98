"""Issue 15: which `--target` should be the default? The default command (Shapley scores,
global allocation with the uniform guard, guarded compensation and refit) at `--target
units|params|macs` and ratios 0.3 and 0.5 on the study's five models, 3 seeds, no fine-tuning.

    nice -n 10 python bench/targets.py                    # the full grid (writes docs/targets.json)
    python bench/targets.py --models cnn_digits --seeds 0  # one model (~1 min)
    python bench/targets.py --from-json                   # the table only

Per (target, ratio): mean over models and seeds of the test accuracy kept (pruned / unpruned,
models/trained/*_test.npz in ORT), the whole model's weight parameters and MACs removed
(Conv/Gemm/MatMul weight elements and onnxprune's MAC count, as bench/peers.py counts them)
and, on seed 0, the latency ratio the report measures (prune(latency=True): median time of
the original over the pruned model's on a batch of 32, interleaved; on shared CPUs, noisy).
Protocol = bench/peers.py's for onnxprune: 128 calibration samples drawn with the seed,
Shapley scores on prune()'s 75 % scoring split as prune() computes them (peers.default_scores,
the truncation depth of each target: pipeline._unit_share, the same for params and macs, so those
two targets share scores) passed with `scores=`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import onnxprune  # noqa: E402
from low_data import HOLDOUT, MODELS, Model, accuracy, log  # noqa: E402
from onnxprune.scoring.site_stats import site_means  # noqa: E402
from peers import CALIB, default_scores, git_commit, onnx_macs, weight_params  # noqa: E402

TARGETS = ("units", "params", "macs")
RATIOS = (0.3, 0.5)
SEEDS = (0, 1, 2)


def model_rows(m: Model, seed: int, targets, ratios) -> list[dict]:
    cal = m.calib(CALIB, seed, False)
    scoring, _ = cal.split(HOLDOUT, seed)
    means = site_means(m.am.analysis, m.am.ident, scoring.inputs)
    base = {"acc": accuracy(m.proto, m.test), "params": m.w0, "macs": onnx_macs(m.proto)}
    cache: dict[float, dict] = {}
    rows = []
    for r in ratios:
        for target in targets:
            # the depth prune() would give this target: units -> r, params/macs -> 1-(1-r)^0.5
            share = r if target == "units" else 1 - (1 - r) ** 0.5
            if share not in cache:  # default_scores maps a params budget b to 1-(1-b)^0.5
                cache[share] = default_scores(m, scoring, seed, means, 1 - (1 - share) ** 2)[0]
            t0 = time.perf_counter()
            res = onnxprune.prune(m.am, cal, ratio=r, target=target, scores=cache[share],
                                  seed=seed, holdout=HOLDOUT, latency=seed == 0)
            lat = (res.report.get("verification") or {}).get("latency")
            d = res.report["deploy"]
            rows.append(dict(
                model=m.name, seed=seed, target=target, ratio=r,
                acc=accuracy(res.model, m.test), acc0=base["acc"],
                params_removed=1 - weight_params(res.model) / base["params"],
                macs_removed=1 - onnx_macs(res.model) / base["macs"],
                prunable_removed=res.report["removed"],
                speedup=lat["speedup"]["median"] if lat else None,
                chosen=d.get("chosen"), allocation=d.get("allocation"),
                seconds=time.perf_counter() - t0))
            x = rows[-1]
            log(f"{m.name:13s} seed {seed} {target:6s} {r}: acc {x['acc']:.3f} params "
                f"{x['params_removed']:.3f} macs {x['macs_removed']:.3f} speedup {x['speedup']}")
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| target | ratio | test accuracy kept (mean) | worst model | params removed | "
             "MACs removed | speed-up, seed 0 (median) |", "|---|---|---|---|---|---|---|"]
    for r in sorted({x["ratio"] for x in rows}):
        for t in TARGETS:
            sel = [x for x in rows if x["target"] == t and x["ratio"] == r]
            if not sel:
                continue
            kept = {}
            for x in sel:
                kept.setdefault(x["model"], []).append(x["acc"] / x["acc0"])
            worst = min(kept, key=lambda k: np.mean(kept[k]))
            sp = [x["speedup"] for x in sel if x["speedup"] is not None]
            lines.append(
                f"| {t} | {r} | {np.mean([x['acc'] / x['acc0'] for x in sel]):.3f} | "
                f"{worst} {np.mean(kept[worst]):.3f} | "
                f"{np.mean([x['params_removed'] for x in sel]):.3f} | "
                f"{np.mean([x['macs_removed'] for x in sel]):.3f} | "
                + (f"{np.median(sp):.2f}x |" if sp else "- |"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--from-json", action="store_true")
    ap.add_argument("--out-json", default=str(ROOT / "docs" / "targets.json"))
    args = ap.parse_args(argv)
    out = Path(args.out_json)
    if args.from_json:
        rows = json.loads(out.read_text())["records"]
    else:
        rows, t0 = [], time.perf_counter()
        for seed in args.seeds:
            for name in args.models:
                rows += model_rows(Model(name), seed, args.targets, args.ratios)
                meta = dict(command="python bench/targets.py " + " ".join(sys.argv[1:]),
                            onnxprune_commit=git_commit(), calib=CALIB, holdout=HOLDOUT,
                            minutes=round((time.perf_counter() - t0) / 60, 1))
                out.write_text(json.dumps({"meta": meta, "records": rows}, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
