"""Where an evaluation's time goes: the engine's masked suffix against the same suffix unmasked.

    PYTHONPATH=.:cli python bench/evalcost.py [--models minilm_l6 resnet_mnist mobilenetv2]
        [--repeats 7] [--coalitions 64]

Per model and group (as the default command scores them: the mean-compensated game, the
default value function, 48 scoring samples of 64), in one process, alternating A B C D ...,
medians, ms per coalition over all scoring samples at the K the engine tuned:

  (o) old       `Engine.values` with every ORT CPU rewrite (before CPU_DISABLED_OPTIMIZERS),
                K as that engine tuned it
  (a) engine    `Engine.values` as the estimators call it (runs + masks + value function)
  (b) ort       the same ORT runs of the engine's suffix session alone, on the held feeds
  (c) unmasked  the same suffix graph with the mask multiplies and compensation Adds bypassed
                (what the cut costs without any masking; same session options)
  (d) fpe·share one forward pass of the original model over the scoring samples x the
                suffix's MAC share: what the benchmarks' cost model predicts
  (e) fp - pre  one forward pass minus one run of the group's prefix on the same samples:
                the suffix's real share of a forward pass

With `--joint [MODEL ...]`: per model, every group's K coalitions one group after another
against all of them in one `Engine.values_joint` run (item 3 of issue 16's evaluation part).

a - b is the engine's Python (mask rows, output buffers, the value function); b - c what the
masks cost inside ORT.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost import data, model_path  # noqa: E402

from onnxprune.calib import Calibration  # noqa: E402
from onnxprune.compiler.graph import ModelIdentity, to_proto  # noqa: E402
from onnxprune.model import analyze_model  # noqa: E402
from onnxprune.runtime import make_session  # noqa: E402
from onnxprune.scoring import cut as cut_mod, engine as engine_mod  # noqa: E402
from onnxprune.scoring.plans import mask_rows  # noqa: E402
from onnxprune.scoring.run import make_engine  # noqa: E402
from onnxprune.scoring.site_stats import site_means  # noqa: E402

BYPASS = ("_masked", "_filled", "_compensated")


def unmasked(suffix: onnx.ModelProto) -> onnx.ModelProto:
    """The suffix with every mask multiply / fill / compensation Add replaced by its data input."""
    graph = gs.import_onnx(suffix)
    for node in list(graph.nodes):
        if node.name.startswith("onnxprune_site") and node.name.endswith(BYPASS):
            src, out = node.inputs[0], node.outputs[0]
            for consumer in list(out.outputs):
                for i, t in enumerate(consumer.inputs):
                    if t is out:
                        consumer.inputs[i] = src
            graph.outputs = [src if t is out else t for t in graph.outputs]
            if node.name.endswith("_compensated"):  # y was renamed raw: keep the output's name
                for i, t in enumerate(graph.outputs):
                    if t is src:
                        src.name, out.name = out.name, out.name + "_gone"
            out.inputs.clear()
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    graph.inputs = [t for t in graph.inputs if t.outputs]
    return to_proto(graph, ModelIdentity.of(suffix))


@contextlib.contextmanager
def old_rewrites():
    """Sessions made inside get every ORT CPU rewrite (the engine before this bench's change)."""
    saved = cut_mod.CPU_DISABLED_OPTIMIZERS
    cut_mod.CPU_DISABLED_OPTIMIZERS = engine_mod.CPU_DISABLED_OPTIMIZERS = ()
    try:
        yield
    finally:
        cut_mod.CPU_DISABLED_OPTIMIZERS = engine_mod.CPU_DISABLED_OPTIMIZERS = saved


def groups(am, model: str) -> dict[str, int]:
    prunable = [g for g in am.analysis.prunable]
    if model == "minilm_l6":  # one FFN group and one head group (the middle layer's)
        ffn = [g.id for g in prunable if g.units == 1536]
        heads = [g.id for g in prunable if g.units == 12]
        return {"ffn": ffn[len(ffn) // 2], "heads": heads[len(heads) // 2]}
    ids = [g.id for g in prunable]
    return {"early": ids[0], "middle": ids[len(ids) // 2], "late": ids[-1]}


def measure(model: str, args) -> list[dict]:
    path = model_path(model)
    am = analyze_model(path)
    calib_d, _, _ = data(model, am.proto, 64)
    scoring = Calibration({k: v[:48] for k, v in calib_d.items()})
    means = site_means(am.analysis, am.ident, scoring.inputs)
    engine = make_engine(am, scoring, means=means)
    with old_rewrites():
        old = make_engine(am, scoring, means=means)
    full = make_session(am.proto, "cpu", spinning=False)
    feeds = {i.name: scoring.inputs[i.name] for i in full.get_inputs()}
    rows = []
    for where, gid in groups(am, model).items():
        units = am.analysis.group(gid).units
        rng = np.random.default_rng(0)
        engine.values(gid, rng.random((2, units)) < 0.5)
        with old_rewrites():
            old.values(gid, rng.random((2, units)) < 0.5)
        plan = engine._plans[(gid,)]
        k = plan.k_run
        coal = rng.random((k, units)) < 0.5
        prefix = engine._session(plan.cut.prefix, "cpu", plan.cut.preoptimized) if plan.prefixed else None
        plain = engine._session(unmasked(plan.cut.suffix), "cpu", plan.cut.preoptimized)
        masks = [mask_rows(coal[:k].astype(np.float32), c) for c in plan.chunks]

        def ort_runs(sess, with_masks: bool) -> None:
            for c, held, m in zip(plan.chunks, plan.feeds, masks):
                data_in, _ = engine.backend.tiled(held, k, c.rows)
                extra = {f"onnxprune_mask_{gid}": m} if with_masks else {}
                names = [o.name for o in sess.get_outputs()]
                wanted = {i.name for i in sess.get_inputs()}
                feed = {n: v for n, v in {**data_in, **extra}.items() if n in wanted}
                sess.run(names, feed)

        ways = {"o": lambda: old.values(gid, coal[:k]),
                "a": lambda: engine.values(gid, coal[:k]),
                "b": lambda: ort_runs(plan.session, True),
                "c": lambda: ort_runs(plain, False),
                "d": lambda: full.run(None, feeds),
                "e": lambda: prefix and prefix.run(plan.cut.cached, {i.name: feeds[i.name] for i in prefix.get_inputs()})}
        times = {w: [] for w in ways}
        for f in ways.values():
            f()
        for _ in range(args.repeats):
            for w, f in ways.items():
                t0 = time.perf_counter()
                f()
                times[w].append(time.perf_counter() - t0)
        ms = {w: 1e3 * statistics.median(t) for w, t in times.items()}
        new_v, old_v = engine.values(gid, coal), old.values(gid, coal)
        diff = float(np.abs(new_v - old_v).max() / max(np.abs(old_v).max(), 1e-30))
        share = plan.cut.mac_share
        rows.append({"model": model, "where": where, "gid": gid, "units": units, "k": k,
                     "o": ms["o"] / k, "ko": old._plans[(gid,)].k_run, "diff": diff,
                     "a": ms["a"] / k, "b": ms["b"] / k, "c": ms["c"] / k,
                     "d": ms["d"] * share, "fp": ms["d"], "share": share, "e": ms["d"] - ms["e"]})
    return rows


def joint(model: str, ks: list[int], repeats: int) -> None:
    """Every group of `model` scored one after another (each on its active plan, as the
    estimators do) against all groups' coalitions carried in one `values_joint` run (rows of
    group j: its coalition, the other groups all ones), medians of `repeats`, alternated."""
    am = analyze_model(model_path(model))
    calib_d, _, _ = data(model, am.proto, 64)
    scoring = Calibration({k: v[:48] for k, v in calib_d.items()})
    engine = make_engine(am, scoring, means=site_means(am.analysis, am.ident, scoring.inputs))
    gids = [g.id for g in am.analysis.prunable]
    units = [am.analysis.group(g).units for g in gids]
    off = np.cumsum([0, *units])
    rng = np.random.default_rng(0)
    for k in ks:
        coal = [rng.random((k, u)) < 0.5 for u in units]
        block = np.ones((k * len(gids), off[-1]), bool)
        for j, c in enumerate(coal):
            block[j * k:(j + 1) * k, off[j]:off[j + 1]] = c
        diff = np.abs(np.concatenate([engine.values(g, c) for g, c in zip(gids, coal)])
                      - engine.values_joint(gids, block)).max()
        sep, one = [], []
        for _ in range(3):
            sep.append(sum(_median(lambda g=g, c=c: engine.values(g, c), repeats)
                           for g, c in zip(gids, coal)))
            one.append(_median(lambda: engine.values_joint(gids, block), repeats))
        s, j = statistics.median(sep), statistics.median(one)
        print(f"| {model} | {len(gids)} | {k} | {1e3 * s:.2f} | {1e3 * j:.2f} | {s / j:.2f} "
              f"| {diff:.1e} |", flush=True)


def _median(f, repeats: int) -> float:
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=["minilm_l6", "resnet_mnist", "mobilenetv2"])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--coalitions", type=int, default=64)
    p.add_argument("--joint", nargs="*", default=None, metavar="MODEL",
                   help="instead: groups one after another against all groups in one run")
    p.add_argument("--k", type=int, nargs="+", default=[4, 16, 64])
    args = p.parse_args()
    load = os.getloadavg()
    if args.joint is not None:
        print("| model | groups | K per group | one after another ms | all in one run ms "
              "| after/one | max abs diff |\n|---|---:|---:|---:|---:|---:|---:|")
        for model in args.joint or ["digits_cnn", "resnet_mnist"]:
            joint(model, args.k, args.repeats)
        print(f"load average before: {' '.join(f'{x:.1f}' for x in load)}")
        return
    print("| model | group | units | K old / new | suffix MACs | (o) old engine ms/coal | (a) engine "
          "| o/a | values rel. diff | (b) ORT suffix | (c) unmasked suffix | (d) forward x share "
          "| (e) forward - prefix | a/c | b/c | c/d | c/e |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
        for r in measure(model, args):
            print(f"| {r['model']} | {r['gid']} ({r['where']}) | {r['units']} | {r['ko']} / {r['k']} "
                  f"| {100 * r['share']:.0f}% | {r['o']:.3f} | {r['a']:.3f} | {r['o'] / r['a']:.2f} "
                  f"| {r['diff']:.1e} | {r['b']:.3f} | {r['c']:.3f} "
                  f"| {r['d']:.3f} | {r['e']:.3f} | {r['a'] / r['c']:.2f} | {r['b'] / r['c']:.2f} "
                  f"| {r['c'] / r['d']:.2f} | {r['c'] / r['e']:.2f} |", flush=True)
    print(f"load average before: {' '.join(f'{x:.1f}' for x in load)}, after: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
