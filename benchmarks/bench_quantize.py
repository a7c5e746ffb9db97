"""Quantization benchmark: size, CPU latency and accuracy of dynamic/static/int4, dense and pruned.

    python benchmarks/bench_quantize.py [--quick] [--runs N] [--threads N]

Models: the trained samples digits_cnn and digits_transformer (accuracy on the
360-image test split), and a bigger random-weight CNN and transformer built
here so latency differences are measurable (fidelity against fp32: top-1
agreement of the outputs and relative L2 error).  Each model is benchmarked
dense and pruned; pruning uses ``onnxsparse prune`` when it exists, otherwise a
stand-in, labelled as such: zeroing the 50% smallest-magnitude elements of
every weight (which changes bytes after compression, not latency: onnxruntime
has no sparse CPU kernels).

For each model variant, fp32 and the three quantized models are timed
side by side: every round runs each session once, rotating the order, after a
common warm-up; the table shows medians and the fp32/quantized ratio.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxsparse.io import model_file_bytes  # noqa: E402
from onnxsparse.quantize import detect_cpu, quantize  # noqa: E402
from onnxsparse.report import format_table, human_bytes  # noqa: E402

SAMPLES = ROOT / "samples" / "models"
DATA = ROOT / "samples" / "data"
MODES = ("dynamic", "static", "int4")


# --------------------------------------------------------------------------- models


def _w(rng: np.random.Generator, name: str, shape: tuple[int, ...], fan_in: int) -> TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name)


def build_cnn(width: int = 64, size: int = 64, seed: int = 0) -> onnx.ModelProto:
    """A plain VGG-style CNN: 5 convs (stride 1, 2, 2, 1, 2), global pool, classifier."""
    rng = np.random.default_rng(seed)
    chans = [3, width // 2, width, 2 * width, 2 * width, 4 * width]
    strides = [1, 2, 2, 1, 2]
    nodes, inits, x = [], [], "input"
    for i, stride in enumerate(strides):
        cin, cout = chans[i], chans[i + 1]
        inits += [_w(rng, f"conv{i}.w", (cout, cin, 3, 3), cin * 9),
                  numpy_helper.from_array(np.zeros(cout, np.float32) + 0.01, f"conv{i}.b")]
        nodes += [
            helper.make_node("Conv", [x, f"conv{i}.w", f"conv{i}.b"], [f"c{i}"], name=f"conv{i}",
                             pads=[1, 1, 1, 1], strides=[stride, stride]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        x = f"r{i}"
    inits += [_w(rng, "fc.w", (100, chans[-1]), chans[-1]), numpy_helper.from_array(np.zeros(100, np.float32), "fc.b")]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "bench_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 100])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def build_transformer(d: int = 256, heads: int = 4, ffn: int = 1024, layers: int = 4, seed: int = 0) -> onnx.ModelProto:
    """A pre-norm transformer encoder (opset 17 ops only) with mean pooling and a 10-way head."""
    rng = np.random.default_rng(seed)
    dh = d // heads
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = [
        numpy_helper.from_array(np.array([0, 0, heads, dh], np.int64), "split_shape"),
        numpy_helper.from_array(np.array([0, 0, d], np.int64), "merge_shape"),
        numpy_helper.from_array(np.array(1 / np.sqrt(dh), np.float32), "attn_scale"),
        numpy_helper.from_array(np.array(1 / np.sqrt(2), np.float32), "inv_sqrt2"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]

    def op(op_type: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def linear(x: str, fin: int, fout: int, name: str) -> str:
        inits.extend([_w(rng, f"{name}.w", (fin, fout), fin), numpy_helper.from_array(np.zeros(fout, np.float32), f"{name}.b")])
        return op("Add", [op("MatMul", [x, f"{name}.w"], f"{name}/MatMul"), f"{name}.b"], f"{name}/Add")

    def norm(x: str, name: str) -> str:
        inits.extend([numpy_helper.from_array(np.ones(d, np.float32), f"{name}.g"),
                      numpy_helper.from_array(np.zeros(d, np.float32), f"{name}.b")])
        return op("LayerNormalization", [x, f"{name}.g", f"{name}.b"], f"{name}/LN", axis=-1)

    x = "input"
    for i in range(layers):
        p = f"l{i}"
        h = norm(x, f"{p}.ln1")
        q = op("Transpose", [op("Reshape", [linear(h, d, d, f"{p}.q"), "split_shape"], f"{p}/q_r")], f"{p}/q_t", perm=[0, 2, 1, 3])
        k = op("Transpose", [op("Reshape", [linear(h, d, d, f"{p}.k"), "split_shape"], f"{p}/k_r")], f"{p}/k_t", perm=[0, 2, 3, 1])
        v = op("Transpose", [op("Reshape", [linear(h, d, d, f"{p}.v"), "split_shape"], f"{p}/v_r")], f"{p}/v_t", perm=[0, 2, 1, 3])
        att = op("Softmax", [op("Mul", [op("MatMul", [q, k], f"{p}/qk"), "attn_scale"], f"{p}/scaled")], f"{p}/softmax", axis=-1)
        ctx = op("Reshape", [op("Transpose", [op("MatMul", [att, v], f"{p}/av"), ], f"{p}/ctx_t", perm=[0, 2, 1, 3]), "merge_shape"], f"{p}/ctx")
        x = op("Add", [x, linear(ctx, d, d, f"{p}.o")], f"{p}/res1")
        h = linear(norm(x, f"{p}.ln2"), d, ffn, f"{p}.fc1")
        erf = op("Erf", [op("Mul", [h, "inv_sqrt2"], f"{p}/gelu_s")], f"{p}/gelu_erf")
        gelu = op("Mul", [op("Mul", [h, "half"], f"{p}/gelu_h"), op("Add", [erf, "one"], f"{p}/gelu_1")], f"{p}/gelu")
        x = op("Add", [x, linear(gelu, ffn, d, f"{p}.fc2")], f"{p}/res2")
    pooled = op("ReduceMean", [norm(x, "final")], "pool", axes=[1], keepdims=0)
    out = linear(pooled, d, 10, "head")
    nodes[-1].output[0] = "logits"
    del out
    graph = helper.make_graph(
        nodes, "bench_transformer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "seq", d])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# --------------------------------------------------------------------------- pruning


def magnitude_zeroing(model: onnx.ModelProto, fraction: float = 0.5) -> onnx.ModelProto:
    """Zero the ``fraction`` smallest-|w| elements of every weight (rank >= 2): unstructured sparsity."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype != np.float32 or arr.ndim < 2 or arr.size < 64:
            continue
        flat = arr.reshape(-1).copy()
        flat[np.argsort(np.abs(flat), kind="stable")[: int(flat.size * fraction)]] = 0
        init.CopyFrom(numpy_helper.from_array(flat.reshape(arr.shape), init.name))
    return out


def _cli(*argv: str) -> tuple[int, str]:
    """Run an onnxsparse subcommand in-process; (exit code, stderr)."""
    import contextlib
    import io

    from onnxsparse.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue().strip()


def structured_prune(src: Path, out: Path, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """``onnxsparse prune --channels 0.5``; returns why it could not run (``None``: it did)."""
    if importlib.util.find_spec("onnxsparse.cli.prune_cmd") is None:
        return "onnxsparse prune is not available"
    shape_args = [f"--shape={k}=" + "x".join(map(str, v)) for k, v in shapes.items()]
    code, err = _cli("prune", src, "-o", out, "--channels", "0.5", "-q", "--force", *shape_args)
    return None if code == 0 and out.exists() else (err.splitlines()[-1] if err else f"exit {code}")


def sparsified_bytes(src: Path, out: Path) -> int | None:
    """Bytes after lossless ``onnxsparse sparsify --format auto`` (existing zeros only), if available."""
    if importlib.util.find_spec("onnxsparse.cli.sparsify_cmd") is None:
        return None
    code, _ = _cli("sparsify", src, "-o", out, "--format", "auto", "-q", "--force")
    return model_file_bytes(out) if code == 0 else None


# --------------------------------------------------------------------------- measuring


def _session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def interleaved(sessions: list[ort.InferenceSession], feeds: dict[str, np.ndarray], runs: int,
                warmup: int) -> list[tuple[float, float]]:
    """(median, min) ms per run of each session, timed round-robin with rotating order."""
    for _ in range(warmup):
        for s in sessions:
            s.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    gc.disable()
    try:
        for r in range(runs):
            for k in range(len(sessions)):
                i = (r + k) % len(sessions)
                start = time.perf_counter_ns()
                sessions[i].run(None, feeds)
                times[i].append((time.perf_counter_ns() - start) / 1e6)
    finally:
        gc.enable()
    return [(float(np.median(t)), float(np.min(t))) for t in times]


def _outputs(session: ort.InferenceSession, feeds: dict[str, np.ndarray], batch: int) -> np.ndarray:
    name = next(iter(feeds))
    parts = [session.run(None, {name: feeds[name][i:i + batch]})[0] for i in range(0, len(feeds[name]), batch)]
    return np.concatenate(parts)


# --------------------------------------------------------------------------- main


def _cases(quick: bool) -> list[dict]:
    digits_test = np.load(DATA / "digits_test.npz")["input"]
    tokens_test = np.load(DATA / "digits_test_tokens.npz")["input"]
    labels = np.load(DATA / "digits_test_labels.npy")
    rng = np.random.default_rng(42)
    cnn_size, cnn_width = (32, 32) if quick else (64, 64)
    tr_d, tr_layers, seq = (128, 2, 32) if quick else (256, 4, 64)
    return [
        {"name": "digits_cnn", "path": SAMPLES / "digits_cnn.onnx", "calib": DATA / "digits_calib.npz",
         "eval": {"input": digits_test}, "labels": labels, "time": {"input": digits_test[:64]}, "shapes": {}},
        {"name": "digits_transformer", "path": SAMPLES / "digits_transformer.onnx",
         "calib": DATA / "digits_calib_tokens.npz", "eval": {"input": tokens_test}, "labels": labels,
         "time": {"input": tokens_test[:64]}, "shapes": {}},
        {"name": f"cnn{cnn_width}@{cnn_size} (random)", "model": build_cnn(cnn_width, cnn_size),
         "calib": "random", "shapes": {"input": (1, 3, cnn_size, cnn_size)},
         "eval": {"input": rng.standard_normal((64, 3, cnn_size, cnn_size)).astype(np.float32)},
         "time": {"input": rng.standard_normal((8, 3, cnn_size, cnn_size)).astype(np.float32)}},
        {"name": f"transformer d{tr_d}x{tr_layers} (random)", "model": build_transformer(d=tr_d, layers=tr_layers, ffn=4 * tr_d),
         "calib": "random", "shapes": {"input": (1, seq, tr_d)},
         "eval": {"input": rng.standard_normal((64, seq, tr_d)).astype(np.float32)},
         "time": {"input": rng.standard_normal((4, seq, tr_d)).astype(np.float32)}},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller models and fewer runs")
    parser.add_argument("--runs", type=int, help="timed rounds (default 40, quick 10)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1: steadier)")
    args = parser.parse_args(argv)
    runs = args.runs or (10 if args.quick else 40)
    warmup = 3 if args.quick else 8
    cpu = detect_cpu()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"onnxruntime {ort.__version__}, CPU: {cpu.describe()}, {os.cpu_count()} cores, load average {load:.1f}, "
          f"{args.threads} thread(s), {runs} interleaved rounds")

    rows: list[list] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_quantize-") as tmp_name:
        tmp = Path(tmp_name)
        for case in _cases(args.quick):
            started = time.perf_counter()
            stem = case["name"].split()[0]
            model = onnx.load(case["path"]) if "path" in case else case["model"]
            dense = tmp / f"{stem}.onnx"
            onnx.save(model, dense)
            variants = [("dense", dense)]
            pruned = tmp / f"{stem}_pruned.onnx"
            why = structured_prune(dense, pruned, case["shapes"])
            if why is None:
                variants.append(("prune 50% channels", pruned))
            else:
                notes.append(f"{case['name']}: no structured-pruning rows ({why})")
            zeroed = tmp / f"{stem}_zeroed.onnx"
            onnx.save(magnitude_zeroing(model), zeroed)
            variants.append(("50% magnitude zeros", zeroed))

            # Quantize every variant, then time all of them (and fp32) interleaved in one loop.
            entries: list[tuple[str, str, Path, object]] = []
            for variant, fp32_path in variants:
                entries.append((variant, "fp32", fp32_path, None))
                for mode in MODES:
                    out = tmp / f"{fp32_path.stem}_{mode}.onnx"
                    result = quantize(fp32_path, out, mode=mode, calib=case["calib"], shapes=case["shapes"],
                                      check=False, force=True)
                    entries.append((variant, mode, out, result.report))
            sessions = [_session(path, args.threads) for _, _, path, _ in entries]
            lat = interleaved(sessions, case["time"], runs, warmup)
            dense_bytes = model_file_bytes(dense)
            labels = case.get("labels")
            outputs = [_outputs(sess, case["eval"], 64) for sess in sessions]
            base: dict[str, int] = {}  # variant -> index of its fp32 entry
            for i, (variant, mode, path, report) in enumerate(entries):
                if mode == "fp32":
                    base[variant] = i
                ref_i = 0 if mode == "fp32" else base[variant]  # fp32 rows vs dense fp32; quantized vs their fp32
                got, ref = outputs[i], outputs[ref_i]
                if labels is not None:
                    q_acc = float(np.mean(got.argmax(-1) == labels))
                    r_acc = float(np.mean(ref.argmax(-1) == labels))
                    quality = f"acc {100 * q_acc:.1f}%" + ("" if i == 0 else f" ({100 * (q_acc - r_acc):+.1f} pt)")
                elif i == 0:
                    quality = "reference"
                else:
                    agree = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
                    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
                    quality = f"top-1 {100 * agree:.1f}%, rel.err {rel:.3f}"
                size = model_file_bytes(path)
                sparse = sparsified_bytes(path, tmp / f"{path.stem}_sparse.onnx") if "zeros" in variant else None
                if report is None:
                    zeros = "-"
                else:
                    z = report.zeros
                    zeros = ("exact" if z["exact"] else f"LOST {z['zeros_before'] - z['zeros_kept']}") + (
                        f" ({z['zeros_before']})" if z["zeros_before"] else "")
                rows.append([
                    case["name"] if i == 0 else "", variant, mode, human_bytes(size), round(size / dense_bytes, 3),
                    round(sparse / dense_bytes, 3) if sparse else None, round(lat[i][0], 3), round(lat[i][1], 3),
                    round(lat[0][1] / lat[i][1], 2),
                    quality, zeros,
                ])
            print(f"  {case['name']}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

    headers = ["model", "weights", "mode", "size", "size/fp32", "+sparsify", "p50 ms", "min ms", "speedup",
               "accuracy / fidelity", "zeros"]
    print(format_table(headers, rows, title="quantization: size, CPU latency (all variants interleaved), accuracy"))
    print("""
notes:
- size/fp32 and speedup are against the dense fp32 model (first row of the group).  Speedup is
  fp32 min / min over the interleaved rounds: other load on the machine only ever adds time, so the
  minimum is the steadier estimate (medians are shown too).
- accuracy (digits_*: 360-image test split) is absolute, with its change in points against the fp32
  model it was made from: a pruned fp32 row against dense fp32 (the cost of pruning), a quantized row
  against the fp32 row of its own variant (the cost of quantization).  Random-weight models: top-1
  agreement and relative L2 error of the logits (64 random inputs) against the same references.
- static: QDQ, per-channel symmetric int8 weights, uint8 activations, MinMax calibration (digits data
  for digits_*, random inputs for the random models); dynamic: per-tensor int8 weights;
  int4: MatMulNBits (MatMul/Gemm weights only), block 32, symmetric.
- "prune 50% channels": onnxsparse prune --channels 0.5, no fine-tuning (accuracy drops accordingly).
  "50% magnitude zeros": the smallest half of every weight set to 0, unstructured, no fine-tuning;
  onnxruntime has no sparse CPU kernels, so only size changes, and only once the zeros are stored
  sparse: "+sparsify" is the size after lossless `onnxsparse sparsify --format auto`.
- zeros: "exact (N)": all N zeros of the quantized weights are still exactly 0 after dequantization.""")
    for note in notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
