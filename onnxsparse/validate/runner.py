"""``validate(reference, candidate, ...)``: fidelity, task metrics, latency, memory, gates.

For every requested execution provider both models get a session (checked to
really run on that provider), the whole data set goes through both (fidelity
per output, task metrics when labels are given), then latency is measured
interleaved on one fixed batch, and peak memory in child processes.  When the two
models' weights exceed the memory budget, one session is alive at a time instead
(outputs compared against the reference's kept outputs, latency in alternating phases).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from .._workdir import owned_temp_dir
from .. import guard
from ..calibration.data import DataSource, load_data, read_arrays
from .. import limits
from ..errors import DataError, ModelLoadError, UsageError
from ..report import human_bytes
from ._common import (
    check_counts,
    environment,
    fixed_batch,
    is_random,
    latency_feeds,
    model_info,
    progress_bar,
    resolve_batch,
)
from .fusions import FusionComparison, compare_fusions
from .compat import PreparedModel, check_inputs, match_outputs, parse_output_map, prepare_model
from .latency import ALTERNATING_PHASES, LatencyPlan, LatencyStats, latency_plan, measure_alternating, measure_interleaved
from .memory import probe_memory
from .batch_axis import batch_axis, batch_symbols, samples_first
from .metrics import FidelityAccumulator, Metric, resolve_metric
from .noise import NoiseRun, Perturbation, check_sigma
from .providers import (
    ProviderSession,
    ProviderSpec,
    open_session,
    open_sessions,
    resolve_providers,
    warm_up_runtime,
)
from .result import MetricResult, ProviderResult, SessionResult, ValidationResult
from .thresholds import check_threshold_inputs, evaluate_thresholds

logger = logging.getLogger(__name__)

__all__ = ["validate", "load_labels", "DEFAULT_SAMPLES"]

#: Random samples generated when no data is given.
DEFAULT_SAMPLES = 8

#: One model's outputs on one batch.
Outputs = list[np.ndarray]


def load_labels(spec: str | os.PathLike | np.ndarray) -> np.ndarray:
    """Labels from an array, a ``.npy`` file, or an ``.npz`` holding one array; float labels must be finite."""
    if isinstance(spec, np.ndarray):
        labels, origin = spec, "labels"
    else:
        path = guard.input_file(spec, "labels file", DataError)
        arrays, _ = read_arrays(path)
        if len(arrays) != 1:
            raise DataError(f"labels file {path} holds {len(arrays)} arrays {sorted(arrays)}; expected exactly one")
        labels, origin = next(iter(arrays.values())), str(path)
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise DataError(f"{origin}: {int((~np.isfinite(labels)).sum())} labels are NaN or Inf")
    return labels


def _data_source(data: Any, model: PreparedModel, shapes, samples: int | None, seed: int) -> tuple[DataSource, int]:
    """The checked data, and how many samples the file held before ``samples`` capped it."""
    if samples is not None and samples < 1:
        raise UsageError(f"--samples must be >= 1, got {samples}")
    if is_random(data):
        source = load_data("random", model.proto, shapes=shapes, samples=samples or DEFAULT_SAMPLES, seed=seed)
        return source, len(source)
    source = load_data(data, model.proto, shapes=shapes, seed=seed)
    return (source.take(samples) if samples is not None else source), len(source)


def _sample_shapes(source: DataSource, batch: int) -> dict[str, tuple[int, ...]]:
    return {name: (batch,) + tuple(arr.shape[1:]) for name, arr in source.arrays.items()}


def _check_labels(labels: np.ndarray, source: DataSource, full_count: int) -> np.ndarray:
    if labels.ndim == 0:
        raise DataError("labels must have one entry per sample (got a scalar)")
    if len(labels) != full_count:
        raise DataError(f"{len(labels)} labels for {full_count} data samples; they must match one to one")
    return labels[: len(source)]


def _run_provider(
    spec: ProviderSpec,
    reference: PreparedModel,
    candidate: PreparedModel,
    *,
    pairs: list[tuple[str, str]],
    source: DataSource,
    batch: int,
    labels: np.ndarray | None,
    label_output: str | None,
    metrics: Sequence[Metric],
    threads: int | None,
    warmup: int,
    plan: LatencyPlan,
    memory: bool,
    session_repeats: int,
    bar,
    perturbation: Perturbation | None = None,
    alternate: bool = False,
) -> ProviderResult:
    warm_up_runtime(spec, threads)
    ref_names = [r for r, _ in pairs]
    cand_names = [c for _, c in pairs]
    usable = (len(source) // batch) * batch

    def output_pass(session: ort.InferenceSession, names: list[str]) -> Iterator[tuple[Outputs, Outputs | None]]:
        """One model's outputs (samples axis first) per batch, clean and perturbed (None without ``--noise``)."""
        run, axes = session.run, _batch_axes(session, names)

        def outputs(feeds: dict[str, np.ndarray]) -> Outputs:
            return [samples_first(v, a(v, batch)) for v, a in zip(run(names, feeds), axes)]

        batches = source.batches(batch, limit=usable)  # a new noise stream restarts the same noise
        for feeds, noisy in (((f, None) for f in batches) if perturbation is None else perturbation.stream(batches)):
            yield outputs(feeds), (None if noisy is None else outputs(noisy))

    ref_outputs: list[tuple[Outputs, Outputs | None]] = []
    if alternate:  # one session alive at a time: the reference's outputs are kept while the candidate runs
        ref_s = open_session(reference.path, spec, threads, label="reference")
        ref_ok = ref_s.available
        if ref_s.session is not None:
            bar.set_description(f"{spec.name}: reference outputs")
            ref_outputs = list(output_pass(ref_s.session, ref_names))
            ref_s.session = None  # released before the candidate's session is created
        cand_s = open_session(candidate.path, spec, threads, label="candidate")
    else:
        ref_s, cand_s = open_sessions([reference.path, candidate.path], spec, threads, repeats=session_repeats,
                                      labels=["reference", "candidate"])
        ref_ok = ref_s.available
    result = ProviderResult(spec.name, spec.ep, spec.device, False)
    if not ref_ok or not cand_s.available:
        result.active_providers = ref_s.active or cand_s.active
        if ref_ok:  # a regression of the candidate, not a missing provider
            result.failed_model = "candidate"
            result.reason = f"the candidate cannot run on {spec.name} while the reference can: {cand_s.reason}"
        else:
            result.failed_model = "reference" if cand_s.available else "both"
            result.reason = ref_s.reason
        return result
    result.available = True
    result.active_providers = ref_s.active
    result.latency_mode = "alternating" if alternate else "interleaved"
    ref_sess, cand_sess = ref_s.session, cand_s.session
    if cand_sess is None or (ref_sess is None and not alternate):  # pragma: no cover - available means a session
        raise AssertionError(f"{spec.name}: an available provider session without a session")

    bar.set_description(f"{spec.name}: outputs")
    accs = [FidelityAccumulator(r, c) for r, c in pairs]
    collected: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    label_index = ref_names.index(label_output) if label_output else 0
    noise = None if perturbation is None else NoiseRun(perturbation, pairs)
    ref_stream = iter(ref_outputs) if ref_sess is None else output_pass(ref_sess, ref_names)
    for (ref_out, ref_noisy), (cand_out, cand_noisy) in zip(ref_stream, output_pass(cand_sess, cand_names)):
        for acc, r, c in zip(accs, ref_out, cand_out):
            acc.update(r, c)
        if labels is not None:
            collected[0].append(np.asarray(ref_out[label_index]))
            collected[1].append(np.asarray(cand_out[label_index]))
        if noise is not None and ref_noisy is not None and cand_noisy is not None:  # the same perturbed batch
            noise.update(ref_out, cand_out, ref_noisy, cand_noisy, label_index if labels is not None else None)
        bar.update(2)
    del ref_outputs, ref_stream
    result.samples = usable
    result.fidelity = [acc.result() for acc in accs]
    if labels is not None:
        ref_all, cand_all = np.concatenate(collected[0]), np.concatenate(collected[1])
        used_labels = labels[:usable]
        for metric in metrics:
            ref_score, cand_score = metric(ref_all, used_labels), metric(cand_all, used_labels)
            result.metrics.append(MetricResult(metric.name, ref_names[label_index], ref_score, cand_score,
                                               metric.drop(ref_score, cand_score), metric.higher_is_better))
    if noise is not None:
        result.noise = noise.result(metrics, None if labels is None else labels[:usable], ref_names[label_index])

    bar.set_description(f"{spec.name}: latency")
    feeds = latency_feeds(source, batch)
    if alternate:
        cand_sess = cand_s.session = None
        ref_lat, cand_lat = _alternating_latency(spec, threads, [reference.path, candidate.path], [ref_s, cand_s],
                                                 feeds, batch=batch, warmup=warmup, plan=plan, tick=bar.update)
    else:
        ref_lat, cand_lat = measure_interleaved(
            [ref_sess, cand_sess], [feeds, feeds], batches=[batch, batch], warmup=warmup, plan=plan,
            tick=bar.update,
        )
    result.reference = SessionResult(ref_s.seconds, ref_lat, session_samples_s=ref_s.creation_seconds)
    result.candidate = SessionResult(cand_s.seconds, cand_lat, session_samples_s=cand_s.creation_seconds)
    result.latency_ratio = cand_lat.p50_ms / ref_lat.p50_ms if ref_lat.p50_ms > 0 else None

    if memory:
        # the probes run in child processes: release this process's sessions first, so the machine holds
        # one probed session plus this process's base, not three sessions
        ref_sess = cand_sess = ref_s.session = cand_s.session = None
        bar.set_description(f"{spec.name}: memory")
        available = ort.get_available_providers()
        for model, session_result in ((reference, result.reference), (candidate, result.candidate)):
            session_result.memory, session_result.memory_note = probe_memory(
                model.path, spec, threads, feeds, available=available, runs=plan.probe_runs)
            bar.update(1)
    return result


def _alternating_latency(
    spec: ProviderSpec, threads: int | None, paths: Sequence[str | os.PathLike], records: Sequence[ProviderSession],
    feeds: dict[str, np.ndarray], *, batch: int, warmup: int, plan: LatencyPlan, tick,
) -> list[LatencyStats]:
    """:func:`measure_alternating` with a fresh session per phase; each opening's time joins ``records``'s."""

    def reopen(i: int) -> ort.InferenceSession:
        opened = open_session(paths[i], spec, threads, label=("reference", "candidate")[i])
        if opened.session is None:
            raise ModelLoadError(f"{paths[i]}: the session could not be opened again on {spec.name}: {opened.reason}")
        record = records[i]
        record.creation_seconds = record.creation_seconds + opened.creation_seconds
        record.seconds = min(record.creation_seconds)
        return opened.session

    return measure_alternating(reopen, [feeds, feeds], batches=[batch, batch], warmup=warmup, plan=plan, tick=tick)


def _alternate(reference: PreparedModel, candidate: PreparedModel, notes: list[str]) -> bool:
    """Whether the two sessions must not be alive together: their weights alone exceed the memory budget.

    A CPU session holds about its model's weights once created (prepacked copies replace the mapped
    originals); the default interleaved measurement needs both.  When that does not fit, the
    outputs are compared one session at a time and latency is measured in alternating phases, and a
    note says so.
    """
    need, limit = reference.file_bytes + candidate.file_bytes, limits.budget()
    if need <= limit:
        return False
    notes.append(f"latency measured in alternating phases ({ALTERNATING_PHASES} per model, one session alive at a "
                 f"time): both sessions would need {human_bytes(need)} (the two models' weights), over the memory "
                 f"budget of {human_bytes(limit)} (--max-memory); outputs were compared with the reference's kept")
    return True


def _batch_axes(session, names: Sequence[str]) -> list:
    """Per output, a function of (value, batch) giving its samples axis (:mod:`.batch_axis`)."""
    symbols = batch_symbols([i.shape for i in session.get_inputs()])
    declared = {o.name: o.shape for o in session.get_outputs()}
    return [lambda v, b, d=declared.get(n): batch_axis(d, np.shape(v), b, symbols) for n in names]


def _fusions(ref, cand, specs) -> FusionComparison | None:
    """What onnxruntime's CPU optimiser fuses in each model (None when the CPU provider is not asked for)."""
    if not any(spec.ep == "CPUExecutionProvider" for spec in specs):
        return None
    try:
        return compare_fusions(ref.path, cand.path)
    except Exception as exc:  # noqa: BLE001 - a diagnostic; the sessions below report real failures
        logger.debug("fusion comparison failed: %s", exc, exc_info=True)
        return None


def validate(
    reference: Any,
    candidate: Any,
    *,
    data: Any = None,
    labels: str | os.PathLike | np.ndarray | None = None,
    metric: Iterable[str | Metric] | str | None = None,
    label_output: str | None = None,
    providers: str | Iterable[str | ProviderSpec] = ("cpu",),
    threads: int | None = None,
    warmup: int = 10,
    runs: int | None = None,
    batch: int | None = None,
    shape: Mapping[str, tuple[int, ...]] | None = None,
    samples: int | None = None,
    seed: int = 0,
    output_map: Mapping[str, str] | Sequence[str] | None = None,
    memory: bool = True,
    session_repeats: int = 3,
    thresholds: Mapping[str, float] | None = None,
    require_providers: bool = False,
    progress: bool = False,
    budget: float | None = None,
    min_runs: int | None = None,
    max_runs: int | None = None,
    noise: float | None = None,
    **limits: float,
) -> ValidationResult:
    """Compare ``candidate`` with ``reference``; see ``docs/validate.md``.

    ``reference``/``candidate``: path, bytes, ``ModelProto`` or ``onnx_ir.Model``.
    ``data``: ``None``/``"random"`` (``samples`` random samples, default 8), an
    ``.npz``, a folder of them or a dict of arrays (``samples`` caps how many are
    used).  ``labels``: array or ``.npy``/``.npz`` (one per sample) enabling
    ``metric`` (one name, ``"top1,top5"`` or a list; default ``top1``) on ``label_output`` (default: first
    output).  Gates: ``thresholds={"min_cosine": 0.999}`` or the same as keyword
    arguments (``max_latency_ratio=1.0``); see :data:`THRESHOLDS`.  Latency: ``runs``
    fixed rounds, or (default) rounds until ``budget`` seconds per model (default 1) and
    at least ``min_runs`` (10), at most ``max_runs`` (100000); see :func:`latency_plan`.
    ``noise``: also run both models on the same inputs with Gaussian noise of ``noise`` times each
    float input's std (seeded by ``seed``), reported beside the clean numbers (:mod:`.noise`).
    """
    check_sigma(noise)
    plan = latency_plan(runs, budget, min_runs, max_runs)
    check_counts(warmup, plan.runs or plan.min_runs, session_repeats)
    all_limits = check_threshold_inputs({**dict(thresholds or {}), **limits}, labels=labels is not None,
                                        memory=memory)
    if metric is not None and labels is None:
        raise UsageError("--metric needs --labels")
    metric_specs: list[str | Metric] = [metric] if isinstance(metric, str) else list(metric or ["top1"])
    pieces: list[str | Metric] = []
    for part in metric_specs:
        if isinstance(part, str):
            pieces += part.split(",")
        else:
            pieces.append(part)
    metric_list = [resolve_metric(m) for m in pieces if m != ""]
    specs = resolve_providers(providers)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")

    with owned_temp_dir(kind="validate") as workdir:
        ref = prepare_model(reference, "reference", workdir)
        cand = prepare_model(candidate, "candidate", workdir)
        check_inputs(ref, cand)
        pairs, notes = match_outputs(ref, cand, parse_output_map(output_map))
        if label_output is not None and label_output not in [r for r, _ in pairs]:
            raise UsageError(f"--label-output {label_output!r} is not a reference output {[r for r, _ in pairs]}")

        source, full_count = _data_source(data, ref, shape, samples, seed)
        source.check_against(cand.inputs)
        label_array = None
        if labels is not None:
            if is_random(data):
                raise UsageError("--labels needs --data (labels of random inputs mean nothing)")
            label_array = _check_labels(load_labels(labels), source, full_count)
        batch = resolve_batch(ref.inputs, batch, "reference")
        usable = (len(source) // batch) * batch
        if usable == 0:
            raise DataError(f"{len(source)} data samples do not fill one batch of {batch}")
        if usable < len(source):
            notes.append(f"last {len(source) - usable} sample(s) do not fill a batch of {batch}; not evaluated")

        stat_shapes = _sample_shapes(source, fixed_batch(ref.inputs) or 1)
        ref_info, cand_info = model_info(ref, stat_shapes), model_info(cand, stat_shapes)
        gc.collect()  # the models loaded for their statistics map every weight; release them before the sessions
        notes += [f"{info.role}: {info.stats_note}" for info in (ref_info, cand_info) if info.stats_note]

        fusions = _fusions(ref, cand, specs)
        fusion_note = None if fusions is None else fusions.note()
        if fusion_note:
            notes.append(fusion_note)

        alternate = _alternate(ref, cand, notes)
        perturbation = None if noise is None else Perturbation(source.arrays, noise, seed)
        if perturbation is not None and not perturbation.inputs:
            notes.append("--noise: no float input varies across the data (std 0), so nothing was perturbed")
        per_provider = 2 * (usable // batch) + 2 * (warmup + plan.progress_units()) + (2 if memory else 0)
        bar = progress_bar(per_provider * len(specs), progress, "validate")
        results: list[ProviderResult] = []
        try:
            for spec in specs:
                results.append(_run_provider(
                    spec, ref, cand, pairs=pairs, source=source, batch=batch, labels=label_array,
                    label_output=label_output, metrics=metric_list if label_array is not None else [],
                    threads=threads, warmup=warmup, plan=plan, memory=memory, session_repeats=session_repeats,
                    bar=bar, perturbation=perturbation, alternate=alternate,
                ))
        finally:
            bar.close()
    for p in results:
        if not p.available:
            notes.append(f"{p.provider} unavailable: {p.reason}")
    settings = {
        "data": "random" if is_random(data) else (str(data) if not isinstance(data, Mapping) else "<arrays>"),
        "samples": len(source),
        "labels": None if labels is None else (str(labels) if not isinstance(labels, np.ndarray) else "<array>"),
        "metrics": [m.name for m in metric_list] if label_array is not None else [],
        "providers": [s.name for s in specs],
        "threads": threads,
        "batch": batch,
        "warmup": warmup,
        **plan.settings(),
        "memory": memory,
        "session_repeats": session_repeats,
        "seed": seed,
        "noise": noise,
        "output_pairs": [{"reference": r, "candidate": c} for r, c in pairs],
        "thresholds": all_limits,
    }
    result = ValidationResult(ref_info, cand_info, results, [], settings, environment(), notes,
                              fusions=None if fusions is None else fusions.as_dict())
    result.checks = evaluate_thresholds(result, all_limits, require_providers=require_providers)
    return result

