"""Issue 15: the guard's allocation choice on few held-out samples, old rule against new.

    nice -n 10 python bench/guard_rule.py --study                  # 5 models x 3 seeds x 3 budgets
    nice -n 10 python bench/guard_rule.py --real --cache /work/wt/realmodels/bench/.cache \\
        --models mlp_digits,orientation,layout_picodet,ocr_crnn    # params 0.3 (needs PIL)
    python bench/guard_rule.py --table docs/guard_rule*.json       # rules applied to the records

One prune() per case with the default options (the study: prune(ratio=B, target=T, seed=S) on
the 128 calibration samples of peers.py's protocol, 32 of them the guard's; the real models:
their calib.npz, target params 0.3). Every candidate the guard judges (per allocation:
compensated, plain, refit) is captured with its per-sample guard values, and its task metric
is measured (the study: test accuracy on models/trained/*_test.npz; the real models: their
spec's metric on the evaluation set). The rules are then applied offline to the same records,
so each comparison costs one pipeline run per case:

- within an allocation, `mean` (the higher mean, session 6) or `paired:<name>` (that candidate
  unless another beats it by z standard errors of the paired differences);
- between allocations, the paired rule at z (z = 0 is session 6's higher mean; global is the
  preferred one).

Records go to docs/guard_rule.json (per-sample values and metrics, no models).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "models")]

import onnxprune  # noqa: E402
from onnxprune.deploy import candidates  # noqa: E402
from onnxprune.deploy.candidates import Paired  # noqa: E402

OUT = ROOT / "docs" / "guard_rule.json"
STUDY_BUDGETS = (("params", 0.3), ("params", 0.5), ("macs", 0.5))
ZS = (0.0, 1.0, 1.645, 2.0, 3.0)
WITHIN = ("mean", "paired:refit", "paired:compensated")


@contextmanager
def capture():
    """Every deploy() call of a prune(): [(candidate, model, per-sample values)], in order
    (the first call is the global allocation, the second the uniform one)."""
    calls: list[list] = []
    samples, deploy = candidates.Guard.samples, candidates.deploy

    def rec_samples(self, model):
        s = samples(self, model)
        calls[-1].append([model, s])
        return s

    def rec_deploy(*a, **k):
        calls.append([])
        choice = deploy(*a, **k)
        for (rec, name) in zip(calls[-1], choice.samples):
            rec.insert(0, name)
        return choice

    candidates.Guard.samples, candidates.deploy = rec_samples, rec_deploy
    try:
        yield calls
    finally:
        candidates.Guard.samples, candidates.deploy = samples, deploy


def run_case(model, calib, metric_of, **kw) -> dict:
    t0 = time.perf_counter()
    with capture() as calls:
        res = onnxprune.prune(model, calib, latency=False, **kw)
    d = res.report["deploy"]
    d = d[-1] if isinstance(d, list) else d
    allocs = {}
    for alloc, call in zip(("global", "uniform"), calls):
        allocs[alloc] = {name: {"samples": [float(x) for x in s], "metric": metric_of(m)}
                         for name, m, s in call}
    return {"allocs": allocs, "shipped": [d.get("allocation"), d.get("chosen")],
            "removed": res.report.get("removed"), "seconds": round(time.perf_counter() - t0, 1)}


def study(args, records: dict) -> None:
    from low_data import HOLDOUT, Model, accuracy, log
    for name in args.models or ("lenet5_mnist", "vgg_mnist", "resnet_mnist", "mlp_digits", "cnn_digits"):
        m = Model(name)
        for seed in args.seeds:
            cal = m.calib(128, seed, False)
            for target, b in STUDY_BUDGETS:
                key = f"study|{name}|{seed}|{target}{b}"
                if key in records:
                    continue
                rec = run_case(m.am, cal, lambda p: accuracy(p, m.test), ratio=b, target=target,
                               seed=seed, holdout=HOLDOUT)
                rec.update(base=accuracy(m.proto, m.test), case=dict(model=name, seed=seed, budget=f"{target} {b}"))
                records[key] = rec
                save(records)
                log(f"{key}: shipped {rec['shipped']} ({rec['seconds']} s)")


def real(args, records: dict) -> None:
    import real_models as rm
    cache = Path(args.cache)
    rm.PKGS, rm.DATA = cache / "pkgs", cache / "data"
    for name in args.models or ("mlp_digits", "orientation", "layout_picodet", "ocr_crnn"):
        key = f"real|{name}|0|params0.3"
        if key in records:
            continue
        spec = rm.SPECS[name]
        ev = rm.load_eval(spec)
        ref = rm.predict(spec, rm.DATA / name / "model.onnx", ev)
        base = spec.score(ref, ref, ev)["task"]

        def metric_of(proto, spec=spec, ev=ev, ref=ref):
            with tempfile.TemporaryDirectory() as tmp:
                onnx.save(proto, f"{tmp}/m.onnx")
                return spec.score(rm.predict(spec, Path(f"{tmp}/m.onnx"), ev), ref, ev)["task"]

        rec = run_case(str(rm.DATA / name / "model.onnx"), str(rm.DATA / name / "calib.npz"),
                       metric_of, ratio=0.3, target="params")
        rec.update(base=base, case=dict(model=name, seed=0, budget="params 0.3"))
        records[key] = rec
        save(records)
        print(f"{key}: shipped {rec['shipped']} ({rec['seconds']} s)", flush=True)


# ----------------------------------------------------------------------------- the rules


def best_within(cands: dict, within: str, z: float) -> str:
    """The candidate one allocation ships under `within`."""
    names = list(cands)
    if within == "mean":
        means = {n: _mean(cands[n]["samples"]) for n in names}
        return max(names, key=lambda n: (means[n], -names.index(n)))
    pref = within.split(":")[1]
    best = pref if pref in cands else names[0]
    for n in names:
        if n != best and Paired.of((best, _arr(cands[best])), (n, _arr(cands[n])), z).wins:
            best = n
    return best


def ship(rec: dict, within: str, z: float, force: str | None = None,
         z_within: float = 2.0) -> tuple[str, str, float]:
    """(allocation, candidate, task metric kept) under a rule (`force`: that allocation,
    where it was deployed apart from the global one)."""
    picks = {a: best_within(c, within, z_within) for a, c in rec["allocs"].items()}
    alloc = "global"
    if force is not None:
        alloc = force if force in picks else "global"
    elif "uniform" in picks:
        g, u = rec["allocs"]["global"][picks["global"]], rec["allocs"]["uniform"][picks["uniform"]]
        alloc = "uniform" if Paired.of(("global", _arr(g)), ("uniform", _arr(u)), z).wins else "global"
    cand = picks[alloc]
    return alloc, cand, rec["allocs"][alloc][cand]["metric"] / rec["base"]


def _arr(c: dict) -> np.ndarray:
    return np.asarray(c["samples"], dtype=np.float64)


def _mean(s) -> float:
    v = float(np.mean(s))
    return v if np.isfinite(v) else -np.inf


def tables(records: dict) -> str:
    out = []
    for kind in ("study", "real"):
        recs = {k: r for k, r in records.items() if k.startswith(kind)}
        if not recs:
            continue
        budgets = sorted({r["case"]["budget"] for r in recs.values()})
        out.append(f"\n{kind}: mean task metric kept (uniform shipped / cases), within-allocation rule `mean`")
        out.append("| allocation rule | " + " | ".join(budgets) + " |")
        out.append("|---|" + "---|" * len(budgets))
        rows = [("oracle (best allocation, hindsight)", None)] + [(f"paired z={z:g}" if z else "higher mean (z=0, session 6)", z) for z in ZS]
        rows += [("always global", "g"), ("always uniform", "u")]
        for label, z in rows:
            cells = []
            for b in budgets:
                rs = [r for r in recs.values() if r["case"]["budget"] == b]
                kept, uni = [], 0
                for r in rs:
                    if z is None:
                        a, _, k = max((ship(r, "mean", 0.0, a) for a in r["allocs"]), key=lambda t: t[2])
                    elif z in ("g", "u"):
                        a, _, k = ship(r, "mean", 0.0, {"g": "global", "u": "uniform"}[z])
                    else:
                        a, _, k = ship(r, "mean", z)
                    kept.append(k)
                    uni += a == "uniform"
                cells.append(f"{np.mean(kept):.4f} ({uni}/{len(rs)})")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append(f"\n{kind}: within-allocation rule (allocation rule paired z=2), mean task metric kept")
        out.append("| within rule | " + " | ".join(budgets) + " |")
        out.append("|---|" + "---|" * len(budgets))
        for within in WITHIN + ("oracle",):
            cells = []
            for b in budgets:
                rs = [r for r in recs.values() if r["case"]["budget"] == b]
                if within == "oracle":
                    kept = [max(c["metric"] for c in r["allocs"][ship(r, "mean", 2.0)[0]].values()) / r["base"] for r in rs]
                else:
                    kept = [ship(r, within, 2.0)[2] for r in rs]
                cells.append(f"{np.mean(kept):.4f}")
            out.append(f"| {within} | " + " | ".join(cells) + " |")
        if kind == "real" or len(recs) <= 20:
            out.append(f"\n{kind}: per case (kept: higher mean -> paired z=2)")
            out.append("| case | old: allocation, candidate, kept | new: allocation, candidate, kept | global - uniform guard diff (se) |")
            out.append("|---|---|---|---|")
            for k, r in recs.items():
                o, n = ship(r, "mean", 0.0), ship(r, "mean", 2.0)
                diff = ""
                if "uniform" in r["allocs"]:
                    pk = {a: best_within(c, "mean", 2.0) for a, c in r["allocs"].items()}
                    p = Paired.of(("global", _arr(r["allocs"]["global"][pk["global"]])),
                                  ("uniform", _arr(r["allocs"]["uniform"][pk["uniform"]])), 2.0)
                    diff = f"{-p.difference:+.4f} ({p.stderr:.4f}, n={p.samples})"
                out.append(f"| {k} | {o[0]}, {o[1]}, {o[2]:.3f} | {n[0]}, {n[1]}, {n[2]:.3f} | {diff} |")
    return "\n".join(out)


def save(records: dict) -> None:
    OUT.write_text(json.dumps(records, indent=None, separators=(",", ":")))


def main(argv=None) -> int:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", action="store_true")
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--table", nargs="*", help="record files to merge for the tables only")
    ap.add_argument("--models", type=lambda s: [x for x in s.split(",") if x])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cache", default=str(ROOT / "bench" / ".cache"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "guard_rule.json"))
    args = ap.parse_args(argv)
    OUT = Path(args.out)
    records = json.loads(OUT.read_text()) if OUT.exists() else {}
    if args.table:
        records = {k: v for f in args.table for k, v in json.loads(Path(f).read_text()).items()}
    if args.study:
        study(args, records)
    if args.real:
        real(args, records)
    print(tables(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
