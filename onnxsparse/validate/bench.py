"""``bench(models, ...)``: latency, throughput, session time and memory across providers,
thread counts and batch sizes.

Within one (provider, threads, batch) configuration all models are timed
interleaved (see :mod:`.latency`), so their numbers are comparable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnxruntime as ort

from .._workdir import owned_temp_dir
from ..calibration.data import DataSource, load_data
from ..errors import OnnxSparseError, UsageError
from ..options.bench import BenchOptions
from ..report import to_jsonable
from ._common import check_counts, environment, fixed_batch, is_random, latency_feeds, model_info, progress_bar
from .compat import PreparedModel, prepare_model
from .latency import LatencyPlan, LatencyStats, latency_plan, measure_interleaved
from .memory import MemoryStats, probe_memory
from .providers import ProviderSession, ProviderSpec, open_sessions, resolve_providers, warm_up_runtime
from .result import ModelInfo

__all__ = ["BenchRow", "BenchResult", "bench", "run_bench", "BENCH_SCHEMA"]

BENCH_SCHEMA = "onnxsparse.bench/1"


@dataclass
class BenchRow:
    """One model in one configuration (provider, threads, batch), or why it was not measured."""

    model: str
    provider: str
    ep: str
    device: str
    threads: int | None
    batch: int
    available: bool
    reason: str | None = None
    active_providers: list[str] = field(default_factory=list)
    session_seconds: float | None = None
    session_samples_s: list[float] = field(default_factory=list)
    latency: LatencyStats | None = None
    memory: MemoryStats | None = None
    memory_note: str | None = None


@dataclass
class BenchResult:
    models: list[ModelInfo]
    rows: list[BenchRow]
    settings: dict[str, Any]
    environment: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({
            "schema": BENCH_SCHEMA,
            "models": self.models,
            "rows": self.rows,
            "settings": self.settings,
            "environment": self.environment,
            "notes": self.notes,
        })


def _measure_config(
    spec: ProviderSpec,
    threads: int | None,
    batch_request: int | None,
    models: Sequence[PreparedModel],
    sources: Sequence[DataSource],
    sessions: Sequence[ProviderSession],
    *,
    warmup: int,
    plan: LatencyPlan,
    memory: bool,
    bar,
) -> list[BenchRow]:
    rows: list[BenchRow] = []
    live: list[tuple[BenchRow, ProviderSession, PreparedModel, dict]] = []
    for model, source, ps in zip(models, sources, sessions):
        fixed = fixed_batch(model.inputs)
        batch = batch_request or fixed or 1
        row = BenchRow(model=model.display, provider=spec.name, ep=spec.ep, device=spec.device, threads=threads,
                       batch=batch, available=ps.available, reason=ps.reason, active_providers=ps.active,
                       session_seconds=ps.seconds, session_samples_s=ps.creation_seconds)
        rows.append(row)
        if not ps.available:
            continue
        if fixed is not None and batch != fixed:
            row.available, row.reason = False, f"model has a fixed batch size of {fixed}"
            continue
        live.append((row, ps, model, latency_feeds(source, batch)))
    if live:
        bar.set_description(f"{spec.name} t={threads or 'auto'} b={batch_request or 'model'}")
        stats = measure_interleaved(
            [ps.session for _, ps, _, _ in live], [feeds for *_, feeds in live],
            batches=[row.batch for row, *_ in live], warmup=warmup, plan=plan, tick=bar.update,
        )
        available = ort.get_available_providers()
        for (row, _, model, feeds), stat in zip(live, stats):
            row.latency = stat
            if memory:
                row.memory, row.memory_note = probe_memory(
                    model.path, spec, threads, feeds, available=available, runs=plan.probe_runs)
                bar.update(1)
    return rows


def _model_data(model: PreparedModel, data: Any, shapes, samples: int | None, seed: int, name_it: bool) -> DataSource:
    """The data for one model; with several models, errors say which model they are about."""
    try:
        source = load_data("random" if is_random(data) else data, model.proto, shapes=shapes,
                           samples=samples or 1, seed=seed)
    except OnnxSparseError as exc:
        if not name_it:
            raise
        raise type(exc)(f"{model.display}: {exc}") from exc
    return source.take(samples) if samples and not is_random(data) else source


def bench(models: Iterable[Any], options: BenchOptions | None = None, *, progress: bool = False,
          **kwargs: Any) -> BenchResult:
    """``onnxsparse bench`` from Python: the keywords are the command's options (:class:`BenchOptions`:
    ``--batch`` -> ``batches``, ``--shape`` -> ``shapes``, ``--no-memory`` -> ``memory=False``), checked
    the same way; or pass a :class:`BenchOptions`.

    ``models`` are paths, bytes, protos or ``onnx_ir`` models.  Beyond the options, ``data`` may be
    in-memory (a mapping of arrays or a ``DataSource``) and ``providers`` may list :class:`ProviderSpec`
    objects.  Latency: ``runs`` fixed rounds, or (default) rounds until ``budget`` seconds per model
    (default 1), at least ``min_runs`` (10), at most ``max_runs`` (100000); see :func:`latency_plan`.
    """
    data = kwargs.pop("data") if not isinstance(kwargs.get("data", "random"), (str, os.PathLike)) else None
    given = kwargs.get("providers")
    specs = None
    if given is not None and not isinstance(given, str) and not all(isinstance(p, str) for p in given):
        specs = resolve_providers(kwargs.pop("providers"))
    if options is None:
        options = BenchOptions.from_kwargs(kwargs, "bench()")
    elif kwargs:
        raise TypeError("bench(): pass either a BenchOptions or keyword arguments, not both")
    return run_bench(models, options, data=data, specs=specs, progress=progress)


def run_bench(models: Iterable[Any], options: BenchOptions, *, data: Any = None,
              specs: Sequence[ProviderSpec] | None = None, progress: bool = False) -> BenchResult:
    """Benchmark ``models`` in every configuration ``options`` names (``data``/``specs``: in-memory
    data and provider objects that replace ``options.data`` / ``options.providers``)."""
    data = options.data if data is None else data
    shapes = options.shape_map()
    samples, seed, warmup, memory = options.samples, options.seed, options.warmup, options.memory
    session_repeats = options.session_repeats
    plan = latency_plan(options.runs, options.budget, options.min_runs, options.max_runs)
    check_counts(warmup, plan.runs or plan.min_runs, session_repeats)
    specs = list(specs) if specs is not None else resolve_providers(",".join(options.providers))
    thread_list = options.thread_list()
    batch_list = options.batch_list()
    model_list = list(models)
    if not model_list:
        raise UsageError("bench needs at least one model")
    notes: list[str] = []
    with owned_temp_dir(kind="bench") as workdir:
        prepared = [prepare_model(m, f"model{i}", workdir) for i, m in enumerate(model_list)]
        many = len(prepared) > 1
        need = max([b for b in batch_list if b] + [1])
        sources = [_model_data(model, data, shapes, samples or (need if is_random(data) else None), seed, many)
                   for model in prepared]
        infos = []
        for model, source in zip(prepared, sources):
            stat_shapes = {n: (fixed_batch(model.inputs) or 1,) + a.shape[1:] for n, a in source.arrays.items()}
            infos.append(model_info(model, stat_shapes))
        notes += [f"{info.path}: {info.stats_note}" for info in infos if info.stats_note]

        per_config = len(prepared) * (warmup + plan.progress_units() + (1 if memory else 0))
        bar = progress_bar(per_config * len(specs) * len(thread_list) * len(batch_list), progress, "bench")
        rows: list[BenchRow] = []
        try:
            for spec in specs:
                for threads_value in thread_list:
                    warm_up_runtime(spec, threads_value)
                    sessions = open_sessions([m.path for m in prepared], spec, threads_value,
                                             repeats=session_repeats, labels=[m.display for m in prepared])
                    for batch in batch_list:
                        rows += _measure_config(spec, threads_value, batch, prepared, sources, sessions,
                                                warmup=warmup, plan=plan, memory=memory, bar=bar)
                    del sessions
        finally:
            bar.close()
    skipped: dict[tuple[str, str | None], int] = {}
    for row in rows:
        if not row.available:
            skipped[(row.provider, row.reason)] = skipped.get((row.provider, row.reason), 0) + 1
    notes += [f"{provider}: {count} row(s) not measured: {reason}" for (provider, reason), count in skipped.items()]
    settings = {
        "data": "random" if is_random(data) else str(data),
        "providers": [s.name for s in specs],
        "threads": thread_list,
        "batches": batch_list,
        "warmup": warmup,
        **plan.settings(),
        "memory": memory,
        "session_repeats": session_repeats,
        "seed": seed,
    }
    return BenchResult(infos, rows, settings, environment(), notes)
