"""bench/low_data.py --quick runs end to end and produces sane numbers (issue 7).

It checks the plumbing of the study (scores -> prune -> onnxruntime accuracy), not who wins.
"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_low_data_quick(tmp_path):
    out_json, out_md, img = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "img"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "low_data.py"), "--quick", "--out-json", str(out_json),
         "--out-md", str(out_md), "--img-dir", str(img)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    doc = json.loads(out_json.read_text())
    recs = doc["records"]
    expected = json.loads((ROOT / "models" / "trained" / "metrics.json").read_text())["models"]

    bases = [r for r in recs if r["kind"] == "base"]
    assert bases
    for b in bases:  # the unpruned model reproduces metrics.json
        assert abs(b["acc"] - expected[b["model"]]["test_accuracy_ort"]) < 1e-9
        assert b["coverage"] == 1.0

    prunes = [r for r in recs if r["kind"] == "prune"]
    metrics = {r["metric"] for r in prunes}
    assert {"shapley", "random", "l1", "loo"} <= metrics
    assert {r["compensate"] for r in prunes} == {True, False}
    # the three deployments of prune(): plain, guarded compensation, guarded refit (default)
    assert {r["deploy"] for r in prunes} == {"plain", "comp", "refit"}
    for r in prunes:
        assert (r["compensate"], r["refit"]) == {"plain": (False, False), "comp": (True, False),
                                                 "refit": (True, True)}[r["deploy"]]
        allowed = {"plain": {"plain"}, "comp": {"plain", "compensated"},
                   "refit": {"plain", "compensated", "refit"}}[r["deploy"]]
        assert r["chosen"] in allowed
        if r["deploy"] != "plain":  # the guard scored its candidates on held-out samples
            assert set(r["guard"]) == {"plain", "compensated"} | (
                {"refit"} if r["refit_layers"] else set())
    for r in prunes:
        assert 0.0 <= r["acc"] <= 1.0
        assert r["ratio"] == 0.5
        assert 0.3 < r["weight_removed"] < 0.9  # half the units of each group: about 60 %
        assert r["acc"] <= max(b["acc"] for b in bases) + 0.05

    scores = [r for r in recs if r["kind"] == "score"]
    shap = [r for r in scores if r["metric"] == "shapley"]
    assert shap and all(r["evaluations"] > 0 and r["seconds"] >= 0 for r in shap)

    for r in recs:
        if r["kind"] == "ablation":
            assert len(r["accs"]) == len(r["fractions"])
            assert all(0.0 <= a <= 1.0 for a in r["accs"]) and 0.0 <= r["auc"] <= 1.0
            # nothing removed = the unpruned model (on the same test samples)
            assert r["fractions"][0] == 0.0
            base = next(b for b in bases if b["model"] == r["model"])
            if r["test_samples"] == base["test_size"] and not r["compensate"]:
                assert abs(r["accs"][0] - base["acc"]) < 1e-9

    for r in recs:
        if r["kind"] == "score":  # prune()'s default holdout: a quarter guards, 3/4 scored
            assert r["scored"] == r["calib"] - round(0.25 * r["calib"])
    for r in recs:
        if r["kind"] in ("peer", "matched"):
            assert 0.0 <= r["acc"] <= 1.0 and 0.0 <= r["removed"] <= 1.0

    text = out_md.read_text()
    assert "Headline" in text and "mlp_digits" in text

    for r in prunes:  # per test sample correctness is stored and agrees with the accuracy
        base = next(b for b in bases if b["model"] == r["model"])
        sys.path.insert(0, str(ROOT / "bench"))
        from low_data import unpack
        hits = unpack(r["correct"], base["test_size"])
        assert hits.shape == (base["test_size"],) and abs(hits.mean() - r["acc"]) < 1e-12


def test_test_set_bootstrap():
    """The test-set interval is centred on the observed difference and shrinks to a point
    when the two models err on the same samples."""
    import numpy as np
    sys.path.insert(0, str(ROOT / "bench"))
    from low_data import Results, pack, test_bootstrap
    rng = np.random.default_rng(1)
    size = 400
    a = rng.random(size) < 0.97
    b = a.copy()
    b[np.nonzero(a)[0][:8]] = False  # the baseline misses 8 more samples: +0.02 for the default
    recs = [{"kind": "base", "model": "m", "acc": 0.97, "test_size": size}]
    for seed in (0, 1):
        for metric, hits in (("shapley", a), ("l1", b), ("l2", a)):
            recs.append({"kind": "prune", "phase": "main", "model": "m", "metric": metric,
                         "seed": seed, "calib": 128, "labels": False, "deploy": "refit",
                         "ratio": 0.5, "acc": float(hits.mean()), "correct": pack(hits)})
    R = Results({"meta": {"calib": 128}, "records": recs})
    lo, hi = test_bootstrap(R, "m", "l1", 0.5, [0, 1])
    assert 0 < lo < 0.02 < hi < 0.04
    assert test_bootstrap(R, "m", "l2", 0.5, [0, 1]) == (0.0, 0.0)
    assert test_bootstrap(R, "m", "l1", 0.5, [0, 5]) is None  # no records for seed 5
