"""Builders for hostile models (issue 8): odd opsets and IR versions, external data,
control flow reading outer-scope tensors, quantized and custom-domain ops, sloppy graphs
(duplicate or missing node names, unused inputs, initializers listed as inputs, nodes out
of topological order), corrupted protobufs, and a model larger than 2 GB.

Everything is built with `onnx.helper` from seeded numpy weights, so a test that fails
can rebuild the exact model. Shapes: input `x` is `[N, 3, 8, 8]` (N symbolic), every conv
is 3x3 with padding 1, so spatial size stays 8x8.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HW = 8                      # spatial size of every feature map
NEWEST_OPSET = onnx.defs.onnx_opset_version()
OPSETS = list(range(9, NEWEST_OPSET + 1))


# --------------------------------------------------------------------------- basics

def ir_for(opset: int) -> int:
    """The smallest IR version that may carry `opset` (what an exporter of that era wrote)."""
    return helper.find_min_ir_version_for([helper.make_opsetid("", opset)], ignore_unknown=True)


def vi(name: str, shape: Sequence, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def make(nodes: Sequence[onnx.NodeProto], inits: Sequence[onnx.TensorProto],
         inputs: Sequence[onnx.ValueInfoProto], outputs: Sequence[onnx.ValueInfoProto], *,
         opset: int = 13, ir_version: int | None = None,
         domains: dict[str, int] | None = None, name: str = "hostile") -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(inits))
    imports = [helper.make_opsetid("", opset)]
    imports += [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
    model = helper.make_model(graph, opset_imports=imports, producer_name="onnxprune-hostile")
    model.ir_version = ir_for(opset) if ir_version is None else ir_version
    return model


class Weights:
    """Seeded float32 initializers with unique names."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.inits: list[onnx.TensorProto] = []

    def add(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def conv(self, name: str, c_out: int, c_in: int, k: int = 3) -> tuple[str, str]:
        w = self.rng.standard_normal((c_out, c_in, k, k)) / np.sqrt(c_in * k * k)
        b = self.rng.uniform(-0.5, 0.5, c_out)
        return (self.add(f"{name}.weight", w.astype(np.float32)),
                self.add(f"{name}.bias", b.astype(np.float32)))

    def bn(self, name: str, c: int) -> list[str]:
        r = self.rng
        return [self.add(f"{name}.scale", r.uniform(0.5, 1.5, c).astype(np.float32)),
                self.add(f"{name}.B", r.uniform(-0.5, 0.5, c).astype(np.float32)),
                self.add(f"{name}.mean", r.uniform(-0.5, 0.5, c).astype(np.float32)),
                self.add(f"{name}.var", r.uniform(0.5, 1.5, c).astype(np.float32))]


def conv_node(w: Weights, name: str, x: str, y: str, c_out: int, c_in: int) -> onnx.NodeProto:
    weight, bias = w.conv(name, c_out, c_in)
    return helper.make_node("Conv", [x, weight, bias], [y], name=name,
                            kernel_shape=[3, 3], pads=[1, 1, 1, 1])


def x_input(c: int = 3) -> onnx.ValueInfoProto:
    return vi("x", ["N", c, HW, HW])


# --------------------------------------------------------------------------- the small model

def chain(opset: int = 13, widths: Sequence[int] = (3, 8, 4), *, bn: bool = True,
          ir_version: int | None = None, seed: int = 0) -> onnx.ModelProto:
    """conv -> BN -> relu -> conv -> ... -> conv (output `y`). With widths (3, 8, 4): one
    prunable group of 8 channels (the last conv's output reaches the graph output)."""
    w = Weights(seed)
    nodes, h = [], "x"
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        out = "y" if last else f"conv{i}"
        nodes.append(conv_node(w, f"conv{i}", h, out, c_out, c_in))
        h = out
        if not last:
            if bn:
                nodes.append(helper.make_node("BatchNormalization", [h, *w.bn(f"bn{i}", c_out)],
                                              [f"bn{i}"], name=f"bn{i}", epsilon=1e-5))
                h = f"bn{i}"
            nodes.append(helper.make_node("Relu", [h], [f"relu{i}"], name=f"relu{i}"))
            h = f"relu{i}"
    return make(nodes, w.inits, [x_input(widths[0])], [vi("y", ["N", widths[-1], HW, HW])],
                opset=opset, ir_version=ir_version)


def converted_chain(opset: int) -> onnx.ModelProto:
    """`chain` written at opset 9, then converted by onnx's version converter."""
    from onnx import version_converter
    model = version_converter.convert_version(chain(9), opset)
    model.ir_version = max(model.ir_version, ir_for(opset))
    return model


def calib_arrays(model: onnx.ModelProto, n: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Random calibration samples for every graph input that is not an initializer."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dims = [n] + [d.dim_value or 1 for d in tt.shape.dim[1:]]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        out[inp.name] = (rng.standard_normal(dims).astype(dtype)
                         if np.issubdtype(dtype, np.floating) else np.zeros(dims, dtype))
    return out


def save_calib(model: onnx.ModelProto, path: str | os.PathLike, n: int = 10) -> Path:
    np.savez(path, **calib_arrays(model, n))
    return Path(path)


# --------------------------------------------------------------------------- sloppy graphs

def duplicate_names(model: onnx.ModelProto, name: str = "node") -> onnx.ModelProto:
    m = _copy(model)
    for node in m.graph.node:
        node.name = name
    return m


def nameless(model: onnx.ModelProto) -> onnx.ModelProto:
    m = _copy(model)
    for node in m.graph.node:
        node.name = ""
    return m


def unused_input(model: onnx.ModelProto) -> onnx.ModelProto:
    m = _copy(model)
    m.graph.input.append(vi("unused", ["N", 5]))
    return m


def reversed_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes listed consumers first: not topologically sorted (checker-invalid, ORT sorts)."""
    m = _copy(model)
    nodes = list(m.graph.node)[::-1]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def initializers_as_inputs(model: onnx.ModelProto, ir_version: int) -> onnx.ModelProto:
    """Every initializer also listed as a graph input: required for IR 3, and with IR >= 4 it
    makes the initializers overridable (a default value the caller may replace)."""
    m = _copy(model)
    listed = {i.name for i in m.graph.input}
    for t in m.graph.initializer:
        if t.name not in listed:
            m.graph.input.append(vi(t.name, list(t.dims), t.data_type))
    m.ir_version = ir_version
    return m


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


# --------------------------------------------------------------------------- control flow

def _cond_node(nodes: list, w: Weights) -> str:
    """A data-dependent bool scalar (not foldable): mean(x) > 0."""
    nodes.append(helper.make_node("ReduceMean", ["x"], ["x_mean"], name="x_mean", keepdims=0))
    nodes.append(helper.make_node("Greater", ["x_mean", w.add("zero", np.array(0, np.float32))],
                                  ["cond"], name="cond"))
    return "cond"


def control_flow(kind: str, *, nested: bool = False) -> onnx.ModelProto:
    """x -> conv0 -> relu (`a`, prunable) -> conv1 -> relu (`b`) -> KIND whose body reads `b`
    from the outer scope (not as a node input) -> conv2 -> y.

    The group of `b` (conv1's output channels) must be unprunable, with a reason naming
    KIND; the group of `a` must stay prunable. `nested`: the read happens in an If inside
    the body (two levels down)."""
    w = Weights(1)
    nodes = [conv_node(w, "conv0", "x", "c0", 8, 3),
             helper.make_node("Relu", ["c0"], ["a"], name="relu0"),
             conv_node(w, "conv1", "a", "c1", 6, 8),
             helper.make_node("Relu", ["c1"], ["b"], name="relu1")]
    cond = _cond_node(nodes, w)
    feat = vi
    body_out = ["N", 6, HW, HW]

    def reader(out: str, op: str, prefix: str) -> onnx.GraphProto:
        """A body that reads `b` from the enclosing scope."""
        if not nested:
            return helper.make_graph([helper.make_node(op, ["b"], [out], name=f"{prefix}_{op}")],
                                     f"{prefix}_body", [], [feat(out, body_out)])
        inner_then = helper.make_graph([helper.make_node("Relu", ["b"], [f"{prefix}_t"],
                                                         name=f"{prefix}_inner_relu")],
                                       f"{prefix}_inner_then", [], [feat(f"{prefix}_t", body_out)])
        inner_else = helper.make_graph([helper.make_node("Sigmoid", ["b"], [f"{prefix}_e"],
                                                         name=f"{prefix}_inner_sigmoid")],
                                       f"{prefix}_inner_else", [], [feat(f"{prefix}_e", body_out)])
        inner = helper.make_node("If", [cond], [out], name=f"{prefix}_inner_if",
                                 then_branch=inner_then, else_branch=inner_else)
        return helper.make_graph([inner], f"{prefix}_body", [], [feat(out, body_out)])

    if kind == "If":
        then_g = reader("then_out", "Relu", "then")
        else_g = reader("else_out", "Sigmoid", "else")
        nodes.append(helper.make_node("If", [cond], ["cf"], name="the_if",
                                      then_branch=then_g, else_branch=else_g))
        h = "cf"
    elif kind == "Loop":
        body = reader("loop_scan", "Relu", "loop")
        body.input.extend([vi("iter", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL)])
        body.node.append(helper.make_node("Identity", ["cond_in"], ["cond_out"], name="loop_cond"))
        body.output.insert(0, vi("cond_out", [], TensorProto.BOOL))
        trip = w.add("trip", np.array(1, np.int64))
        nodes.append(helper.make_node("Loop", [trip, ""], ["stacked"], name="the_loop", body=body))
        nodes.append(helper.make_node("Squeeze", ["stacked", w.add("axes0", np.array([0], np.int64))],
                                      ["cf"], name="unstack"))
        h = "cf"
    elif kind == "Scan":
        body = reader("scan_out", "Relu", "scan")
        body.input.extend([vi("elem", [1])])
        nodes.append(helper.make_node("Scan", [w.add("scan_in", np.ones((1, 1), np.float32))],
                                      ["stacked"], name="the_scan", body=body, num_scan_inputs=1))
        nodes.append(helper.make_node("Squeeze", ["stacked", w.add("axes0", np.array([0], np.int64))],
                                      ["cf"], name="unstack"))
        h = "cf"
    else:
        raise ValueError(kind)
    nodes.append(conv_node(w, "conv2", h, "y", 4, 6))
    return make(nodes, w.inits, [x_input()], [vi("y", ["N", 4, HW, HW])], opset=13)


def weight_read_in_subgraph() -> onnx.ModelProto:
    """conv1's weight (a member of the prunable group of conv0) is also read inside an If
    body (a ReduceSum of it feeds the output): slicing it for conv1 must not change what the
    body sees."""
    w = Weights(2)
    nodes = [conv_node(w, "conv0", "x", "c0", 8, 3),
             helper.make_node("Relu", ["c0"], ["a"], name="relu0"),
             conv_node(w, "conv1", "a", "c1", 4, 8)]
    cond = _cond_node(nodes, w)
    then_g = helper.make_graph([helper.make_node("ReduceSum", ["conv1.weight"], ["s_then"],
                                                 name="sum_w", keepdims=0)],
                               "then", [], [vi("s_then", [])])
    else_g = helper.make_graph([helper.make_node("ReduceMax", ["conv1.weight"], ["s_else"],
                                                 name="max_w", keepdims=0)],
                               "else", [], [vi("s_else", [])])
    nodes.append(helper.make_node("If", [cond], ["s"], name="the_if",
                                  then_branch=then_g, else_branch=else_g))
    nodes.append(helper.make_node("Add", ["c1", "s"], ["y"], name="add_s"))
    return make(nodes, w.inits, [x_input()], [vi("y", ["N", 4, HW, HW])], opset=13)


# --------------------------------------------------------------------------- quantized and custom

def _q(w: Weights, name: str, arr: np.ndarray, axis: int | None = None):
    """int8 symmetric quantization of `arr` (per channel on `axis`): (q, scale, zero point)."""
    if axis is None:
        scale = np.array(np.abs(arr).max() / 127, np.float32)
        zp = np.array(0, np.int8)
    else:
        red = tuple(i for i in range(arr.ndim) if i != axis)
        scale = (np.abs(arr).max(axis=red) / 127).astype(np.float32)
        zp = np.zeros(arr.shape[axis], np.int8)
        arr = arr / scale.reshape([-1] + [1] * (arr.ndim - 1))
        q = np.clip(np.round(arr), -127, 127).astype(np.int8)
        return w.add(f"{name}_q", q), w.add(f"{name}_scale", scale), w.add(f"{name}_zp", zp)
    q = np.clip(np.round(arr / scale), -127, 127).astype(np.int8)
    return w.add(f"{name}_q", q), w.add(f"{name}_scale", scale), w.add(f"{name}_zp", zp)


def qdq() -> onnx.ModelProto:
    """QDQ format (what ORT's static quantizer writes): conv weights are DequantizeLinear of
    int8 initializers (per output channel), activations go through QuantizeLinear ->
    DequantizeLinear before each conv. conv0 -> relu -> Q/DQ -> conv1 -> relu -> conv2 (no
    Q/DQ) -> relu -> conv3 -> y."""
    w = Weights(3)
    rng = w.rng
    nodes, h = [], "x"
    widths = [3, 8, 6, 5, 4]
    act_scale = w.add("act_scale", np.array(0.05, np.float32))
    act_zp = w.add("act_zp", np.array(0, np.int8))
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i < 2:  # quantized input and weights
            nodes.append(helper.make_node("QuantizeLinear", [h, act_scale, act_zp], [f"q{i}"],
                                          name=f"quant{i}"))
            nodes.append(helper.make_node("DequantizeLinear", [f"q{i}", act_scale, act_zp],
                                          [f"dq{i}"], name=f"dequant{i}"))
            h = f"dq{i}"
            wq, ws, wz = _q(w, f"w{i}", (rng.standard_normal((c_out, c_in, 3, 3)) / 5).astype(np.float32),
                            axis=0)
            nodes.append(helper.make_node("DequantizeLinear", [wq, ws, wz], [f"w{i}_f"],
                                          name=f"wdq{i}", axis=0))
            weight = f"w{i}_f"
        else:
            weight = w.conv(f"w{i}", c_out, c_in)[0]
        out = "y" if i == len(widths) - 2 else f"c{i}"
        bias = w.add(f"b{i}", rng.uniform(-0.2, 0.2, c_out).astype(np.float32))
        nodes.append(helper.make_node("Conv", [h, weight, bias], [out], name=f"conv{i}",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        h = out
        if out != "y":
            nodes.append(helper.make_node("Relu", [h], [f"r{i}"], name=f"relu{i}"))
            h = f"r{i}"
    return make(nodes, w.inits, [x_input()], [vi("y", ["N", 4, HW, HW])], opset=13)


def qdq_matmul() -> onnx.ModelProto:
    """x [N, 5, 8] -> MatMul (float, 16) -> Relu -> MatMul with a DequantizeLinear(int8) weight
    (12) -> Relu -> MatMul (float, 4) -> y: a QDQ transformer's linear layers."""
    w = Weights(7)
    r = w.rng
    q, s, z = _q(w, "w1", (r.standard_normal((16, 12)) / 4).astype(np.float32))
    nodes = [helper.make_node("MatMul", ["x", w.add("w0", r.standard_normal((8, 16)).astype(np.float32))],
                              ["h"], name="mm0"),
             helper.make_node("Relu", ["h"], ["r"], name="relu0"),
             helper.make_node("DequantizeLinear", [q, s, z], ["w1_f"], name="wdq1"),
             helper.make_node("MatMul", ["r", "w1_f"], ["m1"], name="mm1"),
             helper.make_node("Relu", ["m1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", w.add("w2", r.standard_normal((12, 4)).astype(np.float32))],
                              ["y"], name="mm2")]
    return make(nodes, w.inits, [vi("x", ["N", 5, 8])], [vi("y", ["N", 5, 4])], opset=13)


def qlinearconv() -> onnx.ModelProto:
    """conv0 (float) -> relu -> QuantizeLinear -> QLinearConv (uint8) -> DequantizeLinear ->
    relu -> conv2 (float) -> relu -> conv3 -> y. conv0's group reaches the quantized op."""
    w = Weights(4)
    rng = w.rng
    nodes = [conv_node(w, "conv0", "x", "c0", 8, 3),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0")]
    xs, xz = w.add("x_scale", np.array(0.02, np.float32)), w.add("x_zp", np.array(0, np.uint8))
    ys, yz = w.add("y_scale", np.array(0.05, np.float32)), w.add("y_zp", np.array(128, np.uint8))
    nodes.append(helper.make_node("QuantizeLinear", ["r0", xs, xz], ["r0_q"], name="quant"))
    wq = w.add("qw", rng.integers(-20, 20, (6, 8, 3, 3)).astype(np.int8))
    ws = w.add("qw_scale", np.full(6, 0.01, np.float32))
    wz = w.add("qw_zp", np.zeros(6, np.int8))
    qb = w.add("qb", rng.integers(-100, 100, 6).astype(np.int32))
    nodes.append(helper.make_node("QLinearConv", ["r0_q", xs, xz, wq, ws, wz, ys, yz, qb], ["c1_q"],
                                  name="qconv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("DequantizeLinear", ["c1_q", ys, yz], ["c1"], name="dequant"))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="relu1"))
    nodes.append(conv_node(w, "conv2", "r1", "c2", 5, 6))
    nodes.append(helper.make_node("Relu", ["c2"], ["r2"], name="relu2"))
    nodes.append(conv_node(w, "conv3", "r2", "y", 4, 5))
    return make(nodes, w.inits, [x_input()], [vi("y", ["N", 4, HW, HW])], opset=13)


def custom_domain(domain: str = "com.example", op: str = "MysteryOp") -> onnx.ModelProto:
    """conv0 -> relu -> DOMAIN::OP -> conv1 -> relu -> conv2 -> y. With the default
    arguments ONNX Runtime cannot run it; with ("com.microsoft", "Gelu") it can."""
    w = Weights(5)
    nodes = [conv_node(w, "conv0", "x", "c0", 8, 3),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node(op, ["r0"], ["u"], name="custom", domain=domain),
             conv_node(w, "conv1", "u", "c1", 6, 8),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             conv_node(w, "conv2", "r1", "y", 4, 6)]
    return make(nodes, w.inits, [x_input()], [vi("y", ["N", 4, HW, HW])], opset=13,
                domains={domain: 1})


def gemm_2d_bias(c_shape: str = "row") -> onnx.ModelProto:
    """x [N, 16] -> Gemm (C [1, 12]) -> Relu -> Gemm (C [1, 4], or [4, 1] with a static batch
    of 4 for "column") -> y. Valid ONNX: C only has to broadcast to [M, N]."""
    w = Weights(6)
    r = w.rng
    batch = 4 if c_shape == "column" else "N"
    c2 = r.uniform(-0.5, 0.5, (1, 4) if c_shape == "row" else (4, 1)).astype(np.float32)
    w1 = r.standard_normal((16, 12)).astype(np.float32) / 4
    w2 = r.standard_normal((12, 4)).astype(np.float32) / 4
    nodes = [helper.make_node("Gemm", ["x", w.add("fc1.weight", w1), w.add(
                 "fc1.bias", r.uniform(-0.5, 0.5, (1, 12)).astype(np.float32))], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", w.add("fc2.weight", w2), w.add("fc2.bias", c2)], ["y"],
                              name="fc2")]
    return make(nodes, w.inits, [vi("x", [batch, 16])], [vi("y", [batch, 4])], opset=13)


# --------------------------------------------------------------------------- external data

def save_external(model: onnx.ModelProto, path: str | os.PathLike, location: str) -> Path:
    """Save `model` at `path` with every tensor in the file `location` (relative to the
    model's directory; may contain a subdirectory or '..')."""
    path = Path(path)
    target = (path.parent / location)
    target.parent.mkdir(parents=True, exist_ok=True)
    m = _copy(model)
    onnx.external_data_helper.convert_model_to_external_data(
        m, all_tensors_to_one_file=True, location=location, size_threshold=0)
    # onnx.save writes the data relative to the model's directory
    onnx.save_model(m, str(path))
    assert target.is_file(), target
    return path


# --------------------------------------------------------------------------- > 2 GB

def huge_gemm_model(path: str | os.PathLike, *, width: int = 16384, hidden: int = 17000,
                    location: str | None = None) -> Path:
    """x [N, width] -> Gemm (hidden x width) -> Relu -> Gemm (width x hidden) -> y, float32,
    saved with external data: 2 * width * hidden * 4 bytes = 2.23 GB at the defaults (more
    than protobuf's 2 GB limit). The weights are written straight to the data file in
    64 MB blocks, so the builder never holds a whole weight in memory."""
    path = Path(path)
    location = location or path.name + ".data"
    data_path = path.parent / location
    rng = np.random.default_rng(0)
    offset = 0
    inits = []
    with open(data_path, "wb") as f:
        for name, shape in (("fc1.weight", (hidden, width)), ("fc2.weight", (width, hidden))):
            rows = shape[0]
            step = max(1, (64 << 20) // (shape[1] * 4))
            start = offset
            for r in range(0, rows, step):
                block = rng.standard_normal((min(step, rows - r), shape[1]), np.float32)
                block *= np.float32(1 / np.sqrt(shape[1]))
                f.write(block.tobytes())
            length = rows * shape[1] * 4
            offset = start + length
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", location), ("offset", str(start)), ("length", str(length))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)
        for name, n in (("fc1.bias", hidden), ("fc2.bias", width)):
            inits.append(numpy_helper.from_array(np.zeros(n, np.float32), name))
    nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["y"], name="fc2", transB=1)]
    model = make(nodes, inits, [vi("x", ["N", width])], [vi("y", ["N", width])], opset=13)
    onnx.save_model(model, str(path))
    return path


# --------------------------------------------------------------------------- corrupted bytes

MUTATIONS = ("flip", "scramble", "delete", "insert", "truncate", "random")


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    """One corruption of a serialized model: bit flips, overwritten bytes, deleted or inserted
    byte runs, truncation, or (kind 'random') bytes unrelated to the input."""
    buf = bytearray(data)
    if kind == "random":
        return rng.randbytes(rng.randint(0, 4096))
    if not buf:
        return bytes(buf)
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            p = rng.randrange(len(buf))
            buf[p] ^= 1 << rng.randrange(8)
    elif kind == "scramble":
        for _ in range(rng.randint(5, 50)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == "delete":
        for _ in range(rng.randint(1, 3)):
            p = rng.randrange(len(buf))
            del buf[p:p + rng.randint(1, 16)]
    elif kind == "insert":
        p = rng.randrange(len(buf))
        buf[p:p] = rng.randbytes(rng.randint(1, 8))
    elif kind == "truncate":
        del buf[rng.randrange(len(buf)):]
    else:
        raise ValueError(kind)
    return bytes(buf)


MALFORMATIONS = ("dims", "int-attr", "ints-attr", "add-attr", "rewire", "drop-input",
                 "const-value")
_ADDED_ATTRS = {"group": (2, 3, 9), "axis": (-1, 0, 1, 2, 3), "keepdims": (0,), "transA": (1,),
                "transB": (1,), "perm": ([0, 2, 1], [1, 0]), "allowzero": (1,),
                "training_mode": (1,), "num_outputs": (2, 3)}


def malform(model: onnx.ModelProto, kind: str, rng: random.Random) -> onnx.ModelProto:
    """One structural change that keeps the file parseable and often passes onnx's light
    checker but breaks what an op handler may assume: an initializer's dims (same element
    count, other rank or order), an attribute's value, an added attribute, an input rewired
    to another tensor or dropped, the values of a small integer constant (a shape, axes,
    sizes). The model's meaning is lost; what matters is that the tool stays clean."""
    m = _copy(model)
    g = m.graph
    nodes = list(g.node)
    tensors = list(g.initializer) + [a.t for n in nodes if n.op_type == "Constant"
                                     for a in n.attribute if a.name == "value"]
    if kind == "dims" and tensors:
        t = rng.choice(tensors)
        dims = list(t.dims)
        count = int(np.prod(dims)) if dims else 1
        choices = [[count], [1, *dims], [*dims, 1]]
        if len(dims) >= 2:
            i = rng.randrange(len(dims) - 1)
            choices += [dims[:i] + [dims[i] * dims[i + 1]] + dims[i + 2:],
                        dims[:i] + [dims[i + 1], dims[i]] + dims[i + 2:]]
        del t.dims[:]
        t.dims.extend(rng.choice(choices))
    elif kind in ("int-attr", "ints-attr"):
        want = onnx.AttributeProto.INT if kind == "int-attr" else onnx.AttributeProto.INTS
        attrs = [a for n in nodes for a in n.attribute if a.type == want]
        if attrs:
            a = rng.choice(attrs)
            if kind == "int-attr":
                a.i = rng.choice([-4, -2, -1, 0, 1, 2, 3, 5, 9, 1 << 20])
            elif a.ints and rng.random() < 0.5:
                a.ints[rng.randrange(len(a.ints))] = rng.choice([-2, -1, 0, 1, 2, 3, 7])
            elif a.ints and rng.random() < 0.5:
                del a.ints[rng.randrange(len(a.ints))]
            else:
                a.ints.append(rng.choice([0, 1, 2, 3]))
    elif kind == "add-attr":
        node = rng.choice(nodes)
        name = rng.choice(sorted(_ADDED_ATTRS))
        if name not in {a.name for a in node.attribute}:
            node.attribute.append(helper.make_attribute(name, rng.choice(_ADDED_ATTRS[name])))
    elif kind == "rewire":
        node = rng.choice([n for n in nodes if n.input])
        produced = [o for n in nodes[:nodes.index(node)] for o in n.output]
        names = produced + [i.name for i in g.input] + [t.name for t in g.initializer]
        node.input[rng.randrange(len(node.input))] = rng.choice(names)
    elif kind == "drop-input":
        node = rng.choice([n for n in nodes if n.input])
        del node.input[-1]
    elif kind == "const-value":
        ints = [t for t in tensors if t.data_type == TensorProto.INT64
                and 0 < int(np.prod(t.dims or [1])) <= 8]
        if ints:
            t = rng.choice(ints)
            old = numpy_helper.to_array(t)
            new = np.array([rng.choice([-2, -1, 0, 1, 2, 3, 7, 64]) for _ in range(old.size)],
                           np.int64).reshape(old.shape)
            t.CopyFrom(numpy_helper.from_array(new, t.name))
    else:
        raise ValueError(kind)
    return m


def replace_string(model: onnx.ModelProto, old: str, new: bytes) -> bytes:
    """Serialize `model` with every occurrence of the string `old` replaced by raw bytes `new`
    of the same length (e.g. invalid UTF-8), which onnx.helper would refuse to write."""
    data = model.SerializeToString()
    old_b = old.encode()
    assert len(new) == len(old_b) and old_b in data
    return data.replace(old_b, new)


def iter_models(root: Path) -> Iterable[Path]:
    yield from sorted((root / "models/zoo").glob("*.onnx"))
    yield root / "models/digits_cnn.onnx"


def folding_error() -> onnx.ModelProto:
    """`chain` plus a constant Gather whose index is out of range, added to the output: the
    constant folder runs it in ONNX Runtime, which fails (and logs) - the model is invalid
    at run time but analyzable."""
    m = chain(13, (3, 8, 6, 4))
    m.graph.initializer.extend([numpy_helper.from_array(np.arange(4, dtype=np.float32), "table"),
                                numpy_helper.from_array(np.array([7], np.int64), "index")])
    m.graph.node.append(helper.make_node("Gather", ["table", "index"], ["picked"], name="pick"))
    m.graph.node.append(helper.make_node("Add", ["y", "picked"], ["z"], name="add_picked"))
    m.graph.output[0].name = "z"
    return m


def rename_tensor(model: onnx.ModelProto, old: str, new: str) -> onnx.ModelProto:
    """Rename tensor `old` (a node output) to `new` everywhere in the main graph."""
    m = _copy(model)
    for node in m.graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
    for v in list(m.graph.output) + list(m.graph.value_info):
        if v.name == old:
            v.name = new
    return m
