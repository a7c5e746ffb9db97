"""Export a generality corpus: tiny random-weight `transformers` architectures, both PyTorch exporters.

Run with a Python that has torch + transformers + onnx + onnxscript + onnxruntime (not needed by
onnxsparse itself)::

    /work/torchenv/bin/python samples/export_corpus.py [ARCH ...] [--out DIR]

Every architecture is built from a small config (2 layers, hidden 32-64, few heads, vocabulary 128,
images 32x32 or the smallest size the model accepts; no downloads; ``torch.manual_seed(0)`` before
construction) with random weights, with ``attn_implementation="sdpa"`` (and ``"eager"`` for the
models in :data:`EAGER`), and exported by both exporters: ``torch.onnx.export(..., dynamo=False)``
(opset 17, suffix ``ts``) and ``dynamo=True`` (opset 18, suffix ``dynamo``), with a dynamic batch
axis (and sequence axis for text), into ``corpus/<arch>_<attn>_<exporter>.onnx``.  Convolutional
models have no attention: ``<attn>`` is ``none``.  A model that does not implement SDPA falls
back to eager (recorded as ``attn_fallback``).

``corpus/manifest.json`` records per file: arch, model class, exporter, attention implementation,
torch/transformers versions, config, input shapes, dynamic axes, onnxruntime's agreement with torch
and the status; a failure is recorded with its error (the run never stops on one failure).  The
torchvision architectures (ResNet-50, MobileNetV3, EfficientNet, RegNet, ConvNeXt, DenseNet,
ShuffleNet, SqueezeNet, GoogLeNet, VGG; ``tv_<arch>_none_<exporter>.onnx``) are exported by
``samples/export_torchvision.py``, which runs in its own venv (torchvision does not import beside
this torch), imports this module's helpers (nothing but numpy is imported at module level) and
merges its entries into the same manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "corpus"
MANIFEST_NAME = "manifest.json"
MAX_BYTES = int(os.environ.get("CORPUS_MAX_BYTES", 300_000))
MAX_IR_VERSION = 10
SEED = 0
VOCAB = 128

_TXT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
_DEC = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
            intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=False, use_cache=False)

#: arch -> (config class, model class, config kwargs, kind); kind: text | decoder | vision | whisper
ARCHS: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "bert": ("BertConfig", "BertModel", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
             num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, **_TXT), "text"),
    "distilbert": ("DistilBertConfig", "DistilBertModel", dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                   hidden_dim=64, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0), "text"),
    "roberta": ("RobertaConfig", "RobertaModel", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=64, max_position_embeddings=72, **_TXT), "text"),
    "deberta_v2": ("DebertaV2Config", "DebertaV2Model", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, position_buckets=16,
                   max_relative_positions=32, **_TXT), "text"),
    "electra": ("ElectraConfig", "ElectraModel", dict(vocab_size=VOCAB, embedding_size=32, hidden_size=32,
                num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                **_TXT), "text"),
    "gpt2": ("GPT2Config", "GPT2Model", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False), "decoder"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXModel", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, rotary_pct=0.5,
                 use_cache=False, tie_word_embeddings=False), "decoder"),
    "opt": ("OPTConfig", "OPTModel", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32,
            dropout=0.0, attention_dropout=0.0, use_cache=False, pad_token_id=1), "decoder"),
    "llama": ("LlamaConfig", "LlamaModel", dict(_DEC), "decoder"),
    "mistral": ("MistralConfig", "MistralModel", dict(_DEC, sliding_window=None), "decoder"),
    "qwen2": ("Qwen2Config", "Qwen2Model", dict(_DEC), "decoder"),
    "phi3": ("Phi3Config", "Phi3Model", dict(_DEC, pad_token_id=0, original_max_position_embeddings=64), "decoder"),
    "gemma": ("GemmaConfig", "GemmaModel", dict(_DEC, head_dim=4, pad_token_id=0), "decoder"),
    "t5_encoder": ("T5Config", "T5EncoderModel", dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                   num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0, use_cache=False), "text"),
    "whisper_encoder": ("WhisperConfig", "WhisperEncoder", dict(vocab_size=VOCAB, d_model=32, encoder_layers=2,
                        encoder_attention_heads=4, encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=4,
                        decoder_ffn_dim=64, num_mel_bins=8, max_source_positions=16, max_target_positions=16,
                        dropout=0.0, attention_dropout=0.0), "whisper"),
    "clip_text": ("CLIPTextConfig", "CLIPTextModel", dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64, eos_token_id=2), "text"),
    "vit": ("ViTConfig", "ViTModel", dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=64, **_TXT), "vision"),
    "deit": ("DeiTConfig", "DeiTModel", dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
             num_attention_heads=4, intermediate_size=64, **_TXT), "vision"),
    "swin": ("SwinConfig", "SwinModel", dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
             num_heads=[2, 4], window_size=4, mlp_ratio=2.0, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0, drop_path_rate=0.0), "vision"),
    "convnext": ("ConvNextConfig", "ConvNextModel", dict(image_size=32, patch_size=4, hidden_sizes=[16, 32],
                 depths=[1, 1], num_stages=2, drop_path_rate=0.0, layer_scale_init_value=1.0), "vision"),
    "resnet": ("ResNetConfig", "ResNetModel", dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
               layer_type="basic"), "vision"),
    "mobilevit": ("MobileViTConfig", "MobileViTModel", dict(image_size=32, patch_size=2, hidden_sizes=[8, 8, 8],
                  neck_hidden_sizes=[8, 8, 8, 8, 8, 8, 16], num_attention_heads=2, mlp_ratio=2.0,
                  expand_ratio=2.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), "vision"),
    "clip_vision": ("CLIPVisionConfig", "CLIPVisionModel", dict(image_size=32, patch_size=8, hidden_size=32,
                    intermediate_size=64, num_hidden_layers=2, num_attention_heads=4), "vision"),
}
#: ConvNeXt's layer scale starts at 1 (default 1e-6 makes every block's contribution invisible)
#: architectures without attention (no attn_implementation)
NO_ATTENTION = {"convnext", "resnet"}
#: architectures whose transformers implementation has no SDPA path: exported with eager only
NO_SDPA = {"deberta_v2", "mobilevit"}
#: architectures also exported with eager attention
EAGER = ("bert", "gpt2", "llama", "vit", "t5_encoder", "swin")
IMAGE_SIZE: dict[str, int] = {}
#: traced sizes; the corpus table checks other ones
BATCH, SEQ = 2, 7


def variants() -> list[tuple[str, str]]:
    out = []
    for arch in ARCHS:
        if arch in NO_ATTENTION:
            out.append((arch, "none"))
            continue
        if arch in NO_SDPA:
            out.append((arch, "eager"))
            continue
        out.append((arch, "sdpa"))
        if arch in EAGER:
            out.append((arch, "eager"))
    return out


def _build(arch: str, attn: str):
    import torch
    import transformers as tf

    cfg_name, model_name, kwargs, kind = ARCHS[arch]
    config = getattr(tf, cfg_name)(**kwargs)
    torch.manual_seed(SEED)
    if model_name == "WhisperEncoder":
        model_cls = tf.models.whisper.modeling_whisper.WhisperEncoder
    else:
        model_cls = getattr(tf, model_name)
    fallback = None
    if attn == "none":
        inner = model_cls(config)
    else:
        try:
            config._attn_implementation = attn
            inner = model_cls._from_config(config, attn_implementation=attn)
        except (ValueError, ImportError) as exc:
            if attn != "sdpa":
                raise
            fallback = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            torch.manual_seed(SEED)
            config = getattr(tf, cfg_name)(**kwargs)
            inner = model_cls._from_config(config, attn_implementation="eager")
    if arch == "mobilevit":
        # MobileViT hard-codes 2/4/3 transformer layers in its three stages (the graph alone is then
        # > 300 KB): keep the first layer of each, as the other architectures' 2-layer configs do
        for module in inner.modules():
            if type(module).__name__ == "MobileViTTransformer":
                del module.layer[1:]
        # its init (convolutions and BatchNorm scales ~ N(0, 0.02)) makes every activation vanish
        # (last_hidden_state is exactly 0): He-normal convolutions and BN scales ~ U(0.5, 1.5) instead
        for module in inner.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, torch.nn.BatchNorm2d):
                torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    inner.eval()
    used = getattr(inner.config, "_attn_implementation", None) if attn != "none" else "none"

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
            return out.last_hidden_state

    class Decoder(Text):
        def forward(self, input_ids, attention_mask):
            # an explicit mask: without one, transformers looks for packed sequences with aten::diff
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True)
            return out.last_hidden_state

    class Features(Text):
        def forward(self, input_features):
            return self.inner(input_features=input_features, return_dict=True).last_hidden_state

    class Vision(Text):
        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values, return_dict=True).last_hidden_state

    g = torch.Generator().manual_seed(SEED + 1)
    if kind in ("text", "decoder"):
        ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=g)
        mask = torch.ones(BATCH, SEQ, dtype=torch.int64)
        mask[1, 5:] = 0
        args = (ids, mask)
        spec = {"names": ["input_ids", "attention_mask"],
                "dynamic": {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}}
        wrapper = Decoder if kind == "decoder" else Text
    elif kind == "whisper":
        frames = 2 * kwargs["max_source_positions"]
        args = (torch.randn(BATCH, kwargs["num_mel_bins"], frames, generator=g),)
        spec = {"names": ["input_features"], "dynamic": {"input_features": {0: "batch"}}}
        wrapper = Features
    else:
        size = IMAGE_SIZE.get(arch, 32)
        args = (torch.randn(BATCH, 3, size, size, generator=g),)
        spec = {"names": ["pixel_values"], "dynamic": {"pixel_values": {0: "batch"}}}
        wrapper = Vision
    spec["outputs"] = ["last_hidden_state"]
    return wrapper().eval(), args, spec, used, fallback


def _export(model, args, path: Path, spec: dict, *, dynamo: bool, seq_max: int = 48) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not dynamo:
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17,
                              input_names=spec["names"], output_names=spec["outputs"],
                              dynamic_axes=spec["dynamic"])
            return
        dims: dict[str, Any] = {}
        shapes = []
        for name in spec["names"]:
            axes = spec["dynamic"].get(name, {})
            shapes.append({a: dims.setdefault(d, torch.export.Dim(d, min=1 if d == "batch" else 2,
                                                                    max=1024 if d == "batch" else seq_max))
                           for a, d in axes.items()} or None)
        prog = torch.onnx.export(model, args, dynamo=True, opset_version=18, input_names=spec["names"],
                                 output_names=spec["outputs"], dynamic_shapes=tuple(shapes),
                                 external_data=False, verbose=False)
        prog.save(str(path), external_data=False)


def _finalize(path: Path, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """Cap the IR version, drop dynamo's per-node stack traces, check, size-cap and describe the export."""
    import onnx

    model = onnx.load(str(path))
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    for node in model.graph.node:  # dynamo's per-node stack traces and module paths: most of the bytes
        node.doc_string = ""
        del node.metadata_props[:]
    onnx.save(model, str(path))
    for extra in path.parent.glob(path.name + ".data"):
        extra.unlink()
    onnx.checker.check_model(str(path), full_check=True)
    size = path.stat().st_size
    if size > max_bytes:
        raise RuntimeError(f"{path.name}: {size} bytes > {max_bytes}")
    ops: dict[str, int] = {}
    for n in model.graph.node:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        ops[key] = ops.get(key, 0) + 1
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    inputs = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in model.graph.input}
    return {"bytes": size, "opset": opset, "ir_version": model.ir_version,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "onnx_inputs": inputs, "softmax": ops.get("Softmax", 0), "ops": dict(sorted(ops.items()))}


def _check(path: Path, spec: dict, args, ref) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: a.numpy() for n, a in zip(spec["names"], args)})[0]
    expected = ref.detach().numpy()
    err = float(np.abs(got - expected).max())
    if err > 1e-4 * max(1.0, float(np.abs(expected).max())):
        raise RuntimeError(f"{path.name}: onnxruntime differs from torch by {err}")
    return err


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    first = lines[0][:300] if lines else ""
    # torch.onnx wraps the cause: keep the innermost one-line reason too
    cause = exc.__cause__ or exc.__context__
    while cause is not None and (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    extra = ""
    if cause is not None and cause is not exc:
        ctext = [ln for ln in str(cause).splitlines() if ln.strip()]
        extra = f" (cause: {type(cause).__name__}: {ctext[0][:300] if ctext else ''})"
    return re.sub(r"\x1b\[[0-9;]*m", "", f"{type(exc).__name__}: {first}{extra}")


def main(argv: list[str] | None = None) -> int:
    import torch
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", default=list(ARCHS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--exporters", default="ts,dynamo")
    opts = parser.parse_args(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    manifest_path = opts.out / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.setdefault("models", {})
    import onnx
    import onnxruntime
    import onnxscript

    manifest["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                            "onnx": onnx.__version__, "onnxscript": onnxscript.__version__,
                            "onnxruntime": onnxruntime.__version__, "python": sys.version.split()[0]}
    manifest["traced"] = {"batch": BATCH, "seq": SEQ}
    exporters = [(e == "dynamo", e) for e in opts.exporters.split(",")]
    for arch, attn in variants():
        if arch not in opts.archs:
            continue
        for dynamo, suffix in exporters:
            name = f"{arch}_{attn}_{suffix}"
            path = opts.out / f"{name}.onnx"
            entry: dict[str, Any] = {"arch": arch, "source": "transformers", "attn_implementation": attn,
                                     "exporter": f"torch.onnx.export(dynamo={dynamo})",
                                     "torch": torch.__version__, "transformers": transformers.__version__,
                                     "config": ARCHS[arch][2], "seed": SEED}
            start = time.perf_counter()
            try:
                model, args, spec, used, fallback = _build(arch, attn)
                entry.update(model_class=type(model.inner).__name__, attn_used=used,
                             inputs={n: list(a.shape) for n, a in zip(spec["names"], args)},
                             dynamic_axes=spec["dynamic"])
                if fallback:
                    entry["attn_fallback"] = fallback
                _export(model, args, path, spec, dynamo=dynamo)
                entry.update(_finalize(path))
                with torch.no_grad():
                    ref = model(*args)
                entry["max_abs_err_vs_torch"] = _check(path, spec, args, ref)
                entry["status"] = "ok"
                print(f"ok    {name}: {entry['bytes']} bytes, {entry['softmax']} Softmax "
                      f"({time.perf_counter() - start:.1f} s)", flush=True)
            except Exception as exc:  # noqa: BLE001 - record and go on
                entry["status"] = "failed"
                entry["error"] = _message(exc)
                print(f"FAIL  {name}: {entry['error']}", flush=True)
                traceback.print_exc()
                path.unlink(missing_ok=True)
            entry["export_seconds"] = round(time.perf_counter() - start, 1)
            manifest["models"][name] = entry
            manifest["models"] = dict(sorted(manifest["models"].items()))
            manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in opts.out.glob("*.onnx"))
    print(f"corpus: {len(list(opts.out.glob('*.onnx')))} files, {total} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
