"""Symbolic evaluation of shape subgraphs (part of `normalize`).

Exporters compute Reshape targets at run time: `x.view(x.size(0), -1)` becomes
Shape -> Gather(0) -> Unsqueeze -> Concat([b, -1]) -> Reshape. With a dynamic batch the
constant folder cannot fold it. Evaluated over dims that are numbers or dim names, the
target is [batch, 1024]: the batch position equals the input's own dim 0, so the target
is the constant [0, 1024] (0 = copy that dim), which the analysis can read and rewrite.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph import const_value
from .ops import handler_for
from .ops.registry import Dims  # ints and dim names (str); None = unknown


def evaluate(tensor: gs.Tensor, depth: int = 0) -> Dims | None:
    """Dims of a 1-D int64 shape tensor (numbers or dim names), or None if not evaluable."""
    value = const_value(tensor)
    if value is not None:
        return [int(v) for v in np.atleast_1d(value).reshape(-1)] if value.ndim <= 1 else None
    if depth > 32 or not tensor.inputs:
        return None
    node = tensor.inputs[0]
    return handler_for(node).eval_shape(node, lambda t: evaluate(t, depth + 1))


def fold_reshape_targets(graph: gs.Graph) -> bool:
    """Replace run-time Reshape targets that evaluate to numbers plus copies of the input's
    own named dims by constants. Returns whether anything changed (onnx-ir pass style)."""
    changed = False
    for node in graph.nodes:
        if node.op != "Reshape" or const_value(node.inputs[1]) is not None:
            continue
        target = evaluate(node.inputs[1])
        in_shape = node.inputs[0].shape
        if target is None or in_shape is None:
            continue
        fixed = []
        for i, d in enumerate(target):
            if isinstance(d, int) and d != 0:  # a literal zero would read as a copy
                fixed.append(d)
            elif isinstance(d, str) and i < len(in_shape) and in_shape[i] == d:
                fixed.append(0)  # the same named dim as the input's: copy it
            else:
                fixed = None
                break
        if fixed is not None:
            changed |= _set_target(node, fixed)
    return changed


def _set_target(node: gs.Node, fixed: list[int]) -> bool:
    """Constant target with 0 = copy. `allowzero=1` (dynamo) only differs from 0 when the
    run-time target holds a literal 0, which a target of copies and positive numbers never
    does; so the attribute is reset and the copies keep their meaning."""
    if node.attrs.get("allowzero", 0):
        node.attrs["allowzero"] = 0
    node.inputs[1] = gs.Constant(f"{node.outputs[0].name}__target", np.array(fixed, np.int64))
    return True


def fill_expand_shapes(graph: gs.Graph) -> bool:
    """Dims of Expand outputs that shape inference left unknown but that the evaluated target
    makes numbers (torch's `expand(b, -1, s, s)` keeps the mask's head axis at 1): written
    into the output's shape, for the next inference to carry on. Returns whether any was."""
    changed = False
    for node in graph.nodes:
        out = node.outputs[0]
        if node.op != "Expand" or out.shape is None or node.inputs[0].shape is None:
            continue
        target = evaluate(node.inputs[1])
        if target is None or len(target) != len(out.shape):
            continue
        dims = _broadcast(list(node.inputs[0].shape), target)
        shape = list(out.shape)
        for i, d in enumerate(dims):
            if isinstance(d, int) and d >= 0 and not isinstance(shape[i], int):
                shape[i], changed = d, True
        out.shape = shape
    return changed


def _broadcast(a: list, b: list) -> list:
    """Numpy broadcasting of two dim lists where it is decidable (None elsewhere)."""
    n = max(len(a), len(b))
    a, b = [1] * (n - len(a)) + a, [1] * (n - len(b)) + b
    return [y if x == 1 else x if y == 1 else x if x == y and x is not None else None
            for x, y in zip(a, b)]


PROBE_SIZES = ([2, 3, 5, 7, 11, 13], [3, 5, 7, 11, 13, 17])


def probe_reshape_targets(graph: gs.Graph) -> bool:
    """Fallback when dim names do not match (exporters' shape inference invents `unk__N`
    names): run the shape subgraphs at two sizes of the dynamic dims (distinct primes per
    dim name) and read each target entry as a literal (equal in both runs) or as a copy of
    the Reshape input's own dim (equal to it in both runs). Anything else stays run-time."""
    nodes = [n for n in graph.nodes if n.op == "Reshape" and const_value(n.inputs[1]) is None]
    if not nodes:
        return False
    try:
        runs = [_probe(graph, nodes, sizes) for sizes in PROBE_SIZES]
    except Exception:  # a probe that cannot run (custom ops, data-dependent shapes) folds nothing
        return False
    changed = False
    for i, node in enumerate(nodes):
        (ta, sa), (tb, sb) = runs[0][i], runs[1][i]
        if len(ta) != len(tb):
            continue
        fixed = []
        for j, (a, b) in enumerate(zip(ta, tb)):
            if a == b and a != 0:  # a literal zero would read as a copy
                fixed.append(int(a))
            elif j < len(sa) and a == sa[j] and b == sb[j]:
                fixed.append(0)
            else:
                break
        else:
            changed |= _set_target(node, fixed)
    return changed


def _probe(graph: gs.Graph, nodes: list[gs.Node], sizes: list[int]) -> list[tuple[list, list]]:
    from .graph import ModelIdentity, to_proto
    from ..runtime import make_session
    probe = graph.copy()
    by_key = {n.outputs[0].name: n for n in probe.nodes}
    outputs = []
    for k, node in enumerate(nodes):
        copy = by_key[node.outputs[0].name]
        shape = gs.Variable(f"__probe_shape{k}", dtype=np.int64)
        probe.nodes.append(gs.Node("Shape", inputs=[copy.inputs[0]], outputs=[shape]))
        target = copy.inputs[1]
        target.dtype = target.dtype or np.int64
        outputs += [target, shape]
    probe.outputs = outputs
    probe.cleanup(remove_unused_graph_inputs=False)
    names: dict[str, int] = {}
    feeds = {}
    for inp in probe.inputs:
        dims = []
        for d in inp.shape or []:
            if isinstance(d, int) and d >= 0:
                dims.append(d)
            else:
                key = d if isinstance(d, str) and d else f"__anon{len(names)}"
                dims.append(sizes[names.setdefault(key, len(names)) % len(sizes)])
        feeds[inp.name] = np.zeros(dims, dtype=np.dtype(inp.dtype))
    model = to_proto(probe, ModelIdentity(ir_version=8, opset_import=[("", graph.opset)]))
    model.ir_version = max(model.ir_version, 7)
    values = make_session(model, "cpu", threads=1).run(None, feeds)
    return [(values[2 * k].tolist(), values[2 * k + 1].tolist()) for k in range(len(nodes))]
