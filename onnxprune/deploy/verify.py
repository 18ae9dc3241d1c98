"""Stage `verify`: run the original and the pruned model side by side on held-out inputs,
and judge each output by what it is (README, The quality gate).

Every output gets a kind, read from its dtype and shape and from the op that computes it,
and one agreement figure in [0, 1] measured the way that kind is used:

| kind | looks like | agreement |
|---|---|---|
| `integer` | an integer or bool output (a label, an index) | share of elements exactly equal |
| `class_scores` | float [N, C], C > 1 (probabilities, logits) | top-1 agreement |
| `sequence` | float [N, T, C] or [T, N, C] | samples whose top-1 sequence decodes the same (CTC: repeats merged, the blank dropped) |
| `detection` | float [N, boxes, 5 + classes], boxes >= 8 x attributes (a long last axis is a sequence's classes) | overlap of the top-k boxes |
| `class_boxes` | YOLOv8's Concat of 4 box coordinates and a Sigmoid's classes, [N, 4 + classes, boxes] | F1 of the decoded detections against the original's |
| `score_map` | float [N, 1, H, W] | overlap of the top-k entries |
| `probability_map` | a Sigmoid's [N, C, H, W], or its H x W map flattened to [N, H*W, C] | Dice of the entries above 0.5 |
| `features` | float [N, C] or [N, T, C] computed by a normalization, a residual Add or Tanh/Gelu (hidden states, embeddings) | 1 - error / spread per sample |
| `regression` | any other float output (a dense head's flattened box map among them) | mean cosine per sample (clipped at 0); one value per sample: 1 - error / spread over the samples |

The op that computes an output (`graph_kinds`, walking back through shape-only ops) tells
hidden states from class scores, which share a shape: LayerNormalization (one op, or the
legacy exporter's ReduceMean ... Div/Sqrt -> Mul(gamma) -> Add(beta)), a residual Add of two
computed tensors, Tanh or Gelu make `features`. A Sigmoid over a 2-D map makes probabilities
(`probability_map`): [N, C, H, W] (a DBNet text map), or the same flattened by a Reshape that
merges H and W into [N, H*W, C] (PicoDet's class scores); any other rank-3 output so
flattened is a dense head's per-position map, not a sequence (PicoDet's [N, H*W, 32]
box-distribution logits): `regression`. Before these rules PicoDet's eight outputs were judged
as YOLO boxes and as CTC sequences, and the gate failed every prune of it whatever its task F1.
Anything else (Softmax, a Sigmoid over a sequence, MatMul with its bias Add, Gemm, Conv, an
unknown op) keeps the shape rule. `--output-kind NAME=KIND` overrides both
(`OutputFidelity.kind_from` says which decided).

Features: per sample i, error_i = ||pruned_i - original_i|| / ||original_i - m||, m the
original's mean feature vector over all samples and positions, and the figure is the mean of
max(0, 1 - error_i). Centred, because hidden states share a large component every input
has (a LayerNorm's beta, an encoder's common direction): a raw cosine, or an error relative
to the raw norm, passes an output that no longer follows its input. An output collapsed to
the mean scores 0, noise as large as the spread scores 0. The default gate 0.8 asks the
error to stay under a fifth of how much the output varies between inputs: the pruned output
explains about 96% of the original's variance around its mean (R^2 ~ 1 - (1 - figure)^2).
Measured on tests/test_gate_kinds.py's tiny encoder (residual FFN + LayerNorm, [48, 32, 32]):
the refit prune at ratio 0.4 scores 0.988 (relative error 0.011; the shape rule's
whole-sequence top-1 gives it 0.67), a random prune at 0.9 without refit 0.59 (cosine 0.93)
and a sign-flipped first layer 0.37 (cosine 0.84): both fail, where a cosine gate at 0.8
would pass them.

One value per sample ([N], [N, 1]: a voice-activity probability, a score, a regressor's
estimate): a cosine of one number is its sign, which passes any prune that keeps the sign
(Silero VAD's speech probability: cosine 1.000 for a prune whose speech decisions agreed with
the original's on 0.785 of the windows). There the figure is max(0, 1 - ||pruned - original||
/ ||original - its mean||) over the held-out samples (uncentred with one sample or no spread):
the features' rule with the samples as the rows.

Probability maps: an entry is positive above 0.5, and the figure is the Dice coefficient of the
two models' positives pooled over the samples (2 |both| / (|original's| + |pruned's|)), where a
top-k figure would rank near-ties: PicoDet's top 1% of a level's entries reach down to
probability 0.05 (noise), and on a coarse level more than k entries sit near 1.0 (measured:
docs/benchmarks.md, The quality gate on a dense detector). Where the original has no entry
above 0.5 on the held-out samples, the top-k figure stands in.

Decoded detections (`class_boxes`): the output is decoded as Ultralytics' predict does by
default (a box's score is its best class probability, kept above 0.25, NMS per class at IoU
0.7; boxes x, y, w, h on the longer axis) and the figure is the F1 of the pruned model's
detections against the original's (same class, IoU >= 0.5, one-to-one), pooled over the
samples. The top-k figure, which it replaces where the original detects anything, asks only
which anchors are confident: on a YOLOv8n layout detector (docs/benchmarks.md) it passed a
prune at 0.91 whose detections agreed with the original's at F1 0.67 (its task F1 0.74 -> 0.50).

Top-k (detection, score maps): per sample, the original's k highest-scoring entries, k = 1%
of them (at least 1, at most 100), i.e. the entries above the original's 99th percentile;
the figure is |top-k(original) & top-k(pruned)| / k, averaged over samples. A detection
box's score is objectness x best class score (the YOLO layout: x, y, w, h, objectness,
class scores). Non-finite values in either model's output make its agreement 0."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator, Literal, Mapping, NamedTuple, Sequence, get_args

import numpy as np
import onnx

from ..errors import OnnxPruneError
from ..runtime import batch_axes, make_session, run_chunks, tensor_outputs

OutputKind = Literal["integer", "class_scores", "sequence", "detection", "class_boxes",
                     "score_map", "probability_map", "features", "regression"]
OUTPUT_KINDS: tuple[str, ...] = get_args(OutputKind)
MEASURES: dict[str, str] = {"integer": "exact agreement", "class_scores": "top-1 agreement",
                            "sequence": "decoded-sequence agreement",
                            "detection": "top-k box overlap", "class_boxes": "detection F1",
                            "score_map": "top-k entry overlap",
                            "probability_map": "agreement above 0.5",
                            "features": "1 - error / spread", "regression": "cosine"}
SCALAR_MEASURE = "1 - error / spread over samples"  # a regression output of one value per sample
TOPK_SHARE, TOPK_MAX = 0.01, 100
PROBABLE = 0.5  # a probability map's positives: entries above it
DETECTED, NMS_IOU, MATCH_IOU = 0.25, 0.7, 0.5  # YOLOv8 decoding (Ultralytics' defaults), matching
OVERRIDE = "--output-kind"  # OutputFidelity.kind_from of a kind the user set

# Facts about the op that computes an output (module docstring). Ops that only move or retype
# values are walked through; an op here makes its float output features. Score heads (Softmax,
# LogSoftmax, Sigmoid, MatMul/Gemm/Conv and a bias Add) are absent: they keep the shape rule.
SHAPE_ONLY_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast"})
FEATURE_OPS = frozenset({"LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization",
                         "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
                         "Tanh", "Gelu", "FastGelu", "BiasGelu"})
AFFINE_OPS = frozenset({"Add", "Mul"})  # with a constant: a LayerNorm's gamma and beta
NORM_DEPTH = 4  # Div/Mul -> Sqrt -> Add(eps) -> ReduceMean: how far up a decomposed norm's mean is


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
    kind_from: str = "shape"  # "shape", "graph: <what computes it>" or "--output-kind"

    def to_json(self) -> dict:
        return asdict(self)


def output_kind(arr: np.ndarray) -> OutputKind:
    """What an output is, from its dtype and shape alone (the table above)."""
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


def kind_misfit(kind: str, shape: Sequence[int | None]) -> str | None:
    """Why an output of this shape (None: a dim not known) cannot be judged as `kind` (an
    override), else None."""
    rank = len(shape)
    if kind in ("class_scores", "sequence", "score_map", "probability_map", "features") and rank < 2:
        return f"{kind} needs at least [N, C], the output has rank {rank}"
    if kind == "detection" and (rank != 3 or min((d for d in shape[1:] if d is not None),
                                                default=6) < 6):
        return f"detection needs [N, boxes, x y w h objectness classes], the output is {list(shape)}"
    if kind == "class_boxes" and (rank != 3 or min((d for d in shape[1:] if d is not None),
                                                  default=5) < 5):
        return f"class_boxes needs [N, x y w h classes, boxes], the output is {list(shape)}"
    return None


class GraphKind(NamedTuple):
    """What the ops computing an output say it is, for a float output of one of `ranks`."""
    kind: OutputKind
    why: str
    ranks: tuple[int, ...]


def graph_kinds(model: onnx.ModelProto) -> dict[str, GraphKind]:
    """Per graph output that the ops computing it say something about (module docstring):
    hidden states (`features`); a Sigmoid's probabilities over a 2-D map, [N, C, H, W] or
    flattened by a Reshape to [N, H*W, C] (`probability_map`: PicoDet's class scores, a text
    detector's DBNet map); any other flattened H x W map (`regression`: box logits)."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    shapes = _inferred_shapes(model)
    consts, grids = _constants(graph), _grid_reshapes(graph, shapes)
    found = {}
    for out in graph.output:
        if why := _class_boxes(producers.get(out.name), producers, shapes):
            found[out.name] = GraphKind("class_boxes", why, (3,))
            continue
        node, grid, sigmoid = producers.get(out.name), False, False
        while node is not None and node.op_type in SHAPE_ONLY_OPS:
            grid |= node.op_type == "Reshape" and node.output[0] in grids
            node = producers.get(node.input[0])
        if node is not None and (why := _feature_producer(node, producers, consts)):
            found[out.name] = GraphKind("features", f"graph: {why}", (2, 3))
            continue
        while node is not None and node.op_type in SHAPE_ONLY_OPS | {"Sigmoid"}:
            grid |= node.op_type == "Reshape" and node.output[0] in grids
            sigmoid |= node.op_type == "Sigmoid"
            node = producers.get(node.input[0])
        if sigmoid:
            found[out.name] = (GraphKind("probability_map", "graph: Sigmoid over a flattened H x W "
                                         "map", (3,)) if grid else
                               GraphKind("probability_map", "graph: Sigmoid", (4,)))
        elif grid:
            found[out.name] = GraphKind("regression", "graph: a flattened H x W map, not a "
                                        "sequence", (3,))
    return found


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Tensor shapes from ONNX's shape inference (a dim: a number, a name or None), a heavy
    model inferred without its large weights as normalize does; none where inference fails,
    so the shape rule decides."""
    from ..load import is_heavy, split_weights
    try:
        g = onnx.shape_inference.infer_shapes(split_weights(model)[0] if is_heavy(model)
                                              else model).graph
    except (ValueError, onnx.shape_inference.InferenceError):
        return {}
    return {v.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in v.type.tensor_type.shape.dim]
            for v in [*g.value_info, *g.input, *g.output] if v.type.HasField("tensor_type")}


def _grid_reshapes(graph: onnx.GraphProto, shapes: Mapping[str, list]) -> set[str]:
    """Outputs of Reshapes that merge the two spatial axes of a 4-D map, [N, C, H, W] ->
    [N, C, H*W] or [N, H, W, C] -> [N, H*W, C], with neither H nor W known to be 1 (a text
    line's [N, C, 1, W] -> [N, C, W] stays a sequence)."""
    spatial = lambda d: d is not None and d != 1  # noqa: E731  (a value > 1 or a named dim)
    found = set()
    for node in graph.node:
        src, dst = shapes.get(node.input[0]) if node.op_type == "Reshape" else None, \
            shapes.get(node.output[0])
        if not src or not dst or len(src) != 4 or len(dst) != 3:
            continue
        pair = (2, 3) if dst[1] == src[1] is not None else (1, 2) if dst[2] == src[3] is not None \
            else None
        if pair and spatial(src[pair[0]]) and spatial(src[pair[1]]):
            found.add(node.output[0])
    return found


def _class_boxes(node: onnx.NodeProto | None, producers: Mapping[str, onnx.NodeProto],
                 shapes: Mapping[str, list]) -> str | None:
    """YOLOv8's (and v11's) decoded output, Concat((boxes x y w h, Sigmoid(class scores)),
    axis 1) = [N, 4 + classes, anchors] (the legacy exporter flattens the boxes' own Concat
    into it: xy, wh, classes): a Concat whose last input a Sigmoid computes and whose others
    are 4 wide on the joined axis (or of unknown width: its dims are often unnamed)."""
    if node is None or node.op_type != "Concat" or len(node.input) < 2:
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), None)
    if axis not in (1, 2, -1, -2):
        return None
    widths = [(shapes.get(t) or [None] * 3)[axis] if len(shapes.get(t) or []) in (0, 3) else None
              for t in node.input[:-1]]
    if all(isinstance(w, int) and w > 0 for w in widths) and sum(widths) != 4:
        return None
    src = producers.get(node.input[-1])
    while src is not None and src.op_type in SHAPE_ONLY_OPS:
        src = producers.get(src.input[0])
    return "graph: Concat of 4 box coordinates and a Sigmoid's classes" if src is not None and \
        src.op_type == "Sigmoid" else None


def _feature_producer(node: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto],
                      consts: set[str]) -> str | None:
    if node.op_type in FEATURE_OPS:
        return node.op_type
    computed = [i for i in node.input if i and i not in consts]
    if node.op_type == "Add" and len(computed) == 2:
        return "residual Add"
    for _ in range(2):  # beta, then gamma: Add/Mul of one computed tensor and a constant
        if node.op_type not in AFFINE_OPS or len(computed) != 1 or computed[0] not in producers:
            break
        node = producers[computed[0]]
        computed = [i for i in node.input if i and i not in consts]
    if node.op_type in ("Div", "Mul") and len(computed) == 2 and \
            _reaches(node, "ReduceMean", producers, NORM_DEPTH):
        return "decomposed normalization (ReduceMean)"
    return None


def _reaches(node: onnx.NodeProto, op_type: str, producers: Mapping[str, onnx.NodeProto],
             depth: int) -> bool:
    """Whether an op of `op_type` computes one of `node`'s inputs within `depth` steps up."""
    frontier = [node]
    for _ in range(depth):
        frontier = [producers[i] for n in frontier for i in n.input if i in producers]
        if any(n.op_type == op_type for n in frontier):
            return True
    return False


def _constants(graph: onnx.GraphProto) -> set[str]:
    """Initializers, Constant outputs, and what is computed from them alone (the legacy
    exporter's Identity of a shared weight)."""
    consts = {t.name for t in graph.initializer}
    for node in graph.node:  # topological order
        if node.op_type == "Constant" or (node.input and all(not i or i in consts
                                                              for i in node.input)):
            consts.update(node.output)
    return consts


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


def compare(names: Sequence[str], want: Sequence[np.ndarray], got: Sequence[np.ndarray],
            kinds: Mapping[str, tuple[str, str]] | None = None) -> list[OutputFidelity]:
    """Each output judged by its kind: `kinds` (`decide_kinds`), else its shape's."""
    kinds = kinds or {}
    return [compare_one(n, np.asarray(w), np.asarray(g), *kinds.get(n, (None, "shape")))
            for n, w, g in zip(names, want, got)]


def decide_kinds(names: Sequence[str], want: Sequence[np.ndarray], model: onnx.ModelProto,
                 overrides: Mapping[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """Per output (kind, what decided it): the user's override, else the producer and the
    shape (`output_kind`)."""
    overrides, graph = overrides or {}, graph_kinds(model)
    out = {}
    for name, arr in zip(names, want):
        if name in overrides:
            out[name] = (overrides[name], OVERRIDE)
            continue
        arr = np.asarray(arr)
        said = graph.get(name)
        if said is not None and arr.dtype.kind == "f" and arr.ndim in said.ranks:
            out[name] = (said.kind, said.why)
        else:
            out[name] = (output_kind(arr), "shape")
    return out


def compare_one(name: str, want: np.ndarray, got: np.ndarray, kind: str | None = None,
                kind_from: str = "shape") -> OutputFidelity:
    kind = output_kind(want) if kind is None else kind
    if (why := kind_misfit(kind, want.shape)) is not None:
        raise OnnxPruneError(f"{OVERRIDE} {name}={kind}: {why}")
    measure = SCALAR_MEASURE if _one_value(kind, want) else MEASURES[kind]
    if want.shape != got.shape:
        return OutputFidelity(name, False, None, None, None, kind, 0.0, measure, kind_from=kind_from,
                              note=f"shape {list(got.shape)} != original {list(want.shape)}")
    if kind == "integer":
        agree = float((want == got).mean()) if want.size else 1.0
        diff = float(np.abs(want.astype(np.float64) - got.astype(np.float64)).max()) if want.size else 0.0
        return OutputFidelity(name, True, diff, None, None, kind, agree, measure, kind_from=kind_from)
    w64, g64 = want.astype(np.float64), got.astype(np.float64)
    if not (np.isfinite(w64).all() and np.isfinite(g64).all()):
        which = "original" if not np.isfinite(w64).all() else "pruned"
        return OutputFidelity(name, True, None, None, None, kind, 0.0, measure, kind_from=kind_from,
                              note=f"non-finite values in the {which} model's output")
    cos, rel = _cosine(w64, g64), _relative_error(w64, g64)
    top1 = _top1(w64, g64) if kind in ("class_scores", "sequence") else None
    return OutputFidelity(name, True, float(np.abs(w64 - g64).max()) if want.size else 0.0,
                          cos, top1, kind, float(_agreement(kind, w64, g64, cos, top1)), measure,
                          rel, kind_from=kind_from)


def _agreement(kind: str, w64: np.ndarray, g64: np.ndarray, cos: float, top1: float | None
               ) -> float:
    """The kind's figure (the module docstring's table), both outputs finite."""
    if kind == "sequence":  # per position, blanks and padding would dominate: a CTC head
        return _same_sequence(w64, g64)  # that misreads one character in five reads wrong
    if top1 is not None:
        return top1
    if kind == "regression":
        return _scalar_agreement(w64, g64) if _one_value(kind, w64) else max(0.0, cos)
    if kind == "features":
        return _feature_agreement(w64, g64)
    if kind == "probability_map" and (w64 > PROBABLE).any():
        return _positives_agreement(w64, g64)
    if not w64.size:
        return 1.0
    if kind == "class_boxes" and (_box_scores(w64, kind) > DETECTED).any():
        return _detection_f1(w64, g64)
    if kind in ("detection", "class_boxes"):
        return _topk_overlap(_box_scores(w64, kind), _box_scores(g64, kind))
    return _topk_overlap(w64, g64)


def _one_value(kind: str, w: np.ndarray) -> bool:
    """A regression output with one value per sample, where a per-sample cosine is a sign."""
    return kind == "regression" and w.ndim >= 1 and len(w) > 0 and w.size == len(w)


def _scalar_agreement(w: np.ndarray, g: np.ndarray) -> float:
    """max(0, 1 - ||g - w|| / ||w - mean(w)||) over the samples; uncentred where the original
    does not vary (one sample, a constant output)."""
    w, g = w.reshape(-1), g.reshape(-1)
    err, spread = np.linalg.norm(g - w), np.linalg.norm(w - w.mean())
    if len(w) < 2 or spread == 0:
        spread = np.linalg.norm(w)
    if spread == 0:
        return 1.0 if err == 0 else 0.0
    return float(max(0.0, 1 - err / spread))


def _feature_agreement(w: np.ndarray, g: np.ndarray) -> float:
    """Mean over samples of max(0, 1 - ||g_i - w_i|| / ||w_i - m||), m the original's mean
    feature vector (last axis) over samples and positions; uncentred with a single row."""
    if not w.size:
        return 1.0
    rows = w.reshape(-1, w.shape[-1]) if w.ndim > 1 else w.reshape(-1, 1)
    mean = rows.mean(0) if len(rows) > 1 else np.zeros(rows.shape[1])
    spread = np.linalg.norm((rows - mean).reshape(len(w), -1), axis=1)
    err = np.linalg.norm((g - w).reshape(len(w), -1), axis=1)
    score = np.where(spread > 0, 1 - err / np.maximum(spread, 1e-300), (err == 0) * 1.0)
    return float(np.clip(score, 0.0, 1.0).mean())


def _positives_agreement(w: np.ndarray, g: np.ndarray) -> float:
    """Dice of the entries above 0.5 in either model, pooled over the samples: of what either
    calls positive, the share both do (the caller falls back to top-k where the original has
    no entry above 0.5)."""
    a, b = w > PROBABLE, g > PROBABLE
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


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
    """Samples whose argmax sequence reads the same after CTC decoding: repeats merged, then
    the blank dropped, the blank being the class the original predicts most often (it fills
    most of a CTC head's positions). Position by position, two alignments of the same text
    (a character held one step longer) disagree: on PP-OCRv4's recognizer a prune that
    read 0.92 of 200 lines as the original did agreed at every position on 12 of 24."""
    if not w.size:
        return 1.0
    a, b = w.argmax(-1).reshape(len(w), -1), g.argmax(-1).reshape(len(g), -1)
    blank = int(np.bincount(a.ravel()).argmax())
    return float(np.mean([np.array_equal(_ctc(x, blank), _ctc(y, blank)) for x, y in zip(a, b)]))


def _ctc(row: np.ndarray, blank: int) -> np.ndarray:
    """Greedy CTC decoding of one argmax row."""
    keep = np.r_[True, row[1:] != row[:-1]] & (row != blank)
    return row[keep]


def _boxes_last(out: np.ndarray) -> np.ndarray:
    """[N, boxes, attributes]: the boxes are on the longer non-batch axis."""
    return out if out.shape[1] >= out.shape[2] else out.transpose(0, 2, 1)


def _box_scores(out: np.ndarray, kind: str = "detection") -> np.ndarray:
    """[N, boxes]: objectness x best class score (`detection`), or the best class score
    (`class_boxes`: no objectness), boxes on the longer non-batch axis."""
    boxes = _boxes_last(out)
    if kind == "class_boxes":
        return boxes[..., 4:].max(-1)
    return boxes[..., 4] * boxes[..., 5:].max(-1)


def _detection_f1(w: np.ndarray, g: np.ndarray) -> float:
    """F1 of the pruned model's detections against the original's, pooled over the samples:
    a YOLOv8 output decoded as Ultralytics does by default (best class > 0.25, NMS per class
    at IoU 0.7), a detection matched one-to-one to the original's of the same class at
    IoU >= 0.5, the most confident first."""
    found = matched = 0
    for want, got in zip(_detections(w), _detections(g)):
        found += len(want) + len(got)
        matched += _matches(want, got)
    return 2 * matched / found if found else 1.0


def _detections(out: np.ndarray) -> Iterator[np.ndarray]:
    """Per sample [D, 6] = x1, y1, x2, y2, score, class, most confident first."""
    for r in _boxes_last(out):
        score, cls = r[:, 4:].max(-1), r[:, 4:].argmax(-1)
        keep = score > DETECTED
        xy, wh = r[keep, :2], r[keep, 2:4] / 2
        dets = np.column_stack([xy - wh, xy + wh, score[keep], cls[keep]])
        dets = dets[np.argsort(-dets[:, 4], kind="stable")]
        yield dets[_nms(dets)]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1 y1 x2 y2 box with each of `boxes`."""
    wh = np.clip(np.minimum(box[2:4], boxes[:, 2:4]) - np.maximum(box[:2], boxes[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _nms(dets: np.ndarray) -> list[int]:
    """Greedy NMS per class on score-sorted detections."""
    keep: list[int] = []
    alive = np.ones(len(dets), bool)
    for i in range(len(dets)):
        if alive[i]:
            keep.append(i)
            same = dets[:, 5] == dets[i, 5]
            alive &= ~(same & (_iou(dets[i], dets) > NMS_IOU))
    return keep


def _matches(want: np.ndarray, got: np.ndarray) -> int:
    """Detections of `got` matched one-to-one to `want`'s, same class, IoU >= 0.5."""
    free, count = np.ones(len(want), bool), 0
    for det in got:
        ok = free & (want[:, 5] == det[5]) if len(want) else free
        if ok.any():
            iou = np.where(ok, _iou(det, want), -1.0)
            j = int(iou.argmax())
            if iou[j] >= MATCH_IOU:
                free[j], count = False, count + 1
    return count


def _topk_overlap(want: np.ndarray, got: np.ndarray) -> float:
    """Mean over samples of |top-k(want) & top-k(got)| / k, entries flattened per sample."""
    w2, g2 = want.reshape(len(want), -1), got.reshape(len(got), -1)
    k = int(min(TOPK_MAX, max(1, round(TOPK_SHARE * w2.shape[1]))))
    top_w = np.argpartition(-w2, k - 1, axis=1)[:, :k]
    top_g = np.argpartition(-g2, k - 1, axis=1)[:, :k]
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(top_w, top_g)]))


def class_output(outputs: Sequence[np.ndarray], kinds: Sequence[str] | None = None
                 ) -> int | None:
    """The index of the output accuracy is measured on: the first class-score output, else the
    first integer output holding one label per sample, else None. `kinds`: as decided
    (`decide_kinds`), else by shape."""
    kinds = [output_kind(o) for o in outputs] if kinds is None else list(kinds)
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
