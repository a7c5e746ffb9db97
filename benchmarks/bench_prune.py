#!/usr/bin/env python
"""Benchmark structured channel pruning: size, MACs, onnxruntime latency, pruning time; vs onnxsim.

    python benchmarks/bench_prune.py                       # everything, ratios 0.3 and 0.5
    python benchmarks/bench_prune.py --models resnet18 vgg19 --channels 0.5
    python benchmarks/bench_prune.py --quick               # small models only

Models: ResNet-18 and a MobileNetV2-like network at 224x224 built here with
onnx.helper (the sample models are too small: their latency is overhead), the
onnx "light" CNNs (ResNet-50, VGG-19, DenseNet-121, Inception-v1, SqueezeNet,
ShuffleNet) and the sample CNNs.  Every model is normalised and given seeded
random weights (He-scaled; the light models ship constant 0.02 weights), so
both pruners see the same input.

For each model and ratio it prints the MACs and params ratio (pruned/original),
the onnxruntime CPU latency ratio measured side by side (original and pruned
runs interleaved in one loop; median over rounds of pruned/original time in the
same round), ``lat/MACs`` (goal: <= 1.25) and
how long pruning took (``prune s``: the whole ``onnxsparse.prune`` call on an
in-memory model, normalisation and MAC counting included; ``core s``: analysis +
scoring + rewrite), next to ``io s``: onnx parsing and serialising the same model,
the I/O any tool pays (``prune/io``: goal <= 2).  When onnxsim 0.8.1 is installed, its
``onnxsim.pruning.apply_structured_pruning`` (same ratio, l2) runs on the same
models: whether it changed the model, its time, MACs and latency ratios.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxsparse import load_model, normalize  # noqa: E402
from onnxsparse.analysis import count_macs, count_params  # noqa: E402
from onnxsparse.io import max_runtime_ir_version  # noqa: E402
from onnxsparse.passes.prune import prune  # noqa: E402
from onnxsparse.report import format_table, human_count  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
SAMPLES = ROOT / "samples" / "models"

# --------------------------------------------------------------------------- model builders


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base: str, arr: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1, act: str | None = "relu") -> str:
        fan_in = cin // group * k * k
        w = self.rng.normal(0, math.sqrt(2.0 / fan_in), (cout, cin // group, k, k)).astype(np.float32)
        b = self.rng.normal(0, 0.05, cout).astype(np.float32)  # BatchNorm folded into the bias
        y = self.name("conv")
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const("w", w), self.const("b", b)], [y], name=y, kernel_shape=[k, k],
            strides=[stride, stride], pads=[k // 2] * 4, group=group))
        if act == "relu":
            return self.op("Relu", [y])
        if act == "relu6":
            return self.op("Clip", [y, self.const("lo", np.array(0, np.float32)), self.const("hi", np.array(6, np.float32))])
        return y

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        y = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [y], name=y, **attrs))
        return y

    def head(self, x: str, cin: int, classes: int = 1000) -> str:
        p = self.op("GlobalAveragePool", [x])
        f = self.op("Flatten", [p])
        w = self.rng.normal(0, math.sqrt(1.0 / cin), (classes, cin)).astype(np.float32)
        b = np.zeros(classes, np.float32)
        self.nodes.append(helper.make_node("Gemm", [f, self.const("fc_w", w), self.const("fc_b", b)], ["logits"],
                                           name="fc", transB=1))
        return "logits"

    def model(self, name: str, res: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, res, res])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
            self.inits,
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        return proto


def build_resnet18(res: int = 224) -> onnx.ModelProto:
    """ResNet-18 (BatchNorm folded into conv biases, as exporters do in eval mode)."""
    b = _Builder(18)
    x = b.conv("input", 3, 64, 7, 2)
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for i in range(2):
            s = stride if i == 0 else 1
            h = b.conv(x, cin, cout, 3, s)
            h = b.conv(h, cout, cout, 3, 1, act=None)
            short = b.conv(x, cin, cout, 1, s, act=None) if (s != 1 or cin != cout) else x
            x = b.op("Relu", [b.op("Add", [h, short])])
            cin = cout
    b.head(x, cin)
    return b.model("resnet18", res)


def build_mobilenet_v2(res: int = 224) -> onnx.ModelProto:
    """MobileNetV2 (width 1.0): inverted residuals with depthwise convs and ReLU6 (Clip)."""
    b = _Builder(2)
    x = b.conv("input", 3, 32, 3, 2, act="relu6")
    cin = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = b.conv(x, cin, hidden, 1, act="relu6") if t != 1 else x
            h = b.conv(h, hidden, hidden, 3, stride, group=hidden, act="relu6")
            h = b.conv(h, hidden, c, 1, act=None)
            x = b.op("Add", [h, x]) if stride == 1 and cin == c else h
            cin = c
    x = b.conv(x, cin, 1280, 1, act="relu6")
    b.head(x, 1280)
    return b.model("mobilenet_v2", res)


def randomize(model: ir.Model, seed: int = 0) -> None:
    """Seeded weights of a sensible scale for models that ship constants (light models)."""
    rng = np.random.default_rng(seed)
    users: dict[str, tuple[ir.Node, int]] = {}
    for node in model.graph:
        for i, v in enumerate(node.inputs):
            if v is not None and v.is_initializer():
                users.setdefault(v.name, (node, i))
    for name, value in model.graph.initializers.items():
        arr = value.const_value.numpy()
        if arr.dtype != np.float32 or arr.size == 1 or name not in users:
            continue
        node, index = users[name]
        if node.op_type == "BatchNormalization":
            new = rng.uniform(0.5, 1.5, arr.shape) if index in (1, 4) else rng.normal(0, 0.1, arr.shape)
        elif node.op_type in ("Conv", "Gemm") and index == 1:
            fan_in = arr[0].size if node.op_type == "Conv" else arr.shape[1 if node.attributes.get_int("transB", 0) else 0]
            new = rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
        elif node.op_type == "Mul":
            new = rng.uniform(0.5, 1.5, arr.shape)
        else:
            new = rng.normal(0, 0.05, arr.shape)
        value.const_value = ir.Tensor(np.asarray(new, dtype=np.float32), name=name)


def _from_proto(make: Callable[[], onnx.ModelProto]) -> Callable[[], ir.Model]:
    return lambda: ir.from_proto(make())


def _from_file(path: Path, random_weights: bool) -> Callable[[], ir.Model]:
    def load() -> ir.Model:
        model = normalize(load_model(path))
        if random_weights:
            randomize(model)
        return model

    return load


#: name -> (loader, is a "large" model whose latency is not overhead-dominated)
MODELS: dict[str, tuple[Callable[[], ir.Model], bool]] = {
    "resnet18": (_from_proto(build_resnet18), True),
    "mobilenet_v2": (_from_proto(build_mobilenet_v2), True),
    "resnet50": (_from_file(LIGHT / "light_resnet50.onnx", True), True),
    "vgg19": (_from_file(LIGHT / "light_vgg19.onnx", True), True),
    "densenet121": (_from_file(LIGHT / "light_densenet121.onnx", True), True),
    "inception_v1": (_from_file(LIGHT / "light_inception_v1.onnx", True), True),
    "squeezenet": (_from_file(LIGHT / "light_squeezenet.onnx", True), True),
    "shufflenet": (_from_file(LIGHT / "light_shufflenet.onnx", True), True),
    "resnet_mini": (_from_file(SAMPLES / "resnet_mini.onnx", False), False),
    "densenet_block": (_from_file(SAMPLES / "densenet_block.onnx", False), False),
    "mobilenet_block": (_from_file(SAMPLES / "mobilenet_block.onnx", False), False),
    "digits_cnn": (_from_file(SAMPLES / "digits_cnn.onnx", False), False),
}
QUICK = ("resnet_mini", "densenet_block", "mobilenet_block", "digits_cnn", "squeezenet")

# --------------------------------------------------------------------------- measuring


def _bytes(proto: onnx.ModelProto) -> bytes:
    proto.ir_version = min(max(proto.ir_version, 4), max_runtime_ir_version())
    return proto.SerializeToString()


def _session(data: bytes, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _feeds(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for arg in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in arg.shape]
        out[arg.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def interleaved_latency(sessions: list[ort.InferenceSession], budget_s: float, min_reps: int = 5) -> tuple[float, list[float]]:
    """Runs interleaved (order rotated every round): median ms of the first session, and for every
    session the median over rounds of its time divided by the first session's time in the same round
    (paired ratios cancel most of the drift a shared machine adds)."""
    feeds = _feeds(sessions[0])
    for s in sessions:  # warm up
        for _ in range(2):
            s.run(None, feeds)
    t0 = time.perf_counter()
    sessions[0].run(None, feeds)
    one = max(time.perf_counter() - t0, 1e-5)
    reps = int(min(max(budget_s / (one * len(sessions)), min_reps), 200))
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(reps):
        order = list(range(len(sessions)))
        order = order[r % len(order):] + order[: r % len(order)]
        for i in order:
            t = time.perf_counter()
            sessions[i].run(None, feeds)
            times[i].append(time.perf_counter() - t)
    base = np.array(times[0])
    ratios = [float(np.median(np.array(t) / base)) for t in times]
    return statistics.median(times[0]), ratios


def _macs(model: ir.Model) -> int | None:
    return count_macs(model, dims={"batch": 1})


def _peer():
    try:
        import onnxsim  # noqa: F401
        from onnxsim.pruning import apply_structured_pruning
    except Exception as exc:  # noqa: BLE001 - any import failure means "no peer"
        return None, f"{type(exc).__name__}: {exc}"
    import importlib.metadata

    return apply_structured_pruning, importlib.metadata.version("onnxsim")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def bench_model(name: str, ratios: list[float], args, peer) -> list[dict]:
    loader, large = MODELS[name]
    model = loader()
    base_proto = ir.to_proto(model)
    base_bytes = _bytes(base_proto)
    params0, macs0 = count_params(model), _macs(model)
    # The I/O a user pays anyway: onnx parsing and writing the same model (in memory, no disk).
    t = time.perf_counter()
    onnx.load_from_string(base_bytes).SerializeToString()
    io_s = time.perf_counter() - t
    rows = []
    for ratio in ratios:
        work = ir.from_proto(onnx.load_from_string(base_bytes))
        gc.collect()
        t = time.perf_counter()
        result = prune(work, ratio, criterion="l2", round_to=args.round_to)
        ours_s = time.perf_counter() - t
        ours_bytes = _bytes(ir.to_proto(result.model))
        row = {
            "model": name, "large": large, "ratio": ratio, "params": params0, "macs": macs0,
            "ours_params": _ratio(count_params(result.model), params0),
            "ours_macs": _ratio(_macs(result.model), macs0),
            "ours_s": ours_s, "core_s": result.report.timings["prune_s"], "io_s": io_s,
            "groups": f"{len(result.report.pruned_groups)}/{len(result.report.groups) + len(result.report.skipped)}",
        }
        del work, result
        sessions_bytes = [base_bytes, ours_bytes]
        if peer[0] is not None:
            fn = peer[0]
            proto = onnx.load_from_string(base_bytes)
            t = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = fn(proto, ratio, "l2", False)
                row["peer_s"] = time.perf_counter() - t
                peer_model = ir.from_proto(out)
                p = count_params(peer_model)
                row["peer_params"] = _ratio(p, params0)
                row["peer_macs"] = _ratio(_macs(peer_model), macs0)
                row["peer_status"] = "declined" if p == params0 else "pruned"
                if p != params0:
                    sessions_bytes.append(_bytes(out))
            except Exception as exc:  # noqa: BLE001 - the peer failing is a result, not a crash
                row["peer_s"] = time.perf_counter() - t
                row["peer_status"] = f"error: {type(exc).__name__}"
        if not args.no_latency:
            sessions = [_session(b, args.threads) for b in sessions_bytes]
            base_s, lat = interleaved_latency(sessions, args.budget)
            row["lat_ms"] = base_s * 1e3
            row["ours_lat"] = lat[1]
            if len(lat) > 2:
                row["peer_lat"] = lat[2]
            elif row.get("peer_status") == "declined":
                row["peer_lat"] = 1.0
            del sessions
        rows.append(row)
        print(_progress_line(row), file=sys.stderr, flush=True)
    return rows


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _progress_line(r: dict) -> str:
    return (f"  {r['model']} @ {r['ratio']}: MACs x{_f(r['ours_macs'])} lat x{_f(r.get('ours_lat'))} "
            f"prune {r['ours_s']:.2f}s" + (f"; peer {r['peer_status']} {r['peer_s']:.2f}s" if "peer_status" in r else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="models to run (default: all)")
    parser.add_argument("--channels", nargs="+", type=float, default=[0.3, 0.5], help="ratios (default 0.3 0.5)")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timed runs per model and ratio")
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads (default 1: stable ratios on a shared machine; 0 = ORT default)")
    parser.add_argument("--round-to", type=lambda t: t if t == "auto" else int(t), default="auto",
                        help="onnxsparse --round-to (default auto, as the CLI: this CPU's NCHWc block, 16 on AVX-512; "
                             "1 to see odd widths)")
    parser.add_argument("--no-latency", action="store_true", help="skip onnxruntime timing")
    parser.add_argument("--no-peer", action="store_true", help="do not run onnxsim")
    args = parser.parse_args(argv)
    names = args.models or (list(QUICK) if args.quick else list(MODELS))
    peer = (None, "disabled (--no-peer)") if args.no_peer else _peer()
    print(f"onnxruntime {ort.__version__}, {ort.get_device()}, {args.threads or 'default'} thread(s), "
          f"onnxsparse --round-to {args.round_to}, peer: "
          + (f"onnxsim {peer[1]} apply_structured_pruning" if peer[0] else f"not available ({peer[1]})"),
          file=sys.stderr)
    rows: list[dict] = []
    for name in names:
        rows.extend(bench_model(name, args.channels, args, peer))

    headers = ["model", "params", "MACs", "ratio", "groups", "MACs x", "params x", "lat x", "lat/MACs", "prune s",
               "core s", "io s", "prune/io", "orig ms"]
    if peer[0] is not None:
        headers += ["peer", "peer MACs x", "peer lat x", "peer s"]
    table = []
    for r in rows:
        lat_over = _ratio(r.get("ours_lat"), r["ours_macs"])
        line = [r["model"], human_count(r["params"]), human_count(r["macs"]), r["ratio"], r["groups"],
                _f(r["ours_macs"]), _f(r["ours_params"]), _f(r.get("ours_lat")), _f(lat_over, 2),
                _f(r["ours_s"], 2), _f(r["core_s"], 2), _f(r["io_s"], 2), _f(_ratio(r["ours_s"], r["io_s"]), 1),
                _f(r.get("lat_ms"), 1)]
        if peer[0] is not None:
            line += [r.get("peer_status", "-"), _f(r.get("peer_macs")), _f(r.get("peer_lat")), _f(r.get("peer_s"), 2)]
        table.append(line)
    title = (f"structured channel pruning, l2, round-to {args.round_to} (x = pruned / original; "
             f"lat = onnxruntime CPU, batch 1, {args.threads or 'default'} thread(s))")
    print(format_table(headers, table, title=title))
    if not args.no_latency:
        large = [r for r in rows if r["large"] and r.get("ours_lat") is not None]
        within = [r for r in large if r["ours_lat"] <= 1.25 * r["ours_macs"]]
        print(f"\nlatency within 1.25x of the MACs ratio: {len(within)}/{len(large)} large-model runs"
              + ("" if len(within) == len(large) else
                 " (misses: " + ", ".join(f"{r['model']}@{r['ratio']}" for r in large if r not in within) + ")"))
    big = [r for r in rows if r["params"] >= 20e6]
    if big:
        worst = max(big, key=lambda r: r["ours_s"])
        print(f"slowest prune of a >=20M-param model: {worst['model']} ({human_count(worst['params'])} params) "
              f"{worst['ours_s']:.2f}s (goal < 10 s)")
    if peer[0] is None:
        print(f"peer columns skipped: onnxsim not available ({peer[1]}); pip install onnxsim==0.8.1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
