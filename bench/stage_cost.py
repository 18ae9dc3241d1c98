"""The default command's stages in forward-pass equivalents, before and after a change, side
by side in one run (issue 16: what the command costs outside scoring).

    PYTHONPATH=.:cli python bench/stage_cost.py [--before REV] [--models digits_cnn ...]
        [--rounds 2]

Runs bench/cost.py's default command (`prune(model, calib, ratio=0.5, latency=False)`, 64
samples of which 48 score and 16 are held out) on this checkout ("after") and on REV
("before", `git archive` into a temporary directory), alternately, each in a fresh process
(before, after, before, after, ...). Each process takes its own unit, one ONNX Runtime
forward pass of the original over the 64 samples (median of 14, around the command); FPE =
seconds / unit. Stages from the progress events as in bench/cost.py, with the means pass
itself timed apart from the scoring engine and the plan's probes ("engine"), which the
`means` column of bench/cost.py holds too. The table gives the median over rounds, and the
held-out value (and accuracy) of the shipped model, which must not change.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["digits_cnn", "mobilenetv2", "c2f", "bert_tiny"]
STAGES = ("setup", "means", "engine", "score", "rewrite", "refit", "guard", "verify")


def child(models: list[str]) -> None:
    """In a process of the tree under test: one JSON line per model."""
    sys.path.insert(0, str(ROOT / "bench"))
    import onnx
    import importlib
    import cost
    spent = [0.0]
    for where in ("onnxprune.pipeline", "onnxprune.api"):  # the rounds' module, or an older
        try:                                              # tree's api, where they lived
            module = importlib.import_module(where)
        except ModuleNotFoundError:
            continue
        for name in ("site_means", "means_and_activations"):  # whichever this tree calls
            if hasattr(module, name):
                setattr(module, name, _timed(getattr(module, name), spent))
    for name in models:
        path = cost.model_path(name)
        proto = onnx.load(str(path))
        calib, held, labels = cost.data(name, proto, 64)
        am = cost.onnxprune.analyze_model(str(path))
        fwd = cost.forward_seconds(proto, calib)
        spent[0] = 0.0
        res, wall, stages = cost.timed_prune(path, calib, "persample")
        fwd += cost.forward_seconds(proto, calib)
        stages["engine"] = stages.pop("means") - spent[0]
        stages["means"] = spent[0]
        value, acc = cost.held_out(am, res, held, labels, calib)
        print(json.dumps({"model": name, "wall": wall, "unit": statistics.median(fwd),
                          "stages": stages, "value": value, "acc": acc,
                          "chosen": res.report["deploy"].get("chosen")}), flush=True)


def _timed(fn, spent: list[float]):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0
    return wrapper


def run_tree(tree: Path, models: list[str]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": f"{tree}:{tree / 'cli'}"}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "stage_cost.py"), "--child",
                          "--root", str(tree), "--models", *models],
                         env=env, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def render(rows: dict[tuple[str, str], list[dict]], models: list[str]) -> str:
    head = ("| model | tree | wall s | FPE | " + " | ".join(STAGES) +
            " | held-out value | held-out acc | shipped |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for model in models:
        for which in ("before", "after"):
            runs = rows.get((model, which), [])
            if not runs:
                continue
            med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
            st = " | ".join(f"{med(lambda r: r['stages'][s] / r['unit']):.0f}" for s in STAGES)
            acc = "" if runs[0]["acc"] is None else f"{runs[0]['acc']:.3f}"
            lines.append(f"| {model} | {which} | {med(lambda r: r['wall']):.2f} | "
                         f"{med(lambda r: r['wall'] / r['unit']):.0f} | {st} | "
                         f"{runs[0]['value']:.4f} | {acc} | {runs[0]['chosen']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--before", default="HEAD", help="git revision of the 'before' tree")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        global ROOT
        ROOT = Path(args.root)
        child(args.models)
        return
    rows: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="stage-cost-") as tmp:
        before = Path(tmp)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        for _ in range(args.rounds):
            for which, tree in (("before", before), ("after", ROOT)):
                for r in run_tree(tree, args.models):
                    rows.setdefault((r["model"], which), []).append(r)
            print(render(rows, args.models), flush=True)
    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}; before = {args.before}, {args.rounds} rounds (medians)")
    print(render(rows, args.models))


if __name__ == "__main__":
    main()
