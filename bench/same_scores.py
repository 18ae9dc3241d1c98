"""Same scores, other allocation: is a real model's loss the ranking or the allocation?

    python bench/same_scores.py MODEL METRIC [--ratio 0.3] [--target params] [--variants global,uniform]
        [--data DIR]

Reads the report bench/real_models.py saved for the run (bench/.cache/runs/
MODEL_METRIC_rR_target_T.json), turns its per-group scores into a `--scores` file, and runs
the command again with those scores under each allocation (no scoring), then the model's task
metric on its evaluation set (bench/real/specs.py). Session 11: ppocr_rec at params 0.3.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import real_models as rm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("metric")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--target", default="params")
    ap.add_argument("--variants", default="global,uniform")
    ap.add_argument("--data", default=str(rm.DATA))
    args = ap.parse_args()
    rm.DATA = Path(args.data)
    spec = rm.SPECS[args.model]
    model, calib = rm.DATA / args.model / "model.onnx", rm.DATA / args.model / "calib.npz"
    ev = rm.load_eval(spec)
    ref = rm.predict(spec, model, ev)
    rep = json.loads((rm.RUNS / f"{args.model}_{args.metric}_r{args.ratio}_target_{args.target}.json").read_text())
    out = Path(tempfile.mkdtemp(prefix="same-scores-"))
    scores = out / "scores.json"
    scores.write_text(json.dumps({"metric": args.metric, "groups": [
        {"group": g["id"], "scores": g["scores"]} for g in rep["groups"] if g.get("scores")]}))
    env = dict(os.environ, PYTHONPATH=f"{HERE.parent}{os.pathsep}{HERE.parent / 'cli'}")
    for variant in args.variants.split(","):
        pruned = out / f"{variant}.onnx"
        cmd = [sys.executable, "-m", "onnxprune_cli", str(model), "--calib", str(calib), "--ratio",
               str(args.ratio), "--target", args.target, "--scores", str(scores), "-o", str(pruned),
               "--report", str(pruned.with_suffix(".json")), "-q"] + (["--uniform"] if variant == "uniform" else [])
        rc = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True).returncode
        if not pruned.exists():
            print(f"{variant}: exit {rc}, nothing written")
            continue
        r = json.loads(pruned.with_suffix(".json").read_text())
        task = spec.score(rm.predict(spec, pruned, ev), ref, ev)
        print(f"{variant}: exit {rc}, task {task.get('task'):.3f}, agree {task.get('agree'):.3f}, "
              f"removed {r.get('removed')}, shipped {(r.get('deploy') or {}).get('chosen')}", flush=True)


if __name__ == "__main__":
    main()
