"""bench/shapley_games.py (issue 7 investigation): its games are wired to the model it
scores, and its `default` is exactly what `onnxprune.prune` ships."""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import low_data as L  # noqa: E402
import shapley_games as SG  # noqa: E402
import onnxprune  # noqa: E402
from onnxprune.api import make_engine  # noqa: E402


def _setup(seed=0):
    m = L.Model("mlp_digits")
    cal = m.calib(128, seed, False)
    scoring, _ = cal.split(L.HOLDOUT, seed)
    return m, cal, scoring


def test_imputed_game_full_and_single_removal():
    m, _, scoring = _setup()
    game = SG.ImputedGame(m.am, scoring, make_engine(m.am, scoring).value_fn)
    g = m.am.analysis.prunable[0]
    full = np.ones((1, g.units), bool)
    assert np.abs(game.values(g.id, full)).max() < 1e-6  # nothing removed: KL to itself
    one = full.copy()
    one[0, 0] = False
    co = np.concatenate([full, one, np.zeros((1, g.units), bool)])
    v = game.values(g.id, co).mean(axis=1)
    assert v[1] <= 1e-9 and v[2] < v[1]  # removing more loses more (negative KL)


def test_truncated_scores_cover_every_unit():
    m, _, scoring = _setup()
    engine = make_engine(m.am, scoring)
    g = m.am.analysis.prunable[1]
    s = SG.truncated_scores(engine, g.id, 0.5, seed=0)
    assert s.shape == (g.units,) and np.isfinite(s).all() and np.ptp(s) > 0


def test_default_game_is_what_prune_ships(tmp_path):
    out = tmp_path / "g.md"
    assert SG.main(["--models", "mlp_digits", "--seeds", "0", "--ratios", "0.5", "--games",
                    "default", "l1", "--swap-model", "none", "--out-md", str(out),
                    "--json", str(tmp_path / "g.json")]) == 0
    import json
    recs = {r["game"]: r for r in json.loads((tmp_path / "g.json").read_text())}
    m, cal, _ = _setup()
    res = onnxprune.prune(m.am, cal, ratio=0.5, seed=0, latency=False)
    assert recs["default"]["acc"] == L.accuracy(res.model, m.test)
    assert "| default |" in out.read_text() and "| l1 |" in out.read_text()
