#!/usr/bin/env python
"""Benchmark ``prune --target``: accuracy against the uniform ratio at the same MACs, and latency targets.

    python benchmarks/bench_target.py            # both tables (~8 min on 2 shared cores)
    python benchmarks/bench_target.py --quick    # the trained samples only (~1 min)

**Accuracy** (the trained samples, ``samples/data``): for ``--target macs=R`` (R = 0.7, 0.5) with
calibration data, the task accuracy on the test split next to the uniform ratio whose *measured*
MACs are closest to what the target reached (searched over ratios 0.00..0.95; the transformer's
uniform ratio applies to heads and FFN neurons, its only prunable groups), both with the same
criterion (``wanda``) and repair (``lstsq``, sequential).  ``digits_cnn``, ``digits_resnet`` and
the ``digits_mbv2`` pair use ``--round-to 4`` in both (their 16/32/48-channel layers allow only multiples of 16 at the default
16-channel blocks; ``digits_resnet`` then cannot reach ``macs=0.5`` by widths at all).

Whole residual blocks are candidates of the allocation (the widths column names the removed ones
and how many were offered).  The verification round (``prune_target.verify_round``) prunes, repairs and
measures up to 3 in-band allocations whole on the calibration data; the widths column says which one it
kept (``knapsack``, ``uniform``, ``next-best``) and the seconds it took.

**Latency** (``--target latency=0.6``): the measured latency ratio of every correction round and a
fresh interleaved measurement of the final model against the original (onnxruntime CPU, default
threads, batch 1, 2 s per model).  Models: ResNet-18 at 224x224 (``bench_prune.build_resnet18``) and
a BERT-base-width encoder (4 layers, hidden 768, 12 heads, FFN 3072, sequence 128,
``samples/build_attention_samples.build_bert``), random weights and random calibration data (8
samples; the loss table is then only a tie-breaker, the latency is what is measured), no repair
(it does not change latency); with ``--quick`` the trained samples instead (their latency is
mostly per-run overhead, so the target is out of reach there).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "samples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from onnxsparse.io import load_model, to_proto, max_runtime_ir_version  # noqa: E402
from onnxsparse.passes.prune import prune  # noqa: E402
from onnxsparse.report import format_table  # noqa: E402

MODELS = ROOT / "samples" / "models"
DATA = ROOT / "samples" / "data"

#: (model, calibration data, test data, test labels, uniform ratio applies to, round_to)
SAMPLES = (
    ("digits_cnn", "digits_calib.npz", "digits_test.npz", "digits_test_labels.npy", "channels", 4),
    ("digits_resnet", "digits_resnet_calib.npz", "digits_resnet_test.npz", "digits_resnet_test_labels.npy",
     "channels", 4),
    ("digits_mbv2", "digits_resnet_calib.npz", "digits_resnet_test.npz", "digits_resnet_test_labels.npy",
     "channels", 4),
    ("digits_mbv2_narrow", "digits_resnet_calib.npz", "digits_resnet_test.npz", "digits_resnet_test_labels.npy",
     "channels", 4),
    ("digits_transformer", "digits_calib_tokens.npz", "digits_test_tokens.npz", "digits_test_labels.npy",
     "heads+ffn", "auto"),
)


def _session(model: ir.Model, threads: int | None = None):
    from onnxsparse._ort import make_session, session_options

    proto = to_proto(model)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    return make_session(proto, session_options(threads=threads))


def correct(model: ir.Model, test: str, labels_file: str) -> np.ndarray:
    """Per test sample: is the top-1 class the label."""
    data = dict(np.load(DATA / test))
    labels = np.load(DATA / labels_file)
    logits = _session(model).run(None, data)[0]
    return np.argmax(logits, axis=-1) == labels


def accuracy(model: ir.Model, test: str, labels_file: str) -> float:
    return float(np.mean(correct(model, test, labels_file)))


def paired(a: np.ndarray, b: np.ndarray) -> str:
    """McNemar's exact test on the samples exactly one of two models gets right (the same test set)."""
    from scipy.stats import binomtest

    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return f"target-only right {only_a}, uniform-only right {only_b}, McNemar p={p:.3f}" if p >= 0.001 else \
        f"target-only right {only_a}, uniform-only right {only_b}, McNemar p={p:.1e}"


def _uniform_kwargs(kind: str, ratio: float) -> dict:
    return {"channels": ratio} if kind == "channels" else {"channels": 0.0, "heads": ratio, "ffn": ratio}


def closest_uniform(name: str, kind: str, round_to, macs: float) -> tuple[float, float]:
    """(ratio, MACs ratio) of the uniform ratio whose measured MACs are closest to ``macs``."""
    best = (0.0, 1.0)
    for ratio in np.round(np.arange(0.0, 0.96, 0.01), 2):
        r = prune(MODELS / f"{name}.onnx", round_to=round_to, **_uniform_kwargs(kind, float(ratio))).report
        got = r.macs_ratio if r.macs_ratio is not None else 1.0
        if abs(got - macs) < abs(best[1] - macs):
            best = (float(ratio), got)
    return best


def accuracy_table(targets: tuple[float, ...]) -> str:
    rows = []
    for name, calib, test, labels, kind, round_to in SAMPLES:
        path = MODELS / f"{name}.onnx"
        original = accuracy(load_model(path), test, labels)
        rows.append([name, "original", "-", "1.000", "1.000", f"{original:.4f}",
                     f"{len(np.load(DATA / labels))} test samples"])
        for r in targets:
            t0 = time.perf_counter()
            res = prune(path, calib=DATA / calib, target=f"macs={r}", round_to=round_to)
            seconds = time.perf_counter() - t0
            rep, target = res.report, res.report.target
            if target is None or rep.macs_ratio is None:
                raise RuntimeError(f"{name}: prune --target gave no target report or MAC count")
            widths = ", ".join(f"{g.kind[0]}{g.id}:{g.kept}/{g.total}" for g in rep.groups)
            widths += "".join(f", block {b['add']} removed" for b in target.blocks)
            widths += f"; {target.block_candidates} block candidates"
            if target.verify:
                kept = next(c for c in target.verify if c["chosen"])
                widths += (f"; verify kept the {kept['source']} of {len(target.verify)} "
                           f"({target.verify_seconds:.1f} s)")
            target_right = correct(res.model, test, labels)
            rows.append([name, f"target macs={r}", "met" if target.met else "NOT met", f"{rep.macs_ratio:.3f}",
                         f"{rep.params_ratio:.3f}", f"{target_right.mean():.4f}", f"{widths} ({seconds:.1f} s)"])
            ratio, _ = closest_uniform(name, kind, round_to, rep.macs_ratio)
            uni = prune(path, calib=DATA / calib, round_to=round_to, **_uniform_kwargs(kind, ratio))
            widths = ", ".join(f"{g.kind[0]}{g.id}:{g.kept}/{g.total}" for g in uni.report.groups)
            uniform_right = correct(uni.model, test, labels)
            rows.append([name, f"uniform {kind} {ratio:g}", "", f"{uni.report.macs_ratio:.3f}",
                         f"{uni.report.params_ratio:.3f}", f"{uniform_right.mean():.4f}",
                         f"{widths}; {paired(target_right, uniform_right)}"])
    return format_table(["model", "pruning", "target", "MACs", "params", "top-1", "widths kept (group: kept/total)"],
                        rows, title="accuracy: --target macs=R vs the uniform ratio at the closest measured MACs "
                                    "(wanda, lstsq repair, test split)")


def _latency_models(quick: bool):
    if quick:
        for name, calib, *_ in SAMPLES:
            yield name, load_model(MODELS / f"{name}.onnx"), str(DATA / calib), None
        return
    from bench_prune import build_resnet18
    from build_attention_samples import build_bert

    yield "resnet18 224", ir.from_proto(build_resnet18(224)), "random", {"input": (1, 3, 224, 224)}
    yield ("bert 4x768 seq128", ir.from_proto(build_bert(layers=4, hidden=768, heads=12, ffn=3072)), "random",
           {"input": (1, 128, 768), "attention_mask": (1, 128)})


def latency_table(ratio: float, quick: bool) -> str:
    from onnxsparse.validate.latency import measure_interleaved

    rows = []
    for name, model, calib, shapes in _latency_models(quick):
        original = model.clone()
        t0 = time.perf_counter()
        res = prune(model, calib=calib, calib_samples=8, target=f"latency={ratio}", shapes=shapes, repair="none")
        seconds = time.perf_counter() - t0
        target = res.report.target
        if target is None:
            raise RuntimeError(f"{name}: prune --target gave no target report")
        rounds = "; ".join(f"{r.measured:.3f}" for r in target.rounds)
        ref_sess, cand_sess = _session(original), _session(res.model)
        feeds = {i.name: np.ascontiguousarray(v[:1]) for i, v in
                 zip(ref_sess.get_inputs(), _feeds(ref_sess, calib, shapes))}
        ref, cand = measure_interleaved([ref_sess, cand_sess], [feeds, feeds], batches=[1, 1], warmup=10, budget=2.0)
        rows.append([name, f"latency={ratio}", "met" if target.met else "NOT met", target.cost_basis, rounds,
                     f"{cand.p50_ms / ref.p50_ms:.3f}", f"{ref.p50_ms:.3f} -> {cand.p50_ms:.3f}",
                     f"{res.report.macs_ratio:.3f}", f"{seconds:.0f}"])
    return format_table(["model", "target", "", "allocated on", "measured per round", "re-measured", "p50 ms", "MACs", "prune s"],
                        rows, title="latency: --target latency=R (onnxruntime CPU, batch 1, interleaved with the "
                                    "original)")


def _feeds(sess, calib: str, shapes) -> list[np.ndarray]:
    if calib != "random":
        data = np.load(calib)
        return [data[i.name] for i in sess.get_inputs()]
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shapes[i.name]).astype(np.float32) if i.name != "attention_mask"
            else np.ones(shapes[i.name], np.float32) for i in sess.get_inputs()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the trained samples only")
    parser.add_argument("--only", choices=("accuracy", "latency"), help="one of the two tables")
    args = parser.parse_args(argv)
    if args.only != "latency":
        print(accuracy_table((0.7,) if args.quick else (0.7, 0.5)), flush=True)
        print()
    if args.only != "accuracy":
        print(latency_table(0.6, args.quick), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
