"""Kept widths rounded to the CPU channel block or not: held-out quality and latency, one run.

    nice -n 5 .../realmodels/.venv/bin/python bench/rounding.py [--study lenet5_mnist ...]
        [--real orientation ...] [--targets macs:0.5 params:0.3] [--data DIR]
    python bench/rounding.py --from-json

Per model and budget the default command is scored once (`round_to` 1) and the same scores
are then selected and shipped twice: whole-unit widths (`--round-to 1`) and widths at
multiples of this machine's channel block (`--round-to auto`). Each shipped model's task
metric is measured on the held-out set (study: the test split; real models: the spec's
evaluation set), and its latency against the original and against the other shipped model,
interleaved on the same batch (deploy.latency.compare_latency, 16 calibration rows).
Records go to docs/rounding.json (merged by key); the table is printed from it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "docs" / "rounding.json"
SAVED = ROOT / "bench" / ".cache" / "rounding"  # shipped models, for --retime
TRAINED = ROOT / "models" / "trained"


def latency(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict) -> dict:
    from onnxprune.deploy.latency import compare_latency
    lat = compare_latency(a, b, feeds, max_seconds=6.0, max_rounds=60)
    return {"a_ms": lat["before"]["median_ms"], "b_ms": lat["after"]["median_ms"],
            "speedup": lat["speedup"]["median"]}


def ship(model, calib, scores, ratio, target, round_to):
    import onnxprune
    res = onnxprune.prune(model, calib, scores=scores, ratio=ratio, target=target, seed=0,
                          round_to=round_to, latency=False)
    return res


def study_task(name: str):
    from low_data import MODELS, correct, draw
    pool = dict(np.load(TRAINED / f"{MODELS[name]}_calib.npz"))
    calib = {"input": pool["input"][draw(pool, 128, 0)]}
    test = dict(np.load(TRAINED / f"{MODELS[name]}_test.npz"))
    return str(TRAINED / f"{name}.onnx"), calib, lambda m: float(correct(m, test).mean())


def real_task(name: str, data: Path):
    import real_models as rm
    rm.DATA, rm.PKGS = data, data.parent / "pkgs"
    spec = rm.SPECS[name]
    ev = rm.load_eval(spec)
    model = data / name / "model.onnx"
    ref = rm.predict(spec, model, ev)
    calib = dict(np.load(data / name / "calib.npz"))
    tmp = Path(tempfile.mkdtemp(prefix="rounding-"))

    def task(m: onnx.ModelProto) -> float:
        path = tmp / "m.onnx"
        onnx.save(m, str(path))
        return float(spec.score(rm.predict(spec, path, ev), ref, ev)["task"])
    return str(model), calib, task


def one(name: str, kind: str, target: str, ratio: float, args) -> dict:
    import onnxprune
    model, calib, task = study_task(name) if kind == "study" else real_task(name, Path(args.data))
    orig = onnx.load(model)
    t0 = time.perf_counter()
    res = onnxprune.prune(model, calib, ratio=ratio, target=target, seed=0, round_to=1, latency=False)
    wall = time.perf_counter() - t0
    auto = ship(model, calib, res.scores, ratio, target, "auto")
    feeds = {k: v[:16] for k, v in calib.items()}
    rec = {"name": name, "set": kind, "target": target, "ratio": ratio, "score_wall": wall,
           "base": task(orig)}
    for tag, r in (("r1", res), ("auto", auto)):
        rep = r.report
        rec[tag] = {"task": task(r.model), "shipped": (rep.get("deploy") or {}).get("chosen"),
                    "removed": rep.get("removed"), "widths": {str(g): int(len(k)) for g, k in r.keep.items()},
                    "vs_orig": latency(orig, r.model, feeds)}
    rec["auto_vs_r1"] = latency(res.model, auto.model, feeds)
    SAVED.mkdir(parents=True, exist_ok=True)
    for tag, r in (("r1", res), ("auto", auto)):
        onnx.save(r.model, str(SAVED / f"{kind}_{name}_{target}_{ratio}_{tag}.onnx"))
    return rec


def retime(key: str, rec: dict, args) -> None:
    """The three latency ratios again from the saved models (on a quiet machine)."""
    kind, name, target, ratio = key.split("|")
    if kind == "study":
        model, calib = study_task(name)[:2]
    else:
        model, calib = str(Path(args.data) / name / "model.onnx"), dict(np.load(Path(args.data) / name / "calib.npz"))
    feeds = {k: v[:16] for k, v in calib.items()}
    orig = onnx.load(model)
    saved = {t: SAVED / f"{kind}_{name}_{target}_{float(ratio)}_{t}.onnx" for t in ("r1", "auto")}
    if not all(p.exists() for p in saved.values()):
        return
    m = {t: onnx.load(str(p)) for t, p in saved.items()}
    for t in ("r1", "auto"):
        rec[t]["vs_orig"] = latency(orig, m[t], feeds)
    rec["auto_vs_r1"] = latency(m["r1"], m["auto"], feeds)
    rec["retimed"] = time.strftime("%Y-%m-%d %H:%M")


def table(records: dict) -> str:
    lines = ["| model | budget | original | whole units: metric | speed-up | rounded: metric | speed-up | rounded vs whole |",
             "|---|---|---|---|---|---|---|---|"]
    for rec in records.values():
        r1, au = rec["r1"], rec["auto"]
        lines.append(f"| {rec['name']} | {rec['target']} {rec['ratio']} | {rec['base']:.3f} | "
                     f"{r1['task']:.3f} | x{r1['vs_orig']['speedup']:.2f} | {au['task']:.3f} | "
                     f"x{au['vs_orig']['speedup']:.2f} | x{rec['auto_vs_r1']['speedup']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", nargs="*", default=[])
    ap.add_argument("--real", nargs="*", default=[])
    ap.add_argument("--targets", nargs="+", default=["macs:0.5", "params:0.3"])
    ap.add_argument("--data", default="/work/wt/realmodels/bench/.cache/data")
    ap.add_argument("--from-json", action="store_true")
    ap.add_argument("--retime", action="store_true", help="latency again from the saved models")
    ap.add_argument("--out", default=str(OUT), help="the JSON records file (merged by key)")
    args = ap.parse_args()
    out = Path(args.out)
    records = json.loads(out.read_text()) if out.exists() else {}
    if args.retime:
        for key, rec in records.items():
            retime(key, rec, args)
        out.write_text(json.dumps(records, indent=1))
    elif not args.from_json:
        for kind, names in (("study", args.study), ("real", args.real)):
            for name in names:
                for t in args.targets:
                    target, ratio = t.split(":")
                    rec = one(name, kind, target, float(ratio), args)
                    records[f"{kind}|{name}|{target}|{ratio}"] = rec
                    out.write_text(json.dumps(records, indent=1))
                    print(json.dumps({k: rec[k] for k in ("name", "target", "ratio", "base")} |
                                     {t: (rec[t]["task"], round(rec[t]["vs_orig"]["speedup"], 2))
                                      for t in ("r1", "auto")} |
                                     {"auto_vs_r1": round(rec["auto_vs_r1"]["speedup"], 2)}), flush=True)
    print(table(records))


if __name__ == "__main__":
    main()
