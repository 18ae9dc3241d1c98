"""The op registry and the analysis' plumbing: handlers for custom-domain ops, one node key,
no import cycle among the analysis modules, and a `normalize` / package import that leave
the caller's model and the libraries' log levels alone."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from exactness import check_masked_equals_pruned
from graphs import G
from onnxprune.compiler.analyze import analyze
from onnxprune.compiler.normalize import normalize
from onnxprune.compiler.ops import handler_for, unregister
from onnxprune.compiler.ops.elementwise import Unary
from onnxprune.compiler.ops.registry import add
from onnxprune.scoring.metrics import bn_gamma, weight_norm_scores

ROOT = Path(__file__).resolve().parents[1]


def _custom_relu_model() -> onnx.ModelProto:
    """x -> conv(8) -> com.example.MyRelu -> conv(3); MyRelu is a model-local function (so
    ONNX Runtime can run it) whose body is a Relu."""
    g = G(13, domains={"com.example": 1})
    h = g.conv(g.x, 8)
    y = g.conv(g.declare(g.op("MyRelu", h, domain="com.example"), ["N", 8, 6, 6]), 3)
    model = g.model(y, check=False)
    model.functions.append(helper.make_function(
        "com.example", "MyRelu", ["X"], ["Y"], [helper.make_node("Relu", ["X"], ["Y"])],
        [helper.make_opsetid("", 13)]))
    return model


def _prunable_units(model: onnx.ModelProto) -> list[int]:
    return [g.units for g in analyze(normalize(model)).prunable]


def test_a_custom_domain_op_gets_a_handler():
    model = _custom_relu_model()
    assert _prunable_units(model) == [], "unknown custom-domain ops are barriers"
    add(Unary(), "MyRelu", domain="com.example")
    try:
        assert _prunable_units(model) == [8]
        check_masked_equals_pruned(model)
    finally:
        unregister("MyRelu", domain="com.example")
    assert _prunable_units(model) == []


def test_the_default_domain_has_three_spellings():
    for domain in ("", "ai.onnx", None):
        assert type(handler_for(gs.Node("Relu", domain=domain))) is Unary
    assert handler_for(gs.Node("Relu", domain="com.example")).reason.startswith("is in a custom")


def test_bn_gamma_on_unnamed_batchnorm_nodes():
    """Nodes without names (allowed) are found by their key: the scores are |gamma|, not the
    L1 norms of the conv filters."""
    g = G(13)
    h = g.bn(g.conv(g.x, 8))
    y = g.conv(g.op("Relu", h), 3)
    model = g.model(y)
    for node in model.graph.node:
        node.name = ""
    gamma = next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                 if t.name == model.graph.node[1].input[1])
    analysis = analyze(normalize(model))
    (group,) = analysis.prunable
    scores = bn_gamma(analysis, group.id)
    np.testing.assert_allclose(scores, np.abs(gamma), rtol=1e-6)
    assert not np.allclose(scores, weight_norm_scores(analysis, group.id, 1))


def test_members_and_sites_share_one_node_key():
    g = G(13)
    y = g.conv(g.op("Relu", g.bn(g.conv(g.x, 8))), 3)
    model = g.model(y)
    model.graph.node[0].name = ""
    analysis = analyze(normalize(model))
    keys = {m.node for grp in analysis.groups for m in grp.members} | {s.node for s in analysis.sites}
    for key in keys:
        assert analysis.node(key).outputs[0].name == key


def test_normalize_leaves_the_callers_model_unchanged():
    """Duplicate names are made unique (and shapes inferred) on a copy."""
    g = G(13)
    model = g.model(g.conv(g.op("Relu", g.conv(g.x, 8)), 3))
    for node in model.graph.node:
        node.name = "n"
    before = model.SerializeToString()
    graph = normalize(model)
    assert model.SerializeToString() == before
    names = [n.name for n in graph.nodes]
    assert len(set(names)) == len(names)


# ---------------------------------------------------------------------------- imports

CHECKED = tuple(f"compiler.{m}" for m in ("analysis", "context", "analyze", "rewrite", "instrument", "ops"))


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Every onnxprune module `module` imports, at any level of the file (functions too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("onnxprune")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known}


def test_no_import_cycle_among_the_analysis_modules():
    files = {}
    for path in (ROOT / "onnxprune").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        files[name] = path
    graph = {m: _imports(p, m, set(files)) for m, p in files.items()}
    checked = {m for m in files if any(m == f"onnxprune.{c}" or m.startswith(f"onnxprune.{c}.")
                                       for c in CHECKED)}
    assert {"onnxprune.compiler.analysis", "onnxprune.compiler.context", "onnxprune.compiler.ops.registry"} <= checked

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), list(graph[start])
        while stack:
            m = stack.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                stack.extend(graph[m])
        return False

    cycles = sorted(m for m in checked if reaches(m, m))
    assert not cycles, f"import cycles through {cycles}"
    for m in ("onnxprune.compiler.analysis", "onnxprune.compiler.context"):
        assert not reaches(m, "onnxprune.compiler.ops.registry"), f"{m} reaches the registry"


def test_importing_onnxprune_leaves_log_levels_alone():
    code = """
import onnxruntime, sys
calls = []
onnxruntime.set_default_logger_severity = lambda *a: calls.append(a)
from onnx_graphsurgeon.logger import G_LOGGER
before = G_LOGGER.severity
import onnxprune, onnxprune.api, onnxprune.compiler.normalize, onnxprune.scoring.engine
assert G_LOGGER.severity == before, (before, G_LOGGER.severity)
assert not calls, calls
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_normalize_restores_the_graphsurgeon_log_level():
    from onnx_graphsurgeon.logger import G_LOGGER
    before = G_LOGGER.severity
    g = G(13)
    normalize(g.model(g.conv(g.x, 4)))
    assert G_LOGGER.severity == before
