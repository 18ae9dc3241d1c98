"""Value functions v(S): how good the model is with only coalition S kept.

Higher is better. The scoring engine runs the (masked) model for K coalitions on
N calibration samples and hands over, for every model output, an array
``[K, N, ...]``. A value function turns them into *per-sample* values ``[K, N]``
(float64) so that estimators can aggregate as they see fit (mean, or
mean + 2·std as in Ancona et al.). ``prepare`` is called once with the original
model's outputs (each ``[N, ...]``) and the labels, so everything that depends
only on the reference (its log-softmax, its variance, its norms) is computed once.

All arithmetic is in float64 whatever the output dtype (float16 outputs would
otherwise overflow when squared). Coalitions are processed in blocks (vectorized
over the block, no Python loop per coalition) whose float64 copy stays under
``_BLOCK_FLOATS`` values, so memory does not grow with K; a block computes the
same numbers, bit for bit, as one coalition at a time.
Non-finite model outputs are not repaired: they propagate into the values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from onnxprune.errors import OnnxPruneError

__all__ = [
    "VALUE_FUNCTIONS",
    "Accuracy",
    "CallableValue",
    "Cosine",
    "NegCrossEntropy",
    "NegKL",
    "NegNMSE",
    "ValueFunction",
    "default_value_function",
    "make_value_function",
]

Outputs = Sequence[np.ndarray]


@runtime_checkable
class ValueFunction(Protocol):
    """What the scoring engine needs from a value function."""

    name: str
    needs_labels: bool

    def prepare(self, reference_outputs: list[np.ndarray], labels: np.ndarray | None) -> None: ...

    def __call__(self, outputs: list[np.ndarray]) -> np.ndarray: ...


# ----------------------------------------------------------------------------
# helpers


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """Stable log-softmax over the last axis (shift by the max first)."""
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _looks_like_probabilities(x: np.ndarray) -> bool:
    """True when every row over the last axis is a distribution (model ends in Softmax).

    Softmax of probabilities would squash every difference, so such outputs are
    used as probabilities directly.
    """
    if x.size == 0 or x.shape[-1] < 2:
        return False
    return bool(np.all((x >= 0) & (x <= 1)) and np.allclose(x.sum(axis=-1), 1.0, atol=1e-3))


_PROB_FLOOR = 1e-12  # log(0) guard when the outputs are probabilities


def _log_probs(x: np.ndarray, probabilities: bool) -> np.ndarray:
    if probabilities:
        return np.log(np.maximum(x, _PROB_FLOOR))
    return _log_softmax(x)


def _check_outputs(outputs: Outputs, reference: list[np.ndarray], count: int | None = None) -> int:
    """K, after checking each output is [K, *reference shape]. Engine bugs -> ValueError."""
    if reference is None:
        raise RuntimeError("value function used before prepare()")
    used = len(reference) if count is None else count
    if len(outputs) < used:
        raise ValueError(f"expected {used} model output(s), got {len(outputs)}")
    k = outputs[0].shape[0] if outputs[0].ndim else -1
    for i in range(used):
        if tuple(outputs[i].shape) != (k, *reference[i].shape):
            raise ValueError(f"output {i} has shape {outputs[i].shape}, expected [K, *{reference[i].shape}]")
    return int(k)


_BLOCK_FLOATS = 1 << 21  # float64 values of one block of coalitions (16 MB)


def _per_block(k: int, n: int, floats_per_coalition: int,
               fn: Callable[[slice], np.ndarray]) -> np.ndarray:
    """Stack fn(block) -> [b, N] over blocks of coalitions into [K, N] float64."""
    values = np.empty((k, n), dtype=np.float64)
    step = max(1, _BLOCK_FLOATS // max(1, floats_per_coalition))
    for start in range(0, k, step):
        block = slice(start, min(k, start + step))
        values[block] = fn(block)
    return values


def _mean_over_sample(x: np.ndarray) -> np.ndarray:
    """[B, N, ...] -> [B, N]: mean over everything but the coalition and sample axes."""
    return x.reshape(*x.shape[:2], -1).mean(axis=2) if x.ndim > 2 else x


def _first_output_classes(ref: np.ndarray, who: str) -> int:
    if ref.ndim != 2 or ref.shape[1] < 2:
        raise OnnxPruneError(
            f"value function '{who}' needs the first model output to be class scores "
            f"[N, classes], got shape {tuple(ref.shape)}"
        )
    return int(ref.shape[1])


def _check_labels(labels: np.ndarray | None, n: int, classes: int, who: str) -> np.ndarray:
    if labels is None:
        raise OnnxPruneError(
            f"value function '{who}' needs labels; "
            "add a 'labels' array to the calibration file"
        )
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise OnnxPruneError(
            f"value function '{who}': "
            f"labels have shape {labels.shape}, expected ({n},)"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise OnnxPruneError(
            f"value function '{who}': class ids must be in [0, {classes - 1}] for a "
            f"model with {classes} classes, got {labels.min()}..{labels.max()}"
        )
    return labels


# ----------------------------------------------------------------------------
# fidelity to the original model (no labels needed)


class NegKL:
    """-KL(reference || pruned) of the softmax of the first output's last axis.

    0 for the original model, negative otherwise. Extra axes between the sample
    axis and the class axis (e.g. sequence positions) are averaged. If the
    reference output already is a distribution (the graph ends in Softmax) it is
    used as is (``probabilities=None`` detects this in ``prepare``; pass
    True/False to force). KL is clamped at 0 so rounding cannot make a pruned
    model look better than the original.
    """

    name = "neg_kl"
    needs_labels = False

    def __init__(self, probabilities: bool | None = None) -> None:
        self._requested = probabilities
        self.probabilities = bool(probabilities)  # the mode in use, settled by prepare()
        self._ref: list[np.ndarray] | None = None

    def prepare(self, reference_outputs: list[np.ndarray], labels: np.ndarray | None) -> None:
        ref = _f64(reference_outputs[0])
        if ref.ndim < 2 or ref.shape[-1] < 2:
            raise OnnxPruneError(
                "value function 'neg_kl' needs a class axis on the first model output, "
                f"got shape {tuple(ref.shape)}"
            )
        auto = self._requested is None
        self.probabilities = _looks_like_probabilities(ref) if auto else bool(self._requested)
        self._ref = [reference_outputs[0]]
        self._log_p = _log_probs(ref, self.probabilities)
        self._p = np.exp(self._log_p)

    def __call__(self, outputs: list[np.ndarray]) -> np.ndarray:
        k = _check_outputs(outputs, self._ref, count=1)
        return _per_block(k, self._p.shape[0], self._p.size,
                          lambda b: -self._kl(_f64(outputs[0][b])))

    def _kl(self, out: np.ndarray) -> np.ndarray:
        """out [B, N, ...] -> KL per coalition and sample [B, N]."""
        log_q = _log_probs(out, self.probabilities)
        with np.errstate(invalid="ignore"):
            terms = np.where(self._p > 0, self._p * (self._log_p - log_q), 0.0)
        return np.maximum(_mean_over_sample(terms.sum(axis=-1)), 0.0)


class NegNMSE:
    """-mean over outputs of MSE(pruned, reference) / scale(reference).

    Each output's scale is the variance of the reference over all its elements and
    samples, so outputs of different magnitude weigh equally. A constant
    reference has no variance: the scale is then floored at 1e-6 · E[ref²], and
    is 1 (plain MSE) for an identically zero reference.

    `class_boxes`: indices of outputs the graph reads as YOLOv8's decoded
    [N, 4 + classes, boxes] (verify.graph_kinds). One scale over pixel coordinates and
    probabilities would rank units by the boxes alone, and mostly by boxes nothing
    detects. Such an output is two halves: its class probabilities (NMSE), and its box
    coordinates with each box's squared error weighted by the reference's best class
    probability for it (what survives the application's confidence threshold), scaled
    by the so-weighted variance.
    """

    name = "neg_nmse"
    needs_labels = False

    def __init__(self, class_boxes: Sequence[int] = ()) -> None:
        self._ref: list[np.ndarray] | None = None
        self.class_boxes = frozenset(class_boxes)
        # what the report calls it (`name` stays the registry's key)
        self.label = "neg_nmse (YOLOv8 classes and boxes apart)" if class_boxes else self.name

    def prepare(self, reference_outputs: list[np.ndarray], labels: np.ndarray | None) -> None:
        self._ref = [_f64(r) for r in reference_outputs]
        self._scale = [self._scale_of(r) for r in self._ref]
        self._boxes = {i: _BoxHalves(self._ref[i]) for i in self.class_boxes
                       if i < len(self._ref) and _BoxHalves.fits(self._ref[i])}

    @staticmethod
    def _scale_of(ref: np.ndarray) -> float:
        mean_sq = float(np.mean(ref * ref)) if ref.size else 0.0
        if mean_sq == 0.0 or not np.isfinite(mean_sq):
            return 1.0
        return max(float(np.var(ref)), 1e-6 * mean_sq)

    def __call__(self, outputs: list[np.ndarray]) -> np.ndarray:
        k = _check_outputs(outputs, self._ref)
        size = sum(r.size for r in self._ref)
        return _per_block(k, self._ref[0].shape[0], size, lambda b: -self._nmse(outputs, b))

    def _nmse(self, outputs: Outputs, b: slice) -> np.ndarray:
        total: np.ndarray | float = 0.0
        for i, (out, ref, scale) in enumerate(zip(outputs, self._ref, self._scale)):
            if i in self._boxes:
                total += self._boxes[i].nmse(_f64(out[b]))
                continue
            diff = _f64(out[b]) - ref
            total += _mean_over_sample(diff * diff) / scale
        return total / len(self._ref)


class _BoxHalves:
    """NegNMSE of one YOLOv8-style output: boxes on the longer non-batch axis (as the gate
    reads them), 4 coordinates then class probabilities on the other."""

    @staticmethod
    def fits(ref: np.ndarray) -> bool:
        return ref.ndim == 3 and min(ref.shape[1:]) > 4

    def __init__(self, ref: np.ndarray) -> None:
        self.flip = ref.shape[1] < ref.shape[2]
        rows = ref.transpose(0, 2, 1) if self.flip else ref            # [N, boxes, 4 + C]
        self.box, self.cls = rows[..., :4], rows[..., 4:]
        self.weight = np.maximum(self.cls.max(-1), 0.0) + 1e-12        # [N, boxes]
        self.norm = self.weight.sum(-1)                                # [N]
        self.cls_scale = NegNMSE._scale_of(self.cls)
        w = np.broadcast_to(self.weight[..., None], self.box.shape)
        mean = np.average(self.box, weights=w)
        spread = float(np.average((self.box - mean) ** 2, weights=w))
        self.box_scale = max(spread, 1e-6 * float(np.mean(self.box ** 2))) or 1.0

    def nmse(self, out: np.ndarray) -> np.ndarray:
        """[B, N, ...] -> [B, N]: the mean of the two halves' normalized errors."""
        rows = out.transpose(0, 1, 3, 2) if self.flip else out
        cls = _mean_over_sample((rows[..., 4:] - self.cls) ** 2) / self.cls_scale
        err = ((rows[..., :4] - self.box) ** 2).mean(-1)                # [B, N, boxes]
        box = (err * self.weight).sum(-1) / self.norm / self.box_scale
        return (cls + box) / 2


class Cosine:
    """Mean over outputs of the cosine similarity of each sample's flattened output.

    1 for the original model. Two zero vectors count as identical (1); a zero
    vector against a non-zero one as orthogonal (0).
    """

    name = "cosine"
    needs_labels = False

    def __init__(self) -> None:
        self._ref: list[np.ndarray] | None = None

    def prepare(self, reference_outputs: list[np.ndarray], labels: np.ndarray | None) -> None:
        self._ref = [_f64(r) for r in reference_outputs]
        self._flat = [r.reshape(r.shape[0], -1) for r in self._ref]
        self._norm = [np.linalg.norm(f, axis=1) for f in self._flat]

    def __call__(self, outputs: list[np.ndarray]) -> np.ndarray:
        k = _check_outputs(outputs, self._ref)
        size = sum(r.size for r in self._ref)
        return _per_block(k, self._ref[0].shape[0], size, lambda b: self._cosine(outputs, b))

    def _cosine(self, outputs: Outputs, b: slice) -> np.ndarray:
        total: np.ndarray | float = 0.0
        for out, ref, ref_norm in zip(outputs, self._flat, self._norm):
            block = _f64(out[b])
            flat = block.reshape(len(block), *ref.shape)
            norm = np.linalg.norm(flat, axis=2)
            dot = np.einsum("bij,ij->bi", flat, ref)
            denom = norm * ref_norm
            with np.errstate(invalid="ignore", divide="ignore"):
                cos = np.where(denom > 0, dot / denom, np.where((norm == 0) & (ref_norm == 0), 1.0, 0.0))
            total += np.clip(cos, -1.0, 1.0)
        return total / len(self._ref)


# ----------------------------------------------------------------------------
# task metrics (labels needed)


class NegCrossEntropy:
    """log-probability of the true class under the first output ([N, classes]).

    The first output is taken as logits unless the reference output is already a
    distribution (detected as in :class:`NegKL`; ``probabilities`` forces it).
    """

    name = "neg_cross_entropy"
    needs_labels = True

    def __init__(self, probabilities: bool | None = None) -> None:
        self._requested = probabilities
        self.probabilities = bool(probabilities)  # the mode in use, settled by prepare()
        self._ref: list[np.ndarray] | None = None

    def prepare(self, reference_outputs: list[np.ndarray], labels: np.ndarray | None) -> None:
        ref = reference_outputs[0]
        classes = _first_output_classes(ref, self.name)
        self._labels = _check_labels(labels, ref.shape[0], classes, self.name)
        auto = self._requested is None
        self.probabilities = _looks_like_probabilities(_f64(ref)) if auto else bool(self._requested)
        self._ref = [ref]

    def __call__(self, outputs: list[np.ndarray]) -> np.ndarray:
        k = _check_outputs(outputs, self._ref, count=1)
        rows = np.arange(self._labels.shape[0])

        def value(b: slice) -> np.ndarray:
            return _log_probs(_f64(outputs[0][b]), self.probabilities)[:, rows, self._labels]

        return _per_block(k, rows.shape[0], self._ref[0].size, value)


class Accuracy:
    """1.0 where the first output's argmax is the label, else 0.0 (ties: lowest index)."""

    name = "accuracy"
    needs_labels = True

    def __init__(self) -> None:
        self._ref: list[np.ndarray] | None = None

    def prepare(self, reference_outputs: list[np.ndarray], labels: np.ndarray | None) -> None:
        ref = reference_outputs[0]
        classes = _first_output_classes(ref, self.name)
        self._labels = _check_labels(labels, ref.shape[0], classes, self.name)
        self._ref = [ref]

    def __call__(self, outputs: list[np.ndarray]) -> np.ndarray:
        _check_outputs(outputs, self._ref, count=1)
        return (np.argmax(outputs[0], axis=-1) == self._labels[None, :]).astype(np.float64)


# ----------------------------------------------------------------------------
# user-supplied


UserValueFn = Callable[[list[np.ndarray], list[np.ndarray], "np.ndarray | None"], np.ndarray]


class CallableValue:
    """Wraps ``f(outputs, reference, labels) -> [K, N]`` from the Python API.

    ``outputs`` are the raw arrays [K, N, ...], ``reference`` the original model's
    [N, ...], ``labels`` int64 [N] or None. The result is checked for shape and
    converted to float64; a wrong shape is the user's error, reported on one line.
    Exceptions raised inside ``f`` keep their traceback.
    """

    def __init__(self, fn: UserValueFn, name: str | None = None, needs_labels: bool = False) -> None:
        if not callable(fn):
            raise OnnxPruneError(f"value function must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "custom")
        self.needs_labels = needs_labels
        self._ref: list[np.ndarray] | None = None
        self._labels: np.ndarray | None = None

    def prepare(self, reference_outputs: list[np.ndarray], labels: np.ndarray | None) -> None:
        if self.needs_labels and labels is None:
            raise OnnxPruneError(
                f"value function '{self.name}' needs labels; "
                "add a 'labels' array to the calibration file"
            )
        self._ref = list(reference_outputs)
        self._labels = labels

    def __call__(self, outputs: list[np.ndarray]) -> np.ndarray:
        k = _check_outputs(outputs, self._ref)
        n = self._ref[0].shape[0]
        result = self.fn(list(outputs), self._ref, self._labels)
        try:
            values = np.asarray(result, dtype=np.float64)
        except (TypeError, ValueError):
            raise OnnxPruneError(
                f"value function '{self.name}' returned {type(result).__name__}, "
                f"expected a numeric array of shape ({k}, {n})"
            ) from None
        if values.shape != (k, n):
            raise OnnxPruneError(
                f"value function '{self.name}' returned shape {values.shape}, expected "
                f"({k}, {n}) = (coalitions, samples)"
            )
        return values


# ----------------------------------------------------------------------------
# registry


VALUE_FUNCTIONS: dict[str, type] = {
    cls.name: cls for cls in (NegKL, NegNMSE, Cosine, NegCrossEntropy, Accuracy)
}


def make_value_function(name: str) -> ValueFunction:
    """A fresh instance of the named built-in ('-' and case are forgiven)."""
    key = name.strip().lower().replace("-", "_")
    if key not in VALUE_FUNCTIONS:
        raise OnnxPruneError(
            f"unknown value function '{name}'; choose one of "
            f"{', '.join(sorted(VALUE_FUNCTIONS))}"
        )
    return VALUE_FUNCTIONS[key]()


def default_value_function(has_labels: bool, first_output_shape: Sequence[int | str | None],
                           class_boxes: Sequence[int] = ()) -> ValueFunction:
    """The value function used when the user names none. A provisional choice.

    ``first_output_shape`` is the model's first output shape *including* the batch
    axis. Class scores are recognised as rank 2 with a static last dim > 1. Then:
    with labels, negative cross-entropy (the task loss, as in Ancona et al.);
    without, negative KL to the original model. Anything else gets negative
    normalized MSE over all outputs (labels cannot be used there), YOLOv8-style outputs
    (`class_boxes`, indices) read as boxes and classes. Which default
    ranks units best in the low-data regime has not been measured yet; this rule is
    the current best guess and may change when it is.
    """
    shape = tuple(first_output_shape)
    last = shape[-1] if shape else None
    class_scores = len(shape) == 2 and isinstance(last, int) and last > 1
    if class_scores:
        return NegCrossEntropy() if has_labels else NegKL()
    return NegNMSE(class_boxes)
