"""Execution providers: short names, availability, and sessions that really run where asked.

onnxruntime silently falls back to the CPU when a requested execution provider
is missing or fails to initialise (it only warns).  A latency measured on that
session is a CPU number, so every session opened here is checked after creation:
the requested provider must be the first one ``session.get_providers()`` lists,
otherwise the provider is reported *unavailable* with the reason, and nothing is
measured on it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from .._ort import make_session
from .._ort import session_options as ort_session_options
from ..errors import Decline, ModelLoadError, UsageError

__all__ = [
    "ProviderSpec",
    "ProviderSession",
    "PROVIDERS",
    "DEFAULT_PROVIDERS",
    "register_provider",
    "resolve_providers",
    "provider_chain",
    "check_available",
    "session_options",
    "open_session",
    "open_sessions",
    "warm_up_runtime",
    "IDENTITY_MODEL",
]


@dataclass(frozen=True)
class ProviderSpec:
    """One execution provider as the user names it (``cuda``) and as onnxruntime does."""

    name: str
    ep: str
    device: str  # "cpu", "gpu", "npu" or "any": what the numbers are measured on
    aliases: tuple[str, ...] = ()
    #: Providers placed between this one and the CPU when they are available
    #: (TensorRT hands unsupported nodes to CUDA before the CPU).
    fallbacks: tuple[str, ...] = ()
    #: Session settings this provider needs (DirectML cannot use memory patterns).
    configure: Callable[[ort.SessionOptions], None] | None = None
    install_hint: str = ""


def _dml_options(options: ort.SessionOptions) -> None:
    options.enable_mem_pattern = False
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL


_GPU_HINT = "install onnxruntime-gpu (pip install 'onnxsparse[gpu]') and the matching CUDA/cuDNN libraries"

#: Every provider onnxsparse knows by a short name, in the order ``--help`` lists them.
DEFAULT_PROVIDERS: tuple[ProviderSpec, ...] = (
    ProviderSpec("cpu", "CPUExecutionProvider", "cpu"),
    ProviderSpec("cuda", "CUDAExecutionProvider", "gpu", ("gpu",), install_hint=_GPU_HINT),
    ProviderSpec(
        "tensorrt", "TensorrtExecutionProvider", "gpu", ("trt",), ("CUDAExecutionProvider",),
        install_hint=_GPU_HINT + " plus TensorRT",
    ),
    ProviderSpec("tensorrt-rtx", "NvTensorRTRTXExecutionProvider", "gpu", ("trt-rtx",),
                 install_hint="install an onnxruntime build with the TensorRT-RTX provider"),
    ProviderSpec("rocm", "ROCMExecutionProvider", "gpu", install_hint="install onnxruntime-rocm"),
    ProviderSpec("migraphx", "MIGraphXExecutionProvider", "gpu", install_hint="install onnxruntime-migraphx"),
    ProviderSpec("openvino", "OpenVINOExecutionProvider", "any", ("ov",), install_hint="install onnxruntime-openvino"),
    ProviderSpec("dml", "DmlExecutionProvider", "gpu", ("directml",), configure=_dml_options,
                 install_hint="install onnxruntime-directml (Windows)"),
    ProviderSpec("coreml", "CoreMLExecutionProvider", "any", install_hint="use onnxruntime on macOS"),
    ProviderSpec("dnnl", "DnnlExecutionProvider", "cpu", ("onednn",), install_hint="build onnxruntime with oneDNN"),
    ProviderSpec("xnnpack", "XnnpackExecutionProvider", "cpu", install_hint="use an onnxruntime build with XNNPACK"),
    ProviderSpec("qnn", "QNNExecutionProvider", "npu", install_hint="install onnxruntime-qnn"),
    ProviderSpec("cann", "CANNExecutionProvider", "npu", install_hint="install onnxruntime-cann"),
    ProviderSpec("nnapi", "NnapiExecutionProvider", "any", install_hint="use onnxruntime on Android"),
    ProviderSpec("acl", "ACLExecutionProvider", "cpu", install_hint="build onnxruntime with Arm Compute Library"),
    ProviderSpec("webgpu", "WebGpuExecutionProvider", "gpu", install_hint="use an onnxruntime build with WebGPU"),
)

PROVIDERS: dict[str, ProviderSpec] = {}


def register_provider(spec: ProviderSpec) -> ProviderSpec:
    """Make ``spec`` known by its name, aliases and onnxruntime EP name."""
    for key in (spec.name, *spec.aliases, spec.ep):
        PROVIDERS[key.lower()] = spec
    return spec


for _spec in DEFAULT_PROVIDERS:
    register_provider(_spec)


def provider_names() -> list[str]:
    """Short names, for ``--help`` and error messages."""
    return list(dict.fromkeys(spec.name for spec in PROVIDERS.values()))


def resolve_providers(names: str | Iterable[str | ProviderSpec]) -> list[ProviderSpec]:
    """``"cpu,cuda"`` (or a list; EP names work too) -> provider specs, duplicates dropped."""
    if isinstance(names, str):
        names = names.split(",")
    specs: list[ProviderSpec] = []
    for item in names:
        if isinstance(item, ProviderSpec):
            spec = item
        else:
            key = item.strip().lower()
            if not key:
                continue
            if key not in PROVIDERS:
                raise UsageError(f"unknown execution provider {item!r}; known: {', '.join(provider_names())}")
            spec = PROVIDERS[key]
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise UsageError("no execution provider given (e.g. --providers cpu,cuda)")
    return specs


def provider_chain(spec: ProviderSpec, available: Sequence[str]) -> list[str]:
    """What is passed to onnxruntime: the provider, its available fallbacks, then the CPU."""
    chain = [spec.ep]
    chain += [ep for ep in spec.fallbacks if ep in available and ep not in chain]
    if "CPUExecutionProvider" not in chain:
        chain.append("CPUExecutionProvider")
    return chain


def check_available(spec: ProviderSpec) -> None:
    """Returns when onnxruntime lists the provider as available, else declines with why not."""
    available = ort.get_available_providers()
    if spec.ep not in available:
        raise Decline(
            f"{spec.ep} is not available in this onnxruntime {ort.__version__} "
            f"(available: {', '.join(available)}); {spec.install_hint or 'install a build that has it'}"
        )


def session_options(spec: ProviderSpec, threads: int | None) -> ort.SessionOptions:
    options = ort_session_options(threads=threads)
    if spec.configure is not None:
        spec.configure(options)
    return options


def _identity_model() -> bytes:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "warm", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model.SerializeToString()


IDENTITY_MODEL = _identity_model()


def warm_up_runtime(spec: ProviderSpec, threads: int | None = None) -> None:
    """Open and run a tiny session on ``spec`` so one-time costs (thread pools, CUDA context)
    are not charged to the first model's session-creation time."""
    available = ort.get_available_providers()
    if spec.ep not in available:
        return
    try:
        session = make_session(IDENTITY_MODEL, session_options(spec, threads), provider_chain(spec, available))
        session.run(None, {"x": np.zeros((1,), np.float32)})
    except Exception:  # noqa: BLE001 - the real session will report the problem
        pass


@dataclass
class ProviderSession:
    """A session opened for one provider, or the reason it could not be."""

    spec: ProviderSpec
    session: ort.InferenceSession | None
    seconds: float | None = None  # the fastest of ``creation_seconds``
    active: list[str] = field(default_factory=list)
    reason: str | None = None
    creation_seconds: list[float] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.session is not None


def open_session(
    model: str | os.PathLike | bytes, spec: ProviderSpec, threads: int | None = None, *, label: str = "model"
) -> ProviderSession:
    """Create a session on ``spec`` and check that onnxruntime really uses it.

    Returns an unavailable :class:`ProviderSession` (with the reason) when the
    provider is missing or onnxruntime fell back; raises :class:`ModelLoadError`
    when onnxruntime cannot load the model on the CPU at all.
    """
    try:
        check_available(spec)
    except Decline as exc:
        return ProviderSession(spec, None, reason=exc.reason)
    chain = provider_chain(spec, ort.get_available_providers())
    start = time.perf_counter()
    try:
        session = make_session(model, session_options(spec, threads), chain)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
        message = " ".join(str(exc).split())[:400]
        if spec.ep == "CPUExecutionProvider":
            raise ModelLoadError(f"onnxruntime cannot load the {label}: {message}") from exc
        return ProviderSession(spec, None, reason=f"{spec.ep} failed to create a session: {message}")
    seconds = time.perf_counter() - start
    active = list(session.get_providers())
    if not active or active[0] != spec.ep:
        return ProviderSession(
            spec, None, seconds, active, creation_seconds=[seconds],
            reason=f"onnxruntime fell back to {', '.join(active) or 'nothing'} instead of {spec.ep} "
            "(provider failed to initialise); not measured",
        )
    return ProviderSession(spec, session, seconds, active, creation_seconds=[seconds])


def open_sessions(
    models: Sequence[str | os.PathLike], spec: ProviderSpec, threads: int | None = None, *, repeats: int = 1,
    labels: Sequence[str] | None = None,
) -> list[ProviderSession]:
    """Open a session per model ``repeats`` times, interleaved, keeping the last of each.

    Session creation takes milliseconds for small models and is easily disturbed
    by other load, so it is timed several times, rotating which model goes first;
    ``seconds`` is the fastest (as ``timeit`` does: other load only ever adds
    time).  A model that is unavailable is not retried.
    """
    labels = list(labels or [os.fspath(m) for m in models])
    results: list[ProviderSession | None] = [None] * len(models)
    times: list[list[float]] = [[] for _ in models]
    for round_index in range(max(1, repeats)):
        for k in range(len(models)):
            i = (round_index + k) % len(models)
            previous = results[i]
            if previous is not None and not previous.available:
                continue
            # release the previous session before creating the next: a name still bound to it (``previous``)
            # kept two copies of the model's weights alive while the new one packed its own
            results[i] = previous = None
            opened = open_session(models[i], spec, threads, label=labels[i])
            times[i] += opened.creation_seconds
            results[i] = opened
            del opened
    sessions: list[ProviderSession] = []
    for session, seconds in zip(results, times):
        if session is None:  # pragma: no cover - the first round opens every model
            raise AssertionError("a model was never opened")
        session.creation_seconds = seconds
        session.seconds = min(seconds) if seconds else None
        sessions.append(session)
    return sessions
