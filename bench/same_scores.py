"""Same scores, other allocation: is a real model's loss the ranking or the allocation?

    python bench/same_scores.py MODEL METRIC [--ratio 0.3] [--target params] [--variants global,uniform]
        [--data DIR] [--report RUN.json]
        [--extra-args='--round-to 1']

Reads the report bench/real_models.py saved for the run (bench/.cache/runs/
MODEL_METRIC_rR_target_T.json), turns its per-group scores into a `--scores` file, and runs
the command again with those scores under each allocation (no scoring), then the model's task
metric on its evaluation set (bench/real/specs.py). Session 11: ppocr_rec at params 0.3.
"""
from __future__ import annotations

import argparse
import json
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
    ap.add_argument("--extra-args", default="", help="appended to each command (write --extra-args='--flag ...')")
    ap.add_argument("--report", default=None, help="the run's report (default: the run's name above)")
    args = ap.parse_args()
    rm.DATA = Path(args.data)
    spec = rm.SPECS[args.model]
    model = rm.DATA / args.model / "model.onnx"
    ev = rm.load_eval(spec)
    ref = rm.predict(spec, model, ev)
    report = args.report or rm.RUNS / f"{args.model}_{args.metric}_r{args.ratio}_target_{args.target}.json"
    rep = json.loads(Path(report).read_text())
    out = Path(tempfile.mkdtemp(prefix="same-scores-"))
    scores = out / "scores.json"
    scores.write_text(json.dumps({"metric": args.metric, "groups": [
        {"group": g["id"], "scores": g["scores"]} for g in rep["groups"] if g.get("scores")]}))
    rm.RUNS = out  # real_models' run and task metric, its own pruned models kept apart
    for variant in args.variants.split(","):
        flags = f"--target {args.target} --scores {scores}" + (" --uniform" if variant == "uniform" else "")
        flags += f" {args.extra_args}" if args.extra_args else ""
        ns = argparse.Namespace(repo=str(HERE.parent), max_minutes=20.0, extra_args=flags)
        row = rm.run_onnxprune(spec, args.ratio, args.metric, ns)
        rm.evaluate(spec, row, ev, ref)
        task, r = row.get("task") or {}, row.get("report") or {}
        print(f"{variant}: exit {row['rc']} {row['error']}, task {task.get('task')}, agree "
              f"{task.get('agree')}, params / MACs kept {r.get('params')} / {r.get('macs')}, "
              f"shipped {r.get('shipped')}", flush=True)

if __name__ == "__main__":
    main()
