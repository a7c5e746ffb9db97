"""onnxruntime's quantization steps in a child process (issue 16: peak memory of >2 GB models).

``quant_pre_process`` and the quantizers load the whole model with its weights and copy it; in a
child process those copies are gone when it exits, and the parent (which has dropped its own copy of
the model) does not add to them.  Files go in and out; a failure comes back as one line and the
error type of ours it was (anything else becomes :class:`ChildError`).  The child's temporary files
(onnxruntime's own ``tempfile`` folders included) live in the caller's folder, so a parent stopped
by SIGINT/SIGTERM ends the child and removes everything when it removes that folder.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import errors
from ._ort import QuantizationError, first_line

__all__ = ["ChildError", "in_child"]

logger = logging.getLogger("onnxsparse.quantize")

#: the file in the caller's folder the child writes ``None`` or ``(type name, one line, traceback)`` to
_OUTCOME = ".child-outcome.pickle"

#: our error types the child's failure is raised as in the parent (by name)
_OURS: dict[str, type[errors.OnnxSparseError]] = {
    cls.__name__: cls
    for cls in (errors.UsageError, errors.DataError, errors.ModelLoadError, errors.ModelSaveError, QuantizationError)
}


class ChildError(QuantizationError):
    """An exception other than ours in the child: its first line, and its type's name."""

    def __init__(self, message: str, type_name: str) -> None:
        super().__init__(message)
        self.type_name = type_name


#: the child's program: our ``sys.path`` first (to import what the parent imported), then :func:`_serve`
_PROGRAM = (
    "import pickle, sys; sys.path[:0] = pickle.load(sys.stdin.buffer); "
    "from onnxsparse.quantize._child import _serve; _serve()"
)


def _serve() -> None:
    """The child: read ``(fn, args, tmp, debug)`` from stdin, run ``fn(*args)``, write the outcome file."""
    fn, args, tmp, debug = pickle.load(sys.stdin.buffer)
    tempfile.tempdir = tmp
    if debug:
        logging.basicConfig(level=logging.DEBUG)
        logger.setLevel(logging.DEBUG)
    outcome: tuple[str, str, str] | None = None
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent as one line
        name = type(exc).__name__
        outcome = (name, str(exc) if name in _OURS else first_line(exc), traceback.format_exc())
    with open(Path(tmp) / _OUTCOME, "wb") as f:
        pickle.dump(outcome, f)


def in_child(fn: Callable[..., object], *args: Any, tmp: Path) -> None:
    """``fn(*args)`` in a new Python process (``fn`` and ``args`` picklable, the result dropped).

    A fresh ``sys.executable`` rather than ``multiprocessing``: its spawn would re-run the caller's
    main script in the child (a script calling :func:`~onnxsparse.quantize.quantize` at top level).
    Its temporary files go under ``tmp``, and so does the outcome it reports.
    """
    outcome_file = tmp / _OUTCOME
    outcome_file.unlink(missing_ok=True)
    process = subprocess.Popen([sys.executable, "-c", _PROGRAM], stdin=subprocess.PIPE)
    try:
        assert process.stdin is not None
        with process.stdin:
            pickle.dump(list(sys.path), process.stdin)
            pickle.dump((fn, args, str(tmp), logger.isEnabledFor(logging.DEBUG)), process.stdin)
        code = process.wait()
    finally:
        if process.poll() is None:  # we were interrupted: end the child before the caller removes its files
            process.terminate()
            process.wait()
    if not outcome_file.exists():  # it died without a word: killed (out of memory?) or crashed in native code
        raise QuantizationError(
            f"onnxruntime.quantization's process ended with exit code {code} "
            "(a negative code is the signal that killed it, e.g. -9: out of memory)"
        )
    with open(outcome_file, "rb") as f:
        outcome = pickle.load(f)
    outcome_file.unlink()
    if outcome is None:
        return
    type_name, line, trace = outcome
    logger.debug("in the child process:\n%s", trace)
    if type_name in _OURS:
        raise _OURS[type_name](line)
    raise ChildError(line, type_name)
