"""Low-data pruning study (issue 7): does Shapley ranking beat the heuristics when there is
little data and no fine-tuning? End to end through the ONNX path, measuring `onnxprune.prune`
as it ships: score -> select -> rewrite -> deploy (guarded plain / compensated / refit)
-> held-out test accuracy of the pruned ONNX model in onnxruntime.

    nice -n 10 python bench/low_data.py --max-minutes 50  # the full study (31 min, 2 shared cores)
    python bench/low_data.py --quick         # one small model, a few metrics (~15 s)
    python bench/low_data.py --from-json     # tables + plots from docs/results.json only

Writes docs/results.json (raw records), docs/results.md (tables; the hand-written reading
between the markers is kept) and docs/img/results_*.png. `--out-json/--out-md/--img-dir`
redirect them (the quick test writes to a temporary folder).

Two dimensions besides the ratio:

  metric    the ranking: `shapley` (onnxprune's default) or a baseline
  deploy    what prune() does with the surviving units, the same for every metric:
              plain  compensate=False, refit=False: the units are removed, nothing else
              comp   compensate=True,  refit=False: mean compensation, kept only if it beats
                     plain removal on the guard samples
              refit  compensate=True,  refit=True (onnxprune's default): plain, compensated
                     and least-squares refit of the consumers of pruned channels are built
                     and the best on the guard samples ships
            So the product's default is `shapley` + `refit`; the fair comparison for a
            baseline metric is the same deployment.

Calibration protocol = the product's default `holdout=0.25`: prune() holds a seeded 25 % of
the calibration samples out of scoring, compensation means and refit, and its guard chooses
the deployment candidate on them. The bench scores on exactly the same 75 % (`Calibration.
split(0.25, seed)`, means from the same samples) and passes the scores to `prune(...,
scores=..., seed=seed)`: the result is the one `prune(metric=...)` gives, but each (model,
metric, seed, calibration set, game) is scored once for every ratio and deployment. "128
samples" therefore means 96 scored/fitted + 32 guard samples. Test accuracy is measured on
the separate test split, which nothing in the pipeline sees. The score game follows the
product too: with `compensate=True` (comp, refit) the Shapley game is played on the
compensated model, with `compensate=False` (plain) on the plain one.

Phases, in priority order (once the run is past `--max-minutes`, the optional phases are
skipped model by model, and the run records what it skipped):

  base       unpruned accuracy of every model (checked against models/trained/metrics.json)
  main       calibration 128 unlabeled samples, 3 seeds, ratios 0.25/0.5/0.75, the default
             Shapley and every baseline metric, each in the three deployments
  peers      onnxsim 0.8.1 structured magnitude / Wanda pruning at sparsity 0.25/0.5/0.75
             (+0.99 for coverage); onnxprune's default at the same weight-parameter reduction
  calib      calibration sizes 32 and 500 (the whole pool; 300 for digits), deployments
             comp and refit (refit only on vgg/resnet)
  labels     labeled 128 (value function and guard -> cross-entropy), label-using metrics
  timing     scoring wall time (metrics interleaved A B C A B C) and deployment wall time
             (plain / comp / refit interleaved), medians of `--timing-repeats` rounds
  seeds      investigation of the exceptions: seeds 3-9 at ratio 0.5 (+refit) for the
             default and the strongest baselines; paired tests over seeds, and a bootstrap
             over the test images (every prune record keeps its per-sample correctness)
  ablation   layer-wise ablation curves (one group at a time, masked model), AUC per metric
  estimators the other Shapley estimators (permutation, antithetic, adaptive), refit deploy
  variants   not in the default run: the first study's investigation of Shapley's losses at
             light ratios (mean+2std aggregation, neg_nmse, 5x budget, Banzhaf at the target)

`--append` adds a run's records to an existing --out-json.

Scores depend on the ratio only for the adaptive estimator (and the bench-side Banzhaf
variant): everything else is scored once and pruned at every ratio with `prune(...,
scores=...)`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
TRAINED = ROOT / "models" / "trained"
sys.path.insert(0, str(ROOT))

import onnxprune  # noqa: E402
from onnxprune.api import as_calibration, make_engine, score_model  # noqa: E402
from onnxprune.scoring.site_stats import site_means  # noqa: E402
from onnxprune.compiler.cost import MIXING, coverage  # noqa: E402
from onnxprune.model import analyze_model  # noqa: E402
from onnxprune.scoring.metrics import BASELINES  # noqa: E402
from onnxprune.scoring.shapley import DEFAULT_ESTIMATOR, shapley_group  # noqa: E402

MODELS = {  # name -> data prefix
    "lenet5_mnist": "mnist", "vgg_mnist": "mnist", "resnet_mnist": "mnist",
    "mlp_digits": "digits_flat", "cnn_digits": "digits",
}
BIG = {"vgg_mnist", "resnet_mnist"}  # Shapley costs about a minute per run on these
RATIOS = (0.25, 0.5, 0.75)
SEEDS = (0, 1, 2)
BASE_METRICS = ["random", "l1", "l2", "bn_gamma", "mean_activation", "apoz", "loo", "taylor"]
LABEL_METRICS = ["shapley", "loo", "taylor"]  # the only metrics whose scores use labels
# calibration-size phase: the default, the data-dependent baselines and l1 as a data-free
# reference (random/l2/bn_gamma scores do not depend on the data at all)
CALIB_METRICS = ["shapley", "l1", "mean_activation", "apoz", "loo", "taylor"]
ESTIMATORS = ["permutation", "antithetic", "adaptive", "kernelshap"]
VARIANTS = ["shapley/perm-2std", "shapley/nmse", "shapley/budget5x", "banzhaf/target"]
DEFAULT = "shapley"
# deployment -> (compensate, refit) passed to prune(); "refit" is onnxprune's default
DEPLOYS = {"plain": (False, False), "comp": (True, False), "refit": (True, True)}
DEFAULT_DEPLOY = "refit"
HOLDOUT = 0.25  # prune()'s default: held out of scoring/means/refit, used by the guard
SPARSITIES = (0.25, 0.5, 0.75)
# `seeds` phase: the default and the strongest baselines of the main grid at ratio 0.5
SEED_METRICS = ["l1", "l2", "bn_gamma", "loo", "taylor"]
EXTRA_SEEDS = tuple(range(3, 10))
FRACTIONS = np.linspace(0.0, 1.0, 11)
BEGIN, END = "<!-- reading:begin -->", "<!-- reading:end -->"
KEEP_BEGIN, KEEP_END = "<!-- peers:begin -->", "<!-- peers:end -->"  # bench/peers.py's section


# ----------------------------------------------------------------------------- helpers


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def session(proto: onnx.ModelProto):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def accuracy(proto: onnx.ModelProto, test: dict) -> float:
    return float(correct(proto, test).mean())


def correct(proto: onnx.ModelProto, test: dict) -> np.ndarray:
    """Per test sample: predicted label right (bool [T])."""
    out = session(proto).run(None, {"input": test["input"]})[0]
    return out.argmax(1) == test["labels"]


def pack(hits: np.ndarray) -> str:
    """Per-sample correctness as hex (the test-set bootstrap of the exceptions uses it)."""
    return np.packbits(hits.astype(np.uint8)).tobytes().hex()


def unpack(hexed: str, size: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(hexed), np.uint8))[:size].astype(bool)


def weight_params(proto: onnx.ModelProto) -> int:
    """Weight elements of the channel-mixing ops (Conv/ConvTranspose/Gemm/MatMul constant
    weight input): the quantity both tools prune, counted the same way on both outputs."""
    inits = {i.name: int(np.prod(i.dims)) for i in proto.graph.initializer}
    consts = {o: int(np.prod(a.t.dims)) for n in proto.graph.node if n.op_type == "Constant"
              for o in n.output for a in n.attribute if a.name == "value"}
    sizes = {**consts, **inits}
    total = 0
    for n in proto.graph.node:
        if n.op_type in MIXING and len(n.input) > 1:
            w = n.input[1] if n.input[1] in sizes else (n.input[0] if n.op_type == "MatMul" else None)
            total += sizes.get(w, 0)
    return total


def draw(pool: dict, n: int, seed: int) -> np.ndarray:
    """Seeded indices of n samples from the calibration pool (the whole pool if n >= it)."""
    size = len(pool["labels"])
    if n >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng([seed, n]).choice(size, n, replace=False))


class Model:
    def __init__(self, name: str):
        self.name = name
        prefix = MODELS[name]
        self.path = TRAINED / f"{name}.onnx"
        self.proto = onnx.load(str(self.path))
        self.am = analyze_model(self.proto)
        self.pool = dict(np.load(TRAINED / f"{prefix}_calib.npz"))
        self.test = dict(np.load(TRAINED / f"{prefix}_test.npz"))
        self.w0 = weight_params(self.proto)

    def calib(self, n: int, seed: int, labels: bool):
        idx = draw(self.pool, n, seed)
        arrays = {"input": self.pool["input"][idx]}
        if labels:
            arrays["labels"] = self.pool["labels"][idx]
        return as_calibration(arrays, self.am.proto)


# ----------------------------------------------------------------------------- scoring


def compute_scores(m: Model, cal, label: str, seed: int, means, ratio: float | None):
    """Per group scores for a metric label; returns (scores, seconds, evaluations)."""
    am = m.am
    t0 = time.perf_counter()
    evals = 0
    if label == DEFAULT or label in BASELINES:
        out = score_model(am, cal, metric=label, seed=seed, means=means)
    elif label.startswith("shapley/") and label.split("/")[1] in ESTIMATORS:
        out = score_model(am, cal, metric="shapley", estimator=label.split("/")[1], seed=seed,
                          means=means, ratio=ratio if ratio is not None else 0.5)
    elif label == "shapley/perm-2std":  # Ancona et al.: permutations, mean + 2 std over samples
        engine = make_engine(am, cal, means=means)
        out = {g.id: shapley_group(engine, g.id, estimator="permutation", seed=seed + g.id,
                                   aggregate="mean+2std") for g in am.analysis.prunable}
    elif label == "shapley/nmse":
        out = score_model(am, cal, metric="shapley", value="neg_nmse", seed=seed, means=means)
    elif label == "shapley/budget5x":  # 5 x the default budget (50 x units per group)
        from onnxprune.scoring.estimators import default_budget
        out = {}
        for g in am.analysis.prunable:
            out.update(score_model(am, cal, metric="shapley", seed=seed, means=means,
                                   budget=5 * default_budget(g.units), groups=[g.id]))
    elif label == "banzhaf/target":
        # the p-weighted Banzhaf value of the group game with p = the kept fraction: averages
        # marginals over coalitions of about the size pruning leaves (onnxprune's `joint`
        # estimator, called here with keep_ratio = 1 - ratio; not reachable from prune())
        from onnxprune.scoring.estimators import default_budget, estimate_joint
        from onnxprune.scoring.shapley import GroupScores
        engine = make_engine(am, cal, means=means)
        out = {}
        for g in am.analysis.prunable:
            est = estimate_joint(lambda c, gid=g.id: engine.values(gid, c), [g.units],
                                 keep_ratio=1 - ratio, budget=default_budget(g.units),
                                 seed=seed + g.id)[0]
            out[g.id] = GroupScores(g.id, est.values, est.stderr, est.evaluations, "banzhaf")
    else:
        raise ValueError(label)
    seconds = time.perf_counter() - t0
    evals = int(sum(s.evaluations for s in out.values()))
    methods = sorted({s.method for s in out.values()})
    return ({g: np.asarray(s.values, dtype=np.float64) for g, s in out.items()}, seconds, evals,
            methods)


def ratio_dependent(label: str) -> bool:
    return label in ("shapley/adaptive", "banzhaf/target")


def game_of(deploy: str) -> bool:
    """The Shapley/score game a deployment implies: compensated (True) iff compensate."""
    return DEPLOYS[deploy][0]


# ----------------------------------------------------------------------------- the study


class Study:
    def __init__(self, args):
        self.args = args
        self.records: list[dict] = []
        self.models: dict[str, Model] = {}
        # (model, label, seed, n, labels, compensated game, ratio or None) -> scores
        self.scores: dict[tuple, dict] = {}
        self.t0 = time.perf_counter()
        self.skipped: list[str] = []
        self.previous: dict | None = None

    def model(self, name: str) -> Model:
        if name not in self.models:
            self.models[name] = Model(name)
        return self.models[name]

    def add(self, **rec) -> None:
        self.records.append(rec)

    def elapsed_min(self) -> float:
        return (time.perf_counter() - self.t0) / 60

    def models_for(self, phase: str):
        """The models of an optional phase, stopping (and recording it) once over time."""
        for name in self.args.models:
            if self.elapsed_min() > self.args.max_minutes:
                self.skipped.append(f"{phase} ({name})")
                log(f"skip {phase} {name}: {self.elapsed_min():.1f} min > {self.args.max_minutes}")
                continue
            yield name

    def cached_scores(self, name: str, label: str, seed: int, n: int, game: bool) -> dict:
        """Unlabeled scores of the main protocol, computed when this process has not (an
        --append run of peers/ablation)."""
        key = (name, label, seed, n, False, game, None)
        if key not in self.scores:
            m = self.model(name)
            scoring, _ = m.calib(n, seed, False).split(HOLDOUT, seed)
            means = site_means(m.am.analysis, m.am.ident, scoring.inputs) if game else None
            self.scores[key] = compute_scores(m, scoring, label, seed, means, None)[0]
        return self.scores[key]

    def prune(self, m: Model, cal, ratio: float, scores: dict, deploy: str, seed: int, **kw):
        compensate, refit = DEPLOYS[deploy]
        t0 = time.perf_counter()
        res = onnxprune.prune(m.am, cal, ratio=ratio, scores=scores, compensate=compensate,
                              refit=refit, seed=seed, holdout=HOLDOUT, latency=False, **kw)
        total = time.perf_counter() - t0
        d = res.report.get("deploy", {})
        info = {"deploy": deploy, "compensate": compensate, "refit": refit,
                "chosen": d.get("chosen"), "guard": d.get("values"),
                "refit_layers": d.get("refit_layers", 0),
                "deploy_seconds": res.report["seconds"].get("rewrite1"), "prune_seconds": total}
        return res, info

    # -- a block of runs sharing one calibration set
    def run(self, name: str, labels_list: list[str], seeds, n: int, labeled: bool, deploys,
            ratios=RATIOS, phase: str = "main") -> None:
        m = self.model(name)
        for seed in seeds:
            cal = m.calib(n, seed, labeled)
            scoring, _ = cal.split(HOLDOUT, seed)  # what prune() scores/fits on
            for game in (True, False):
                deps = [d for d in deploys if game_of(d) == game]
                if not deps:
                    continue
                means = site_means(m.am.analysis, m.am.ident, scoring.inputs) if game else None
                for label in labels_list:
                    for r in (ratios if ratio_dependent(label) else [None]):
                        key = (name, label, seed, n, labeled, game, r)
                        scores, secs, evals, methods = compute_scores(m, scoring, label, seed,
                                                                      means, r)
                        self.scores[key] = scores
                        self.add(kind="score", phase=phase, model=name, metric=label, seed=seed,
                                 calib=int(cal.n_samples), scored=int(scoring.n_samples),
                                 labels=labeled, compensate=game, ratio=r, seconds=secs,
                                 evaluations=evals, methods=methods)
                        accs = []
                        for ratio in (ratios if r is None else [r]):
                            for dep in deps:
                                res, info = self.prune(m, cal, ratio, scores, dep, seed)
                                hits = correct(res.model, m.test)
                                acc = float(hits.mean())
                                accs.append(f"{dep} {acc:.3f}")
                                self.add(kind="prune", phase=phase, model=name, metric=label,
                                         seed=seed, calib=int(cal.n_samples), labels=labeled,
                                         ratio=ratio, acc=acc, correct=pack(hits), **info,
                                         params=res.report["after"]["params"],
                                         weight_removed=1 - weight_params(res.model) / m.w0)
                        log(f"{phase:10s} {name:13s} {label:18s} seed {seed} n {cal.n_samples:3d}"
                            f"{' lab' if labeled else ''} game {'comp' if game else 'plain'}"
                            f"{'' if r is None else f' r {r}'}: {secs:6.1f}s {evals:6d} ev  "
                            + " ".join(accs))

    def small_big(self, name: str, small, big):
        return big if name in BIG else small

    # -- phases
    def phase_base(self) -> None:
        metrics = json.loads((TRAINED / "metrics.json").read_text())["models"]
        for name in self.args.models:
            m = self.model(name)
            groups = [{"id": g.id, "units": g.units, "prunable": g.prunable}
                      for g in m.am.analysis.groups]
            total, covered = coverage(m.am.analysis)
            self.add(kind="base", model=name, acc=accuracy(m.proto, m.test),
                     expected=metrics[name]["test_accuracy_ort"], weight_params=m.w0,
                     test_size=len(m.test["labels"]), pool=len(m.pool["labels"]), groups=groups,
                     coverage=covered / max(total, 1))

    def phase_main(self) -> None:
        for name in self.args.models:
            self.run(name, [DEFAULT, *self.args.metrics], self.args.seeds, self.args.calib,
                     False, self.args.deploys, self.args.ratios, "main")
            self.save()

    def phase_peers(self) -> None:
        try:
            import onnxsim
        except ImportError:  # a dev tool, not a dependency of onnxprune
            self.skipped.append("peers (onnxsim not installed)")
            log("skip peers: onnxsim is not installed")
            return
        from onnxsim.pruning import apply_structured_pruning, apply_structured_wanda_pruning
        for name in self.args.models:
            m = self.model(name)
            simp, ok = onnxsim.simplify(onnx.ModelProto.FromString(m.proto.SerializeToString()))
            w_simp = weight_params(simp)
            # coverage: what each onnxsim pruner removes at sparsity 0.99, raw and simplified
            for base_name, base, w in (("raw", m.proto, m.w0), ("simplified", simp, w_simp)):
                q = apply_structured_pruning(onnx.ModelProto.FromString(base.SerializeToString()),
                                             sparsity=0.99)
                self.add(kind="peer_coverage", model=name, tool="onnxsim-magnitude",
                         base=base_name, removed=1 - weight_params(q) / w)
            cal0 = m.calib(self.args.calib, 0, False)
            for base_name, base, w in (("raw", m.proto, m.w0), ("simplified", simp, w_simp)):
                q = apply_structured_wanda_pruning(
                    onnx.ModelProto.FromString(base.SerializeToString()),
                    calibration_data=[{"input": cal0.inputs["input"][i:i + 32]}
                                      for i in range(0, cal0.n_samples, 32)], sparsity=0.99)
                self.add(kind="peer_coverage", model=name, tool="onnxsim-wanda", base=base_name,
                         removed=1 - weight_params(q) / w)
            for seed in self.args.seeds:
                # onnxsim gets every calibration sample (it has no guard to hold some out)
                cal = m.calib(self.args.calib, seed, False)
                batches = [{"input": cal.inputs["input"][i:i + 32]}
                           for i in range(0, cal.n_samples, 32)]
                for s in self.args.sparsities:
                    runs = [("onnxsim-wanda", lambda: apply_structured_wanda_pruning(
                        onnx.ModelProto.FromString(simp.SerializeToString()),
                        calibration_data=batches, sparsity=s))]
                    if seed == self.args.seeds[0]:  # magnitude does not use data
                        runs.insert(0, ("onnxsim-magnitude", lambda: apply_structured_pruning(
                            onnx.ModelProto.FromString(simp.SerializeToString()), sparsity=s)))
                    for tool, fn in runs:
                        t0 = time.perf_counter()
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            q = fn()
                        secs = time.perf_counter() - t0
                        removed = 1 - weight_params(q) / w_simp
                        acc = accuracy(q, m.test)
                        seeds = self.args.seeds if tool == "onnxsim-magnitude" else [seed]
                        for sd in seeds:
                            self.add(kind="peer", model=name, tool=tool, sparsity=s, seed=sd,
                                     removed=removed, acc=acc, seconds=secs)
                        # onnxprune's default (shapley + refit) at the same weight reduction
                        matched = []
                        for sd in seeds:
                            if removed <= 0:
                                continue
                            cal_sd = m.calib(self.args.calib, sd, False)
                            scores = self.cached_scores(name, DEFAULT, sd, self.args.calib, True)
                            res, info = self.prune(m, cal_sd, min(removed, 0.99), scores,
                                                   DEFAULT_DEPLOY, sd, target="params")
                            a = accuracy(res.model, m.test)
                            matched.append(f"{a:.3f}")
                            self.add(kind="matched", model=name, tool=tool, sparsity=s, seed=sd,
                                     target=removed, acc=a, **info,
                                     removed=1 - weight_params(res.model) / m.w0)
                        log(f"peers      {name:13s} {tool:18s} seed {seed} s {s}: removed "
                            f"{removed:.3f} acc {acc:.3f}; default at that reduction "
                            + " ".join(matched))
            self.save()

    def phase_calib(self) -> None:
        for name in self.models_for("calib"):
            for n in (32, 500):
                seeds = self.args.seeds if (name not in BIG or n < 500) else self.args.seeds[:1]
                deploys = [d for d in self.small_big(name, ("comp", "refit"), ("refit",))
                           if d in self.args.deploys]
                metrics = [x for x in CALIB_METRICS if x == DEFAULT or x in self.args.metrics]
                self.run(name, metrics, seeds, n, False, deploys, self.args.ratios, "calib")
            self.save()

    def phase_labels(self) -> None:
        for name in self.models_for("labels"):
            big = name in BIG
            deploys = [d for d in self.small_big(name, ("comp", "refit"), ("refit",))
                       if d in self.args.deploys]
            self.run(name, [x for x in LABEL_METRICS if x == DEFAULT or x in self.args.metrics],
                     self.args.seeds[:1] if big else self.args.seeds, self.args.calib, True,
                     deploys, self.args.ratios, "labels")
            self.save()

    def phase_estimators(self) -> None:
        for name in self.models_for("estimators"):
            big = name in BIG
            for est in self.args.estimators:
                ratios = (0.5,) if (big and est == "adaptive") else self.args.ratios
                self.run(name, [f"shapley/{est}"],
                         self.args.seeds[:self.args.big_seeds] if big else self.args.seeds,
                         self.args.calib, False, [DEFAULT_DEPLOY], ratios, "estimators")
            self.save()

    def phase_variants(self) -> None:
        for name in self.models_for("variants"):
            big = name in BIG
            for v in self.args.variants:
                if big and v != "shapley/perm-2std":
                    continue  # time: one variant on the big models
                ratios = (0.5,) if (big and ratio_dependent(v)) else self.args.ratios
                self.run(name, [v],
                         self.args.seeds[:self.args.big_seeds] if big else self.args.seeds,
                         self.args.calib, False, [DEFAULT_DEPLOY], ratios, "variants")
            self.save()

    def phase_seeds(self) -> None:
        """Investigation of the exceptions: seeds 3-9 (new calibration draws, splits and
        estimator seeds) at ratio 0.5 with the default deployment, for the default and the
        strongest baselines. Kept apart from the main tables (phase `seeds`)."""
        metrics = [DEFAULT, *[x for x in SEED_METRICS if x in self.args.metrics]]
        for name in self.models_for("seeds"):
            self.run(name, metrics, self.args.extra_seeds, self.args.calib, False,
                     [DEFAULT_DEPLOY], (0.5,), "seeds")
            self.save()

    def phase_ablation(self) -> None:
        """One group at a time on the masked model (= the pruned model with plain removal, or
        with mean compensation in the compensated game): a property of the ranking alone, so
        no deployment (the refit is a whole-model step)."""
        from onnxprune.scoring.engine import Engine
        from onnxprune.scoring.value import Accuracy
        from onnxprune.deploy.select import _order
        seed, n = self.args.seeds[0], self.args.calib
        for name in self.models_for("ablation"):
            m = self.model(name)
            k = min(self.args.ablation_samples, len(m.test["labels"]))
            test = as_calibration({"input": m.test["input"][:k], "labels": m.test["labels"][:k]},
                                  m.am.proto)
            scoring, _ = m.calib(n, seed, False).split(HOLDOUT, seed)
            for comp in (False, True):
                means = site_means(m.am.analysis, m.am.ident, scoring.inputs) if comp else None
                engine = Engine(m.am, test, Accuracy(), means=means)
                for label in [DEFAULT, *self.args.metrics]:
                    scores = self.cached_scores(name, label, seed, n, comp)
                    t0 = time.perf_counter()
                    for gid, s in scores.items():
                        units = len(s)
                        order = _order(s)
                        co = np.ones((len(FRACTIONS), units), dtype=bool)
                        for i, f in enumerate(FRACTIONS):
                            co[i, order[:int(np.floor(f * units + 0.5))]] = False
                        accs = engine.values(gid, co).mean(axis=1)
                        self.add(kind="ablation", model=name, metric=label, seed=seed, calib=n,
                                 compensate=comp, group=int(gid), units=units,
                                 fractions=FRACTIONS.tolist(), accs=accs.tolist(),
                                 auc=float(np.trapezoid(accs, FRACTIONS)), test_samples=k)
                    log(f"ablation   {name:13s} {label:18s} game {'comp' if comp else 'plain'}: "
                        f"{time.perf_counter() - t0:.1f}s")
            self.save()

    def phase_timing(self) -> None:
        """Wall time measured side by side, seed 0, calibration 128 (96 scored): scoring, the
        metrics interleaved (A B C A B C ...), compensated game; then the deployment step
        (prune() with given Shapley scores at ratio 0.5: plain / comp / refit interleaved).
        `--timing-repeats` rounds; the tables quote medians."""
        labels = [DEFAULT, *self.args.metrics]
        for name in self.models_for("timing"):
            m = self.model(name)
            seed = self.args.seeds[0]
            cal = m.calib(self.args.calib, seed, False)
            scoring, _ = cal.split(HOLDOUT, seed)
            means = site_means(m.am.analysis, m.am.ident, scoring.inputs)
            shap = None
            for rep in range(self.args.timing_repeats):
                for label in labels:
                    scores, secs, evals, methods = compute_scores(m, scoring, label, seed, means,
                                                                  0.5)
                    shap = scores if label == DEFAULT else shap
                    self.add(kind="timing", model=name, metric=label, repeat=rep, seconds=secs,
                             evaluations=evals, methods=methods, load_avg=os.getloadavg()[0])
            for rep in range(self.args.timing_repeats):
                for dep in self.args.deploys:
                    _, info = self.prune(m, cal, 0.5, shap, dep, seed)
                    self.add(kind="deploy_timing", model=name, repeat=rep, ratio=0.5,
                             load_avg=os.getloadavg()[0], **info)
            log(f"timing     {name:13s} done")
            self.save()

    def save(self) -> None:
        doc = {"meta": meta(self.args, self.elapsed_min(), self.skipped), "records": self.records}
        if self.previous:  # --append: keep the first run's description, add this one
            doc["meta"] = {**self.previous, "appended": [*self.previous.get("appended", []),
                                                         doc["meta"]]}
        Path(self.args.out_json).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(self.args.out_json) + ".tmp")
        tmp.write_text(json.dumps(doc, default=_json_default))
        os.replace(tmp, self.args.out_json)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def meta(args, minutes: float, skipped: list[str]) -> dict:
    import importlib.metadata as md
    versions = {}
    for d in ("onnxruntime", "onnx", "onnxsim", "numpy"):
        try:
            versions[d] = md.version(d)
        except md.PackageNotFoundError:
            pass
    return {"command": " ".join(["python", "bench/low_data.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "wall_minutes": round(minutes, 2),
            "cpu_minutes": round(time.process_time() / 60, 2),
            "quick": args.quick, "models": args.models, "seeds": list(args.seeds),
            "ratios": list(args.ratios), "calib": args.calib, "phases": args.phases,
            "deploys": list(args.deploys), "holdout": HOLDOUT,
            "skipped": skipped, "versions": versions, "cpus": os.cpu_count(),
            "default_estimator": DEFAULT_ESTIMATOR,
            "load_avg": list(os.getloadavg())}


# ----------------------------------------------------------------------------- reporting


def _ms(values) -> tuple[float, float, int]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def fmt(values) -> str:
    if not len(values):
        return "–"
    mu, sd, k = _ms(values)
    return f"{mu:.3f} ± {sd:.3f}" if k > 1 else f"{mu:.3f}"


def dep_of(r: dict) -> str:
    """A record's deployment; records of the first study (compensation on/off, no refit)
    map to comp/plain."""
    return r.get("deploy") or ("comp" if r.get("compensate") else "plain")


DEP_NAME = {"plain": "plain", "comp": "+comp", "refit": "+refit"}


class Results:
    def __init__(self, doc: dict):
        self.meta = doc["meta"]
        self.recs = doc["records"]
        self.seeded = defaultdict(dict)  # (model, metric, calib, labels, deploy, ratio) -> {seed: acc}
        self.chosen = defaultdict(list)
        self.extra = defaultdict(dict)  # `seeds` phase: (model, metric, deploy, ratio) -> {seed: acc}
        # per test sample correctness (hex) of the main-calibration unlabeled runs, main and
        # seeds phases: (model, metric, deploy, ratio, seed) -> hex
        self.hits: dict[tuple, str] = {}
        for r in self.recs:
            if (r["kind"] == "prune" and r.get("correct") and not r["labels"]
                    and r.get("phase") in ("main", "seeds") and r["calib"] == self.meta["calib"]):
                self.hits[(r["model"], r["metric"], dep_of(r), r["ratio"], r["seed"])] = r["correct"]
            if r["kind"] == "prune" and r.get("phase") == "seeds":
                self.extra[(r["model"], r["metric"], dep_of(r), r["ratio"])][r["seed"]] = r["acc"]
            elif r["kind"] == "prune":
                key = (r["model"], r["metric"], r["calib"], r["labels"], dep_of(r), r["ratio"])
                self.seeded[key][r["seed"]] = r["acc"]
                self.chosen[key].append(r.get("chosen"))
        self.base = {r["model"]: r for r in self.recs if r["kind"] == "base"}
        self.models = [m for m in MODELS if m in self.base] or sorted(
            {r["model"] for r in self.recs if "model" in r})
        self.calib_main = self.meta["calib"]
        self.deploys = [d for d in DEPLOYS if any(k[4] == d for k in self.seeded)]
        self.default_deploy = DEFAULT_DEPLOY if DEFAULT_DEPLOY in self.deploys else "comp"

    def n_of(self, model: str, n: int) -> int:
        return min(n, self.base[model]["pool"]) if model in self.base else n

    def per_seed(self, model, metric, ratio, deploy=None, n=None, labels=False) -> dict:
        n = self.n_of(model, n or self.calib_main)
        return self.seeded.get((model, metric, n, labels, deploy or self.default_deploy, ratio),
                               {})

    def accs(self, model, metric, ratio, deploy=None, n=None, labels=False) -> list[float]:
        d = self.per_seed(model, metric, ratio, deploy, n, labels)
        return [d[s] for s in sorted(d)]

    def metrics_in(self, phase: str) -> list[str]:
        out = []
        for r in self.recs:
            if r["kind"] == "score" and r["phase"] == phase and r["metric"] not in out:
                out.append(r["metric"])
        return out

    def baselines(self) -> list[str]:
        return [m for m in self.metrics_in("main") if m != DEFAULT]

    def default_estimator(self) -> str:
        for r in self.recs:
            if r.get("metric") == DEFAULT and r.get("methods"):
                rest = [m.split("/")[1] for m in r["methods"] if m != "shapley/exact"]
                if rest:
                    return rest[0]
        return self.meta.get("default_estimator", "?")

    def best_baseline(self, model, ratio, deploys=None, n=None):
        """(metric, deploy, mean) of the best baseline at `ratio` among `deploys`."""
        best = None
        for met in self.baselines():
            for dep in deploys or [self.default_deploy]:
                a = self.accs(model, met, ratio, dep, n)
                if a and (best is None or np.mean(a) > best[2]):
                    best = (met, dep, float(np.mean(a)))
        return best


def table_main(R: Results, model: str) -> str:
    metrics = R.metrics_in("main")
    ratios = sorted({k[5] for k in R.seeded if k[0] == model})
    cols = [(r, d) for r in ratios for d in R.deploys]
    lines = ["| metric | " + " | ".join(f"r={r} {DEP_NAME[d]}" for r, d in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for met in metrics:
        cells = []
        for r, d in cols:
            c = fmt(R.accs(model, met, r, d))
            cells.append(f"**{c}**" if met == DEFAULT and d == R.default_deploy and c != "–"
                         else c)
        name = f"**{met}** (default)" if met == DEFAULT else met
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(R: Results, model: str, metric: str, ratio: float, deploy=None):
    """Per-seed (default, other, default - other) on the seeds both have."""
    d = R.per_seed(model, DEFAULT, ratio, R.default_deploy)
    o = R.per_seed(model, metric, ratio, deploy)
    seeds = sorted(set(d) & set(o))
    return [(s, d[s], o[s], d[s] - o[s]) for s in seeds]


def seed_words(rows) -> str:
    wins = sum(x[3] > 0 for x in rows)
    return f"{wins}/{len(rows)}"


def headline(R: Results, ratio: float = 0.5) -> tuple[str, list[dict]]:
    """Default (shapley + the default deployment) vs every baseline metric with the same
    deployment; per model: the best baseline, the margin, on how many seeds the default
    is ahead of it, the default's rank, and the other deployments for reference."""
    dd = R.default_deploy
    baselines = R.baselines()
    k = len(baselines) + 1
    lines = [f"| model | unpruned | **shapley {DEP_NAME[dd]}** (default) | best baseline "
             f"{DEP_NAME[dd]} | default − best | default ahead on seeds | default's rank of "
             f"{k} metrics | shapley {DEP_NAME['comp']} | shapley plain | best baseline, any "
             "deployment | verdict |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|"]
    exceptions = []
    for model in R.models:
        d = R.accs(model, DEFAULT, ratio, dd)
        if not d:
            continue
        best = R.best_baseline(model, ratio, [dd])
        anyb = R.best_baseline(model, ratio, R.deploys)
        allm = [np.mean(R.accs(model, m, ratio, dd)) for m in [DEFAULT, *baselines]
                if R.accs(model, m, ratio, dd)]
        rank = 1 + sum(x > np.mean(d) for x in allm)
        rows = paired(R, model, best[0], ratio, dd)
        beaten = []
        for met in baselines:
            a = R.accs(model, met, ratio, dd)
            if a and np.mean(a) >= np.mean(d):
                pr = paired(R, model, met, ratio, dd)
                beaten.append({"metric": met, "mean": float(np.mean(a)), "seeds": pr})
        margin = np.mean(d) - best[2]
        sd_diff = np.std([x[3] for x in rows], ddof=1) if len(rows) > 1 else 0.0
        if beaten:
            verdict = "**exception**"
        elif all(x[3] > 0 for x in rows):
            verdict = "default wins on every seed"
        else:
            verdict = (f"default ahead on the mean only (+{margin:.3f}, paired-difference "
                       f"std {sd_diff:.3f}): within seed noise")
        if beaten:
            exceptions.append({"model": model, "ratio": ratio, "default": float(np.mean(d)),
                               "beaten_by": beaten})
        base = R.base.get(model, {}).get("acc", float("nan"))
        lines.append(
            f"| {model} | {base:.3f} | **{fmt(d)}** | {best[0]} {fmt(R.accs(model, best[0], ratio, dd))} | "
            f"{margin:+.3f} | {seed_words(rows)} | {rank} | "
            f"{fmt(R.accs(model, DEFAULT, ratio, 'comp'))} | "
            f"{fmt(R.accs(model, DEFAULT, ratio, 'plain'))} | "
            f"{anyb[0]} {DEP_NAME[anyb[1]]} {anyb[2]:.3f} | {verdict} |")
    return "\n".join(lines), exceptions


def table_across(R: Results) -> str:
    """Per metric and ratio: mean over the models of its mean accuracy, and the worst model
    (the default deployment for every metric)."""
    dd = R.default_deploy
    ratios = sorted({k[5] for k in R.seeded if k[4] == dd and k[2] == R.calib_main})
    lines = ["| metric | " + " | ".join(f"r={r} mean / worst (model)" for r in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for met in [DEFAULT, *R.baselines()]:
        cells = []
        for ratio in ratios:
            per = {m: np.mean(R.accs(m, met, ratio, dd)) for m in R.models
                   if R.accs(m, met, ratio, dd)}
            if len(per) < len(R.models):
                cells.append("–")
                continue
            worst = min(per, key=per.get)
            cells.append(f"{np.mean(list(per.values())):.3f} / {per[worst]:.3f} ({worst})")
        name = f"**{met}** (default)" if met == DEFAULT else met
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_seeds(R: Results, ratio: float) -> str:
    """Per seed: the default vs each baseline within 0.03 of it (or above), same deployment."""
    dd = R.default_deploy
    lines = ["| model | baseline (" + DEP_NAME[dd] + ") | mean − default | per seed: default / "
             "baseline (default − baseline) |", "|---|---|---:|---|"]
    for model in R.models:
        d = R.accs(model, DEFAULT, ratio, dd)
        if not d:
            continue
        for met in R.baselines():
            a = R.accs(model, met, ratio, dd)
            if not a or np.mean(a) < np.mean(d) - 0.03:
                continue
            rows = paired(R, model, met, ratio, dd)
            lines.append(f"| {model} | {met} | {np.mean(a) - np.mean(d):+.3f} | " + "; ".join(
                f"s{s}: {x:.3f} / {y:.3f} ({z:+.3f})" for s, x, y, z in rows) + " |")
    return "\n".join(lines)


def table_more_seeds(R: Results, ratio: float = 0.5) -> str:
    """The default vs each baseline over the main seeds plus the `seeds` phase's, paired by
    seed (same calibration draw): mean difference, its standard error, wins, and two-sided
    p-values of the paired t-test and of the sign test (calibration noise); then the 95 %
    interval of the difference under resampling of the test set (test-set noise)."""
    from math import comb
    try:
        from scipy.stats import ttest_rel
    except ImportError:  # a dev tool only
        ttest_rel = None
    dd = R.default_deploy
    lines = ["| model | baseline | seeds | default | baseline | default − baseline (± s.e.) "
             "| default ahead | paired t p | sign p | test-set 95 % interval |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for model in R.models:
        extra_d = R.extra.get((model, DEFAULT, dd, ratio))
        if not extra_d:
            continue
        d = {**R.per_seed(model, DEFAULT, ratio, dd), **extra_d}
        metrics = [m for (mod, m, dep, r) in R.extra if mod == model and dep == dd and r == ratio
                   and m != DEFAULT]
        for met in metrics:
            o = {**R.per_seed(model, met, ratio, dd), **R.extra[(model, met, dd, ratio)]}
            seeds = sorted(set(d) & set(o))
            x, y = np.array([d[k] for k in seeds]), np.array([o[k] for k in seeds])
            diff = x - y
            se = diff.std(ddof=1) / np.sqrt(len(diff))
            wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
            n_sign = wins + losses
            sign_p = min(1.0, 2 * sum(comb(n_sign, k) for k in range(min(wins, losses) + 1))
                         / 2 ** n_sign) if n_sign else 1.0
            t_p = float(ttest_rel(x, y).pvalue) if ttest_rel and diff.std() > 0 else float("nan")
            ci = test_bootstrap(R, model, met, ratio, seeds)
            lines.append(f"| {model} | {met} | {len(seeds)} | {fmt(x)} | {fmt(y)} | "
                         f"{diff.mean():+.4f} ± {se:.4f} | {wins}/{len(seeds)} (ties "
                         f"{len(seeds) - n_sign}) | {t_p:.3f} | {sign_p:.3f} | "
                         + ("–" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]") + " |")
    return "\n".join(lines)


def test_bootstrap(R: Results, model: str, metric: str, ratio: float, seeds: list[int],
                   draws: int = 2000) -> tuple[float, float] | None:
    """95 % interval of the seed-averaged accuracy difference (default - metric) when the
    test set itself is resampled (bootstrap over test samples, seeds fixed): whether the gap
    would survive another test set of the same size. None without per-sample records."""
    dd, size = R.default_deploy, R.base.get(model, {}).get("test_size")
    keys = [((model, DEFAULT, dd, ratio, s), (model, metric, dd, ratio, s)) for s in seeds]
    if not size or not all(a in R.hits and b in R.hits for a, b in keys):
        return None
    diff = np.mean([unpack(R.hits[a], size).astype(float) - unpack(R.hits[b], size)
                    for a, b in keys], axis=0)  # per test sample, averaged over seeds
    idx = np.random.default_rng(0).integers(0, size, (draws, size))
    boot = diff[idx].mean(axis=1)
    return float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def peer_at(R: Results, s: float) -> dict:
    out = {}
    for r in R.recs:
        if r["kind"] == "peer" and r["sparsity"] == s:
            p = out.setdefault((r["model"], r["tool"]), {"acc": [], "removed": [], "matched": []})
            p["acc"].append(r["acc"])
            p["removed"].append(r["removed"])
        if r["kind"] == "matched" and r["sparsity"] == s:
            p = out.setdefault((r["model"], r["tool"]), {"acc": [], "removed": [], "matched": []})
            p["matched"].append(r["acc"])
    return out


def headline_peers(R: Results, s: float = 0.5) -> tuple[str, list[dict]]:
    """onnxsim at sparsity s vs onnxprune's default at the same weight-parameter reduction."""
    peers = peer_at(R, s)
    dd = R.default_deploy
    lines = [f"| model | onnxsim magnitude (weights removed) | default at that reduction | "
             f"onnxsim Wanda (weights removed) | default at that reduction | "
             f"default at ratio {s} (weights removed) | verdict |",
             "|---|---:|---:|---:|---:|---:|---|"]
    exceptions = []
    for model in R.models:
        cells, beaten = [], []
        for tool in ("onnxsim-magnitude", "onnxsim-wanda"):
            p = peers.get((model, tool))
            if p is None:
                cells += ["–", "–"]
                continue
            cells += [f"{fmt(p['acc'])} ({np.mean(p['removed']):.2f})",
                      fmt(p["matched"]) if p["matched"] else "–"]
            if p["matched"] and np.mean(p["acc"]) >= np.mean(p["matched"]):
                beaten.append({"metric": tool, "mean": float(np.mean(p["acc"])),
                               "default_matched": float(np.mean(p["matched"])),
                               "removed": float(np.mean(p["removed"]))})
        if not any(c != "–" for c in cells):
            continue
        wr = [r["weight_removed"] for r in R.recs if r["kind"] == "prune" and
              r["model"] == model and r["metric"] == DEFAULT and dep_of(r) == dd and
              r["ratio"] == s and r["calib"] == R.n_of(model, R.calib_main) and not r["labels"]]
        d = R.accs(model, DEFAULT, s, dd)
        lines.append(f"| {model} | " + " | ".join(cells) +
                     f" | {fmt(d)} ({np.mean(wr) if wr else float('nan'):.2f}) | "
                     + ("**exception**" if beaten else "default wins") + " |")
        if beaten:
            exceptions.append({"model": model, "ratio": s, "peers": beaten})
    return "\n".join(lines), exceptions


def table_peers(R: Results) -> str:
    lines = ["| model | tool | sparsity | weight params removed | peer acc | onnxprune default at "
             "that reduction (removed) |", "|---|---|---:|---:|---:|---:|"]
    for model in R.models:
        for s in sorted({r["sparsity"] for r in R.recs if r["kind"] == "peer"}):
            for tool in ("onnxsim-magnitude", "onnxsim-wanda"):
                rs = [r for r in R.recs if r["kind"] == "peer" and r["model"] == model
                      and r["tool"] == tool and r["sparsity"] == s]
                ms = [r for r in R.recs if r["kind"] == "matched" and r["model"] == model
                      and r["tool"] == tool and r["sparsity"] == s]
                if not rs:
                    continue
                lines.append(f"| {model} | {tool} | {s} | {np.mean([r['removed'] for r in rs]):.3f}"
                             f" | {fmt([r['acc'] for r in rs])} | "
                             + (f"{fmt([r['acc'] for r in ms])} ({np.mean([r['removed'] for r in ms]):.3f})"
                                if ms else "–") + " |")
    return "\n".join(lines)


def table_coverage(R: Results) -> str:
    lines = ["| model | onnxprune (weights in prunable groups) | onnxsim magnitude, raw model | "
             "onnxsim Wanda, raw model | onnxsim magnitude after `onnxsim.simplify` (BN folded) "
             "| onnxsim Wanda after simplify |",
             "|---|---:|---:|---:|---:|---:|"]
    for model in R.models:
        cov = {(r["tool"], r["base"]): r["removed"] for r in R.recs
               if r["kind"] == "peer_coverage" and r["model"] == model}
        if not cov:
            continue
        f = lambda k: f"{cov[k]:.3f}" if k in cov else "–"  # noqa: E731
        lines.append(f"| {model} | {R.base[model]['coverage']:.3f} | "
                     f"{f(('onnxsim-magnitude', 'raw'))} | {f(('onnxsim-wanda', 'raw'))} | "
                     f"{f(('onnxsim-magnitude', 'simplified'))} | "
                     f"{f(('onnxsim-wanda', 'simplified'))} |")
    return "\n".join(lines)


def table_deploy(R: Results) -> str:
    """What the deployment step changes: shapley and the best baseline in each deployment."""
    lines = ["| model | ratio | shapley plain | shapley +comp | shapley +refit | best baseline "
             "plain | best baseline +comp | best baseline +refit |", "|---|---:|---:|---:|---:|---|---|---|"]
    for model in R.models:
        for ratio in RATIOS:
            cells = [fmt(R.accs(model, DEFAULT, ratio, d)) if d in R.deploys else "–"
                     for d in DEPLOYS]
            for d in DEPLOYS:
                b = R.best_baseline(model, ratio, [d]) if d in R.deploys else None
                cells.append(f"{b[0]} {b[2]:.3f}" if b else "–")
            if cells[0] == "–" and cells[2] == "–":
                continue
            lines.append(f"| {model} | {ratio} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_chosen(R: Results, deploy: str = "refit") -> str:
    """What the guard shipped in a deployment, over every metric and seed of the main grid."""
    names = ["refit", "compensated", "plain"]
    main_metrics = set(R.metrics_in("main"))
    lines = ["| model | " + " | ".join(f"r={r}" for r in RATIOS) + " | shapley, r=0.5 |",
             "|---|" + "---|" * (len(RATIOS) + 1)]
    for model in R.models:
        cells = []
        for ratio in [*RATIOS, "shap"]:
            got = []
            for (mod, met, n, lab, dep, r), ch in R.chosen.items():
                if (mod == model and dep == deploy and n == R.n_of(model, R.calib_main)
                        and met in main_metrics
                        and not lab and (r == ratio or (ratio == "shap" and r == 0.5
                                                        and met == DEFAULT))):
                    got += ch
            c = [sum(x == nm for x in got) for nm in names]
            cells.append(" / ".join(str(x) for x in c) if got else "–")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_guard(R: Results, deploy: str = "refit") -> str:
    """The guard's own figure (value function on the held-out calibration samples, e.g. -KL
    to the original; higher is better) of the compensated and the refit candidate, mean over
    seeds: Shapley's value and rank among the main metrics, and the best metric."""
    vals = defaultdict(list)
    for r in R.recs:
        if (r["kind"] == "prune" and r.get("phase") == "main" and dep_of(r) == deploy
                and r.get("guard")):
            for cand, v in r["guard"].items():
                vals[(r["model"], r["ratio"], cand, r["metric"])].append(v)
    lines = ["| model | ratio | compensated candidate: shapley (rank) | best | refit candidate: "
             "shapley (rank) | best |", "|---|---:|---:|---|---:|---|"]
    for model in R.models:
        for ratio in RATIOS:
            cells = []
            for cand in ("compensated", "refit"):
                m = {met: float(np.mean(v)) for (mod, r, c, met), v in vals.items()
                     if mod == model and r == ratio and c == cand}
                if DEFAULT not in m:
                    cells += ["–", "–"]
                    continue
                rank = 1 + sum(x > m[DEFAULT] for x in m.values())
                best = max(m, key=m.get)
                cells += [f"{m[DEFAULT]:.3f} ({rank} of {len(m)})", f"{best} {m[best]:.3f}"]
            if any(c != "–" for c in cells):
                lines.append(f"| {model} | {ratio} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_calib(R: Results, ratio: float = 0.5) -> str:
    metrics = R.metrics_in("calib")
    sizes = [32, R.calib_main, 500]
    lines = ["| model | metric | deploy | " + " | ".join(f"n={n}" for n in sizes) + " |",
             "|---|---|---|" + "---:|" * len(sizes)]
    calib_deps = {dep_of(r) for r in R.recs if r["kind"] == "prune" and r["phase"] == "calib"}
    for model in R.models:
        for met in metrics:
            for dep in [d for d in R.deploys if d in calib_deps]:
                cells = [fmt(R.accs(model, met, ratio, dep, n)) for n in sizes]
                if cells[0] == "–" and cells[2] == "–":
                    continue
                lines.append(f"| {model} | {met} | {DEP_NAME[dep]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_labels(R: Results) -> str:
    metrics = R.metrics_in("labels")
    lines = ["| model | metric | deploy | " + " | ".join(f"r={r} unlabeled | r={r} labeled"
                                                     for r in RATIOS) + " |",
             "|---|---|---|" + "---:|" * (2 * len(RATIOS))]
    for model in R.models:
        for met in metrics:
            for dep in R.deploys:
                lab = [R.accs(model, met, r, dep, labels=True) for r in RATIOS]
                if not any(lab):
                    continue
                cells = []
                for r, la in zip(RATIOS, lab):
                    cells += [fmt(R.accs(model, met, r, dep)), fmt(la)]
                lines.append(f"| {model} | {met} | {DEP_NAME[dep]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_extra(R: Results, phase: str) -> str:
    metrics = [DEFAULT] + R.metrics_in(phase)
    lines = ["| model | scoring | deploy | " + " | ".join(f"r={r}" for r in RATIOS) + " | seeds |",
             "|---|---|---|" + "---:|" * len(RATIOS) + "---:|"]
    for model in R.models:
        for dep in R.deploys:
            if not any(R.accs(model, m, r, dep) for m in R.metrics_in(phase) for r in RATIOS):
                continue
            for met in metrics:
                cells = [fmt(R.accs(model, met, r, dep)) for r in RATIOS]
                k = max(len(R.accs(model, met, r, dep)) for r in RATIOS)
                if k == 0:
                    continue
                lines.append(f"| {model} | {met} | {DEP_NAME[dep]} | "
                             + " | ".join(cells) + f" | {k} |")
    return "\n".join(lines)


def time_rows(R: Results) -> dict:
    """(model, metric) -> [(seconds, evaluations)]: the interleaved timing phase for the
    metrics it ran, else the scoring runs of the grid (calibration 128, unlabeled)."""
    rows = defaultdict(list)
    for r in R.recs:
        if r["kind"] == "timing":
            rows[(r["model"], r["metric"])].append((r["seconds"], r["evaluations"]))
    timed = set(rows)
    for r in R.recs:
        if (r["kind"] == "score" and r["phase"] in ("main", "estimators", "variants")
                and r["calib"] == R.n_of(r["model"], R.calib_main) and not r["labels"]
                and (r["model"], r["metric"]) not in timed):
            rows[(r["model"], r["metric"])].append((r["seconds"], r["evaluations"]))
    return rows


def table_time(R: Results) -> str:
    rows = time_rows(R)
    metrics = []
    for (_, met) in rows:
        if met not in metrics:
            metrics.append(met)
    lines = ["| metric | " + " | ".join(R.models) + " |", "|---|" + "---:|" * len(R.models)]
    for met in metrics:
        cells = []
        for model in R.models:
            v = rows.get((model, met))
            if not v:
                cells.append("–")
                continue
            s = np.median([x[0] for x in v])
            e = int(np.median([x[1] for x in v]))
            cells.append(f"{s:.2f} s" + (f" / {e} ev" if e else ""))
        lines.append(f"| {met} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_deploy_time(R: Results) -> str:
    """Median wall time of the deployment step (prune() with given scores: rewrite, the
    candidates, the refit's statistics and solves, the guard), side by side when the timing
    phase ran; plus the median over the main grid per ratio for the refit deployment."""
    tim = defaultdict(list)
    for r in R.recs:
        if r["kind"] == "deploy_timing":
            tim[(r["model"], r["deploy"])].append(r["deploy_seconds"])
    grid = defaultdict(list)
    for r in R.recs:
        if (r["kind"] == "prune" and r.get("phase") == "main" and r.get("deploy_seconds")
                is not None):
            grid[(r["model"], dep_of(r), r["ratio"])].append(r["deploy_seconds"])
    lines = ["| model | plain | +comp | +refit | +refit, main grid r=0.25 / 0.5 / 0.75 "
             "(median of all runs) |", "|---|---:|---:|---:|---|"]
    for model in R.models:
        cells = [f"{np.median(tim[(model, d)]):.2f} s" if tim.get((model, d)) else "–"
                 for d in DEPLOYS]
        g = " / ".join(f"{np.median(grid[(model, 'refit', r)]):.2f} s"
                       if grid.get((model, "refit", r)) else "–" for r in RATIOS)
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {g} |")
    return "\n".join(lines)


def table_ablation(R: Results) -> str:
    auc = defaultdict(list)
    for r in R.recs:
        if r["kind"] == "ablation":
            auc[(r["model"], r["metric"], r["compensate"])].append(r["auc"])
    metrics = []
    for (_, met, _) in auc:
        if met not in metrics:
            metrics.append(met)
    lines = ["| metric | " + " | ".join(f"{m} plain / comp" for m in R.models) + " |",
             "|---|" + "---:|" * len(R.models)]
    for met in metrics:
        cells = []
        for model in R.models:
            off, on = auc.get((model, met, False)), auc.get((model, met, True))
            cells.append(("–" if not off else f"{np.mean(off):.3f}") + " / " +
                         ("–" if not on else f"{np.mean(on):.3f}"))
        lines.append(f"| {met} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_ablation_groups(R: Results, comp: bool = True,
                          metrics=("shapley", "loo", "taylor", "l1", "mean_activation")) -> str:
    auc = {(r["model"], r["metric"], r["group"]): r for r in R.recs
           if r["kind"] == "ablation" and r["compensate"] == comp}
    lines = ["| model | group (units) | " + " | ".join(metrics) + " | best |",
             "|---|---|" + "---:|" * len(metrics) + "---|"]
    for model in R.models:
        gids = sorted({g for (m, _, g) in auc if m == model})
        for gid in gids:
            vals = [auc.get((model, met, gid)) for met in metrics]
            if not any(vals):
                continue
            units = next(v["units"] for v in vals if v)
            nums = [v["auc"] if v else float("nan") for v in vals]
            best = metrics[int(np.nanargmax(nums))]
            lines.append(f"| {model} | {gid} ({units}) | "
                         + " | ".join("–" if np.isnan(x) else f"{x:.3f}" for x in nums)
                         + f" | {best} |")
    return "\n".join(lines)


def table_ablation_light(R: Results, comp: bool = True, points=(0.1, 0.2, 0.3, 0.5),
                         metrics=("shapley", "loo", "taylor", "l1", "l2", "mean_activation")) -> str:
    """Accuracy after removing a small share of ONE group: mean over groups / worst group."""
    curves = defaultdict(list)
    for r in R.recs:
        if r["kind"] == "ablation" and r["compensate"] == comp:
            curves[(r["model"], r["metric"])].append(r["accs"])
    idx = [int(round(p * (len(FRACTIONS) - 1))) for p in points]
    lines = ["| model | metric | " + " | ".join(f"{int(p * 100)} % removed" for p in points)
             + " |", "|---|---|" + "---:|" * len(points)]
    for model in R.models:
        for met in metrics:
            c = curves.get((model, met))
            if not c:
                continue
            a = np.asarray(c)
            lines.append(f"| {model} | {met} | " + " | ".join(
                f"{a[:, i].mean():.3f} / {a[:, i].min():.3f}" for i in idx) + " |")
    return "\n".join(lines)


def table_base(R: Results) -> str:
    lines = ["| model | test samples | unpruned acc (ORT, this run) | metrics.json | "
             "weight params | groups (prunable units) |", "|---|---:|---:|---:|---:|---|"]
    for model in R.models:
        b = R.base[model]
        groups = ", ".join(str(g["units"]) for g in b["groups"] if g["prunable"])
        lines.append(f"| {model} | {b['test_size']} | {b['acc']:.4f} | {b['expected']:.4f} | "
                     f"{b['weight_params']} | {groups} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots


def plots(R: Results, img_dir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img_dir.mkdir(parents=True, exist_ok=True)
    made = []
    metrics = R.metrics_in("main")
    models = R.models
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(metrics)}
    deps = list(reversed(R.deploys)) or ["refit"]  # refit first
    fig, axes = plt.subplots(len(deps), len(models), figsize=(3.3 * len(models), 3.1 * len(deps)),
                             squeeze=False)
    for j, model in enumerate(models):
        for i, dep in enumerate(deps):
            ax = axes[i][j]
            for met in metrics:
                xs, ys, es = [], [], []
                for r in RATIOS:
                    a = R.accs(model, met, r, dep)
                    if a:
                        xs.append(r)
                        ys.append(np.mean(a))
                        es.append(np.std(a))
                if xs:
                    ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, capsize=2,
                                lw=2.5 if met == DEFAULT else 1, color=colors[met],
                                label=met, zorder=3 if met == DEFAULT else 2)
            ax.axhline(R.base[model]["acc"], color="gray", ls=":", lw=1)
            ax.axhline(0.1, color="gray", ls="--", lw=0.6)  # chance (10 classes)
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{model}\ndeployment: {dep}"
                         + (" (default)" if dep == R.default_deploy else ""), fontsize=9)
            ax.set_xticks(RATIOS)
            if j == 0:
                ax.set_ylabel("test accuracy")
            if i == len(deps) - 1:
                ax.set_xlabel("ratio (units removed per group)")
    handles, names = axes[0][0].get_legend_handles_labels()
    if names:
        fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8,
                   frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    p = img_dir / "results_ratio.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    made.append(p.name)

    # accuracy vs scoring time (medians of the interleaved timing phase when it ran)
    secs = {k: [x[0] for x in v] for k, v in time_rows(R).items()}
    dd = R.default_deploy
    fig, axes = plt.subplots(2, len(models), figsize=(3.3 * len(models), 6.4), squeeze=False)
    for i, ratio in enumerate((0.5, 0.75)):
        for j, model in enumerate(models):
            ax = axes[i][j]
            for (mod, met), s in secs.items():
                if mod != model or met.startswith(("banzhaf", "shapley/nmse", "shapley/budget")):
                    continue
                a = R.accs(model, met, ratio, dd)
                if not a:
                    continue
                x = max(float(np.median(s)), 1e-3)
                ax.scatter(x, np.mean(a), s=40 if met == DEFAULT else 18,
                           marker="*" if met == DEFAULT else "o", color=colors.get(met, "k"),
                           zorder=3)
                ax.annotate(met.replace("shapley/", "sh/"), (x, np.mean(a)), fontsize=6)
            ax.set_xscale("log")
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{model}: ratio {ratio}, {dd}", fontsize=9)
            if i == 1:
                ax.set_xlabel("scoring time (s, log; 1 ms = data-free)")
            if j == 0:
                ax.set_ylabel("test accuracy")
    fig.tight_layout()
    p = img_dir / "results_time.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    made.append(p.name)

    # calibration size
    cal_metrics = R.metrics_in("calib")
    if cal_metrics:
        fig, axes = plt.subplots(2, len(models), figsize=(3.3 * len(models), 6.4), squeeze=False)
        for i, ratio in enumerate((0.5, 0.75)):
            for j, model in enumerate(models):
                ax = axes[i][j]
                for met in cal_metrics:
                    xs, ys = [], []
                    for n in (32, R.calib_main, 500):
                        a = R.accs(model, met, ratio, dd, n)
                        if a:
                            xs.append(R.n_of(model, n))
                            ys.append(np.mean(a))
                    if xs:
                        ax.plot(xs, ys, marker="o", ms=3, lw=2.5 if met == DEFAULT else 1,
                                color=colors.get(met, "k"), label=met)
                ax.set_xscale("log")
                ax.set_ylim(0, 1.02)
                ax.set_title(f"{model}: r={ratio}, {dd}", fontsize=9)
                if i == 1:
                    ax.set_xlabel("calibration samples (3/4 scored, 1/4 guard)")
                if j == 0:
                    ax.set_ylabel("test accuracy")
        axes[0][-1].legend(fontsize=6, loc="lower left")
        fig.tight_layout()
        p = img_dir / "results_calib.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p.name)

    # ablation curves, averaged over groups
    abl = defaultdict(list)
    for r in R.recs:
        if r["kind"] == "ablation":
            abl[(r["model"], r["metric"], r["compensate"])].append(r["accs"])
    if abl:
        fig, axes = plt.subplots(2, len(models), figsize=(3.3 * len(models), 6.2), squeeze=False)
        for j, model in enumerate(models):
            for i, comp in enumerate((False, True)):
                ax = axes[i][j]
                for (mod, met, cp), curves in abl.items():
                    if mod != model or cp != comp or met not in colors:
                        continue
                    ax.plot(FRACTIONS, np.mean(curves, axis=0), lw=2.5 if met == DEFAULT else 1,
                            color=colors[met], label=met)
                ax.set_ylim(0, 1.02)
                ax.set_title(f"{model}: one group at a time\n"
                             f"{'mean-compensated' if comp else 'plain'} game", fontsize=9)
                if i == 1:
                    ax.set_xlabel("fraction of the group's units removed")
                if j == 0:
                    ax.set_ylabel("test accuracy (mean over groups)")
        handles, names = axes[0][0].get_legend_handles_labels()
        if names:
            fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8,
                       frameon=False)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        p = img_dir / "results_ablation.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p.name)
    return made


# ----------------------------------------------------------------------------- markdown


def write_md(R: Results, md_path: Path, img_dir: Path, images: list[str]) -> list[dict]:
    rel = os.path.relpath(img_dir, md_path.parent)
    dd = R.default_deploy
    head, exceptions = headline(R, 0.5)
    peers_head, peer_exc = headline_peers(R, 0.5)
    meta_ = R.meta
    reading, kept = "\n(to be written after the run)\n", ""
    if md_path.exists():
        old = md_path.read_text()
        if BEGIN in old and END in old:
            reading = old.split(BEGIN, 1)[1].split(END, 1)[0]
        if KEEP_BEGIN in old and KEEP_END in old:  # written by bench/peers.py's runs: kept
            kept = KEEP_BEGIN + old.split(KEEP_BEGIN, 1)[1].split(KEEP_END, 1)[0] + KEEP_END + "\n"
    holdout = meta_.get("holdout", 0)
    n_guard = int(round(holdout * R.calib_main))
    parts = [
        "# Low-data pruning study (issue 7)",
        "",
        "Held-out test accuracy of the pruned ONNX models (no fine-tuning) for each ranking "
        "metric and each deployment, end to end through `onnxprune.prune` and onnxruntime. "
        "Generated by `bench/low_data.py` (its docstring has the protocol); the numbers below "
        "come from `docs/results.json`.",
        "",
        f"Run: `{meta_['command']}` on {meta_['date']}, {meta_['cpus']} shared cores "
        f"(load average at the end {', '.join(f'{x:.1f}' for x in meta_['load_avg'])}), "
        f"**wall time {meta_['wall_minutes']:.1f} min**"
        + (f" (CPU time of the process {meta_['cpu_minutes']:.1f} min, both cores counted)"
           if "cpu_minutes" in meta_ else "") + ". Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta_["versions"].items()) + ".",
        "",
        *[f"Appended: `{a['command']}` on {a['date']}, wall time {a['wall_minutes']:.1f} min"
          + (f" (CPU {a['cpu_minutes']:.1f} min)" if "cpu_minutes" in a else "") + "."
          + (f" Skipped: {', '.join(a['skipped'])}." if a.get("skipped") else "") + "\n"
          for a in meta_.get("appended", [])],
        "Regenerate:",
        "",
        "    # the study as run" + (" (the main run, then the appended runs, in this order)"
                                   if meta_.get("appended") else "") + ":",
        *[f"    nice -n 10 /work/venv/bin/{c['command']}" for c in [meta_, *meta_.get("appended", [])]],
        "    /work/venv/bin/python bench/low_data.py --from-json    # tables and plots only, no recomputation",
        "    /work/venv/bin/python bench/low_data.py --quick --out-json /tmp/q.json --out-md /tmp/q.md --img-dir /tmp/qimg",
        "    nice -n 10 /work/venv/bin/python bench/shapley_games.py   # the exceptions' "
        "investigation: docs/results_games.md",
        "",
        ("Skipped for time: " + ", ".join(meta_["skipped"]) + "\n") if meta_["skipped"] else "",
        "**Deployments** (the same for every metric; only the ranking differs): "
        "`plain` = `prune(compensate=False, refit=False)`, the units are removed; "
        "`+comp` = `compensate=True, refit=False`, mean compensation kept only when it beats "
        "plain removal on the guard samples; `+refit` = `compensate=True, refit=True`, "
        "onnxprune's default: plain, compensated and least-squares refit of the pruned "
        "channels' consumers are built and the best on the guard samples ships. "
        f"The default is therefore **shapley {DEP_NAME[dd]}**.",
        "",
        (f"**Calibration protocol**: prune()'s default `holdout={holdout}`: of the "
         f"{R.calib_main} calibration samples, {R.calib_main - n_guard} are used for scoring, "
         f"the compensation means and the refit, and {n_guard} are held out for the guard that "
         "picks the shipped candidate. The bench scores on exactly prune()'s scoring split "
         "and passes the scores in. Test accuracy is measured on the separate test set, which "
         "no stage sees; nothing was tuned on it."
         if holdout else "**Calibration protocol**: `holdout=0` (first study: every "
         "calibration sample used for scoring)."),
        "",
        "## Reading",
        "",
        BEGIN + reading + END,
        "",
        f"## Headline: ratio 0.5, mean ± std over seeds (calibration {R.calib_main} unlabeled)",
        "",
        f"Issue 7's criterion: onnxprune's default above every baseline metric and both onnxsim "
        f"pruners on every trained model. Baselines are compared with the same deployment "
        f"({DEP_NAME[dd]}), the fair comparison; the last columns show the other deployments. "
        f"'default ahead on seeds' counts the seeds (same calibration draw for both) on which "
        f"the default beats the best baseline. A model is an exception if any baseline's mean "
        f"is at or above the default's.",
        "",
        head,
        "",
    ]
    parts += ["Across the five models, per ratio (same deployment for every metric): the mean "
              "of the per-model mean accuracies, and the worst model. A metric that is best on "
              "average but falls to chance on one model is a poor default.", "",
              table_across(R), ""]
    parts += ["Against onnxsim 0.8.1 at the same weight-parameter reduction (onnxsim runs at "
              "sparsity 0.5 on the `onnxsim.simplify`d model, BN folded, else it prunes "
              "nothing; it removes a different share of the weights than onnxprune's ratio 0.5, "
              "so the default is rerun with `target=\"params\"` at onnxsim's reduction):", "",
              peers_head, ""]
    excs = [e for e in exceptions if e["beaten_by"]] + peer_exc
    parts += ["Exceptions at ratio 0.5 (mean at or above the default's):", ""]
    if not excs:
        parts += ["- none.", ""]
    for e in exceptions:
        for b in e["beaten_by"]:
            parts.append(f"- **{e['model']}**: {b['metric']} {DEP_NAME[dd]} {b['mean']:.3f} vs the "
                         f"default {e['default']:.3f}; per seed (default / {b['metric']}): "
                         + "; ".join(f"s{s} {x:.3f} / {y:.3f}" for s, x, y, _ in b["seeds"])
                         + f"; default ahead on {seed_words(b['seeds'])} seeds.")
    for e in peer_exc:
        for b in e["peers"]:
            parts.append(f"- **{e['model']}**: {b['metric']} {b['mean']:.3f} vs the default "
                         f"{b['default_matched']:.3f} at the same reduction "
                         f"({b['removed']:.2f} of the weights).")
    parts += ["", "Per seed at ratio 0.5, every baseline within 0.03 of the default (or above it), "
              f"{DEP_NAME[dd]} for both:", "", table_seeds(R, 0.5), ""]
    if R.extra:
        parts += ["**More seeds** (the `seeds` phase, investigation of the exceptions): seeds "
                  f"{R.meta['seeds']} of the main grid plus {sorted({s for v in R.extra.values() for s in v})}"
                  f", ratio 0.5, {DEP_NAME[dd]}, paired by seed (the same calibration draw, "
                  "split and guard for both metrics). The p-values measure calibration noise "
                  "(another draw of 128 samples); the last column measures test-set noise: the "
                  "95 % interval of the seed-averaged difference when the test images are "
                  "resampled (bootstrap, 2,000 draws). A gap is real for this model only if "
                  "both exclude zero.", "", table_more_seeds(R, 0.5), ""]
    for ratio in (0.25, 0.75):
        h, _ = headline(R, ratio)
        parts += [f"### The same at ratio {ratio}", "", h, "", "Per seed, baselines within 0.03 "
                  "or above:", "", table_seeds(R, ratio), ""]
    parts += ["## What the deployment step changes", "",
              "Mean test accuracy over seeds for Shapley and for the best baseline (named) in "
              "each deployment:", "", table_deploy(R), "",
              f"What the guard shipped in the `{dd}` deployment (count of refit / compensated / "
              "plain over every metric and seed of the main grid, calibration "
              f"{R.calib_main}):", "", table_chosen(R, dd), "",
              f"The guard's figure for the candidates it compared in the `{dd}` deployment "
              "(the value function on the held-out calibration samples, −KL to the original "
              "here; higher is better; mean over seeds), with Shapley's rank among the "
              f"{len(R.metrics_in('main'))} metrics. Calibration data only, no test labels:",
              "", table_guard(R, dd), ""]
    parts += ["## Models", "", table_base(R), ""]
    parts += ["## Accuracy per model, metric, ratio and deployment", "",
              f"Calibration {R.calib_main} unlabeled samples drawn from the pool with seeds "
              f"{meta_['seeds']}; mean ± std (sample std) over the seeds. `random` also uses "
              "the seed; `l1`, `l2`, `bn_gamma` scores do not depend on the data (their "
              "spread in +comp/+refit comes from the calibration data of means, refit and "
              "guard). `bn_gamma` falls back to L1 on models without BatchNorm (lenet5_mnist, "
              "mlp_digits).", ""]
    if images and "results_ratio.png" in images:
        parts += [f"![accuracy vs ratio]({rel}/results_ratio.png)", ""]
    for model in R.models:
        parts += [f"### {model}", "", table_main(R, model), ""]
    parts += ["## Compared with onnxsim 0.8.1 (structured magnitude and Wanda)", "",
              "**Coverage**: share of the model's weight parameters (Conv/Gemm weights) each "
              "tool can prune at all (onnxsim: removed at sparsity 0.99).", "",
              table_coverage(R), "", f"onnxprune's default (shapley {DEP_NAME[dd]}) at the "
              "weight-parameter reduction onnxsim reached, every sparsity:", "",
              table_peers(R), ""]
    parts += ["## Calibration size (ratio 0.5, then 0.75)", "",
              "n = 32 means 24 scored + 8 guard samples. n = 500 is the whole MNIST pool (375 + "
              "125; its seeds differ only in the split and the estimator's seed); the digits "
              "pool has 300 samples, so its 500 column is n = 300 (225 + 75). vgg/resnet: "
              "+refit only, n = 500 with seed 0 only.", "",
              table_calib(R, 0.5), "", "Same at ratio 0.75:", "", table_calib(R, 0.75), ""]
    if "results_calib.png" in images:
        parts += [f"![calibration size]({rel}/results_calib.png)", ""]
    parts += [f"## Labeled vs unlabeled calibration ({R.calib_main} samples)", "",
              "With labels the default value function (of the Shapley game and of the guard) "
              "is the negative cross-entropy of the true class instead of the negative KL to "
              "the original model. Only `shapley`, `loo` and `taylor` scores use the value "
              "function; vgg/resnet: seed 0, +refit only.", "", table_labels(R), ""]
    default_est = R.default_estimator()
    if R.metrics_in("estimators"):
        parts += ["## Shapley estimators", "", "Default budget (10 × units evaluations per "
                  f"group), {DEP_NAME[dd]} deployment. `shapley` is the default "
                  "(`estimator=\"auto\"`): exact enumeration for groups of at most 8 units, "
                  f"else `{default_est}`. A named estimator is used for every group, small "
                  "ones included. vgg/resnet: seeds as in the last column.", "",
                  table_extra(R, "estimators"), ""]
    if R.metrics_in("variants"):
        parts += ["## Investigation variants", "", table_extra(R, "variants"), ""]
    if any(r["kind"] == "ablation" for r in R.recs):
        parts += ["## Layer-wise ablation (one group at a time)", "",
                  f"Seed {meta_['seeds'][0]}, calibration {R.calib_main}, the main metrics' "
                  "scores in the plain and the mean-compensated game. For each prunable group "
                  "alone, remove 0, 10, ..., 100 % of its units in the metric's order (lowest "
                  "score first), others intact; test accuracy (first 500 test samples for MNIST, "
                  "all 397 for digits) through the masked model (exactly the pruned model with "
                  "plain removal, or with mean compensation). No refit here: it is a property "
                  "of the ranking. AUC = area under accuracy vs fraction removed (trapezoid, in "
                  "[0, 1]), averaged over groups; higher is better.", "", table_ablation(R), "",
                  "Per group (compensated game; groups in graph order, first = nearest the "
                  "input):", "", table_ablation_groups(R), "",
                  "Light removal (compensated game): accuracy after removing 10-50 % of one "
                  "group, mean over groups / worst group:", "", table_ablation_light(R), ""]
        if "results_ablation.png" in images:
            parts += [f"![ablation]({rel}/results_ablation.png)", ""]
    timing = [r for r in R.recs if r["kind"] == "timing"]
    how = (f"measured side by side in the `timing` phase: every metric in turn, "
           f"{1 + max(r['repeat'] for r in timing)} rounds (A B C ... A B C ...), seed 0, "
           f"calibration {R.calib_main} ({R.calib_main - n_guard} scored), compensated game, "
           f"load average {min(r['load_avg'] for r in timing):.1f}-"
           f"{max(r['load_avg'] for r in timing):.1f}"
           if timing else f"the grid's own scoring runs (calibration {R.calib_main})")
    parts += ["## Cost", "", "**Scoring**: median wall time of scoring all groups once and "
              f"coalition evaluations (ev), {how}, 2 shared cores, ONNX Runtime CPU. Metrics "
              "absent from the timing phase (estimators) show the grid's own runs. Data-free "
              "metrics take about a millisecond.", "", table_time(R), "",
              "**Deployment**: median wall time of prune()'s rewrite-and-deploy step with "
              "given scores (building the candidates, the refit's activation statistics and "
              "solves, the guard's runs), Shapley's seed-0 ranking at ratio 0.5, the three "
              "deployments interleaved in the timing phase; the last column is the median "
              "over every +refit run of the main grid.", "", table_deploy_time(R), ""]
    if "results_time.png" in images:
        parts += [f"![accuracy vs scoring time]({rel}/results_time.png)", ""]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(parts) + "\n" + ("\n" + kept if kept else ""))
    return [e for e in exceptions if e["beaten_by"]] + peer_exc


# ----------------------------------------------------------------------------- main


PHASES = ["base", "main", "peers", "calib", "labels", "timing", "seeds", "ablation",
          "estimators", "variants"]
DEFAULT_PHASES = [p for p in PHASES if p != "variants"]


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one small model, ratio 0.5, 32 samples, "
                    "seed 0, a handful of metrics")
    ap.add_argument("--from-json", action="store_true", help="only tables/plots from --out-json")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--phases", nargs="+", default=DEFAULT_PHASES, choices=PHASES)
    ap.add_argument("--deploys", nargs="+", default=list(DEPLOYS), choices=list(DEPLOYS))
    ap.add_argument("--max-minutes", type=float, default=40.0,
                    help="skip the optional phases (model by model) once this is exceeded")
    ap.add_argument("--ablation-samples", type=int, default=500)
    ap.add_argument("--timing-repeats", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    ap.add_argument("--estimators", nargs="+", default=[e for e in ESTIMATORS if e != "kernelshap"],
                    choices=ESTIMATORS)
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--extra-seeds", nargs="+", type=int, default=list(EXTRA_SEEDS),
                    help="seeds of the `seeds` phase (investigation, ratio 0.5)")
    ap.add_argument("--big-seeds", type=int, default=1, help="seeds used for the extra "
                    "estimator/variant runs on vgg_mnist and resnet_mnist (time)")
    ap.add_argument("--append", action="store_true", help="keep the records already in "
                    "--out-json and add this run's (e.g. one more phase)")
    ap.add_argument("--out-json", default=str(ROOT / "docs" / "results.json"))
    ap.add_argument("--out-md", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--img-dir", default=str(ROOT / "docs" / "img"))
    args = ap.parse_args(argv)
    args.seeds, args.ratios, args.calib = tuple(args.seeds), RATIOS, 128
    args.metrics, args.sparsities = BASE_METRICS, SPARSITIES
    if args.quick:
        args.models = ["mlp_digits"] if args.models == list(MODELS) else args.models
        args.seeds, args.ratios, args.calib = (0,), (0.5,), 32
        args.metrics = ["random", "l1", "loo"]
        args.sparsities = (0.5,)
        args.phases = (["base", "main", "peers", "ablation"] if args.phases == DEFAULT_PHASES
                       else args.phases)
    return args


def report(args) -> list[dict]:
    doc = json.loads(Path(args.out_json).read_text())
    R = Results(doc)
    images = []
    try:
        images = plots(R, Path(args.img_dir))
    except ImportError as e:  # matplotlib is a dev tool only
        log(f"no plots: {e}")
    return write_md(R, Path(args.out_md), Path(args.img_dir), images)


def main(argv=None) -> int:
    args = parse(argv)
    if not args.from_json:
        study = Study(args)
        if args.append and Path(args.out_json).exists():
            old = json.loads(Path(args.out_json).read_text())
            study.records = old["records"]
            study.previous = old["meta"]
        optional = {"calib", "labels", "estimators", "variants", "ablation", "timing", "seeds"}
        for ph in PHASES:
            if ph not in args.phases:
                continue
            if ph in optional and study.elapsed_min() > args.max_minutes:
                study.skipped.append(ph)
                log(f"skip {ph}: {study.elapsed_min():.1f} min > {args.max_minutes}")
                continue
            log(f"phase {ph} ({study.elapsed_min():.1f} min so far)")
            getattr(study, f"phase_{ph}")()
            study.save()
        log(f"done in {study.elapsed_min():.1f} min")
    exceptions = report(args)
    for e in exceptions:
        for b in e.get("beaten_by", []):
            log(f"exception: {e['model']} r {e['ratio']}: default {e['default']:.3f} vs "
                f"{b['metric']} {b['mean']:.3f}")
        for b in e.get("peers", []):
            log(f"exception: {e['model']}: {b['metric']} {b['mean']:.3f} vs default "
                f"{b['default_matched']:.3f} at the same reduction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
