"""Child process that measures the peak host memory of one onnxruntime session.

Run as a script (``python _memprobe.py SPEC.json``), never imported by the
parent's hot path: it imports only onnxruntime and numpy, so the numbers do not
include onnx/onnx_ir.  The runtime is warmed up on a tiny model first (thread
pools, CUDA context), then the peak-RSS counter is reset (Linux
``/proc/self/clear_refs``), the session is created and run, and the peak is
read back.  Prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

# Running a file puts its folder first on sys.path; our module names must not shadow anything.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _proc_status() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss() -> int | None:
    try:
        import resource
    except ImportError:
        return None
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024


def _options(ort, spec: dict):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in spec.get("options", {}).items():
        if key == "execution_mode":
            value = ort.ExecutionMode(value)
        setattr(options, key, value)
    return options


def main(spec_path: str) -> dict:
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    import numpy as np
    import onnxruntime as ort

    with np.load(spec["feeds"], allow_pickle=False) as npz:
        feeds = {key: npz[key] for key in npz.files}
    chain = spec["providers"]
    warm = ort.InferenceSession(spec["warm_model"], _options(ort, spec), providers=chain)
    warm.run(None, {warm.get_inputs()[0].name: np.zeros((1,), np.float32)})

    status = _proc_status()
    baseline: int | None
    read_peak: Callable[[], int | None]
    if "VmRSS" in status and _reset_peak() and _proc_status().get("VmHWM", 0) <= status["VmRSS"] * 1.05:
        method, baseline = "linux VmHWM (reset after warm-up)", _proc_status()["VmRSS"]
        read_peak = lambda: _proc_status()["VmHWM"]  # noqa: E731
    else:
        baseline = _ru_maxrss()
        if baseline is None:
            return {"ok": False, "reason": "no way to read peak memory on this platform"}
        method = "ru_maxrss (process peak; lower bound of the session's share)"
        read_peak = _ru_maxrss

    session = ort.InferenceSession(spec["model"], _options(ort, spec), providers=chain)
    active = list(session.get_providers())
    if not active or active[0] != chain[0]:
        return {"ok": False, "reason": f"onnxruntime fell back to {active}", "active": active}
    for _ in range(int(spec.get("runs", 1))):
        session.run(None, feeds)
    peak = read_peak()
    return {"ok": True, "active": active, "baseline_rss": baseline, "peak_rss": peak, "method": method}


if __name__ == "__main__":
    try:
        result = main(sys.argv[1])
    except Exception as exc:  # noqa: BLE001 - report any failure to the parent as data
        result = {"ok": False, "reason": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    sys.stdout.write(json.dumps(result) + "\n")
