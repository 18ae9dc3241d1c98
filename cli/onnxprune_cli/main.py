"""`onnxprune MODEL --calib NPZ --ratio R` and `onnxprune analyze MODEL [--json]` (docs/design.md).

User mistakes (OnnxPruneError) print one line and exit 2; anything else is a bug and
keeps its traceback."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from onnxprune import OnnxPruneError, PruneOptions, ScoreOptions, __version__
from onnxprune.options import (AGGREGATES, DEVICES, ESTIMATOR_NAMES, METRIC_NAMES,
                               OUTPUT_KINDS, TARGETS, VALUE_NAMES)
from onnxprune.scoring.shapley import DEFAULT_ESTIMATOR, PLAIN_ESTIMATOR

from .progress import ProgressPrinter
from .render import analysis_table, plan_text, prune_table, verdict_line

EXIT_USER_ERROR = 2
EXIT_FAILED_GATE = 3  # the pruned model was written but fell below --min-fidelity
_DEFAULTS = PruneOptions()
PRUNE_CACHE_HELP = (
    "Also prune attention heads that reach a key-value cache (graph inputs such as "
    "past_key_values.*, outputs such as present.*, laid out [batch, heads, length, head_dim]). "
    "This changes the model's interface: those inputs and outputs get fewer heads on axis 1 "
    "(key and value of a layer alike), so caches built for the original no longer fit; the "
    "report lists per layer the old and new head counts and the kept heads' indices (slice an "
    "existing cache as past[:, kept]). Without it these heads stay whole.")
RATIO_MEANING = ("The fraction R of the model's prunable cost to remove (by default the "
                 "multiply-accumulates per sample of the Conv/Gemm/MatMul layers whose channels "
                 "can be removed), "
                 "placed where scoring says it costs least.")


class DefaultToPrune(click.Group):
    """`onnxprune MODEL ...` runs the prune command; known words run subcommands."""

    def parse_args(self, ctx, args):
        if not args:  # the bare command: its help, not a usage error
            click.echo(ctx.get_help())
            ctx.exit(0)
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["prune", *args]
        return super().parse_args(ctx, args)

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        """Usage errors (bad option value, missing option) become one `error:` line too."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("interrupted; nothing was written", err=True)
            sys.exit(130)
        except click.exceptions.ClickException as exc:
            fail(exc.format_message().splitlines()[0])
        sys.exit(code if isinstance(code, int) else 0)


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USER_ERROR)


def guarded(fn):
    """Turn user errors into one line on stderr and a non-zero exit."""
    def run(*args, **kwargs):
        from onnxprune.runtime import package_warning
        if (warning := package_warning()) is not None:
            click.echo(f"warning: {warning}", err=True)
        try:
            return fn(*args, **kwargs)
        except OnnxPruneError as exc:
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            sys.exit(130)
    run.__name__, run.__doc__ = fn.__name__, fn.__doc__
    return run


@click.group(cls=DefaultToPrune, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxprune")
def main() -> None:
    """Structured pruning for ONNX models.

    \b
      onnxprune MODEL --calib NPZ --ratio R [-o OUT] [--metric NAME] [--seed N] [--report JSON]
      onnxprune analyze MODEL [--json]

    \b
    Exit status: 0 success; 2 bad input (one line on stderr); 3 the pruned
    model was written but failed the quality gate (--min-fidelity).
    """


def scoring_options(fn):
    """Options shared by the prune and score commands."""
    for option in reversed([
        click.option("--metric", default="shapley", show_default=True,
                     type=click.Choice(METRIC_NAMES), help="Ranking metric."),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--estimator", default="auto", show_default=True,
                     type=click.Choice(ESTIMATOR_NAMES),
                     help=f"Shapley estimator (auto: {DEFAULT_ESTIMATOR} for every group when the "
                          f"cut is known; else exact for small groups, {PLAIN_ESTIMATOR}; "
                          "cutaware refines only the units near the cut)."),
        click.option("--budget", type=int, default=None,
                     help="Coalition evaluations per group (default: 10 x units)."),
        click.option("--value", default=None,
                     help=f"Value function: {', '.join(VALUE_NAMES)} "
                          "(default: by output shape and labels)."),
        click.option("--aggregate", default="mean", show_default=True,
                     type=click.Choice(AGGREGATES),
                     help="How per-sample Shapley values combine (Ancona et al.: mean+2std)."),
        click.option("--device", default="auto", show_default=True,
                     type=click.Choice(DEVICES)),
        click.option("--max-memory", "max_memory", type=float, default=None,
                     help="Memory bound for scoring, in MB."),
        click.option("--time-budget", "time_budget", type=float, default=None,
                     help="Minutes the run should take: the evaluations per group are planned "
                          "from their measured cost to fit (never above --budget). Default: a "
                          "run expected to take over 10 minutes is fitted to 10; 'inf': no cap."),
        click.option("--workers", default=0, show_default=True, type=int,
                     help="Score groups on N Ray workers (one GPU each with CUDA); "
                          "needs 'onnxprune[distributed]'. 0: in this process."),
        click.option("--ray-address", "ray_address", default=None,
                     help="Join this Ray cluster (default with --workers: a local one)."),
        click.option("--no-compensate", "no_compensate", is_flag=True,
                     help="Remove units outright (default: also try replacing them by their mean, kept "
                          "only when that helps on held-out samples)."),
        click.option("-q", "--quiet", is_flag=True, help="No progress on stderr."),
    ]):
        fn = option(fn)
    return fn


@main.command("prune")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", required=True, type=click.Path(dir_okay=False),
              help=".npz keyed by the model's input names (+ optional 'labels').")
@click.option("--ratio", required=True, type=float,
              help=f"{RATIO_MEANING} In [0, 1).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output path (default: MODEL_pruned.onnx beside the input).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write the full report as JSON here.")
@click.option("--scores", "scores_path", type=click.Path(dir_okay=False), default=None,
              help="Reuse scores written by 'onnxprune score' instead of scoring again.")
@click.option("--round-to", default="auto", show_default=True,
              help="Keep conv widths at multiples of N channels (conv groups narrower than N, "
              "Gemm/MatMul neurons and heads keep any width); 'auto': the multiple this machine's "
              "ONNX Runtime is fastest at (16 with AVX-512, 8 with AVX2 or CUDA); 1: any width.")
@click.option("--exclude", multiple=True, help="Leave groups whose tensors or nodes match this "
              "glob pattern alone (repeatable).")
@click.option("--uniform", is_flag=True,
              help="Remove the same fraction of units from every group (the earlier default) "
              "instead of ranking units across groups.")
@click.option("--global", "global_", is_flag=True, hidden=True,
              help="Global allocation (now the default; kept for scripts).")
@click.option("--target", default=_DEFAULTS.target, show_default=True, type=click.Choice(TARGETS),
              help="The cost --ratio is a fraction of: the prunable groups' Conv/Gemm/MatMul "
              "multiply-accumulates per sample (macs), their weights (params), or their units.")
@click.option("--min-keep", default=_DEFAULTS.min_keep, show_default=True, type=float,
              help="Every group keeps at least this fraction of its units (a number from 1 up: "
              "this many units).")
@click.option("--steps", default=1, show_default=True, type=int,
              help="Prune in K rounds, re-scoring in between.")
@click.option("--refit/--no-refit", default=True, show_default=True,
              help="Also try a least-squares refit of the layers that read pruned channels; "
              "it ships only if it beats the alternatives on held-out samples.")
@click.option("--no-latency", "no_latency", is_flag=True, help="Skip the latency measurement.")
@click.option("--min-fidelity", default=PruneOptions.min_fidelity, show_default=True, type=float,
              help="Quality gate: the worst output's agreement with the original on held-out "
              "samples (top-1 for class scores, ...; README, The quality gate). Below it the "
              "model is still written, reported FAILED, and the command exits 3. 0: no gate.")
@click.option("--output-kind", "output_kind", multiple=True, metavar="NAME=KIND",
              help="Judge output NAME as KIND in the quality gate (repeatable), where the kind "
              f"read from its producer and shape is wrong; KIND: {', '.join(OUTPUT_KINDS)}.")
@click.option("--prune-cache", "prune_cache", is_flag=True, help=PRUNE_CACHE_HELP)
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON report on stdout.")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="Print the plan (groups, evaluations, measured cost, expected time) and exit "
                   "without scoring or writing anything.")
@scoring_options
@guarded
def prune_cmd(model: str, calib: str, **params: Any) -> None:
    """Prune MODEL and write the smaller model."""
    import onnxprune
    output, report_path, scores_path = (params.pop(k) for k in ("output", "report_path", "scores_path"))
    as_json, quiet = params.pop("as_json"), params.pop("quiet")
    if params["global_"] and params["uniform"]:
        raise OnnxPruneError("--global and --uniform exclude each other")
    params.pop("global_")
    dry_run, force = params.pop("dry_run"), params.pop("force")
    options = PruneOptions.from_cli(params)
    if dry_run:
        plan = onnxprune.api.plan_prune(model, calib, options, progress=ProgressPrinter(True))
        click.echo(json.dumps(plan.to_json(), indent=1) if as_json else plan_text(plan.to_json()))
        return
    out = Path(output) if output else default_output(Path(model))
    check_output(Path(model), out)
    if out.exists() and not force:
        raise OnnxPruneError(f"{out} exists; pass --force to replace it (or choose -o)")
    if report_path:
        check_output(Path(model), Path(report_path), what="--report")
    scores = None
    if scores_path:
        scores, metric = read_scores(scores_path, model)
        options = _scores_metric(options, metric, scores_path)
    result = onnxprune.prune(model, calib, options, scores=scores,
                             progress=ProgressPrinter(quiet or as_json))
    from onnxprune.load import save_model
    save_model(result.model, out, on_commit=_finish_without_interrupts)
    result.report["output"] = str(out)
    result.report["after"]["file_bytes"] = out.stat().st_size + _data_size(out)
    result.report["before"]["file_bytes"] = _size_with_data(Path(model))
    result.report["command"] = " ".join(["onnxprune", *sys.argv[1:]])
    if report_path:
        _write_json(Path(report_path), result.report)
    for warning in result.report.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    click.echo(json.dumps(result.report, indent=1) if as_json else prune_table(result.report))
    ver = result.report.get("verification") or {}
    if ver.get("verdict") == "failed":
        click.echo(f"failed: {out} was written, but {verdict_line(ver)[len('verdict: FAILED: '):]}",
                   err=True)
        sys.exit(EXIT_FAILED_GATE)


def _scores_metric(options: PruneOptions, metric: str | None, path: str) -> PruneOptions:
    """The metric of reused scores is the file's: the report names it, and it decides whether
    selection normalizes the scores; an explicit --metric that contradicts it is a mistake."""
    if metric is None or metric == options.score.metric:
        return options
    if metric not in METRIC_NAMES:
        raise OnnxPruneError(f"--scores {path}: unknown metric '{metric}'")
    source = click.get_current_context().get_parameter_source("metric")
    if source is not click.core.ParameterSource.DEFAULT:
        raise OnnxPruneError(f"--metric {options.score.metric}, but --scores {path} holds "
                             f"{metric} scores")
    return options.updated(metric=metric)


@main.command("score")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the scores (JSON).")
@click.option("--ratio", default=None, type=float,
              help="The share of each group's units the scores are for: the truncated default "
                   "scores removal orders down to it, the cut-aware estimators refine units "
                   "near it (default: none, scores for any ratio, full game).")
@click.option("--prune-cache", "prune_cache", is_flag=True, help=PRUNE_CACHE_HELP)
@scoring_options
@guarded
def score_cmd(model: str, calib: str, **params: Any) -> None:
    """Score MODEL's units once; reuse with 'onnxprune MODEL --scores FILE' at any ratio."""
    from onnxprune.api import analyze_model, as_calibration, score_model, with_batch_twin
    from onnxprune.scoring.site_stats import site_means
    output, ratio = params.pop("output"), params.pop("ratio")
    compensate, quiet = not params.pop("no_compensate"), params.pop("quiet")
    prune_cache = params.pop("prune_cache")
    options = ScoreOptions.from_cli(params)
    check_output(Path(model), Path(output), what="-o")
    am = analyze_model(model, prune_cache=prune_cache)
    data = as_calibration(calib, am.proto)
    am = with_batch_twin(am, data)  # as prune does: the scores name the twin's groups
    if not am.analysis.prunable:
        raise OnnxPruneError("no prunable channel group in this model (see 'onnxprune analyze')")
    means = site_means(am.analysis, am.ident, data.inputs) if compensate else None
    scores = score_model(am, data, options, means=means, ratio=ratio,
                         progress=ProgressPrinter(quiet))
    doc = {"model": model, "metric": options.metric, "seed": options.seed,
           "compensate": compensate, "model_sha256": _sha256(Path(model)), "prune_cache": prune_cache,
           "groups": [s.to_json() for s in scores.values()]}
    _write_json(Path(output), doc)
    click.echo(f"wrote scores of {len(scores)} groups to {output}")


def read_scores(path: str, model: str) -> tuple[dict[int, list[float]], str | None]:
    """(scores per group, the metric that made them)."""
    try:
        doc = json.loads(Path(path).read_text())
        scores = {int(g["group"]): _reusable(g) for g in doc["groups"]}
        metric = doc.get("metric")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OnnxPruneError(f"--scores {path}: not a scores file from 'onnxprune score' ({exc})") from None
    if doc.get("model_sha256") not in (None, _sha256(Path(model))):
        raise OnnxPruneError(f"--scores {path} was computed for a different model")
    return scores, metric if isinstance(metric, str) else None


def _reusable(group: dict) -> Any:
    """A group's scores as prune() reuses them: with its loss curve where the file has one."""
    if not group.get("curve"):
        return group["scores"]
    import numpy as np
    from onnxprune.scoring.shapley import GroupScores
    return GroupScores(int(group["group"]), np.asarray(group["scores"], dtype=np.float64),
                       extra={"curve": group["curve"]})


def _sha256(path: Path) -> str:
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_size(out: Path) -> int:
    data = out.with_name(out.name + ".data")
    return data.stat().st_size if data.is_file() else 0


@main.command("analyze")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--prune-cache", "prune_cache", is_flag=True, help=PRUNE_CACHE_HELP)
@guarded
def analyze_cmd(model, as_json, prune_cache):
    """List MODEL's channel groups: units, unit size, cost share, prunable or why not."""
    from onnxprune.api import analyze_model, group_table, no_groups_reason
    from onnxprune.compiler.cost import dynamic_sizes
    am = analyze_model(model, prune_cache=prune_cache)
    rows, reason = group_table(am), no_groups_reason(am)
    dynamic = len(dynamic_sizes(am.analysis.graph)) if rows else 0
    note = (f"{dynamic} layer(s) have dims the export left dynamic (H, W, a sequence): their "
            "MACs count those as 1 here; prune measures them on the calibration data")
    if as_json:
        doc = {"model": model, "groups": rows, **({"reason": reason} if reason else {}),
               **({"note": note} if dynamic else {})}
        click.echo(json.dumps(doc, indent=1))
    else:
        click.echo(analysis_table(model, rows) if rows else f"{model}: {reason}")
        if dynamic:
            click.echo(note)


def default_output(model: Path) -> Path:
    return model.with_name(model.stem + "_pruned.onnx")


def check_output(model: Path, out: Path, what: str = "-o") -> None:
    """Never overwrite the input model (or its external data); the directory must be writable."""
    if out.exists() and model.exists() and os.path.samefile(out, model):
        raise OnnxPruneError(f"{what} {out} is the input model; choose another path")
    if out.resolve() == model.resolve():
        raise OnnxPruneError(f"{what} {out} is the input model; choose another path")
    protected = [model.parent / f for f in _external_files(model)] if model.exists() else []
    # the output's own sibling data file must not be the input or its data either
    for target in (out, out.with_name(out.name + ".data")):
        for p in [model, *protected]:
            if target.resolve() == p.resolve() or (target.exists() and p.exists()
                                                   and os.path.samefile(target, p)):
                raise OnnxPruneError(f"{what} {out} would overwrite the input model or its "
                                     "external data; choose another path")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise OnnxPruneError(f"{what}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OnnxPruneError(f"{what}: directory {parent} is not writable")


def _external_files(model: Path) -> set[str]:
    try:
        import onnx
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # unreadable input is reported by the loader with a proper message
        return set()
    from onnx.external_data_helper import _get_all_tensors
    return {e.value for t in _get_all_tensors(proto) for e in t.external_data if e.key == "location"}


def _size_with_data(model: Path) -> int:
    return model.stat().st_size + sum((model.parent / f).stat().st_size
                                      for f in _external_files(model) if (model.parent / f).is_file())


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        _finish_without_interrupts()
        os.replace(tmp, path)
    except BaseException:  # an interrupt or a full disk: no half-written file stays
        tmp.unlink(missing_ok=True)
        raise


def _finish_without_interrupts() -> None:
    """From the first rename of the output on, the command runs to its end (the renames, the
    report, the table): a Ctrl-C there would leave an output with exit 130 and a message
    saying nothing was written. Ignoring SIGINT is process-wide (ONNX Runtime's threads
    included), unlike blocking it. Only in the command itself (`run`), never in a program that
    calls `main` (tests), whose Ctrl-C must keep working."""
    if _AS_COMMAND:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


_AS_COMMAND = False


def run() -> None:
    """Console entry point. Until here a Ctrl-C exits quietly (see __init__); while a command
    works it raises KeyboardInterrupt, which the commands turn into cleanup and exit 130;
    once the command is over it is ignored, so that shutdown keeps the command's exit code."""
    global _AS_COMMAND
    _AS_COMMAND = True
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    run()
