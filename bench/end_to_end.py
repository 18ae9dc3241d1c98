"""End-to-end benchmark: prune zoo and trained models, then measure what was gained and lost.

    /work/venv/bin/python bench/end_to_end.py                 # table on stdout
    /work/venv/bin/python bench/end_to_end.py --write         # also docs/benchmarks.md, "End to end"
    /work/venv/bin/python bench/end_to_end.py --models resnet_basic --ratios 0.5 --seconds 3

For every model and ratio, `onnxprune.prune` runs twice (Shapley, its default budget,
seed 0): with the defaults, where compensation and a least-squares refit are candidates
next to plain removal and the one with the best value on the held-out quarter ships
("shipped", the report's `deploy`), and with `compensate=False, refit=False` ("none":
plain removal, scored without compensation). Per row:

- parameter and MAC ratios pruned/original, from the report;
- the MAC reduction (original MACs / pruned MACs) next to the measured ONNX Runtime CPU
  speed-up (original latency / pruned latency) at batch 1 and 32 (the shipped model).
  Latency is measured in one loop per model that runs the original and every pruned
  variant in turn, order rotated each round (A B C, B C A, ...), all sessions with the same
  options and `session.intra_op.allow_spinning=0` (docs/design.md, Measuring), for --seconds
  per batch size and at least --min-rounds rounds. The speed-up is the median of the
  per-round ratios original/pruned; [q1-q3] are their quartiles (the noise). "padded MAC
  red." is the MAC reduction with every Conv's output channels rounded up to the NCHWc
  block of ONNX Runtime's CPU kernels (16 with AVX-512, 8 with AVX2): ORT pads them so;
- the wall time of the whole `prune` call (defaults, `latency=False`: the report's own
  timing is left out since it is measured here) as a multiple of one forward pass of the
  original over the calibration set (median of 5 `session.run` on all samples, measured
  in the same run, session created beforehand);
- held-out fidelity of the shipped model and of plain removal: the report's `verification` (cosine
  and top-1 agreement against the original on the quarter of the calibration samples held
  out from scoring), and the same figures on a larger held-out set (512 fresh synthetic
  samples for zoo models; the 1,000 MNIST test images for the trained models, with
  accuracy).

Calibration: zoo models (random weights) get 64 seeded synthetic samples: standard normal
for float inputs; for the BERT-style encoder random ids in [0, 100) and an all-ones
attention mask, seq 16 (latency at seq 32). Trained MNIST models get the first 128 samples
of `models/trained/mnist_calib.npz` with their labels (so the value function is the task
loss); they are also pruned at ratio 0.1 (--trained-ratios), where they still work.

A `--round-to auto` experiment (issue 5) re-selects units at this machine's NCHWc multiple
from the same Shapley scores (`scores=`, no re-scoring; see ROUND_TO) and times them in the
same loop.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx

import onnxprune
from onnxprune.runtime import make_session
from onnxprune.deploy.verify import accuracy, compare, run_model

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "models" / "zoo"
TRAINED = ROOT / "models" / "trained"
ZOO_MODELS = ["resnet_basic", "resnet_bottleneck", "vgg_bn", "mobilenetv2", "unet", "c2f",
              "bert_tiny", "vit_tiny"]
TRAINED_MODELS = ["resnet_mnist", "vgg_mnist"]
MODELS = ZOO_MODELS + TRAINED_MODELS
RESNET = "resnet_basic"  # the "ResNet-style model" for the speed-up target
ROUND_TO = {  # (model, ratio) -> round_to values to try with the same scores
    ("resnet_basic", 0.5): ["auto"],
    ("resnet_basic", 0.3): ["auto"],
    ("resnet_bottleneck", 0.5): ["auto"],
    ("mobilenetv2", 0.5): ["auto"],
    ("resnet_mnist", 0.5): ["auto"],
}
N_CALIB, N_HELD, SEQ_CALIB, SEQ_LAT = 64, 512, 16, 32
N_TRAINED_CALIB = 128
START, END = "<!-- end_to_end:start -->", "<!-- end_to_end:end -->"


# ---------------------------------------------------------------- data

def synthetic(proto: onnx.ModelProto, n: int, seed: int, seq: int) -> dict[str, np.ndarray]:
    """Seeded synthetic inputs from the model's input signature."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in proto.graph.input:
        tt = inp.type.tensor_type
        dims = [d.dim_value if d.dim_value else None for d in tt.shape.dim]
        shape = [n] + [d if d is not None else seq for d in dims[1:]]
        if tt.elem_type == onnx.TensorProto.INT64:
            if inp.name == "attention_mask":
                feeds[inp.name] = np.ones(shape, np.int64)
            else:
                feeds[inp.name] = rng.integers(0, 100, shape).astype(np.int64)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def datasets(name: str, proto: onnx.ModelProto):
    """(calibration dict for prune, big held-out inputs, held-out labels or None,
    {batch: latency feeds})."""
    if name in TRAINED_MODELS:
        c = dict(np.load(TRAINED / "mnist_calib.npz"))
        t = dict(np.load(TRAINED / "mnist_test.npz"))
        calib = {k: v[:N_TRAINED_CALIB] for k, v in c.items()}
        held, labels = {"input": t["input"]}, t["labels"]
        lat = {b: {"input": t["input"][:b]} for b in (1, 32)}
        return calib, held, labels, lat
    calib = synthetic(proto, N_CALIB, seed=0, seq=SEQ_CALIB)
    held = synthetic(proto, N_HELD, seed=1, seq=SEQ_CALIB)
    lat = {b: synthetic(proto, b, seed=2, seq=SEQ_LAT) for b in (1, 32)}
    return calib, held, None, lat


# ---------------------------------------------------------------- MACs as ORT runs them

def nchwc_block() -> int:
    """MLAS's NCHWc block: 16 channels with AVX-512F, 8 with AVX2 (what ORT's CPU provider
    pads Conv output channels to when it switches a conv to the NCHWc layout)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 8
    return 16 if " avx512f" in flags else 8


def padded_macs(model: onnx.ModelProto, block: int) -> int:
    """MACs per sample with every Conv's output channels rounded up to `block` (an estimate of
    the work of ORT's NCHWc convolutions; other ops as counted by onnxprune)."""
    from onnxprune.compiler.cost import node_macs, weight_of
    graph = onnxprune.analyze_model(model).graph
    total = 0
    for node in graph.nodes:
        macs = node_macs(node)
        if node.op == "Conv" and macs and (w := weight_of(node)) is not None:
            c_out = int(w.shape[0])
            macs = macs * (-(-c_out // block) * block) / c_out
        total += macs
    return int(total)


# ---------------------------------------------------------------- timing

def forward_seconds(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], repeats: int = 5) -> float:
    """One forward pass of the original over the calibration set (one run, all samples)."""
    sess = make_session(proto, "cpu")
    names = [i.name for i in sess.get_inputs()]
    feeds = {k: feeds[k] for k in names}
    sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def interleaved(models: dict[str, onnx.ModelProto], feeds: dict[str, np.ndarray], *,
                seconds: float, min_rounds: int, max_rounds: int = 100000, warmup: int = 3):
    """Latency of several models run in turn on the same feeds (rotated order each round).
    Returns {key: array of per-round seconds}."""
    sessions = {k: make_session(m, "cpu", spinning=False) for k, m in models.items()}
    keys = list(sessions)
    names = [i.name for i in sessions[keys[0]].get_inputs()]
    feeds = {k: feeds[k] for k in names}
    for _ in range(warmup):
        for k in keys:
            sessions[k].run(None, feeds)
    times = {k: [] for k in keys}
    start, r = time.perf_counter(), 0
    while r < max_rounds and (r < min_rounds or time.perf_counter() - start < seconds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            t0 = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append(time.perf_counter() - t0)
        r += 1
    return {k: np.asarray(v) for k, v in times.items()}


def speedup(times: dict[str, np.ndarray], key: str) -> dict[str, float]:
    """Median and quartiles of the per-round ratios original/pruned (each round runs both
    back to back, so a load change hits both sides of a ratio)."""
    base, other = times["original"], times[key]
    per_round = base / other
    return {"speedup": float(np.median(per_round)),
            "ratio_of_medians": float(np.median(base) / np.median(other)),
            "q1": float(np.percentile(per_round, 25)), "q3": float(np.percentile(per_round, 75)),
            "ms_before": float(1e3 * np.median(base)), "ms_after": float(1e3 * np.median(other)),
            "rounds": int(len(base))}


# ---------------------------------------------------------------- fidelity

def fidelity(original: onnx.ModelProto, pruned: onnx.ModelProto, held, labels, want=None):
    names = [o.name for o in original.graph.output]
    want = want if want is not None else run_model(original, held)
    got = run_model(pruned, held)
    out = {"outputs": [f.to_json() for f in compare(names, want, got)]}
    if labels is not None:
        out["accuracy_before"] = accuracy(want, labels)
        out["accuracy_after"] = accuracy(got, labels)
    return out


# ---------------------------------------------------------------- one model

def bench_model(name: str, ratios: list[float], seconds: float, min_rounds: int,
                round_to: bool, log) -> list[dict]:
    path = (TRAINED if name in TRAINED_MODELS else ZOO) / f"{name}.onnx"
    proto = onnx.load(str(path))
    block = nchwc_block()
    padded_before = padded_macs(proto, block)
    calib, held, labels, lat_feeds = datasets(name, proto)
    fwd = forward_seconds(proto, {k: v for k, v in calib.items() if k != "labels"})
    want = run_model(proto, held)
    rows, variants = [], {"original": proto}
    for ratio in ratios:
        res = {}
        for comp in (True, False):
            t0 = time.perf_counter()
            r = onnxprune.prune(str(path), calib=calib, ratio=ratio, compensate=comp,
                                refit=comp, latency=False, seed=0)
            wall = time.perf_counter() - t0
            res[comp] = (r, wall)
            log(f"  {name} ratio {ratio} {'defaults' if comp else 'none'}: {wall:.1f} s, "
                f"shipped {r.report['deploy']['chosen']}")
        r, wall = res[True]
        rep, rep_none = r.report, res[False][0].report
        key = f"r{ratio}"
        variants[key] = r.model
        row = {
            "model": name, "ratio": ratio, "round_to": 1, "key": key,
            "trained": name in TRAINED_MODELS,
            "params_ratio": rep["after"]["params"] / rep["before"]["params"],
            "macs_ratio": rep["after"]["macs"] / rep["before"]["macs"],
            "mac_reduction": rep["before"]["macs"] / max(rep["after"]["macs"], 1),
            "macs_before": rep["before"]["macs"], "params_before": rep["before"]["params"],
            "widths": [(g["units"], g["kept"]) for g in rep["groups"] if g["prunable"]],
            "prune_seconds": wall, "prune_seconds_none": res[False][1],
            "forward_seconds": fwd, "prune_over_forward": wall / fwd,
            "stage_seconds": rep["seconds"],
            "padded_mac_reduction": padded_before / max(padded_macs(r.model, block), 1),
            "verification": {"comp": rep["verification"], "none": rep_none["verification"]},
            "held_out": {"comp": fidelity(proto, r.model, held, labels, want),
                         "none": fidelity(proto, res[False][0].model, held, labels, want)},
            "calibration_samples": rep["calibration_samples"],
            "shipped": rep["deploy"]["chosen"], "deploy": rep["deploy"],
        }
        # structural equality of the two models' widths (compensation may add bias nodes)
        row["same_widths"] = row["widths"] == [(g["units"], g["kept"])
                                               for g in rep_none["groups"] if g["prunable"]]
        rows.append(row)
        for rt in (ROUND_TO.get((name, ratio), []) if round_to else []):
            t0 = time.perf_counter()
            r2 = onnxprune.prune(str(path), calib=calib, ratio=ratio, round_to=rt,
                                 scores=r.scores, latency=False, seed=0)
            wall2 = time.perf_counter() - t0
            rep2 = r2.report
            rt = rep2["options"]["round_to"]
            k2 = f"r{ratio}_rt{rt}"
            variants[k2] = r2.model
            rows.append({
                **{k: row[k] for k in ("model", "ratio", "trained", "macs_before",
                                       "params_before", "forward_seconds")},
                "round_to": rt, "key": k2,
                "params_ratio": rep2["after"]["params"] / rep2["before"]["params"],
                "macs_ratio": rep2["after"]["macs"] / rep2["before"]["macs"],
                "mac_reduction": rep2["before"]["macs"] / max(rep2["after"]["macs"], 1),
                "widths": [(g["units"], g["kept"]) for g in rep2["groups"] if g["prunable"]],
                "padded_mac_reduction": padded_before / max(padded_macs(r2.model, block), 1),
                "prune_seconds": wall2, "prune_over_forward": None, "reused_scores": True,
                "verification": {"comp": rep2["verification"], "none": None},
                "held_out": {"comp": fidelity(proto, r2.model, held, labels, want), "none": None},
                "calibration_samples": rep2["calibration_samples"],
                "shipped": rep2["deploy"]["chosen"], "deploy": rep2["deploy"],
            })
            log(f"  {name} ratio {ratio} round_to={rt} (reused scores): {wall2:.1f} s")
    for batch, feeds in lat_feeds.items():
        times = interleaved(variants, feeds, seconds=seconds, min_rounds=min_rounds)
        for row in rows:
            row[f"lat_b{batch}"] = speedup(times, row["key"])
        log(f"  {name} latency batch {batch}: {len(times['original'])} rounds, original "
            f"{1e3 * np.median(times['original']):.2f} ms")
    return rows


# ---------------------------------------------------------------- table

def _fid(v: dict | None, what: str) -> str:
    if v is None:
        return "—"
    vals = [o[what] for o in v["outputs"]]
    if what == "top1_agreement":
        vals = [x for x in vals if x is not None]
        return ", ".join(f"{x:.2f}" for x in vals) if vals else "—"
    return ", ".join(f"{x:.4f}" if x > 0.99 else f"{x:.3f}" for x in vals)


def _lat(d: dict) -> str:
    return f"{d['speedup']:.2f} [{d['q1']:.2f}-{d['q3']:.2f}]"


def table(rows: list[dict]) -> str:
    head = ("| model | ratio | params | MACs | MAC reduction | padded MAC red. | "
            "speed-up b1 [q1-q3] | speed-up / MAC red. b1 | speed-up b32 [q1-q3] | "
            "speed-up / MAC red. b32 | prune s | prune / fwd pass | shipped | cosine shipped | "
            "cosine none | top-1 shipped | top-1 none |")
    lines = [head, "|---|---:|" + "---:|" * 10 + "---|" + "---:|" * 4]
    for r in rows:
        model = r["model"] + (" (trained)" if r["trained"] else "")
        ratio = f"{r['ratio']}" + (f" round_to {r['round_to']}" if r["round_to"] > 1 else "")
        vc, vn = r["verification"]["comp"], r["verification"]["none"]
        wall = (f"{r['prune_seconds']:.1f}" if r["prune_over_forward"] is not None
                else f"{r['prune_seconds']:.1f} (scores reused)")
        mult = f"{r['prune_over_forward']:.0f}x" if r["prune_over_forward"] is not None else "—"
        lines.append(
            f"| {model} | {ratio} | {r['params_ratio']:.2f} | {r['macs_ratio']:.2f} | "
            f"{r['mac_reduction']:.2f}x | {r['padded_mac_reduction']:.2f}x | {_lat(r['lat_b1'])} | "
            f"{r['lat_b1']['speedup'] / r['mac_reduction']:.2f} | {_lat(r['lat_b32'])} | "
            f"{r['lat_b32']['speedup'] / r['mac_reduction']:.2f} | {wall} | {mult} | "
            f"{r.get('shipped', '—')} | {_fid(vc, 'cosine')} | {_fid(vn, 'cosine')} | "
            f"{_fid(vc, 'top1_agreement')} | {_fid(vn, 'top1_agreement')} |")
    return "\n".join(lines)


def held_out_table(rows: list[dict]) -> str:
    lines = ["| model | ratio | held-out samples | cosine shipped | cosine none | top-1 shipped | "
             "top-1 none | accuracy original / shipped / none |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["round_to"] > 1:
            continue
        hc, hn = r["held_out"]["comp"], r["held_out"]["none"]
        acc = (f"{hc['accuracy_before']:.3f} / {hc['accuracy_after']:.3f} / {hn['accuracy_after']:.3f}"
               if "accuracy_before" in hc else "—")
        n = 1000 if r["trained"] else N_HELD
        lines.append(f"| {r['model']} | {r['ratio']} | {n} | {_fid(hc, 'cosine')} | "
                     f"{_fid(hn, 'cosine')} | {_fid(hc, 'top1_agreement')} | "
                     f"{_fid(hn, 'top1_agreement')} | {acc} |")
    return "\n".join(lines)


def exceptions(rows: list[dict], which: str) -> list[str]:
    """Places where the shipped model is less faithful than plain removal (per output)."""
    out = []
    for r in rows:
        if r["round_to"] > 1:
            continue
        c, n = r[which]["comp"], r[which]["none"]
        for oc, on in zip(c["outputs"], n["outputs"]):
            if oc["cosine"] < on["cosine"] - 1e-6:
                out.append(f"{r['model']} ratio {r['ratio']} output '{oc['name']}': cosine "
                           f"{oc['cosine']:.4f} shipped ({r['shipped']}) vs {on['cosine']:.4f} none "
                           f"(-{on['cosine'] - oc['cosine']:.4f})")
            if (oc["top1_agreement"] is not None and on["top1_agreement"] is not None
                    and oc["top1_agreement"] < on["top1_agreement"]):
                out.append(f"{r['model']} ratio {r['ratio']} output '{oc['name']}': top-1 "
                           f"agreement {oc['top1_agreement']:.3f} shipped ({r['shipped']}) vs "
                           f"{on['top1_agreement']:.3f} none "
                           f"(-{on['top1_agreement'] - oc['top1_agreement']:.3f})")
        if "accuracy_after" in c and c["accuracy_after"] < n["accuracy_after"]:
            out.append(f"{r['model']} ratio {r['ratio']}: accuracy {c['accuracy_after']:.3f} shipped "
                       f"({r['shipped']}) vs {n['accuracy_after']:.3f} none")
    return out


def summary(rows: list[dict], total_seconds: float) -> str:
    lines = []
    target = [r for r in rows if r["model"] == RESNET and r["ratio"] == 0.5]
    for r in target:
        for b in (1, 32):
            s = r[f"lat_b{b}"]
            ok = s["speedup"] >= 0.7 * r["mac_reduction"]
            tag = f" round_to {r['round_to']}" if r["round_to"] > 1 else ""
            lines.append(f"- speed-up target ({RESNET} ratio 0.5{tag}, batch {b}): measured "
                         f"{s['speedup']:.2f}x vs 0.7 x {r['mac_reduction']:.2f} = "
                         f"{0.7 * r['mac_reduction']:.2f}x: **{'met' if ok else 'not met'}** "
                         f"({s['ms_before']:.2f} ms -> {s['ms_after']:.2f} ms, "
                         f"{s['rounds']} rounds)")
    for which, label in (("verification", "the report's held-out quarter"),
                         ("held_out", "the larger held-out set")):
        exc = exceptions(rows, which)
        lines.append(f"- shipped model worse than plain removal on {label}: "
                     + ("none" if not exc else f"{len(exc)} case(s)"))
        lines += [f"  - {e}" for e in exc]
    iqr = [r[f"lat_b{b}"]["q3"] / r[f"lat_b{b}"]["q1"] for r in rows for b in (1, 32)]
    lines.append(f"- noise: the per-round speed-up ratios have q3/q1 from {min(iqr):.2f} to "
                 f"{max(iqr):.2f} (median {float(np.median(iqr)):.2f}) across rows")
    lines.append(f"- total run time {total_seconds / 60:.1f} min")
    return "\n".join(lines)


def machine_note() -> str:
    try:
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    import onnxruntime
    return (f"2 shared cores; ratios measured side by side (os.cpu_count()={os.cpu_count()}, "
            f"load average at the end {load}; onnxruntime {onnxruntime.__version__}, "
            f"Python {platform.python_version()})")


def write_doc(text: str) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    body = doc.read_text()
    if START in body and END in body:
        pre, rest = body.split(START, 1)
        body = pre + text + rest.split(END, 1)[1]
    elif "## End to end" in body:
        pre, rest = body.split("## End to end", 1)
        nxt = rest.find("\n## ")
        body = pre + "## End to end\n\n" + text + ("\n" + rest[nxt:] if nxt >= 0 else "\n")
    else:
        body = body.rstrip("\n") + "\n\n## End to end\n\n" + text + "\n"
    doc.write_text(body)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    p.add_argument("--trained-ratios", nargs="+", type=float, default=[0.1, 0.3, 0.5],
                   help="ratios for the trained models (default 0.1 0.3 0.5)")
    p.add_argument("--seconds", type=float, default=8.0,
                   help="latency measuring time per model and batch size (default 8)")
    p.add_argument("--min-rounds", type=int, default=40)
    p.add_argument("--no-round-to", action="store_true")
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    rows = []
    for name in args.models:
        log(f"{name}")
        ratios = args.trained_ratios if name in TRAINED_MODELS else args.ratios
        rows += bench_model(name, ratios, args.seconds, args.min_rounds,
                            not args.no_round_to, log)
    total = time.perf_counter() - t0
    command = "/work/venv/bin/python bench/end_to_end.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    date = datetime.date.today().isoformat()
    text = (f"{START}\n`{command.strip()}` ({date}; {machine_note()})\n\n"
            f"{table(rows)}\n\nHeld-out fidelity on a larger set (zoo: {N_HELD} synthetic "
            f"samples, seed 1; trained: the 1,000 MNIST test images):\n\n{held_out_table(rows)}"
            f"\n\n{summary(rows, total)}\n{END}")
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
    if args.write:
        write_doc(text)


if __name__ == "__main__":
    main()
