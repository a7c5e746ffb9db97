"""SIGINT and SIGTERM as exceptions, so every ``finally`` runs: temporary files go, no partial output.

Python turns SIGINT into :class:`KeyboardInterrupt` already; SIGTERM would end the process
at once and leave the temporary folder of a save behind.  Both become exceptions here, the
first one switches further signals off so the clean-up runs undisturbed, and the CLI prints
one line (:func:`stopped`) and exits 130 (interrupted) or 143 (terminated).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["Terminated", "signals_as_exceptions", "stopped"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM arrived; like :class:`KeyboardInterrupt`, no ``except Exception`` catches it."""


def _raise(signum: int, frame: FrameType | None) -> None:
    for sig in _SIGNALS:  # clean up once, undisturbed by a second Ctrl-C
        signal.signal(sig, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Within the block SIGINT/SIGTERM raise; the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    for sig in _SIGNALS:
        signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stopped(exc: BaseException) -> int:
    """Print the one line for a stop by signal; returns the exit code (130 SIGINT, 143 SIGTERM)."""
    if isinstance(exc, Terminated):
        print("onnxsparse: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    print("onnxsparse: interrupted", file=sys.stderr)
    return 128 + signal.SIGINT
