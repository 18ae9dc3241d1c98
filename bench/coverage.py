"""Coverage of the onnx package's bundled "light" models and of the issue-17 zoo models
(real exporters' idioms, models/zoo/manifest.json): the share of Conv/Gemm/MatMul/Einsum
weight parameters that lie in prunable groups (on either axis), and why the rest does not.

    python bench/coverage.py            # prints the tables; --write updates docs/coverage.md
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import onnx

from onnxprune.compiler.cost import coverage
from onnxprune.model import analyze_model

LIGHT = Path(onnx.__file__).parent / "backend/test/data/light"
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs/coverage.md"
ZOO_FAMILIES = ("hf", "exporter_idiom", "shuffle")


def zoo_rows() -> list[list[str]]:
    """Per issue-17 zoo model: the share, and every group that stays whole with its reason."""
    manifest = json.loads((ROOT / "models/zoo/manifest.json").read_text())
    out = []
    for entry in manifest:
        if entry.get("family") not in ZOO_FAMILIES:
            continue
        am = analyze_model(ROOT / "models/zoo" / entry["file"])
        total, covered = coverage(am.analysis)
        groups = am.analysis.groups
        barriers = [f"g{g.id} ({g.units}x{g.unit_size}): {g.reason}" for g in groups if not g.prunable]
        out.append([entry["file"].removesuffix(".onnx"), str(len(groups)),
                    str(sum(g.prunable for g in groups)), str(total),
                    f"{100 * covered / max(total, 1):.1f}%", "<br>".join(barriers) or "-"])
    return out


def cache_lines() -> str:
    """The zoo models whose share differs under --prune-cache (heads that shrink the key-value
    cache, which changes the model's interface: not counted in the table, which is the default)."""
    manifest = json.loads((ROOT / "models/zoo/manifest.json").read_text())
    out = []
    for entry in manifest:
        if entry.get("family") not in ZOO_FAMILIES:
            continue
        path = ROOT / "models/zoo" / entry["file"]
        (total, plain), (_, opted) = (coverage(analyze_model(path, prune_cache=c).analysis)
                                      for c in (False, True))
        if opted != plain:
            out.append(f"- {entry['file'].removesuffix('.onnx')}: with `--prune-cache` "
                       f"{100 * opted / max(total, 1):.1f}% (default {100 * plain / max(total, 1):.1f}%)")
    return "\n".join(out)


def zoo_table(data: list[list[str]]) -> str:
    head = ["zoo model", "groups", "prunable", "mixing weights", "in prunable groups",
            "every group left whole, and why"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in data]
    return "\n".join(lines)


def _put(body: str, name: str, text: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start in body:
        return body[: body.index(start) + len(start)] + "\n" + text + "\n" + body[body.index(end):]
    return body + f"\n{start}\n{text}\n{end}\n"


def rows() -> list[list[str]]:
    out = []
    for path in sorted(LIGHT.glob("light_*.onnx")):
        t0 = time.perf_counter()
        am = analyze_model(path)
        total, covered = coverage(am.analysis)
        groups = am.analysis.groups
        reasons = sorted({g.reason for g in groups if not g.prunable})
        out.append([path.stem.removeprefix("light_"), str(len(am.graph.nodes)), str(len(groups)),
                    str(sum(g.prunable for g in groups)),
                    str(sum(g.units for g in groups if g.prunable)), f"{total / 1e6:.2f}M",
                    f"{100 * covered / max(total, 1):.1f}%", f"{time.perf_counter() - t0:.2f}",
                    "; ".join(reasons)])
    return out


def table(data: list[list[str]]) -> str:
    head = ["model", "nodes", "groups", "prunable", "prunable units", "mixing weights", "in prunable groups",
            "load+analyze s", "why some groups are not prunable"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in data]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite docs/coverage.md")
    args = parser.parse_args()
    text, zoo, cache = table(rows()), zoo_table(zoo_rows()), cache_lines()
    print(text + "\n\n" + zoo + "\n\n" + cache)
    if args.write:
        body = DOC.read_text() if DOC.exists() else ""
        DOC.write_text(_put(_put(_put(body, "coverage", text), "zoo-coverage", zoo), "prune-cache", cache))


if __name__ == "__main__":
    main()
