"""Errors the user can act on.

Every error a user can fix (bad path, malformed model, bad data file) is an
:class:`OnnxSparseError`; the CLI prints its message on one line and exits 2.
Anything else is a bug and exits 1 (traceback with ``--debug``).
"""

from __future__ import annotations

__all__ = ["OnnxSparseError", "ModelLoadError", "ModelSaveError", "DataError", "UsageError"]


class OnnxSparseError(Exception):
    """Base class: a problem with the user's input, reported in one line."""

    exit_code: int = 2


class ModelLoadError(OnnxSparseError):
    """The model file is missing, malformed, too new or unsafe."""


class ModelSaveError(OnnxSparseError):
    """The output cannot be written (would overwrite the input, exists, ...)."""


class DataError(OnnxSparseError):
    """Calibration / validation data does not fit the model."""


class UsageError(OnnxSparseError):
    """Options that do not make sense together."""
