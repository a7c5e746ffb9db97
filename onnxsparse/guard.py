"""The files a command reads, so that nothing it writes lands on one of them.

Every reader notes what it opens (:func:`note_read`): the model and its
external-data files, calibration/validation data, labels, the recipe, a metric
module.  Every writer (:func:`onnxsparse.io.check_output` for models and their
``.data`` sidecar, :func:`onnxsparse.report.atomic_write_text` for reports)
asks :func:`refuse_input` first.  Paths compare by resolved path (symlinks)
and by device/inode (hard links).  Reads are noted inside a :func:`command`
scope (each CLI command, each recipe run); outside one, a library caller's
loads are not remembered, so a notebook may write a file it read an hour ago,
while ``save_model(protect=...)`` still refuses the paths it is given.

:func:`regular_file` is the check every reader makes before it opens a path:
a named pipe, ``/dev/zero``, a socket or a folder would block or never end.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from .errors import ModelSaveError, OnnxSparseError

__all__ = ["command", "input_file", "input_files", "note_read", "read_files", "refuse_input", "regular_file", "same_file"]

_Noted = dict[Path, tuple[str, tuple[int, int] | None]]
#: per command scope: resolved path -> (what it is, (st_dev, st_ino) or None); None outside a command
_READ: contextvars.ContextVar[_Noted | None] = contextvars.ContextVar("onnxsparse_reads", default=None)


@contextlib.contextmanager
def command() -> Iterator[None]:
    """The scope of one command: the files read inside it are protected from its writes.
    Nested scopes share the outer one (a recipe run inside a CLI command)."""
    if _READ.get() is not None:
        yield
        return
    token = _READ.set({})
    try:
        yield
    finally:
        _READ.reset(token)


def _noted() -> _Noted:
    return _READ.get() or {}


def note_read(path: str | os.PathLike, what: str) -> None:
    """Remember that this command reads ``path`` (``what``: e.g. ``"input model"``); a no-op
    outside a :func:`command` scope."""
    noted = _READ.get()
    if noted is None:
        return
    resolved = Path(path).resolve()
    try:
        st = os.stat(resolved)
        ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        ident = None
    noted.setdefault(resolved, (what, ident))


def read_files() -> dict[Path, str]:
    """The files noted so far: resolved path -> what it is."""
    return {path: what for path, (what, _) in _noted().items()}


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: same resolved path, or same inode (a hard link)."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def input_files(protect: tuple[str | os.PathLike | None, ...]) -> tuple[tuple[Path, str], ...]:
    """The files behind paths a command was given to read, as (path, what) pairs: a model with its
    external data files, every ``.npz`` of a data folder; ``None`` and ``"random"`` are skipped."""
    from .io import external_data_files

    files: list[tuple[Path, str]] = []
    for item in protect:
        if item is None or str(item) == "random":
            continue
        path = Path(item)
        if path.is_dir():
            files += [(f, "input data file") for f in sorted(path.glob("*.npz"))]
            continue
        files.append((path, "input model" if path.suffix.lower() == ".onnx" else "input file"))
        files += [(f, "external data file") for f in external_data_files(path)]
    return tuple(files)


def _clash(path: Path, extra: tuple[tuple[Path, str], ...]) -> tuple[Path, str] | None:
    resolved = path.resolve()
    try:
        st = os.stat(resolved)
        ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        ident = None
    for read, (what, read_ident) in _noted().items():
        if read == resolved or (ident is not None and ident == read_ident):
            return read, what
    for read, what in extra:
        if same_file(path, read):
            return read, what
    return None


def refuse_input(path: str | os.PathLike, *, extra: tuple[tuple[Path, str], ...] = (),
                 role: str = "output") -> None:
    """Raise :class:`ModelSaveError` if ``path`` is a file this command reads.

    ``extra``: more (path, what) pairs to protect besides the noted ones, for checks made
    before the inputs are read.
    """
    hit = _clash(Path(path), extra)
    if hit is not None:
        read, what = hit
        raise ModelSaveError(f"refusing to overwrite the {what} {read}: this command reads it ({role} {path})")


def input_file(path: str | os.PathLike, what: str, error: type[OnnxSparseError]) -> Path:
    """The check every reader makes before it opens ``path``: :func:`regular_file`, then :func:`note_read`."""
    path = regular_file(path, what, error)
    note_read(path, f"input {what}" if not what.startswith("input") else what)
    return path


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def regular_file(path: str | os.PathLike, what: str, error: type[OnnxSparseError]) -> Path:
    """``path`` if it is a regular file (symlinks followed); else raise ``error`` in one line.

    Stats before anything opens it: opening a named pipe blocks, ``/dev/zero`` never ends.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise error(f"{what} {path} is {kind}, not a regular file")
    return path
