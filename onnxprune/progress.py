"""Progress events: the one type every stage reports with and every front end reads."""
from __future__ import annotations

from typing import Callable, TypedDict


class _Position(TypedDict):
    stage: str  # means, plan, score, rewrite, refit, deploy, verify
    done: int  # 0 announces the stage
    total: int  # 0 when the stage has no count


class ProgressEvent(_Position, total=False):
    metric: str  # score: the metric's name
    step: int  # score: the round (1-based) ...
    steps: int  # ... of this many
    evaluations: int  # score: coalition evaluations so far
    evaluations_planned: int  # score: evaluations the plan gives all groups
    expected_s: float  # score: the plan's seconds for all groups
    expected_done_s: float  # score: the plan's seconds for the evaluations done so far
    plan: dict  # plan: ScorePlan.to_json, emitted before scoring
    elapsed: float  # score: seconds since scoring began
    workers: int  # score: Ray workers alive (distributed scoring only)
    unit: str  # what `done` counts when not groups ("layers")


ProgressFn = Callable[[ProgressEvent], None]


def emit(progress: ProgressFn | None, stage: str, done: int = 0, total: int = 0,
         **info: object) -> None:
    """Report one event when someone listens."""
    if progress is not None:
        progress({"stage": stage, "done": done, "total": total, **info})  # type: ignore[typeddict-item]
