"""Issue 16: past the external-data threshold onnxruntime's steps run in a child process, same bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

import onnxsparse.quantize._prepare as prepare_module
import onnxsparse.quantize.api as api
from onnxsparse.errors import ModelLoadError
from onnxsparse.io import load_model
from onnxsparse.quantize import quantize
from onnxsparse.quantize._child import ChildError, in_child

from test_quantize_external import _mlp, _options


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("mode", ["dynamic", "int4"])
def test_child_path_writes_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    src = _mlp(tmp_path / "mlp.onnx")
    opts = _options(mode)
    monkeypatch.setattr(api, "EXTERNAL_DATA_THRESHOLD", 0)
    calls: list[str] = []

    def counted(fn: Callable[..., object], *args: Any, tmp: Path) -> None:
        calls.append(getattr(fn, "__name__", ""))
        in_child(fn, *args, tmp=tmp)

    monkeypatch.setattr(api, "in_child", counted)
    monkeypatch.setattr(prepare_module, "in_child", counted)
    (tmp_path / "child").mkdir()
    child = quantize(src, tmp_path / "child" / "q.onnx", **opts)
    assert calls == ["pre_process_external", "quantize_external"]

    def here(fn: Callable[..., object], *args: Any, tmp: Path) -> None:
        fn(*args)

    monkeypatch.setattr(api, "in_child", here)
    monkeypatch.setattr(prepare_module, "in_child", here)
    (tmp_path / "here").mkdir()
    inline = quantize(src, tmp_path / "here" / "q.onnx", **opts)
    got, want = _files(tmp_path / "child"), _files(tmp_path / "here")
    assert set(want) == {"q.onnx", "q.onnx.data"}
    assert got == want
    a, b = child.report.as_dict(), inline.report.as_dict()
    for key in ("seconds", "output"):
        a.pop(key), b.pop(key)
    assert a == b


def test_an_onnxruntime_error_in_the_child_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "missing"], ["y"], name="mm")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)  # loadable by every supported onnxruntime
    onnx.save(model, str(bad))
    import onnxruntime

    with pytest.raises(ChildError) as info:
        in_child(onnxruntime.InferenceSession, str(bad), tmp=tmp_path)
    assert info.value.type_name in {"Fail", "InvalidGraph", "InvalidArgument"}, info.value.type_name
    assert "missing" in str(info.value) and "\n" not in str(info.value)


def test_our_error_in_the_child_keeps_its_type(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        in_child(load_model, str(tmp_path / "nowhere.onnx"), tmp=tmp_path)
    assert "nowhere.onnx" in str(info.value)


def test_a_script_without_a_main_guard_runs_the_child_once(tmp_path: Path) -> None:
    """The child does not re-run the caller's script (``multiprocessing``'s spawn would)."""
    src = _mlp(tmp_path / "mlp.onnx")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import onnxsparse.quantize.api as api
        from onnxsparse.quantize import quantize
        api.EXTERNAL_DATA_THRESHOLD = 0
        print("script ran")
        quantize({str(src)!r}, {str(tmp_path / "q.onnx")!r}, mode="dynamic", check=False)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("script ran") == 1
    assert (tmp_path / "q.onnx").exists() and (tmp_path / "q.onnx.data").exists()


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return [p for p, pp in parents.items() if pp == pid]


def _state(pid: int) -> str:
    """``""`` when gone, ``"Z"`` when dead (a zombie waits for an init that may not reap it), else running."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the child process")
def test_sigterm_while_the_child_works_leaves_no_temporary_files(tmp_path: Path) -> None:
    src = _mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "out"
    out.mkdir()
    code = textwrap.dedent(f"""
        import sys
        import onnxsparse.quantize.api as api
        from onnxsparse._signals import Terminated, signals_as_exceptions, stopped
        api.EXTERNAL_DATA_THRESHOLD = 0
        with signals_as_exceptions():
            try:
                from onnxsparse.cli import main
                code = main(["quantize", {str(src)!r}, "-o", {str(out / "q.onnx")!r}, "--mode", "dynamic"])
            except (KeyboardInterrupt, Terminated) as exc:
                code = stopped(exc)
        sys.exit(code)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    children: list[int] = []
    while not children and proc.poll() is None and time.monotonic() < deadline:
        children = _descendants(proc.pid)
        time.sleep(0.02)
    assert children, "the quantizer never ran in a child process"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "onnxsparse: terminated"
    assert sorted(p.name for p in out.iterdir()) == []
    time.sleep(0.2)
    assert all(_state(pid) in {"", "Z"} for pid in children), "a child process outlived the command"
