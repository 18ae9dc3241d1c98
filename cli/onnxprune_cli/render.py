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
                 "refit": "least-squares refit"}


def _deploy_line(deploy) -> str | None:
    """Which variant shipped and, when a guard chose, the figures it chose by."""
    last = deploy[-1] if isinstance(deploy, list) and deploy else deploy
    if not last:
        return None
    line = f"shipped: {_DEPLOY_NAMES.get(last['chosen'], last['chosen'])}"
    if "allocation" in last:
        line += f", {last['allocation']} allocation"
    figures = [f"{_DEPLOY_NAMES.get(k, k)} {_num(v)}" for k, v in last.get("values", {}).items()]
    if len(figures) > 1 or last.get("allocation_values"):
        figures += [f"{k} allocation {_num(v)}" for k, v in last.get("allocation_values", {}).items()]
        line += f" (best {last['value_function']} on {last['guard_samples']}: {', '.join(figures)})"
    return line


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


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
    allocation = "uniform" if opts.get("uniform") else "global"
    head = (f"pruned {report['model']} -> {report.get('output')}  (metric {report['metric']}, "
            f"ratio {report['ratio']} of {opts.get('target', 'units')}, {allocation}, "
            f"seed {report['seed']})")
    out = [head, "", _table(["", "before", "after", "after/before"], rows)]
    if line := _removed_line(report):
        out.append(line)
    if line := _deploy_line(report.get("deploy")):
        out.append(line)
    if lat:
        out.append(f"latency: median [quartiles] of {bl['runs']} interleaved runs each; "
                   f"speed-up x{lat['speedup']['median']:.2f}")
    for warning in ver.get("warnings", []):
        out.append(f"warning: {warning}")
    for hint in report.get("hints", []):
        out.append(f"hint: {hint}")
    if ver.get("outputs"):
        out += ["", f"fidelity: {ver['note']}"]
        out.append(_table(["output", "max |diff|", "cosine", "top-1 agree"],
                          [[f["name"], f"{f['max_abs_diff']:.4g}", f"{f['cosine']:.4f}",
                            "-" if f["top1_agreement"] is None else f"{100 * f['top1_agreement']:.1f}%"]
                           for f in ver["outputs"]]))
    pruned = [g for g in report["groups"] if g["prunable"]]
    if pruned:
        out += ["", f"{len(pruned)} groups pruned (units kept/total): " +
                ", ".join(f"g{g['id']} {g['kept']}/{g['units']}" for g in pruned[:12]) +
                (" ..." if len(pruned) > 12 else "")]
    skipped = len(report["groups"]) - len(pruned)
    if skipped:
        out.append(f"{skipped} groups left whole (see 'onnxprune analyze' for reasons)")
    return "\n".join(out)
