"""Issue 15: the study's five models at matched PARAMETER and MAC budgets, onnxprune against
Torch-Pruning 1.6.1 and onnxsim 0.8.1's two pruners, no fine-tuning for anyone.

    nice -n 10 python bench/peers.py --max-minutes 40   # the full run (writes docs/peers.json)
    python bench/peers.py --quick                       # cnn_digits, budget 0.5, seed 0 (< 2 min)
    python bench/peers.py --onnxprune-only              # keep the cached peer rows, redo onnxprune's
    python bench/peers.py --from-json                   # tables only
    nice -n 10 python bench/peers.py --append --budgets --mac-budgets 0.5   # the MAC budget only

Needs torch==2.13.0, torch-pruning==1.6.1 and onnxsim==0.8.1 (dev tools, not dependencies).

Budget = the fraction of the model's weight parameters removed: the weight elements of the
channel-mixing ops (Conv/Gemm/MatMul), `low_data.weight_params`, counted the same way on every
tool's exported ONNX (BN folding and biases do not move it). Every tool is driven to the
budget: Torch-Pruning's `pruning_ratio` and onnxsim's `sparsity` by bisection, onnxprune's
`ratio` (target="params") by a secant correction; each record keeps the reduction reached.
A MAC budget (`--mac-budgets`) is the fraction of the model's MACs removed, counted by
onnxprune's own cost model (compiler/cost.count_macs: Conv/ConvTranspose/Gemm/MatMul
multiply-accumulates per sample, from the weight size and the static output dims) on each
tool's exported ONNX after ONNX shape inference, `onnx_macs`; every tool is driven to it the
same way (onnxprune with target="macs"; Torch-Pruning's bisection counts the same MACs on the
module with forward hooks, checked equal to the ONNX count on the unpruned module).

Torch-Pruning: the PyTorch modules of models/train_study.py loaded with the SAME weights as
models/trained/*.onnx (initializers mapped to parameters by name, else by shape and order;
logits checked against ORT on 32 test images to 1e-4), `MetaPruner` with global pruning on and
off, importances MagnitudeImportance(p=1) (L1), BNScaleImportance and TaylorImportance (library
defaults), the final classifier ignored. Taylor's loss: cross-entropy of the model on the 128
calibration samples against the original model's own predictions (pseudo-labels; no labels
are used by anyone). Exported with train_study.export (opset 13, BN kept).
onnxsim: low_data's protocol (magnitude and Wanda on the `onnxsim.simplify`d model, Wanda fed
all 128 calibration samples).
onnxprune: every metric of METRICS, allocations `global` (prune()'s default: the global
ranking, the uniform one as the guard's fallback) and `uniform`, deployments `plain`
(compensate=False, refit=False) and `default` (guarded compensation and refit); low_data's
protocol (scores on prune()'s 75 % scoring split, passed with `scores=`).
Calibration: the study's 128 samples drawn from models/trained/*_calib.npz with seeds 0, 1, 2.
Deterministic rows (run once, recorded for every seed): Torch-Pruning L1 and BN-scale,
onnxsim magnitude, and onnxprune's data-free metrics (random, l1, l2, bn_gamma) with plain
removal and the uniform allocation (no guard, no data).
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata as md
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "models"))

import onnxprune  # noqa: E402
from low_data import HOLDOUT, MODELS, Model, accuracy, compute_scores, draw, log, weight_params  # noqa: E402
from onnxprune.api import score_model  # noqa: E402
from onnxprune.compiler.cost import count_macs  # noqa: E402
from onnxprune.scoring.metrics import METRICS  # noqa: E402
from onnxprune.scoring.shapley import DEFAULT_ESTIMATOR  # noqa: E402
from onnxprune.scoring.site_stats import site_means  # noqa: E402

BUDGETS = (0.3, 0.5)  # weight-parameter budgets
MAC_BUDGETS = (0.5,)
Budget = tuple[str, float]  # (target, fraction removed): ("params", 0.3), ("macs", 0.5)
SEEDS = (0, 1, 2)
CALIB = 128
TP_IMPORTANCES = ("l1", "bn_scale", "taylor")
DATA_FREE = {"random", "l1", "l2", "bn_gamma"}
DEPLOYS = {"plain": (False, False), "default": (True, True)}
ALLOCS = ("global", "uniform")
TOL = 0.005  # budget reached within half a percent of the weight parameters, else best effort
OP_TOL = 0.015  # onnxprune: a second prune() only when the first misses by more than this
# the order metrics run in (the full run may stop at --max-minutes): the default and the
# strongest heuristics of the study first
PRIORITY = ["shapley", "l1", "taylor", "l2", "bn_gamma", "loo", "mean_activation", "apoz", "random"]
PEERS = ("torch-pruning", "onnxsim")
MISS = 0.02  # a row that removes less than budget - MISS did not reach the budget: marked "*"
# in the tables and left out of the "who is ahead" counts (it is not at the matched count)


# ----------------------------------------------------------------------------- torch side


def torch_module(name: str, proto: onnx.ModelProto, test: dict):
    """The train_study module holding the ONNX file's weights, checked against ORT."""
    import torch
    from train_study import SPECS
    module = SPECS[name][0]().eval()
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for n in proto.graph.node:  # the exporter dedups equal tensors into Identity nodes (resnet:
        if n.op_type == "Identity" and n.input[0] in inits:  # two BN biases trained equal)
            inits[n.output[0]] = inits[n.input[0]]
    state = module.state_dict()
    loaded, pool = {}, [v for k, v in inits.items() if k not in state]
    for key, ref in state.items():
        if key.endswith("num_batches_tracked"):
            loaded[key] = ref
        elif key in inits and inits[key].shape == tuple(ref.shape):
            loaded[key] = torch.from_numpy(inits[key].copy())
        else:  # renamed by the exporter: the next unused initializer of that shape, in order
            i = next(j for j, v in enumerate(pool) if v.shape == tuple(ref.shape))
            loaded[key] = torch.from_numpy(pool.pop(i).copy())
    module.load_state_dict(loaded)
    x = test["input"][:32]
    with torch.no_grad():
        mine = module(torch.from_numpy(x)).numpy()
    from low_data import session
    ref = session(proto).run(None, {"input": x})[0]
    diff = float(np.abs(mine - ref).max())
    assert diff < 1e-4, f"{name}: loaded module differs from the ONNX model by {diff}"
    return module, diff


def torch_weight_params(module) -> int:
    import torch.nn as nn
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def torch_macs(module, example) -> int:
    """MACs per sample as onnx_macs counts them: a Conv's weight size times its output's
    spatial size, a Linear's weight size times its output's dims between batch and features."""
    import torch
    import torch.nn as nn
    total = [0]

    def hook(mod, _inp, out):
        inner = out.shape[2:] if isinstance(mod, nn.Conv2d) else out.shape[1:-1]
        total[0] += mod.weight.numel() * int(np.prod(tuple(inner), dtype=np.int64))
    hooks = [m.register_forward_hook(hook) for m in module.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def onnx_macs(proto: onnx.ModelProto) -> int:
    """onnxprune's MAC count (compiler/cost.count_macs) of any tool's ONNX, shapes inferred."""
    import onnx_graphsurgeon as gs
    return count_macs(gs.import_onnx(onnx.shape_inference.infer_shapes(proto)))


COUNTERS: dict[str, Callable[[onnx.ModelProto], int]] = {"params": weight_params, "macs": onnx_macs}


def tp_prune(module, example, calib_x, pseudo, importance: str, global_pruning: bool,
             ratio: float):
    """A pruned deep copy at Torch-Pruning's channel `ratio`."""
    import torch.nn as nn
    import torch.nn.functional as F
    import torch_pruning as tp
    model = copy.deepcopy(module)
    imp = {"l1": lambda: tp.importance.MagnitudeImportance(p=1),
           "bn_scale": tp.importance.BNScaleImportance,
           "taylor": tp.importance.TaylorImportance}[importance]()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, example, importance=imp, global_pruning=global_pruning,
                                  pruning_ratio=ratio, ignored_layers=[last])
    if importance == "taylor":
        model.zero_grad()
        F.cross_entropy(model(calib_x), pseudo).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.step()
    model.zero_grad()
    return model.eval()


def bisect(run: Callable[[float], tuple[float, object]], budget: float,
           hi: float = 0.99, steps: int = 12) -> tuple[float, float, object]:
    """(knob, reached, result) with `reached` (monotone in the knob) closest to `budget`."""
    lo_k, hi_k, best = 0.0, hi, None
    for _ in range(steps):
        k = (lo_k + hi_k) / 2
        reached, res = run(k)
        if best is None or abs(reached - budget) < abs(best[1] - budget):
            best = (k, reached, res)
        if abs(reached - budget) <= TOL / 2:
            break
        lo_k, hi_k = (k, hi_k) if reached < budget else (lo_k, k)
    return best


def export_proto(module, example_np: np.ndarray) -> onnx.ModelProto:
    import tempfile
    from train_study import export
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export(module, example_np, path)
        return onnx.load(str(path))


def tp_rows(m: Model, module, seed: int, budgets, first_seed: bool) -> list[dict]:
    import torch
    x = m.pool["input"][draw(m.pool, CALIB, seed)]
    calib_x = torch.from_numpy(x)
    with torch.no_grad():
        pseudo = module(calib_x).argmax(1)
    count = {"params": torch_weight_params, "macs": lambda q: torch_macs(q, calib_x)}
    base = {t: count[t](module) for t in count}
    assert base["macs"] == onnx_macs(m.proto), f"{m.name}: torch and ONNX MAC counts differ"
    rows = []
    for importance in TP_IMPORTANCES:
        if importance != "taylor" and not first_seed:
            continue  # data-free: the first seed's row stands for every seed
        for glob in (True, False):
            for target, b in budgets:
                t0 = time.perf_counter()

                def attempt(r):
                    q = tp_prune(module, calib_x[:2], calib_x, pseudo, importance, glob, r)
                    return 1 - count[target](q) / base[target], q
                knob, reached, q = bisect(attempt, b)
                proto = export_proto(q, x[:2])
                if target == "macs":  # the recorded reduction: counted on the exported ONNX
                    reached = 1 - onnx_macs(proto) / base["macs"]
                acc = accuracy(proto, m.test)
                rows.append(dict(tool="torch-pruning", method=f"tp-{importance}",
                                 alloc="global" if glob else "uniform", deploy="plain", budget=b,
                                 target=target, knob=knob, removed=reached, acc=acc,
                                 seconds=time.perf_counter() - t0,
                                 seeds=[seed] if importance == "taylor" else "all"))
                log(f"tp   {m.name:13s} {importance:8s} global={glob!s:5s} {target} {b} seed "
                    f"{seed}: ratio {knob:.3f} removed {reached:.3f} acc {acc:.3f}")
    return rows


# ----------------------------------------------------------------------------- onnxsim


def onnxsim_rows(m: Model, seed: int, budgets, first_seed: bool) -> list[dict]:
    import onnxsim
    from onnxsim.pruning import apply_structured_pruning, apply_structured_wanda_pruning
    simp, _ = onnxsim.simplify(onnx.ModelProto.FromString(m.proto.SerializeToString()))
    w = {t: c(simp) for t, c in COUNTERS.items()}
    x = m.pool["input"][draw(m.pool, CALIB, seed)]
    batches = [{"input": x[i:i + 32]} for i in range(0, len(x), 32)]
    tools = {"onnxsim-wanda": lambda s: apply_structured_wanda_pruning(
        onnx.ModelProto.FromString(simp.SerializeToString()), calibration_data=batches, sparsity=s)}
    if first_seed:  # magnitude does not read data
        tools["onnxsim-magnitude"] = lambda s: apply_structured_pruning(
            onnx.ModelProto.FromString(simp.SerializeToString()), sparsity=s)
    rows = []
    for tool, fn in tools.items():
        for target, b in budgets:
            t0 = time.perf_counter()

            def attempt(s):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    q = fn(s)
                return 1 - COUNTERS[target](q) / w[target], q
            knob, reached, q = bisect(attempt, b)
            acc = accuracy(q, m.test)
            rows.append(dict(tool="onnxsim", method=tool, alloc="-", deploy="plain", budget=b,
                             target=target, knob=knob, removed=reached, acc=acc,
                             seconds=time.perf_counter() - t0,
                             seeds=[seed] if tool == "onnxsim-wanda" else "all"))
            log(f"sim  {m.name:13s} {tool:18s} {target} {b} seed {seed}: sparsity {knob:.3f} "
                f"removed {reached:.3f} acc {acc:.3f}")
    return rows


# ----------------------------------------------------------------------------- onnxprune


def op_prune(m: Model, cal, scores, budget: Budget, deploy: str, alloc: str, seed: int):
    """prune() driven to the budget (weight parameters or MACs of the whole model): ratio =
    budget with the same target, then secant corrections (the target counts the prunable
    groups' cost, not every weight or MAC)."""
    compensate, refit = DEPLOYS[deploy]
    (target, budget), count = budget, COUNTERS[budget[0]]
    base = count(m.proto)
    ratio, tried = budget, []
    for _ in range(2):
        res = onnxprune.prune(m.am, cal, ratio=ratio, scores=scores, compensate=compensate,
                              refit=refit, seed=seed, holdout=HOLDOUT, latency=False,
                              uniform=alloc == "uniform", target=target)
        reached = 1 - count(res.model) / base
        tried.append((abs(reached - budget), ratio, reached, res))
        if abs(reached - budget) <= OP_TOL or reached <= 0:
            break
        ratio = float(np.clip(ratio * budget / reached, 0.01, 0.95))
    _, ratio, reached, res = min(tried, key=lambda t: t[0])
    return ratio, reached, res


def onnxprune_rows(m: Model, seed: int, budgets, metrics, first_seed: bool,
                   late: Callable[[], bool], skipped: list[str]) -> list[dict]:
    cal = m.calib(CALIB, seed, False)
    scoring, _ = cal.split(HOLDOUT, seed)
    rows = []
    for metric in metrics:
        if late():
            skipped.append(f"onnxprune {metric} on {m.name} seed {seed}")
            continue
        for deploy in DEPLOYS:
            game = DEPLOYS[deploy][0]
            means = site_means(m.am.analysis, m.am.ident, scoring.inputs) if game else None
            t0 = time.perf_counter()
            per_budget = {b: default_scores(m, scoring, seed, means, b) for _, b in budgets} \
                if metric == "shapley" else None
            if per_budget is None:
                scores, secs, *_ = compute_scores(m, scoring, metric, seed, means, None)
            for alloc in ALLOCS:
                fixed = metric in DATA_FREE and deploy == "plain" and alloc == "uniform"
                if fixed and not first_seed:
                    continue
                for target, b in budgets:
                    if per_budget is not None:
                        scores, secs = per_budget[b]
                    ratio, reached, res = op_prune(m, cal, scores, (target, b), deploy, alloc,
                                                   seed)
                    d = res.report["deploy"]
                    acc = accuracy(res.model, m.test)
                    rows.append(dict(tool="onnxprune", method=metric, alloc=alloc, deploy=deploy,
                                     budget=b, target=target, knob=ratio, removed=reached, acc=acc,
                                     score_seconds=secs, seconds=time.perf_counter() - t0,
                                     chosen=d.get("chosen"), allocation=d.get("allocation"),
                                     seeds="all" if fixed else [seed]))
                    log(f"op   {m.name:13s} {metric:15s} {alloc:7s} {deploy:7s} {target} {b} "
                        f"seed {seed}:"
                        f" ratio {ratio:.3f} removed {reached:.3f} acc {acc:.3f} "
                        f"({d.get('allocation')}, {d.get('chosen')})")
    return rows


def default_scores(m: Model, scoring, seed: int, means, budget: float) -> tuple[dict, float]:
    """Shapley scores as prune() computes them for a params or MACs budget: the default
    estimator (auto: the truncated game where the cut is known) with the depth of that
    budget's expected width cut, 1-(1-R)^0.5 of each group's units (pipeline._unit_share, the same
    for both targets), with each group's loss curve as prune() measures it for a budget."""
    t0 = time.perf_counter()
    out = score_model(m.am, scoring, metric="shapley", seed=seed, means=means,
                      removal=1 - (1 - budget) ** 0.5)
    return out, time.perf_counter() - t0  # GroupScores: prune() reads their loss curves


# ----------------------------------------------------------------------------- tables


def label(r: dict) -> str:
    if r["tool"] == "onnxprune":
        return f"onnxprune {r['method']} / {r['alloc']} / {r['deploy']}"
    if r["tool"] == "torch-pruning":
        return f"Torch-Pruning {r['method'][3:]} / {r['alloc']}"
    return r["method"]


def bkey(r: dict) -> Budget:
    """A record's budget; rows written before the MAC budget carry no target (params)."""
    return (r.get("target") or "params", r["budget"])


def bname(budget: Budget) -> str:
    return f"{'MAC' if budget[0] == 'macs' else 'params'} budget {budget[1]}"


def budgets_of(records) -> list[Budget]:
    return sorted({bkey(r) for r in records if r.get("kind") == "prune"},
                  key=lambda b: (b[0] != "params", b[1]))


def seeds_run(records) -> dict[str, list[int]]:
    """Per model, the seeds whose seeded rows ran (a run cut by --max-minutes has fewer)."""
    out: dict[str, set] = {}
    for r in records:
        if r.get("kind") == "prune" and r["seeds"] != "all":
            out.setdefault(r["model"], set()).update(r["seeds"])
    return {k: sorted(v) for k, v in out.items()}


def cell_values(records) -> dict[tuple, dict[str, list]]:
    """(label, model, (target, budget)) -> {"acc": [...], "removed": [...]}, one entry per seed run
    (a deterministic row counts for every seed that ran on its model)."""
    runs, out = seeds_run(records), {}
    for r in records:
        if r.get("kind") != "prune":
            continue
        n = len(runs.get(r["model"], [0])) if r["seeds"] == "all" else 1
        c = out.setdefault((label(r), r["model"], bkey(r)), {"acc": [], "removed": []})
        c["acc"] += [r["acc"]] * n
        c["removed"] += [r["removed"]] * n
    return out


def table(records, models, budget: Budget) -> str:
    cells = cell_values(records)
    labels = sorted({k[0] for k in cells if k[2] == budget},
                    key=lambda s: (not s.startswith("onnxprune shapley"), s))
    frac = budget[1]
    lines = [f"| method ({bname(budget)}) | " + " | ".join(models) + " | mean |",
             "|---" * (len(models) + 2) + "|"]
    for lab in labels:
        accs, row, short = [], [], False
        for mod in models:
            c = cells.get((lab, mod, budget))
            if c is None:
                row.append("-")
                continue
            a, rem = float(np.mean(c["acc"])), float(np.mean(c["removed"]))
            accs.append(a)
            short |= rem < frac - MISS
            row.append(f"{a:.3f} ({rem:.2f}){'*' if rem < frac - MISS else ''}")
        # no mean where a model was missing or short of the budget (not a matched count)
        mean = f"{np.mean(accs):.3f}" if len(accs) == len(models) and not short else "-"
        lines.append(f"| {lab} | " + " | ".join(row) + f" | {mean} |")
    return "\n".join(lines)


def _best(cells, model, budget: Budget, pick: Callable[[str], bool]
          ) -> tuple[float, str] | None:
    got = [(float(np.mean(c["acc"])), lab) for (lab, mod, b), c in cells.items()
           if mod == model and b == budget and pick(lab)
           and float(np.mean(c["removed"])) >= budget[1] - MISS]
    return max(got) if got else None


def ahead(records, models, budget: Budget) -> list[str]:
    """Who is ahead on how many models: onnxprune's default (and its plain removal) against
    the best setting of each rival per model, picked with hindsight."""
    cells = cell_values(records)
    rivals = {"Torch-Pruning (best importance and mode)": lambda s: s.startswith("Torch-Pruning"),
              "onnxsim (best pruner)": lambda s: s.startswith("onnxsim"),
              "the best onnxprune heuristic, same deployment, either allocator": None}
    lines = []
    for me, deploy in (("onnxprune shapley / global / default", "default"),
                       ("onnxprune shapley / global / plain", "plain")):
        parts = []
        for rival, pick in rivals.items():
            if pick is None:
                pick = (lambda s, d=deploy: s.startswith("onnxprune") and "shapley" not in s
                        and s.endswith(f"/ {d}"))
            wins, ties, n = 0, 0, 0
            for mod in models:
                mine, other = cells.get((me, mod, budget)), _best(cells, mod, budget, pick)
                if mine is None or other is None:
                    continue
                n += 1
                wins += float(np.mean(mine["acc"])) > other[0] + 1e-9
                ties += abs(float(np.mean(mine["acc"])) - other[0]) <= 1e-9
            parts.append(f"{rival}: ahead on {wins}/{n}" + (f" (tied on {ties})" if ties else ""))
        lines.append(f"- {bname(budget)}, `{me}` (mean over seeds) — " + "; ".join(parts))
    return lines


def markdown(doc: dict) -> str:
    recs, args = doc["records"], doc["meta"]
    models = [m for m in args["models"] if any(r.get("model") == m for r in recs)]
    parts = [f"Generated by `python bench/peers.py` ({doc['meta']['command']}); onnxprune "
             f"{doc['meta']['onnxprune_commit']}, default estimator "
             f"`{doc['meta']['default_estimator']}`; peers from "
             f"{doc['meta'].get('peer_commit', doc['meta']['onnxprune_commit'])}. Seeds run per model: "
             f"{', '.join(f'{k} {v}' for k, v in seeds_run(recs).items())}. Cell: test accuracy, mean "
             f"over those seeds (fraction of the weight parameters, or of the MACs for a MAC budget, "
             f"removed; `*`: the method "
             f"could not reach the budget, left out of the counts). Skipped: "
             f"{', '.join(doc['meta']['skipped']) or 'nothing'}.", ""]
    for b in budgets_of(recs):
        parts += ahead(recs, models, b) + [""]
    for b in budgets_of(recs):
        parts += [table(recs, models, b), ""]
    base = [f"{r['model']} {r['acc']:.3f}" for r in recs if r.get("kind") == "base"]
    parts += ["Unpruned: " + ", ".join(base) + ".", ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- driver


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %cs"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "onnxprune"],
                               capture_output=True, text=True).stdout.strip()
        return out + (" (onnxprune/ modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict:
    out = {}
    for d in ("torch", "torch-pruning", "onnxsim", "onnxruntime", "onnx", "numpy"):
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            out[d] = None
    return out


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="cnn_digits, budget 0.5, seed 0, a few metrics")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--budgets", nargs="*", type=float, default=list(BUDGETS),
                    help="weight-parameter budgets (none: `--budgets` alone)")
    ap.add_argument("--mac-budgets", nargs="*", type=float, default=list(MAC_BUDGETS),
                    help="MAC budgets (none: `--mac-budgets` alone)")
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--metrics", nargs="+", choices=list(METRICS),
                    default=[k for k in PRIORITY if k in METRICS] + [k for k in METRICS if k not in PRIORITY])
    ap.add_argument("--max-minutes", type=float, default=60.0,
                    help="past this, the remaining (seed, model) units are skipped and recorded")
    ap.add_argument("--onnxprune-only", action="store_true",
                    help="keep the peer rows of --out-json, recompute onnxprune's rows")
    ap.add_argument("--append", action="store_true",
                    help="add this run's rows to --out-json (a row of the same cell is replaced)")
    ap.add_argument("--from-json", action="store_true", help="only the tables from --out-json")
    ap.add_argument("--out-json", default=str(ROOT / "docs" / "peers.json"))
    ap.add_argument("--out-md", default=str(ROOT / "docs" / "peers.md"))
    ap.add_argument("--out-results", default=str(ROOT / "docs" / "results.md"),
                    help="whose peers section's tables to rewrite ('' for none)")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.budgets, args.mac_budgets, args.seeds = ["cnn_digits"], [0.5], [], [0]
        args.metrics = ["shapley", "l1", "bn_gamma"]
    return args


def stages(args) -> list[tuple[int, list[str], bool]]:
    """(seed, onnxprune metrics, peers too) in priority order, each over every model: seed
    0's peers with the default and l1 first, then seed 0's other metrics, then the other seeds
    (so --max-minutes cuts the least informative rows)."""
    head = [k for k in args.metrics if k in ("shapley", "l1")]
    rest = [k for k in args.metrics if k not in head]
    s0, others = args.seeds[0], args.seeds[1:]
    out = [(s0, head, True)] + ([(s0, rest, False)] if rest else [])
    return out + [(s, args.metrics, True) for s in others]


def run(args, save: Callable[[list[dict], list[str]], None]
        ) -> tuple[list[dict], list[str]]:
    t_start, records, skipped = time.perf_counter(), [], []
    late = lambda: (time.perf_counter() - t_start) / 60 > args.max_minutes  # noqa: E731
    models: dict[str, Model] = {}
    grid: list[Budget] = [("params", b) for b in args.budgets] + \
        [("macs", b) for b in args.mac_budgets]
    for seed, metrics, with_peers in stages(args):
        first = seed == args.seeds[0]
        for name in args.models:
            if late():
                skipped.append(f"{name} seed {seed} ({'peers, ' if with_peers else ''}"
                               f"onnxprune {' '.join(metrics)})")
                log(f"skip {name} seed {seed}: past --max-minutes")
                continue
            if name not in models:
                m = models[name] = Model(name)
                records.append(dict(kind="base", model=name, acc=accuracy(m.proto, m.test),
                                    weight_params=m.w0))
            m, common = models[name], dict(kind="prune", model=name)
            if with_peers and not args.onnxprune_only:
                module, diff = torch_module(name, m.proto, m.test)
                if first:
                    records.append(dict(kind="load_check", model=name, max_abs_diff=diff))
                for r in tp_rows(m, module, seed, grid, first) + \
                        onnxsim_rows(m, seed, grid, first):
                    records.append({**common, **r})
            for r in onnxprune_rows(m, seed, grid, metrics, first, late, skipped):
                records.append({**common, **r})
            save(list(records), list(skipped))  # a crash or a kill keeps what is done
    return records, skipped


def cell_key(r: dict) -> tuple:
    return tuple(str(r.get(k)) for k in ("kind", "model", "tool", "method", "alloc", "deploy",
                                          "budget", "seeds")) + (str(r.get("target") or "params"),)


def save_appended(out_json: Path, old: dict, meta: dict, records: list[dict]) -> dict:
    """The old document plus this run's rows (replacing a row of the same cell); the skipped
    units this run did are dropped from the old list, the run's own command is appended."""
    new = {cell_key(r) for r in records}
    done = {f"{r['model']} seed {s}" for r in records if r.get("kind") == "prune"
            and r["seeds"] != "all" for s in r["seeds"]}
    merged = dict(old["meta"])
    merged["command"] = old["meta"]["command"] + "; then " + meta["command"]
    merged["skipped"] = [u for u in old["meta"]["skipped"] if u.split(" (")[0] not in done] + \
        meta["skipped"]
    merged["minutes"] = old["meta"]["minutes"] + meta["minutes"]
    for key in ("budgets", "mac_budgets"):  # the grid the document now holds
        merged[key] = sorted(set(old["meta"].get(key, [])) | set(meta[key]))
    merged["peer_commit"] = meta.get("peer_commit") or old["meta"].get(
        "peer_commit", old["meta"]["onnxprune_commit"])  # before the commit is overwritten
    merged["onnxprune_commit"] = meta["onnxprune_commit"]
    merged["default_estimator"] = meta["default_estimator"]  # the latest run's (its rows replace)
    doc = {"meta": merged, "records": [r for r in old["records"] if cell_key(r) not in new
                                       or r.get("kind") == "base"] +
           [r for r in records if r.get("kind") != "base"]}
    out_json.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def main(argv=None) -> int:
    args = parse(argv)
    out_json, out_md = Path(args.out_json), Path(args.out_md)
    if args.from_json:
        doc = json.loads(out_json.read_text())
    else:
        old = json.loads(out_json.read_text()) if args.onnxprune_only or args.append else None
        if old is not None and not args.append:  # the peers' grid is the cached one
            args.models, args.budgets, args.seeds = (old["meta"]["models"], old["meta"]["budgets"],
                                                     old["meta"]["seeds"])
            args.mac_budgets = old["meta"].get("mac_budgets", [])
        t0 = time.perf_counter()

        def save(records, skipped, partial=True):
            meta = dict(command=" ".join(["python bench/peers.py", *(argv if argv is not None else sys.argv[1:])]),
                    models=args.models, budgets=args.budgets, mac_budgets=args.mac_budgets,
                    seeds=args.seeds, metrics=args.metrics,
                    calib=CALIB, holdout=HOLDOUT, onnxprune_commit=git_commit(),
                    default_estimator=DEFAULT_ESTIMATOR, versions=versions(), skipped=skipped,
                    minutes=round((time.perf_counter() - t0) / 60, 1), partial=partial)
            if args.append:
                return save_appended(out_json, old, meta, records)
            if old is not None:
                meta["peer_commit"] = old["meta"].get("peer_commit", old["meta"]["onnxprune_commit"])
                meta["skipped"] = old["meta"]["skipped"] + skipped
                records = [r for r in old["records"] if r.get("tool") in PEERS
                           or r.get("kind") == "load_check"] + records
            doc = {"meta": meta, "records": records}
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(doc, indent=1) + "\n")
            return doc

        records, skipped = run(args, save)
        doc = save(records, skipped, partial=False)
    text = markdown(doc)
    out_md.write_text(text)
    if args.out_results:
        into_results(Path(args.out_results), text)
    print(text)
    return 0


TABLES = "### Tables\n"
END = "<!-- peers:end -->"


def into_results(path: Path, text: str) -> None:
    """docs/results.md's peers section: its `### Tables` part (up to the end marker) is
    these tables; the hand-written reading above it stays. Nothing when the marks are absent."""
    doc = path.read_text() if path.exists() else ""
    start, end = doc.find(TABLES), doc.find(END)
    if start < 0 or end < start:
        log(f"{path}: no '{TABLES.strip()}' before '{END}', left unchanged")
        return
    path.write_text(doc[:start] + TABLES + "\n" + text.rstrip("\n") + "\n\n" + doc[end:])


if __name__ == "__main__":
    sys.exit(main())
