"""Benchmark of the scoring engine: coalition evaluations per second.

    /work/venv/bin/python bench/engine.py [--samples 32 8] [--coalitions 32] [--repeats 5]

For a few zoo models at an early, a middle and a late group, three ways to evaluate the
same random coalitions on the same N calibration samples, measured in one process,
interleaved A B C A B C ... (docs/design.md, Measuring), medians reported:

  (a) naive   the fully instrumented model, one coalition per session.run (N rows)
  (b) batch   Engine(prefix_cache=False): K coalitions x N samples per run
  (c) prefix  Engine(prefix_cache=True): batching + only the suffix after the cut runs
              (on CPU the cut is made on ORT's optimized graph of the instrumented model)

Every session has `session.intra_op.allow_spinning=0`. Setup (instrumenting, the prefix
pass, session creation, the engine's timing of K) is excluded: each method is warmed up on
its group first; the engines' setup time per group is printed after each table. The load
average (other jobs share the cores) is printed with each table. The last part runs the
engine in child processes at two memory bounds and reports their peak RSS (VmHWM), which
must stay bounded at the small one.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.calib import Calibration
from onnxprune.compiler.cost import count_macs
from onnxprune.scoring.cut import cut_model
from onnxprune.scoring.engine import Engine
from onnxprune.compiler.graph import to_proto
from onnxprune.compiler.instrument import instrument, mask_name
from onnxprune.model import analyze_model
from onnxprune.runtime import make_session
from onnxprune.scoring.value import NegKL

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "models" / "zoo"
MODELS = ("resnet_basic", "resnet_bottleneck", "vgg_bn", "mobilenetv2")
ALL_GROUPS = ("resnet_basic", "resnet_bottleneck")  # the target: all groups of a ResNet


def calibration(am, n: int, seed: int = 0) -> Calibration:
    rng = np.random.default_rng(seed)
    inputs = {t.name: rng.standard_normal([n, *t.shape[1:]]).astype(np.float32)
              for t in am.graph.inputs}
    return Calibration(inputs)


class Naive:
    """(a): one session.run per coalition on the fully instrumented model."""

    def __init__(self, am, calib: Calibration, gid: int) -> None:
        self.sess = make_session(to_proto(instrument(am.analysis, [gid]), am.ident), "cpu",
                                 spinning=False)
        self.inputs, self.gid, self.n = calib.inputs, gid, calib.n_samples
        self.value_fn = NegKL()
        ref = make_session(am.proto, "cpu", spinning=False).run(None, self.inputs)
        self.value_fn.prepare(ref, None)

    def values(self, gid: int, coalitions: np.ndarray) -> np.ndarray:
        out = []
        for row in coalitions.astype(np.float32):
            feeds = {**self.inputs, mask_name(gid): np.repeat(row[None], self.n, axis=0)}
            outs = self.sess.run(None, feeds)
            out.append(self.value_fn([o[None] for o in outs]))
        return np.concatenate(out)


def positions(am) -> dict[str, int]:
    """Early, middle and late prunable group by the position of their first mask site."""
    order = {n.outputs[0].name: i for i, n in enumerate(am.graph.nodes) if n.outputs}
    first = {}
    for site in am.analysis.sites:
        for g in np.unique(am.analysis.ch_group[site.ids]).tolist():
            if am.analysis.group(g).prunable:
                first[g] = min(first.get(g, 1 << 30), order[site.node])
    ranked = sorted(first, key=first.get)
    return {"early": ranked[0], "middle": ranked[len(ranked) // 2], "late": ranked[-1]}


def measure(model: str, gids: dict[str, int], n: int, args) -> list[dict]:
    am = analyze_model(ZOO / f"{model}.onnx")
    calib = calibration(am, n)
    methods: dict = {
        "a": None,  # per group, below
        "b": Engine(am, calib, NegKL(), prefix_cache=False, spinning=False),
        "c": Engine(am, calib, NegKL(), prefix_cache=True, spinning=False),
    }
    rng = np.random.default_rng(1)
    rows = []
    setup: dict[str, float] = {}
    for where, gid in gids.items():
        methods["a"] = Naive(am, calib, gid)
        coalitions = rng.random((args.coalitions, am.analysis.group(gid).units)) < 0.5
        for key, m in methods.items():  # warm-up: builds plans, fills the prefix cache
            t0 = time.perf_counter()
            m.values(gid, coalitions[:2])
            setup[key] = time.perf_counter() - t0
        times = {k: [] for k in methods}
        results = {}
        for _ in range(args.repeats):
            for key, m in methods.items():
                t0 = time.perf_counter()
                results[key] = m.values(gid, coalitions)
                times[key].append(time.perf_counter() - t0)
        for key in "bc":  # the three must agree
            np.testing.assert_allclose(results[key], results["a"], rtol=1e-3, atol=1e-5)
        rate = {k: args.coalitions / statistics.median(v) for k, v in times.items()}
        plan = methods["c"].info()["plans"][str(gid)]
        cut = ("ORT graph" if plan.get("preoptimized") else "source") if plan["prefix"] else "no"
        rows.append({"model": model, "n": n, "where": where, "gid": gid,
                     "units": am.analysis.group(gid).units, **rate, "share": suffix_share(am, gid),
                     "k": plan["k_per_run"], "cut": cut, "setup_b": setup["b"], "setup_c": setup["c"]})
    return rows


def suffix_share(am, gid: int) -> float:
    """MACs of the suffix that runs per coalition / MACs of the whole model. 1/share is what
    prefix caching would gain if time followed MACs; it does not quite (early layers do
    fewer MACs per second), so it is no strict bound."""
    suffix = cut_model(am.analysis, am.ident, [gid], None, prefix=True).suffix
    return count_macs(gs.import_onnx(suffix)) / count_macs(am.graph)


def rss_child(model: str, mb: float, args) -> None:
    """Runs in a child process: prints peak RSS before and after scoring at bound `mb`."""
    am = analyze_model(ZOO / f"{model}.onnx")
    calib = calibration(am, args.rss_samples)
    before = vm_hwm_mb()
    engine = Engine(am, calib, NegKL(), max_memory_mb=mb, spinning=False)
    rng = np.random.default_rng(2)
    for g in positions(am).values():
        engine.values(g, rng.random((args.coalitions, am.analysis.group(g).units)) < 0.5)
    info = engine.info()
    print(f"{before:.0f} {vm_hwm_mb():.0f} {info['k_per_run']} {info['samples_per_run']}")


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_table(model: str, bounds: list[float], args) -> list[str]:
    lines = ["| model | max_memory_mb | peak RSS before engine (MB) | peak RSS after scoring (MB) "
             "| K per run (last group) | samples per run |", "|---|---|---|---|---|---|"]
    for mb in bounds:
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(mb), "--rss-model", model,
                              "--rss-samples", str(args.rss_samples), "--coalitions", str(args.coalitions)],
                             capture_output=True, text=True, check=True).stdout.split()
        lines.append(f"| {model} | {mb:g} | {out[0]} | {out[1]} | {out[2]} | {out[3]} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, nargs="+", default=[32, 8])
    p.add_argument("--coalitions", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", nargs="*", default=list(MODELS))
    p.add_argument("--rss-samples", type=int, default=256)
    p.add_argument("--rss-child", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rss-model", default="resnet_basic", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child is not None:
        return rss_child(args.rss_model, args.rss_child, args)

    print(f"date: {datetime.date.today()}  cores: {os.cpu_count()}  {args.coalitions} coalitions "
          f"per measurement, {args.repeats} interleaved repeats, medians")
    for n in args.samples:
        rows = []
        load_before = os.getloadavg()
        for model in args.models:
            am = analyze_model(ZOO / f"{model}.onnx")
            gids = positions(am)
            if model in ALL_GROUPS:
                gids = {**gids, **{f"g{g.id}": g.id for g in am.analysis.prunable
                                   if g.id not in gids.values()}}
            rows += measure(model, gids, n, args)
        print_table(rows, n, args)
        print(f"load average (1, 5, 15 min) before: {fmt_load(load_before)}, "
              f"after: {fmt_load(os.getloadavg())}")
        print(f"setup per group (first call, incl. K timing), median: (b) "
              f"{statistics.median(r['setup_b'] for r in rows):.2f} s, (c) "
              f"{statistics.median(r['setup_c'] for r in rows):.2f} s")
    rss_report(args)


def fmt_load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.1f}" for x in load)


def print_table(rows: list[dict], n: int, args) -> None:
    print(f"\nN = {n} calibration samples")
    print("| model | group (position) | units | suffix MACs | (a) naive evals/s | (b) batched evals/s "
          "| (c) batched+prefix evals/s | (b)/(a) | (c)/(a) | K per run (c) | cut |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['model']} | {r['gid']} ({r['where']}) | {r['units']} | {100 * r['share']:.0f}% "
              f"| {r['a']:.0f} | {r['b']:.0f} | {r['c']:.0f} | {r['b'] / r['a']:.2f} "
              f"| {r['c'] / r['a']:.2f} | {r['k']} | {r['cut']} |")
    for model in args.models:
        mine = [r for r in rows if r["model"] == model]
        ca = statistics.mean(r["c"] / r["a"] for r in mine)
        ba = statistics.mean(r["b"] / r["a"] for r in mine)
        bound = statistics.mean(1 / r["share"] for r in mine)
        print(f"mean over the {len(mine)} groups of {model}: (b)/(a) = {ba:.2f}, (c)/(a) = {ca:.2f} "
              f"(mean MAC ratio, model / suffix: {bound:.2f})")


def rss_report(args) -> None:
    print()
    print(f"peak RSS, {args.rss_samples} samples, early/middle/late groups scored in a child process:")
    print("\n".join(rss_table("resnet_basic", [32, 128, 2048], args)))


if __name__ == "__main__":
    main()
