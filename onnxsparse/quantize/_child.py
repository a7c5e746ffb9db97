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
import multiprocessing
import tempfile
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .. import errors
from ._ort import QuantizationError, first_line

__all__ = ["ChildError", "in_child"]

logger = logging.getLogger("onnxsparse.quantize")

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


def _main(conn: Connection, fn: Callable[..., object], args: tuple[Any, ...], tmp: str, debug: bool) -> None:
    """The child: run ``fn(*args)``; send ``None`` or ``(type name, one line, traceback)``."""
    tempfile.tempdir = tmp
    if debug:
        logging.basicConfig(level=logging.DEBUG)
        logger.setLevel(logging.DEBUG)
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent as one line
        name = type(exc).__name__
        conn.send((name, str(exc) if name in _OURS else first_line(exc), traceback.format_exc()))
    else:
        conn.send(None)
    finally:
        conn.close()


def in_child(fn: Callable[..., object], *args: Any, tmp: Path) -> None:
    """``fn(*args)`` in a spawned process (``fn`` and ``args`` picklable, the result dropped); its temporary files under ``tmp``."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    debug = logger.isEnabledFor(logging.DEBUG)
    process = context.Process(target=_main, args=(send, fn, args, str(tmp), debug), daemon=True)
    process.start()
    send.close()
    try:
        try:
            outcome = receive.recv()
        except EOFError:  # it died without a word: killed (out of memory?) or crashed in native code
            process.join()
            raise QuantizationError(
                f"onnxruntime.quantization's process ended with exit code {process.exitcode} "
                "(a negative code is the signal that killed it, e.g. -9: out of memory)"
            ) from None
        process.join()
    finally:
        if process.is_alive():  # we were interrupted: end the child before the caller removes its files
            process.terminate()
            process.join()
        receive.close()
    if outcome is None:
        return
    type_name, line, trace = outcome
    logger.debug("in the child process:\n%s", trace)
    if type_name in _OURS:
        raise _OURS[type_name](line)
    raise ChildError(line, type_name)
