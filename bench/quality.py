"""Held-out quality of the old and the new default command at the SAME target (issue 16).

    nice -n 5 python bench/quality.py [--before 055061b] [--models lenet5_mnist ...]
        [--seeds 0 1 2] [--ratios 0.5 0.3] [--targets params macs]   # the study's models
    nice -n 5 .../realmodels/.venv/bin/python bench/quality.py --real mlp_digits orientation \
        [--data DIR]                                                   # the real-model set
    python bench/quality.py --from-json                                # tables only

The old default is the tree at `--before` (`git archive` into a temporary directory), the new
one this checkout; each runs in a fresh process of its own tree (as bench/cost.py --before).
Both run the default command, `prune(model, calib, ratio=r, target=t, seed=s)` with nothing
else set, at both targets, so each old/new row pair removes the same budget (the targets'
defaults differ between the trees: 055061b ships `params`, session 6 `macs`).

Study models (bench/low_data.py's five, the ones bench/peers.py uses): calibration = the
study's 128 samples drawn with low_data.draw(pool, 128, seed) from models/trained/*_calib.npz,
the same file for both trees, and `seed=seed` to prune(); held out = the whole test split
(accuracy; 1,000 MNIST images, 397 digits images). Params and MACs removed are counted on the
shipped ONNX by one counter for both trees (peers.py's weight_params and onnx_macs).

Real models (bench/real_models.py's specs, `--real`): the CLI of each tree through
real_models.run_onnxprune (`--metric shapley --target T --seed S` per `--seeds`), the
task metric on the spec's evaluation set (timeout `--max-minutes`, 20: the command
caps its own scoring at 10 minutes, the rest comes on top); data read from `--data` (a prepared
bench/.cache/data of another checkout: nothing is written there). Needs pillow (the
realmodels venv). Params/MACs kept are each tree's own report.

Raw records go to docs/quality.json and docs/quality_real.json (merged by key); the tables are printed from it.
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TRAINED = ROOT / "models" / "trained"
OUTS = {"study": ROOT / "docs" / "quality.json", "real": ROOT / "docs" / "quality_real.json"}
STUDY = ("lenet5_mnist", "vgg_mnist", "resnet_mnist", "mlp_digits", "cnn_digits")
REAL = ("mlp_digits", "orientation", "layout_picodet", "ocr_crnn", "det_yolox", "ppocr_det", "ppocr_rec")


def child(args) -> None:
    """In a process of the tree under test: the default command per job, pruned model saved,
    one JSON line each. Imports nothing of the bench (the tree may be an old one)."""
    import onnx
    import onnxprune
    for job in json.loads(Path(args.child).read_text()):
        calib = dict(np.load(job["calib"]))
        t0 = time.perf_counter()
        res = onnxprune.prune(job["model"], calib, ratio=job["ratio"], target=job["target"],
                              seed=job["seed"], latency=False)
        wall = time.perf_counter() - t0
        onnx.save(res.model, job["out"])
        groups = res.report["groups"]
        print(json.dumps({**job, "wall": wall, "evals": sum(g.get("evaluations", 0) for g in groups),
                          "shipped": (res.report.get("deploy") or {}).get("chosen"),
                          "tree": str(Path(onnxprune.__file__).parent.parent)}), flush=True)


def tree_of(rev: str, tmp: str) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
    return Path(tmp)


def run_tree(tree: Path, jobs: list[dict], tmp: str, which: str) -> list[dict]:
    spec = Path(tmp) / f"jobs_{which}.json"
    spec.write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'cli'}"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--child", str(spec)],
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{which} tree failed:\n{proc.stderr[-3000:]}")
    return [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]


def study_jobs(args, tmp: str) -> list[dict]:
    sys.path.insert(0, str(ROOT / "bench"))
    from low_data import MODELS, draw
    jobs = []
    for name in args.models:
        pool = np.load(TRAINED / f"{MODELS[name]}_calib.npz")
        for seed in args.seeds:
            calib = Path(tmp) / f"calib_{name}_{seed}.npz"
            np.savez(calib, input=pool["input"][draw(pool, 128, seed)])
            for target in args.targets:
                for ratio in args.ratios:
                    jobs.append({"model": str(TRAINED / f"{name}.onnx"), "name": name,
                                 "seed": seed, "target": target, "ratio": ratio,
                                 "calib": str(calib)})
    return jobs


def evaluate_study(rec: dict) -> dict:
    """Test accuracy, per-image correctness, params and MACs removed (one counter for both)."""
    import onnx
    sys.path.insert(0, str(ROOT / "bench"))
    from low_data import MODELS, correct, pack
    from peers import onnx_macs, weight_params
    orig, pruned = onnx.load(rec["model"]), onnx.load(rec["out"])
    test = dict(np.load(TRAINED / f"{MODELS[rec['name']]}_test.npz"))
    hits = correct(pruned, test)
    return {"acc": float(hits.mean()), "hits": pack(hits), "n_test": int(hits.size),
            "params_removed": 1 - weight_params(pruned) / weight_params(orig),
            "macs_removed": 1 - onnx_macs(pruned) / onnx_macs(orig)}


def study(args) -> None:
    records = load()
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        old_tree = tree_of(args.before, tempfile.mkdtemp(dir=tmp))
        for name in args.models:  # one model at a time: records land as they come
            sub = argparse.Namespace(**{**vars(args), "models": [name]})
            jobs = study_jobs(sub, tmp)
            for which, tree in (("old", old_tree), ("new", ROOT)):
                mine = [{**j, "out": str(Path(tmp) / f"{which}_{j['name']}_{j['seed']}_"
                                                   f"{j['target']}_{j['ratio']}.onnx")} for j in jobs]
                for rec in run_tree(tree, mine, tmp, which):
                    rec.update(evaluate_study(rec), which=which, rev=args.before if which == "old"
                               else "HEAD", set="study")
                    assert rec.pop("tree") == str(tree), "the child imported another tree"
                    rec.pop("calib"), rec.pop("out"), rec.pop("model")
                    records[key(rec)] = rec
                    print(f"{which} {name} seed {rec['seed']} {rec['target']} {rec['ratio']}: "
                          f"acc {rec['acc']:.4f} params -{rec['params_removed']:.3f} "
                          f"macs -{rec['macs_removed']:.3f} evals {rec['evals']}", flush=True)
                save(records)


def real(args) -> None:
    """The real-model set through each tree's CLI (bench/real_models.py's run and metric)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import real_models as rm
    rm.DATA, rm.PKGS = Path(args.data), Path(args.data).parent / "pkgs"
    runs = Path(tempfile.mkdtemp(prefix="quality-real-"))
    records = load()
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        trees = {"old": tree_of(args.before, tmp), "new": ROOT}
        trees = {k: v for k, v in trees.items() if k in args.trees}
        for name in args.real:
            spec = rm.SPECS[name]
            ev = rm.load_eval(spec)
            ref = rm.predict(spec, rm.DATA / name / "model.onnx", ev)
            base = spec.score(ref, ref, ev)["task"]
            for target, ratio, seed in ((t, r, s) for t in args.targets for r in args.ratios
                                        for s in args.seeds):
                    for which, tree in trees.items():
                        ns = argparse.Namespace(repo=str(tree), max_minutes=args.max_minutes,
                                                extra_args=f"--target {target} --seed {seed}")
                        rm.RUNS = runs / which  # each tree's pruned model kept apart
                        row = rm.run_onnxprune(spec, ratio, "shapley", ns)
                        rm.evaluate(spec, row, ev, ref)
                        rep = row.get("report") or {}
                        rec = {"set": "real", "name": name, "which": which, "seed": seed,
                               "target": target, "ratio": ratio, "rc": row["rc"],
                               "error": row["error"], "wall": row["wall_s"], "base": base,
                               "task": (row.get("task") or {}).get("task"),
                               "agree": (row.get("task") or {}).get("agree"),  # with the original's output
                               "params_removed": None if rep.get("params") is None else 1 - rep["params"],
                               "macs_removed": None if rep.get("macs") is None else 1 - rep["macs"],
                               "shipped": rep.get("shipped")}
                        records[key(rec)] = rec
                        save(records)
                        print(json.dumps(rec), flush=True)


def key(rec: dict) -> str:
    return "|".join(str(rec[k]) for k in ("set", "name", "which", "target", "ratio", "seed"))


def load() -> dict:
    out = {}
    for path in OUTS.values():
        out.update(json.loads(path.read_text()) if path.exists() else {})
    return out


def save(records: dict) -> None:
    """Each set to its own file, merged with what is there (a study and a real-model run
    may go on side by side)."""
    for which, path in OUTS.items():
        mine = {k: r for k, r in records.items() if r["set"] == which}
        if mine:
            old = json.loads(path.read_text()) if path.exists() else {}
            path.write_text(json.dumps(dict(sorted({**old, **mine}.items())), indent=1) + "\n")


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def table_study(records: dict) -> str:
    """One row per (model, target, ratio): old and new side by side, means over the seeds;
    'new - old' in test images per seed (paired: same calibration and seed), against the
    seed spread (the standard deviation of the accuracy over the seeds, in test images)."""
    cells: dict[tuple, dict[str, list[dict]]] = {}
    for r in records.values():
        if r["set"] == "study":
            cells.setdefault((r["name"], r["target"], r["ratio"]), {}).setdefault(r["which"], []).append(r)
    lines = ["| model | target | ratio | params removed old / new | MACs removed old / new "
             "| test acc old (sd) | test acc new (sd) | new - old, test images per seed "
             "| seed sd, images old / new | evaluations old / new |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(STUDY)}
    for (name, target, ratio), by in sorted(cells.items(), key=lambda c: (order.get(c[0][0], 9),
                                                                           c[0][1], -c[0][2])):
        old = {r["seed"]: r for r in by.get("old", [])}
        new = {r["seed"]: r for r in by.get("new", [])}
        seeds = sorted(set(old) & set(new))
        if not seeds:
            continue
        n = old[seeds[0]]["n_test"]

        def mean(side: dict, k: str) -> float:
            return statistics.mean(side[s][k] for s in seeds)

        def acc(side: dict) -> str:
            return f"{mean(side, 'acc'):.4f} ({_sd([side[s]['acc'] for s in seeds]):.4f})"
        diffs = [round((new[s]["acc"] - old[s]["acc"]) * n) for s in seeds]
        lines.append(
            f"| {name} | {target} | {ratio} | {mean(old, 'params_removed'):.3f} / "
            f"{mean(new, 'params_removed'):.3f} | {mean(old, 'macs_removed'):.3f} / "
            f"{mean(new, 'macs_removed'):.3f} | {acc(old)} | {acc(new)} | "
            f"{', '.join(f'{d:+d}' for d in diffs)} (sum {sum(diffs):+d} of {n * len(seeds)}) | "
            f"{_sd([old[s]['acc'] for s in seeds]) * n:.1f} / {_sd([new[s]['acc'] for s in seeds]) * n:.1f} | "
            f"{mean(old, 'evals'):.0f} / {mean(new, 'evals'):.0f} |")
    return "\n".join(lines)


def table_real(records: dict) -> str:
    def fmt(x, d: int = 3) -> str:
        return "-" if x is None else f"{x:.{d}f}"
    cells: dict[tuple, dict[str, dict]] = {}
    for r in records.values():
        if r["set"] == "real":
            cells.setdefault((r["name"], r["target"], r["ratio"]), {}).setdefault(
                r["which"], {})[r["seed"]] = r
    lines = ["| model | target | ratio | params removed old / new | MACs removed old / new "
             "| task metric orig | old | new | agree with the original old / new "
             "| shipped old / new | wall s old / new |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(REAL)}
    for (name, target, ratio), by in sorted(cells.items(), key=lambda c: (order.get(c[0][0], 9),
                                                                           c[0][1], -c[0][2])):
        # seeds both trees ran (one tree alone: its own seeds); several: mean, per-seed in brackets
        seeds = sorted(set(by.get("old", {})) & set(by.get("new", {}))) or \
            sorted(set(by.get("old", {})) | set(by.get("new", {})))
        o, w = ([by.get(t, {}).get(s, {}) for s in seeds] for t in ("old", "new"))

        def mean(rs: list[dict], k: str):
            xs = [r.get(k) for r in rs if r.get(k) is not None]
            return statistics.mean(xs) if xs else None

        def task(rs: list[dict]) -> str:
            if not any(rs):
                return "-"
            ok = [r for r in rs if r.get("rc") in (0, 3)]
            if len(ok) < len(rs):
                return "exit " + ", ".join(str(r.get("rc")) for r in rs)
            failed = sum(r.get("rc") == 3 for r in rs)  # written, below --min-fidelity
            per = " (" + ", ".join(fmt(r["task"]) for r in rs) + ")" if len(rs) > 1 else ""
            return fmt(mean(rs, "task")) + per + (f", gate failed {failed}/{len(rs)}" if failed else "")

        def shipped(rs: list[dict]) -> str:
            return ",".join(sorted({str(r.get("shipped")) for r in rs if r}))
        lines.append(f"| {name} | {target} | {ratio} | {fmt(mean(o, 'params_removed'))} / "
                     f"{fmt(mean(w, 'params_removed'))} | {fmt(mean(o, 'macs_removed'))} / "
                     f"{fmt(mean(w, 'macs_removed'))} | {fmt(mean(o + w, 'base'))} | {task(o)} | "
                     f"{task(w)} | {fmt(mean(o, 'agree'))} / {fmt(mean(w, 'agree'))} | "
                     f"{shipped(o)} / {shipped(w)} | "
                     f"{fmt(mean(o, 'wall'), 0)} / {fmt(mean(w, 'wall'), 0)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="055061b", help="the old default's git revision")
    ap.add_argument("--models", nargs="+", default=list(STUDY), choices=list(STUDY))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.3])
    ap.add_argument("--targets", nargs="+", default=["params", "macs"], choices=["params", "macs"])
    ap.add_argument("--real", nargs="+", default=None, help="real-model set instead (REAL names)")
    ap.add_argument("--data", default="/work/wt/realmodels/bench/.cache/data",
                    help="--real: a prepared bench/.cache/data (read only)")
    ap.add_argument("--max-minutes", type=float, default=20.0,
                    help="--real: timeout per command (the default command caps its scoring at 10)")
    ap.add_argument("--from-json", action="store_true", help="tables only")
    ap.add_argument("--trees", nargs="+", default=["old", "new"], choices=["old", "new"],
                    help="--real: rerun only these trees (the other's records stay)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.real:
        real(args)
    elif not args.from_json:
        study(args)
    records = load()
    print(f"\nold = {args.before}, new = this checkout; {time.strftime('%Y-%m-%d')}, "
          f"load {os.getloadavg()[0]:.1f}")
    print(table_study(records))
    if any(r["set"] == "real" for r in records.values()):
        print()
        print(table_real(records))


if __name__ == "__main__":
    main()
