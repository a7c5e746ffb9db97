"""Errors the user can act on.

Every error a user can fix (bad path, malformed model, bad data file) is an
:class:`OnnxSparseError`; the CLI prints its message on one line and exits 2.
Anything else is a bug and exits 1 (traceback with ``--debug``).

:class:`Decline` is not a user error: it is how code says "not this one" about
one group, tensor or node, and the run goes on without it.
"""

from __future__ import annotations

__all__ = ["Decline", "OnnxSparseError", "ModelLoadError", "ModelSaveError", "DataError", "UsageError"]


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


class Decline(Exception):
    """Code that cannot handle one group / tensor / node raises ``Decline(reason)``.

    The caller that catches it records ``str(exc)`` (the report's skipped lists,
    a rule's blocked slots, a tensor's note) and goes on with the rest, like
    onnxscript's ``MatchResult.fail``.  It is deliberately not an
    :class:`OnnxSparseError`: one that escapes every caller is a bug, not the
    user's mistake.  ``subject`` optionally names what was declined.
    """

    def __init__(self, reason: str, *, subject: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.subject = subject

    def __str__(self) -> str:
        return self.reason
