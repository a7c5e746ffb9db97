"""Export tiny random-weight Hugging Face models (BERT, Llama with GQA, ViT) with SDPA and eager attention.

Run with a Python that has torch + transformers + onnx + onnxscript (not needed by onnxsparse itself)::

    /work/torchenv/bin/python samples/export_hf_attention.py [bert llama vit] [--out DIR]

Each model is built from a config (no downloads; ``torch.manual_seed(0)`` before construction), with
``attn_implementation="sdpa"`` and ``"eager"``, and exported by both PyTorch exporters
(``torch.onnx.export(..., dynamo=False)``, opset 17, and ``dynamo=True``, opset 18) with dynamic batch
(and sequence, for the text models) axes, into ``models/hf_<arch>_<attn>_<exporter>.onnx``.
``models/hf_manifest.json`` records, per file, the exporter, torch/transformers versions, the config,
the attention pattern found between Softmax and the ``P V`` MatMul, and onnxruntime's agreement with
torch; an export that fails is recorded with its error instead of stopping the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import export_corpus as ec  # noqa: E402  (export, finalise and check; numpy only at import time)

MODELS = HERE / "models"
MANIFEST_NAME = "hf_manifest.json"
MAX_BYTES = int(__import__("os").environ.get("HF_MAX_BYTES", 400_000))
SEED = 0

CONFIGS: dict[str, dict[str, Any]] = {
    "bert": dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=64, type_vocab_size=2,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    "llama": dict(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
                  tie_word_embeddings=False, use_cache=False),
    "vit": dict(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=128, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0),
}


def _build(arch: str, attn: str):
    import torch
    import transformers as tf

    cfg_cls, model_cls = {
        "bert": (tf.BertConfig, tf.BertModel),
        "llama": (tf.LlamaConfig, tf.LlamaModel),
        "vit": (tf.ViTConfig, tf.ViTModel),
    }[arch]
    config = cfg_cls(**CONFIGS[arch])
    config._attn_implementation = attn
    torch.manual_seed(SEED)
    if arch == "vit":
        inner = model_cls(config, add_pooling_layer=False)
    elif arch == "bert":
        inner = model_cls(config, add_pooling_layer=False)
    else:
        inner = model_cls(config)
    inner.eval()

    class Wrapper(torch.nn.Module):
        """Returns last_hidden_state only (no cache, no dict outputs)."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

    class BertWrapper(Wrapper):
        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state

    class LlamaWrapper(Wrapper):
        def forward(self, input_ids, attention_mask):
            # an explicit mask: without one, transformers looks for packed sequences with aten::diff,
            # which the TorchScript exporter cannot lower
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                              return_dict=True).last_hidden_state

    class ViTWrapper(Wrapper):
        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values, return_dict=True).last_hidden_state

    wrapper = {"bert": BertWrapper, "llama": LlamaWrapper, "vit": ViTWrapper}[arch]

    g = torch.Generator().manual_seed(SEED + 1)
    if arch in ("bert", "llama"):
        ids = torch.randint(0, CONFIGS[arch]["vocab_size"], (2, 7), generator=g)
        mask = torch.ones(2, 7, dtype=torch.int64)
        mask[1, 5:] = 0
        args = (ids, mask)
        spec = {"names": ["input_ids", "attention_mask"],
                "dynamic": {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}}
    else:
        args = (torch.randn(2, 3, 32, 32, generator=g),)
        spec = {"names": ["pixel_values"], "dynamic": {"pixel_values": {0: "batch"}}}
    spec["outputs"] = ["last_hidden_state"]
    return wrapper().eval(), args, spec, config


def _finalize(path: Path) -> dict[str, Any]:
    """export_corpus's record of an export, with the op chain from each Softmax to its ``P V`` MatMul."""
    import onnx

    record = ec._finalize(path, max_bytes=MAX_BYTES)
    info = {k: record[k] for k in ("bytes", "opset", "ir_version", "producer", "ops")}
    info["softmax_to_pv"] = _softmax_paths(onnx.load(str(path)))
    return info


def _softmax_paths(model) -> list[str]:
    """For each Softmax, the op chain from it to the first MatMul that reads it (by graph structure)."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    paths = []
    for n in model.graph.node:
        if n.op_type != "Softmax":
            continue
        chain, value = ["Softmax"], n.output[0]
        for _ in range(8):
            users = consumers.get(value, [])
            mm = [u for u in users if u.op_type == "MatMul"]
            if mm:
                chain.append("MatMul")
                break
            nxt = [u for u in users if u.op_type != "IsNaN"]
            if any(u.op_type == "IsNaN" for u in users):
                chain.append("IsNaN")
            if len(nxt) != 1:
                chain.append(f"<{len(nxt)} consumers>")
                break
            chain.append(nxt[0].op_type)
            value = nxt[0].output[0]
        paths.append(" -> ".join(chain))
    return sorted(set(paths))


def main(argv: list[str] | None = None) -> int:
    import torch
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=MODELS)
    opts = parser.parse_args(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    manifest_path = opts.out / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.setdefault("models", {})
    manifest.setdefault("failed", {})
    manifest["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                            "python": sys.version.split()[0]}
    for arch in opts.archs:
        for attn in ("sdpa", "eager"):
            for dynamo, suffix in ((False, "ts"), (True, "dynamo")):
                name = f"hf_{arch}_{attn}_{suffix}"
                path = opts.out / f"{name}.onnx"
                manifest["models"].pop(name, None)
                manifest["failed"].pop(name, None)
                try:
                    model, args, spec, config = _build(arch, attn)
                    ec._export(model, args, path, spec, dynamo=dynamo, seq_max=64)
                    info = _finalize(path)
                    with torch.no_grad():
                        ref = model(*args)
                    info["max_abs_err_vs_torch"] = ec._check(path, spec, args, ref)
                    info.update(
                        arch=arch, attn_implementation=attn,
                        exporter=f"torch.onnx.export(dynamo={dynamo})",
                        torch=torch.__version__, transformers=transformers.__version__,
                        model_class=type(model.inner).__name__, config=CONFIGS[arch],
                        inputs={n: list(a.shape) for n, a in zip(spec["names"], args)},
                        dynamic_axes=spec["dynamic"], seed=SEED,
                    )
                    manifest["models"][name] = info
                    print(f"ok    {name}: {info['bytes']} bytes, opset {info['opset']}, "
                          f"softmax->PV: {info['softmax_to_pv']}")
                except Exception as exc:  # noqa: BLE001 - record and go on
                    msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:400] if str(exc) else ''}"
                    manifest["failed"][name] = {"error": msg, "torch": torch.__version__,
                                                "transformers": transformers.__version__}
                    print(f"FAIL  {name}: {msg}")
                    traceback.print_exc()
                    path.unlink(missing_ok=True)
    manifest["models"] = dict(sorted(manifest["models"].items()))
    manifest["failed"] = dict(sorted(manifest["failed"].items()))
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
