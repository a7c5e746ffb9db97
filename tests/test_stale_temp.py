"""SIGKILL cannot be caught: the next run removes what a killed run left, and undoes its half-done save."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsparse._workdir import JOURNAL, PREFIX, owned_temp_dir, sweep_stale


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _fake_left_over(parent: Path, pid: int, host: str | None = None) -> Path:
    folder = parent / f"{PREFIX}save-abc"
    folder.mkdir()
    (folder / ".owner").write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid}))
    return folder


def _model(path: Path, value: float) -> None:
    weight = numpy_helper.from_array(np.full((64, 64), value, np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)


def _weight(path: Path) -> float:
    return float(numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0]).flat[0])


def test_a_killed_process_folder_goes_a_live_or_foreign_one_stays(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from onnxsparse._workdir import make_owned_temp_dir
        print(make_owned_temp_dir({str(tmp_path)!r}, "save"), flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert child.stdout is not None
    left = Path(child.stdout.readline().strip())
    assert left.is_dir() and sweep_stale(tmp_path) == []  # its owner still runs
    child.send_signal(signal.SIGKILL)
    child.wait()
    with owned_temp_dir(tmp_path, "save") as mine:
        foreign = _fake_left_over(tmp_path, _dead_pid(), host="another-host")
        assert not left.exists()  # creating a folder swept the killed run's one
        assert sweep_stale(tmp_path) == [] and mine.is_dir() and foreign.is_dir()


def test_a_save_killed_after_moving_its_data_is_rolled_back(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    _model(out, 1.0)
    old_data = (tmp_path / "out.onnx.data").read_bytes()
    # the state a SIGKILL leaves between "move the new data in" and "commit the model":
    folder = _fake_left_over(tmp_path, _dead_pid())
    _model(folder / "out.onnx", 2.0)  # the uncommitted model ...
    os.replace(tmp_path / "out.onnx.data", folder / "out.onnx.data.old")  # ... the previous data kept aside
    os.replace(folder / "out.onnx.data", tmp_path / "out.onnx.data")  # ... the new data in place
    (folder / JOURNAL).write_text(json.dumps({"model": "out.onnx", "data": "out.onnx.data"}))
    with pytest.raises(Exception):
        assert _weight(out) == 1.0  # the old model no longer matches its data
    assert sweep_stale(tmp_path) == [folder]
    assert (tmp_path / "out.onnx.data").read_bytes() == old_data and _weight(out) == 1.0
    assert not folder.exists()


def test_a_first_save_killed_before_its_commit_leaves_no_data_file(tmp_path: Path) -> None:
    folder = _fake_left_over(tmp_path, _dead_pid())
    _model(folder / "new.onnx", 2.0)
    os.replace(folder / "new.onnx.data", tmp_path / "new.onnx.data")
    (folder / JOURNAL).write_text(json.dumps({"model": "new.onnx", "data": "new.onnx.data"}))
    sweep_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_committed_save_keeps_its_new_data(tmp_path: Path) -> None:
    _model(tmp_path / "out.onnx", 2.0)
    folder = _fake_left_over(tmp_path, _dead_pid())
    (folder / "out.onnx.data.old").write_bytes(b"old")  # killed after the commit, before the clean-up
    (folder / JOURNAL).write_text(json.dumps({"model": "out.onnx", "data": "out.onnx.data"}))
    sweep_stale(tmp_path)
    assert _weight(tmp_path / "out.onnx") == 2.0 and not folder.exists()


def test_sigkill_inside_save_model_then_the_next_save_repairs_the_folder(tmp_path: Path) -> None:
    """The real thing: a process SIGKILLs itself between the two renames of ``save_model``."""
    out = tmp_path / "out.onnx"
    _model(out, 1.0)
    script = textwrap.dedent(f"""
        import os, signal
        import onnxsparse.io as io
        real = os.replace
        calls = []
        def replace(src, dst):
            real(src, dst)
            calls.append(dst)
            if str(dst).endswith("out.onnx.data") and any(str(c).endswith(".old") for c in calls):
                # the previous data set aside, the new data moved in, the model not yet committed
                os.kill(os.getpid(), signal.SIGKILL)
        io.os.replace = replace
        model = io.load_model({str(out)!r})
        model.graph.initializers["w"].const_value = __import__("onnx_ir").tensor(
            __import__("numpy").full((64, 64), 2.0, "float32"), name="w")
        io.save_model(model, {str(out)!r}, force=True, external_data=True)
    """)
    run = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == -signal.SIGKILL
    assert any(p.name.startswith(PREFIX) for p in tmp_path.iterdir())
    sweep_stale(tmp_path)
    assert _weight(out) == 1.0  # the previous output, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]
