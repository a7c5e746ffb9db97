"""Execution providers: names, chains, and (with onnxruntime mocked, no GPU here) that a provider
that is missing or falls back is reported unavailable and never measured as if it were a GPU."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from helpers import cli, sample
from onnxsparse.errors import UsageError
from onnxsparse.validate import bench, validate
from onnxsparse.validate.providers import open_session, provider_chain, resolve_providers
from test_validate_support import FAST, FakeSessions

DIGITS = sample("digits_cnn")
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def test_names_aliases_and_ep_names():
    specs = resolve_providers("cpu, CUDA,trt,TensorrtExecutionProvider,gpu")
    assert [s.name for s in specs] == ["cpu", "cuda", "tensorrt"]
    assert [s.ep for s in resolve_providers(["dml", "openvino", "coreml", "rocm"])] == [
        "DmlExecutionProvider", "OpenVINOExecutionProvider", "CoreMLExecutionProvider", "ROCMExecutionProvider"]
    with pytest.raises(UsageError, match="unknown execution provider 'warp'.*cpu, cuda, tensorrt"):
        resolve_providers("cpu,warp")
    with pytest.raises(UsageError, match="no execution provider"):
        resolve_providers(" , ")


def test_chains():
    cuda, trt, cpu = resolve_providers("cuda,tensorrt,cpu")
    assert provider_chain(trt, [TRT, CUDA, CPU]) == [TRT, CUDA, CPU]
    assert provider_chain(trt, [TRT, CPU]) == [TRT, CPU]
    assert provider_chain(cuda, [CUDA, CPU]) == [CUDA, CPU]
    assert provider_chain(cpu, [CPU]) == [CPU]


def test_real_runtime_has_no_cuda_here():
    """Without mocks: this onnxruntime has no CUDA, so asking for it must not measure anything."""
    if CUDA in ort.get_available_providers():
        pytest.skip("a CUDA build of onnxruntime is installed")
    ps = open_session(DIGITS, resolve_providers("cuda")[0])
    assert not ps.available and "not available" in ps.reason and "onnxruntime-gpu" in ps.reason


def test_missing_provider_is_reported_not_measured(monkeypatch):
    fake = FakeSessions(monkeypatch, available=[CPU])
    result = validate(DIGITS, DIGITS, providers="cpu,cuda,tensorrt", runs=3, warmup=0, memory=False,
                      max_latency_ratio=1000)
    cpu, cuda, trt = result.providers
    assert cpu.available and cpu.reference.latency is not None
    for p in (cuda, trt):
        assert not p.available and p.reference is None and p.candidate is None and p.latency_ratio is None
        assert f"{p.ep} is not available" in p.reason and p.fidelity == [] and p.failed_model == "both"
    assert all(chain[0] == CPU for chain in fake.calls), fake.calls  # no session was even attempted
    assert result.passed  # unavailability alone is reported, not a failure
    assert any(note.startswith("cuda unavailable:") for note in result.notes)
    check = next(c for c in result.checks if c.name == "max_latency_ratio")
    assert check.where == "cpu"  # the gate only saw the provider that really ran


def test_fallback_to_cpu_is_marked_unavailable(monkeypatch):
    """onnxruntime lists CUDA but the session silently runs on the CPU (e.g. missing cuDNN)."""
    fake = FakeSessions(monkeypatch, available=[CUDA, CPU], reported=lambda chain: [CPU])
    result = validate(DIGITS, DIGITS, providers="cuda", runs=3, warmup=0, memory=False)
    (cuda,) = result.providers
    assert fake.calls and fake.calls[-1] == [CUDA, CPU]
    assert not cuda.available and "fell back to CPUExecutionProvider" in cuda.reason
    assert cuda.active_providers == [CPU] and cuda.reference is None
    data = result.to_dict()
    assert data["providers"][0]["available"] is False and data["providers"][0]["reference"] is None


def test_working_gpu_providers_are_measured_with_their_chain(monkeypatch):
    fake = FakeSessions(monkeypatch, available=[TRT, CUDA, CPU])
    result = validate(DIGITS, DIGITS, providers="cuda,tensorrt", runs=3, warmup=0, memory=False)
    cuda, trt = result.providers
    assert cuda.available and trt.available
    assert cuda.active_providers == [CUDA, CPU] and trt.active_providers == [TRT, CUDA, CPU]
    assert [CUDA, CPU] in fake.calls and [TRT, CUDA, CPU] in fake.calls
    assert cuda.device == trt.device == "gpu"
    assert cuda.reference.latency.runs == 3 and cuda.fidelity[0].max_abs_error == 0


def test_provider_that_fails_to_initialise(monkeypatch):
    FakeSessions(monkeypatch, available=[CUDA, CPU], fail=lambda source, chain: chain[0] == CUDA)
    result = validate(DIGITS, DIGITS, providers="cpu,cuda", runs=3, warmup=0, memory=False)
    cpu, cuda = result.providers
    assert cpu.available and not cuda.available and cuda.failed_model == "both"
    assert "failed to create a session" in cuda.reason and "driver version" in cuda.reason
    assert result.passed


def test_candidate_that_cannot_run_where_the_reference_runs_fails(monkeypatch, tmp_path):
    candidate = tmp_path / "candidate.onnx"
    candidate.write_bytes(DIGITS.read_bytes())
    FakeSessions(monkeypatch, available=[CUDA, CPU],
                 fail=lambda source, chain: chain[0] == CUDA and str(source).endswith("candidate.onnx"))
    result = validate(DIGITS, candidate, providers="cpu,cuda", runs=3, warmup=0, memory=False)
    cpu, cuda = result.providers
    assert cpu.available and not cuda.available and cuda.failed_model == "candidate"
    assert cuda.reason.startswith("the candidate cannot run on cuda while the reference can")
    check = next(c for c in result.checks if c.name == "candidate_runs")
    assert not check.passed and check.where == "cuda" and not result.passed


def test_require_providers_turns_unavailable_into_exit_1(monkeypatch):
    FakeSessions(monkeypatch, available=[CPU])
    code, out, _ = cli("validate", DIGITS, DIGITS, "--providers", "cpu,cuda", *FAST)
    assert code == 0 and "UNAVAILABLE" in out and "cuda unavailable" in out
    code, out, _ = cli("validate", DIGITS, DIGITS, "--providers", "cpu,cuda", "--require-providers", *FAST, "--json")
    data = json.loads(out)
    assert code == 1
    check = next(c for c in data["checks"] if c["name"] == "providers_available")
    assert check["passed"] is False and check["where"] == "cuda"


def test_latency_gate_with_no_provider_running_fails(monkeypatch):
    FakeSessions(monkeypatch, available=[CPU])
    code, out, _ = cli("validate", DIGITS, DIGITS, "--providers", "cuda", "--max-latency-ratio", "2", *FAST)
    assert code == 1
    assert "max_latency_ratio: nothing to evaluate" in out


def test_bench_marks_missing_provider(monkeypatch):
    FakeSessions(monkeypatch, available=[CPU])
    result = bench([DIGITS], providers="cpu,cuda", runs=2, warmup=0, memory=False)
    cpu, cuda = result.rows
    assert cpu.available and cpu.latency is not None
    assert not cuda.available and cuda.latency is None and "not available" in cuda.reason


def test_memory_probe_refuses_a_fallen_back_provider(tmp_path):
    """The child process checks the provider itself: a missing EP gives a reason, never a CPU number."""
    import numpy as np

    from onnxsparse.validate.memory import probe_memory

    if CUDA in ort.get_available_providers():
        pytest.skip("a CUDA build of onnxruntime is installed")
    cuda = resolve_providers("cuda")[0]
    stats, note = probe_memory(DIGITS, cuda, 1, {"input": np.zeros((1, 1, 8, 8), np.float32)},
                               available=[CUDA, CPU], runs=1)
    assert stats is None and note.startswith("memory probe:") and "fell back" in note
