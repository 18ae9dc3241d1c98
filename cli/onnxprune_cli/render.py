"""Plain-text tables for the terminal."""
from __future__ import annotations

from onnxprune.report import Report


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def analysis_table(model: str, rows: list[dict]) -> str:
    body = [[str(r["id"]), str(r["units"]), str(r["unit_size"]), f"{100 * r['param_share']:.1f}%",
             f"{100 * r['mac_share']:.1f}%", "yes" if r["prunable"] else f"no: {r['reason']}"]
            for r in rows]
    prunable = sum(r["prunable"] for r in rows)
    head = f"{model}: {len(rows)} channel groups, {prunable} prunable"
    return head + "\n\n" + _table(["group", "units", "unit size", "params", "MACs", "prunable"], body)


def _fmt(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


_DEPLOY_NAMES = {"plain": "plain removal", "compensated": "mean compensation",
                 "refit": "least-squares refit",
                 "original": "the original model, unchanged (no unit was removed)"}


def _scores_line(report: dict) -> str | None:
    """Say when the scores are a truncated game's, not the full game's Shapley values."""
    games = [g["game"] for g in report.get("groups", []) if g.get("game")]
    if not games:
        return None
    from onnxprune.scoring.estimators.truncated import DEPTH_MARGIN
    return (f"scores: shapley/truncated in {len(games)} group(s): a truncated game (per-sample "
            f"removal orders from the full group, {DEPTH_MARGIN:g} of the way to the expected "
            "cut), not the Shapley values of the full game")


def _deploy_line(deploy) -> str | None:
    """Which variant shipped and, when a guard chose, the figures it chose by."""
    last = deploy[-1] if isinstance(deploy, list) and deploy else deploy
    if not last:
        return None
    line = f"shipped: {_DEPLOY_NAMES.get(last['chosen'], last['chosen'])}"
    if "allocation" in last:
        line += f", {last['allocation']} allocation"
    figures = [f"{_DEPLOY_NAMES.get(k, k)} {_value(v)}" for k, v in last.get("values", {}).items()]
    if len(figures) > 1 or last.get("allocation_values"):
        figures += [f"{k} allocation {_value(v)}" for k, v in last.get("allocation_values", {}).items()]
        line += f" (best {last['value_function']} on {last['guard_samples']}: {', '.join(figures)})"
    return line


def _allocation_line(deploy) -> str | None:
    """Why this allocation shipped: the paired difference on the guard samples and the rule."""
    last = deploy[-1] if isinstance(deploy, list) and deploy else deploy
    rule = (last or {}).get("allocation_rule")
    if not rule:
        return None
    diff, se, n = rule["difference"], rule["stderr"], rule["samples"]
    if diff is None:
        return f"allocation: {rule['shipped']} shipped: one allocation's value is not finite"
    ahead = (f"{rule['challenger']} - {rule['preferred']} = {diff:+.4g} per sample on average "
             f"(standard error {_value(se)}, {n} paired samples)")
    if rule["rule"] == "mean":
        noise = ", within 2 standard errors: noise" if se is not None and abs(diff) <= 2 * se else ""
        return f"allocation: {rule['shipped']} shipped, the higher mean: {ahead}{noise}"
    if rule["shipped"] == rule["challenger"]:
        return f"allocation: {rule['shipped']} shipped: {ahead}, more than {rule['z']:g} standard errors"
    return (f"allocation: {rule['preferred']} kept: {ahead}, not more than {rule['z']:g} "
            "standard errors (noise)")


def _removed_line(report: Report) -> str | None:
    """The fractions of the prunable cost actually removed, whatever the budget's target."""
    removed = report.get("removed")
    if not removed:
        return None
    return ("removed (fraction of the prunable cost): " +
            ", ".join(f"{name} {removed[key]:.3f}" for key, name in
                      (("units", "units"), ("params", "params"), ("macs", "MACs"))))


def prune_table(report: Report) -> str:
    b, a = report["before"], report["after"]
    rows = []
    for key, label in (("params", "parameters"), ("macs", "MACs / sample"), ("file_bytes", "file size")):
        if key in b and key in a:
            ratio = a[key] / b[key] if b[key] else 1.0
            rows.append([label, _fmt(b[key]), _fmt(a[key]), f"{ratio:.3f}"])
    ver = report.get("verification") or {}
    lat = ver.get("latency")
    if lat:
        bl, al = lat["before"], lat["after"]
        rows.append([f"latency (batch {lat['batch']}, ms)",
                     f"{bl['median_ms']:.2f} [{bl['q1_ms']:.2f}-{bl['q3_ms']:.2f}]",
                     f"{al['median_ms']:.2f} [{al['q1_ms']:.2f}-{al['q3_ms']:.2f}]",
                     f"{al['median_ms'] / bl['median_ms']:.3f}"])
    if "accuracy_before" in ver:
        rows.append(["accuracy (held-out labels)" if "held-out" in ver["note"] else "accuracy",
                     f"{100 * ver['accuracy_before']:.1f}%", f"{100 * ver['accuracy_after']:.1f}%", ""])
    opts = report.get("options", {})
    failed = ver.get("verdict") == "failed"
    allocation = "uniform" if opts.get("uniform") else "global"
    head = (("FAILED (below --min-fidelity): " if failed else "")
            + f"pruned {report['model']} -> {report.get('output')}  (metric {report['metric']}, "
              f"ratio {report['ratio']} of {opts.get('target', 'units')}, {allocation}, "
              f"seed {report['seed']})")
    out = [head, "", _table(["", "before", "after", "after/before"], rows)]
    if line := _removed_line(report):
        out.append(line)
    if line := _deploy_line(report.get("deploy")):
        out.append(line)
    if line := _allocation_line(report.get("deploy")):
        out.append(line)
    if line := _scores_line(report):
        out.append(line)
    if lat:
        out.append(f"latency: median [quartiles] of {bl['runs']} interleaved runs each; "
                   f"speed-up x{lat['speedup']['median']:.2f}")
    out += _cache_lines(report.get("cache_interface"))
    for warning in ver.get("warnings", []):
        out.append(f"warning: {warning}")
    for hint in report.get("hints", []):
        out.append(f"hint: {hint}")
    if ver.get("outputs"):
        out += ["", f"fidelity: {ver['note']}", _fidelity_table(ver["outputs"])]
        if "verdict" in ver:
            out.append(verdict_line(ver))
    if ver and ver.get("skipped_outputs"):
        out.append(f"not scored or compared (not tensors): {', '.join(ver['skipped_outputs'])}")
    out += _group_lines(report["groups"])
    return "\n".join(out)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _value(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"  # None: a candidate without a finite value


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _fidelity_table(outputs: list[dict]) -> str:
    """Per output: its kind, the kind's agreement figure (what the gate reads), and the raw
    differences."""
    return _table(["output", "kind", "agreement", "measure", "max |diff|", "cosine"],
                  [[f["name"], _kind(f), _pct(f.get("agreement")), f.get("measure", "-")
                    + (f" ({f['note']})" if f.get("note") else ""),
                    _num(f["max_abs_diff"], ".4g"), _num(f["cosine"], ".4f")] for f in outputs])


def _kind(f: dict) -> str:
    """The output's kind, and who set it where the user did (--output-kind)."""
    kind = f.get("kind", "-")
    return f"{kind} (set by --output-kind)" if f.get("kind_from") == "--output-kind" else kind


def verdict_line(ver: dict) -> str:
    """The quality gate, in one line: verdict, worst output, threshold, sample count."""
    word = "passed" if ver["verdict"] == "passed" else "FAILED"
    cmp = ">=" if ver["verdict"] == "passed" else "<"
    return (f"verdict: {word}: worst output '{ver['worst_output']}' {ver['measure']} "
            f"{_pct(ver['fidelity'])} {cmp} --min-fidelity {_pct(ver['min_fidelity'])}, "
            f"on {ver['samples']} samples" + (f" ({ver['reason']})" if ver.get("reason") else ""))


def _group_lines(groups: list[dict]) -> list[str]:
    """Groups that lost units; prunable groups that kept every unit; groups left whole."""
    out = []
    pruned = [g for g in groups if g["prunable"] and g["kept"] < g["units"]]
    whole = [g for g in groups if g["prunable"] and g["kept"] >= g["units"]]
    if pruned:
        out += ["", f"{len(pruned)} groups pruned (units kept/total): " +
                ", ".join(f"g{g['id']} {g['kept']}/{g['units']}" for g in pruned[:12]) +
                (" ..." if len(pruned) > 12 else "")]
    elif groups:
        out += ["", "no unit was removed"]
    if whole:
        out.append(f"{len(whole)} prunable groups kept every unit (ratio or rounding): " +
                   ", ".join(f"g{g['id']} {g['units']}" for g in whole[:12]) +
                   (" ..." if len(whole) > 12 else ""))
    skipped = sum(not g["prunable"] for g in groups)
    if skipped:
        out.append(f"{skipped} groups left whole (see 'onnxprune analyze' for reasons)")
    return out


def duration(seconds: float) -> str:
    """`0.8 s`, `42 s`, `~4.2 min`, `~1.5 h`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"~{seconds / 60:.1f} min" if seconds < 7200 else f"~{seconds / 3600:.1f} h"


def plan_text(plan: dict) -> str:
    """The plan (onnxprune.scoring.plan.ScorePlan.to_json) as a few lines."""
    rows = [[f"g{g['group']}", str(g["units"]), g["estimator"], str(g["evaluations"]),
             f"{1e3 * g['seconds_per_evaluation']:.2f}" + ("" if g["measured"] else "*"),
             duration(g["seconds"])] for g in plan["groups"]]
    lines = [f"plan: {len(plan['groups'])} groups to score with {plan['metric']}, "
             f"{sum(g['units'] for g in plan['groups'])} units, {plan['evaluations']} evaluations"
             + (f" ({1e3 * plan['seconds_per_evaluation']:.2f} ms each)" if plan["groups"] else "")]
    if rows:
        lines.append(_table(["group", "units", "estimator", "evaluations", "ms/eval", "time"], rows))
        if not all(g["measured"] for g in plan["groups"]):
            lines.append("(* interpolated from the measured groups by suffix MACs)")
    fwd = plan.get("forward_equivalents")
    lines.append(f"expected wall time {duration(plan['total_s'])} (scoring "
                 f"{duration(plan['expected_s'].get('scoring', 0.0))})"
                 + (f", {fwd:.0f} forward passes over the calibration set" if fwd else ""))
    if plan.get("time_budget_s") is not None:
        lines.append(f"time budget {duration(plan['time_budget_s'])}: scoring planned for "
                     f"{duration(max(0.0, plan['scoring_budget_s'] or 0.0))}")
    lines += [f"warning: {w}" for w in plan.get("warnings", [])]
    return "\n".join(lines)


def _cache_lines(cache: dict | None) -> list[str]:
    """--prune-cache: the model's key-value cache interface changed; per layer what to feed."""
    if not cache:
        return []
    out = ["cache interface changed (--prune-cache): feed past inputs with the kept heads only, "
           "e.g. past[:, kept]"]
    for layer in cache["layers"]:
        names = ", ".join(layer["inputs"] + layer["outputs"])
        out.append(f"  {names}: heads {layer['heads']} -> {layer['kept_heads']} on axis "
                   f"{layer['axis']}, kept {layer['kept']}")
    return out
