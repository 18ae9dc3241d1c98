"""The invariant ORT(masked original) == ORT(pruned) on randomly generated graphs.

Graphs come from `graphgen.models()`: small CNN/MLP graphs built from conv, norm,
activation, residual, concat/split/slice, depthwise/grouped conv, SE gate, pooling,
Pad/Resize, NHWC segments, heads and barriers, at opsets 11/13/17/18.
A failure shrinks to a minimal model, shown in the hypothesis notes as ONNX text; save
it under tests/regressions/ (see test_regressions.py).
"""
from __future__ import annotations

import os

import graphgen
import numpy as np
import onnx
import pytest
from exactness import check_masked_equals_pruned, random_feeds, session
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from onnxprune.compiler.analysis import Analysis

# Generation draws many values and each example runs ORT several times.
QUICK = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LONG = settings(QUICK, max_examples=2000)


def check_exact(model: onnx.ModelProto, seed: int, *, trials: int = 2, batch: int = 3) -> Analysis:
    """exactness.check_masked_equals_pruned with an absolute floor of 1e-6 on the error:
    random graphs often die (Relu, Min, masks keeping a unit or two) so that an output is
    ~1e-4 made of a bias and features that cancel, and its float32 rounding (~1e-8 absolute)
    is then a "relative error" above 1e-4. Wrong slicing moves outputs by the size of the
    activations, far above the floor (9 deliberately broken cores were all caught with it).
    A model without a prunable group passes if every group says why."""
    return check_masked_equals_pruned(model, seed=seed, trials=trials, batch=batch, atol=1e-6,
                                      require_prunable=False)


def check_model(model: onnx.ModelProto, seed: int) -> None:
    note(graphgen.describe(model))
    if save := os.environ.get("ONNXPRUNE_SAVE_FAILING"):
        # hypothesis replays the shrunk example last: the file ends up holding it
        try:
            return _check(model, seed)
        except BaseException:
            onnx.save(model, save)
            raise
    _check(model, seed)


def _check(model: onnx.ModelProto, seed: int) -> None:
    onnx.checker.check_model(model, full_check=True)
    check_exact(model, seed)


@settings(QUICK, max_examples=100)
@given(graphgen.models(max_blocks=10))
def test_generated_models_are_valid(model):
    """The generator itself: every model passes the full checker and runs in ORT."""
    note(graphgen.describe(model))
    onnx.checker.check_model(model, full_check=True)
    sess = session(model)
    outs = sess.run(None, random_feeds(sess, np.random.default_rng(0), 2))
    for out, info in zip(outs, model.graph.output):
        dims = [d.dim_value for d in info.type.tensor_type.shape.dim[1:]]
        assert list(out.shape) == [2, *dims], (info.name, out.shape, dims)


@QUICK
@given(graphgen.models(), st.integers(0, 2**16))
def test_masked_equals_pruned_on_random_graphs(model, seed):
    check_model(model, seed)


@pytest.mark.slow
@LONG
@given(graphgen.models(max_blocks=10), st.integers(0, 2**16))
def test_masked_equals_pruned_on_many_random_graphs(model, seed):
    check_model(model, seed)
