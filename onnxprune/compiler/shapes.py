"""Symbolic evaluation of shape subgraphs (part of `normalize`).

Exporters compute Reshape targets at run time: `x.view(x.size(0), -1)` becomes
Shape -> Gather(0) -> Unsqueeze -> Concat([b, -1]) -> Reshape. With a dynamic batch the
constant folder cannot fold it. Evaluated over dims that are numbers or dim names, the
target is [batch, 1024]: the batch position equals the input's own dim 0, so the target
is the constant [0, 1024] (0 = copy that dim), which the analysis can read and rewrite.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from .graph import const_value
from .ops.registry import Dims, evaluate  # noqa: F401  (Dims: ints and dim names; evaluate: re-exported)


def fold_reshape_targets(graph: gs.Graph) -> bool:
    """Replace run-time Reshape targets that evaluate to numbers plus copies of the input's
    own named dims by constants. Returns whether anything changed (onnx-ir pass style)."""
    changed = False
    same = equal_dims(graph)
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
            elif isinstance(d, str) and i < len(in_shape) and same(in_shape[i], d):
                fixed.append(0)  # the same named dim as the input's: copy it
            else:
                fixed = None
                break
        if fixed is not None:
            changed |= _set_target(node, fixed)
    return changed


def equal_dims(graph: gs.Graph) -> Callable[[object, object], bool]:
    """Which dim names are one size wherever the model runs at all, from the facts its ops
    impose: a Reshape's copied dims (0) and its one -1 among copies, Concat's other axes,
    Transpose's permutation. (The dynamo exporter names a view's dims afresh: s21 for the
    input's 'batch'; its head-split target reads 'batch' from the past cache's Shape.)"""
    parent: dict[str, str] = {}

    def find(d: str) -> str:
        while parent.setdefault(d, d) != d:
            d = parent[d]
        return d

    for a, b in _dim_facts(graph):
        if isinstance(a, str) and isinstance(b, str) and a and b:
            parent[find(a)] = find(b)
    return lambda a, b: a == b or (isinstance(a, str) and isinstance(b, str) and bool(a)
                                   and bool(b) and find(a) == find(b))


def _dim_facts(graph: gs.Graph) -> Iterator[tuple[object, object]]:
    """Pairs of dims that must be equal for the model to run (named or not)."""
    for node in graph.nodes:
        if not node.inputs or not node.outputs:
            continue
        src, out = node.inputs[0].shape, node.outputs[0].shape
        if src is None or out is None:
            continue
        perm = node.attrs.get("perm") if node.op == "Transpose" else None
        if perm and len(perm) == len(out) == len(src):
            yield from ((out[i], src[p]) for i, p in enumerate(perm))
        elif node.op == "Concat" and all(t.shape is not None and len(t.shape) == len(out)
                                         for t in node.inputs):
            axis = int(node.attrs.get("axis", 0)) % max(len(out), 1)
            for t in node.inputs:
                yield from ((t.shape[i], out[i]) for i in range(len(out)) if i != axis)
        elif node.op == "Reshape" and not node.attrs.get("allowzero", 0):
            target = const_value(node.inputs[1])
            if target is None or target.ndim != 1 or len(target) != len(out):
                continue
            copies = [i for i, v in enumerate(target.tolist()) if v == 0 and i < len(src)]
            yield from ((out[i], src[i]) for i in copies)
            rest = [i for i, v in enumerate(target.tolist()) if v != 0]
            if len(src) == len(out) and len(rest) == 1 and int(target[rest[0]]) == -1:
                yield out[rest[0]], src[rest[0]]  # the product is kept: the -1 is the input's dim


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


# Two probes per dim name, far apart: a dim that downsampling collapses at small sizes (a
# CRNN's time steps, width / 8, are 1 at widths 2 and 3 alike) must differ between them, or
# the probe would read a run-time size as a literal.
PROBE_SIZES = ([2, 3, 5, 7, 11, 13], [17, 19, 23, 29, 31, 37])


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
    values = _run(probe, sizes)
    return [(values[2 * k].tolist(), values[2 * k + 1].tolist()) for k in range(len(nodes))]


def _feeds(graph: gs.Graph, sizes: list[int]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Zeros for every graph input, each dynamic dim (by name) at its own size from `sizes`;
    and the size given to each dim name."""
    names: dict[str, int] = {}
    feeds = {}
    for inp in graph.inputs:
        dims = []
        for d in inp.shape or []:
            if isinstance(d, int) and d >= 0:
                dims.append(d)
            else:
                key = d if isinstance(d, str) and d else f"__anon{len(names)}"
                dims.append(sizes[names.setdefault(key, len(names)) % len(sizes)])
        feeds[inp.name] = np.zeros(dims, dtype=np.dtype(inp.dtype))
    return feeds, {name: sizes[i % len(sizes)] for name, i in names.items()}


def _run(probe: gs.Graph, sizes: list[int]) -> list[np.ndarray]:
    """Run a copy of the graph (its outputs set by the caller) on zeros at `sizes`."""
    from .graph import ModelIdentity, to_proto
    from ..runtime import make_session
    probe.cleanup(remove_unused_graph_inputs=False)
    feeds, _ = _feeds(probe, sizes)
    opsets = [("", probe.opset)] + [(d.domain, d.version) for d in probe.import_domains or []
                                    if d.domain not in ("", "ai.onnx")]
    model = to_proto(probe, ModelIdentity(ir_version=8, opset_import=opsets))
    model.ir_version = max(model.ir_version, 7)
    return make_session(model, "cpu", threads=1).run(None, feeds)


_BINARY = ("Add", "Sub", "Mul", "Div")


def fold_shape_expands(graph: gs.Graph) -> bool:
    """Expand(c, Shape(y)) of a constant c, read only by element-wise Add/Sub/Mul/Div whose
    other operand has y's (fully known) shape, is c itself: broadcasting c there gives the same
    values and shape (jax2tf's broadcast_in_dim of a LayerNorm gamma). As a plain constant it is
    a per-channel member that the rewrite slices; the Shape stays out of the channel analysis."""
    changed = False
    for node in list(graph.nodes):
        if node.op != "Expand" or (c := const_value(node.inputs[0])) is None:
            continue
        src = node.inputs[1].inputs[0] if node.inputs[1].inputs else None
        if src is None or src.op != "Shape" or src.attrs.get("start") or src.attrs.get("end"):
            continue
        shape = node.inputs[1].inputs[0].inputs[0].shape
        out = node.outputs[0]
        if not _fits(c.shape, shape) or out in graph.outputs or not out.outputs:
            continue
        if all(_same_shape_binary(consumer, out, shape) for consumer in out.outputs):
            for consumer in out.outputs:
                consumer.inputs[consumer.inputs.index(out)] = node.inputs[0]
            changed = True
    return changed


def _fits(c_shape: tuple, shape) -> bool:
    """c broadcasts into `shape` without changing it (right-aligned: 1 or the same number)."""
    if shape is None or len(c_shape) > len(shape) or any(d is None or d == "" for d in shape):
        return False
    tail = list(shape)[len(shape) - len(c_shape):]
    return all(a == 1 or (isinstance(b, int) and a == b) for a, b in zip(c_shape, tail))


def _same_shape_binary(node: gs.Node, operand: gs.Tensor, shape) -> bool:
    if node.op not in _BINARY or len(node.inputs) != 2:
        return False
    other = node.inputs[1] if node.inputs[0] is operand else node.inputs[0]
    return other is not operand and other.shape is not None and list(other.shape) == list(shape)


def fold_slice_bounds(graph: gs.Graph) -> bool:
    """Slice starts/ends/axes/steps computed at run time from static dims (torch's chunk:
    ends = (Shape(x)[1] + 1) / 2 * k) evaluate to numbers: make them constants, which the
    analysis can read and the rewrite can edit."""
    changed = False
    for node in graph.nodes:
        if node.op != "Slice":
            continue
        for i in range(1, min(len(node.inputs), 5)):
            t = node.inputs[i]
            if not t.name or const_value(t) is not None:
                continue
            value = evaluate(t)
            if value is None or not value or not all(isinstance(v, int) for v in value):
                continue
            node.inputs[i] = gs.Constant(f"{t.name}__folded", np.array(value, np.int64))
            changed = True
    return changed


def probe_unknown_shapes(graph: gs.Graph) -> list[str]:
    """Fill the shapes onnx's inference leaves unknown (after an op without a schema: every
    rank downstream is lost) from two runs on zeros at two sizes of the dynamic dims. A dim
    equal in both runs is that number; one equal to an input dim's size in both runs is that
    dim's name; any other dim stays symbolic. Returns the names of the tensors filled so
    (the shapes that came from a probe); nothing when the graph cannot run."""
    unknown = [t for t in graph.tensors().values() if isinstance(t, gs.Variable)
               and t.shape is None and t.inputs and t not in graph.inputs]
    if not unknown:
        return []
    try:
        runs = []
        for sizes in PROBE_SIZES:
            probe = graph.copy()
            tensors = probe.tensors()
            probe.outputs = [tensors[t.name] for t in unknown]
            runs.append((_run(probe, sizes), _feeds(graph, sizes)[1]))
    except Exception:  # custom ops ORT lacks, data-dependent failures: nothing is filled
        return []
    (va, na), (vb, nb) = runs
    for k, t in enumerate(unknown):
        a, b = va[k], vb[k]
        if a.ndim != b.ndim:
            continue
        t.shape = [_probed_dim(x, y, na, nb, f"{t.name}__probe{j}")
                   for j, (x, y) in enumerate(zip(a.shape, b.shape))]
        t.dtype = t.dtype or a.dtype
    return [t.name for t in unknown if t.shape is not None]


def _probed_dim(a: int, b: int, sizes_a: dict, sizes_b: dict, fresh: str) -> int | str:
    if a == b and a != 0:  # zeros in, nothing out (NonZero) is no static 0
        return int(a)
    names = [n for n in sizes_a if sizes_a[n] == a and sizes_b.get(n) == b]
    return names[0] if len(names) == 1 and not names[0].startswith("__anon") else fresh
