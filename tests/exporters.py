"""Small models in the exact op patterns real exporters write (issue 14, "No surprises on
real models"): one builder per idiom, each returning `(ModelProto, calibration dict)`.

Every model is built with `onnx.helper` from seeded numpy weights (no exporter package is
a test dependency); each docstring names the exporter and what of its output is copied:
op order, tensor names, initializer shapes, output types. The calibration dicts are what a
user would hand to `onnxprune.prune(..., calib=...)` (or save as an .npz).

    model, calib = exporters.skl2onnx_mlp(zipmap=True)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Built = tuple[onnx.ModelProto, dict[str, np.ndarray]]
ML = "ai.onnx.ml"


class _B:
    """Collects nodes and seeded float32 initializers with unique names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def unique(self, base: str) -> str:
        """skl2onnx's scope.get_unique_variable_name: base, base1, base2, ..."""
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}{i}"
        self._names.add(name)
        return name

    def init(self, base: str, arr: np.ndarray, *, exact: bool = False) -> str:
        name = base if exact else self.unique(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def weight(self, base: str, shape: Sequence[int], scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else int(shape[0])
        s = np.sqrt(2.0 / max(fan_in, 1)) if scale is None else scale
        return self.init(base, (self.rng.standard_normal(list(shape)) * s).astype(np.float32))

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str] | str, *,
             name: str | None = None, domain: str | None = None, **attrs) -> str:
        outs = [outputs] if isinstance(outputs, str) else list(outputs)
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name or self.unique(op),
                                           domain=domain, **attrs))
        return outs[0]


def _model(b: _B, inputs, outputs, *, opset: int, ml: bool = False, producer: str,
           value_info=()) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, "exported", list(inputs), list(outputs), b.inits,
                              value_info=list(value_info))
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(ML, 1)] if ml else [])
    model = helper.make_model(graph, opset_imports=imports, producer_name=producer)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _vi(name: str, shape: Sequence, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


# =========================================================================== scikit-learn

def skl2onnx_mlp(*, zipmap: bool = False, hidden: Sequence[int] = (16, 12), features: int = 6,
                 classes: int = 3, n: int = 40, labels: bool = False, seed: int = 0) -> Built:
    """skl2onnx 1.x `convert_sklearn(MLPClassifier)` (operator_converters/
    multilayer_perceptron.py): Cast(X) -> per layer MatMul(coefficient [K, H]) -> 'mul_result'
    + Add(intercepts [1, H]) -> 'add_result' -> Relu; Softmax; Identity -> 'probabilities';
    ArgMax -> ArrayFeatureExtractor(classes int32) -> Reshape [-1] -> Cast int64 -> 'label'.
    Outputs 'label' then 'probabilities'; with `zipmap` (skl2onnx's default) 'output_label' and
    'output_probability', a sequence of maps {class: probability}. The 2-D intercepts [1, H]
    are the exporter's, not ours."""
    b = _B(seed)
    h = b.node("Cast", ["input"], b.unique("cast_input"), to=TensorProto.FLOAT)
    widths = [features, *hidden, classes]
    for i, (k, m) in enumerate(zip(widths[:-1], widths[1:])):
        coef = b.weight("coefficient", [k, m])
        icpt = b.init("intercepts", b.rng.uniform(-0.3, 0.3, (1, m)).astype(np.float32))
        mul = b.node("MatMul", [h, coef], b.unique("mul_result"))
        h = b.node("Add", [mul, icpt], b.unique("add_result"))
        if i < len(widths) - 2:
            h = b.node("Relu", [h], b.unique("next_activations"))
    out = b.node("Softmax", [h], b.unique("out_activations_result"), axis=1)
    prob = b.node("Identity", [out], "probabilities")
    cls = b.init("classes", np.arange(classes, dtype=np.int32))
    am = b.node("ArgMax", [prob], b.unique("argmax_output"), axis=1)
    afe = b.node("ArrayFeatureExtractor", [cls, am], b.unique("array_feature_extractor_result"),
                 domain=ML)
    shp = b.init("shape_tensor", np.array([-1], np.int64))
    resh = b.node("Reshape", [afe, shp], b.unique("reshaped_result"))
    label = b.node("Cast", [resh], "label", to=TensorProto.INT64)
    outputs = [_vi("label", [None], TensorProto.INT64), _vi("probabilities", [None, classes])]
    if zipmap:
        b.node("Identity", [label], "output_label")
        b.node("ZipMap", [prob], "output_probability", domain=ML,
               classlabels_int64s=list(range(classes)))
        seq = helper.make_sequence_type_proto(helper.make_map_type_proto(
            TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, None)))
        outputs = [_vi("output_label", [None], TensorProto.INT64),
                   helper.make_value_info("output_probability", seq)]
    model = _model(b, [_vi("input", [None, features])], outputs, opset=15, ml=True,
                   producer="skl2onnx")
    x = b.rng.standard_normal((n, features)).astype(np.float32)
    calib = {"input": x}
    if labels:
        calib["labels"] = _own_labels(model, calib, "probabilities" if not zipmap else None, x)
    return model, calib


def _own_labels(model: onnx.ModelProto, calib: dict, prob_output: str | None,
                x: np.ndarray) -> np.ndarray:
    """The model's own predictions as labels (an accurate classifier), from its
    probabilities; for the ZipMap variant from the label output."""
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, calib)))
    if prob_output is not None:
        return np.argmax(outs[prob_output], axis=1).astype(np.int64)
    return np.asarray(outs["output_label"], np.int64)


def three_layer_mlp(*, n: int = 40, seed: int = 1) -> Built:
    """The same 2-D MatMul + Add idiom written by hand, float output only: x [N, 8] ->
    MatMul/Add(bias [1, 16]) -> Relu -> MatMul/Add(bias [1, 12]) -> Relu -> MatMul/Add -> y."""
    b = _B(seed)
    h = "x"
    widths = [8, 16, 12, 4]
    for i, (k, m) in enumerate(zip(widths[:-1], widths[1:])):
        mul = b.node("MatMul", [h, b.weight("coefficient", [k, m])], b.unique("mul_result"))
        icpt = b.init("intercepts", b.rng.uniform(-0.3, 0.3, (1, m)).astype(np.float32))
        h = b.node("Add", [mul, icpt], "y" if i == 2 else b.unique("add_result"))
        if i < 2:
            h = b.node("Relu", [h], b.unique("next_activations"))
    model = _model(b, [_vi("x", ["N", 8])], [_vi("y", ["N", 4])], opset=15, producer="hand")
    return model, {"x": b.rng.standard_normal((n, 8)).astype(np.float32)}


def batch_softmax_mlp(*, n: int = 40, seed: int = 1) -> Built:
    """`three_layer_mlp` whose head normalizes over the batch (Softmax on axis 0, as the
    similarity heads of retrieval / contrastive exports do): a genuinely batch-mixing op,
    so per-sample Shapley coalitions cannot be evaluated."""
    model, calib = three_layer_mlp(n=n, seed=seed)
    g = model.graph
    g.node[-1].output[0] = "logits"
    g.node.append(helper.make_node("Softmax", ["logits"], ["y"], name="batch_softmax", axis=0))
    onnx.checker.check_model(model, full_check=True)
    return model, calib


# =========================================================================== CRNN (PyTorch)

def crnn_seq_first(*, fixed_batch: bool = True, steps: int = 6, hidden: int = 4,
                   classes: int = 5, n: int = 12, seed: int = 2) -> Built:
    """A CRNN as torch.onnx.export writes it (the classic `BidirectionalLSTM` of CRNN text
    recognizers): image [B, 1, 8, 4*T] -> Conv -> Relu -> Conv -> Relu -> MaxPool(8, 4) -> Squeeze(2) ->
    Transpose(2, 0, 1) -> [T, B, C] -> LSTM (bidirectional, sequence first) -> Y [T, 2, B, H]
    -> Transpose(0, 2, 1, 3) -> Reshape [T, B, 2H] -> `view(T * b, h)`: Reshape [T*B, 2H] ->
    Gemm (the embedding Linear) -> `view(T, b, -1)`: Reshape [T, B, classes] = 'output'.
    `fixed_batch`: B = 1 baked into the input and every Reshape target (torch's default
    when exported without dynamic_axes); else B is a dynamic axis (and T fixed)."""
    b = _B(seed)
    c, t = 8, steps
    batch: int | str = 1 if fixed_batch else "batch"
    conv = b.node("Conv", ["image", b.weight("conv.weight", [c, 1, 3, 3], 0.4),
                           b.weight("conv.bias", [c], 0.1)], "/cnn/conv/Conv_output_0",
                  name="/cnn/conv/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.node("Relu", [conv], "/cnn/relu/Relu_output_0", name="/cnn/relu/Relu")
    h = b.node("Conv", [h, b.weight("conv1.weight", [c, c, 3, 3], 0.2),
                        b.weight("conv1.bias", [c], 0.1)], "/cnn/conv1/Conv_output_0",
               name="/cnn/conv1/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.node("Relu", [h], "/cnn/relu1/Relu_output_0", name="/cnn/relu1/Relu")
    h = b.node("MaxPool", [h], "/cnn/pool/MaxPool_output_0", name="/cnn/pool/MaxPool",
               kernel_shape=[8, 4], strides=[8, 4])
    h = b.node("Squeeze", [h, b.init("axes2", np.array([2], np.int64))], "/Squeeze_output_0",
               name="/Squeeze")
    seq = b.node("Transpose", [h], "/Transpose_output_0", name="/Transpose", perm=[2, 0, 1])
    w = (b.rng.standard_normal((2, 4 * hidden, c)) * 0.4).astype(np.float32)
    r = (b.rng.standard_normal((2, 4 * hidden, hidden)) * 0.4).astype(np.float32)
    bias = (b.rng.standard_normal((2, 8 * hidden)) * 0.1).astype(np.float32)
    y = b.node("LSTM", [seq, b.init("onnx::LSTM_W", w), b.init("onnx::LSTM_R", r),
                        b.init("onnx::LSTM_B", bias)],
               ["/rnn/LSTM_output_0", "/rnn/LSTM_output_1", "/rnn/LSTM_output_2"],
               name="/rnn/LSTM", direction="bidirectional", hidden_size=hidden)
    h = b.node("Transpose", [y], "/rnn/Transpose_output_0", name="/rnn/Transpose",
               perm=[0, 2, 1, 3])
    bt = 1 if fixed_batch else 0     # torch writes 0 (copy) where the batch is dynamic
    h = b.node("Reshape", [h, b.init("shape_tbh", np.array([t, bt, 2 * hidden], np.int64))],
               "/rnn/Reshape_output_0", name="/rnn/Reshape")
    flat = [t * 1, 2 * hidden] if fixed_batch else [-1, 2 * hidden]
    h = b.node("Reshape", [h, b.init("shape_flat", np.array(flat, np.int64))],
               "/Reshape_output_0", name="/Reshape")
    h = b.node("Gemm", [h, b.weight("embedding.weight", [classes, 2 * hidden]),
                        b.weight("embedding.bias", [classes], 0.1)], "/embedding/Gemm_output_0",
               name="/embedding/Gemm", transB=1)
    tail = [t, 1, -1] if fixed_batch else [t, -1, classes]
    b.node("Reshape", [h, b.init("shape_out", np.array(tail, np.int64))], "output",
           name="/Reshape_1")
    model = _model(b, [_vi("image", [batch, 1, 8, 4 * t])], [_vi("output", [t, batch, classes])],
                   opset=14, producer="pytorch")
    images = b.rng.uniform(0, 1, (n, 1, 8, 4 * t)).astype(np.float32)
    return model, {"image": images}


# =========================================================================== control flow

def if_branch_model(*, n: int = 12, seed: int = 3) -> Built:
    """What torch.onnx (scripted `if`) and tf2onnx (tf.cond) write: an `If` on a data-dependent
    condition whose branches compute from main-graph tensors (outer scope) and whose output
    feeds the rest of the main graph: x -> conv0 -> relu 'a' -> conv1 -> relu 'b';
    If(mean(x) > 0): then b * 2, else b + 1 (both read `b` from the outer scope) -> 'cf';
    Concat(cf, a) -> conv2 -> y. The If's output feeds main-graph nodes written after it,
    and conv1's group is read inside the branches."""
    b = _B(seed)
    c0 = b.node("Conv", ["x", b.weight("conv0.weight", [8, 3, 3, 3], 0.3),
                         b.weight("conv0.bias", [8], 0.1)], "c0", name="conv0",
                kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    a = b.node("Relu", [c0], "a", name="relu0")
    c1 = b.node("Conv", [a, b.weight("conv1.weight", [6, 8, 3, 3], 0.3),
                         b.weight("conv1.bias", [6], 0.1)], "c1", name="conv1",
                kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    bb = b.node("Relu", [c1], "b", name="relu1")
    mean = b.node("ReduceMean", ["x"], "x_mean", name="x_mean", keepdims=0)
    cond = b.node("Greater", [mean, b.init("zero", np.array(0, np.float32))], "cond", name="cond")
    two = b.init("two", np.array(2, np.float32))
    one = b.init("one", np.array(1, np.float32))
    then_g = helper.make_graph([helper.make_node("Mul", [bb, two], ["t_out"], name="then_mul")],
                               "then", [], [_vi("t_out", ["N", 6, 8, 8])])
    else_g = helper.make_graph([helper.make_node("Add", [bb, one], ["e_out"], name="else_add")],
                               "else", [], [_vi("e_out", ["N", 6, 8, 8])])
    cf = b.node("If", [cond], "cf", name="the_if", then_branch=then_g, else_branch=else_g)
    cat = b.node("Concat", [cf, a], "cat", name="cat", axis=1)
    b.node("Conv", [cat, b.weight("conv2.weight", [4, 14, 3, 3], 0.3)], "y", name="conv2",
           kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    model = _model(b, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 4, 8, 8])], opset=13,
                   producer="pytorch")
    return model, {"x": b.rng.standard_normal((n, 3, 8, 8)).astype(np.float32)}


def if_wrapped_model(*, n: int = 12, seed: int = 4) -> Built:
    """A whole conv net inside one `If` (torch.jit.script of a forward with a top-level
    `if`; also what some TF SavedModel conversions produce): x -> If(mean(x) > 0) whose then
    branch is conv0 -> relu -> conv1 -> y_then and else branch the same net on -x. The main
    graph has no mixing node at all."""
    b = _B(seed)
    mean = b.node("ReduceMean", ["x"], "x_mean", name="x_mean", keepdims=0)
    cond = b.node("Greater", [mean, b.init("zero", np.array(0, np.float32))], "cond", name="cond")
    w0, b0 = b.weight("conv0.weight", [8, 3, 3, 3], 0.3), b.weight("conv0.bias", [8], 0.1)
    w1 = b.weight("conv1.weight", [4, 8, 3, 3], 0.3)

    def branch(prefix: str, src: str) -> onnx.GraphProto:
        nodes = []
        if src != "x":
            nodes.append(helper.make_node("Neg", ["x"], [src], name=f"{prefix}_neg"))
        nodes += [helper.make_node("Conv", [src, w0, b0], [f"{prefix}_c0"], name=f"{prefix}_conv0",
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"{prefix}_c0"], [f"{prefix}_r0"], name=f"{prefix}_relu"),
                  helper.make_node("Conv", [f"{prefix}_r0", w1], [f"{prefix}_y"],
                                   name=f"{prefix}_conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
        return helper.make_graph(nodes, prefix, [], [_vi(f"{prefix}_y", ["N", 4, 8, 8])])

    b.node("If", [cond], "y", name="the_if", then_branch=branch("then", "x"),
           else_branch=branch("else", "x_neg"))
    model = _model(b, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 4, 8, 8])], opset=13,
                   producer="pytorch")
    return model, {"x": b.rng.standard_normal((n, 3, 8, 8)).astype(np.float32)}


# =========================================================================== weights and layout

def conv_classifier(*, n: int = 24, classes: int = 4, seed: int = 5, nan: bool = False,
                    labels: bool = True) -> Built:
    """A small CNN classifier (torch.onnx layout): x [N, 3, 8, 8] -> conv0 (8) -> relu ->
    conv1 (6) -> relu -> GlobalAveragePool -> Flatten -> Gemm -> 'logits'. `nan`: one
    filter of conv0 holds NaN weights (a diverged checkpoint exported as is)."""
    b = _B(seed)
    w0 = (b.rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    if nan:
        w0[5] = np.nan
    h = b.node("Conv", ["x", b.init("conv0.weight", w0), b.weight("conv0.bias", [8], 0.1)], "c0",
               name="conv0", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.node("Relu", [h], "r0", name="relu0")
    h = b.node("Conv", [h, b.weight("conv1.weight", [6, 8, 3, 3], 0.3),
                        b.weight("conv1.bias", [6], 0.1)], "c1", name="conv1",
               kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.node("Relu", [h], "r1", name="relu1")
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h], "gap", name="gap")], "flat",
               name="flatten")
    b.node("Gemm", [h, b.weight("fc.weight", [classes, 6], 0.5), b.weight("fc.bias", [classes], 0.1)],
           "logits", name="fc", transB=1)
    model = _model(b, [_vi("x", ["N", 3, 8, 8])], [_vi("logits", ["N", classes])], opset=13,
                   producer="pytorch")
    calib = {"x": b.rng.standard_normal((n, 3, 8, 8)).astype(np.float32)}
    if labels:
        calib["labels"] = b.rng.integers(0, classes, n).astype(np.int64)
    return model, calib


def nan_weight_model(*, n: int = 24) -> Built:
    """`conv_classifier` with NaN weights in one conv0 filter, and labelled calibration."""
    return conv_classifier(n=n, nan=True, labels=True)


def tf2onnx_nhwc(*, n: int = 12, seed: int = 6) -> Built:
    """tf2onnx's NHWC idiom (Keras models): input [N, 8, 8, 3] -> Transpose(0, 3, 1, 2) ->
    Conv -> Relu -> Conv -> Relu -> Transpose(0, 2, 3, 1) -> ReduceMean(axes 1, 2) ->
    MatMul [6, 4] + Add [4] -> 'dense'. Tensor names follow tf2onnx ('StatefulPartitioned
    Call/...:0')."""
    b = _B(seed)
    p = "StatefulPartitionedCall/model/"
    h = b.node("Transpose", ["input_1"], p + "conv2d/BiasAdd__6:0", name=p + "conv2d/BiasAdd__6",
               perm=[0, 3, 1, 2])
    h = b.node("Conv", [h, b.weight(p + "conv2d/Conv2D/ReadVariableOp:0", [8, 3, 3, 3], 0.3),
                        b.weight(p + "conv2d/BiasAdd/ReadVariableOp:0", [8], 0.1)],
               p + "conv2d/BiasAdd:0", name=p + "conv2d/BiasAdd", kernel_shape=[3, 3],
               pads=[1, 1, 1, 1])
    h = b.node("Relu", [h], p + "conv2d/Relu:0", name=p + "conv2d/Relu")
    h = b.node("Conv", [h, b.weight(p + "conv2d_1/Conv2D/ReadVariableOp:0", [6, 8, 3, 3], 0.3),
                        b.weight(p + "conv2d_1/BiasAdd/ReadVariableOp:0", [6], 0.1)],
               p + "conv2d_1/BiasAdd:0", name=p + "conv2d_1/BiasAdd", kernel_shape=[3, 3],
               pads=[1, 1, 1, 1])
    h = b.node("Relu", [h], p + "conv2d_1/Relu:0", name=p + "conv2d_1/Relu")
    h = b.node("Transpose", [h], p + "conv2d_1/Relu__12:0", name=p + "conv2d_1/Relu__12",
               perm=[0, 2, 3, 1])
    h = b.node("ReduceMean", [h], p + "gap/Mean:0", name=p + "gap/Mean", axes=[1, 2], keepdims=0)
    h = b.node("MatMul", [h, b.weight(p + "dense/MatMul/ReadVariableOp:0", [6, 4], 0.5)],
               p + "dense/MatMul:0", name=p + "dense/MatMul")
    b.node("Add", [h, b.weight(p + "dense/BiasAdd/ReadVariableOp:0", [4], 0.1)], "dense",
           name=p + "dense/BiasAdd")
    model = _model(b, [_vi("input_1", ["unk__0", 8, 8, 3])], [_vi("dense", ["unk__0", 4])],
                   opset=13, producer="tf2onnx")
    return model, {"input_1": b.rng.standard_normal((n, 8, 8, 3)).astype(np.float32)}


def paddle_constant_weights(*, n: int = 12, seed: int = 7) -> Built:
    """paddle2onnx's idiom: weights held in `Constant` nodes (not initializers), conv bias
    as a separate Add of a [1, C, 1, 1] Constant, Flatten + MatMul + Add for the head;
    tensor names like 'conv2d_0.w_0', 'tmp_0'."""
    b = _B(seed)

    def const(name: str, arr: np.ndarray) -> str:
        b.nodes.append(helper.make_node("Constant", [], [name], name=f"const_{name}",
                                        value=numpy_helper.from_array(arr.astype(np.float32), name)))
        return name

    r = b.rng
    h = b.node("Conv", ["x", const("conv2d_0.w_0", r.standard_normal((8, 3, 3, 3)) * 0.3)],
               "conv2d_1.tmp_0", name="p2o.Conv.0", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.node("Add", [h, const("conv2d_0.b_0", r.standard_normal((1, 8, 1, 1)) * 0.1)],
               "conv2d_1.tmp_1", name="p2o.Add.0")
    h = b.node("Relu", [h], "relu_0.tmp_0", name="p2o.Relu.0")
    h = b.node("Conv", [h, const("conv2d_1.w_0", r.standard_normal((6, 8, 3, 3)) * 0.3)],
               "conv2d_2.tmp_0", name="p2o.Conv.1", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.node("Add", [h, const("conv2d_1.b_0", r.standard_normal((1, 6, 1, 1)) * 0.1)],
               "conv2d_2.tmp_1", name="p2o.Add.1")
    h = b.node("Relu", [h], "relu_1.tmp_0", name="p2o.Relu.1")
    h = b.node("GlobalAveragePool", [h], "pool2d_0.tmp_0", name="p2o.GlobalAveragePool.0")
    h = b.node("Flatten", [h], "flatten_0.tmp_0", name="p2o.Flatten.0", axis=1)
    h = b.node("MatMul", [h, const("linear_0.w_0", r.standard_normal((6, 4)) * 0.5)],
               "linear_1.tmp_0", name="p2o.MatMul.0")
    b.node("Add", [h, const("linear_0.b_0", r.standard_normal(4) * 0.1)], "linear_1.tmp_1",
           name="p2o.Add.2")
    model = _model(b, [_vi("x", [-1, 3, 8, 8])], [_vi("linear_1.tmp_1", [-1, 4])], opset=11,
                   producer="PaddlePaddle")
    return model, {"x": b.rng.standard_normal((n, 3, 8, 8)).astype(np.float32)}


# =========================================================================== quantized

def qdq_model(*, n: int = 12, seed: int = 8) -> Built:
    """onnxruntime.quantization.quantize_static (QDQ format, per-channel): every Conv reads a
    DequantizeLinear of an int8 weight and a Q/DQ pair on its input; biases int32 through a
    DequantizeLinear. No float weight is left: `analyze` finds nothing to prune."""
    b = _B(seed)
    r = b.rng
    act_s = b.init("x_scale", np.array(0.05, np.float32))
    act_z = b.init("x_zero_point", np.array(0, np.int8))
    h = "x"
    widths = [3, 8, 6, 4]
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
        q = b.node("QuantizeLinear", [h, act_s, act_z], f"{h}_QuantizeLinear_Output")
        h = b.node("DequantizeLinear", [q, act_s, act_z], f"{h}_DequantizeLinear_Output")
        wf = r.standard_normal((c_out, c_in, 3, 3)) * 0.3
        ws = (np.abs(wf).max(axis=(1, 2, 3)) / 127).astype(np.float32)
        wq = np.clip(np.round(wf / ws[:, None, None, None]), -127, 127).astype(np.int8)
        wd = b.node("DequantizeLinear", [b.init(f"conv{i}.weight_quantized", wq),
                                         b.init(f"conv{i}.weight_scale", ws),
                                         b.init(f"conv{i}.weight_zero_point", np.zeros(c_out, np.int8))],
                    f"conv{i}.weight_DequantizeLinear_Output", axis=0)
        out = "y" if i == len(widths) - 2 else f"conv{i}_out"
        h = b.node("Conv", [h, wd], out, name=f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        if out != "y":
            h = b.node("Relu", [h], f"relu{i}_out", name=f"relu{i}")
    model = _model(b, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 4, 8, 8])], opset=13,
                   producer="onnx.quantize")
    return model, {"x": b.rng.standard_normal((n, 3, 8, 8)).astype(np.float32)}


def qoperator_model(*, n: int = 12, seed: int = 9) -> Built:
    """onnxruntime.quantization.quantize_static (QOperator format, uint8): x ->
    QuantizeLinear -> QLinearConv -> QLinearConv -> QLinearConv -> DequantizeLinear -> y.
    Every mixing op is a quantized op; no float Conv is left."""
    b = _B(seed)
    r = b.rng
    s = b.init("x_scale", np.array(0.05, np.float32))
    z = b.init("x_zero_point", np.array(128, np.uint8))
    h = b.node("QuantizeLinear", ["x", s, z], "x_quantized", name="x_QuantizeLinear")
    widths = [3, 8, 6, 4]
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
        wq = b.init(f"conv{i}.weight_quantized", r.integers(-30, 30, (c_out, c_in, 3, 3)).astype(np.int8))
        ws = b.init(f"conv{i}.weight_scale", np.full(c_out, 0.01, np.float32))
        wz = b.init(f"conv{i}.weight_zero_point", np.zeros(c_out, np.int8))
        ys = b.init(f"conv{i}_out_scale", np.array(0.05, np.float32))
        yz = b.init(f"conv{i}_out_zero_point", np.array(128, np.uint8))
        bq = b.init(f"conv{i}.bias_quantized", r.integers(-50, 50, c_out).astype(np.int32))
        h = b.node("QLinearConv", [h, s, z, wq, ws, wz, ys, yz, bq], f"conv{i}_out_quantized",
                   name=f"conv{i}_quant", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        s, z = ys, yz
    b.node("DequantizeLinear", [h, s, z], "y", name="y_DequantizeLinear")
    model = _model(b, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 4, 8, 8])], opset=13,
                   producer="onnx.quantize")
    return model, {"x": b.rng.standard_normal((n, 3, 8, 8)).astype(np.float32)}


def wrong_output_rank(*, n: int = 16, seed: int = 10) -> Built:
    """ddddocr's CRNN (torch.onnx, 2021): the graph output is declared [1, seqlen] while the
    graph computes a rank-3 tensor through a Reshape with a run-time target (Shape -> Gather ->
    Concat). The checker passes the original (inference cannot see the target), not a model
    whose target has been folded."""
    from graphs import G
    g = G(13, seed=seed)
    y = g.conv(g.op("Relu", g.conv(g.x, 8)), 3)
    batch = g.op("Gather", g.op("Shape", y), g.array(0, np.int64), axis=0)
    target = g.op("Concat", g.op("Unsqueeze", batch, g.array([0], np.int64)),
                  g.array([1], np.int64), g.array([-1], np.int64), axis=0)
    out = g.declare(g.op("Reshape", y, target), [1, "seqlen"])  # the exporter's wrong rank
    rng = np.random.default_rng(seed)
    return g.model(out), {"x": rng.standard_normal((n, 4, 6, 6)).astype(np.float32)}


def crnn_collapsing_width(*, n: int = 12, width: int = 64, seed: int = 11) -> Built:
    """ddddocr's CRNN again: the time axis is the image width / 8 (ceil), and the flatten
    before the classifier computes its target from Shape (T * batch, C). At small probe
    widths (2, 3) T is 1 both times, which once folded the target to the literal [1, C]."""
    from graphs import G
    g = G(13, shape=(1, 8, "W"), batch=1, seed=seed)
    h = g.op("Relu", g.conv(g.x, 4))
    h = g.op("AveragePool", h, kernel_shape=[8, 8], strides=[8, 8], ceil_mode=1)  # [1, 4, 1, T]
    h = g.op("Transpose", g.op("Squeeze", h, g.array([2], np.int64)), perm=[2, 0, 1])  # [T, 1, 4]
    shape = g.op("Shape", h)
    rows = g.op("Mul", g.op("Gather", shape, g.array([0], np.int64), axis=0),
                g.op("Gather", shape, g.array([1], np.int64), axis=0))
    flat = g.declare(g.op("Reshape", h, g.op("Concat", rows, g.array([4], np.int64), axis=0)),
                     ["T", 4])  # [T, 4]: inference cannot see through the run-time target
    logits = g.gemm(g.op("Relu", g.gemm(flat, 6)), 5)
    out = g.op("Unsqueeze", logits, g.array([1], np.int64))  # [T, 1, 5]: sequence first
    rng = np.random.default_rng(seed)
    return g.model(out), {"x": rng.standard_normal((n, 1, 8, width)).astype(np.float32)}


# =========================================================================== catalogue

BUILDERS = {
    "skl2onnx_mlp": lambda: skl2onnx_mlp(),
    "skl2onnx_mlp_zipmap": lambda: skl2onnx_mlp(zipmap=True),
    "three_layer_mlp": three_layer_mlp,
    "batch_softmax_mlp": batch_softmax_mlp,
    "crnn_seq_first_b1": lambda: crnn_seq_first(fixed_batch=True),
    "crnn_seq_first_dynamic": lambda: crnn_seq_first(fixed_batch=False),
    "if_branch": if_branch_model,
    "if_wrapped": if_wrapped_model,
    "nan_weights": nan_weight_model,
    "tf2onnx_nhwc": tf2onnx_nhwc,
    "paddle_constant_weights": paddle_constant_weights,
    "qdq": qdq_model,
    "qoperator": qoperator_model,
    "wrong_output_rank": wrong_output_rank,
}
