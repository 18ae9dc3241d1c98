"""Does a measured loss curve per group fix the global allocation where scores misjudge it?

    python bench/curves.py MODEL [--report RUN.json] [--ratio 0.3] [--target params]
        [--data DIR] [--fractions 0.05,0.1,0.2,0.3,0.4,0.5,0.6] [--plain]

The global allocation trades groups off by their units' scores, which the truncated game
measures a quarter of the way to the expected cut, each group with the others intact. Where
the allocation then cuts a group far deeper, the scores may misjudge what the deep cut costs.
This measures, for every scored group of a real model's run (its report's scores), the value
lost when the group alone loses its k lowest-scored units, at several fractions k / n, on
the run's scoring samples (the same split as the command), and rescales each group's scores
so that their running sum along the group's order follows that curve (the order within a
group is the report's). Then it ships the *global* allocation only (no uniform fallback),
once with the report's scores and once with the rescaled ones, the rest of the command
default, and measures the model's task metric on its evaluation set (bench/real/specs.py).
An experiment for issue 15 (ppocr_rec at params 0.3), not a default.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import real_models as rm  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune import pipeline  # noqa: E402
from onnxprune.api import as_calibration  # noqa: E402
from onnxprune.deploy.select import _order  # noqa: E402
from onnxprune.model import analyze_model  # noqa: E402
from onnxprune.scoring.run import make_engine  # noqa: E402
from onnxprune.scoring.site_stats import means_and_activations  # noqa: E402


def curves(am, scoring, scores: dict[int, np.ndarray], fractions: list[float],
           plain: bool = False) -> dict[int, list]:
    """Per group: [(k, mean value lost)] removing its k lowest-scored units, others intact,
    in the scored game (removed channels at their calibration means; `plain`: at zero)."""
    means = None if plain else means_and_activations(am.analysis, am.ident, scoring.inputs,
                                                     device="cpu")[0]
    engine = make_engine(am, scoring, means=means)
    out = {}
    for gid, s in scores.items():
        n = len(s)
        order = _order(s)
        ks = sorted({min(n - 1, max(1, int(round(f * n)))) for f in fractions})
        masks = np.ones((len(ks) + 1, n), dtype=bool)
        for row, k in enumerate(ks, 1):
            masks[row, order[:k]] = False
        v = engine.values(gid, masks).mean(axis=1)
        out[gid] = [(0, 0.0)] + [(k, float(v[0] - v[i])) for i, k in enumerate(ks, 1)]
    return out


def rescaled(scores: np.ndarray, curve: list) -> np.ndarray:
    """Scores whose running sum along the group's order follows the curve (piecewise: each
    segment's loss spread over its units in proportion to their scores, shifted positive;
    a decreasing segment counts as flat); past the last point, the last segment's rate.
    The order within the group is kept (a tiny rank term breaks ties)."""
    s = np.asarray(scores, dtype=np.float64)
    n, order = len(s), _order(s)
    pos = s[order] - min(0.0, float(s.min())) + 1e-12
    out = np.empty(n)
    level, rate = 0.0, 0.0
    for (k0, _), (k1, l1) in zip(curve, curve[1:]):
        gain = max(l1 - level, 0.0)
        seg = pos[k0:k1]
        out[k0:k1] = gain * seg / seg.sum()
        level, rate = max(level, l1), gain / max(k1 - k0, 1)
    last = curve[-1][0]
    out[last:] = rate * pos[last:] / max(pos[last:].mean(), 1e-12)
    out = np.maximum.accumulate(out + 1e-12 * np.arange(n))  # keep the order
    result = np.empty(n)
    result[order] = out
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--report", default=None)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--target", default="params")
    ap.add_argument("--data", default=str(rm.DATA))
    ap.add_argument("--fractions", default="0.05,0.1,0.2,0.3,0.4,0.5,0.6")
    ap.add_argument("--plain", action="store_true", help="curves with removed channels at zero")
    args = ap.parse_args()
    rm.DATA = Path(args.data)
    spec = rm.SPECS[args.model]
    path = rm.DATA / args.model / "model.onnx"
    report = args.report or rm.RUNS / f"{args.model}_shapley_r{args.ratio}_target_{args.target}.json"
    rep = json.loads(Path(report).read_text())
    scores = {g["id"]: np.asarray(g["scores"]) for g in rep["groups"] if g.get("scores")}
    seed = rep.get("seed", 0)
    am = analyze_model(str(path))
    calib = as_calibration(str(rm.DATA / args.model / "calib.npz"), am.proto)
    scoring, _, _ = pipeline.split_samples(calib, 0.25, seed)
    t0 = time.perf_counter()
    fr = [float(f) for f in args.fractions.split(",")]
    cv = curves(am, scoring, scores, fr, args.plain)
    print(f"curves: {len(cv)} groups, {time.perf_counter() - t0:.0f} s", flush=True)
    for gid, c in cv.items():
        ranked = np.sort(scores[gid])
        pred = [float(ranked[:k].sum()) for k, _ in c]
        print(f"  group {gid} ({len(scores[gid])}): lost " +
              " ".join(f"{k}:{l:.4f}/{p:.4f}" for (k, l), p in zip(c, pred)), flush=True)
    variants = {"report": scores, "curves": {g: rescaled(scores[g], cv[g]) for g in scores}}
    ev = rm.load_eval(spec)
    ref = rm.predict(spec, path, ev)
    out = Path(tempfile.mkdtemp(prefix="curves-"))
    only_global = pipeline._allocations

    def global_only(am_, opts, sc, guarded):
        return {"global": only_global(am_, opts, sc, guarded)["global"]}

    pipeline._allocations = global_only
    for name, sc in variants.items():
        res = onnxprune.prune(str(path), str(rm.DATA / args.model / "calib.npz"), ratio=args.ratio,
                              target=args.target, scores=sc, latency=False, seed=seed)
        model = out / f"{name}.onnx"
        res.save(model)
        task = spec.score(rm.predict(spec, model, ev), ref, ev)
        rem = res.report.get("removed", {})
        print(f"{name}: task {task.get('task'):.3f} agree {task.get('agree'):.3f} removed "
              f"params {rem.get('params')} macs {rem.get('macs')} shipped "
              f"{res.report['deploy']['chosen']}", flush=True)


if __name__ == "__main__":
    main()
