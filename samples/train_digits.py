#!/usr/bin/env python
"""Train small PyTorch models on scikit-learn's digits and export them to ONNX.

Needs ``torch`` (``pip install torch==2.13.0``, CPU) and ``scikit-learn``.

Writes (relative to this file):

* ``models/digits_cnn.onnx``            CNN, TorchScript exporter, opset 17, constant folding
* ``models/digits_cnn_bn.onnx``         same CNN, do_constant_folding=False (only written when
                                        the first export folded BatchNormalization into Conv)
* ``models/digits_transformer.onnx``    rows-as-tokens transformer, TorchScript exporter,
                                        opset 17, dynamic batch and sequence axes
* ``models/digits_transformer_dynamo.onnx``  same weights, ``torch.onnx.export(dynamo=True)``,
                                        opset 18, dynamic batch
* ``models/tiny_decoder_kv.onnx``       2-layer GPT-style decoder with KV-cache inputs/outputs
                                        (untrained)
* ``models/tiny_gqa.onnx``              grouped-query-attention decoder layer (untrained)
* ``data/digits_test.npz`` (``input`` [N,1,8,8]), ``data/digits_test_tokens.npz``
  (``input`` [N,8,8]), ``data/digits_test_labels.npy`` (int64 [N]),
  ``data/digits_calib.npz`` / ``data/digits_calib_tokens.npz`` (128 training images)
* ``data/digits_results.json``          accuracies measured with onnxruntime
* the results table in ``README.md`` (between the ``digits-results`` markers)

Everything is seeded; run from anywhere: ``python samples/train_digits.py``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import warnings
from typing import Dict, List, Tuple

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "models")
DATA = os.path.join(HERE, "data")
README = os.path.join(HERE, "README.md")
SEED = 0
MAX_IR_VERSION = 10  # onnxruntime 1.31 handles <= 11; stay conservative


def seed_everything(seed: int = SEED) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def load_data() -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.data.astype(np.float32) / 16.0).reshape(-1, 8, 8)  # [0, 1]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y,
                                              random_state=SEED)
    return x_tr, x_te, y_tr, y_te


def save_data(x_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> None:
    os.makedirs(DATA, exist_ok=True)
    np.savez_compressed(os.path.join(DATA, "digits_test.npz"), input=x_te[:, None])
    np.savez_compressed(os.path.join(DATA, "digits_test_tokens.npz"), input=x_te)
    np.save(os.path.join(DATA, "digits_test_labels.npy"), y_te.astype(np.int64))
    idx = np.sort(np.random.default_rng(SEED).choice(len(x_tr), 128, replace=False))
    np.savez_compressed(os.path.join(DATA, "digits_calib.npz"), input=x_tr[idx, None])
    np.savez_compressed(os.path.join(DATA, "digits_calib_tokens.npz"), input=x_tr[idx])


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------
class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class MultiHeadSelfAttention(nn.Module):
    """Explicit MHSA (no nn.MultiheadAttention / SDPA) so the export stays decomposed."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).transpose(1, 2).contiguous().view(b, s, d)
        return self.o_proj(ctx)


class EncoderLayer(nn.Module):
    """Pre-LN encoder layer: x + MHSA(LN(x)); x + FFN(LN(x)), FFN = 64->128 GELU ->64."""

    def __init__(self, dim: int = 64, heads: int = 4, ffn: int = 128) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class DigitsTransformer(nn.Module):
    """8 image rows = 8 tokens of 8 features -> 2 encoder layers -> mean-pool -> Linear(10)."""

    def __init__(self, dim: int = 64, layers: int = 2, max_len: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        self.layers = nn.ModuleList([EncoderLayer(dim) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos[:, : x.shape[1]]
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h).mean(dim=1))


# -- untrained decoder models -------------------------------------------------
class CausalSelfAttentionKV(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor):
        b, s, d = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = torch.cat([past_k, k], dim=2)  # [b, h, past + s, hd]
        v = torch.cat([past_v, v], dim=2)
        past_len = past_k.shape[2]
        total = k.shape[2]
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        q_pos = torch.arange(s, device=x.device) + past_len
        k_pos = torch.arange(total, device=x.device)
        masked = k_pos[None, :] > q_pos[:, None]            # [s, total]
        scores = scores.masked_fill(masked, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).transpose(1, 2).contiguous().view(b, s, d)
        return self.o_proj(ctx), k, v


class DecoderBlockKV(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttentionKV(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.fc_in = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(4 * dim, dim)

    def forward(self, x, past_k, past_v):
        a, k, v = self.attn(self.ln_1(x), past_k, past_v)
        x = x + a
        x = x + self.fc_out(self.act(self.fc_in(self.ln_2(x))))
        return x, k, v


class TinyDecoderKV(nn.Module):
    """GPT-2-like: token + learned position embeddings, 2 pre-LN blocks, final LN, lm_head."""

    def __init__(self, vocab: int = 64, dim: int = 32, heads: int = 4, layers: int = 2,
                 max_pos: int = 128) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(max_pos, dim)
        self.blocks = nn.ModuleList([DecoderBlockKV(dim, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        past_len = past[0].shape[2]
        pos = torch.arange(input_ids.shape[1], device=input_ids.device) + past_len
        h = self.wte(input_ids) + self.wpe(pos)[None]
        presents: List[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            h, k, v = blk(h, past[2 * i], past[2 * i + 1])
            presents += [k, v]
        return (self.lm_head(self.ln_f(h)), *presents)


class GQAAttention(nn.Module):
    """4 query heads, 2 key/value heads; K/V heads expanded with repeat_interleave."""

    def __init__(self, dim: int = 32, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        rep = self.heads // self.kv_heads
        k = k.repeat_interleave(rep, dim=1)  # [b, 4, s, hd]
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(causal, torch.finfo(scores.dtype).min)
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        ctx = ctx.transpose(1, 2).contiguous().view(b, s, self.heads * self.head_dim)
        return self.o_proj(ctx)


class TinyGQA(nn.Module):
    """Llama-like decoder layer: LN -> GQA attention -> residual -> LN -> SiLU-gated MLP."""

    def __init__(self, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(dim)
        self.self_attn = GQAAttention(dim)
        self.post_attention_layernorm = nn.LayerNorm(dim)
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


# --------------------------------------------------------------------------
# training / evaluation
# --------------------------------------------------------------------------
def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float,
          batch: int = 64, wd: float = 1e-4) -> None:
    g = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    steps = epochs * math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def ort_accuracy(path: str, x: np.ndarray, y: np.ndarray) -> float:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x})[0]
    return float((logits.argmax(1) == y).mean())


# --------------------------------------------------------------------------
# export helpers
# --------------------------------------------------------------------------
def finalize(path: str) -> onnx.ModelProto:
    """Load (with any external data), clamp ir_version, check, save as a single file."""
    model = onnx.load(path, load_external_data=True)
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    for init in model.graph.initializer:  # make sure nothing points at an external file
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"{path}: initializer {init.name} still external")
    onnx.checker.check_model(model, full_check=True)
    data_file = path + ".data"
    onnx.save(model, path)
    if os.path.exists(data_file):
        os.remove(data_file)
    ort.InferenceSession(path, providers=["CPUExecutionProvider"])  # must load
    return model


def export_torchscript(model: nn.Module, args: Tuple, path: str, input_names: List[str],
                       output_names: List[str], dynamic_axes: Dict[str, Dict[int, str]],
                       do_constant_folding: bool = True) -> onnx.ModelProto:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, dynamo=False, opset_version=17,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, do_constant_folding=do_constant_folding,
                          training=torch.onnx.TrainingMode.EVAL)
    return finalize(path)


def op_counts(model: onnx.ModelProto) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


def io_desc(model: onnx.ModelProto) -> Dict[str, List[str]]:
    def shp(v):
        t = v.type.tensor_type
        dims = [d.dim_param or str(d.dim_value) if (d.dim_param or d.HasField("dim_value"))
                else "?" for d in t.shape.dim]
        return f"{v.name} {onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}[{','.join(dims)}]"

    inits = {i.name for i in model.graph.initializer}
    return {"inputs": [shp(v) for v in model.graph.input if v.name not in inits],
            "outputs": [shp(v) for v in model.graph.output]}


def reshape_shape_sources(model: onnx.ModelProto) -> Dict[str, int]:
    """How the shape input of each Reshape is produced: constant vs computed at run time."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    res = {"constant": 0, "runtime": 0}
    for n in model.graph.node:
        if n.op_type != "Reshape":
            continue
        src = n.input[1]
        if src in inits or (src in producers and producers[src].op_type == "Constant"):
            res["constant"] += 1
        else:
            res["runtime"] += 1
    return res


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def main() -> int:
    t0 = time.time()
    torch.set_num_threads(1)  # bit-reproducible training
    os.makedirs(MODELS, exist_ok=True)
    x_tr, x_te, y_tr, y_te = load_data()
    save_data(x_tr, x_te, y_te)
    x_tr_img, x_te_img = x_tr[:, None], x_te[:, None]
    results: Dict[str, Dict] = {}
    problems: List[str] = []
    print(f"digits: train {len(x_tr)}, test {len(x_te)}")

    # ---- CNN -----------------------------------------------------------------
    seed_everything()
    cnn = DigitsCNN()
    train(cnn, x_tr_img, y_tr, epochs=30, lr=1e-2)
    acc_t = torch_accuracy(cnn, x_te_img, y_te)
    dummy = torch.from_numpy(x_te_img[:2])
    path = os.path.join(MODELS, "digits_cnn.onnx")
    m = export_torchscript(cnn, (dummy,), path, ["input"], ["logits"],
                           {"input": {0: "batch"}, "logits": {0: "batch"}})
    acc = ort_accuracy(path, x_te_img, y_te)
    results["digits_cnn"] = dict(torch_acc=acc_t, ort_acc=acc, ops=op_counts(m), **io_desc(m))
    print(f"digits_cnn: torch acc {acc_t:.4f}, onnxruntime acc {acc:.4f}, ops {op_counts(m)}")
    if "BatchNormalization" not in op_counts(m):
        path = os.path.join(MODELS, "digits_cnn_bn.onnx")
        m = export_torchscript(cnn, (dummy,), path, ["input"], ["logits"],
                               {"input": {0: "batch"}, "logits": {0: "batch"}},
                               do_constant_folding=False)
        acc = ort_accuracy(path, x_te_img, y_te)
        results["digits_cnn_bn"] = dict(torch_acc=acc_t, ort_acc=acc, ops=op_counts(m),
                                        **io_desc(m))
        print(f"digits_cnn_bn: onnxruntime acc {acc:.4f}, ops {op_counts(m)}")
        if "BatchNormalization" not in op_counts(m):
            problems.append("digits_cnn_bn: exporter folded BatchNormalization even with "
                            "do_constant_folding=False")
    assert results["digits_cnn"]["ort_acc"] >= 0.95, results["digits_cnn"]

    # ---- transformer -------------------------------------------------------------
    seed_everything()
    tr = DigitsTransformer()
    train(tr, x_tr, y_tr, epochs=60, lr=3e-3, wd=1e-2)
    acc_t = torch_accuracy(tr, x_te, y_te)
    dummy = torch.from_numpy(x_te[:2])
    path = os.path.join(MODELS, "digits_transformer.onnx")
    m = export_torchscript(tr, (dummy,), path, ["input"], ["logits"],
                           {"input": {0: "batch", 1: "seq"}, "logits": {0: "batch"}})
    acc = ort_accuracy(path, x_te, y_te)
    results["digits_transformer"] = dict(torch_acc=acc_t, ort_acc=acc, ops=op_counts(m),
                                         reshape_shapes=reshape_shape_sources(m), **io_desc(m))
    print(f"digits_transformer: torch acc {acc_t:.4f}, onnxruntime acc {acc:.4f}, "
          f"ops {op_counts(m)}, reshape shapes {reshape_shape_sources(m)}")
    # a shorter sequence must run too (dynamic "seq" axis)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x_te[:3, :5]})[0]
    np.testing.assert_allclose(out, tr(torch.from_numpy(x_te[:3, :5])).detach().numpy(),
                               rtol=1e-4, atol=1e-4)
    assert acc >= 0.90, acc

    # ---- transformer, dynamo exporter --------------------------------------------
    path = os.path.join(MODELS, "digits_transformer_dynamo.onnx")
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(tr, (torch.from_numpy(x_te[:4]),), dynamo=True,
                                     opset_version=18, input_names=["input"],
                                     output_names=["logits"],
                                     dynamic_shapes={"x": {0: batch}}, external_data=False)
        prog.save(path, external_data=False)
        m = finalize(path)
        acc = ort_accuracy(path, x_te, y_te)
        opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
        results["digits_transformer_dynamo"] = dict(
            torch_acc=acc_t, ort_acc=acc, opset=opset, ir_version=m.ir_version,
            ops=op_counts(m), reshape_shapes=reshape_shape_sources(m), **io_desc(m))
        print(f"digits_transformer_dynamo: onnxruntime acc {acc:.4f}, opset {opset}, "
              f"ir {m.ir_version}, ops {op_counts(m)}, reshape shapes "
              f"{reshape_shape_sources(m)}")
    except Exception as exc:  # report and keep going
        msg = f"digits_transformer_dynamo: dynamo export failed: {type(exc).__name__}: {exc}"
        problems.append(msg[:2000])
        print(msg, file=sys.stderr)

    # ---- tiny decoder with KV cache (untrained) ----------------------------------------
    seed_everything()
    dec = TinyDecoderKV().eval()
    n_layers, heads, hd = 2, 4, 8
    ids = torch.randint(0, 64, (2, 3))
    past = [torch.randn(2, heads, 5, hd) for _ in range(2 * n_layers)]
    past_names, present_names = [], []
    dyn: Dict[str, Dict[int, str]] = {"input_ids": {0: "batch", 1: "seq"},
                                      "logits": {0: "batch", 1: "seq"}}
    for i in range(n_layers):
        for kv in ("key", "value"):
            pn, rn = f"past_key_values.{i}.{kv}", f"present.{i}.{kv}"
            past_names.append(pn)
            present_names.append(rn)
            dyn[pn] = {0: "batch", 2: "past_seq"}
            dyn[rn] = {0: "batch", 2: "total_seq"}
    path = os.path.join(MODELS, "tiny_decoder_kv.onnx")
    m = export_torchscript(dec, (ids, *past), path, ["input_ids"] + past_names,
                           ["logits"] + present_names, dyn)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for b, s, p in ((2, 3, 5), (1, 1, 7), (3, 4, 0)):  # also an empty cache
        ids = torch.randint(0, 64, (b, s))
        past = [torch.randn(b, heads, p, hd) for _ in range(2 * n_layers)]
        feeds = {"input_ids": ids.numpy(), **{n: t.numpy() for n, t in zip(past_names, past)}}
        outs = sess.run(None, feeds)
        with torch.no_grad():
            ref = dec(ids, *past)
        for o, r in zip(outs, ref):
            np.testing.assert_allclose(o, r.numpy(), rtol=1e-4, atol=1e-4)
        assert outs[1].shape == (b, heads, p + s, hd)
    results["tiny_decoder_kv"] = dict(ops=op_counts(m), reshape_shapes=reshape_shape_sources(m),
                                      **io_desc(m))
    print(f"tiny_decoder_kv: matches torch (incl. empty cache); ops {op_counts(m)}")

    # ---- tiny GQA (untrained) ---------------------------------------------------
    seed_everything()
    gqa = TinyGQA().eval()
    path = os.path.join(MODELS, "tiny_gqa.onnx")
    m = export_torchscript(gqa, (torch.randn(2, 6, 32),), path, ["input"], ["output"],
                           {"input": {0: "batch", 1: "seq"}, "output": {0: "batch", 1: "seq"}})
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for b, s in ((2, 6), (1, 3), (4, 11)):
        x = torch.randn(b, s, 32)
        with torch.no_grad():
            ref = gqa(x).numpy()
        np.testing.assert_allclose(sess.run(None, {"input": x.numpy()})[0], ref,
                                   rtol=1e-4, atol=1e-4)
    results["tiny_gqa"] = dict(ops=op_counts(m), reshape_shapes=reshape_shape_sources(m),
                               **io_desc(m))
    print(f"tiny_gqa: matches torch; ops {op_counts(m)}")

    # ---- results ----------------------------------------------------------------------
    for name in results:
        p = os.path.join(MODELS, f"{name}.onnx")
        results[name]["size_bytes"] = os.path.getsize(p)
    summary = dict(torch_version=torch.__version__, onnx_version=onnx.__version__,
                   onnxruntime_version=ort.__version__, n_test=int(len(y_te)),
                   models=results, problems=problems)
    with open(os.path.join(DATA, "digits_results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    update_readme(results, len(y_te))
    for p in problems:
        print("PROBLEM:", p)
    print(f"done in {time.time() - t0:.1f}s")
    return 0


def update_readme(results: Dict[str, Dict], n_test: int, marker: str = "digits-results") -> None:
    """Rewrite the results table between the ``marker`` comments of ``README.md``."""
    begin, end = f"<!-- BEGIN {marker} -->", f"<!-- END {marker} -->"
    lines = [begin,
             f"Test accuracy on the held-out split ({n_test} images), measured with "
             f"onnxruntime {ort.__version__} on the exported files "
             f"(torch {torch.__version__}):", "",
             "| model | onnxruntime accuracy | torch accuracy | size |",
             "| --- | --- | --- | --- |"]
    for name, r in results.items():
        if "ort_acc" in r:
            lines.append(f"| `{name}.onnx` | {r['ort_acc']:.4f} | {r['torch_acc']:.4f} | "
                         f"{r['size_bytes'] / 1024:.1f} KB |")
    lines.append(end)
    block = "\n".join(lines)
    if not os.path.exists(README):
        return
    text = open(README).read()
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text,
                      flags=re.S)
        with open(README, "w") as f:
            f.write(text)


if __name__ == "__main__":
    sys.exit(main())
