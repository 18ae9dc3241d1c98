"""Progress on stderr: a bar with ETA when stderr is a terminal, a few plain lines otherwise."""
from __future__ import annotations

import sys
import time

import click

from onnxprune.progress import ProgressEvent

LABELS = {"means": "calibration means", "score": "scoring", "rewrite": "rewriting",
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
        if not total or not done:
            return
        now = time.perf_counter()
        elapsed = now - self.start
        eta = elapsed / done * (total - done)
        text = (f"  {LABELS.get(stage, stage)} {done}/{total} {event.get('unit', 'groups')}"
                + (f", {event['evaluations']} evaluations" if "evaluations" in event else "")
                + f", {elapsed:.0f}s elapsed, ETA {eta:.0f}s")
        if self.tty:
            width = 24
            bar = "#" * int(width * done / total)
            click.echo(f"\r[{bar:<{width}}] {text}", err=True, nl=False)
            if done == total:
                click.echo("", err=True)
        elif now - self.last > 10 or done == total:
            self.last = now
            click.echo(f"[onnxprune]{text}", err=True)
