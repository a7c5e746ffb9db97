"""Never lose or leak the user's files (issue 16).

Nothing a command writes (``-o``, its ``OUT.data`` sidecar, ``--report``) may land on a file it
reads (the model, its external data, calibration/validation data, labels, recipe), whatever
``--force`` says; non-regular files are refused before they are opened; SIGINT/SIGTERM at any time
end in one line and exit 130/143 with no temporary or partial file; OS errors (no permission, disk
full, a name too long) and bad options are one line and exit 2; no command leaves files in the
working directory.  Every case checks the exit code, the one stderr line, that the inputs are
byte-identical and that no stray file appeared.  Cases that concern the process (signals,
start-up) run ``python -m onnxsparse`` in a child process; the rest call the same ``main`` in-process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_asserts import one_line_error
from helpers import cli, sample
from test_cli_errors import _external, _small_model, _snapshot

ROOT = Path(__file__).resolve().parent.parent


def _model(folder: Path, name: str = "model.onnx", data: str | None = None) -> Path:
    """The small Conv model in ``folder``; with ``data``, conv.weight lives in that external file."""
    folder.mkdir(parents=True, exist_ok=True)
    good = _small_model()
    path = folder / name
    if data is None:
        path.write_bytes(good.SerializeToString())
        return path
    weight = next(t for t in good.graph.initializer if t.name == "conv.weight")
    (folder / data).write_bytes(weight.raw_data or onnx.numpy_helper.to_array(weight).tobytes())
    path.write_bytes(_external(good, data).SerializeToString())
    return path


def _calib(path: Path) -> Path:
    np.savez(path, x=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    return path


def _real_cli(*argv: str | Path, prelude: str = "", cwd: Path | None = None,
              timeout: float = 120) -> tuple[int, str, str]:
    """``python -m onnxsparse ARGV`` in a child process (``prelude``: Python run first, to inject a signal)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if prelude:
        code = prelude + "\nimport runpy\nrunpy.run_module('onnxsparse', run_name='__main__', alter_sys=True)\n"
        cmd = [sys.executable, "-c", code, *map(str, argv)]
    else:
        cmd = [sys.executable, "-m", "onnxsparse", *map(str, argv)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, check=False)
    return proc.returncode, proc.stdout, proc.stderr


# ------------------------------------------------------------------ outputs never land on inputs


def test_output_beside_input_never_replaces_its_external_data(tmp_path: Path) -> None:
    """Issue 16: ``-o in/small.onnx --external-data`` replaced the input's ``small.onnx.data``."""
    model = _model(tmp_path / "in", data="small.onnx.data")
    out = tmp_path / "in" / "small.onnx"
    before = _snapshot(tmp_path)
    for force in ((), ("--force",)):
        line = one_line_error(*cli("sparsify", model, "-o", out, "--external-data", "--sparsity", "0.5", *force))
        assert "refusing to overwrite the external data file" in line and "small.onnx.data" in line
        assert _snapshot(tmp_path) == before
    # and without --external-data: the sidecar name is still the input's data file
    one_line_error(*cli("densify", model, "-o", out, "--force"))
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["external_data", "hard_link", "symlink"])
def test_output_is_an_input_file_under_another_name(target: str, tmp_path: Path) -> None:
    model = _model(tmp_path, data="weights.data")
    if target == "external_data":
        out = tmp_path / "weights.data"
    elif target == "hard_link":
        out = tmp_path / "hard.onnx"
        os.link(model, out)
    else:
        out = tmp_path / "link.onnx"
        out.symlink_to(model)
    before = _snapshot(tmp_path)
    line = one_line_error(*cli("sparsify", model, "-o", out, "--sparsity", "0.5", "--force"))
    assert line.startswith("onnxsparse: error: refusing to overwrite the ")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["file", "folder"])
def test_output_is_the_calibration_data(where: str, tmp_path: Path) -> None:
    model = _model(tmp_path)
    if where == "file":
        calib = out = _calib(tmp_path / "calib.npz")
    else:
        (tmp_path / "calib").mkdir()
        _calib(tmp_path / "calib" / "a.npz")
        out = _calib(tmp_path / "calib" / "b.npz")
        calib = tmp_path / "calib"
    before = _snapshot(tmp_path)
    line = one_line_error(*cli("prune", model, "-o", out, "--channels", "0.3", "--calib", calib, "--force"))
    assert "refusing to overwrite the input" in line and out.name in line
    line = one_line_error(*cli("quantize", model, "-o", out, "--mode", "static", "--calib", calib, "--force"))
    assert "refusing to overwrite the input" in line
    assert _snapshot(tmp_path) == before


def test_run_output_or_report_is_the_recipe(tmp_path: Path) -> None:
    """Issue 16: ``run r.yaml m.onnx -o r.yaml --force`` printed "PASSED: wrote r.yaml"."""
    model = _model(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - sparsify: {sparsity: 0.5}\n")
    as_json = tmp_path / "r.json"
    as_json.write_text('{"steps": [{"sparsify": {"sparsity": 0.5}}]}')
    before = _snapshot(tmp_path)
    line = one_line_error(*cli("run", recipe, model, "-o", recipe, "--force"))
    assert "refusing to overwrite the input recipe" in line and "r.yaml" in line
    line = one_line_error(*cli("run", as_json, model, "-o", tmp_path / "out.onnx", "--report", as_json, "--force"))
    assert "r.json" in line and "report" in line
    assert _snapshot(tmp_path) == before


def test_report_obeys_force_and_never_replaces_an_input(tmp_path: Path) -> None:
    model = _model(tmp_path)
    report = tmp_path / "report.json"
    report.write_text("keep me")
    before = _snapshot(tmp_path)
    for argv in (("inspect", model), ("sparsify", model, "-o", tmp_path / "o.onnx", "--sparsity", "0.5")):
        line = one_line_error(*cli(*argv, "--report", report))
        assert "already exists (use --force to overwrite)" in line
        assert _snapshot(tmp_path) == before
    link = tmp_path / "link.json"  # a report name that is the model itself
    link.symlink_to(model)
    before = _snapshot(tmp_path)
    line = one_line_error(*cli("inspect", model, "--report", link, "--force"))
    assert "refusing to overwrite the input model" in line
    assert _snapshot(tmp_path) == before
    code, _, err = cli("inspect", model, "--report", report, "--force")
    assert code == 0, err
    assert report.read_text().startswith("{")


def test_sidecar_of_another_model_needs_force(tmp_path: Path) -> None:
    model = _model(tmp_path / "in")
    sidecar = tmp_path / "out.onnx.data"
    sidecar.write_bytes(b"someone else's weights")
    before = _snapshot(tmp_path)
    line = one_line_error(*cli("sparsify", model, "-o", tmp_path / "out.onnx", "--sparsity", "0.5",
                               "--external-data"))
    assert "out.onnx.data already exists (use --force to overwrite)" in line
    assert _snapshot(tmp_path) == before
    code, _, err = cli("sparsify", model, "-o", tmp_path / "out.onnx", "--sparsity", "0.5", "--external-data",
                       "--force")
    assert code == 0, err
    assert sidecar.read_bytes() != b"someone else's weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.onnx", "out.onnx.data"]


def test_existing_output_that_is_not_a_file_is_refused_even_with_force(tmp_path: Path) -> None:
    model = _model(tmp_path)
    pipe = tmp_path / "out.onnx"
    os.mkfifo(pipe)
    line = one_line_error(*cli("sparsify", model, "-o", pipe, "--sparsity", "0.5", "--force"))
    assert "is not a regular file" in line


# ------------------------------------------------------------------ non-regular inputs


@contextlib.contextmanager
def _unblock_after(pipe: Path, seconds: float) -> Iterator[None]:
    """If a reader is still blocked on ``pipe`` after ``seconds``, open and close its write end:
    the reader gets end-of-file and the test fails instead of hanging."""
    done = threading.Event()

    def watchdog() -> None:
        if done.wait(seconds):
            return
        try:
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader: nothing to unblock
            pass

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize("option", ["--calib", "--data", "--labels", "recipe", "data_folder"])
def test_named_pipe_input_is_refused_before_it_is_opened(option: str, tmp_path: Path) -> None:
    model = _model(tmp_path)
    pipe = tmp_path / "pipe.npz"
    if option == "data_folder":
        (tmp_path / "data").mkdir()
        pipe = tmp_path / "data" / "a.npz"
    os.mkfifo(pipe)
    argv: tuple[str | Path, ...] = {
        "--calib": ("prune", model, "-o", tmp_path / "o.onnx", "--channels", "0.3", "--calib", pipe),
        "--data": ("validate", model, model, "--data", pipe, "--runs", "1", "--warmup", "0", "--no-memory"),
        "--labels": ("validate", model, model, "--data", _calib(tmp_path / "data.npz"), "--labels", pipe,
                     "--runs", "1", "--warmup", "0", "--no-memory"),
        "recipe": ("run", pipe, model, "-o", tmp_path / "o.onnx"),
        "data_folder": ("prune", model, "-o", tmp_path / "o.onnx", "--channels", "0.3", "--calib", tmp_path / "data"),
    }[option]
    before = _snapshot(tmp_path)
    with _unblock_after(pipe, seconds=30):
        line = one_line_error(*cli(*argv))
    assert "is a named pipe, not a regular file" in line
    assert _snapshot(tmp_path) == before


def test_device_and_directory_inputs_are_refused(tmp_path: Path) -> None:
    model = _model(tmp_path)
    line = one_line_error(*cli("prune", model, "-o", tmp_path / "o.onnx", "--channels", "0.3", "--calib", "/dev/zero"))
    assert "/dev/zero is a character device" in line
    (tmp_path / "labels").mkdir()
    data = _calib(tmp_path / "data.npz")
    line = one_line_error(*cli("validate", model, model, "--data", data, "--labels", tmp_path / "labels",
                               "--runs", "1", "--warmup", "0", "--no-memory"))
    assert "is a directory" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "labels", "model.onnx"]


# ------------------------------------------------------------------ signals

_TERM_AFTER_DATA_MOVED = """
import os, signal
_replace = os.replace
def replace(src, dst, *args, **kwargs):
    _replace(src, dst, *args, **kwargs)
    if str(dst).endswith("out.onnx.data"):  # the new data is in place, the model not yet
        os.kill(os.getpid(), signal.SIGTERM)
os.replace = replace
"""

_INT_DURING_IMPORTS = """
import importlib, os, signal
_import = importlib.import_module
def import_module(name, *args):
    if name.endswith("_cmd"):  # the CLI is importing the command's module (numpy, onnx, ...)
        os.kill(os.getpid(), signal.SIGINT)
    return _import(name, *args)
importlib.import_module = import_module
"""


def test_sigterm_during_save_leaves_the_previous_output_and_no_temp_files(tmp_path: Path) -> None:
    model = _model(tmp_path / "in")
    out = tmp_path / "out" / "out.onnx"
    out.parent.mkdir()
    out.write_bytes(b"previous model")
    (out.parent / "out.onnx.data").write_bytes(b"previous data")
    before = _snapshot(tmp_path)
    code, stdout, err = _real_cli("sparsify", model, "-o", out, "--sparsity", "0.5", "--external-data", "--force",
                                  prelude=_TERM_AFTER_DATA_MOVED)
    assert (code, stdout, err.strip()) == (143, "", "onnxsparse: terminated")
    assert _snapshot(tmp_path) == before  # no .onnxsparse-* folder, the old model and data untouched


@pytest.mark.parametrize("delay", [0.5, 1.2])
def test_sigterm_at_any_moment_leaves_nothing_or_the_whole_output(delay: float, tmp_path: Path) -> None:
    """A real SIGTERM, not an injected one, at a few moments from start-up to the save.

    Before Python runs our first line (interpreter start-up, ~50 ms) SIGTERM still kills the
    process outright (-15, nothing printed); nothing has been written then either.  So does a SIGTERM
    landing after the command returned (interpreter shutdown), when the output is complete.
    """
    import signal
    import time

    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "onnxsparse", "sparsify", str(sample("attn_ms_gqa")), "-o",
                             str(out / "s.onnx"), "--sparsity", "0.5", "--external-data"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=120)
    names = sorted(p.name for p in out.iterdir())
    if proc.returncode == 0:  # it finished first: the whole output
        assert names == ["s.onnx", "s.onnx.data"]
        onnx.checker.check_model(str(out / "s.onnx"))
    elif proc.returncode == -signal.SIGTERM:
        # before our first line runs (interpreter start-up): nothing written; or after the command returned
        # (interpreter shutdown, handlers gone): the whole output, already reported on stdout
        if names:
            assert names == ["s.onnx", "s.onnx.data"] and "written" in stdout and err == ""
            onnx.checker.check_model(str(out / "s.onnx"))
        else:
            assert (stdout, err) == ("", "")
    else:
        assert (proc.returncode, stdout, err.strip()) == (143, "", "onnxsparse: terminated")
        assert names == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sigint_during_start_up_is_one_line(tmp_path: Path) -> None:
    model = _model(tmp_path)
    code, stdout, err = _real_cli("inspect", model, prelude=_INT_DURING_IMPORTS)
    assert (code, stdout, err.strip()) == (130, "", "onnxsparse: interrupted")


# ------------------------------------------------------------------ OS errors and bad options


def test_read_only_folder_and_full_disk_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxsparse import _workdir, io, report

    model = _model(tmp_path)
    before = _snapshot(tmp_path)

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    with monkeypatch.context() as patch:  # the tool runs as root here, so chmod would not stop it
        patch.setattr(_workdir.tempfile, "mkdtemp", read_only)
        line = one_line_error(*cli("sparsify", model, "-o", tmp_path / "o.onnx", "--sparsity", "0.5"))
    assert "Permission denied" in line and "internal error" not in line

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(io, "_write", disk_full)
        line = one_line_error(*cli("sparsify", model, "-o", tmp_path / "o.onnx", "--sparsity", "0.5"))
    assert "No space left on device" in line
    with monkeypatch.context() as patch:
        patch.setattr(report.Path, "write_text", disk_full)
        line = one_line_error(*cli("inspect", model, "--report", tmp_path / "r.json"))
    assert "No space left on device" in line
    assert _snapshot(tmp_path) == before


def test_file_name_too_long_is_one_line(tmp_path: Path) -> None:
    model = _model(tmp_path)
    before = _snapshot(tmp_path)
    name = "x" * 299 + ".onnx"  # 304 bytes: longer than any Linux file system allows
    line = one_line_error(*cli("sparsify", model, "-o", tmp_path / name, "--sparsity", "0.5"))
    assert "File name too long" in line
    line = one_line_error(*cli("inspect", model, "--report", tmp_path / ("x" * 299 + ".json")))
    assert "File name too long" in line
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(("argv", "names"), [
    (("sparsify", "MODEL", "-o", "OUT", "--sparsity", "abc"),
     "argument --sparsity: expected a fraction in [0, 1), got text 'abc'"),  # the generated flag's wording
    (("sparsify", "MODEL", "--sparsity", "0.5"), "the following arguments are required: -o/--output"),
    (("prune", "MODEL", "-o", "OUT", "--bogus"), "unrecognized arguments: --bogus"),
    (("quantize", "MODEL", "-o", "OUT", "--mode", "int3"),
     "argument --mode: unknown quantization mode 'int3'"),  # the generated flag's wording
])
def test_bad_option_is_one_line_naming_it(argv: tuple[str, ...], names: str, tmp_path: Path) -> None:
    model = _model(tmp_path)
    full = [str(model) if a == "MODEL" else str(tmp_path / "o.onnx") if a == "OUT" else a for a in argv]
    line = one_line_error(*cli(*full))
    assert names in line and line.endswith(f"(see onnxsparse {argv[0]} --help)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# ------------------------------------------------------------------ the working directory stays clean


def test_commands_leave_the_working_directory_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's symbolic shape inference saved ``sym_shape_infer_temp.onnx`` and a ``<uuid>.data``
    into the cwd whenever it could not finish (``attn_ms_gqa``: inspect and prune)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    gqa = sample("attn_ms_gqa")
    out = tmp_path / "out"
    out.mkdir()
    for argv in (("inspect", gqa),
                 ("prune", gqa, "-o", out / "p.onnx", "--heads", "0.25"),
                 ("sparsify", gqa, "-o", out / "s.onnx", "--sparsity", "0.5"),
                 ("quantize", sample("real_sklearn_pipeline_zipmap"), "-o", out / "q.onnx", "--mode", "dynamic")):
        code, _, err = cli(*argv)
        assert code == 0, err
        assert list(cwd.iterdir()) == [], argv
    assert sorted(p.name for p in out.iterdir()) == ["p.onnx", "q.onnx", "s.onnx"]


def test_each_command_starts_with_no_inputs_noted(tmp_path: Path) -> None:
    """In one process (a library user, these tests) a file read by an earlier command is writable later."""
    first = _model(tmp_path, "first.onnx")
    second = _model(tmp_path, "second.onnx")
    assert cli("inspect", first)[0] == 0
    code, _, err = cli("sparsify", second, "-o", first, "--sparsity", "0.5", "--force")
    assert code == 0, err
    assert onnx.load(str(first)).graph.node  # replaced by the sparse model


def test_reads_are_remembered_only_inside_a_command(tmp_path):
    """A library caller's loads do not make the file unwritable for the rest of the process;
    inside a command scope the same write is refused."""
    import shutil

    from onnxsparse import guard
    from onnxsparse.errors import ModelSaveError
    from onnxsparse.io import load_model, save_model

    path = tmp_path / "m.onnx"
    shutil.copy(sample("digits_cnn"), path)
    save_model(load_model(path), path, force=True)  # outside a command: allowed with --force
    with guard.command():
        model = load_model(path)
        with pytest.raises(ModelSaveError, match="refusing to overwrite the input model"):
            save_model(model, path, force=True)
