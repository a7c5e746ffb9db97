"""Build the attention-form samples (``samples/models/attn_*.onnx``) for head/FFN pruning.

Each builder returns an ``onnx.ModelProto`` with random deterministic weights and
dynamic ``batch`` / ``seq`` axes, written the way a particular exporter or
fused op writes multi-head attention:

* ``attn_bert_torchscript`` -- BERT-style post-LN encoder as ``torch.onnx.export(dynamo=False)``
  writes it: Q/K/V ``MatMul + Add``; Reshape targets built at run time
  (``Shape -> Gather -> Unsqueeze -> Concat(B, S, [H], [D])``), K transposed with
  perm (0,2,3,1), ``Div`` by sqrt(D), additive mask from an ``attention_mask``
  input, Softmax, merge Reshape whose last entry is read from the *input's*
  shape (``Gather(Shape(x), 2)``, as ``x.view(B, S, C)`` exports), Erf-GELU FFN.
  ``build_bert(...)`` makes any size (the benchmark uses 12 heads x 32).
* ``attn_tf2onnx`` -- how tf2onnx writes Keras/TF BERT attention (hand-built; tf
  cannot run here, so this is our reading of tf2onnx output, see docs/heads.md):
  opset 13, tokens flattened to 2-D for the dense layers
  (``Reshape [-1, E] -> MatMul + Add``), split Reshape to
  ``Concat(Slice(Shape(x), 0:2), [H, D])``, ``Mul`` of Q by 1/sqrt(D) instead of
  Div, K through two Transposes (BatchMatMul ``adj_y``), Softmax axis 3, merge
  Reshape to the constant ``[-1, H*D]``, LayerNorm decomposed into
  ReduceMean/Sub/Pow/Sqrt/Div, GELU as ``x * 0.5 * (1 + Erf(x * 0.7071))``.
* ``attn_llama_gqa`` -- Llama-style decoder layer: RMSNorm decomposed, 4 query / 2
  KV heads, rotary embeddings (``rotate_half`` via Slice/Neg/Concat) on Q and K,
  HF ``repeat_kv`` as ``Unsqueeze -> Expand(Concat(B, [2], [2], S, [8])) ->
  Reshape(Concat(B, [4], S, [8]))``, causal mask (Trilu/Where), SwiGLU MLP.
* ``attn_ms_attention`` -- ``com.microsoft.Attention`` with packed QKV weight/bias.
* ``attn_ms_mha`` -- ``com.microsoft.MultiHeadAttention`` fed by separate Q/K/V MatMuls,
  packed bias on the node, ``com.microsoft.Gelu`` FFN.
* ``attn_ms_gqa`` -- ``com.microsoft.GroupQueryAttention`` (4 query / 2 KV heads, head
  size 8), ``seqlens_k`` / ``total_sequence_length`` computed in the graph.
* ``attn_onnx_attention`` -- ONNX ``Attention`` (opset 23) with 3-D inputs,
  ``q_num_heads=4, kv_num_heads=2``, ``is_causal=1``, ``Gelu`` (opset 20) FFN.
* ``attn_onnx_attention_4d`` -- ONNX ``Attention`` with 4-D inputs (the head split is
  done by ``Reshape [0, 0, 4, 8] -> Transpose`` before it).

Run ``python samples/build_attention_samples.py [NAME ...] [--out DIR]``; every model is
checked with ``onnx.checker`` (full) and run with onnxruntime at two batch/sequence sizes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent / "models"
PRODUCER = "onnxsparse-attention-samples"


class G:
    """A tiny graph builder: unique names, initializers, nodes."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: dict[str, int] = {}
        self.rng = np.random.default_rng(seed)

    def name(self, base: str) -> str:
        n = self.names.get(base, 0)
        self.names[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def const(self, base: str, value, dtype=np.float32) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, base: str, values: Sequence[int] | int) -> str:
        return self.const(base, values, np.int64)

    def weight(self, base: str, shape: Sequence[int], scale: float | None = None) -> str:
        fan_in = shape[0]
        scale = 1.0 / np.sqrt(fan_in) if scale is None else scale
        return self.const(base, self.rng.standard_normal(shape) * scale)

    def op(self, op_type: str, inputs: Sequence[str], base: str | None = None, outputs: int = 1,
           domain: str = "", **attrs) -> str | list[str]:
        name = self.name(base or op_type)
        outs = [name] if outputs == 1 else [f"{name}.out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, domain=domain, **attrs))
        return outs[0] if outputs == 1 else outs

    def linear(self, x: str, d_in: int, d_out: int, base: str, bias: bool = True) -> str:
        y = self.op("MatMul", [x, self.weight(f"{base}.weight", (d_in, d_out))], f"{base}/MatMul")
        if bias:
            y = self.op("Add", [y, self.const(f"{base}.bias", self.rng.standard_normal(d_out) * 0.02)], f"{base}/Add")
        return y

    def model(self, inputs, outputs, opsets: dict[str, int], ir_version: int = 8) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "attention_sample", inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name=PRODUCER, ir_version=ir_version)
        return m


def _io(name: str, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def _dim(g: G, shape: str, index: int, base: str) -> str:
    """TorchScript-style ``Unsqueeze(Gather(Shape(x), index), [0])``."""
    gathered = g.op("Gather", [shape, g.ints(f"{base}/Constant", index)], f"{base}/Gather", axis=0)
    return g.op("Unsqueeze", [gathered, g.ints(f"{base}/Constant", [0])], f"{base}/Unsqueeze")


def _layernorm(g: G, x: str, e: int, base: str) -> str:
    return g.op("LayerNormalization", [x, g.const(f"{base}.weight", 1 + 0.1 * g.rng.standard_normal(e)),
                                       g.const(f"{base}.bias", 0.1 * g.rng.standard_normal(e))],
                base, axis=-1, epsilon=1e-5)


def _erf_gelu(g: G, x: str, base: str) -> str:
    d = g.op("Div", [x, g.const(f"{base}/sqrt2", 1.4142135)], f"{base}/Div")
    e = g.op("Erf", [d], f"{base}/Erf")
    a = g.op("Add", [e, g.const(f"{base}/one", 1.0)], f"{base}/Add")
    m = g.op("Mul", [x, a], f"{base}/Mul")
    return g.op("Mul", [m, g.const(f"{base}/half", 0.5)], f"{base}/Mul")


# ------------------------------------------------------------------------------------------
# TorchScript-style BERT encoder
# ------------------------------------------------------------------------------------------

def build_bert(layers: int = 2, hidden: int = 32, heads: int = 4, ffn: int = 64, seed: int = 0,
               with_mask: bool = True) -> onnx.ModelProto:
    """Post-LN BERT encoder written the way the TorchScript exporter writes it."""
    g = G(seed)
    d = hidden // heads
    x = "input"
    mask_add = None
    if with_mask:
        m = g.op("Unsqueeze", ["attention_mask", g.ints("/Constant", [1, 2])], "/Unsqueeze")
        inv = g.op("Sub", [g.const("/one", 1.0), m], "/Sub")
        mask_add = g.op("Mul", [inv, g.const("/neg", -10000.0)], "/Mul")
    for i in range(layers):
        p = f"/encoder/layer.{i}/attention/self"
        s = f"encoder.layer.{i}.attention.self"
        shape_x = g.op("Shape", [x], f"{p}/Shape")
        b = g.op("Gather", [shape_x, g.ints(f"{p}/Constant", 0)], f"{p}/Gather", axis=0)
        shape_x2 = g.op("Shape", [x], f"{p}/Shape")
        sq = g.op("Gather", [shape_x2, g.ints(f"{p}/Constant", 1)], f"{p}/Gather", axis=0)
        shape_x3 = g.op("Shape", [x], f"{p}/Shape")
        c = g.op("Gather", [shape_x3, g.ints(f"{p}/Constant", 2)], f"{p}/Gather", axis=0)
        heads_t = []
        for role, perm in (("query", (0, 2, 1, 3)), ("key", (0, 2, 3, 1)), ("value", (0, 2, 1, 3))):
            y = g.linear(x, hidden, hidden, f"{s}.{role}")
            ub = g.op("Unsqueeze", [b, g.ints(f"{p}/Constant", [0])], f"{p}/Unsqueeze")
            us = g.op("Unsqueeze", [sq, g.ints(f"{p}/Constant", [0])], f"{p}/Unsqueeze")
            target = g.op("Concat", [ub, us, g.ints(f"{p}/Constant", [heads]), g.ints(f"{p}/Constant", [d])],
                          f"{p}/Concat", axis=0)
            r = g.op("Reshape", [y, target], f"{p}/Reshape")
            heads_t.append(g.op("Transpose", [r], f"{p}/Transpose", perm=list(perm)))
        q, k, v = heads_t
        scores = g.op("MatMul", [q, k], f"{p}/MatMul")
        scores = g.op("Div", [scores, g.const(f"{p}/Constant", float(np.sqrt(d)))], f"{p}/Div")
        if mask_add is not None:
            scores = g.op("Add", [scores, mask_add], f"{p}/Add")
        probs = g.op("Softmax", [scores], f"{p}/Softmax", axis=-1)
        ctx = g.op("MatMul", [probs, v], f"{p}/MatMul")
        ctx = g.op("Transpose", [ctx], f"{p}/Transpose", perm=[0, 2, 1, 3])
        ub = g.op("Unsqueeze", [b, g.ints(f"{p}/Constant", [0])], f"{p}/Unsqueeze")
        us = g.op("Unsqueeze", [sq, g.ints(f"{p}/Constant", [0])], f"{p}/Unsqueeze")
        uc = g.op("Unsqueeze", [c, g.ints(f"{p}/Constant", [0])], f"{p}/Unsqueeze")
        target = g.op("Concat", [ub, us, uc], f"{p}/Concat", axis=0)
        ctx = g.op("Reshape", [ctx, target], f"{p}/Reshape")
        o = g.linear(ctx, hidden, hidden, f"encoder.layer.{i}.attention.output.dense")
        h1 = _layernorm(g, g.op("Add", [o, x], f"/encoder/layer.{i}/attention/output/Add"), hidden,
                        f"encoder.layer.{i}.attention.output.LayerNorm")
        f1 = g.linear(h1, hidden, ffn, f"encoder.layer.{i}.intermediate.dense")
        act = _erf_gelu(g, f1, f"/encoder/layer.{i}/intermediate/intermediate_act_fn")
        f2 = g.linear(act, ffn, hidden, f"encoder.layer.{i}.output.dense")
        x = _layernorm(g, g.op("Add", [f2, h1], f"/encoder/layer.{i}/output/Add"), hidden,
                       f"encoder.layer.{i}.output.LayerNorm")
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
    inputs = [_io("input", ["batch", "seq", hidden])]
    if with_mask:
        inputs.append(_io("attention_mask", ["batch", "seq"]))
    return g.model(inputs, [_io("last_hidden_state", ["batch", "seq", hidden])], {"": 17})


def build_attn_bert_torchscript() -> onnx.ModelProto:
    return build_bert(layers=2, hidden=32, heads=4, ffn=64, seed=1)


# ------------------------------------------------------------------------------------------
# tf2onnx-style encoder
# ------------------------------------------------------------------------------------------

def _decomposed_layernorm(g: G, x: str, e: int, base: str) -> str:
    mean = g.op("ReduceMean", [x], f"{base}/moments/mean", axes=[-1], keepdims=1)
    diff = g.op("Sub", [x, mean], f"{base}/sub")
    sq = g.op("Pow", [diff, g.const(f"{base}/two", 2.0)], f"{base}/pow")
    var = g.op("ReduceMean", [sq], f"{base}/moments/variance", axes=[-1], keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [var, g.const(f"{base}/eps", 1e-12)], f"{base}/add")], f"{base}/Sqrt")
    norm = g.op("Div", [diff, std], f"{base}/truediv")
    scaled = g.op("Mul", [norm, g.const(f"{base}/gamma", 1 + 0.1 * g.rng.standard_normal(e))], f"{base}/mul")
    return g.op("Add", [scaled, g.const(f"{base}/beta", 0.1 * g.rng.standard_normal(e))], f"{base}/add_1")


def build_attn_tf2onnx(layers: int = 2, hidden: int = 32, heads: int = 4, ffn: int = 64) -> onnx.ModelProto:
    g = G(2)
    d = hidden // heads
    x3 = "input"
    m = g.op("Unsqueeze", ["attention_mask", g.ints("bert/encoder/ExpandDims/dim", [1, 2])], "bert/encoder/ExpandDims")
    m = g.op("Sub", [g.const("bert/encoder/sub/x", 1.0), m], "bert/encoder/sub")
    mask_add = g.op("Mul", [m, g.const("bert/encoder/mul/y", -10000.0)], "bert/encoder/mul")
    for i in range(layers):
        p = f"bert/encoder/layer_{i}/attention/self"
        shape3 = g.op("Shape", [x3], f"{p}/Shape")
        bs = g.op("Slice", [shape3, g.ints(f"{p}/strided_slice/begin", [0]), g.ints(f"{p}/strided_slice/end", [2]),
                            g.ints(f"{p}/strided_slice/axes", [0])], f"{p}/strided_slice")
        x2 = g.op("Reshape", [x3, g.ints(f"{p}/Reshape/shape", [-1, hidden])], f"{p}/Reshape")
        heads_t = []
        for role in ("query", "key", "value"):
            y = g.linear(x2, hidden, hidden, f"{p}/{role}")
            target = g.op("Concat", [bs, g.ints(f"{p}/{role}/heads", [heads, d])], f"{p}/{role}/concat", axis=0)
            r = g.op("Reshape", [y, target], f"{p}/{role}/Reshape")
            heads_t.append(g.op("Transpose", [r], f"{p}/{role}/transpose", perm=[0, 2, 1, 3]))
        q, k, v = heads_t
        q = g.op("Mul", [q, g.const(f"{p}/Mul/y", 1.0 / np.sqrt(d))], f"{p}/Mul")
        kt = g.op("Transpose", [k], f"{p}/MatMul/adj_y", perm=[0, 1, 3, 2])
        scores = g.op("MatMul", [q, kt], f"{p}/MatMul")
        scores = g.op("Add", [scores, mask_add], f"{p}/add")
        probs = g.op("Softmax", [scores], f"{p}/Softmax", axis=3)
        ctx = g.op("MatMul", [probs, v], f"{p}/MatMul_1")
        ctx = g.op("Transpose", [ctx], f"{p}/transpose_3", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.ints(f"{p}/Reshape_3/shape", [-1, hidden])], f"{p}/Reshape_3")
        o = g.linear(ctx, hidden, hidden, f"bert/encoder/layer_{i}/attention/output/dense")
        h = _decomposed_layernorm(g, g.op("Add", [o, x2], f"bert/encoder/layer_{i}/attention/output/add"), hidden,
                                  f"bert/encoder/layer_{i}/attention/output/LayerNorm")
        f1 = g.linear(h, hidden, ffn, f"bert/encoder/layer_{i}/intermediate/dense")
        t = g.op("Mul", [f1, g.const(f"bert/encoder/layer_{i}/intermediate/mul/y", 0.70710677)],
                 f"bert/encoder/layer_{i}/intermediate/mul")
        t = g.op("Erf", [t], f"bert/encoder/layer_{i}/intermediate/Erf")
        t = g.op("Add", [t, g.const(f"bert/encoder/layer_{i}/intermediate/add/y", 1.0)],
                 f"bert/encoder/layer_{i}/intermediate/add")
        t = g.op("Mul", [g.op("Mul", [f1, g.const(f"bert/encoder/layer_{i}/intermediate/half", 0.5)],
                               f"bert/encoder/layer_{i}/intermediate/mul_1"), t],
                 f"bert/encoder/layer_{i}/intermediate/mul_2")
        f2 = g.linear(t, ffn, hidden, f"bert/encoder/layer_{i}/output/dense")
        out2 = _decomposed_layernorm(g, g.op("Add", [f2, h], f"bert/encoder/layer_{i}/output/add"), hidden,
                                     f"bert/encoder/layer_{i}/output/LayerNorm")
        x3 = g.op("Reshape", [out2, shape3], f"bert/encoder/layer_{i}/Reshape_out")
    g.nodes.append(helper.make_node("Identity", [x3], ["sequence_output"], name="sequence_output"))
    return g.model([_io("input", ["batch", "seq", hidden]), _io("attention_mask", ["batch", "seq"])],
                   [_io("sequence_output", ["batch", "seq", hidden])], {"": 13}, ir_version=7)


# ------------------------------------------------------------------------------------------
# Llama-style GQA with rotary embeddings and HF repeat_kv (Expand)
# ------------------------------------------------------------------------------------------

def _rms(g: G, x: str, e: int, base: str) -> str:
    sq = g.op("Pow", [x, g.const(f"{base}/two", 2.0)], f"{base}/Pow")
    var = g.op("ReduceMean", [sq], f"{base}/ReduceMean", axes=[-1], keepdims=1)
    r = g.op("Sqrt", [g.op("Add", [var, g.const(f"{base}/eps", 1e-6)], f"{base}/Add")], f"{base}/Sqrt")
    n = g.op("Div", [x, r], f"{base}/Div")
    return g.op("Mul", [g.const(f"{base}.weight", 1 + 0.1 * g.rng.standard_normal(e)), n], f"{base}/Mul")


def _rotate(g: G, x: str, d: int, cos: str, sin: str, base: str) -> str:
    half = d // 2
    x1 = g.op("Slice", [x, g.ints(f"{base}/s0", [0]), g.ints(f"{base}/e0", [half]), g.ints(f"{base}/ax", [-1])],
              f"{base}/Slice")
    x2 = g.op("Slice", [x, g.ints(f"{base}/s1", [half]), g.ints(f"{base}/e1", [d]), g.ints(f"{base}/ax", [-1])],
              f"{base}/Slice")
    rot = g.op("Concat", [g.op("Neg", [x2], f"{base}/Neg"), x1], f"{base}/Concat", axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos], f"{base}/Mul"), g.op("Mul", [rot, sin], f"{base}/Mul")], f"{base}/Add")


def build_attn_llama_gqa(hidden: int = 32, hq: int = 4, hkv: int = 2, inter: int = 48) -> onnx.ModelProto:
    g = G(3)
    d = hidden // hq
    rep = hq // hkv
    x = "input"
    p = "/model/layers.0/self_attn"
    sh = g.op("Shape", [x], f"{p}/Shape")
    b = _dim(g, sh, 0, p)
    s = _dim(g, sh, 1, p)
    # rotary tables from positions: cos/sin [S, D]
    seq = g.op("Gather", [sh, g.ints(f"{p}/Constant", 1)], f"{p}/Gather", axis=0)
    pos = g.op("Cast", [g.op("Range", [g.ints("/rotary/start", 0), seq, g.ints("/rotary/delta", 1)], "/rotary/Range")],
               "/rotary/Cast", to=TensorProto.FLOAT)
    inv = 1.0 / (10000 ** (np.arange(0, d, 2) / d))
    freqs = g.op("Mul", [g.op("Unsqueeze", [pos, g.ints("/rotary/ax1", [1])], "/rotary/Unsqueeze"),
                         g.const("/rotary/inv_freq", inv[None, :])], "/rotary/Mul")
    emb = g.op("Concat", [freqs, freqs], "/rotary/Concat", axis=-1)
    cos, sin = g.op("Cos", [emb], "/rotary/Cos"), g.op("Sin", [emb], "/rotary/Sin")
    h = _rms(g, x, hidden, "model.layers.0.input_layernorm")
    outs = []
    for role, heads_n in (("q_proj", hq), ("k_proj", hkv), ("v_proj", hkv)):
        y = g.linear(h, hidden, heads_n * d, f"model.layers.0.self_attn.{role}", bias=False)
        target = g.op("Concat", [b, s, g.ints(f"{p}/Constant", [heads_n]), g.ints(f"{p}/Constant", [d])],
                      f"{p}/Concat", axis=0)
        outs.append(g.op("Transpose", [g.op("Reshape", [y, target], f"{p}/Reshape")], f"{p}/Transpose",
                         perm=[0, 2, 1, 3]))
    q, k, v = outs
    q = _rotate(g, q, d, cos, sin, f"{p}/rope_q")
    k = _rotate(g, k, d, cos, sin, f"{p}/rope_k")
    repeated = []
    for t in (k, v):
        u = g.op("Unsqueeze", [t, g.ints(f"{p}/Constant", [2])], f"{p}/Unsqueeze")
        shape = g.op("Concat", [b, g.ints(f"{p}/Constant", [hkv]), g.ints(f"{p}/Constant", [rep]), s,
                                g.ints(f"{p}/Constant", [d])], f"{p}/Concat", axis=0)
        e = g.op("Expand", [u, shape], f"{p}/Expand")
        merged = g.op("Concat", [b, g.ints(f"{p}/Constant", [hq]), s, g.ints(f"{p}/Constant", [d])],
                      f"{p}/Concat", axis=0)
        repeated.append(g.op("Reshape", [e, merged], f"{p}/Reshape"))
    k, v = repeated
    scores = g.op("MatMul", [q, g.op("Transpose", [k], f"{p}/Transpose", perm=[0, 1, 3, 2])], f"{p}/MatMul")
    scores = g.op("Mul", [scores, g.const(f"{p}/scale", 1.0 / np.sqrt(d))], f"{p}/Mul")
    ones = g.op("ConstantOfShape", [g.op("Concat", [s, s], f"{p}/Concat", axis=0)], f"{p}/ConstantOfShape",
                value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    upper = g.op("Cast", [g.op("Trilu", [ones, g.ints(f"{p}/k", 1)], f"{p}/Trilu", upper=1)], f"{p}/Cast",
                 to=TensorProto.BOOL)
    scores = g.op("Where", [upper, g.const(f"{p}/min", np.finfo(np.float32).min), scores], f"{p}/Where")
    probs = g.op("Softmax", [scores], f"{p}/Softmax", axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v], f"{p}/MatMul")], f"{p}/Transpose", perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.op("Concat", [b, s, g.ints(f"{p}/Constant", [-1])], f"{p}/Concat", axis=0)],
               f"{p}/Reshape")
    o = g.linear(ctx, hq * d, hidden, "model.layers.0.self_attn.o_proj", bias=False)
    x = g.op("Add", [x, o], "/model/layers.0/Add")
    h = _rms(g, x, hidden, "model.layers.0.post_attention_layernorm")
    gate = g.linear(h, hidden, inter, "model.layers.0.mlp.gate_proj", bias=False)
    up = g.linear(h, hidden, inter, "model.layers.0.mlp.up_proj", bias=False)
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], "/model/layers.0/mlp/act_fn/Sigmoid")],
                "/model/layers.0/mlp/act_fn/Mul")
    down = g.linear(g.op("Mul", [silu, up], "/model/layers.0/mlp/Mul"), inter, hidden,
                    "model.layers.0.mlp.down_proj", bias=False)
    g.op("Add", [x, down], "output")
    g.nodes[-1].output[0] = "output"
    return g.model([_io("input", ["batch", "seq", hidden])], [_io("output", ["batch", "seq", hidden])], {"": 17})


# ------------------------------------------------------------------------------------------
# Fused ops
# ------------------------------------------------------------------------------------------

def _ffn_block(g: G, x: str, hidden: int, inter: int, base: str, act: str = "Relu") -> str:
    f1 = g.linear(x, hidden, inter, f"{base}.fc1")
    if act == "ms_gelu":
        a = g.op("Gelu", [f1], f"{base}/Gelu", domain="com.microsoft")
    elif act == "gelu":
        a = g.op("Gelu", [f1], f"{base}/Gelu")
    else:
        a = g.op(act, [f1], f"{base}/{act}")
    f2 = g.linear(a, inter, hidden, f"{base}.fc2")
    return _layernorm(g, g.op("Add", [f2, x], f"{base}/Add"), hidden, f"{base}.norm")


def build_attn_ms_attention(layers: int = 2, hidden: int = 32, heads: int = 4) -> onnx.ModelProto:
    g = G(4)
    x = "input"
    for i in range(layers):
        base = f"layers.{i}.attn"
        w = g.weight(f"{base}.qkv.weight", (hidden, 3 * hidden))
        bias = g.const(f"{base}.qkv.bias", g.rng.standard_normal(3 * hidden) * 0.02)
        a = g.op("Attention", [x, w, bias], f"/{base}/Attention", domain="com.microsoft", num_heads=heads)
        o = g.linear(a, hidden, hidden, f"{base}.o_proj")
        h = _layernorm(g, g.op("Add", [o, x], f"/{base}/Add"), hidden, f"layers.{i}.norm1")
        x = _ffn_block(g, h, hidden, 2 * hidden, f"layers.{i}.ffn", "Relu")
    g.nodes.append(helper.make_node("Identity", [x], ["output"], name="output"))
    return g.model([_io("input", ["batch", "seq", hidden])], [_io("output", ["batch", "seq", hidden])],
                   {"": 17, "com.microsoft": 1})


def build_attn_ms_mha(layers: int = 2, hidden: int = 32, heads: int = 4) -> onnx.ModelProto:
    g = G(5)
    x = "input"
    for i in range(layers):
        base = f"layers.{i}.attn"
        q, k, v = (g.linear(x, hidden, hidden, f"{base}.{r}_proj", bias=False) for r in "qkv")
        bias = g.const(f"{base}.qkv_bias", g.rng.standard_normal(3 * hidden) * 0.02)
        a = g.op("MultiHeadAttention", [q, k, v, bias], f"/{base}/MultiHeadAttention", domain="com.microsoft",
                 num_heads=heads)
        o = g.linear(a, hidden, hidden, f"{base}.o_proj")
        h = _layernorm(g, g.op("Add", [o, x], f"/{base}/Add"), hidden, f"layers.{i}.norm1")
        x = _ffn_block(g, h, hidden, 2 * hidden, f"layers.{i}.ffn", "ms_gelu")
    g.nodes.append(helper.make_node("Identity", [x], ["output"], name="output"))
    return g.model([_io("input", ["batch", "seq", hidden])], [_io("output", ["batch", "seq", hidden])],
                   {"": 17, "com.microsoft": 1})


def build_attn_ms_gqa(hidden: int = 32, hq: int = 4, hkv: int = 2) -> onnx.ModelProto:
    g = G(6)
    d = hidden // hq
    x = "input"
    base = "layers.0.attn"
    sh = g.op("Shape", [x], "/seqlens/Shape")
    seq = g.op("Cast", [g.op("Gather", [sh, g.ints("/seqlens/one", 1)], "/seqlens/Gather", axis=0)], "/seqlens/Cast",
               to=TensorProto.INT32)
    batch = g.op("Slice", [sh, g.ints("/seqlens/s", [0]), g.ints("/seqlens/e", [1])], "/seqlens/Slice")
    last = g.op("Sub", [seq, g.const("/seqlens/int_one", 1, np.int32)], "/seqlens/Sub")
    seqlens = g.op("Expand", [g.op("Unsqueeze", [last, g.ints("/seqlens/ax", [0])], "/seqlens/Unsqueeze"), batch],
                   "/seqlens/Expand")
    q = g.linear(x, hidden, hq * d, f"{base}.q_proj")
    k = g.linear(x, hidden, hkv * d, f"{base}.k_proj")
    v = g.linear(x, hidden, hkv * d, f"{base}.v_proj")
    a = g.op("GroupQueryAttention", [q, k, v, "", "", seqlens, seq], f"/{base}/GroupQueryAttention", outputs=3,
             domain="com.microsoft", num_heads=hq, kv_num_heads=hkv)[0]
    o = g.linear(a, hq * d, hidden, f"{base}.o_proj")
    h = _layernorm(g, g.op("Add", [o, x], f"/{base}/Add"), hidden, "layers.0.norm1")
    gate = g.linear(h, hidden, 48, "layers.0.mlp.gate_proj", bias=False)
    up = g.linear(h, hidden, 48, "layers.0.mlp.up_proj", bias=False)
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], "/layers.0/mlp/Sigmoid")], "/layers.0/mlp/Mul")
    down = g.linear(g.op("Mul", [silu, up], "/layers.0/mlp/Mul"), 48, hidden, "layers.0.mlp.down_proj", bias=False)
    g.op("Add", [h, down], "output")
    g.nodes[-1].output[0] = "output"
    return g.model([_io("input", ["batch", "seq", hidden])], [_io("output", ["batch", "seq", hidden])],
                   {"": 17, "com.microsoft": 1})


def build_attn_onnx_attention(hidden: int = 32, hq: int = 4, hkv: int = 2, layers: int = 2) -> onnx.ModelProto:
    g = G(7)
    d = hidden // hq
    x = "input"
    for i in range(layers):
        base = f"layers.{i}.attn"
        q = g.linear(x, hidden, hq * d, f"{base}.q_proj")
        k = g.linear(x, hidden, hkv * d, f"{base}.k_proj")
        v = g.linear(x, hidden, hkv * d, f"{base}.v_proj")
        a = g.op("Attention", [q, k, v], f"/{base}/Attention", q_num_heads=hq, kv_num_heads=hkv, is_causal=1)
        o = g.linear(a, hq * d, hidden, f"{base}.o_proj")
        h = _layernorm(g, g.op("Add", [o, x], f"/{base}/Add"), hidden, f"layers.{i}.norm1")
        x = _ffn_block(g, h, hidden, 2 * hidden, f"layers.{i}.ffn", "gelu")
    g.nodes.append(helper.make_node("Identity", [x], ["output"], name="output"))
    return g.model([_io("input", ["batch", "seq", hidden])], [_io("output", ["batch", "seq", hidden])],
                   {"": 23}, ir_version=11)


def build_attn_onnx_attention_4d(hidden: int = 32, heads: int = 4) -> onnx.ModelProto:
    g = G(8)
    d = hidden // heads
    x = "input"
    base = "layers.0.attn"
    split = g.ints(f"/{base}/split_shape", [0, 0, heads, d])
    qkv = []
    for r in "qkv":
        y = g.linear(x, hidden, hidden, f"{base}.{r}_proj")
        qkv.append(g.op("Transpose", [g.op("Reshape", [y, split], f"/{base}/{r}/Reshape")], f"/{base}/{r}/Transpose",
                        perm=[0, 2, 1, 3]))
    a = g.op("Attention", qkv, f"/{base}/Attention")
    a = g.op("Transpose", [a], f"/{base}/out/Transpose", perm=[0, 2, 1, 3])
    a = g.op("Reshape", [a, g.ints(f"/{base}/merge_shape", [0, 0, hidden])], f"/{base}/out/Reshape")
    o = g.linear(a, hidden, hidden, f"{base}.o_proj")
    h = _layernorm(g, g.op("Add", [o, x], f"/{base}/Add"), hidden, "layers.0.norm1")
    x = _ffn_block(g, h, hidden, 2 * hidden, "layers.0.ffn", "Relu")
    g.nodes.append(helper.make_node("Identity", [x], ["output"], name="output"))
    return g.model([_io("input", ["batch", "seq", hidden])], [_io("output", ["batch", "seq", hidden])],
                   {"": 23}, ir_version=11)


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "attn_bert_torchscript": build_attn_bert_torchscript,
    "attn_tf2onnx": build_attn_tf2onnx,
    "attn_llama_gqa": build_attn_llama_gqa,
    "attn_ms_attention": build_attn_ms_attention,
    "attn_ms_mha": build_attn_ms_mha,
    "attn_ms_gqa": build_attn_ms_gqa,
    "attn_onnx_attention": build_attn_onnx_attention,
    "attn_onnx_attention_4d": build_attn_onnx_attention_4d,
}


def feeds_for(model: onnx.ModelProto, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else (batch if d.dim_param == "batch" else seq)
                for d in inp.type.tensor_type.shape.dim]
        if inp.name == "attention_mask":
            mask = np.ones(dims, np.float32)
            mask[:, -1:] = 0.0  # one padded position per row
            feeds[inp.name] = mask
        else:
            feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def check(model: onnx.ModelProto) -> None:
    import onnxruntime as ort

    onnx.checker.check_model(model, full_check=True)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    for batch, seq in ((2, 7), (1, 3)):
        out = sess.run(None, feeds_for(model, batch, seq))[0]
        assert out.shape[:2] == (batch, seq), out.shape
        assert np.isfinite(out).all()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"subset of {', '.join(BUILDERS)}")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    names = args.names or list(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        parser.error(f"unknown sample(s): {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        model = BUILDERS[name]()
        check(model)
        path = args.out / f"{name}.onnx"
        onnx.save(model, str(path))
        print(f"{path}  {path.stat().st_size / 1024:.1f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
