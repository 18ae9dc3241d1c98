"""Progress on stderr: a bar with ETA when stderr is a terminal, a few plain lines otherwise."""
from __future__ import annotations

import sys
import time

import click

from onnxprune.progress import ProgressEvent

LABELS = {"means": "calibration means", "plan": "planning (timing the first evaluations)",
          "score": "scoring", "rewrite": "rewriting",
          "refit": "refitting the layers after pruned channels",
          "deploy": "choosing what ships on held-out samples", "verify": "verifying and timing"}


class ProgressPrinter:
    """Prints the library's progress events (onnxprune.progress) on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.stage = None
        self.start = time.perf_counter()
        self.last = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        if self.quiet:
            return
        if event["stage"] == "plan" and "plan" in event:
            from .render import plan_text
            click.echo("\n".join(f"[onnxprune] {line}" for line in
                                  plan_text(event["plan"]).splitlines()), err=True)
            return
        stage, done, total = event["stage"], event.get("done", 0), event.get("total", 0)
        if stage != self.stage:
            if self.tty and self.stage is not None:
                click.echo("", err=True)
            self.stage, self.start = stage, time.perf_counter()
            step = f" (round {event['step']}/{event['steps']})" if event.get("steps", 1) > 1 else ""
            metric = f" with {event['metric']}" if "metric" in event else ""
            if not self.tty or not total or done == 0:
                click.echo(f"[onnxprune] {LABELS.get(stage, stage)}{metric}{step}"
                           + (f": {total} groups" if stage == "score" and total else ""), err=True)
        if not total or (not done and "evaluations" not in event):
            return
        now = time.perf_counter()
        elapsed = now - self.start
        eta = eta_seconds(event, elapsed)
        text = (f"  {LABELS.get(stage, stage)} {done}/{total} {event.get('unit', 'groups')}"
                + (f", {event['evaluations']}" + (f"/{event['evaluations_planned']}" if
                   "evaluations_planned" in event else "") + " evaluations" if "evaluations" in event else "")
                + f", {elapsed:.0f}s elapsed, ETA {eta:.0f}s")
        if self.tty:
            width = 24
            planned = event.get("evaluations_planned")
            share = min(1.0, event["evaluations"] / planned) if planned and "evaluations" in event \
                else done / total
            bar = "#" * int(width * share)
            click.echo(f"\r[{bar:<{width}}] {text}", err=True, nl=False)
            if done == total:
                click.echo("", err=True)
        elif now - self.last > 10 or done == total:
            self.last = now
            click.echo(f"[onnxprune]{text}", err=True)


def eta_seconds(event: ProgressEvent, elapsed: float) -> float:
    """Seconds left. With the plan's figures (score events): the plan's seconds still to go,
    scaled by how the run compares with the plan so far (actual / planned seconds of the
    evaluations done), so a slow machine or a slow group updates the ETA as it shows; else
    the time per item so far times the items left."""
    planned, done_s = event.get("expected_s"), event.get("expected_done_s")
    if planned is not None and done_s is not None and planned > 0:
        pace = elapsed / done_s if done_s > 0 else 1.0
        return max(0.0, planned - done_s) * pace
    done, total = event.get("done", 0), event.get("total", 0)
    return elapsed / done * (total - done) if done else 0.0
