"""Least-squares refit (refit.py) and the guarded choice of what ships (deploy.py)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxprune
from onnxprune.scoring.site_stats import site_means
from onnxprune.model import analyze_model
from onnxprune.deploy.optimize import finalize
from onnxprune.deploy.refit import refit_consumers
from onnxprune.compiler.rewrite import channel_keep, rewrite

from exactness import session
from graphs import G


def _duplicated(g: G, x: str, base: int, kind: str) -> str:
    """A producer whose outputs base..2*base-1 copy outputs 0..base-1 (then a ReLU)."""
    if kind == "conv":
        w = g.rng.standard_normal((base, g.channels(x), 3, 3)).astype(np.float32) * 0.3
        h = g.op("Conv", x, g.array(np.concatenate([w, w])), kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    else:
        w = g.rng.standard_normal((g.shape(x)[-1], base)).astype(np.float32) * 0.3
        h = g.op("MatMul", x, g.array(np.concatenate([w, w], axis=1)))
    return g.op("Relu", h)


def _consumer(kind: str):
    """(input shape, builder of the consumer reading the pruned tensor)."""
    return {
        "conv": ((3, 8, 8), lambda g, h: g.op("Conv", h, g.const([5, 4, 3, 3], 0.3),
                                             g.const([5], 0.5), kernel_shape=[3, 3],
                                             pads=[1, 0, 1, 1], strides=[2, 1])),
        "gemm": ((6,), lambda g, h: g.gemm(h, 5, trans_b=True, alpha=0.5, beta=2.0)),
        "matmul": ((7, 6), lambda g, h: g.matmul(h, 5)),
    }[kind]


def _model(kind: str, duplicate: bool, seed: int = 0):
    shape, consumer = _consumer(kind)
    g = G(shape=shape, seed=seed)
    producer = "conv" if kind == "conv" else "matmul"
    if duplicate:
        h = _duplicated(g, g.x, 2, producer)
    else:
        h = g.op("Relu", g.conv(g.x, 4) if producer == "conv" else g.matmul(g.x, 4))
    return g.model(consumer(g, h)), h


def _prune(model, h, data, keep_units, *, refit: bool, compensate: bool):
    am = analyze_model(model)
    an = am.analysis
    gid = int(an.ch_group[an.maps[h].ids[0]])
    keep = {gid: np.array(keep_units)}
    means = site_means(an, am.ident, {"x": data}) if compensate else None
    refits = refit_consumers(an, am.ident, channel_keep(an, keep), {"x": data}) if refit else None
    return finalize(rewrite(an, keep, means=means, refits=refits), am.ident), refits


def _run(model, data):
    return session(model).run(None, {"x": data})[0].astype(np.float64)


def _data(model, n=40, seed=1):
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(seed).standard_normal((n, *dims)).astype(np.float32)


@pytest.mark.parametrize("kind", ["conv", "gemm", "matmul"])
def test_refit_recovers_duplicated_channels(kind):
    """Removed channels that copy kept ones carry no information: the refit must give the
    original output back (on fresh inputs too), which mean compensation cannot."""
    model, h = _model(kind, duplicate=True)
    data, fresh = _data(model), _data(model, seed=7)
    want = _run(model, fresh)
    refit, refits = _prune(model, h, data, [0, 1], refit=True, compensate=False)
    comp, _ = _prune(model, h, data, [0, 1], refit=False, compensate=True)
    assert len(refits) == 1
    scale = np.abs(want).max()
    err_refit = np.abs(_run(refit, fresh) - want).max() / scale
    err_comp = np.abs(_run(comp, fresh) - want).max() / scale
    assert err_refit < 2e-3
    assert err_comp > 20 * err_refit


@pytest.mark.parametrize("kind", ["conv", "gemm", "matmul"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refit_never_worse_than_compensation_on_its_data(kind, seed):
    """Mean compensation is a feasible point of the refit's least squares (D = 0), so on the
    samples it was fitted on the consumer's output error can only go down."""
    model, h = _model(kind, duplicate=False, seed=seed)
    data = _data(model, seed=seed + 10)
    want = _run(model, data)
    refit, _ = _prune(model, h, data, [1, 3], refit=True, compensate=False)
    comp, _ = _prune(model, h, data, [1, 3], refit=False, compensate=True)
    err = lambda m: float(((_run(m, data) - want) ** 2).sum())
    assert err(refit) <= err(comp) * (1 + 1e-6)


def test_refit_rewrite_equals_masked_model_with_refit_weights():
    """The surgery is exact: the pruned model equals the original with the consumer's weight
    and bias replaced by the refit's and the removed channels' weight columns zeroed."""
    model, h = _model("conv", duplicate=False, seed=3)
    data = _data(model)
    pruned, refits = _prune(model, h, data, [0, 2], refit=True, compensate=False)
    (refit,) = refits.values()
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    consumer = next(n for n in masked.graph.node if n.input[0] == h)
    inits = {t.name: t for t in masked.graph.initializer}
    weight = refit.weight.copy()
    weight[:, [1, 3]] = 0
    bias = numpy_helper.to_array(inits[consumer.input[2]]) + refit.bias
    inits[consumer.input[1]].CopyFrom(numpy_helper.from_array(weight, consumer.input[1]))
    inits[consumer.input[2]].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), consumer.input[2]))
    np.testing.assert_allclose(_run(pruned, data), _run(masked, data), rtol=1e-4, atol=1e-5)


def test_unsupported_consumers_are_not_refit():
    """Depthwise and transposed convs keep mean compensation (no refit entry)."""
    g = G(shape=(3, 6, 6))
    h = g.op("Relu", g.conv(g.x, 4))
    y = g.conv_t(g.conv(h, 4, group=4), 3)
    model = g.model(y)
    am = analyze_model(model)
    an = am.analysis
    gid = int(an.ch_group[an.maps[h].ids[0]])
    refits = refit_consumers(an, am.ident, channel_keep(an, {gid: np.array([0, 1])}),
                             {"x": _data(model)})
    assert refits == {}


def test_non_finite_activations_offer_no_refit():
    """An Inf weight upstream (a corrupted file ORT still runs) must not crash the solve."""
    model, h = _model("conv", duplicate=False, seed=6)
    first = model.graph.initializer[0]
    weight = numpy_helper.to_array(first).copy()
    weight.flat[0] = np.inf
    first.CopyFrom(numpy_helper.from_array(weight, first.name))
    am = analyze_model(model)
    an = am.analysis
    gid = int(an.ch_group[an.maps[h].ids[0]])
    keep = channel_keep(an, {gid: np.array([0, 1])})
    assert refit_consumers(an, am.ident, keep, {"x": _data(model)}) == {}


def test_layers_too_wide_to_solve_keep_mean_compensation(monkeypatch):
    import onnxprune.deploy.refit as refit_mod
    model, h = _model("conv", duplicate=False)
    data = _data(model)
    assert _prune(model, h, data, [0, 1], refit=True, compensate=False)[1]
    monkeypatch.setattr(refit_mod, "MAX_KEPT_COLUMNS", 2 * 9 - 1)  # 2 kept channels x 3x3
    assert _prune(model, h, data, [0, 1], refit=True, compensate=False)[1] == {}


def test_guard_ships_the_best_candidate():
    model, _ = _model("conv", duplicate=False, seed=4)
    data = _data(model, n=64)
    result = onnxprune.prune(model, {"x": data}, ratio=0.5, metric="l1", refit=True, latency=False)
    deploy = result.report["deploy"]
    assert set(deploy["values"]) == {"compensated", "plain", "refit"}
    assert deploy["values"][deploy["chosen"]] == max(deploy["values"].values())
    assert "16 held-out" in deploy["guard_samples"]


def test_no_compensation_ships_plain_removal_without_a_guard():
    model, _ = _model("conv", duplicate=False, seed=5)
    # uniform: the global allocation has the uniform one as a guarded fallback (issue 15)
    result = onnxprune.prune(model, {"x": _data(model)}, ratio=0.5, metric="l1",
                             compensate=False, refit=False, latency=False, uniform=True)
    assert result.report["deploy"] == {"chosen": "plain", "allocation": "uniform"}


def test_refit_solves_the_float64_ridge_far_from_zero(monkeypatch):
    """Activations whose mean dwarfs their spread (300 against about 1): the statistics are
    float32 per chunk, and only their shift by the layer's first means keeps the covariance
    from cancelling. The refit must be the ridge solution computed in float64 from the rows."""
    import onnxprune.deploy.refit as refit_mod
    from onnxprune.scoring.site_stats import means_and_activations
    monkeypatch.setattr(refit_mod, "LAMBDAS", (1e-4,))  # one ridge: no fold to choose it
    model, h = _model("matmul", duplicate=False, seed=5)
    am = analyze_model(model)
    an = am.analysis
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    w1 = inits[model.graph.node[0].input[1]]
    x0 = np.linalg.pinv(w1.T) @ np.ones(w1.shape[1])  # x0 @ w1 = 1: no channel dies in the Relu
    data = (_data(model, n=48) + 300 * x0).astype(np.float32)
    keep_in = np.array([False, True, False, True])
    keep = channel_keep(an, {int(an.ch_group[an.maps[h].ids[0]]): np.flatnonzero(keep_in)})
    (fit,) = refit_consumers(an, am.ident, keep, {"x": data}).values()
    acts = means_and_activations(an, am.ident, {"x": data})[1]
    p = np.concatenate([c[h] for _, _, c in acts.chunks]).reshape(-1, 4).astype(np.float64)
    consumer = next(n for n in model.graph.node if n.input[0] == h)
    w = inits[consumer.input[1]]
    k, r = p[:, keep_in], p[:, ~keep_in] @ w[~keep_in]
    kc, rc = k - k.mean(0), r - r.mean(0)
    cov = kc.T @ kc / len(k)
    d = np.linalg.solve(cov + 1e-4 * np.trace(cov) / len(cov) * np.eye(len(cov)), kc.T @ rc / len(k))
    np.testing.assert_allclose(fit.weight[keep_in] - w[keep_in], d, rtol=1e-3, atol=1e-4 * np.abs(d).max())
    np.testing.assert_allclose(fit.bias, r.mean(0) - k.mean(0) @ d, rtol=1e-3, atol=1e-3)


def test_refit_reads_the_activations_the_means_pass_kept():
    """One pass serves the means and the refit: the same refit as from the refit's own pass,
    and nothing kept when the activations are over the limit."""
    from onnxprune.scoring.site_stats import means_and_activations
    model, h = _model("conv", duplicate=False, seed=2)
    data = _data(model, n=50)
    am = analyze_model(model)
    an = am.analysis
    keep = channel_keep(an, {int(an.ch_group[an.maps[h].ids[0]]): np.array([0, 2])})
    means, acts = means_and_activations(an, am.ident, {"x": data})
    assert acts is not None and acts.chunks[-1][1] == 50
    np.testing.assert_allclose(means[h], site_means(an, am.ident, {"x": data})[h], rtol=1e-12)
    own = refit_consumers(an, am.ident, keep, {"x": data})
    kept = refit_consumers(an, am.ident, keep, {"x": data}, activations=acts)
    assert own.keys() == kept.keys() and own
    for node in own:
        np.testing.assert_allclose(kept[node].weight, own[node].weight, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(kept[node].bias, own[node].bias, rtol=1e-5, atol=1e-6)
    assert means_and_activations(an, am.ident, {"x": data}, max_bytes=1000)[1] is None


def test_single_threaded_blas_restores_the_thread_count():
    from onnxprune.runtime import _openblas_threads, single_threaded_blas
    api = _openblas_threads()
    before = api[0]() if api else None
    with single_threaded_blas():
        assert api is None or api[0]() == 1
    assert api is None or api[0]() == before
