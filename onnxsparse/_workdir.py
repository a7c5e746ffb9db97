"""Temporary folders we own: third-party files go somewhere harmless, and none outlives its process.

SIGINT/SIGTERM run every ``finally`` (:mod:`._signals`), but SIGKILL (the OOM killer, ``kill -9``,
a CI timeout) cannot be caught.  So every temporary folder we create holds an ``.owner`` file (host,
pid); the next run that creates one in the same folder removes the folders whose owner process is
gone, first undoing a save that was cut between moving its data file and committing its model (the
``.journal`` of :func:`onnxsparse.io.save_model`).  A folder whose owner is alive, or was made on
another host, is never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["working_dir", "scratch_dir", "owned_temp_dir", "sweep_stale", "JOURNAL", "PREFIX"]

logger = logging.getLogger(__name__)

#: every temporary folder we create starts with one of these (dot: hidden in an output folder)
PREFIX = ".onnxsparse-"
_PREFIXES = (PREFIX, "onnxsparse-")
_OWNER = ".owner"
#: a save's roll-back record: ``{"model": name, "data": name}`` (see :func:`_roll_back`)
JOURNAL = ".journal"


@contextlib.contextmanager
def working_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Temporarily change the working directory (onnxruntime's symbolic shape
    inference and ``quant_pre_process`` write debug files into it)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield Path(path)
    finally:
        os.chdir(old)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _stale(folder: Path) -> bool:
    """Made on this host by a process that no longer runs (unreadable or foreign: not stale)."""
    try:
        owner = json.loads((folder / _OWNER).read_text())
        return bool(owner["host"] == socket.gethostname() and not _alive(int(owner["pid"])))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _roll_back(folder: Path) -> None:
    """Undo a save killed before its commit: put the previous data file back, or drop the new one.

    The model's rename is the commit: while ``folder/<model>`` exists the save did not happen. A data
    file still in ``folder`` was never moved; a ``.old`` copy in ``folder`` is the previous data file.
    """
    try:
        journal = json.loads((folder / JOURNAL).read_text())
        model, data = str(journal["model"]), str(journal["data"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not (folder / model).exists() or "/" in data or "/" in model:
        return  # committed (the old data copy is garbage), or a journal we did not write
    final, backup = folder.parent / data, folder / (data + ".old")
    if backup.exists():
        os.replace(backup, final)
    elif not (folder / data).exists():  # the new data file was moved out, and nothing was there before
        final.unlink(missing_ok=True)


def sweep_stale(parent: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary folders in ``parent`` left by killed runs; returns those removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(_PREFIXES) or not entry.is_dir(follow_symlinks=False):
            continue
        folder = Path(entry.path)
        if not _stale(folder):
            continue
        try:
            _roll_back(folder)
        except OSError as exc:  # leave it for a person: the message says what and where
            logger.warning("cannot roll back the interrupted save in %s: %s", folder, exc)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        logger.info("removed %s, left by a killed run", folder)
    return removed


def make_owned_temp_dir(parent: str | os.PathLike[str] | None = None, kind: str = "") -> Path:
    """``mkdtemp`` in ``parent`` (default: the system's), marked with this process; stale ones swept first.

    The caller removes it (see :func:`owned_temp_dir` for the context-manager form).
    """
    where = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    sweep_stale(where)
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind + '-' if kind else ''}", dir=where))
    (folder / _OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    return folder


@contextlib.contextmanager
def owned_temp_dir(parent: str | os.PathLike[str] | None = None, kind: str = "") -> Iterator[Path]:
    """A temporary folder we own (see the module docstring), removed afterwards."""
    folder = make_owned_temp_dir(parent, kind)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A fresh temporary working directory, removed afterwards."""
    with owned_temp_dir(kind="scratch") as tmp, working_dir(tmp) as path:
        yield path
