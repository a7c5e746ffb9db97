#!/usr/bin/env python
"""Export realistic architectures with the *real* exporters into ``models/real_*.onnx``.

These files are what ``tests/test_real_exports.py`` runs every command on: they
carry the patterns real users' exports have (TorchScript run-time reshapes,
dynamo's folded constants and generated names, timm-style packed QKV, GPT-2's
``Split`` of ``c_attn``, skl2onnx's ZipMap, Keras' NHWC transposes, fp16 Casts,
external data, old opsets, Dropout/Identity leftovers).

Optional dependencies (none is needed by the tests, which use the committed files):

* PyTorch: ``pip install torch==2.13.0`` (CPU wheel; do *not* install torchvision,
  the architectures are written here);
* scikit-learn: ``pip install skl2onnx``;
* TensorFlow/Keras: ``pip install tensorflow-cpu tf2onnx`` (in its own venv:
  it pins its own protobuf/onnx);
* Paddle: ``pip install paddlepaddle paddle2onnx`` (own venv as well).

Families whose exporter is missing are skipped with the reason, and every run
rewrites ``models/real_manifest.json`` (what was exported, by what, and what was
skipped).  Usage::

    python samples/export_real.py                 # every family that can run here
    python samples/export_real.py torch sklearn   # a subset (torch, sklearn, tf, paddle, zoo)
    python samples/export_real.py --list

Widths and resolutions are reduced so that every file stays well under 1.5 MB;
weights are random (seeded) with non-trivial BatchNorm statistics, except the
scikit-learn MLPs which are trained on the digits data set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
MANIFEST = MODELS / "real_manifest.json"
MAX_IR_VERSION = 10
MAX_BYTES = 1_500_000
SEED = 0


# --------------------------------------------------------------------------------------
# common helpers
# --------------------------------------------------------------------------------------
def finalize(path: Path, *, keep_external: bool = False) -> dict[str, Any]:
    """Clamp the IR version, check the model fully, make sure onnxruntime loads it."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=not keep_external)
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    if not keep_external:
        for init in model.graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                raise RuntimeError(f"{path}: initializer {init.name} still external")
        onnx.save(model, str(path))
        for extra in path.parent.glob(path.name + ".data"):
            extra.unlink()
    else:
        # rewrite the model file only (ir_version); the external references stay as they are
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
    onnx.checker.check_model(str(path), full_check=True)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    size = path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.stem + ".*data*"))
    if size > MAX_BYTES:
        raise RuntimeError(f"{path.name}: {size} bytes > {MAX_BYTES}")
    ops: dict[str, int] = {}
    for n in model.graph.node:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        ops[key] = ops.get(key, 0) + 1
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "bytes": size,
        "opset": opset,
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [_vi(v) for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer}],
        "outputs": [_vi(v) for v in model.graph.output],
        "ops": dict(sorted(ops.items())),
    }


def _vi(v) -> str:
    t = v.type.tensor_type
    dims = [d.dim_param or str(d.dim_value) for d in t.shape.dim]
    return f"{v.name}[{','.join(dims)}]"


# --------------------------------------------------------------------------------------
# PyTorch architectures (written here: torchvision/timm are not dependencies)
# --------------------------------------------------------------------------------------
def torch_models() -> dict[str, tuple[Callable[[], Any], Callable[[], tuple], dict]]:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def bn_randomize(model: nn.Module) -> nn.Module:
        g = torch.Generator().manual_seed(SEED)
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.bias.normal_(0, 0.1, generator=g)
                    m.running_mean.normal_(0, 0.1, generator=g)
                    m.running_var.uniform_(0.5, 1.5, generator=g)
            if isinstance(m, nn.LayerNorm):
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.bias.normal_(0, 0.1, generator=g)
        return model

    # ---- ResNet (torchvision layout: BasicBlock / Bottleneck, downsample conv+bn) ----
    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inp: int, planes: int, stride: int = 1) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or inp != planes:
                self.downsample = nn.Sequential(nn.Conv2d(inp, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inp: int, planes: int, stride: int = 1) -> None:
            super().__init__()
            width = planes
            out = planes * self.expansion
            self.conv1 = nn.Conv2d(inp, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or inp != out:
                self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu(y + identity)

    class ResNet(nn.Module):
        def __init__(self, block, layers, widths=(8, 16, 32, 64), classes: int = 10) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inp = widths[0]
            stages = []
            for i, (w, n) in enumerate(zip(widths, layers)):
                blocks = []
                for j in range(n):
                    blocks.append(block(inp, w, 2 if (i > 0 and j == 0) else 1))
                    inp = w * block.expansion
                stages.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(inp, classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = torch.flatten(self.avgpool(x), 1)
            return self.fc(x)

    # ---- MobileNetV2 (ReLU6 -> Clip) ----
    def relu6_block(inp, out, k=3, s=1, groups=1):
        return nn.Sequential(nn.Conv2d(inp, out, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(out), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, inp, out, stride, expand):
            super().__init__()
            hidden = inp * expand
            self.use_res = stride == 1 and inp == out
            layers = []
            if expand != 1:
                layers.append(relu6_block(inp, hidden, 1))
            layers += [relu6_block(hidden, hidden, 3, stride, groups=hidden),
                       nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            cfg = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2), (6, 24, 2, 2), (6, 32, 1, 1)]
            layers = [relu6_block(3, 8, 3, 2)]
            inp = 8
            for t, c, n, s in cfg:
                for i in range(n):
                    layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                    inp = c
            layers.append(relu6_block(inp, 128, 1))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, classes))

        def forward(self, x):
            x = self.features(x)
            x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
            x = torch.flatten(x, 1)
            return self.classifier(x)

    # ---- MobileNetV3 (HardSwish, SE with HardSigmoid) ----
    def make_div(v, d=4):
        return max(d, int(v + d / 2) // d * d)

    class SqueezeExcitation(nn.Module):  # torchvision.ops.SqueezeExcitation
        def __init__(self, c, squeeze, act=nn.ReLU, scale_act=nn.Hardsigmoid):
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(c, squeeze, 1)
            self.fc2 = nn.Conv2d(squeeze, c, 1)
            self.activation = act()
            self.scale_activation = scale_act()

        def forward(self, x):
            s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
            return s * x

    class V3Block(nn.Module):
        def __init__(self, inp, k, exp, out, se, hs, stride):
            super().__init__()
            act = nn.Hardswish if hs else nn.ReLU
            layers = []
            if exp != inp:
                layers += [nn.Conv2d(inp, exp, 1, bias=False), nn.BatchNorm2d(exp), act()]
            layers += [nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False), nn.BatchNorm2d(exp), act()]
            if se:
                layers.append(SqueezeExcitation(exp, make_div(exp // 4)))
            layers += [nn.Conv2d(exp, out, 1, bias=False), nn.BatchNorm2d(out)]
            self.block = nn.Sequential(*layers)
            self.use_res = stride == 1 and inp == out

        def forward(self, x):
            y = self.block(x)
            return x + y if self.use_res else y

    class MobileNetV3(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            cfg = [  # k, exp, out, se, hs, stride  (mobilenet_v3_small, widths / 2)
                (3, 8, 8, True, False, 2), (3, 36, 12, False, False, 2), (3, 44, 12, False, False, 1),
                (5, 48, 20, True, True, 2), (5, 120, 20, True, True, 1), (5, 60, 24, True, True, 1),
                (5, 96, 32, True, True, 2),
            ]
            layers = [nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())]
            inp = 8
            for k, exp, out, se, hs, s in cfg:
                layers.append(V3Block(inp, k, exp, out, se, hs, s))
                inp = out
            layers.append(nn.Sequential(nn.Conv2d(inp, 144, 1, bias=False), nn.BatchNorm2d(144), nn.Hardswish()))
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(144, 64), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(64, classes))

        def forward(self, x):
            x = self.avgpool(self.features(x))
            return self.classifier(torch.flatten(x, 1))

    # ---- EfficientNet (MBConv, SiLU, SE with Sigmoid, stochastic depth off in eval) ----
    class MBConv(nn.Module):
        def __init__(self, inp, out, k, stride, expand):
            super().__init__()
            hidden = inp * expand
            layers = []
            if expand != 1:
                layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU()]
            layers += [nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.SiLU(),
                       SqueezeExcitation(hidden, max(1, inp // 4), act=nn.SiLU, scale_act=nn.Sigmoid),
                       nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out)]
            self.block = nn.Sequential(*layers)
            self.use_res = stride == 1 and inp == out

        def forward(self, x):
            y = self.block(x)
            return x + y if self.use_res else y  # StochasticDepth is the identity in eval mode

    class EfficientNet(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            cfg = [(1, 3, 1, 8, 1), (4, 3, 2, 12, 2), (4, 5, 2, 20, 1), (4, 3, 2, 32, 1), (4, 5, 1, 40, 1)]
            layers = [nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU())]
            inp = 16
            for e, k, s, c, n in cfg:
                for i in range(n):
                    layers.append(MBConv(inp, c, k, s if i == 0 else 1, e))
                    inp = c
            layers.append(nn.Sequential(nn.Conv2d(inp, 96, 1, bias=False), nn.BatchNorm2d(96), nn.SiLU()))
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(96, classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    # ---- UNet (ConvTranspose up, Resize up, Concat skips) ----
    def double_conv(inp, out):
        return nn.Sequential(nn.Conv2d(inp, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                             nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        def __init__(self, c=4, classes=3):
            super().__init__()
            self.inc = double_conv(3, c)
            self.down1 = nn.Sequential(nn.MaxPool2d(2), double_conv(c, 2 * c))
            self.down2 = nn.Sequential(nn.MaxPool2d(2), double_conv(2 * c, 4 * c))
            self.down3 = nn.Sequential(nn.MaxPool2d(2), double_conv(4 * c, 8 * c))
            self.up1 = nn.ConvTranspose2d(8 * c, 4 * c, 2, stride=2)
            self.conv1 = double_conv(8 * c, 4 * c)
            self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
            self.conv2 = double_conv(4 * c, 2 * c)
            self.conv3 = double_conv(3 * c, c)  # bilinear upsample branch: concat 2c + c
            self.outc = nn.Conv2d(c, classes, 1)

        def forward(self, x):
            x1 = self.inc(x)
            x2 = self.down1(x1)
            x3 = self.down2(x2)
            x4 = self.down3(x3)
            y = self.conv1(torch.cat([x3, self.up1(x4)], dim=1))
            y = self.conv2(torch.cat([x2, self.up2(y)], dim=1))
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            y = self.conv3(torch.cat([x1, y], dim=1))
            return self.outc(y)

    # ---- ViT-tiny (timm layout: packed qkv Linear(d, 3d) -> reshape(B, N, 3, H, D) -> permute) ----
    class TimmAttention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.num_heads = heads
            self.head_dim = dim // heads
            self.scale = self.head_dim ** -0.5
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            B, N, C = x.shape
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            x = (attn @ v).transpose(1, 2).reshape(B, N, C)
            return self.proj(x)

    class TimmMlp(nn.Module):
        def __init__(self, dim, hidden):
            super().__init__()
            self.fc1 = nn.Linear(dim, hidden)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, dim)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class ViTBlock(nn.Module):
        def __init__(self, dim, heads, mlp):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.attn = TimmAttention(dim, heads)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = TimmMlp(dim, mlp)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self, img=32, patch=8, dim=48, depth=2, heads=4, mlp=96, classes=10):
            super().__init__()
            self.patch_embed = nn.Conv2d(3, dim, patch, patch)
            n = (img // patch) ** 2
            self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
            self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, classes)

        def forward(self, x):
            x = self.patch_embed(x).flatten(2).transpose(1, 2)
            cls = self.cls_token.expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1) + self.pos_embed
            x = self.norm(self.blocks(x))
            return self.head(x[:, 0])

    # ---- small BERT (HF layout: separate q/k/v, token type + position embeddings, mask) ----
    class BertSelfAttention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.h, self.d = heads, dim // heads
            self.query = nn.Linear(dim, dim)
            self.key = nn.Linear(dim, dim)
            self.value = nn.Linear(dim, dim)
            self.dense = nn.Linear(dim, dim)
            self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)

        def split(self, x):
            return x.view(x.size(0), x.size(1), self.h, self.d).permute(0, 2, 1, 3)

        def forward(self, x, mask):
            q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.d) + mask
            ctx = torch.matmul(scores.softmax(-1), v).permute(0, 2, 1, 3).contiguous()
            ctx = ctx.view(ctx.size(0), ctx.size(1), self.h * self.d)
            return self.LayerNorm(self.dense(ctx) + x)

    class BertLayer(nn.Module):
        def __init__(self, dim, heads, ffn):
            super().__init__()
            self.attention = BertSelfAttention(dim, heads)
            self.intermediate = nn.Linear(dim, ffn)
            self.output = nn.Linear(ffn, dim)
            self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)

        def forward(self, x, mask):
            a = self.attention(x, mask)
            return self.LayerNorm(self.output(F.gelu(self.intermediate(a))) + a)

    class Bert(nn.Module):
        def __init__(self, vocab=100, dim=48, heads=4, ffn=96, layers=2, max_pos=32, classes=3):
            super().__init__()
            self.word_embeddings = nn.Embedding(vocab, dim)
            self.position_embeddings = nn.Embedding(max_pos, dim)
            self.token_type_embeddings = nn.Embedding(2, dim)
            self.emb_norm = nn.LayerNorm(dim, eps=1e-12)
            self.register_buffer("position_ids", torch.arange(max_pos).unsqueeze(0), persistent=False)
            self.layers = nn.ModuleList([BertLayer(dim, heads, ffn) for _ in range(layers)])
            self.pooler = nn.Linear(dim, dim)
            self.classifier = nn.Linear(dim, classes)

        def forward(self, input_ids, attention_mask, token_type_ids):
            seq = input_ids.size(1)
            pos = self.position_ids[:, :seq]
            x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + self.position_embeddings(pos)
            x = self.emb_norm(x)
            mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            for layer in self.layers:
                x = layer(x, mask)
            pooled = torch.tanh(self.pooler(x[:, 0]))
            return self.classifier(pooled)

    # ---- GPT-2 (packed c_attn Linear(d, 3d) -> split(d, dim=2), causal mask, tanh GELU) ----
    class GPT2Attention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.h, self.d, self.dim = heads, dim // heads, dim
            self.c_attn = nn.Linear(dim, 3 * dim)
            self.c_proj = nn.Linear(dim, dim)

        def heads(self, x):
            b, t, _ = x.size()
            return x.view(b, t, self.h, self.d).transpose(1, 2)

        def forward(self, x):
            b, t, c = x.size()
            q, k, v = self.c_attn(x).split(self.dim, dim=2)
            q, k, v = self.heads(q), self.heads(k), self.heads(v)
            w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.d)
            causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device))
            w = torch.where(causal, w, torch.tensor(torch.finfo(w.dtype).min, dtype=w.dtype))
            y = torch.matmul(w.softmax(-1), v).transpose(1, 2).contiguous().view(b, t, c)
            return self.c_proj(y)

    class GPT2Block(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.ln_1 = nn.LayerNorm(dim)
            self.attn = GPT2Attention(dim, heads)
            self.ln_2 = nn.LayerNorm(dim)
            self.c_fc = nn.Linear(dim, 4 * dim)
            self.c_proj = nn.Linear(4 * dim, dim)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT2(nn.Module):
        def __init__(self, vocab=64, dim=32, heads=4, layers=2, max_pos=32):
            super().__init__()
            self.wte = nn.Embedding(vocab, dim)
            self.wpe = nn.Embedding(max_pos, dim)
            self.h = nn.ModuleList([GPT2Block(dim, heads) for _ in range(layers)])
            self.ln_f = nn.LayerNorm(dim)
            self.lm_head = nn.Linear(dim, vocab, bias=False)

        def forward(self, input_ids):
            t = input_ids.size(1)
            pos = torch.arange(t, dtype=torch.long, device=input_ids.device).unsqueeze(0)
            x = self.wte(input_ids) + self.wpe(pos)
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    # ---- a CNN with the leftovers old exports keep (Dropout in training-preserving export, Identity) ----
    class Leftovers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
            self.drop1 = nn.Dropout(0.1)
            self.conv2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
            self.skip = nn.Identity()
            self.fc1 = nn.Linear(16 * 8 * 8, 32)
            self.drop2 = nn.Dropout(0.3)
            self.fc2 = nn.Linear(32, 10)

        def forward(self, x):
            x = self.drop1(F.relu(self.conv1(x)))
            x = self.skip(F.relu(self.conv2(x)))
            x = x.view(x.size(0), -1)  # the classic Shape->Gather->Unsqueeze->Concat->Reshape flatten
            return self.fc2(self.drop2(F.relu(self.fc1(x))))

    def img(c=3, s=32):
        return lambda: (torch.randn(2, c, s, s),)

    def bert_inputs():
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 100, (2, 12), generator=g)
        mask = torch.ones(2, 12, dtype=torch.long)
        mask[1, 9:] = 0
        types = torch.zeros(2, 12, dtype=torch.long)
        types[:, 6:] = 1
        return ids, mask, types

    def gpt_inputs():
        return (torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(2)),)

    image = {"names": ["input"], "outputs": ["logits"], "dynamic": {"input": {0: "batch"}}}
    seg = {"names": ["input"], "outputs": ["mask"], "dynamic": {"input": {0: "batch"}}}  # H, W: multiples of 8
    bert = {"names": ["input_ids", "attention_mask", "token_type_ids"], "outputs": ["logits"],
            "dynamic": {k: {0: "batch", 1: "seq"} for k in ("input_ids", "attention_mask", "token_type_ids")}}
    gpt = {"names": ["input_ids"], "outputs": ["logits"], "dynamic": {"input_ids": {0: "batch", 1: "seq"}}}

    def build(cls, *a, **k):
        def make():
            torch.manual_seed(SEED)
            return bn_randomize(cls(*a, **k)).eval()
        return make

    return {
        "resnet18": (build(ResNet, BasicBlock, [2, 2, 2, 2], (4, 8, 16, 32)), img(), image),
        "resnet_bottleneck": (build(ResNet, Bottleneck, [1, 2, 1, 1], (4, 8, 16, 24)), img(), image),
        "mobilenetv2": (build(MobileNetV2), img(), image),
        "mobilenetv3": (build(MobileNetV3), img(), image),
        "efficientnet": (build(EfficientNet), img(), image),
        "unet": (build(UNet), img(s=32), seg),
        "vit": (build(ViT), img(), image),
        "bert": (build(Bert), bert_inputs, bert),
        "gpt2": (build(GPT2), gpt_inputs, gpt),
        "leftovers": (build(Leftovers), img(s=16), image),
    }


def _torch_export(model, args, path: Path, spec: dict, *, dynamo: bool, opset: int, **extra) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not dynamo:
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=opset,
                              input_names=spec["names"], output_names=spec["outputs"],
                              dynamic_axes=spec["dynamic"], **extra)
            return
        dims: dict[str, Any] = {}
        dyn_shapes = []
        for name in spec["names"]:
            axes = spec["dynamic"].get(name, {})
            dyn_shapes.append({a: dims.setdefault(d, torch.export.Dim(d, min=1 if d != "seq" else 2, max=64 if d == "seq" else 1024)) for a, d in axes.items()} or None)
        prog = torch.onnx.export(model, args, dynamo=True, opset_version=opset, input_names=spec["names"],
                                 output_names=spec["outputs"], dynamic_shapes=tuple(dyn_shapes),
                                 external_data=False, **extra)
        prog.save(str(path), external_data=False)


def export_torch(only: set[str] | None = None) -> tuple[dict, dict]:
    import torch

    torch.set_num_threads(1)
    done, skipped = {}, {}
    for name, (make, inputs, spec) in torch_models().items():
        if name == "leftovers":
            continue  # exported by the zoo family (training-preserving export)
        for dynamo, opset, suffix in ((False, 17, "ts"), (True, 18, "dynamo")):
            out = f"real_torch_{name}_{suffix}"
            if only and out not in only and name not in only:
                continue
            path = MODELS / f"{out}.onnx"
            try:
                model, args = make(), inputs()
                _torch_export(model, args, path, spec, dynamo=dynamo, opset=opset)
                info = finalize(path)
                with torch.no_grad():
                    ref = model(*args)
                _check_matches(path, spec["names"], args, ref)
                info.update(exporter=f"torch {torch.__version__} dynamo={dynamo}", arch=name)
                done[out] = info
                print(f"ok    {out}: {info['bytes']} bytes, opset {info['opset']}")
            except Exception as exc:  # noqa: BLE001 - record and go on
                skipped[out] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                print(f"SKIP  {out}: {skipped[out]}")
                if os.environ.get("EXPORT_DEBUG"):
                    traceback.print_exc()
                path.unlink(missing_ok=True)
    return done, skipped


def _check_matches(path: Path, names, args, ref, atol=1e-4) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    got = sess.run(None, feeds)[0]
    expected = ref.float().numpy() if hasattr(ref, "numpy") else ref
    scale = max(1.0, float(np.abs(expected).max()))
    if not np.allclose(got.astype(np.float32), expected, rtol=1e-3, atol=atol * scale):
        raise RuntimeError(f"{path.name}: onnxruntime differs from torch by {np.abs(got - expected).max()}")


# --------------------------------------------------------------------------------------
# "model zoo" style files: fp16, opset 11, external data, Dropout/Identity leftovers
# --------------------------------------------------------------------------------------
def export_zoo(only: set[str] | None = None) -> tuple[dict, dict]:
    import onnx
    import torch

    torch.set_num_threads(1)
    models = torch_models()
    done, skipped = {}, {}

    def want(name: str) -> bool:
        return not only or name in only

    jobs = []

    def zoo_job(arch: str, name: str, *, half: bool = False, opset: int = 17, **export) -> None:
        """One TorchScript export of ``arch`` with ``export`` options, checked against torch."""

        def job():
            make, inputs, spec = models[arch]
            model, args = make(), inputs()
            if half:
                model = model.half()
                args = tuple(a.half() for a in args)
            path = MODELS / f"{name}.onnx"
            _torch_export(model, args, path, spec, dynamo=False, opset=opset, **export)
            info = finalize(path)
            with torch.no_grad():
                ref = model(*args)
            if half:
                _check_matches(path, spec["names"], args, ref.float(), atol=5e-2)
            else:
                _check_matches(path, spec["names"], args, ref)
            return path, info

        jobs.append((name, job))

    # fp16: model.half() exported by TorchScript (weights fp16, Casts where torch inserts them)
    zoo_job("mobilenetv3", "real_zoo_fp16_mobilenetv3", half=True)
    zoo_job("vit", "real_zoo_fp16_vit", half=True)
    # opset 11 (old TorchScript export: Resize-11, Split attribute, Unsqueeze attribute, Clip inputs)
    zoo_job("unet", "real_zoo_opset11_unet", opset=11)
    zoo_job("mobilenetv2", "real_zoo_opset11_mobilenetv2", opset=11, do_constant_folding=False)

    # external data: the dynamo ResNet-18 with its weights in a side file
    def external():
        make, inputs, spec = models["resnet18"]
        model, args = make(), inputs()
        path = MODELS / "real_zoo_external_resnet18.onnx"
        tmp = MODELS / "real_zoo_external_resnet18.tmp.onnx"
        _torch_export(model, args, tmp, spec, dynamo=True, opset=18)
        proto = onnx.load(str(tmp))
        tmp.unlink()
        proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
        data = path.name + ".data"
        (MODELS / data).unlink(missing_ok=True)
        onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                  size_threshold=1024)
        info = finalize(path, keep_external=True)
        with torch.no_grad():
            ref = model(*args)
        _check_matches(path, spec["names"], args, ref)
        info["external_data"] = data
        return path, info
    jobs.append(("real_zoo_external_resnet18", external))

    # Dropout / Identity leftovers: training-preserving export, no constant folding
    def leftovers():
        make, inputs, spec = models["leftovers"]
        model, args = make(), inputs()
        path = MODELS / "real_zoo_leftovers.onnx"
        model.train()  # exported in training mode: Dropout nodes stay in the graph
        _torch_export(model, args, path, spec, dynamo=False, opset=13, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.TRAINING)
        model.eval()
        proto = onnx.load(str(path))
        # ... then "fixed" for inference the way users do it: drop Dropout's training_mode input
        # (inference Dropout keeps its ratio input and its unused mask output), and the Identity
        # nodes older exporters leave on activations and deduplicated weights.
        graph = proto.graph
        for node in graph.node:
            if node.op_type == "Dropout" and len(node.input) > 2:
                del node.input[2]
        for i, node in enumerate(list(graph.node)):
            if node.op_type == "Relu":
                old = node.output[0]
                node.output[0] = old + "_pre_identity"
                graph.node.insert(list(graph.node).index(node) + 1,
                                  onnx.helper.make_node("Identity", [old + "_pre_identity"], [old], name=f"identity_{i}"))
        conv_bias = next(n for n in graph.node if n.op_type == "Conv").input[2]
        graph.node.insert(0, onnx.helper.make_node("Identity", [conv_bias], [conv_bias + "_dedup"], name="identity_bias"))
        next(n for n in graph.node if n.op_type == "Conv").input[2] = conv_bias + "_dedup"
        onnx.save(proto, str(path))
        info = finalize(path)
        with torch.no_grad():
            ref = model(*args)
        _check_matches(path, spec["names"], args, ref)
        return path, info
    jobs.append(("real_zoo_leftovers", leftovers))

    for name, job in jobs:
        if not want(name):
            continue
        try:
            path, info = job()
            info.update(exporter=f"torch {torch.__version__}")
            done[name] = info
            print(f"ok    {name}: {info['bytes']} bytes")
        except Exception as exc:  # noqa: BLE001
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            print(f"SKIP  {name}: {skipped[name]}")
            if os.environ.get("EXPORT_DEBUG"):
                traceback.print_exc()
    return done, skipped


# --------------------------------------------------------------------------------------
# scikit-learn via skl2onnx
# --------------------------------------------------------------------------------------
def export_sklearn(only: set[str] | None = None) -> tuple[dict, dict]:
    try:
        import skl2onnx
        from skl2onnx import to_onnx
    except ImportError as exc:
        return {}, {"real_sklearn_*": f"skl2onnx not installed ({exc})"}
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) / 16.0
    done, skipped = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((64, 32), max_iter=60, random_state=SEED).fit(x, y)
        pipe = make_pipeline(StandardScaler(), MLPClassifier((48,), max_iter=60, random_state=SEED)).fit(x, y)
    jobs = {
        # plain MLP: zipmap disabled, probabilities as a tensor
        "real_sklearn_mlp": (mlp, {id(mlp): {"zipmap": False}}),
        # pipeline with the default ZipMap output (a sequence of maps)
        "real_sklearn_pipeline_zipmap": (pipe, None),
    }
    for name, (est, options) in jobs.items():
        if only and name not in only:
            continue
        path = MODELS / f"{name}.onnx"
        try:
            onx = to_onnx(est, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
            onx.ir_version = min(onx.ir_version, MAX_IR_VERSION)
            path.write_bytes(onx.SerializeToString())
            info = finalize(path)
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            label = sess.run(None, {sess.get_inputs()[0].name: x[:50]})[0]
            if not (label == est.predict(x[:50])).all():
                raise RuntimeError("labels differ from scikit-learn")
            info.update(exporter=f"skl2onnx {skl2onnx.__version__}", accuracy_train=float(est.score(x, y)))
            done[name] = info
            print(f"ok    {name}: {info['bytes']} bytes")
        except Exception as exc:  # noqa: BLE001
            skipped[name] = f"{type(exc).__name__}: {exc}"
            print(f"SKIP  {name}: {skipped[name]}")
    return done, skipped


# --------------------------------------------------------------------------------------
# TensorFlow / Keras via tf2onnx
# --------------------------------------------------------------------------------------
def export_tf(only: set[str] | None = None) -> tuple[dict, dict]:
    try:
        import tensorflow as tf
        import tf2onnx
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken install
        return {}, {"real_tf_*": f"tensorflow/tf2onnx not importable ({type(exc).__name__}: {exc})"}
    keras = tf.keras
    tf.random.set_seed(SEED)
    done, skipped = {}, {}

    def cnn():
        inp = keras.Input((32, 32, 3), name="input")
        x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inp)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU(6.0)(x)
        x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
        x = keras.layers.Activation("swish")(x)
        x = keras.layers.Conv2D(32, 1, strides=2)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
        y = keras.layers.Conv2D(32, 3, padding="same")(x)
        x = keras.layers.Add()([x, y])
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Flatten()(x)  # NHWC flatten -> Reshape in the export
        x = keras.layers.Dense(16, activation="relu")(x)
        x = keras.layers.Dropout(0.2)(x)
        out = keras.layers.Dense(10, name="logits")(x)
        return keras.Model(inp, out), [tf.TensorSpec((None, 32, 32, 3), tf.float32, name="input")], \
            [np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)]

    def mha():
        inp = keras.Input((16, 32), name="input")
        a = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8)(inp, inp)
        x = keras.layers.LayerNormalization(epsilon=1e-6)(inp + a)
        f = keras.layers.Dense(64, activation=lambda t: keras.activations.gelu(t, approximate=True))(x)
        f = keras.layers.Dense(32)(f)
        x = keras.layers.LayerNormalization(epsilon=1e-6)(x + f)
        x = keras.layers.GlobalAveragePooling1D()(x)
        out = keras.layers.Dense(5, name="logits")(x)
        return keras.Model(inp, out), [tf.TensorSpec((None, 16, 32), tf.float32, name="input")], \
            [np.random.default_rng(0).standard_normal((2, 16, 32)).astype(np.float32)]

    def vgg():
        # keras.applications.VGG16's layout (blocks of 3x3 same-padded convs + max-pooling, then
        # Flatten -> Dense -> Dense -> Dense), narrowed; tf2onnx turns the NHWC Flatten into a
        # Reshape with a Shape-computed target feeding the first MatMul.
        inp = keras.Input((32, 32, 3), name="input")
        x = inp
        for block, (width, convs) in enumerate(((8, 2), (16, 2), (32, 3)), 1):
            for i in range(convs):
                x = keras.layers.Conv2D(width, 3, padding="same", activation="relu",
                                        name=f"block{block}_conv{i + 1}")(x)
            x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(64, activation="relu", name="fc1")(x)
        x = keras.layers.Dense(64, activation="relu", name="fc2")(x)
        out = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
        return keras.Model(inp, out), [tf.TensorSpec((None, 32, 32, 3), tf.float32, name="input")], \
            [np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)]

    for name, make in (("real_tf_keras_cnn", cnn), ("real_tf_keras_mha", mha), ("real_tf_keras_vgg", vgg)):
        if only and name not in only:
            continue
        path = MODELS / f"{name}.onnx"
        try:
            model, spec, feeds = make()
            for layer in model.layers:  # non-trivial BN statistics
                if isinstance(layer, keras.layers.BatchNormalization):
                    w = layer.get_weights()
                    rng = np.random.default_rng(1)
                    layer.set_weights([rng.uniform(0.5, 1.5, w[0].shape), rng.normal(0, 0.1, w[1].shape),
                                       rng.normal(0, 0.1, w[2].shape), rng.uniform(0.5, 1.5, w[3].shape)])
            ref = model(feeds[0], training=False).numpy()
            tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
            info = finalize(path)
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = sess.run(None, {sess.get_inputs()[0].name: feeds[0]})[0]
            if not np.allclose(got, ref, rtol=1e-3, atol=1e-4):
                raise RuntimeError(f"onnxruntime differs from keras by {np.abs(got - ref).max()}")
            info.update(exporter=f"tf2onnx {tf2onnx.__version__} (tensorflow {tf.__version__})")
            done[name] = info
            print(f"ok    {name}: {info['bytes']} bytes")
        except Exception as exc:  # noqa: BLE001
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            print(f"SKIP  {name}: {skipped[name]}")
            path.unlink(missing_ok=True)
    return done, skipped


# --------------------------------------------------------------------------------------
# Paddle via paddle2onnx
# --------------------------------------------------------------------------------------
def _p2o_version() -> str:
    try:
        from importlib.metadata import version

        return f" {version('paddle2onnx')}"
    except Exception:  # noqa: BLE001
        return ""


def export_paddle(only: set[str] | None = None) -> tuple[dict, dict]:
    try:
        import paddle
        import paddle2onnx  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return {}, {"real_paddle_*": f"paddlepaddle/paddle2onnx not importable ({type(exc).__name__}: {exc})"}
    import paddle.nn as pnn

    paddle.seed(SEED)
    done, skipped = {}, {}

    class Net(pnn.Layer):
        def __init__(self):
            super().__init__()
            self.conv1 = pnn.Conv2D(3, 16, 3, padding=1)
            self.bn1 = pnn.BatchNorm2D(16)
            self.dw = pnn.Conv2D(16, 16, 3, padding=1, groups=16)
            self.bn2 = pnn.BatchNorm2D(16)
            self.pw = pnn.Conv2D(16, 32, 1)
            self.pool = pnn.AdaptiveAvgPool2D(1)
            self.fc = pnn.Linear(32, 10)

        def forward(self, x):
            x = pnn.functional.relu(self.bn1(self.conv1(x)))
            x = pnn.functional.hardswish(self.bn2(self.dw(x)))
            x = pnn.functional.relu(self.pw(x))
            return self.fc(paddle.flatten(self.pool(x), 1))

    def cnn():
        return Net(), [None, 3, 32, 32], 13

    def mobilenetv3():
        # paddle.vision's MobileNetV3-small (hard-swish, squeeze-excite with hardsigmoid gates,
        # Linear head behind a flatten), random weights, narrowed to stay under 1 MB.  The committed
        # file comes from paddlepaddle 2.6.2 + paddle2onnx 1.0.8 (own venv: pip install
        # "paddlepaddle==2.6.2" "paddle2onnx==1.0.8" "numpy<2" onnx onnxruntime): its flatten is
        # Reshape(x, Concat(Shape(x)[0:1], [-1])), a target onnx shape inference gives up on with a
        # dynamic batch, so the MatMul head and everything after it have no shapes in the file.
        # (paddle2onnx 2.x folds that target differently; any version exports this model.)
        from paddle.vision.models import mobilenet_v3_small

        net = mobilenet_v3_small(pretrained=False, scale=0.35, num_classes=10)
        rng = np.random.default_rng(SEED)
        for layer in net.sublayers():  # non-trivial BN statistics
            if isinstance(layer, pnn.BatchNorm2D):
                c = layer.weight.shape[0]
                layer.weight.set_value(rng.uniform(0.5, 1.5, c).astype(np.float32))
                layer.bias.set_value(rng.normal(0, 0.1, c).astype(np.float32))
                layer._mean.set_value(rng.normal(0, 0.1, c).astype(np.float32))
                layer._variance.set_value(rng.uniform(0.5, 1.5, c).astype(np.float32))
        return net, [None, 3, 64, 64], 13

    for name, make in (("real_paddle_cnn", cnn), ("real_paddle_mobilenetv3", mobilenetv3)):
        if only and name not in only:
            continue
        path = MODELS / f"{name}.onnx"
        try:
            net, shape, opset = make()
            net.eval()
            x = np.random.default_rng(0).standard_normal([2, *shape[1:]]).astype(np.float32)
            ref = net(paddle.to_tensor(x)).numpy()
            with tempfile.TemporaryDirectory() as tmp:
                spec = [paddle.static.InputSpec(shape, "float32", "input")]
                paddle.onnx.export(net, os.path.join(tmp, "net"), input_spec=spec, opset_version=opset)
                Path(os.path.join(tmp, "net.onnx")).replace(path)
            info = finalize(path)
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            if not np.allclose(got, ref, rtol=1e-3, atol=1e-4):
                raise RuntimeError(f"onnxruntime differs from paddle by {np.abs(got - ref).max()}")
            info.update(exporter=f"paddle2onnx{_p2o_version()} (paddle {paddle.__version__})")
            done[name] = info
            print(f"ok    {name}: {info['bytes']} bytes")
        except Exception as exc:  # noqa: BLE001
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            print(f"SKIP  {name}: {skipped[name]}")
            path.unlink(missing_ok=True)
    return done, skipped


FAMILIES: dict[str, Callable[[set[str] | None], tuple[dict, dict]]] = {
    "torch": export_torch,
    "zoo": export_zoo,
    "sklearn": export_sklearn,
    "tf": export_tf,
    "paddle": export_paddle,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", help=f"families ({', '.join(FAMILIES)}) or model names")
    parser.add_argument("--list", action="store_true", help="list the committed real_* models and exit")
    args = parser.parse_args(argv)
    MODELS.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {"models": {}, "skipped": {}}
    if args.list:
        for name, info in sorted(manifest["models"].items()):
            print(f"{name:40s} {info['bytes']:>9d}  {info.get('exporter', '')}")
        return 0
    families = [f for f in args.families if f in FAMILIES] or list(FAMILIES)
    names = {f for f in args.families if f not in FAMILIES} or None
    for family in families:
        try:
            done, skipped = FAMILIES[family](names)
        except ImportError as exc:
            done, skipped = {}, {f"{family}:*": f"not importable: {exc}"}
        manifest["models"].update(done)
        for key in done:
            manifest["skipped"].pop(key, None)
        if names:  # a subset run: "exporter not importable here" says nothing about the others
            skipped = {k: v for k, v in skipped.items() if "*" not in k}
        manifest["skipped"].update(skipped)
    manifest["models"] = dict(sorted(manifest["models"].items()))
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(v["bytes"] for v in manifest["models"].values())
    print(f"{len(manifest['models'])} models, {total / 1e6:.2f} MB; skipped: {len(manifest['skipped'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
