"""Run third-party code that drops files into the working directory somewhere harmless."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["working_dir", "scratch_dir"]


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


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A fresh temporary working directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="onnxsparse-") as tmp, working_dir(tmp) as path:
        yield path
