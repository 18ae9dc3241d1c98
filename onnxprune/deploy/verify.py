"""Stage `verify`: run the original and the pruned model side by side on held-out inputs,
and judge each output by what it is (README, The quality gate).

Every output gets a kind, read from its dtype and shape, and one agreement figure in [0, 1]
measured the way that kind is used:

| kind | looks like | agreement |
|---|---|---|
| `integer` | an integer or bool output (a label, an index) | share of elements exactly equal |
| `class_scores` | float [N, C], C > 1 (probabilities, logits) | top-1 agreement |
| `sequence` | float [N, T, C] or [T, N, C] | samples whose top-1 sequence is identical at every position |
| `detection` | float [N, boxes, 5 + classes], boxes >= 8 x attributes (a long last axis is a sequence's classes) | overlap of the top-k boxes |
| `score_map` | float [N, 1, H, W] | overlap of the top-k positions |
| `regression` | any other float output | mean cosine per sample (clipped at 0) |

Top-k (detection, score maps): per sample, the original's k highest-scoring entries, k = 1%
of them (at least 1, at most 100), i.e. the entries above the original's 99th percentile;
the figure is |top-k(original) & top-k(pruned)| / k, averaged over samples. A detection
box's score is objectness x best class score (the YOLO layout: x, y, w, h, objectness,
class scores). Non-finite values in either model's output make its agreement 0."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator, Literal, Mapping, Sequence

import numpy as np
import onnx

from ..runtime import batch_axes, make_session, run_chunks, tensor_outputs

OutputKind = Literal["integer", "class_scores", "sequence", "detection", "score_map", "regression"]
MEASURES: dict[str, str] = {"integer": "exact agreement", "class_scores": "top-1 agreement",
                            "sequence": "whole-sequence top-1 agreement",
                            "detection": "top-k box overlap", "score_map": "top-k position overlap",
                            "regression": "cosine"}
TOPK_SHARE, TOPK_MAX = 0.01, 100


@dataclass
class OutputFidelity:
    name: str
    shape_ok: bool
    max_abs_diff: float | None  # None where either output is not finite
    cosine: float | None  # float outputs only, both finite
    top1_agreement: float | None  # class scores and sequences
    kind: str = "regression"
    agreement: float = 0.0  # the kind's figure, in [0, 1]; what the quality gate reads
    measure: str = "cosine"
    relative_error: float | None = None  # ||pruned - original|| / ||original|| (float outputs)
    note: str | None = None  # why agreement is 0 (shape, non-finite values)

    def to_json(self) -> dict:
        return asdict(self)


def output_kind(arr: np.ndarray) -> OutputKind:
    """What an output is, from its dtype and shape (the table above)."""
    if arr.dtype.kind in "iub":
        return "integer"
    if arr.dtype.kind != "f":
        return "regression"
    shape = arr.shape
    if len(shape) == 2 and shape[1] > 1:
        return "class_scores"
    if len(shape) == 3:  # [N, boxes, 5 + classes] (YOLOX, v5); a long last axis is classes:
        boxes, attrs = shape[1], shape[2]  # a CTC head's [N, T, 8210] is a sequence
        return "detection" if 6 <= attrs and boxes >= 8 * attrs else "sequence"
    if len(shape) == 4 and shape[1] == 1 and shape[2] * shape[3] > 1:
        return "score_map"
    return "regression"


def run_model(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], device: str = "cpu",
              batch: int = 64) -> list[np.ndarray]:
    """The model's tensor outputs (`tensor_output_names`, in graph order) on `feeds`, the
    samples on axis 0 (a sequence-first output [T, N, C] comes back as [N, T, C])."""
    sess = make_session(model, device)
    names = tensor_outputs(sess)
    axes = batch_axes(sess, feeds, names)
    chunks = [outs for _, _, outs in run_chunks(sess, feeds, batch, names, axes=axes)]
    return [np.concatenate(parts) for parts in zip(*chunks)]


def run_batches(sess, feeds: Mapping[str, np.ndarray], batch: int = 64,
                outputs: list[str] | None = None) -> Iterator[list[np.ndarray]]:
    """The session's outputs, chunk by chunk (a fixed batch's own size; runtime.run_chunks)."""
    for _, _, outs in run_chunks(sess, feeds, batch, outputs):
        yield outs


def tensor_output_names(model: onnx.ModelProto) -> list[str]:
    """Outputs that are tensors; the others (a ZipMap's sequence of maps) are not compared."""
    return [o.name for o in model.graph.output if o.type.WhichOneof("value") == "tensor_type"]


def compare(names: Sequence[str], want: Sequence[np.ndarray], got: Sequence[np.ndarray]
            ) -> list[OutputFidelity]:
    return [compare_one(n, np.asarray(w), np.asarray(g)) for n, w, g in zip(names, want, got)]


def compare_one(name: str, want: np.ndarray, got: np.ndarray) -> OutputFidelity:
    kind = output_kind(want)
    measure = MEASURES[kind]
    if want.shape != got.shape:
        return OutputFidelity(name, False, None, None, None, kind, 0.0, measure,
                              note=f"shape {list(got.shape)} != original {list(want.shape)}")
    if kind == "integer":
        agree = float((want == got).mean()) if want.size else 1.0
        diff = float(np.abs(want.astype(np.float64) - got.astype(np.float64)).max()) if want.size else 0.0
        return OutputFidelity(name, True, diff, None, None, kind, agree, measure)
    w64, g64 = want.astype(np.float64), got.astype(np.float64)
    if not (np.isfinite(w64).all() and np.isfinite(g64).all()):
        which = "original" if not np.isfinite(w64).all() else "pruned"
        return OutputFidelity(name, True, None, None, None, kind, 0.0, measure,
                              note=f"non-finite values in the {which} model's output")
    cos, rel = _cosine(w64, g64), _relative_error(w64, g64)
    top1 = _top1(w64, g64) if kind in ("class_scores", "sequence") else None
    if kind == "sequence":  # per position, blanks and padding would dominate: a CTC head
        agree = _same_sequence(w64, g64)  # that misreads one character in five reads wrong
    elif top1 is not None:
        agree = top1
    elif kind == "regression":
        agree = max(0.0, cos)
    elif not want.size:
        agree = 1.0
    else:
        agree = _topk_overlap(*((_box_scores(w64), _box_scores(g64)) if kind == "detection"
                                else (w64, g64)))
    return OutputFidelity(name, True, float(np.abs(w64 - g64).max()) if want.size else 0.0,
                          cos, top1, kind, float(agree), measure, rel)


def _cosine(w: np.ndarray, g: np.ndarray) -> float:
    """Mean per-sample cosine; a sample where both are zero agrees, one zero disagrees."""
    if not w.size:
        return 1.0
    w2, g2 = w.reshape(len(w), -1), g.reshape(len(g), -1)
    nw, ng = np.linalg.norm(w2, axis=1), np.linalg.norm(g2, axis=1)
    num = (w2 * g2).sum(1)
    cos = np.where((nw > 0) & (ng > 0), num / np.maximum(nw * ng, 1e-300),
                   np.where((nw == 0) & (ng == 0), 1.0, 0.0))
    return float(cos.mean())


def _relative_error(w: np.ndarray, g: np.ndarray) -> float:
    norm = np.linalg.norm(w)
    diff = np.linalg.norm(w - g)
    return float(diff / norm) if norm > 0 else (0.0 if diff == 0 else float("inf"))


def _top1(w: np.ndarray, g: np.ndarray) -> float:
    """Top-1 agreement along the last (class) axis at every other position."""
    return float((w.argmax(-1) == g.argmax(-1)).mean()) if w.size else 1.0


def _same_sequence(w: np.ndarray, g: np.ndarray) -> float:
    """Samples whose argmax along the last axis agrees at every position."""
    if not w.size:
        return 1.0
    same = w.argmax(-1) == g.argmax(-1)
    return float(same.reshape(len(same), -1).all(axis=1).mean())


def _box_scores(out: np.ndarray) -> np.ndarray:
    """[N, boxes]: objectness x best class score, boxes on the longer non-batch axis."""
    boxes = out if out.shape[1] >= out.shape[2] else out.transpose(0, 2, 1)
    return boxes[..., 4] * boxes[..., 5:].max(-1)


def _topk_overlap(want: np.ndarray, got: np.ndarray) -> float:
    """Mean over samples of |top-k(want) & top-k(got)| / k, entries flattened per sample."""
    w2, g2 = want.reshape(len(want), -1), got.reshape(len(got), -1)
    k = int(min(TOPK_MAX, max(1, round(TOPK_SHARE * w2.shape[1]))))
    top_w = np.argpartition(-w2, k - 1, axis=1)[:, :k]
    top_g = np.argpartition(-g2, k - 1, axis=1)[:, :k]
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(top_w, top_g)]))


def class_output(outputs: Sequence[np.ndarray]) -> int | None:
    """The index of the output accuracy is measured on: the first class-score output, else the
    first integer output holding one label per sample, else None."""
    kinds = [output_kind(o) for o in outputs]
    if "class_scores" in kinds:
        return kinds.index("class_scores")
    for i, (o, k) in enumerate(zip(outputs, kinds)):
        if k == "integer" and o.ndim == 1:
            return i
    return None


def accuracy(outputs: Sequence[np.ndarray], labels: np.ndarray, index: int | None = None
             ) -> float | None:
    """Accuracy of the class output (`class_output`) against `labels`; None without one."""
    index = class_output(outputs) if index is None else index
    if index is None:
        return None
    out = outputs[index]
    pred = out.argmax(-1) if out.dtype.kind == "f" else out
    return float((pred.reshape(len(labels), -1)[:, 0] == labels).mean()) if pred.size else 0.0


def verdict(fidelities: Sequence[OutputFidelity], min_fidelity: float) -> dict:
    """The quality gate: the worst output's agreement against `min_fidelity`."""
    worst = min(fidelities, key=lambda f: f.agreement) if fidelities else None
    figure = worst.agreement if worst else 1.0
    return {"verdict": "passed" if figure >= min_fidelity else "failed",
            "fidelity": figure, "min_fidelity": min_fidelity,
            "worst_output": worst.name if worst else None,
            "measure": worst.measure if worst else None,
            "reason": worst.note if worst else None}
