"""Coverage of the onnx package's bundled "light" models: the share of Conv/Gemm/MatMul
weight parameters that lie in prunable groups (on either axis), and why the rest does not.

    python bench/coverage.py            # prints the table; --write updates docs/coverage.md
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import onnx

from onnxprune.compiler.cost import coverage
from onnxprune.model import analyze_model

LIGHT = Path(onnx.__file__).parent / "backend/test/data/light"
DOC = Path(__file__).resolve().parent.parent / "docs/coverage.md"


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
    text = table(rows())
    print(text)
    if args.write:
        body = DOC.read_text() if DOC.exists() else ""
        start, end = "<!-- coverage:start -->", "<!-- coverage:end -->"
        if start in body:
            body = body[: body.index(start) + len(start)] + "\n" + text + "\n" + body[body.index(end):]
        else:
            body += f"\n{start}\n{text}\n{end}\n"
        DOC.write_text(body)


if __name__ == "__main__":
    main()
