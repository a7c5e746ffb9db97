"""A model past protobuf's 2 GB limit through every command: time, peak memory, external data kept.

    python benchmarks/bench_large.py [--size-gb 2.2] [--keep] [--only inspect,prune]

Generates (deterministically, streamed to disk: never the whole model in memory) a float32 MLP of
``--size-gb`` GB whose weights live in external data, then runs ``python -m onnxsparse`` inspect, prune
(``--channels 0.5``), sparsify (``--sparsity 0.5``), quantize (``--mode dynamic``, or ``--quantize-mode int4``) and validate (input vs
the pruned model) each in its own process, and prints per command: wall seconds, the peak RSS (the child's
``os.wait4`` maximum, or the sampled sum over the child and its children if larger), peak / model size, the output's size and whether it kept its weights in external data.
Files go to a temporary folder (removed unless ``--keep``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

HIDDEN = 8192
GiB = 1 << 30


def generate(folder: Path, size_gb: float) -> Path:
    """x[N, H] -> (MatMul W_i + b_i -> Relu) x L -> y[N, H], the weights written layer by layer."""
    layers = max(1, round(size_gb * GiB / (HIDDEN * HIDDEN * 4)))
    data_name = "mlp.onnx.data"
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    offset = 0
    with open(folder / data_name, "wb") as data:
        for i in range(layers):
            for name, shape in ((f"w{i}", (HIDDEN, HIDDEN)), (f"b{i}", (HIDDEN,))):
                array = (rng.standard_normal(shape, dtype=np.float32) * (1.0 / np.sqrt(HIDDEN))).astype(np.float32)
                raw = array.tobytes()
                data.write(raw)
                tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
                tensor.data_location = TensorProto.EXTERNAL
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                offset += len(raw)
                inits.append(tensor)
                del array, raw
            x = "x" if i == 0 else f"h{i - 1}"
            nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"matmul{i}"),
                      helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
                      helper.make_node("Relu", [f"a{i}"], [f"h{i}" if i < layers - 1 else "y"], name=f"relu{i}")]
    graph = helper.make_graph(nodes, "large_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", HIDDEN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "mlp.onnx"
    onnx.save_model(model, path)  # the tensors already point at mlp.onnx.data
    return path


def model_bytes(path: Path) -> int:
    """The model file plus the external data files next to it that it names."""
    if not path.exists():
        return 0
    proto = onnx.load(str(path), load_external_data=False)
    names = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    return path.stat().st_size + sum((path.parent / n).stat().st_size for n in names if (path.parent / n).exists())


def external(path: Path) -> bool:
    if not path.exists():
        return False
    proto = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants now (``/proc``: VmRSS, parents from ``stat``)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/status") as f:
                rss[int(entry)] = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
        except (OSError, ValueError, IndexError):
            continue
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(p for p, pp in parent.items() if pp == pid and p not in tree)
    return sum(rss.get(pid, 0) for pid in tree)


def run(argv: list[str]) -> tuple[float, float, int, str]:
    """(seconds, peak RSS in bytes, exit code, last stderr line) of ``python -m onnxsparse ARGV``.

    The peak is the larger of the child's ``os.wait4`` maximum and the largest sum of the resident
    memory of the child and its own children sampled together every 50 ms (quantize runs
    onnxruntime in a grandchild process: ``wait4`` would report only the larger one, not the sum).
    """
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "onnxsparse", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peak_sum = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak_sum[0] = max(peak_sum[0], _tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err = proc.stderr.read() if proc.stderr else ""
    done.set()
    sampler.join()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    peak = max(usage.ru_maxrss * 1024.0, float(peak_sum[0]))
    return time.perf_counter() - start, peak, proc.returncode, lines[-1] if lines else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=2.2)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--only", default="inspect,prune,sparsify,quantize,validate")
    parser.add_argument("--quantize-mode", default="dynamic", choices=("dynamic", "int4"),
                        help="the quantize command's --mode (int4 needs no calibration data either)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="onnxsparse-large-"))
    try:
        t = time.perf_counter()
        model = generate(folder, args.size_gb)
        size = model_bytes(model)
        print(f"model: {model} ({size / GiB:.2f} GiB in external data), generated in {time.perf_counter() - t:.1f} s")
        out = {k: folder / f"{k}.onnx" for k in ("prune", "sparsify", "quantize")}
        commands = {
            "inspect": ["inspect", str(model), "--no-sparsity"],
            "prune": ["prune", str(model), "-o", str(out["prune"]), "--channels", "0.5"],
            "sparsify": ["sparsify", str(model), "-o", str(out["sparsify"]), "--sparsity", "0.5"],
            "quantize": ["quantize", str(model), "-o", str(out["quantize"]), "--mode", args.quantize_mode],
            "validate": ["validate", str(model), str(out["prune"]), "--no-memory", "--samples", "2", "--warmup", "1",
                         "--runs", "3"],
        }
        rows = []
        for name in args.only.split(","):
            seconds, peak, code, last = run(commands[name])
            written = out.get(name)
            rows.append((name, f"{seconds:.1f}", f"{peak / GiB:.2f}", f"{peak / size:.2f}x",
                         f"{model_bytes(written) / GiB:.2f}" if written else "-",
                         ("yes" if external(written) else "no") if written else "-",
                         "ok" if code == 0 else f"exit {code}: {last[:80]}"))
        head = ("command", "seconds", "peak RSS GiB", "peak / model", "output GiB", "external data", "result")
        widths = [max(len(str(r[i])) for r in (head, *rows)) for i in range(len(head))]
        for row in (head, *rows):
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
