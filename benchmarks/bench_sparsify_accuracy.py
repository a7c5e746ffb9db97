"""Unstructured / 2:4 pruning quality on the two trained digits models: onnxsparse vs onnxsim 0.8.1.

    python benchmarks/bench_sparsify_accuracy.py          # both models, 50/60/70% and 2:4 (~10 s)
    python benchmarks/bench_sparsify_accuracy.py --allocate   # per-layer allocation table (~2 min)

For each model (``samples/models/digits_cnn.onnx``, ``digits_transformer.onnx``,
trained on scikit-learn's digits; the held-out split is in ``samples/data``) and
each target, every method prunes the weights of all MatMul/Gemm/Conv layers
(``--min-size 0`` for onnxsparse, as onnxsim prunes every matched layer) and the
result is scored on the held-out split.  Activation-aware methods get the same
128 calibration samples.  Columns: top-1 accuracy, the zero fraction of the
linear weights as onnxsim's ``weight_sparsity`` counts it (same definition for
every method), wall time of the pruning call.

onnxsparse: ``magnitude`` and ``wanda`` criteria, per tensor (``unstructured``)
or per output row (``row``); onnxsim: ``apply_magnitude_pruning``,
``apply_wanda_pruning``, ``apply_sparsegpt_pruning`` (Conv included).

``--allocate``: the same models at 50/70/80% unstructured, each criterion with the
three ``--allocate`` methods side by side (top-1 on the held-out split); ``zeros`` is
the parameter-weighted zero fraction of the pruned tensors, counted in the result
(the target, up to rounding, whatever the allocation).  Row ``2:4``: uniform is 2:4
in every tensor, sensitivity an average of 0.5 over tensors left dense or at 2:4/1:4.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    "digits_cnn": ("digits_calib.npz", "digits_test.npz"),
    "digits_transformer": ("digits_calib_tokens.npz", "digits_test_tokens.npz"),
}
TARGETS = ("0.5", "0.6", "0.7", "2:4")
CALIB_BATCH = 32


def _top1(proto, data: dict[str, np.ndarray], labels: np.ndarray) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the peer leaves unused initializers behind; not our concern here
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = sess.run(None, {i.name: data[i.name] for i in sess.get_inputs()})[0]
    return float((out.argmax(-1) == labels).mean())


def _ours(path: Path, calib: Path, target: str, criterion: str, pattern: str):
    import onnx_ir as ir

    from onnxsparse.io import load_model
    from onnxsparse.passes.sparsify import sparsify

    model = load_model(path)
    nm = ":" in target
    sparsify(model, sparsity=None if nm else float(target), pattern=target if nm else pattern,
             criterion=criterion, calib=str(calib), format="dense", min_size=0)
    return ir.to_proto(model)


ALLOCATE_TARGETS = ("0.5", "0.7", "0.8", "2:4")


def _allocated(path: Path, calib: Path, target: str, criterion: str, allocate: str):
    """(pruned proto, zero fraction of the pruned tensors counted in it); target ``2:4``: uniform is
    2:4 everywhere, sensitivity an average of 0.5 over dense and 2:4 / 1:4 tensors."""
    import onnx_ir as ir

    from onnxsparse.io import load_model
    from onnxsparse.passes.sparsify import sparsify

    model = load_model(path)
    nm = ":" in target
    sparsity = None if nm and allocate == "uniform" else 0.5 if nm else float(target)
    report = sparsify(model, sparsity=sparsity, pattern=target if nm else "unstructured", criterion=criterion,
                      allocate=allocate, calib=str(calib), format="dense", min_size=0)
    pruned = [r.name for r in report.tensors if r.pruned or (r.note and "left dense" in r.note)]
    arrays = [model.graph.initializers[name].const_value.numpy() for name in pruned]
    zeros = sum(int(np.count_nonzero(a == 0)) for a in arrays) / sum(a.size for a in arrays)
    return ir.to_proto(model), zeros


def allocation_tables(models: list[str]) -> None:
    from onnxsparse.report import format_table
    from onnxsparse.sparsity.allocate import ALLOCATORS

    import onnx

    for name in models:
        calib_name, test_name = MODELS[name]
        path = ROOT / "samples" / "models" / f"{name}.onnx"
        calib = ROOT / "samples" / "data" / calib_name
        data = dict(np.load(ROOT / "samples" / "data" / test_name))
        labels = np.load(ROOT / "samples" / "data" / "digits_test_labels.npy")
        rows = []
        for target in ALLOCATE_TARGETS:
            for criterion in ("magnitude", "wanda", "sparsegpt"):
                row = [target, criterion]
                for allocate in ALLOCATORS:
                    if ":" in target and allocate == "owl":
                        row.append("-")  # OWL's ratios are continuous; N:M has levels
                        continue
                    start = time.perf_counter()
                    proto, zeros = _allocated(path, calib, target, criterion, allocate)
                    seconds = time.perf_counter() - start
                    row.append(f"{_top1(proto, data, labels):.4f} ({zeros:.3f}, {seconds:.1f} s)")
                rows.append(row)
        dense = _top1(onnx.load(str(path)), data, labels)
        print(format_table(["target", "criterion", *(f"{a}: top-1 (zeros, time)" for a in ALLOCATORS)], rows,
                           title=f"{name}: dense top-1 {dense:.4f}, {len(labels)} held-out images"))
        print()


def _peer(path: Path, calib_batches: list[dict[str, np.ndarray]], target: str, method: str):
    import onnx
    import onnxsim.pruning as peer

    proto = onnx.load(str(path))
    kwargs = {"n": 2, "m": 4} if target == "2:4" else {"sparsity": float(target)}
    if method == "magnitude":
        return peer.apply_magnitude_pruning(proto, **kwargs)
    if method == "wanda":
        return peer.apply_wanda_pruning(proto, calibration_data=calib_batches, **kwargs)
    return peer.apply_sparsegpt_pruning(proto, calibration_data=calib_batches, **kwargs)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--quick", action="store_true", help="targets 0.5 and 2:4 only")
    parser.add_argument("--allocate", action="store_true",
                        help="compare the --allocate methods (uniform, owl, sensitivity) instead")
    args = parser.parse_args(argv)
    if args.allocate:
        warnings.filterwarnings("ignore")
        allocation_tables(args.models)
        return 0
    targets = ("0.5", "2:4") if args.quick else TARGETS
    warnings.filterwarnings("ignore")

    from onnxsparse.report import format_table

    try:
        import onnxsim.pruning as peer
    except ImportError:  # the peer is in the bench extra
        peer = None
        print("onnxsim is not installed (pip install onnxsim==0.8.1): its rows are skipped\n")
    methods = [("onnxsparse", "magnitude", "unstructured"), ("onnxsparse", "magnitude", "row"),
               ("onnxsparse", "sparsegpt", "unstructured"),
               ("onnxsparse", "wanda", "unstructured"), ("onnxsparse", "wanda", "row")]
    if peer is not None:
        methods += [("onnxsim", m, "-") for m in ("magnitude", "wanda", "sparsegpt")]
    for name in args.models:
        import onnx

        calib_name, test_name = MODELS[name]
        path = ROOT / "samples" / "models" / f"{name}.onnx"
        calib = ROOT / "samples" / "data" / calib_name
        data = dict(np.load(ROOT / "samples" / "data" / test_name))
        labels = np.load(ROOT / "samples" / "data" / "digits_test_labels.npy")
        calib_arrays = dict(np.load(calib))
        count = len(next(iter(calib_arrays.values())))
        calib_batches = [{k: v[i:i + CALIB_BATCH] for k, v in calib_arrays.items()}
                         for i in range(0, count, CALIB_BATCH)]
        dense = onnx.load(str(path))
        rows = [["dense", "-", "-", "-", f"{_top1(dense, data, labels):.4f}", "0.000", "-"]]
        for target in targets:
            for tool, criterion, pattern in methods:
                if target == "2:4" and pattern == "row":
                    continue  # N:M has its own groups
                start = time.perf_counter()
                if tool == "onnxsparse":
                    pruned = _ours(path, calib, target, criterion, pattern)
                else:
                    pruned = _peer(path, calib_batches, target, criterion)
                seconds = time.perf_counter() - start
                zeros = peer.weight_sparsity(pruned) if peer is not None else float("nan")
                rows.append([tool, criterion, "2:4" if target == "2:4" else pattern, target,
                             f"{_top1(pruned, data, labels):.4f}", f"{zeros:.3f}", f"{seconds:.2f}"])
        print(format_table(["tool", "criterion", "groups", "target", "top-1", "zeros", "time s"], rows,
                           title=f"{name} ({len(labels)} held-out images, {count} calibration samples)"))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
