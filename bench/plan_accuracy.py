"""Predicted vs actual wall time of the default prune command (issue 14: the cost preview).

    python bench/plan_accuracy.py [--repeats 2]
    python bench/plan_accuracy.py --real ocr_crnn,det_yolox --samples 32 --time-budget 4

Per model: the plan's expected seconds (printed before scoring) against the seconds the run
took. `--real` runs the real models of bench/real_models.py (their data under bench/.cache,
the first `--samples` calibration samples) instead of the zoo; `--time-budget` (minutes) and
`--budget` are passed to `prune`, and the plan's samples per evaluation and warnings printed.

The actual seconds are the report's `plan.actual_s`, summed (load to verification), scoring
alone too, and the forward-pass equivalents; the refit's expected seconds
(what the plan's `refit_seconds` said, per allocation deployed) against its stage's seconds. Zoo models get 32 seeded random samples (normal floats; BERT: ids in
[0, 100), all-ones mask, seq 16); digits_cnn its own calibration file.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import onnxprune
import onnxprune.pipeline

ROOT = Path(__file__).resolve().parents[1]


def calibration(name: str):
    if name == "digits_cnn":
        return ROOT / "models/digits_calib.npz"
    rng = np.random.default_rng(0)
    if name == "bert_tiny":
        return {"input_ids": rng.integers(0, 100, (32, 16)).astype(np.int64),
                "attention_mask": np.ones((32, 16), np.int64)}
    return {"input": rng.standard_normal((32, 3, 32, 32)).astype(np.float32)}


PLANNED_REFIT: list[float] = []  # what the plan expected of one refit, as the rounds computed it


def _recording(fn):
    def wrapper(*args, **kwargs):
        PLANNED_REFIT.append(fn(*args, **kwargs))
        return PLANNED_REFIT[-1]
    return wrapper


onnxprune.pipeline.refit_seconds = _recording(onnxprune.pipeline.refit_seconds)


class RefitClock:
    """Progress callback: seconds from each refit's first event to the next other stage's,
    and how many refits ran (one per allocation deployed)."""

    def __init__(self) -> None:
        self.seconds, self.runs, self._start = 0.0, 0, None

    def __call__(self, event: dict) -> None:
        now, refit = time.perf_counter(), event.get("stage") == "refit"
        if refit and self._start is None:
            self._start, self.runs = now, self.runs + 1
        elif not refit and self._start is not None:
            self.seconds += now - self._start
            self._start = None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--real", default="", help="comma-separated real models (bench/.cache/data)")
    ap.add_argument("--samples", type=int, default=32, help="calibration samples of a real model")
    ap.add_argument("--time-budget", type=float, default=None, help="minutes")
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--metric", default=None, help="e.g. l1: the stages around scoring alone")
    args = ap.parse_args()
    models = {"digits_cnn": ROOT / "models/digits_cnn.onnx",
              "mobilenetv2": ROOT / "models/zoo/mobilenetv2.onnx",
              "bert_tiny": ROOT / "models/zoo/bert_tiny.onnx"}
    data = {}
    if args.real:
        cache = ROOT / "bench/.cache/data"
        models = {m: cache / m / "model.onnx" for m in args.real.split(",")}
        for m in models:
            with np.load(cache / m / "calib.npz") as z:
                data[m] = {k: z[k][:args.samples] for k in z.files}
    keywords = {k: v for k, v in (("budget", args.budget), ("metric", args.metric),
                                  ("time_budget_s", args.time_budget and 60 * args.time_budget))
                if v is not None}
    print("model        expected_s  actual_s  wall_s  scoring exp/act  evals plan/spent  "
          "fwd-pass eq. exp/act  refit exp/act s")
    for name, path in models.items():
        for _ in range(args.repeats):
            refit, calib = RefitClock(), data.get(name) or calibration(name)
            t0 = time.perf_counter()
            r = onnxprune.prune(path, calib, ratio=0.5,
                                progress=refit, **keywords)
            wall = time.perf_counter() - t0
            p = r.report["plan"]
            fwd = p["forward_s"]
            expected_refit = refit.runs * (PLANNED_REFIT[-1] if PLANNED_REFIT else 0.0)
            print(f"{name:<12} {p['total_s']:10.2f} {p['actual_total_s']:9.2f} {wall:7.2f}"
                  f"  {p['expected_s']['scoring']:6.2f}/{p['actual_s']['scoring']:<6.2f}"
                  f"  {p['evaluations']:6d}/{p['actual_evaluations']:<6d}"
                  f"  {p['total_s'] / fwd:8.0f}/{p['actual_total_s'] / fwd:<8.0f}"
                  f"  {expected_refit:6.2f}/{refit.seconds:<6.2f}"
                  f"  samples {p.get('scoring_samples') or p.get('samples')}", flush=True)
            for w in p.get("warnings", []):
                print("   ", w, flush=True)


if __name__ == "__main__":
    main()
