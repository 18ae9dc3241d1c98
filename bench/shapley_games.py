"""Why does Shapley + refit trail magnitude on some trained models? (issue 7, investigation)

The default plays the *compensated* game (a removed channel is replaced by its mean at
its consumers) but ships the least-squares *refit*, which re-solves each consumer from the
kept channels. Two games closer to what ships are scored here, next to the default and `l1`,
and deployed exactly as the study does (prune(..., scores=...), guarded refit, held-out test
accuracy):

  default    onnxprune's Shapley as prune() scores it (compensated game; the truncated
             estimator at the depth of the params budget's expected cut, so it depends on
             the ratio; the persample estimator before 2026-12-06)
  imputed    the same coalitions, but a removed channel is replaced by its linear least-
             squares prediction from the kept channels of the same site (per position,
             covariance of the scoring samples): what the refit of a 1x1 / Gemm consumer
             achieves. Scored by the antithetic estimator with a numpy-side imputation (the
             engine has no such game), so it is slow; a bench-only game.
  truncated  the compensated game, but only marginals on coalitions at least as large as the
             kept set: each per-sample order removes units from the full coalition until the
             target ratio is reached, its reverse removes the others (antithetic), so every
             unit gets one marginal per pair. Depends on the ratio.
  sequential the default game in 3 steps: prune(..., steps=3) re-scores the model that the
             previous step shipped (refit included), ThiNet's order; 3x the scoring
  l1         weight magnitude (the best baseline on resnet_mnist / mlp_digits at ratio 0.5)
  l1 sequential  l1 in 3 steps (magnitudes of the refit weights re-ranked): whether
             sequential pruning helps the baseline as much as the default

Also: cross-seed stability of the default's scores (mean Spearman over seed pairs, per
group), the overlap of the default's kept set with l1's at ratio 0.5 (0.5 = chance), and a
swap test on the first seed: the default's ranking with one group's ranking taken from l1
(and l1's with one group from the default), to see whether one group carries the gap.

    nice -n 10 python bench/shapley_games.py            # five models, 3 seeds, ~25 min
    python bench/shapley_games.py --models mlp_digits --seeds 0   # ~30 s

Writes docs/results_games.md (and --json). Not part of the default study run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import low_data as L  # noqa: E402
import onnxprune  # noqa: E402
from onnxprune.api import make_engine, score_model  # noqa: E402
from onnxprune.scoring.site_stats import site_means  # noqa: E402
from onnxprune.scoring.estimators import default_budget  # noqa: E402
from onnxprune.scoring.shapley import shapley_group  # noqa: E402

GAMES = ["default", "imputed", "truncated", "sequential", "l1", "l1 sequential"]
STEPS = 3  # the sequential game's rounds


class ImputedGame:
    """Engine-like: values(gid, coalitions [K, units]) -> [K, N] with removed channels of the
    group imputed at every site by E[x_removed | x_kept] under the sites' channel covariance."""

    per_sample_masks = False  # one coalition for all samples: one solve per coalition
    chunk = 16  # coalitions per ORT run

    def __init__(self, am, scoring, value_fn, ridge: float = 1e-2):
        self.analysis, self.ridge = am.analysis, ridge
        self.x = scoring.inputs["input"]
        self.n = len(self.x)
        base = gs.export_onnx(am.analysis.graph.copy())
        names = sorted({s.tensor for s in am.analysis.sites})
        probe = onnx.ModelProto()
        probe.CopyFrom(base)
        for t in names:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
        outs = L.session(probe).run(None, {"input": self.x})
        k = len(base.graph.output)
        self.act = dict(zip(names, outs[k:]))
        self.value_fn = value_fn
        value_fn.prepare(outs[:k], None)
        self.base, self.models, self.evaluations = base, {}, 0

    def _model(self, gid: int):
        """The model with each of the group's sites fed from an input of its own."""
        if gid not in self.models:
            p = onnx.ModelProto()
            p.CopyFrom(self.base)
            nodes = {n.output[0]: n for n in p.graph.node if n.output}
            sites = []
            for j, s in enumerate(self.analysis.sites):
                inside = self.analysis.ch_group[s.ids] == gid
                if not inside.any():
                    continue
                name = f"site_in_{j}"
                nodes[s.node].input[s.input_index] = name
                p.graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                a = np.moveaxis(self.act[s.tensor], s.axis, -1)
                flat = a.reshape(-1, a.shape[-1]).astype(np.float64)
                mu = flat.mean(0)
                cov = (flat - mu).T @ (flat - mu) / len(flat)
                unit = np.where(inside, self.analysis.ch_unit[s.ids], -1)
                sites.append((s, name, mu, cov, unit))
            self.models[gid] = (L.session(p), sites)
        return self.models[gid]

    def values(self, gid: int, coalitions: np.ndarray) -> np.ndarray:
        sess, sites = self._model(gid)
        c = np.asarray(coalitions, bool)
        out = [self._run(sess, sites, c[i:i + self.chunk]) for i in range(0, len(c), self.chunk)]
        self.evaluations += len(c)
        return np.concatenate(out, 0)

    def _run(self, sess, sites, c: np.ndarray) -> np.ndarray:
        k = len(c)
        feeds = {"input": np.tile(self.x, (k,) + (1,) * (self.x.ndim - 1))}
        for s, name, mu, cov, unit in sites:
            a = np.moveaxis(self.act[s.tensor], s.axis, -1)
            flat = a.reshape(-1, a.shape[-1]).astype(np.float64)
            out = np.empty((k,) + a.shape, np.float32)
            for i in range(k):
                keep = (unit < 0) | c[i][np.maximum(unit, 0)]
                out[i] = a if keep.all() else self._impute(flat, keep, mu, cov).reshape(a.shape)
            feeds[name] = np.moveaxis(out, -1, s.axis + 1).reshape(
                (k * self.n,) + self.act[s.tensor].shape[1:])
        res = sess.run(None, feeds)
        return self.value_fn([r.reshape((k, self.n) + r.shape[1:]) for r in res])

    def _impute(self, flat, keep, mu, cov):
        kk, rr = np.nonzero(keep)[0], np.nonzero(~keep)[0]
        filled = flat.copy()
        if len(kk) == 0:
            filled[:, rr] = mu[rr]
            return filled
        s = cov[np.ix_(kk, kk)]
        s = s + (self.ridge * np.trace(s) / len(kk) + 1e-9) * np.eye(len(kk))
        b = np.linalg.solve(s, cov[np.ix_(kk, rr)])
        filled[:, rr] = mu[rr] + (flat[:, kk] - mu[kk]) @ b
        return filled


def truncated_scores(engine, gid: int, ratio: float, seed: int) -> np.ndarray:
    """Mean marginal over per-sample removal walks from the full coalition down to the kept
    size, in antithetic pairs (the reversed order removes the other units)."""
    n, samples = engine.analysis.group(gid).units, engine.n
    depth = max(1, int(np.ceil(ratio * n)))
    rng = np.random.default_rng([seed, gid])
    pairs = max(1, default_budget(n) // (2 * (depth + 1)))
    total, count = np.zeros(n), np.zeros(n)
    rows = np.arange(samples)
    for _ in range(pairs):
        order = np.argsort(rng.random((samples, n)), axis=1)
        for o in (order, order[:, ::-1]):
            co = np.ones((depth + 1, samples, n), bool)
            for j in range(1, depth + 1):
                co[j] = co[j - 1]
                co[j, rows, o[:, j - 1]] = False
            v = engine.values(gid, co)  # [depth + 1, N]
            for j in range(depth):
                np.add.at(total, o[:, j], v[j] - v[j + 1])
                np.add.at(count, o[:, j], 1)
    return total / np.maximum(count, 1)


def scores_for(game: str, m: L.Model, scoring, seed: int, means, ratio: float) -> dict:
    if game == "default":  # as prune() scores a params budget (api._unit_share)
        out = score_model(m.am, scoring, metric=L.DEFAULT, seed=seed, means=means,
                          removal=1 - (1 - ratio) ** 0.5)
        return {g: np.asarray(v.values, dtype=np.float64) for g, v in out.items()}
    if game == "l1":
        return L.compute_scores(m, scoring, "l1", seed, means, None)[0]
    if game == "truncated":
        engine = make_engine(m.am, scoring, means=means)
        return {g.id: truncated_scores(engine, g.id, ratio, seed) for g in m.am.analysis.prunable}
    if game == "imputed":
        game_engine = ImputedGame(m.am, scoring, make_engine(m.am, scoring).value_fn)
        return {g.id: shapley_group(game_engine, g.id, seed=seed + g.id).values
                for g in m.am.analysis.prunable}
    raise ValueError(game)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def kept(scores: np.ndarray, ratio: float) -> set:
    k = len(scores) - int(np.floor(ratio * len(scores) + 0.5))
    return set(np.argsort(-scores, kind="stable")[:k].tolist())


def run(args) -> list[dict]:
    records = []
    for name in args.models:
        m = L.Model(name)
        for seed in args.seeds:
            cal = m.calib(128, seed, False)
            scoring, _ = cal.split(L.HOLDOUT, seed)
            means = site_means(m.am.analysis, m.am.ident, scoring.inputs)
            for game in args.games:
                cached = None  # the truncated game and the default depend on the ratio
                for ratio in args.ratios:
                    if game.endswith("sequential"):  # scores and prunes in one go
                        metric = "l1" if game.startswith("l1") else L.DEFAULT
                        res = onnxprune.prune(m.am, cal, ratio=ratio, steps=STEPS, seed=seed,
                                              metric=metric, holdout=L.HOLDOUT, latency=False)
                        records.append(_record(name, seed, game, ratio, L.accuracy(res.model, m.test),
                                               res.report["seconds"], {}, "steps"))
                        continue
                    if cached is None or game in ("truncated", "default"):
                        t0 = time.perf_counter()
                        cached = (scores_for(game, m, scoring, seed, means, ratio),
                                  time.perf_counter() - t0)
                    scores, secs = cached
                    res = onnxprune.prune(m.am, cal, ratio=ratio, scores=scores, seed=seed,
                                          holdout=L.HOLDOUT, latency=False)
                    records.append(_record(name, seed, game, ratio, L.accuracy(res.model, m.test),
                                           secs, scores, res.report["deploy"]["chosen"]))
    return records


def _record(name, seed, game, ratio, acc, secs, scores, chosen) -> dict:
    if isinstance(secs, dict):  # prune()'s timings: the scoring of every step
        secs = sum(v for k, v in secs.items() if k.startswith("score"))
    L.log(f"{name:13s} seed {seed} {game:10s} r {ratio}: acc {acc:.4f} ({secs:.1f} s scoring, "
          f"shipped {chosen})")
    return {"model": name, "seed": seed, "game": game, "ratio": ratio, "acc": acc,
            "seconds": secs, "chosen": chosen,
            "scores": {str(g): np.asarray(v).tolist() for g, v in scores.items()}}


def swaps(name: str, seed: int, ratio: float = 0.5) -> list[dict]:
    """Accuracy of the default's ranking with group g's taken from l1, and the reverse."""
    m = L.Model(name)
    cal = m.calib(128, seed, False)
    scoring, _ = cal.split(L.HOLDOUT, seed)
    means = site_means(m.am.analysis, m.am.ident, scoring.inputs)
    default = scores_for("default", m, scoring, seed, means, ratio)
    l1 = scores_for("l1", m, scoring, seed, means, ratio)

    def acc(scores: dict) -> float:
        res = onnxprune.prune(m.am, cal, ratio=ratio, scores=scores, seed=seed,
                              holdout=L.HOLDOUT, latency=False)
        return L.accuracy(res.model, m.test)

    rows = [{"group": None, "default_with_l1": acc(default), "l1_with_default": acc(l1)}]
    for g in m.am.analysis.prunable:
        rows.append({"group": g.id, "units": g.units,
                     "default_with_l1": acc({**default, g.id: l1[g.id]}),
                     "l1_with_default": acc({**l1, g.id: default[g.id]})})
        L.log(f"swap {name} group {g.id}: {rows[-1]}")
    return rows


def write_swaps(rows: list[dict], name: str, seed: int) -> str:
    base = rows[0]
    lines = [f"Swap test, {name}, seed {seed}, ratio 0.5: the default alone "
             f"{base['default_with_l1']:.3f}, l1 alone {base['l1_with_default']:.3f}.", "",
             "| group | units | default, this group ranked by l1 | l1, this group ranked by "
             "the default |", "|---:|---:|---:|---:|"]
    for r in rows[1:]:
        lines.append(f"| {r['group']} | {r['units']} | {r['default_with_l1']:.3f} | "
                     f"{r['l1_with_default']:.3f} |")
    return "\n".join(lines)


def write_md(records: list[dict], args, path: Path, minutes: float,
             swap_md: str = "") -> None:
    lines = ["# Shapley games closer to the refit (issue 7 investigation)", "",
             "Generated by `" + " ".join(["python bench/shapley_games.py", *args.argv]) + "`" +
             f" on {time.strftime('%Y-%m-%d %H:%M')}, wall time {minutes:.1f} min "
             "(see the script's docstring for the games). Held-out test accuracy after "
             "`prune(..., scores=...)` with the default guarded deployment (refit), "
             "calibration 128 unlabeled (96 scored + 32 guard), mean ± std over seeds "
             f"{list(args.seeds)}; scoring seconds in brackets.", ""]
    for name in args.models:
        rows = [r for r in records if r["model"] == name]
        if not rows:
            continue
        lines += [f"## {name}", "", "| game | " + " | ".join(f"r={r}" for r in args.ratios)
                  + " | scoring s |", "|---|" + "---:|" * (len(args.ratios) + 1)]
        for game in args.games:
            cells = [L.fmt([r["acc"] for r in rows if r["game"] == game and r["ratio"] == ratio])
                     for ratio in args.ratios]
            secs = [r["seconds"] for r in rows if r["game"] == game]
            lines.append(f"| {game} | " + " | ".join(cells) + f" | {np.mean(secs):.1f} |")
        lines += ["", _agreement(rows, args), ""]
    if swap_md:
        lines += ["## Swap test", "", swap_md, ""]
    path.write_text("\n".join(lines) + "\n")


def _agreement(rows: list[dict], args) -> str:
    """Per group: the default's cross-seed Spearman and its kept-set overlap with l1 at 0.5."""
    default = {r["seed"]: r["scores"] for r in rows if r["game"] == "default"
               and r["ratio"] == args.ratios[0]}
    l1 = {r["seed"]: r["scores"] for r in rows if r["game"] == "l1" and r["ratio"] == args.ratios[0]}
    if not default:
        return ""
    seeds = sorted(default)
    out = ["| group | units | default: cross-seed Spearman | default vs l1: Spearman | kept-set "
           "overlap with l1 at r=0.5 (chance 0.5) |", "|---:|---:|---:|---:|---:|"]
    for g in default[seeds[0]]:
        units = len(default[seeds[0]][g])
        pairs = [(a, b) for i, a in enumerate(seeds) for b in seeds[i + 1:]]
        stab = np.mean([spearman(np.array(default[a][g]), np.array(default[b][g]))
                        for a, b in pairs]) if pairs else float("nan")
        vs = [spearman(np.array(default[s][g]), np.array(l1[s][g])) for s in seeds if s in l1]
        ov = [len(kept(np.array(default[s][g]), 0.5) & kept(np.array(l1[s][g]), 0.5))
              / max(1, len(kept(np.array(l1[s][g]), 0.5))) for s in seeds if s in l1]
        out.append(f"| {g} | {units} | {stab:.2f} | {np.mean(vs) if vs else float('nan'):+.2f} | "
                   f"{np.mean(ov) if ov else float('nan'):.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet_mnist", "vgg_mnist", "mlp_digits",
                                                     "cnn_digits", "lenet5_mnist"],
                    choices=list(L.MODELS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.75])
    ap.add_argument("--games", nargs="+", default=GAMES, choices=GAMES)
    ap.add_argument("--out-md", default=str(ROOT / "docs" / "results_games.md"))
    ap.add_argument("--swap-model", default="resnet_mnist", help="model of the swap test "
                    "('none' to skip)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    records = run(args)
    swap_md = ""
    if args.swap_model != "none":
        swap_md = write_swaps(swaps(args.swap_model, args.seeds[0]), args.swap_model,
                              args.seeds[0])
    minutes = (time.perf_counter() - t0) / 60
    write_md(records, args, Path(args.out_md), minutes, swap_md)
    if args.json:
        Path(args.json).write_text(json.dumps(records))
    L.log(f"wrote {args.out_md} ({minutes:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
