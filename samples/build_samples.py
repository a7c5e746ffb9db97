#!/usr/bin/env python
"""Build the small synthetic ONNX sample models used by onnxsparse's tests and docs.

Every model is built by hand with ``onnx.helper`` so that the graph structure is
exactly known (no exporter-specific rewrites).  Weights are random but
deterministic (one fixed numpy seed per model) and scaled so activations stay
in a sane range (He init for convolutions/linear layers feeding ReLU-like
activations, BatchNorm with random positive variance and random mean/scale/bias).

Usage::

    python samples/build_samples.py            # writes samples/models/<name>.onnx
    python samples/build_samples.py --out DIR  # somewhere else

Each ``build_<name>()`` returns an ``onnx.ModelProto``; ``main()`` checks every
model with ``onnx.checker.check_model(full_check=True)``, runs it in
onnxruntime (and in onnx's reference evaluator, comparing the results) and
saves it.

Unless stated otherwise models use opset 17 and ir_version 8, their first
input is called ``input`` with a symbolic batch dimension ``batch`` and
classifiers produce ``logits`` of shape [batch, 10].
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
PRODUCER = "onnxsparse-samples"

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "models")


# --------------------------------------------------------------------------
# A tiny graph builder
# --------------------------------------------------------------------------
class GraphBuilder:
    """Accumulates nodes / initializers with unique, readable names.

    ``weights_as`` selects how weight tensors are stored:
      * ``"initializer"`` (default) - graph initializers
      * ``"constant"`` - ``Constant`` nodes (Paddle / tf2onnx style)
    """

    def __init__(self, seed: int, weights_as: str = "initializer"):
        self.rng = np.random.default_rng(seed)
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self.weights_as = weights_as
        self._counts: Dict[str, int] = {}

    # -- naming ----------------------------------------------------------
    def uniq(self, base: str) -> str:
        n = self._counts.get(base, 0)
        self._counts[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    # -- tensors -----------------------------------------------------------
    def weight(self, name: str, arr: np.ndarray, force: Optional[str] = None) -> str:
        """Add a weight tensor (initializer or Constant node), return its name."""
        mode = force or self.weights_as
        name = self.uniq(name)
        tensor = numpy_helper.from_array(np.ascontiguousarray(arr), name=name)
        if mode == "initializer":
            self.initializers.append(tensor)
        elif mode == "constant":
            self.nodes.append(
                helper.make_node("Constant", [], [name], name=f"{name}_Constant", value=tensor)
            )
        else:  # pragma: no cover
            raise ValueError(mode)
        return name

    def const(self, name: str, arr, dtype=np.int64) -> str:
        """A small Constant node (shape constants, scalars) the way exporters emit them."""
        arr = np.asarray(arr, dtype=dtype)
        name = self.uniq(name)
        self.nodes.append(
            helper.make_node(
                "Constant", [], [name], name=f"{name}_Constant",
                value=numpy_helper.from_array(arr, name=name),
            )
        )
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: Optional[str] = None,
           n_out: int = 1, outputs: Optional[Sequence[str]] = None, **attrs) -> str | List[str]:
        base = self.uniq(name or op_type)
        if outputs is None:
            outputs = [base] if n_out == 1 else [f"{base}_out{i}" for i in range(n_out)]
        node = helper.make_node(op_type, list(inputs), list(outputs), name=base, **attrs)
        self.nodes.append(node)
        return outputs[0] if len(outputs) == 1 else list(outputs)

    # -- random init -------------------------------------------------------
    def he(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)

    def xavier(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * math.sqrt(1.0 / fan_in)).astype(np.float32)

    def small(self, shape: Sequence[int], std: float = 0.05) -> np.ndarray:
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    # -- layers --------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, pad: Optional[int] = None,
             group: int = 1, bias: bool = False, name: str = "conv", init: str = "he") -> str:
        pad = k // 2 if pad is None else pad
        fan_in = (cin // group) * k * k
        w_arr = self.he((cout, cin // group, k, k), fan_in) if init == "he" else \
            self.xavier((cout, cin // group, k, k), fan_in)
        w = self.weight(f"{name}.weight", w_arr)
        inputs = [x, w]
        if bias:
            inputs.append(self.weight(f"{name}.bias", self.small((cout,))))
        attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        if group != 1:
            attrs["group"] = group
        return self.op("Conv", inputs, name=name, **attrs)

    def bn(self, x: str, c: int, name: str = "bn", momentum: Optional[float] = 0.9) -> str:
        scale = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        b = self.small((c,), 0.1)
        mean = self.small((c,), 0.1)
        var = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        ins = [x] + [self.weight(f"{name}.{s}", a) for s, a in
                     (("weight", scale), ("bias", b), ("running_mean", mean), ("running_var", var))]
        attrs = dict(epsilon=1e-5)
        if momentum is not None:
            attrs["momentum"] = momentum
        return self.op("BatchNormalization", ins, name=name, **attrs)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def gemm(self, x: str, fin: int, fout: int, name: str = "fc") -> str:
        w = self.weight(f"{name}.weight", self.xavier((fout, fin), fin))
        b = self.weight(f"{name}.bias", self.small((fout,)))
        return self.op("Gemm", [x, w, b], name=name, alpha=1.0, beta=1.0, transB=1)

    def classifier_head(self, x: str, c: int, n_classes: int = 10, out: str = "logits") -> str:
        p = self.op("GlobalAveragePool", [x], name="gap")
        f = self.op("Flatten", [p], name="flatten", axis=1)
        w = self.weight("fc.weight", self.xavier((n_classes, c), c))
        b = self.weight("fc.bias", self.small((n_classes,)))
        return self.op("Gemm", [f, w, b], name="fc", outputs=[out], alpha=1.0, beta=1.0, transB=1)

    # -- finish ----------------------------------------------------------------
    def model(self, graph_name: str, inputs: List[onnx.ValueInfoProto],
              outputs: List[onnx.ValueInfoProto], doc: str = "",
              opset: int = OPSET, ir_version: int = IR_VERSION) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs,
                                  initializer=self.initializers)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name=PRODUCER, producer_version="1.0",
                              doc_string=doc)
        m.ir_version = ir_version
        return m


def fvi(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


# --------------------------------------------------------------------------
# resnet_mini
# --------------------------------------------------------------------------
def build_resnet_mini() -> onnx.ModelProto:
    """CIFAR-style mini ResNet: stem + 3 basic blocks (one strided w/ projection)."""
    g = GraphBuilder(seed=1)
    # stem conv has a bias (to cover Conv-with-bias followed by BN), others have none
    x = g.conv("input", 3, 16, 3, bias=True, name="stem.conv")
    x = g.relu(g.bn(x, 16, name="stem.bn"))

    def basic_block(x: str, cin: int, cout: int, stride: int, prefix: str) -> str:
        y = g.conv(x, cin, cout, 3, stride=stride, name=f"{prefix}.conv1")
        y = g.relu(g.bn(y, cout, name=f"{prefix}.bn1"))
        y = g.conv(y, cout, cout, 3, name=f"{prefix}.conv2")
        y = g.bn(y, cout, name=f"{prefix}.bn2")
        if stride != 1 or cin != cout:
            sc = g.conv(x, cin, cout, 1, stride=stride, pad=0, name=f"{prefix}.downsample.conv")
            sc = g.bn(sc, cout, name=f"{prefix}.downsample.bn")
        else:
            sc = x
        return g.relu(g.op("Add", [y, sc], name=f"{prefix}.add"))

    x = basic_block(x, 16, 16, 1, "layer1.0")   # 16x32x32
    x = basic_block(x, 16, 32, 2, "layer2.0")   # 32x16x16, projection shortcut
    x = basic_block(x, 32, 32, 1, "layer2.1")   # 32x16x16
    g.classifier_head(x, 32)
    return g.model("resnet_mini", [fvi("input", ["batch", 3, 32, 32])],
                   [fvi("logits", ["batch", 10])],
                   doc="Mini ResNet: stem Conv3x3(16)+BN+Relu, 3 basic blocks "
                       "(16->16, 16->32 stride 2 with 1x1 projection, 32->32), GAP, Gemm(10).")


# --------------------------------------------------------------------------
# densenet_block
# --------------------------------------------------------------------------
def build_densenet_block() -> onnx.ModelProto:
    """Conv stem + one dense block (3 bottleneck layers, growth 8) + transition."""
    g = GraphBuilder(seed=2)
    growth, bottleneck = 8, 32
    x = g.conv("input", 3, 16, 3, name="features.conv0")  # 16x32x32
    c = 16
    for i in range(3):
        p = f"denseblock1.denselayer{i + 1}"
        y = g.relu(g.bn(x, c, name=f"{p}.norm1"))
        y = g.conv(y, c, bottleneck, 1, pad=0, name=f"{p}.conv1")
        y = g.relu(g.bn(y, bottleneck, name=f"{p}.norm2"))
        y = g.conv(y, bottleneck, growth, 3, name=f"{p}.conv2")
        x = g.op("Concat", [x, y], name=f"{p}.concat", axis=1)
        c += growth
    # transition: c=40 -> 20, spatial /2
    y = g.relu(g.bn(x, c, name="transition1.norm"))
    y = g.conv(y, c, c // 2, 1, pad=0, name="transition1.conv")
    y = g.op("AveragePool", [y], name="transition1.pool", kernel_shape=[2, 2], strides=[2, 2])
    g.classifier_head(y, c // 2)
    return g.model("densenet_block", [fvi("input", ["batch", 3, 32, 32])],
                   [fvi("logits", ["batch", 10])],
                   doc="Conv stem(16) + dense block of 3 layers (BN-Relu-Conv1x1(32)-BN-Relu-"
                       "Conv3x3(8), Concat axis=1) + transition (BN-Relu-Conv1x1(40->20)-"
                       "AveragePool2x2) + GAP + Gemm(10).")


# --------------------------------------------------------------------------
# mobilenet_block
# --------------------------------------------------------------------------
def build_mobilenet_block() -> onnx.ModelProto:
    """MobileNetV3-ish: HardSwish, depthwise convs, squeeze-excite, residual adds,
    one MaxPool and one Clip(0, 6) (ReLU6 with min/max as inputs)."""
    g = GraphBuilder(seed=3)
    x = g.conv("input", 3, 16, 3, name="stem.conv")  # 16x32x32
    x = g.op("HardSwish", [g.bn(x, 16, name="stem.bn")])
    x = g.op("MaxPool", [x], name="stem.maxpool", kernel_shape=[2, 2], strides=[2, 2])  # 16x16x16

    clip_min = g.weight("relu6.min", np.array(0.0, dtype=np.float32))
    clip_max = g.weight("relu6.max", np.array(6.0, dtype=np.float32))

    def act(x: str, kind: str) -> str:
        if kind == "hswish":
            return g.op("HardSwish", [x])
        return g.op("Clip", [x, clip_min, clip_max], name="relu6")

    def inverted_residual(x: str, cin: int, cexp: int, cout: int, stride: int,
                          se_red: int, kind: str, prefix: str) -> str:
        y = g.conv(x, cin, cexp, 1, pad=0, name=f"{prefix}.expand.conv")
        y = act(g.bn(y, cexp, name=f"{prefix}.expand.bn"), kind)
        y = g.conv(y, cexp, cexp, 3, stride=stride, group=cexp, name=f"{prefix}.dw.conv")
        dw = act(g.bn(y, cexp, name=f"{prefix}.dw.bn"), kind)
        # squeeze-excite
        s = g.op("GlobalAveragePool", [dw], name=f"{prefix}.se.pool")
        s = g.conv(s, cexp, se_red, 1, pad=0, bias=True, name=f"{prefix}.se.fc1")
        s = g.relu(s)
        s = g.conv(s, se_red, cexp, 1, pad=0, bias=True, name=f"{prefix}.se.fc2", init="xavier")
        s = g.op("HardSigmoid", [s], name=f"{prefix}.se.hsigmoid", alpha=1.0 / 6.0, beta=0.5)
        y = g.op("Mul", [dw, s], name=f"{prefix}.se.mul")
        y = g.conv(y, cexp, cout, 1, pad=0, name=f"{prefix}.project.conv")
        y = g.bn(y, cout, name=f"{prefix}.project.bn")
        if stride == 1 and cin == cout:
            y = g.op("Add", [y, x], name=f"{prefix}.add")
        return y

    x = inverted_residual(x, 16, 64, 16, 1, 16, "hswish", "blocks.0")  # 16x16x16, residual
    x = inverted_residual(x, 16, 64, 24, 2, 16, "hswish", "blocks.1")  # 24x8x8
    x = inverted_residual(x, 24, 72, 24, 1, 24, "relu6", "blocks.2")   # 24x8x8, residual, ReLU6
    x = g.conv(x, 24, 96, 1, pad=0, name="head.conv")
    x = g.op("HardSwish", [g.bn(x, 96, name="head.bn")])
    g.classifier_head(x, 96)
    return g.model("mobilenet_block", [fvi("input", ["batch", 3, 32, 32])],
                   [fvi("logits", ["batch", 10])],
                   doc="MobileNetV3-style: stem Conv+BN+HardSwish, MaxPool, 3 inverted residual "
                       "blocks with depthwise conv and squeeze-excite (last uses Clip(0,6)), "
                       "Conv1x1 head(96), GAP, Gemm(10).")


# --------------------------------------------------------------------------
# transformer_encoder
# --------------------------------------------------------------------------
def _runtime_shape(g: GraphBuilder, x: str, tail: Sequence[int], prefix: str) -> str:
    """Shape(x)->Gather(0), Shape(x)->Gather(1) -> Unsqueeze -> Concat(.., [t0], [t1], ...)

    This mirrors what torch.onnx's TorchScript exporter emits for
    ``x.view(x.size(0), x.size(1), *tail)``: one Shape node per ``size()`` call,
    scalar Gather indices as Constant nodes, Unsqueeze with axes as a Constant
    input (opset >= 13) and the fixed trailing dims as 1-element Constants.
    """
    dims = []
    for axis in (0, 1):
        shp = g.op("Shape", [x], name=f"{prefix}.Shape")
        idx = g.const(f"{prefix}.Constant", np.array(axis, dtype=np.int64))
        d = g.op("Gather", [shp, idx], name=f"{prefix}.Gather", axis=0)
        ax = g.const(f"{prefix}.Constant", np.array([0], dtype=np.int64))
        dims.append(g.op("Unsqueeze", [d, ax], name=f"{prefix}.Unsqueeze"))
    for t in tail:
        dims.append(g.const(f"{prefix}.Constant", np.array([t], dtype=np.int64)))
    return g.op("Concat", dims, name=f"{prefix}.Concat", axis=0)


def build_transformer_encoder() -> onnx.ModelProto:
    """2 post-LN encoder layers (hidden 64, 4 heads x 16, FFN 128, erf-GELU)."""
    g = GraphBuilder(seed=4)
    H, NH, HD, FF = 64, 4, 16, 128

    def linear(x: str, fin: int, fout: int, name: str, std_scale: float = 1.0) -> str:
        # torch exports nn.Linear on 3-D input as MatMul(x, W^T) + Add(bias)
        w = g.weight(f"{name}.weight", g.xavier((fin, fout), fin) * std_scale)
        b = g.weight(f"{name}.bias", g.small((fout,), 0.02))
        y = g.op("MatMul", [x, w], name=f"{name}.MatMul")
        return g.op("Add", [y, b], name=f"{name}.Add")

    def layernorm(x: str, name: str) -> str:
        scale = g.weight(f"{name}.weight", (1.0 + g.small((H,), 0.1)).astype(np.float32))
        bias = g.weight(f"{name}.bias", g.small((H,), 0.05))
        return g.op("LayerNormalization", [x, scale, bias], name=name, axis=-1, epsilon=1e-5)

    def gelu(x: str, name: str) -> str:
        d = g.op("Div", [x, g.const(f"{name}.Constant", np.array(math.sqrt(2.0), np.float32),
                                    np.float32)], name=f"{name}.Div")
        e = g.op("Erf", [d], name=f"{name}.Erf")
        a = g.op("Add", [e, g.const(f"{name}.Constant", np.array(1.0, np.float32), np.float32)],
                 name=f"{name}.Add")
        m = g.op("Mul", [x, a], name=f"{name}.Mul")
        return g.op("Mul", [m, g.const(f"{name}.Constant", np.array(0.5, np.float32), np.float32)],
                    name=f"{name}.Mul")

    def split_heads(t: str, perm: Sequence[int], name: str) -> str:
        shape = _runtime_shape(g, t, (NH, HD), f"{name}")
        r = g.op("Reshape", [t, shape], name=f"{name}.Reshape")
        return g.op("Transpose", [r], name=f"{name}.Transpose", perm=list(perm))

    def self_attention(x: str, p: str) -> str:
        q = linear(x, H, H, f"{p}.q_proj")
        k = linear(x, H, H, f"{p}.k_proj")
        v = linear(x, H, H, f"{p}.v_proj")
        q = split_heads(q, (0, 2, 1, 3), f"{p}.q_heads")   # [b, 4, s, 16]
        k = split_heads(k, (0, 2, 3, 1), f"{p}.k_heads")     # [b, 4, 16, s]
        v = split_heads(v, (0, 2, 1, 3), f"{p}.v_heads")   # [b, 4, s, 16]
        scores = g.op("MatMul", [q, k], name=f"{p}.scores.MatMul")
        scale = g.const(f"{p}.scale.Constant", np.array(math.sqrt(HD), np.float32), np.float32)
        scores = g.op("Div", [scores, scale], name=f"{p}.scores.Div")
        probs = g.op("Softmax", [scores], name=f"{p}.Softmax", axis=-1)
        ctx = g.op("MatMul", [probs, v], name=f"{p}.context.MatMul")     # [b, 4, s, 16]
        ctx = g.op("Transpose", [ctx], name=f"{p}.context.Transpose", perm=[0, 2, 1, 3])
        shape = _runtime_shape(g, ctx, (H,), f"{p}.context")
        ctx = g.op("Reshape", [ctx, shape], name=f"{p}.context.Reshape")  # [b, s, 64]
        return linear(ctx, H, H, f"{p}.o_proj")

    x = "input"
    for i in range(2):
        p = f"layers.{i}"
        a = self_attention(x, f"{p}.attn")
        x = layernorm(g.op("Add", [a, x], name=f"{p}.attn.residual"), f"{p}.norm1")
        f = linear(x, H, FF, f"{p}.ffn.fc1")
        f = gelu(f, f"{p}.ffn.gelu")
        f = linear(f, FF, H, f"{p}.ffn.fc2")
        x = layernorm(g.op("Add", [f, x], name=f"{p}.ffn.residual"), f"{p}.norm2")
    # rename final tensor to the graph output name
    g.nodes[-1].output[0] = "last_hidden_state"
    return g.model("transformer_encoder", [fvi("input", ["batch", "seq", H])],
                   [fvi("last_hidden_state", ["batch", "seq", H])],
                   doc="2 post-LN (BERT-style) transformer encoder layers, hidden 64, 4 heads "
                       "(head size 16), FFN 128 with erf-GELU. Attention written out with "
                       "MatMul/Reshape/Transpose/Softmax, runtime-computed reshape shapes "
                       "(Shape->Gather->Unsqueeze->Concat). Output = last layer's "
                       "LayerNorm output [batch, seq, 64].")


# --------------------------------------------------------------------------
# lstm
# --------------------------------------------------------------------------
def build_lstm() -> onnx.ModelProto:
    """[batch, seq, 8] -> Transpose -> LSTM(16) -> Y_h -> Gemm(4)."""
    g = GraphBuilder(seed=5)
    I, Hd, O = 8, 16, 4
    k = 1.0 / math.sqrt(Hd)  # torch's LSTM init: U(-1/sqrt(H), 1/sqrt(H))
    # ONNX layout: gates stacked in order i, o, f, c
    W = g.rng.uniform(-k, k, (1, 4 * Hd, I)).astype(np.float32)
    R = g.rng.uniform(-k, k, (1, 4 * Hd, Hd)).astype(np.float32)
    B = g.rng.uniform(-k, k, (1, 8 * Hd)).astype(np.float32)  # [Wb_iofc, Rb_iofc]
    w, r, b = g.weight("lstm.W", W), g.weight("lstm.R", R), g.weight("lstm.B", B)
    xt = g.op("Transpose", ["input"], name="to_seq_major", perm=[1, 0, 2])  # [seq, batch, 8]
    g.op("LSTM", [xt, w, r, b], name="lstm", outputs=["lstm.Y", "lstm.Y_h"],
         hidden_size=Hd, direction="forward")
    # Y_h: [num_directions=1, batch, 16] -> [batch, 16]
    h = g.op("Squeeze", ["lstm.Y_h", g.const("squeeze_axes", [0])], name="squeeze_h")
    fw = g.weight("fc.weight", g.xavier((O, Hd), Hd))
    fb = g.weight("fc.bias", g.small((O,)))
    g.op("Gemm", [h, fw, fb], name="fc", outputs=["logits"], transB=1)
    return g.model("lstm", [fvi("input", ["batch", "seq", I])], [fvi("logits", ["batch", O])],
                   doc="Transpose to seq-major -> forward LSTM(hidden 16, W[1,64,8], R[1,64,16], "
                       "B[1,128]) -> Y_h -> Squeeze -> Gemm(4). Y output is unused.")


# --------------------------------------------------------------------------
# if_model
# --------------------------------------------------------------------------
def build_if_model() -> onnx.ModelProto:
    """Conv -> If(ReduceSum(input) > 0) {Conv3x3 outer-scope W | Conv1x1 inner W} -> Conv -> head."""
    g = GraphBuilder(seed=6)
    C = 8
    x = g.relu(g.conv("input", 3, C, 3, bias=True, name="pre.conv"))  # [b, 8, 16, 16]

    total = g.op("ReduceSum", ["input"], name="cond.ReduceSum", keepdims=0)  # scalar
    zero = g.const("cond.zero", np.array(0.0, np.float32), np.float32)
    cond = g.op("Greater", [total, zero], name="cond.Greater")

    # then-branch: Conv3x3 whose weight/bias are OUTER-scope initializers
    w_then = g.weight("then.conv.weight", g.he((C, C, 3, 3), C * 9))
    b_then = g.weight("then.conv.bias", g.small((C,)))
    then_node = helper.make_node("Conv", [x, w_then, b_then], ["then_out"], name="then.conv",
                                 kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    then_relu = helper.make_node("Relu", ["then_out"], ["then_y"], name="then.relu")
    then_graph = helper.make_graph([then_node, then_relu], "then_branch", [],
                                   [fvi("then_y", ["batch", C, 16, 16])])

    # else-branch: Conv1x1 + MatMul-free, weights are INNER initializers of the subgraph
    w_else = numpy_helper.from_array(g.he((C, C, 1, 1), C), "else.conv.weight")
    b_else = numpy_helper.from_array(g.small((C,)), "else.conv.bias")
    else_node = helper.make_node("Conv", [x, "else.conv.weight", "else.conv.bias"], ["else_out"],
                                 name="else.conv", kernel_shape=[1, 1])
    else_relu = helper.make_node("Relu", ["else_out"], ["else_y"], name="else.relu")
    else_graph = helper.make_graph([else_node, else_relu], "else_branch", [],
                                   [fvi("else_y", ["batch", C, 16, 16])],
                                   initializer=[w_else, b_else])

    y = g.op("If", [cond], name="branch", outputs=["if_out"],
             then_branch=then_graph, else_branch=else_graph)
    y = g.relu(g.conv(y, C, 16, 3, stride=2, bias=True, name="post.conv"))  # [b, 16, 8, 8]
    g.classifier_head(y, 16)
    return g.model("if_model", [fvi("input", ["batch", 3, 16, 16])], [fvi("logits", ["batch", 10])],
                   doc="Conv3x3(8)+Relu -> If(ReduceSum(input) > 0): then Conv3x3(8) with "
                       "outer-scope initializers, else Conv1x1(8) with subgraph initializers -> "
                       "Conv3x3(16, stride 2)+Relu -> GAP -> Gemm(10).")


# --------------------------------------------------------------------------
# constant_weights
# --------------------------------------------------------------------------
def build_constant_weights() -> onnx.ModelProto:
    """Small CNN where every weight is a Constant node and there are no initializers."""
    g = GraphBuilder(seed=7, weights_as="constant")
    x = g.conv("input", 3, 8, 3, bias=True, name="conv1")
    x = g.relu(g.bn(x, 8, name="bn1"))
    x = g.conv(x, 8, 16, 3, stride=2, bias=True, name="conv2")
    x = g.relu(g.bn(x, 16, name="bn2"))
    g.classifier_head(x, 16)
    m = g.model("constant_weights", [fvi("input", ["batch", 3, 16, 16])],
                [fvi("logits", ["batch", 10])],
                doc="Conv-BN-Relu x2, GAP, Gemm; every weight held in a Constant node "
                    "(Paddle/tf2onnx style), no initializers.")
    assert len(m.graph.initializer) == 0
    return m


# --------------------------------------------------------------------------
# constantofshape_weights
# --------------------------------------------------------------------------
def build_constantofshape_weights() -> onnx.ModelProto:
    """Small CNN with weights made by ConstantOfShape (onnx test-data "light" style)."""
    g = GraphBuilder(seed=8)

    def cos(name: str, shape: Sequence[int], value: float) -> str:
        shp = g.weight(f"{name}_shape", np.array(shape, dtype=np.int64))
        return g.op("ConstantOfShape", [shp], name=name,
                    value=numpy_helper.from_array(np.array([value], np.float32), "value"))

    # conv1: random weight initializer, bias from ConstantOfShape
    w1 = g.weight("conv1.weight", g.he((8, 3, 3, 3), 27))
    b1 = cos("conv1.bias", [8], 0.01)
    x = g.op("Conv", ["input", w1, b1], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    x = g.relu(g.bn(x, 8, name="bn1"))
    # conv2: weight entirely from ConstantOfShape (all entries equal), no bias
    w2 = cos("conv2.weight", [16, 8, 3, 3], math.sqrt(2.0 / 72) * 0.5)
    x = g.op("Conv", [x, w2], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
             strides=[2, 2])
    # BN scale from ConstantOfShape(1.0), the rest random initializers
    scale = cos("bn2.weight", [16], 1.0)
    ins = [x, scale,
           g.weight("bn2.bias", g.small((16,), 0.1)),
           g.weight("bn2.running_mean", g.small((16,), 0.1)),
           g.weight("bn2.running_var", g.rng.uniform(0.5, 1.5, 16).astype(np.float32))]
    x = g.relu(g.op("BatchNormalization", ins, name="bn2", epsilon=1e-5))
    p = g.op("GlobalAveragePool", [x], name="gap")
    f = g.op("Flatten", [p], name="flatten", axis=1)
    fw = g.weight("fc.weight", g.xavier((10, 16), 16))
    # fc bias: a foldable chain Shape(fc.weight) -> Gather(0) -> Unsqueeze -> ConstantOfShape(0.05)
    s = g.op("Shape", [fw], name="fc.bias.Shape")
    d = g.op("Gather", [s, g.const("fc.bias.index", np.array(0, np.int64))], name="fc.bias.Gather",
             axis=0)
    d = g.op("Unsqueeze", [d, g.const("fc.bias.axes", [0])], name="fc.bias.Unsqueeze")
    fb = g.op("ConstantOfShape", [d], name="fc.bias",
              value=numpy_helper.from_array(np.array([0.05], np.float32), "value"))
    g.op("Gemm", [f, fw, fb], name="fc", outputs=["logits"], transB=1)
    return g.model("constantofshape_weights", [fvi("input", ["batch", 3, 16, 16])],
                   [fvi("logits", ["batch", 10])],
                   doc="Conv(bias=ConstantOfShape)-BN-Relu, Conv(weight=ConstantOfShape)-"
                       "BN(scale=ConstantOfShape)-Relu, GAP, Gemm(bias = Shape->Gather->"
                       "Unsqueeze->ConstantOfShape chain on fc.weight).")


# --------------------------------------------------------------------------
# ir3_inputs
# --------------------------------------------------------------------------
def build_ir3_inputs() -> onnx.ModelProto:
    """ir_version 3 / opset 9 Conv model, every initializer also a graph input."""
    g = GraphBuilder(seed=9)
    x = g.conv("input", 3, 8, 3, bias=True, name="conv1")
    x = g.relu(g.bn(x, 8, name="bn1", momentum=None))  # opset-9 BN: no momentum attribute
    x = g.conv(x, 8, 4, 3, bias=True, name="conv2")
    g.nodes[-1].output[0] = "output"
    inputs = [fvi("input", ["batch", 3, 16, 16])]
    for init in g.initializers:
        inputs.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return g.model("ir3_inputs", inputs, [fvi("output", ["batch", 4, 16, 16])],
                   doc="Old-exporter style: ir_version 3, opset 9, Conv-BN-Relu-Conv; all "
                       "initializers are also listed in graph.input.",
                   opset=9, ir_version=3)


# --------------------------------------------------------------------------
BUILDERS: Dict[str, Callable[[], onnx.ModelProto]] = {
    "resnet_mini": build_resnet_mini,
    "densenet_block": build_densenet_block,
    "mobilenet_block": build_mobilenet_block,
    "transformer_encoder": build_transformer_encoder,
    "lstm": build_lstm,
    "if_model": build_if_model,
    "constant_weights": build_constant_weights,
    "constantofshape_weights": build_constantofshape_weights,
    "ir3_inputs": build_ir3_inputs,
}


def _feeds(model: onnx.ModelProto, batch: int = 2, seq: int = 7, seed: int = 0,
           sign: Optional[float] = None) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    init_names = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = []
        for d in inp.type.tensor_type.shape.dim:
            if d.dim_param == "batch":
                dims.append(batch)
            elif d.dim_param == "seq":
                dims.append(seq)
            else:
                dims.append(d.dim_value)
        x = rng.standard_normal(dims)
        if sign is not None:  # force the sign of every element (e.g. to pick an If branch)
            x = sign * np.abs(x)
        feeds[inp.name] = x.astype(np.float32)
    return feeds


def check(model: onnx.ModelProto, name: str, verbose: bool = True) -> None:
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    # onnx's ReferenceEvaluator runs opset-9 BatchNormalization in training mode (it fills
    # in the schema default momentum and then uses batch statistics), so it is not a valid
    # reference for the opset-9 model; compare against it only for opset >= 14.
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    ref = ReferenceEvaluator(model) if opset >= 14 else None
    cases = [dict(batch=2, seq=7), dict(batch=1, seq=3)]
    if name == "if_model":  # exercise both branches
        cases = [dict(batch=2, sign=1.0), dict(batch=2, sign=-1.0)]
    for case in cases:
        feeds = _feeds(model, **case)
        outs = sess.run(None, feeds)
        for o in outs:
            assert np.all(np.isfinite(o)), f"{name}: non-finite output"
        if ref is not None:
            for o, r in zip(outs, ref.run(None, feeds)):
                np.testing.assert_allclose(o, r, rtol=1e-3, atol=1e-4,
                                           err_msg=f"{name}: onnxruntime vs reference mismatch")
        if verbose:
            print(f"  {name:24s} case={case} out shapes={[o.shape for o in outs]} "
                  f"std={[float(np.std(o)) for o in outs]}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--no-check", action="store_true", help="skip checker/onnxruntime checks")
    ap.add_argument("names", nargs="*", help="subset of models to build")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    names = args.names or list(BUILDERS)
    for name in names:
        model = BUILDERS[name]()
        if not args.no_check:
            check(model, name)
        path = os.path.join(args.out, f"{name}.onnx")
        onnx.save(model, path)
        print(f"wrote {path} ({os.path.getsize(path) / 1024:.1f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
