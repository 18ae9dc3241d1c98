"""Scoring spread over Ray workers (`--workers N`, `--ray-address ADDR`; extra `[distributed]`).

The unit of work is one group: under the per-group game a group's scores depend only on
the model, the calibration data, the options and the seed `seed + gid` (metrics.py), so
a group scored on any worker gives the same numbers as on the local path. Each worker is
a Ray actor that analyses the model and builds one `Engine` (one ONNX Runtime session,
one GPU where it asked for one: Ray sets CUDA_VISIBLE_DEVICES per actor, so device 0 in
the actor is its own GPU) and keeps the cached prefix activations of the group it scores.
The model's bytes and the calibration arrays are put in the object store once; the
actors read them from there (zero-copy on the same node, one transfer per other node).

The driver hands groups out largest first, two in flight per worker (so a worker never
waits on a round trip), gathers them in group order, and emits one `score` progress event
per finished group with evaluations summed over all workers. A worker that dies
(`RayActorError`) is dropped and its groups go to the others (a fresh worker is started
when none is left, at most `workers` times). A Ctrl-C kills the actors and re-raises.

Determinism: the same seed gives the same scores with 0 (local), 1, 2 or 4 workers. A
group's estimator runs whole on one worker, so no sum crosses workers; what can differ is
ONNX Runtime's batching inside a worker (K coalitions per run is tuned from timings, and
the thread count is per worker), which on the CPU provider changes no summation order in
our runs (the tests compare exactly); a backend whose kernels reduce differently by batch
size could differ in the last bits.

Not done: splitting one group's coalition batches across workers (the speed-up is
bounded by the number of groups and by the largest group), and models with external data
(their bytes cannot travel through the object store as one protobuf).

Ray is imported here only, and this module only when workers or an address are given.
"""
from __future__ import annotations

import logging
import os
import pickle
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..calib import Calibration
from ..errors import OnnxPruneError
from ..model import AnalyzedModel
from ..progress import ProgressFn, emit
from .shapley import GroupScores

INSTALL_HINT = "pip install 'onnxprune[distributed]'"
_IN_FLIGHT = 2  # groups queued per worker: the next one is there when one finishes
ContextFn = Callable[..., Any]  # run.score_context: (am, calib, opts, means, ratio, threads=)

__all__ = ["RunStats", "ScoringActor", "score_distributed"]


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise OnnxPruneError(f"--workers/--ray-address need Ray: {INSTALL_HINT}") from None
    return ray


class ScoringActor:
    """One worker: the analysed model and one engine, built once by `setup`."""

    def __init__(self, index: int, die_after: int | None = None) -> None:
        self.index, self.die_after, self.done = index, die_after, 0
        self.ctx: Any = None
        self.metric = ""

    def setup(self, model: bytes, calib: Calibration, opts: Any, means: Any, ratio: float | None,
              threads: int, context: ContextFn, removal: float | None = None,
              round_to: int = 1, prune_cache: bool = False) -> list[tuple[int, int]]:
        """Build the engine with `context` (the local path's builder, passed in so that this
        module does not import the API facade); return (group id, units) of the prunable
        groups, which the driver checks against its own analysis. `removal` (the truncated
        estimator's depth share), `round_to` and `prune_cache` as on the local path."""
        import dataclasses

        import onnx

        from ..model import analyze_model
        am = analyze_model(onnx.load_from_string(model), prune_cache=prune_cache)
        ctx = context(am, calib, opts, means, ratio, round_to, threads=threads)
        self.ctx = dataclasses.replace(ctx, removal=removal)
        self.metric = opts.metric
        return [(g.id, g.units) for g in am.analysis.prunable]

    def score(self, gid: int) -> tuple[GroupScores, dict[str, Any]]:
        from .metrics import METRICS
        if self.die_after is not None and self.done >= self.die_after:
            os._exit(1)  # the tests' fault: this worker dies holding work
        t0 = time.perf_counter()
        before = self.ctx.engine.evaluations
        scores = METRICS[self.metric].score(self.ctx, gid)
        info = self.ctx.engine.info()
        scores.extra["engine"] = {k: info.get(k) for k in ("device", "path", "k_per_run")}
        self.done += 1
        return scores, {"seconds": time.perf_counter() - t0, "worker": self.index,
                        "pid": os.getpid(), "evaluations": self.ctx.engine.evaluations - before}


@dataclass
class RunStats:
    """What a distributed run measured (bench/distributed.py reads it)."""

    workers: int = 0
    setup_s: float = 0.0  # starting the actors and building their engines
    wall_s: float = 0.0  # from the first group handed out to the last gathered
    tasks: list[dict[str, Any]] = field(default_factory=list)  # per group: seconds, bytes, ...
    shared_bytes: int = 0  # model + calibration + means, put in the object store once
    deaths: int = 0  # workers lost (their groups ran elsewhere)


def score_distributed(am: AnalyzedModel, calib: Calibration, opts: Any, gids: Sequence[int], *,
                      context: ContextFn, means: Mapping[str, np.ndarray] | None = None,
                      ratio: float | None = None, removal: float | None = None,
                      round_to: int = 1, progress: ProgressFn | None = None, stats: RunStats | None = None,
                      _die_after: Mapping[int, int] | None = None) -> dict[int, GroupScores]:
    """Score `gids` on Ray workers; the same result as a local scoring run's loop (run.py), whose
    `context` builder (run.score_context) each worker calls once. `ratio` (None: the cut
    is not known), `removal` and `round_to` as for api.score_model (its defaults resolved).
    `_die_after` (tests only): worker index -> groups it scores before it exits."""
    ray = import_ray()
    stats = stats if stats is not None else RunStats()
    started = _connect(ray, opts.ray_address)
    pool = None
    try:
        pool = _Pool(ray, am, calib, opts, (means, ratio, context, removal, round_to), dict(_die_after or {}), stats)
        pool.start(_worker_count(ray, opts))
        return pool.run(list(gids), progress)
    finally:  # also on Ctrl-C: no actor keeps working for a run that is over
        if pool is not None:
            pool.kill()
        if started:
            ray.shutdown()


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at `address`, or start a local one; True when we started it."""
    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING,  # no "started a local instance" under -q
                 **({} if address else {"num_cpus": os.cpu_count() or 1}))
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"--ray-address {address}: cannot connect to Ray" if address else "cannot start Ray"
        raise OnnxPruneError(f"{where} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return True


def _check_reachable(address: str) -> None:
    """A HOST:PORT that does not answer is a one-line error now, not minutes of Ray retrying
    (measured: over 3 minutes); 'auto' and ray:// addresses are left to Ray."""
    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise OnnxPruneError(f"--ray-address {address}: nothing answers there ({exc})") from None


def _worker_count(ray: Any, opts: Any) -> int:
    """`workers`, or with only an address one per GPU of the cluster (else one per CPU)."""
    if opts.workers:
        return int(opts.workers)
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0)) if opts.device != "cpu" else 0
    return max(1, gpus or int(res.get("CPU", 1)))


def _resources(ray: Any, device: str, workers: int) -> tuple[dict[str, float], int]:
    """Per actor: Ray resources (a GPU each on CUDA; the CPUs shared out) and ORT threads."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    share = cpus / workers if workers > cpus else float(int(cpus // workers))
    out: dict[str, float] = {"num_cpus": share}
    if device == "cuda" and gpus < 1:
        raise OnnxPruneError("--device cuda with --workers: the Ray cluster has no GPU")
    if device != "cpu" and gpus >= 1:
        out["num_gpus"] = 1.0 if workers <= gpus else gpus / workers
    return out, max(1, int(share))


def _model_bytes(am: AnalyzedModel) -> bytes:
    from onnx.external_data_helper import uses_external_data
    from onnx.external_data_helper import _get_all_tensors
    if any(uses_external_data(t) for t in _get_all_tensors(am.proto)) or am.proto.ByteSize() > 2**31 - 1:
        raise OnnxPruneError("--workers: models with external data (over 2 GB) cannot be scored "
                             "on Ray yet; score without --workers")
    return am.proto.SerializeToString()


class _Pool:
    """The actors of one run and the bookkeeping of who holds which group."""

    def __init__(self, ray: Any, am: AnalyzedModel, calib: Calibration, opts: Any,
                 setup: tuple[Any, float | None, ContextFn, float | None, int], die_after: dict[int, int],
                 stats: RunStats) -> None:
        means, self.ratio, self.context, self.removal, self.round_to = setup
        self.ray, self.opts, self.die_after, self.stats = ray, opts, die_after, stats
        self.expected = [(g.id, g.units) for g in am.analysis.prunable]
        self.prune_cache = am.analysis.prune_cache  # the workers analyse the model alike
        model = _model_bytes(am)
        stats.shared_bytes = (len(model) + _nbytes(calib.inputs) + _nbytes(means or {})
                              + (0 if calib.labels is None else calib.labels.nbytes))
        # once into the object store; every actor's setup reads these refs
        self.refs = (ray.put(model), ray.put(calib), ray.put(means))
        self.actors: dict[int, Any] = {}
        self.spawned = 0

    def start(self, workers: int) -> None:
        t0 = time.perf_counter()
        self.stats.workers = workers
        self.resources, self.threads = _resources(self.ray, self.opts.device, workers)
        self._check(self._get([self._spawn() for _ in range(workers)]))
        self.stats.setup_s = time.perf_counter() - t0

    def _spawn(self) -> Any:
        """A new actor (index = how many were started before it); its setup's ref."""
        index = self.spawned
        self.spawned += 1
        cls = self.ray.remote(ScoringActor).options(max_restarts=0, **self.resources)
        actor = cls.remote(index, self.die_after.get(index))
        self.actors[index] = actor
        model, calib, means = self.refs
        return actor.setup.remote(model, calib, self.opts, means, self.ratio, self.threads,
                                  self.context, self.removal, self.round_to, self.prune_cache)

    def _get(self, refs: list[Any]) -> list[Any]:
        """ray.get; a user error raised in a worker is raised here as itself."""
        try:
            out = self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, OnnxPruneError):
                raise OnnxPruneError(str(exc.cause)) from None
            raise
        return out

    def _check(self, setups: list[list[tuple[int, int]]]) -> None:
        """Group ids must mean the same groups on every worker as here."""
        for groups in setups:
            if [tuple(g) for g in groups] != self.expected:
                raise RuntimeError(f"a worker analysed the model into other groups: {groups}")

    def run(self, gids: list[int], progress: ProgressFn | None) -> dict[int, GroupScores]:
        units = dict(self.expected)
        queue = deque(sorted(gids, key=lambda g: (-units.get(g, 0), g)))  # largest first
        held: dict[Any, tuple[int, int, float]] = {}  # ref -> (worker, gid, handed out at)
        out: dict[int, GroupScores] = {}
        t0, evaluations = time.perf_counter(), 0
        while queue or held:
            self._hand_out(queue, held)
            done, _ = self.ray.wait(list(held), num_returns=1)
            worker, gid, sent = held.pop(done[0])
            result = self._result(done[0], worker, gid, queue)
            if result is None:
                continue
            out[gid] = result[0]
            evaluations += result[0].evaluations
            self.stats.tasks.append({**result[1], "gid": gid, "round_trip": time.perf_counter() - sent,
                                     "result_bytes": len(pickle.dumps(result[0]))})
            emit(progress, "score", len(out), len(gids), evaluations=evaluations,
                 elapsed=time.perf_counter() - t0, workers=len(self.actors))
        self.stats.wall_s = time.perf_counter() - t0
        return {g: out[g] for g in gids}

    def _hand_out(self, queue: deque, held: dict[Any, tuple[int, int, float]]) -> None:
        if queue and not self.actors:
            if self.spawned >= 2 * self.stats.workers:
                raise RuntimeError(f"{self.stats.deaths} Ray workers died; giving up")
            self._check(self._get([self._spawn()]))
        load = {w: 0 for w in self.actors}
        for worker, _, _ in held.values():
            load[worker] = load.get(worker, 0) + 1
        for worker in sorted(self.actors, key=lambda w: load[w]):
            while queue and load[worker] < _IN_FLIGHT:
                gid = queue.popleft()
                held[self.actors[worker].score.remote(gid)] = (worker, gid, time.perf_counter())
                load[worker] += 1

    def _result(self, ref: Any, worker: int, gid: int, queue: deque) -> tuple | None:
        """The task's (scores, info); None when its worker died (the group goes back first)."""
        try:
            return self._get([ref])[0]
        except self.ray.exceptions.RayActorError:
            queue.appendleft(gid)
            if self.actors.pop(worker, None) is not None:
                self.stats.deaths += 1
            return None

    def kill(self) -> None:
        for actor in self.actors.values():
            self.ray.kill(actor, no_restart=True)
        self.actors.clear()


def _nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    return sum(int(np.asarray(a).nbytes) for a in arrays.values())
