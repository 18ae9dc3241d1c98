"""Scoring on Ray workers (issue 18): the same scores as in process, work of a dead worker
redone, a clean user error without Ray, and no Ray import on the default path.

Scores are compared exactly: a group's estimator runs whole on one worker with the seed
`seed + gid`, so no sum crosses workers (scoring/distributed.py, Determinism)."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from onnxprune import OnnxPruneError, ScoreOptions
from onnxprune.api import analyze_model, as_calibration, score_model
from onnxprune.scoring.run import score_context

MODEL = ROOT / "models/zoo/lenet5.onnx"  # four prunable groups of 8 to 64 units
HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed (extra [distributed])")


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module (starting one takes seconds)."""
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def lenet():
    am = analyze_model(MODEL)
    rng = np.random.default_rng(0)
    data = as_calibration({"input": rng.standard_normal((8, 1, 28, 28)).astype(np.float32)}, am.proto)
    return am, data


def _values(scores):
    return {g: s.values for g, s in scores.items()}


@needs_ray
def test_same_scores_with_0_1_and_2_workers(ray_local, lenet):
    am, data = lenet
    local = _values(score_model(am, data, seed=5))
    for workers in (1, 2):
        events = []
        got = score_model(am, data, seed=5, workers=workers, progress=events.append)
        assert list(got) == list(local)  # gathered in group order
        for gid, values in local.items():
            np.testing.assert_array_equal(got[gid].values, values)
        assert [e["done"] for e in events] == [1, 2, 3, 4]
        assert events[-1]["evaluations"] == sum(s.evaluations for s in got.values())
        assert events[-1]["workers"] == workers


@needs_ray
def test_prune_with_workers_keeps_the_same_units(ray_local, lenet):
    """The main command's path (prune) through Ray: the units kept are those kept locally."""
    import onnxprune
    am, data = lenet
    local = onnxprune.prune(am, data.inputs, ratio=0.5, seed=5, latency=False, refit=False)
    spread = onnxprune.prune(am, data.inputs, ratio=0.5, seed=5, latency=False, refit=False,
                             workers=2)
    assert {g: list(k) for g, k in spread.keep.items()} == {g: list(k) for g, k in local.keep.items()}


@needs_ray
@pytest.mark.parametrize("workers", [1, 2])
def test_dead_worker_has_its_groups_redone(ray_local, lenet, workers):
    """Worker 0 exits at the start of its second group: the group (and any other it held) is
    scored elsewhere, by the other worker or by a fresh one when none is left."""
    from onnxprune.scoring.distributed import RunStats, score_distributed
    am, data = lenet
    opts = ScoreOptions(seed=5, workers=workers).validate()
    gids = [g.id for g in am.analysis.prunable]
    stats = RunStats()
    got = score_distributed(am, data, opts, gids, context=score_context, stats=stats,
                            _die_after={0: 1})
    assert stats.deaths == 1
    assert sorted(t["gid"] for t in stats.tasks) == sorted(gids)
    local = score_model(am, data, seed=5)
    for gid in gids:
        np.testing.assert_array_equal(got[gid].values, local[gid].values)


@needs_ray
def test_interrupt_stops_the_workers(ray_local, lenet):
    """A Ctrl-C (here raised from the progress callback) kills the actors and propagates."""
    import time
    am, data = lenet

    def interrupt(event):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_model(am, data, workers=2, progress=interrupt)
    deadline = time.monotonic() + 20  # killed actors give their CPUs back
    while ray_local.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_local.available_resources().get("CPU", 0) == 2


def test_default_path_never_imports_ray():
    code = ("import sys, numpy as np, onnxprune, onnxprune.api, onnxprune_cli.main\n"
            "from onnxprune.api import analyze_model, as_calibration, score_model\n"
            f"am = analyze_model({str(MODEL)!r})\n"
            "x = np.zeros((2, 1, 28, 28), np.float32)\n"
            "score_model(am, as_calibration({'input': x}, am.proto))\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_workers_without_ray_is_a_user_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(OnnxPruneError, match=r"pip install 'onnxprune\[distributed\]'"):
        ScoreOptions(workers=2).validate()
    with pytest.raises(OnnxPruneError, match="--workers must be 0"):
        ScoreOptions(workers=-1).validate()
    ScoreOptions().validate()  # the default needs no Ray


def test_cli_workers_without_ray_is_one_line(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from onnxprune_cli.main import main
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    result = CliRunner().invoke(main, ["score", str(ROOT / "models/digits_cnn.onnx"), "--calib",
                                       str(ROOT / "models/digits_calib.npz"), "-o",
                                       str(tmp_path / "s.json"), "--workers", "2"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "error: --workers/--ray-address need Ray: pip install 'onnxprune[distributed]'"]
    assert not (tmp_path / "s.json").exists()


def test_unreachable_address_is_a_quick_user_error():
    """Ray itself retries a dead address for minutes; a HOST:PORT that refuses is one line."""
    from onnxprune.scoring.distributed import _check_reachable
    with pytest.raises(OnnxPruneError, match="--ray-address 127.0.0.1:1: nothing answers"):
        _check_reachable("127.0.0.1:1")
    _check_reachable("auto")  # left to Ray


@needs_ray
def test_workers_score_the_truncated_game_at_the_given_removal(ray_local, lenet):
    """The truncated depth follows `removal` (prune's params-budget share), not the ratio of
    units, on the workers as in process."""
    am, data = lenet
    local = score_model(am, data, seed=5, ratio=0.5, removal=0.2, estimator="truncated")
    other = score_model(am, data, seed=5, ratio=0.5, estimator="truncated")
    got = score_model(am, data, seed=5, ratio=0.5, removal=0.2, estimator="truncated", workers=1)
    assert any(local[g].extra["game"] != other[g].extra["game"] for g in local)
    for gid, scores in local.items():
        assert got[gid].extra["game"] == scores.extra["game"]
        np.testing.assert_array_equal(got[gid].values, scores.values)
