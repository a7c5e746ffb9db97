"""Benchmark the sensitivity sweep on each executor: in-process, local worker processes, Ray.

One command, one table::

    python benchmarks/bench_sensitivity.py                 # BERT-sized encoder (4 layers, hidden 384)
    python benchmarks/bench_sensitivity.py --model m.onnx --calib data.npz --workers 4

The same sweep (every prunable group at every ratio, every residual block removed whole) runs
with ``workers=1`` (in this process), with ``--workers`` local processes, and on Ray with as many
actors (a local ``ray.init`` the executor starts and stops, included in the wall time; skipped
when Ray is not installed).  Each row gives the wall time of the whole ``sensitivity()`` call and
whether its errors are bit-identical to the in-process run's.  No cache is used.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "samples"))

from onnxsparse.executor import default_workers  # noqa: E402
from onnxsparse.passes.sensitivity import parse_ratios, sensitivity  # noqa: E402
from onnxsparse.report import format_table  # noqa: E402


def _numbers(report) -> list:
    return ([(g.id, r.ratio, r.rel_mse, r.cosine) for g in report.groups for r in g.results]
            + [(b.id, b.rel_mse, b.cosine) for b in report.blocks])


def _encoder(folder: Path, layers: int, hidden: int, heads: int, ffn: int) -> Path:
    import onnx
    from build_attention_samples import build_bert

    path = folder / "encoder.onnx"
    onnx.save(build_bert(layers=layers, hidden=hidden, heads=heads, ffn=ffn), path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model to sweep (default: a built BERT-sized encoder)")
    p.add_argument("--calib", default="random", help="calibration data (default random)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0xD1x...",
                   help="input shapes for random data (default for the built encoder: seq --seq)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--ratios", default="0.25,0.5")
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--no-ray", action="store_true", help="skip the Ray row")
    args = p.parse_args(argv)

    from onnxsparse.calibration.data import parse_shapes

    ratios = parse_ratios(args.ratios)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model, shapes = Path(args.model), parse_shapes(args.shape) or None
        else:
            model = _encoder(Path(tmp), args.layers, args.hidden, args.hidden // 32, 4 * args.hidden)
            shapes = {"input": (1, args.seq, args.hidden), "attention_mask": (1, args.seq)}
        common = {"ratios": ratios, "samples": args.samples, "shapes": shapes}
        runs = [("in-process", "local", 1), ("local processes", "local", args.workers)]
        try:
            import ray  # noqa: F401
        except ImportError:
            ray_note = "Ray not installed (pip install 'onnxsparse[ray]')"
        else:
            ray_note = None
            if not args.no_ray:
                runs.append(("ray (local ray.init)", "ray", args.workers))
        rows, baseline = [], None
        for label, executor, workers in runs:
            start = time.perf_counter()
            report = sensitivity(model, args.calib, executor=executor, workers=workers, **common)
            wall = time.perf_counter() - start
            numbers = _numbers(report)
            baseline = numbers if baseline is None else baseline
            rows.append([label, workers, report.sessions, round(wall, 2),
                         round(report.timings["masked_runs_s"], 2), "yes" if numbers == baseline else "NO"])
    title = (f"sensitivity sweep of {args.model or f'a built encoder ({args.layers} layers, hidden {args.hidden}, seq {args.seq})'}"
             f"; {args.samples} samples, ratios {args.ratios}")
    print(format_table(["executor", "workers", "evaluations", "wall s", "evaluations s", "equal results"], rows,
                       title=title))
    if ray_note:
        print(ray_note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
