"""What the whole default command costs, in forward-pass equivalents, and how good its cut is.

    PYTHONPATH=.:cli python bench/cost.py [--models digits_cnn mobilenetv2 c2f bert_tiny minilm_l6]
        [--samples 64] [--ref-mult 20] [--new truncated] [--old persample] [--profile MODEL]
        [--self-agreement]
    PYTHONPATH=.:cli python bench/cost.py --before REV [--rounds 2] [--models ...]

Per model, in one process (docs/design.md, Measuring):

- one ONNX Runtime forward pass of the original model over the whole calibration set
  (median of 7, re-measured before each command and the median of all taken): the unit;
- the whole command, `onnxprune.prune(model, calib, ratio=0.5, latency=False)` with the old
  default estimator and with the new one (`estimator=`), its wall time split by stage from
  the progress events (means, engine = the scoring engine and the plan's probes, from the
  report's plan, score, rewrite = candidates, refit, guard, verify; setup =
  load/normalize/analyze + the ORT check before the first event), all in forward-pass
  equivalents (FPE = seconds / one forward pass);
- the cut's quality: per group the bottom-k (k = the units a params budget of 0.5 is
  expected to remove, 1 - 0.5^0.5 of each group) of each command's scores against the
  bottom-k of a long-run reference OF THE SAME GAME (on the same scoring samples and the same
  mean-compensated game, other seed: persample at ref-mult x the default budget for the full
  game, truncated at ref-mult x its marginal count and the command's depth for the truncated
  game), as the share of units whose keep/remove decision agrees (with --self-agreement, also
  a second reference at another seed against the first: "ref vs ref", the ceiling, since the
  reference is itself noisy and units near the cut are near-ties); the new estimator's expected
  number of units on the wrong side of the cut (its own estimate); and held-out quality:
  the default value function of the shipped model on 256 fresh samples (digits: the test
  set, with accuracy) for both commands.

minilm_l6 (a MiniLM-L6-sized encoder, 6 x 1,536 FFN neurons) is built by `python
bench/build_minilm.py` into bench/.cache/minilm_l6.onnx (torch + transformers, for the build
only); its calibration is `build_minilm.inputs(64, 32, 0)`, held out `inputs(256, 32, 1)`.

With `--before REV` the rows are this checkout ("after") against REV ("before"), both with
the `--new` default estimator, alternately in fresh processes (before, after, ...), medians
over `--rounds`; "keep" is a digest of the kept units (the same digest: the same pruned
model), agreement against the cached reference on both (`--ref-mult 0`: not at all).

The reference is cached in bench/.cache (it costs ref-mult x the scoring). Scoring samples are
48 of 64 (a quarter is held out by the command).
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import hashlib
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import onnxprune  # noqa: E402
from end_to_end import synthetic  # noqa: E402
from onnxprune.api import as_calibration, make_engine, value_function  # noqa: E402
from onnxprune.deploy.select import n_removed  # noqa: E402
from onnxprune.deploy.verify import run_model  # noqa: E402
try:  # the --before tree may predate pipeline.py (session 6)
    from onnxprune.pipeline import split_samples  # noqa: E402
except ImportError:
    from onnxprune.api import _split as split_samples  # noqa: E402
from onnxprune.runtime import make_session  # noqa: E402
from onnxprune.scoring.estimators import (  # noqa: E402
    DEFAULT_MARGINALS,
    default_budget,
    estimate_truncated,
    truncation_depth,
)
from onnxprune.scoring import shapley  # noqa: E402
from onnxprune.scoring.estimators import truncated as truncated_mod  # noqa: E402
from onnxprune.scoring.shapley import shapley_group  # noqa: E402
from onnxprune.scoring.site_stats import site_means  # noqa: E402

MODELS = ["digits_cnn", "resnet_mnist", "mobilenetv2", "c2f", "bert_tiny"]
CACHE = ROOT / "bench" / ".cache"
STAGES = ("setup", "means", "engine", "score", "rewrite", "refit", "guard", "verify")
EVENT_STAGE = {"means": "means", "score": "score", "rewrite": "rewrite", "refit": "refit",
               "deploy": "guard", "verify": "verify"}


def model_path(name: str) -> Path:
    if name == "minilm_l6":
        return CACHE / "minilm_l6.onnx"
    if name == "digits_cnn":
        return ROOT / "models" / "digits_cnn.onnx"
    if name in ("resnet_mnist", "vgg_mnist"):  # the study's ~300-unit CNNs (issue 16's size)
        return ROOT / "models" / "trained" / f"{name}.onnx"
    return ROOT / "models" / "zoo" / f"{name}.onnx"


def data(name: str, proto: onnx.ModelProto, n: int):
    """(calibration dict, held-out inputs, held-out labels or None)."""
    if name == "digits_cnn":
        c, t = np.load(ROOT / "models/digits_calib.npz"), np.load(ROOT / "models/digits_test.npz")
        calib = {k: c[k][:n] for k in c.files}
        return calib, {"input": t["input"][:256]}, t["labels"][:256]
    if name in ("resnet_mnist", "vgg_mnist"):  # trained on MNIST: scored on unlabeled images, like end_to_end
        c = np.load(ROOT / "models/trained/mnist_calib.npz")
        t = np.load(ROOT / "models/trained/mnist_test.npz")
        return {"input": c["input"][:n]}, {"input": t["input"][:256]}, t["labels"][:256]
    if name == "minilm_l6":
        from build_minilm import inputs
        return inputs(n, 32, 0), inputs(256, 32, 1), None
    return synthetic(proto, n, 0, 16), synthetic(proto, 256, 1, 16), None


def forward_seconds(proto: onnx.ModelProto, calib: dict[str, np.ndarray], repeats: int = 7) -> list[float]:
    sess = make_session(proto, "cpu", spinning=False)
    feeds = {i.name: calib[i.name] for i in sess.get_inputs()}
    sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return times


def timed_prune(path: Path, calib: dict, estimator: str, profile: bool = False):
    """(result, wall seconds, seconds per stage) of the default command."""
    marks: list[tuple[str, float]] = []

    def progress(event: dict) -> None:
        stage = EVENT_STAGE.get(event.get("stage", ""))
        if stage and (not marks or marks[-1][0] != stage):
            marks.append((stage, time.perf_counter()))

    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    # "auto" as the library would run it with `estimator` as its default sampler
    saved, shapley.DEFAULT_ESTIMATOR = shapley.DEFAULT_ESTIMATOR, estimator
    try:
        res = onnxprune.prune(str(path), calib, ratio=0.5, latency=False, progress=progress)
    finally:
        shapley.DEFAULT_ESTIMATOR = saved
    if prof:
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(20)
        print(out.getvalue()[:5000])
    end = time.perf_counter()
    stages = dict.fromkeys(STAGES, 0.0)
    bounds = [("setup", t0), *marks, ("end", end)]
    for (stage, start), (_, stop) in zip(bounds, bounds[1:]):
        stages[stage] += stop - start
    # the engine and the plan's probes run between the means and the score events
    actual = (res.report.get("plan") or {}).get("actual_s", {})
    engine = actual.get("engine", 0.0) + actual.get("plan", 0.0)
    stages["engine"] = min(engine, stages["means"])
    stages["means"] -= stages["engine"]
    return res, end - t0, stages


SHARE = 1 - 0.5 ** 0.5  # units per group a params budget of 0.5 is expected to remove
REF_MARGINALS = DEFAULT_MARGINALS  # the truncated reference: ref-mult x the library default


def reference(name: str, path: Path, calib: dict, mult: int, estimator: str = "persample",
              base: int = 10_000) -> dict[int, np.ndarray]:
    """Long-run scores of the game `estimator` scores, on the command's scoring samples and
    mean-compensated game (cached): persample at mult x the default budget (the full game),
    or truncated at mult x its marginal count, at the command's depth (the truncated game).
    ``base``: the seed offset (another one gives a second, independent reference)."""
    digest = hashlib.sha256(path.read_bytes() + repr(sorted((k, v.tobytes()[:4096])
                            for k, v in calib.items())).encode()).hexdigest()[:12]
    game = ("" if estimator == "persample" else f"_{estimator}") + (
        "" if base == 10_000 else f"_s{base}") + (  # the game's depth is part of the game
        "" if estimator != "truncated" or truncated_mod.DEPTH_MARGIN == 1.0
        else f"_m{truncated_mod.DEPTH_MARGIN:g}_small")  # small groups truncated too
    file = CACHE / f"cost_ref_{name}_{len(next(iter(calib.values())))}_{mult}x{game}_{digest}.npz"
    if file.exists():
        return {int(k): v for k, v in np.load(file).items()}
    am = onnxprune.analyze_model(str(path))
    scoring, _, _ = split_samples(as_calibration(calib, am.proto), 0.25, 0)
    means = site_means(am.analysis, am.ident, scoring.inputs, device="cpu")
    engine = make_engine(am, scoring, means=means)
    out = {}
    for g in am.analysis.prunable:
        budget = mult * default_budget(g.units)
        if estimator == "truncated" and shapley.pick_estimator(
                g.units, budget, per_sample=True, cut_known=True) == "truncated":
            out[g.id] = estimate_truncated(
                shapley._GroupValue(engine, g.id), g.units, budget=budget * 100,
                depth=truncation_depth(g.units, SHARE), marginals=mult * REF_MARGINALS,
                seed=base + g.id, batch=256).values
            continue
        name = "persample" if g.units > 8 else "auto"  # auto: exact for small groups
        out[g.id] = shapley_group(engine, g.id, budget=budget, seed=base + g.id,
                                  estimator=name).values
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(file, **{str(k): v for k, v in out.items()})
    return out


def agreement(scores: dict[int, np.ndarray], ref: dict[int, np.ndarray], share: float) -> float:
    """Share of units whose keep/remove decision agrees with the reference's when each group
    loses `share` of its units (the units a params budget of 0.5 is expected to remove)."""
    same = total = 0
    for gid, r in ref.items():
        k = n_removed(len(r), share)
        mine = np.zeros(len(r), bool)
        mine[np.argsort(scores[gid], kind="stable")[:k]] = True
        theirs = np.zeros(len(r), bool)
        theirs[np.argsort(r, kind="stable")[:k]] = True
        same += int((mine == theirs).sum())
        total += len(r)
    return same / max(total, 1)


def held_out(am, res, held: dict, labels, calib: dict) -> tuple[float, float | None]:
    """(mean value of the shipped model on fresh samples, accuracy with labels)."""
    vf = value_function(am, as_calibration(calib, am.proto))
    ref = run_model(am.proto, held)
    vf.prepare(ref, labels)
    got = run_model(res.model, held)
    value = float(vf([o[None] for o in got]).mean())
    acc = None if labels is None else float((got[0].argmax(-1) == labels).mean())
    return value, acc


def measure(name: str, args) -> list[dict]:
    path = model_path(name)
    proto = onnx.load(str(path))
    calib, held, labels = data(name, proto, args.samples)
    am = onnxprune.analyze_model(str(path))
    fwd: list[float] = []
    rows = []
    for label, est in (("old", args.old), ("new", args.new)):
        fwd += forward_seconds(proto, calib)
        res, wall, stages = timed_prune(path, calib, est, profile=args.profile == name)
        fwd += forward_seconds(proto, calib)
        value, acc = held_out(am, res, held, labels, calib)
        wrong = sum(g.get("wrong_side", 0.0) for g in res.report["groups"])
        ref = reference(name, path, calib, args.ref_mult, est)
        ceiling = (agreement(reference(name, path, calib, args.ref_mult, est, 20_000), ref, SHARE)
                   if args.self_agreement else None)
        rows.append({"model": name, "which": label, "estimator": est, "wall": wall,
                     "stages": stages, "agree": agreement(res.scores, ref, SHARE), "wrong": wrong,
                     "ceiling": ceiling,
                     "evals": sum(g.get("evaluations", 0) for g in res.report["groups"]),
                     "value": value, "acc": acc})
    unit = statistics.median(fwd)
    for r in rows:
        r["fwd"] = unit
    return rows


def render(rows: list[dict], args) -> str:
    head = ("| model | estimator | wall s | FPE | " + " | ".join(STAGES) +
            " | evaluations | agree vs ref | ref vs ref | E[wrong side] | held-out value | held-out acc |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        fpe = r["wall"] / r["fwd"]
        st = " | ".join(f"{r['stages'][s] / r['fwd']:.0f}" for s in STAGES)
        acc = "" if r["acc"] is None else f"{r['acc']:.3f}"
        ceil = "" if r.get("ceiling") is None else f"{r['ceiling']:.3f}"
        lines.append(f"| {r['model']} | {r['which']}: {r['estimator']} | {r['wall']:.1f} | "
                     f"{fpe:.0f} | {st} | {r['evals']} | {r['agree']:.3f} | {ceil} | {r['wrong']:.2f} | "
                     f"{r['value']:.4f} | {acc} |")
    return "\n".join(lines)


def child(args) -> None:
    """In a process of the tree under test (--before): per model, the default command with
    the `--new` estimator, one JSON line (FPE unit taken around it, as in `measure`)."""
    for name in args.models:
        path = model_path(name)
        proto = onnx.load(str(path))
        calib, held, labels = data(name, proto, args.samples)
        am = onnxprune.analyze_model(str(path))
        fwd = forward_seconds(proto, calib)
        res, wall, stages = timed_prune(path, calib, args.new)
        fwd += forward_seconds(proto, calib)
        value, acc = held_out(am, res, held, labels, calib)
        keep = hashlib.sha256(repr(sorted((g, list(map(int, k))) for g, k in res.keep.items()))
                              .encode()).hexdigest()[:8]
        agree = (agreement(res.scores, reference(name, path, calib, args.ref_mult, args.new), SHARE)
                 if args.ref_mult else None)
        print(json.dumps({"model": name, "wall": wall, "fwd": statistics.median(fwd),
                          "stages": stages, "value": value, "acc": acc, "keep": keep,
                          "agree": agree, "wrong": 0.0, "estimator": args.new,
                          "evals": sum(g.get("evaluations", 0) for g in res.report["groups"])}),
              flush=True)


def before_after(args) -> None:
    """This checkout ("after") against REV ("before", `git archive` into a temporary
    directory), alternately in fresh processes, `--rounds` times; medians per model."""
    import subprocess
    import tempfile
    rows: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="cost-before-") as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        for _ in range(args.rounds):
            for which, tree in (("before", Path(tmp)), ("after", ROOT)):
                env = {**os.environ, "PYTHONPATH": f"{tree}:{tree / 'cli'}"}
                cmd = [sys.executable, str(ROOT / "bench" / "cost.py"), "--child", "--models",
                       *args.models, "--samples", str(args.samples), "--new", args.new,
                       "--ref-mult", str(args.ref_mult)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                for line in out.stdout.splitlines():
                    if line.startswith("{"):
                        r = json.loads(line)
                        rows.setdefault((r["model"], which), []).append(r)
    table = []
    for name in args.models:
        for which in ("before", "after"):
            runs = rows.get((name, which), [])
            if not runs:
                continue
            med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "fwd")}
            stages = {s: statistics.median(r["stages"][s] * med["fwd"] / r["fwd"] for r in runs)
                      for s in STAGES}
            agree = next((r["agree"] for r in runs if r["agree"] is not None), float("nan"))
            table.append({**runs[0], "which": which, "estimator": f"{runs[0]['estimator']} "
                          f"(keep {runs[0]['keep']})", "wall": med["wall"], "fwd": med["fwd"],
                          "stages": stages, "agree": agree})
    print(f"\n{datetime.date.today()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
          f"before = {args.before}, {args.rounds} rounds (medians), {args.samples} samples")
    print(render(table, args))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--ref-mult", type=int, default=20)
    ap.add_argument("--old", default="persample")
    ap.add_argument("--new", default="truncated")
    ap.add_argument("--self-agreement", action="store_true",
                    help="also a second reference at another seed: its agreement with the first "
                         "(ref vs ref) is the ceiling of 'agree vs ref'")
    ap.add_argument("--profile", default=None, help="cProfile the commands on this model")
    ap.add_argument("--marginals", type=int, default=None,
                    help="truncated: per-unit marginal count of the command (default: the library's)")
    ap.add_argument("--before", default=None,
                    help="git revision: the default command (--new) on it against this checkout")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.before:
        return before_after(args)
    if args.marginals is not None:
        truncated_mod.DEFAULT_MARGINALS = args.marginals
    rows = []
    for name in args.models:
        rows += measure(name, args)
        print(render(rows[-2:], args), flush=True)
    load = os.getloadavg()[0]
    print(f"\n{datetime.date.today()}, {os.cpu_count()} cores, load {load:.1f}, "
          f"{args.samples} samples (FPE: stage seconds / one forward pass over them)")
    print(render(rows, args))


if __name__ == "__main__":
    main()
