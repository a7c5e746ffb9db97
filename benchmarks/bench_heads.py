"""Benchmark head and FFN-neuron pruning on a BERT-sized encoder.

One command, one table::

    python benchmarks/bench_heads.py                  # 4 layers, hidden 384, 12 heads, FFN 1536, seq 128
    python benchmarks/bench_heads.py --batches 1 --reps 5   # quicker

The model is built here (``samples/build_attention_samples.build_bert``) with
random weights and decomposed attention written as the TorchScript exporter
writes it (run-time ``Shape -> Gather -> Unsqueeze -> Concat`` Reshape targets
with a constant head count, an additive attention mask input).  For each
setting it reports: pruning time, parameter and MAC ratios
(``onnxsparse.analysis``), onnxruntime CPU latency of pruned vs original
(runs interleaved, median of each), and cosine similarity of the outputs.
If ``onnxsim`` (0.8.1) with ``apply_attention_head_pruning`` is installed it
is run on the same model as a peer; otherwise the table says so.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "samples"))

from build_attention_samples import build_bert  # noqa: E402

from onnxsparse.analysis import count_macs, count_params  # noqa: E402
from onnxsparse.io import load_model, max_runtime_ir_version  # noqa: E402
from onnxsparse.passes.prune_heads import prune_heads  # noqa: E402
from onnxsparse.report import format_table  # noqa: E402

SETTINGS = ((0.25, 0.0), (0.5, 0.0), (0.0, 0.25), (0.0, 0.5), (0.25, 0.25), (0.5, 0.5))


def _session(proto: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _feeds(batch: int, seq: int, hidden: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.float32)
    mask[:, seq - seq // 8:] = 0.0  # some padding
    return {"input": rng.standard_normal((batch, seq, hidden)).astype(np.float32), "attention_mask": mask}


def _interleaved(a: ort.InferenceSession, b: ort.InferenceSession, feeds, reps: int) -> tuple[float, float]:
    for s in (a, b):
        s.run(None, feeds)  # warm-up
    ta, tb = [], []
    for _ in range(reps):
        for s, out in ((a, ta), (b, tb)):
            t = time.perf_counter()
            s.run(None, feeds)
            out.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def _cosine(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.ravel().astype(np.float64), y.ravel().astype(np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30))


def _peer(proto: onnx.ModelProto, heads: float):
    """onnxsim's head pruning, if installed; returns (model or None, note)."""
    try:
        import onnxsim  # type: ignore[import-not-found]
    except ImportError:
        return None, "onnxsim not installed"
    fn = getattr(onnxsim, "apply_attention_head_pruning", None)
    if fn is None:
        return None, f"onnxsim {getattr(onnxsim, '__version__', '?')} has no apply_attention_head_pruning"
    params = inspect.signature(fn).parameters
    ratio_name = next((p for p in params if any(k in p for k in ("ratio", "sparsity", "amount", "fraction"))), None)
    try:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        out = fn(copy, **({ratio_name: heads} if ratio_name else {}))
        if isinstance(out, tuple):
            out = out[0]
        if not isinstance(out, onnx.ModelProto):
            return None, f"apply_attention_head_pruning returned {type(out).__name__}"
        return out, "" if ratio_name else "no ratio parameter: default ratio"
    except Exception as exc:  # noqa: BLE001 - report whatever the peer says
        return None, f"onnxsim refused the model: {type(exc).__name__}: {str(exc)[:80]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--ffn", type=int, default=1536)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (1-8)")
    parser.add_argument("--reps", type=int, default=10, help="interleaved runs per model and batch size")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    proto = build_bert(layers=args.layers, hidden=args.hidden, heads=args.heads, ffn=args.ffn, seed=0)
    base_model = load_model(proto.SerializeToString())
    shapes = {"input": (1, args.seq, args.hidden), "attention_mask": (1, args.seq)}
    base_params = count_params(base_model)
    base_macs = count_macs(base_model, shapes)
    base_sess = _session(proto, args.threads)
    ref_out = {b: base_sess.run(None, _feeds(b, args.seq, args.hidden, seed=b))[0] for b in batches}
    print(f"BERT-like encoder: {args.layers} layers, hidden {args.hidden}, {args.heads} heads x "
          f"{args.hidden // args.heads}, FFN {args.ffn}, seq {args.seq}; {base_params / 1e6:.2f}M params, "
          f"{(base_macs or 0) / 1e9:.2f} GMACs at batch 1; onnxruntime {ort.__version__} CPU, "
          f"{args.threads} thread(s), median of {args.reps} interleaved runs", flush=True)

    rows = []
    for heads, ffn in SETTINGS:
        model = load_model(proto.SerializeToString())
        t = time.perf_counter()
        result = prune_heads(model, heads=heads, ffn=ffn)
        prune_s = time.perf_counter() - t
        pruned = ir.to_proto(model)
        sess = _session(pruned, args.threads)
        macs = count_macs(load_model(pruned.SerializeToString()), shapes)
        lat, cos = [], []
        for b in batches:
            feeds = _feeds(b, args.seq, args.hidden, seed=b)
            t_base, t_new = _interleaved(base_sess, sess, feeds, args.reps)
            lat.append(f"{t_new / t_base:.2f} ({t_new * 1e3:.0f}/{t_base * 1e3:.0f} ms)")
            cos.append(_cosine(ref_out[b], sess.run(None, feeds)[0]))
        heads_kept = sorted({b["heads_kept"] for b in result.report["attention"]})
        ffn_kept = sorted({b["kept"] for b in result.report["ffn"]})
        rows.append([
            "onnxsparse", f"--heads {heads} --ffn {ffn}",
            f"{'/'.join(map(str, heads_kept)) or args.heads}/{args.heads}",
            f"{'/'.join(map(str, ffn_kept)) or args.ffn}/{args.ffn}",
            f"{prune_s:.2f}", f"{count_params(model) / base_params:.3f}",
            "?" if macs is None or not base_macs else f"{macs / base_macs:.3f}",
            *lat, f"{min(cos):.4f}",
        ])
        if result.report["skipped"]:
            rows[-1][1] += f" ({len(result.report['skipped'])} skipped)"
        if heads > 0 and ffn == 0:
            t = time.perf_counter()
            peer, note = _peer(proto, heads)
            peer_s = time.perf_counter() - t
            if peer is None:
                rows.append(["onnxsim 0.8.1", f"heads {heads}", "-", "-", "-", "-", "-",
                             *["-"] * len(batches), note])
            else:
                psess = _session(peer, args.threads)
                pm = load_model(peer.SerializeToString())
                if count_params(pm) == base_params:
                    note = (note + "; " if note else "") + "no block matched: model unchanged"
                pmacs = count_macs(pm, shapes)
                plat, pcos = [], []
                for b in batches:
                    feeds = _feeds(b, args.seq, args.hidden, seed=b)
                    t_base, t_new = _interleaved(base_sess, psess, feeds, args.reps)
                    plat.append(f"{t_new / t_base:.2f} ({t_new * 1e3:.0f}/{t_base * 1e3:.0f} ms)")
                    pcos.append(_cosine(ref_out[b], psess.run(None, feeds)[0]))
                rows.append(["onnxsim 0.8.1", f"heads {heads}", "?", "-",
                             f"{peer_s:.2f}", f"{count_params(pm) / base_params:.3f}",
                             "?" if pmacs is None or not base_macs else f"{pmacs / base_macs:.3f}",
                             *plat, f"{min(pcos):.4f}" + (f"  ({note})" if note else "")])
        print(f"  done: heads {heads} ffn {ffn}", file=sys.stderr, flush=True)

    headers = ["tool", "setting", "heads kept", "ffn kept", "prune s", "params", "MACs",
               *[f"latency b{b}" for b in batches], "cosine"]
    print(format_table(headers, rows, title="Head / FFN pruning (ratios = pruned / original)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
