"""Stopping the truncated chains on the MiniLM-L6-sized encoder's groups (issue 16, s7-stop):
per-chain stop checks, refinement on 1,536-unit groups, calibration of E[wrong side].

    PYTHONPATH=.:cli python bench/minilm_stop.py pool --groups ffn_last ffn_first heads_last --chains 40
    PYTHONPATH=.:cli python bench/minilm_stop.py study --groups ffn_last ffn_first heads_last --ref 32
    PYTHONPATH=.:cli python bench/minilm_stop.py refine --groups ffn_last --ref 128 --seeds 3
    PYTHONPATH=.:cli python bench/minilm_stop.py rowcost --groups ffn_first ffn_last

The game is the command's (bench/cost.py's MiniLM data: `build_minilm.inputs(64, 32, 0)`, 48
scoring samples, the mean-compensated game, the truncated game at the depth of a params budget of
0.5, wrong side counted at that budget's cut). ``pool`` runs plain chains (seed 30000 + chain) and
caches each chain's marginals in bench/.cache (so a pool grows, never recomputes). ``study``
splits a group's pool: the first ``--ref`` chains are the reference (a long run of the same
game), the rest are independent replicates of a design, which are simulated by replaying the
pool's chains in order (chains are i.i.d., so a design that runs m chains is m pool chains):
E[wrong side] and measured disagreement after each chain, and where the round-checked stop and
the per-chain stop end. ``refine`` runs 2 pool chains + the estimator's star rounds
(``truncated._contest_rounds``) on live evaluations until E[wrong side] is under the smallest
``--targets`` share, and says where each target's stop ends. ``rowcost``: ms per chain row
against star row.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from cost import CACHE, SHARE  # noqa: E402
from onnxprune.scoring import shapley  # noqa: E402
from onnxprune.scoring.estimators import truncated as tr  # noqa: E402
from onnxprune.scoring.estimators.cutaware import wrong_side  # noqa: E402
from onnxprune.scoring.estimators.game import open_game  # noqa: E402

_SETUP: dict = {}


def setup():
    """(engine, {name: group}) for MiniLM, once per process."""
    if not _SETUP:
        from agreement import setup as agree_setup
        t0 = time.perf_counter()
        _, engine, groups = agree_setup("minilm_l6")
        ffn = [g for g in groups if g.units == 1536]
        heads = [g for g in groups if g.units == 12]
        _SETUP["engine"] = engine
        _SETUP["groups"] = {"ffn_first": ffn[0], "ffn_last": ffn[-1], "ffn_mid": ffn[len(ffn) // 2],
                            "heads_first": heads[0], "heads_last": heads[-1]}
        print(f"setup {time.perf_counter() - t0:.0f} s; groups "
              f"{[(k, g.id, g.units) for k, g in _SETUP['groups'].items()]}", flush=True)
    return _SETUP["engine"], _SETUP["groups"]


def dims(n: int) -> tuple[int, int]:
    """(depth, cut) as prune() sets them for a group that loses SHARE of its units."""
    return tr.truncation_depth(n, SHARE), tr.truncation_depth(n, SHARE, margin=1.0)


def chain_file(gid: int, c: int) -> Path:
    digest = hashlib.sha256((CACHE / "minilm_l6.onnx").read_bytes()[:1 << 20]).hexdigest()[:8]
    return CACHE / "minilm_pool" / f"g{gid}_m{tr.DEPTH_MARGIN:g}_{digest}_c{c}.npz"


def game_for(engine, g):
    return open_game(shapley._GroupValue(engine, g.id), g.units, 10**9, 256, cache=False)


def run_pool(name: str, chains: int) -> None:
    engine, groups = setup()
    g = groups[name]
    d, _ = dims(g.units)
    game = game_for(engine, g)
    for c in range(chains):
        file = chain_file(g.id, c)
        if file.exists():
            continue
        rng = np.random.default_rng(30_000 + c)
        orders = rng.permuted(np.tile(np.arange(g.units), (len(game.v_full_ps), 1)), axis=1)[None]
        t0, e0 = time.perf_counter(), game.evaluations
        marg = tr._marginals(game, orders, d)[0]  # [N, d]
        file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(file, units=orders[0, :, :d], marg=marg)
        dt = time.perf_counter() - t0
        print(f"{name} chain {c}: {game.evaluations - e0} rows, {dt:.1f} s "
              f"({1000 * dt / max(1, game.evaluations - e0):.0f} ms/row)", flush=True)


def load_pool(gid: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out, c = [], 0
    while chain_file(gid, c).exists():
        z = np.load(chain_file(gid, c))
        out.append((z["units"].reshape(-1), z["marg"].reshape(-1)))
        c += 1
    return out


def values_of(chains, n: int) -> tuple[np.ndarray, np.ndarray]:
    units = np.concatenate([u for u, _ in chains])
    marg = np.concatenate([m for _, m in chains])
    mean, se, count = tr._summarize(units, marg, n)
    seen = count > 0
    return np.where(seen, mean, mean[seen].max() if seen.any() else 0.0), se


def disagree(values: np.ndarray, ref: np.ndarray, k: int) -> int:
    mine = np.zeros(len(ref), bool)
    mine[np.argsort(values, kind="stable")[:k]] = True
    theirs = np.zeros(len(ref), bool)
    theirs[np.argsort(ref, kind="stable")[:k]] = True
    return int((mine != theirs).sum())


def study(names: list[str], n_ref: int, planned: int) -> None:
    _, groups = setup_groups_only()
    for name in names:
        gid, n = groups[name]
        d, k = dims(n)
        pool = load_pool(gid)
        ref, rest = pool[:n_ref], pool[n_ref:]
        ref_v, ref_se = values_of(ref, n)
        half = values_of(ref[: n_ref // 2], n)[0], values_of(ref[n_ref // 2:], n)[0]
        ref_wrong = float(wrong_side(ref_v, ref_se, k)[0].sum())
        print(f"\n{name} (group {gid}): {n} units, depth {d} rows/chain, cut {k}; reference "
              f"{len(ref)} chains ({len(ref) * d} rows), its own E[wrong] {ref_wrong:.1f}; half vs "
              f"half disagree {disagree(half[0], half[1], k)} (agreement "
              f"{1 - disagree(half[0], half[1], k) / n:.3f})")
        print("| chains | rows | E[wrong side] (share) | disagree with ref | agreement | replicates |")
        print("|---|---|---|---|---|---|")
        reps = [rest[i:i + planned] for i in range(0, len(rest) - planned + 1, planned)] or [rest]
        for m in range(1, max(len(r) for r in reps) + 1):
            ew, dis = [], []
            for r in reps:
                if len(r) < m:
                    continue
                v, se = values_of(r[:m], n)
                ew.append(float(wrong_side(v, se, k)[0].sum()))
                dis.append(disagree(v, ref_v, k))
            print(f"| {m} | {m * d} | {np.mean(ew):.1f} ({np.mean(ew) / n:.1%}) | "
                  f"{np.mean(dis):.1f} | {1 - np.mean(dis) / n:.3f} | {len(ew)} |")
        stops(reps, ref_v, n, k, d, planned)


def stop_at(seq: list[float], checks: list[int], target: float) -> int:
    """Chains run by a rule that checks after the chain counts ``checks`` (the last = planned)."""
    for m in checks:
        if m >= len(seq) or seq[m - 1] < target:
            return min(m, len(seq))
    return len(seq)


def stops(reps, ref_v, n: int, k: int, d: int, planned: int) -> None:
    """Where each stop rule ends on the replicates, and the disagreement there."""
    curves = []
    for r in reps:
        ew, dis = [], []
        for m in range(1, len(r) + 1):
            v, se = values_of(r[:m], n)
            ew.append(float(wrong_side(v, se, k)[0].sum()))
            dis.append(disagree(v, ref_v, k))
        curves.append((ew, dis))
    size = -(-planned // tr.STOP_ROUNDS)
    rules = {f"rounds of {size} (HEAD)": list(range(size, planned, size)) + [planned],
             "every chain": list(range(1, planned + 1)),
             "every chain from 2": list(range(2, planned + 1))}
    print(f"| rule ({planned} planned) | stop share | chains run (mean; each) | rows | "
          f"disagree with ref | agreement |")
    print("|---|---|---|---|---|---|")
    for share in (0.02, 0.03, 0.04, 0.05):
        for rule, checks in rules.items():
            ms = [stop_at(ew, checks, share * n) for ew, _ in curves]
            dis = [c[1][m - 1] for c, m in zip(curves, ms)]
            print(f"| {rule} | {share:g} | {np.mean(ms):.1f}; {ms} | {np.mean(ms) * d:.0f} | "
                  f"{np.mean(dis):.1f} | {1 - np.mean(dis) / n:.3f} |")


def refine_study(name: str, n_ref: int, seeds: int, start: int, cap: int,
                 targets: list[float]) -> None:
    """``start`` pool chains (from past the reference), then the estimator's own star rounds
    (truncated._contest_rounds, one round at a time: a quarter of a chain's rows each), live;
    E[wrong side] and disagreement with the reference after each round, and where a stop at
    each of ``targets`` (shares of the group) ends."""
    engine, groups = setup()
    g = groups[name]
    n, (d, k) = g.units, dims(g.units)
    pool = load_pool(g.id)
    assert len(pool) >= n_ref + seeds * start, f"{name}: {len(pool)} pool chains"
    ref_v = values_of(pool[:n_ref], n)[0]
    per_round = max(1, d // tr.STOP_ROUNDS // (tr.STAR_ARMS + 1)) * (tr.STAR_ARMS + 1)
    print(f"\n{name}: {start} chains + star rounds of {per_round} rows, cut {k}, reference "
          f"{n_ref} chains")
    print("| seed | rows | E[wrong side] (share) | disagree with ref | agreement |")
    print("|---|---|---|---|---|")
    paths = []
    for seed in range(seeds):
        part = pool[n_ref + seed * start: n_ref + (seed + 1) * start]
        units = np.concatenate([u for u, _ in part])
        marg = np.concatenate([m for _, m in part])
        game, rng = game_for(engine, g), np.random.default_rng(40_000 + seed)
        rows, path = start * d, []
        while True:
            mean, se = values_of([(units, marg)], n)
            ew, dis = float(wrong_side(mean, se, k)[0].sum()), disagree(mean, ref_v, k)
            path.append((rows, ew, dis))
            print(f"| {seed} | {rows} | {ew:.1f} ({ew / n:.1%}) | {dis} | {1 - dis / n:.3f} |",
                  flush=True)
            if ew < min(targets) * n or rows + per_round > cap * d:
                break
            units, marg, spent, _ = tr._contest_rounds(game, rng, units, marg, d, k, per_round, 0.0)
            rows += spent
        paths.append(path)
    print("| stop (chains at 5% first?) | rows (each seed) | mean rows | disagreement (each) | "
          "agreement |")
    print("|---|---|---|---|---|")
    for chain_check in (True, False):
        for t in targets:
            got = [stop_on(path, t, chain_check, n) for path in paths]
            r, dis = [x for x, _, _ in got], [y for _, _, y in got]
            print(f"| {t:g} ({'yes' if chain_check else 'no'}) | {r} | {np.mean(r):.0f} | {dis} | "
                  f"{1 - np.mean(dis) / n:.3f} |")


def stop_on(path, t: float, chain_check: bool, n: int):
    """Where a stop at share t ends on a recorded (rows, E[wrong], disagreement) path; with
    ``chain_check`` the chains alone stop at STOP_SHARE, as the estimator does."""
    for i, (rows, ew, dis) in enumerate(path):
        limit = max(t, tr.STOP_SHARE) if chain_check and i == 0 else t
        if ew < limit * n:
            return rows, ew, dis
    return path[-1]


def row_cost(names: list[str], reps: int = 2) -> None:
    """ms per row of a chain (``_marginals``, 113 rows) against star rows (3 stars, 27 rows)
    on the same group, alternately in one process."""
    engine, groups = setup()
    for name in names:
        g = groups[name]
        d, _ = dims(g.units)
        game, rng = game_for(engine, g), np.random.default_rng(0)
        n_samples = len(game.v_full_ps)
        for rep in range(reps):
            orders = rng.permuted(np.tile(np.arange(g.units), (n_samples, 1)), axis=1)[None]
            t0 = time.perf_counter()
            tr._marginals(game, orders, d)
            chain = (time.perf_counter() - t0) / d
            slots = rng.integers(0, g.units, (3, tr.STAR_ARMS, n_samples))
            t0 = time.perf_counter()
            tr._star_marginals(game, rng, slots, d)
            star = (time.perf_counter() - t0) / (3 * (tr.STAR_ARMS + 1))
            print(f"{name} rep {rep}: chain row {1000 * chain:.0f} ms, star row {1000 * star:.0f} ms",
                  flush=True)


def setup_groups_only():
    """(None, {name: (gid, units)}) from the pool files' names (no engine: study runs offline)."""
    import onnxprune
    am = onnxprune.analyze_model(str(CACHE / "minilm_l6.onnx"))
    gs = [g for g in am.analysis.prunable if g.units > 8]
    ffn = [g for g in gs if g.units == 1536]
    heads = [g for g in gs if g.units == 12]
    pick = {"ffn_first": ffn[0], "ffn_last": ffn[-1], "ffn_mid": ffn[len(ffn) // 2],
            "heads_first": heads[0], "heads_last": heads[-1]}
    return None, {k: (g.id, g.units) for k, g in pick.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["pool", "study", "refine", "rowcost"])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--start", type=int, default=2)
    ap.add_argument("--cap", type=int, default=15)
    ap.add_argument("--groups", nargs="+", default=["ffn_last"])
    ap.add_argument("--chains", type=int, default=40)
    ap.add_argument("--ref", type=int, default=32)
    ap.add_argument("--planned", type=int, default=15)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.05, 0.04, 0.03])
    args = ap.parse_args()
    for name in args.groups:
        if args.what == "pool":
            run_pool(name, args.chains)
    if args.what == "refine":
        for name in args.groups:
            refine_study(name, args.ref, args.seeds, args.start, args.cap, args.targets)
    if args.what == "study":
        study(args.groups, args.ref, args.planned)
    if args.what == "rowcost":
        row_cost(args.groups)


if __name__ == "__main__":
    main()
