"""Calling ``onnxruntime.quantization`` politely.

The quantizers print progress to stdout (which would corrupt ``--json``),
warn on the root logger, and ``matmul_nbits_quantizer`` configures the root
logger at INFO when imported.  Everything here keeps that out of the user's
output unless ``--debug`` logging is on, and turns failures into one line.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import re
import sys
from collections.abc import Iterator
from types import ModuleType

from ..errors import OnnxSparseError

__all__ = ["QuantizationError", "quiet", "ort_quantization", "nbits_module", "first_line"]

logger = logging.getLogger("onnxsparse.quantize")


class QuantizationError(OnnxSparseError):
    """onnxruntime could not quantize this model with these settings."""


_ORT_NODE = re.compile(r"running (?P<op>\S+) node\. Name:'(?P<name>[^']*)' Status Message: (?P<msg>.*)", re.S)
_CPP_PREFIX = re.compile(r"^\S+\.(?:h|cc|cpp):\d+\s+(?:[^()]*\([^()]*\)\s+)?")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """One readable line from an exception (onnxruntime's node failures shortened)."""
    text = str(exc).strip()
    match = _ORT_NODE.search(text)
    if match:
        msg = _CPP_PREFIX.sub("", match["msg"].strip()).splitlines()[0]
        text = f"{match['op']} node {match['name']!r} failed: {msg}"
    lines = text.splitlines()
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Capture stdout and hush root-logger warnings while onnxruntime quantizes."""
    root = logging.getLogger()
    debug = logger.isEnabledFor(logging.DEBUG)
    old_level = root.level
    captured = io.StringIO()
    if not debug:
        root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(captured if not debug else sys.stderr):
            yield captured
    finally:
        root.setLevel(old_level)
        if captured.getvalue().strip():
            logger.debug("onnxruntime.quantization said:\n%s", captured.getvalue().rstrip())


def ort_quantization() -> ModuleType:
    """``onnxruntime.quantization``, imported on first use."""
    return importlib.import_module("onnxruntime.quantization")


def nbits_module() -> ModuleType:
    """``onnxruntime.quantization.matmul_nbits_quantizer`` without its root-logger side effect."""
    name = "onnxruntime.quantization.matmul_nbits_quantizer"
    if name in sys.modules:
        return sys.modules[name]
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        module = importlib.import_module(name)
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    # It logs every node at INFO; keep that for --debug only.
    logging.getLogger(name).setLevel(logging.DEBUG if logger.isEnabledFor(logging.DEBUG) else logging.WARNING)
    return module
