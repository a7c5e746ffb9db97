"""Peak host memory of a session, measured honestly in a child process.

``tracemalloc`` cannot see onnxruntime's allocations, and the parent process's
peak RSS mixes every model it ever loaded.  So each (model, provider) gets a
fresh Python process (see ``_memprobe.py``) that warms the runtime up on a tiny
model, resets the Linux peak-RSS counter, creates the session, runs it, and
reports the peak.  Device (GPU) memory is not measured: the numbers are host
RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._workdir import owned_temp_dir
from .providers import IDENTITY_MODEL, ProviderSpec, provider_chain, session_options

__all__ = ["MemoryStats", "probe_memory", "PROBE_SCRIPT"]

PROBE_SCRIPT = Path(__file__).with_name("_memprobe.py")


@dataclass
class MemoryStats:
    """``peak_rss_bytes``: peak RSS of the probe process; ``session_bytes``: the part the session added."""

    peak_rss_bytes: int
    session_bytes: int
    method: str


def _options_dict(spec: ProviderSpec, threads: int | None) -> dict:
    options = session_options(spec, threads)
    return {
        "intra_op_num_threads": options.intra_op_num_threads,
        "inter_op_num_threads": options.inter_op_num_threads,
        "enable_mem_pattern": options.enable_mem_pattern,
        "execution_mode": int(options.execution_mode),
    }


def probe_memory(
    model_path: str | os.PathLike,
    spec: ProviderSpec,
    threads: int | None,
    feeds: Mapping[str, np.ndarray],
    *,
    available: list[str],
    runs: int = 5,
    timeout: float = 900.0,
) -> tuple[MemoryStats | None, str | None]:
    """Measure in a child process; returns ``(stats, None)`` or ``(None, why it could not)``."""
    with owned_temp_dir(kind="mem") as tmp:
        tmp_path = Path(tmp)
        # numpy's stub lets the ``**arrays`` mapping bind savez's ``allow_pickle: bool`` keyword
        np.savez(tmp_path / "feeds.npz", **{k: np.ascontiguousarray(v) for k, v in feeds.items()})  # type: ignore[arg-type, unused-ignore]
        (tmp_path / "warm.onnx").write_bytes(IDENTITY_MODEL)
        job = {
            "model": os.fspath(Path(model_path).resolve()),
            "warm_model": str(tmp_path / "warm.onnx"),
            "feeds": str(tmp_path / "feeds.npz"),
            "providers": provider_chain(spec, available),
            "options": _options_dict(spec, threads),
            "runs": max(1, runs),
        }
        (tmp_path / "job.json").write_text(json.dumps(job), encoding="utf-8")
        try:
            proc = subprocess.run(
                [sys.executable, str(PROBE_SCRIPT), str(tmp_path / "job.json")],
                capture_output=True, text=True, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired:
            return None, f"memory probe timed out after {timeout:.0f} s"
        except OSError as exc:
            return None, f"memory probe could not start: {exc}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = " ".join(proc.stderr.split())[-300:]
        return None, f"memory probe failed (exit {proc.returncode}): {tail or 'no output'}"
    result = json.loads(lines[-1])
    if not result.get("ok"):
        return None, f"memory probe: {result.get('reason', 'unknown failure')}"
    peak, baseline = int(result["peak_rss"]), int(result["baseline_rss"])
    return MemoryStats(peak, max(0, peak - baseline), str(result["method"])), None
