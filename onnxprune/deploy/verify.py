"""Stage `verify`: run the original and the pruned model side by side on held-out inputs.

Per output: max abs difference, mean cosine similarity per sample, and top-1 agreement
when the output looks like class scores (rank 2, more than one column)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator, Mapping

import numpy as np
import onnx

from ..runtime import batch_axes, make_session, run_chunks, tensor_outputs


@dataclass
class OutputFidelity:
    name: str
    shape_ok: bool
    max_abs_diff: float
    cosine: float
    top1_agreement: float | None

    def to_json(self) -> dict:
        return asdict(self)


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


def compare(names: list[str], want: list[np.ndarray], got: list[np.ndarray]) -> list[OutputFidelity]:
    result = []
    for name, w, g in zip(names, want, got):
        if w.shape != g.shape:
            result.append(OutputFidelity(name, False, float("inf"), 0.0, None))
            continue
        w64, g64 = w.astype(np.float64).reshape(len(w), -1), g.astype(np.float64).reshape(len(g), -1)
        num = (w64 * g64).sum(1)
        den = np.linalg.norm(w64, axis=1) * np.linalg.norm(g64, axis=1)
        cos = np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)
        top1 = None
        if w.ndim == 2 and w.shape[1] > 1:
            top1 = float((w.argmax(1) == g.argmax(1)).mean())
        result.append(OutputFidelity(name, True, float(np.abs(w64 - g64).max()) if w.size else 0.0,
                                     float(cos.mean()), top1))
    return result


def accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    return float((outputs[0].argmax(-1) == labels).mean())
