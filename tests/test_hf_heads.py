"""Attention heads in Hugging Face exports (issue 17): one prunable group per layer whose unit
is a head (unit_size == head_dim), in every encoder and decoder of the zoo, from the legacy and
the dynamo exporter (with a past key/value cache: one group per layer, whole, saying why).
xfail(strict) marks what the analysis cannot do yet; tiny graphs below pin each idiom."""
import json

import numpy as np
import onnx
import pytest

from conftest import ROOT
from exactness import check_masked_equals_pruned
from graphs import G
from onnxprune.api import analyze_model

MANIFEST = json.loads((ROOT / "models/zoo/manifest.json").read_text())
HF = sorted(e["file"] for e in MANIFEST if e.get("family") == "hf")
HEADS, HEAD_DIM, LAYERS = 4, 8, 2

# with past key/values the heads reach the cache inputs and outputs: they stay whole, saying so
# (issue 17 F: pruning them would change the model's cache interface), unless --prune-cache
CACHE = {"hf_gpt2_past.onnx", "hf_gpt2_past_dynamo.onnx"}
TODAY: dict[str, str] = {}  # file -> what the analysis does not follow yet


def _param(file: str):
    if file in TODAY:
        return pytest.param(file, marks=pytest.mark.xfail(strict=True, reason=f"issue 17: {TODAY[file]}"))
    return file


def test_every_hf_export_is_listed():
    assert len(HF) == 14 and set(TODAY) | CACHE <= set(HF)


def _heads(file: str) -> tuple[list, list]:
    groups = analyze_model(ROOT / "models/zoo" / file).analysis.groups
    heads = [g for g in groups if g.unit_size == HEAD_DIM and g.units == HEADS]
    return heads, [(g.units, g.unit_size, g.reason) for g in groups]


@pytest.mark.parametrize("file", [_param(f) for f in HF if f not in CACHE])
def test_attention_heads_are_prunable(file):
    heads, groups = _heads(file)
    assert len([g for g in heads if g.prunable]) == LAYERS, groups


@pytest.mark.parametrize("file", [_param(f) for f in sorted(CACHE)])
def test_heads_that_reach_the_cache_stay_whole_and_say_why(file):
    heads, groups = _heads(file)
    assert len(heads) == LAYERS and all(g.reason.startswith("attention heads reach the past/present "
                                                            "key-value cache") for g in heads), groups
    assert all("(--prune-cache allows it)" in g.reason for g in heads)


@pytest.mark.parametrize("file", sorted(CACHE))
def test_prune_cache_makes_the_heads_prunable(file):
    """With --prune-cache each layer's heads are one prunable group whose members include its
    past key/value inputs and present outputs (axis 1)."""
    groups = analyze_model(ROOT / "models/zoo" / file, prune_cache=True).analysis.groups
    heads = [g for g in groups if g.unit_size == HEAD_DIM and g.units == HEADS and g.prunable]
    assert len(heads) == LAYERS, [(g.units, g.unit_size, g.reason) for g in groups]
    for layer, g in enumerate(heads):
        cache = sorted(m.tensor for m in g.members if m.role == "cache")
        assert cache == sorted(f"{io}.{layer}.{kv}" for io in ("past_key_values", "present")
                               for kv in ("key", "value")) and {m.axis for m in g.members
                                                                if m.role == "cache"} == {1}


DIMS = [{"N": n, "S": s} for n in (1, 3) for s in (5, 11)]


def _split(g, t, heads=2):
    return g.op("Transpose", g.op("Reshape", t, g.ints([0, 0, heads, -1])), perm=[0, 2, 1, 3])


def _attention(g, scores_fn):
    """q, k, v [N, S, 8] as 2 heads of 4; softmax(scores_fn(q k^T)) v; out projection."""
    q, k, v = (_split(g, g.matmul(g.x, 8)) for _ in range(3))
    s = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
    o = g.op("MatMul", g.op("Softmax", scores_fn(s), axis=-1), v)
    return g.matmul(g.op("Reshape", g.op("Transpose", o, perm=[0, 2, 1, 3]), g.ints([0, 0, 8])), 3)


def _expand_mask(g, mask):
    """transformers' legacy mask: Expand(mask[N, 1, 1, S], torch's expand(N, -1, S, S) target
    Where(Equal(t, -1), 1, t)), then Where(mask, 0, finfo.min): the head axis is 1 only at
    run time (shape inference leaves it unknown)."""
    shape = g.op("Shape", mask)
    n, s = (g.op("Gather", shape, g.ints([i])) for i in (0, 1))
    t = g.op("Concat", n, g.ints([-1]), s, s, axis=0)
    target = g.op("Where", g.op("Equal", t, g.ints([-1] * 4)), g.ints([1] * 4), t)
    b = g.op("Unsqueeze", g.op("Cast", mask, to=onnx.TensorProto.BOOL), g.ints([1, 2]))
    return g.op("Where", g.op("Expand", b, target), g.floats(0.0), g.floats(-3.4e38))


def test_additive_mask_passes_heads():
    """Issue 17 A/B: scores + a channel-free mask that broadcasts over the heads, then Softmax
    over the keys: the heads stay one prunable group, exact at two batches x two lengths."""
    g = G(14, ("S", 8))
    mask = g.input("mask", ["N", "S"], np.int64)
    y = _attention(g, lambda s: g.op("Add", g.op("Div", s, g.floats(2.0)), _expand_mask(g, mask)))
    analysis = check_masked_equals_pruned(g.model(y), dim_sets=DIMS)
    assert [(p.units, p.unit_size) for p in analysis.prunable] == [(2, 4)]


def test_mask_with_heads_is_not_a_broadcast():
    """A run-time operand whose head axis is not provably 1 still joins channels: a barrier."""
    g = G(14, ("S", 8))
    bias = g.input("bias", ["N", 2, "S", "S"])
    y = _attention(g, lambda s: g.op("Add", s, g.op("Relu", bias)))
    groups = analyze_model(g.model(y)).analysis.groups
    assert not any(p.unit_size == 4 and p.prunable for p in groups)


def _conv1d(g, x, c_in, width, target=None):
    """transformers' Conv1D: view(-1, C_in) -> Gemm -> view(Concat(Shape(x)[:2], [C_out]));
    `target` (a Concat output) may be shared with another Conv1D of the same width."""
    if target is None:
        shape = g.op("Shape", x)
        lead = [g.op("Unsqueeze", g.op("Gather", shape, g.ints(i)), g.ints([0])) for i in (0, 1)]
        target = g.op("Concat", *lead, g.ints([width]), axis=0)
    flat = g.op("Reshape", x, g.ints([-1, c_in]))
    return g.op("Reshape", g.gemm(flat, width), target), target


def test_conv1d_reshape_by_runtime_target():
    """Issue 17 E: the channel axis is last before and after both Reshapes, so the MLP width
    is one prunable group; the literal width in the Concat is rewritten (in a copy: the two
    MLPs share their target Concat), exact at two batches x two lengths."""
    g = G(14, ("S", 8))
    h, shared = _conv1d(g, g.x, 8, 16)
    h = g.op("Add", g.x, _conv1d(g, g.op("Relu", h), 16, 8)[0])
    h2, _ = _conv1d(g, h, 8, 16, shared)
    y = g.op("Add", h, _conv1d(g, g.op("Tanh", h2), 16, 8)[0])
    analysis = check_masked_equals_pruned(g.model(y), dim_sets=DIMS)
    assert sorted((p.units, p.unit_size) for p in analysis.prunable) == [(16, 1), (16, 1)]


def test_heads_merged_by_flatten_to_width():
    """dynamo merges heads [N, S, H, d] straight into [-1, H * d] before the projection."""
    g = G(14, ("S", 8))
    q, k, v = (_split(g, g.matmul(g.x, 8)) for _ in range(3))
    o = g.op("MatMul", g.op("Softmax", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])),
                            axis=-1), v)
    flat = g.op("Reshape", g.op("Transpose", o, perm=[0, 2, 1, 3]), g.ints([-1, 8]))
    shape = g.op("Shape", g.x)
    target = g.op("Concat", g.op("Slice", shape, g.ints([0]), g.ints([2])), g.ints([3]), axis=0)
    y = g.op("Reshape", g.gemm(flat, 3), target)
    analysis = check_masked_equals_pruned(g.model(y), dim_sets=DIMS)
    assert [(p.units, p.unit_size) for p in analysis.prunable] == [(2, 4)]


def _cached_attention(g, read_heads: bool = False):
    """Keys and values Concat-ed on the sequence axis after past_key/past_value [N, 2, P, 4]
    (2 heads of 4), returned as present_key/present_value; `read_heads`: the past's head
    count also feeds a computation (the product of Shape(past) scales the output)."""
    past_k, past_v = (g.input(f"past_{n}", ["N", 2, "P", 4]) for n in ("key", "value"))
    q, k, v = (_split(g, g.matmul(g.x, 8)) for _ in range(3))
    k, v = g.op("Concat", past_k, k, axis=2), g.op("Concat", past_v, v, axis=2)
    s = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
    o = g.op("MatMul", g.op("Softmax", s, axis=-1), v)
    y = g.matmul(g.op("Reshape", g.op("Transpose", o, perm=[0, 2, 1, 3]), g.ints([0, 0, 8])), 3)
    if read_heads:
        heads = g.op("Cast", g.op("ReduceProd", g.op("Shape", past_k)), to=onnx.TensorProto.FLOAT)
        y = g.op("Mul", y, heads)
    return g.model(y, k, v)


def test_heads_concatenated_with_a_past_cache_input_stay_whole():
    """Issue 17 F: keys Concat-ed with a graph input along the sequence axis (past keys),
    returned as a graph output (present keys): one group of heads, whole, with the reason."""
    groups = analyze_model(_cached_attention(G(14, ("S", 8)))).analysis.groups
    assert [(h.units, h.unit_size, h.prunable) for h in groups] == [(2, 4, False), (3, 1, False)]
    assert "key-value cache (graph input 'past_key')" in groups[0].reason
    assert "(--prune-cache allows it)" in groups[0].reason


CACHE_DIMS = [{"N": n, "S": s, "P": p} for n in (1, 3) for s in (1, 5) for p in (2, 7)]


def test_prune_cache_shrinks_the_cache_heads_exactly():
    """--prune-cache: the heads are prunable, the past inputs and present outputs are members
    on axis 1; masked (original-width past) == pruned (past of the kept heads), compared on the
    kept heads of the present outputs, at 2 batches x 2 lengths x 2 past lengths."""
    model = _cached_attention(G(14, ("S", 8)))
    analysis = check_masked_equals_pruned(model, dim_sets=CACHE_DIMS, prune_cache=True)
    assert [(p.units, p.unit_size) for p in analysis.prunable] == [(2, 4)]
    cache = {m.tensor: m.axis for m in analysis.prunable[0].members if m.role == "cache"}
    outputs = [o.name for o in model.graph.output[1:]]
    assert cache == {"past_key": 1, "past_value": 1, outputs[0]: 1, outputs[1]: 1}


def test_prune_cache_declares_the_new_head_count_and_records_the_kept_heads():
    from onnxprune.compiler.cache import cache_heads
    from onnxprune.compiler.graph import ModelIdentity, to_proto
    from onnxprune.compiler.rewrite import rewrite
    model = _cached_attention(G(14, ("S", 8)))
    analysis = analyze_model(model, prune_cache=True).analysis
    pruned = to_proto(rewrite(analysis, {analysis.prunable[0].id: [1]}), ModelIdentity.of(model))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*pruned.graph.input, *pruned.graph.output]}
    assert dims["past_key"] == dims["past_value"] == ["N", 1, "P", 4]
    heads = cache_heads(pruned)
    assert {k: (a, v.tolist()) for k, (a, v) in heads.items() if k.startswith("past")} == \
        {"past_key": (1, [1]), "past_value": (1, [1])} and len(heads) == 4


def test_prune_cache_fails_closed_where_the_head_count_is_read():
    """A past input whose head dim feeds a computation cannot shrink: whole, saying so."""
    groups = analyze_model(_cached_attention(G(14, ("S", 8)), read_heads=True),
                           prune_cache=True).analysis.groups
    assert not groups[0].prunable and "in a form --prune-cache does not shrink" in groups[0].reason


def _var(name, shape, dtype=np.float32):
    import onnx_graphsurgeon as gs
    return gs.Variable(name, dtype=dtype, shape=shape)


def test_slice_of_a_shape_vector_evaluates():
    """transformers' Conv1D reads x.size(-1) as Slice(Shape(x), [-1], [INT64_MAX]): with the
    Slice evaluated, its view(-1, C) target folds (legacy GPT-2 with past)."""
    import onnx_graphsurgeon as gs
    from graphs import INT64_MAX
    from onnxprune.compiler.shapes import evaluate
    x, shape = _var("x", ["N", "S", 8]), _var("shape", [3], np.int64)
    outs = [_var(f"s{i}", None, np.int64) for i in range(2)]
    nodes = [gs.Node("Shape", inputs=[x], outputs=[shape])]
    for out, (a, b) in zip(outs, [(-1, INT64_MAX), (0, 2)]):
        bounds = [gs.Constant(f"{out.name}_{k}", np.array([v], np.int64)) for k, v in enumerate((a, b, 0))]
        nodes.append(gs.Node("Slice", inputs=[shape, *bounds], outputs=[out]))
    gs.Graph(nodes=nodes, inputs=[x], outputs=outs, opset=14)
    assert evaluate(outs[0]) == [8] and evaluate(outs[1]) == ["N", "S"]


def test_equal_dims_from_ops_that_require_them():
    """Dim names that must be one size for the model to run: a Reshape's copies and its one
    -1 among copies, a Concat's other axes; not a broadcasting Add (a dim may be 1)."""
    import onnx_graphsurgeon as gs
    from onnxprune.compiler.shapes import equal_dims
    ids, view = _var("ids", ["batch", "seq"], np.int64), _var("view", ["s21", "s50"], np.int64)
    past, new = _var("past", ["b2", 4, "P", 8]), _var("new", ["b3", 4, "T", 8])
    a, b = _var("a", ["u", 3]), _var("b", ["v", 3])
    nodes = [gs.Node("Reshape", inputs=[ids, gs.Constant("t", np.array([-1, 0], np.int64))], outputs=[view]),
             gs.Node("Concat", inputs=[past, new], outputs=[_var("present", ["b4", 4, "PT", 8])],
                     attrs={"axis": 2}),
             gs.Node("Add", inputs=[a, b], outputs=[_var("c", ["w", 3])])]
    same = equal_dims(gs.Graph(nodes=nodes, inputs=[ids, past, new, a, b], opset=14))
    assert same("s21", "batch") and same("s50", "seq") and same("b2", "b3") and same("b3", "b4")
    assert not same("u", "v") and not same("P", "T") and not same("batch", "seq")


def test_kept_cache_heads_compose_over_rounds():
    """A round that prunes a pruned model records indices into the original's heads."""
    from onnxprune.compiler.cache import cache_heads, narrow_feeds, record_cache_heads
    model = _cached_attention(G(14, ("S", 8)))
    record_cache_heads(model, {"past_key": (1, np.array([0, 2, 3]))})
    record_cache_heads(model, {"past_key": (1, np.array([1, 2]))})
    assert {k: v.tolist() for k, (_, v) in cache_heads(model).items()} == {"past_key": [2, 3]}
    past = np.arange(4).reshape(1, 4, 1, 1)
    assert narrow_feeds(model, {"past_key": past})["past_key"].ravel().tolist() == [2, 3]


def test_prune_refuses_an_analysis_made_without_the_option():
    from onnxprune import OnnxPruneError, prune
    am = analyze_model(_cached_attention(G(14, ("S", 8))))
    with pytest.raises(OnnxPruneError, match="prune_cache=False"):
        prune(am, None, prune_cache=True)
