"""Sparse storage formats: codecs, their decode subgraphs, and the glue to store/find/expand them.

Each format is one module registering a :class:`Codec` in :data:`FORMATS`;
``DEFAULT_FORMATS`` is the explicit list the CLI offers (plus ``auto``, which
picks the smallest per tensor).  Every format except ``dense`` is stored as
ordinary initializers plus a decode subgraph of standard ONNX ops, so
``onnx.checker`` and any runtime accept the file; ``coo`` is written as ONNX's
own ``sparse_initializer`` by :func:`save_model`.
"""

from __future__ import annotations

from .._registry import Registry
from . import bitmask, bsr, coo, csr, delta, dense  # noqa: F401 - registers the codecs
from .base import SUPPORTED_DTYPES, Codec, CodecOptions, Encoded, TensorData, nonfill_mask
from ._graph import CONST_PREFIX, NODE_META_KEY, NODE_PREFIX, DecodeBuilder, decode_target, is_decode_node
from ._opset import check_opset_raise, model_opset, set_model_opset
from ._registry_instance import FORMATS
from ._save import save_model
from .storage import (
    AUTO,
    AUTO_SLACK,
    META_KEY,
    Candidate,
    StoredTensor,
    candidate,
    choose,
    decode_stored,
    expand_all,
    get_codec,
    information_bound_bits,
    read_storage,
    store,
    write_storage,
)

__all__ = [
    "FORMATS",
    "DEFAULT_FORMATS",
    "AUTO",
    "AUTO_SLACK",
    "format_choices",
    "Codec",
    "CodecOptions",
    "Encoded",
    "TensorData",
    "SUPPORTED_DTYPES",
    "nonfill_mask",
    "Registry",
    "DecodeBuilder",
    "NODE_PREFIX",
    "NODE_META_KEY",
    "CONST_PREFIX",
    "META_KEY",
    "StoredTensor",
    "Candidate",
    "candidate",
    "choose",
    "store",
    "decode_stored",
    "expand_all",
    "get_codec",
    "information_bound_bits",
    "read_storage",
    "write_storage",
    "save_model",
    "check_opset_raise",
    "model_opset",
    "set_model_opset",
    "is_decode_node",
    "decode_target",
]

#: The formats offered by default, in the order ``--help`` lists them.
DEFAULT_FORMATS: tuple[str, ...] = ("dense", "bitmask", "delta", "csr", "bsr", "coo")


def format_choices() -> tuple[str, ...]:
    """CLI choices: ``auto``, the default formats in order, then any other registered format."""
    extra = tuple(name for name in FORMATS.names() if name not in DEFAULT_FORMATS)
    return (AUTO, *(name for name in DEFAULT_FORMATS if name in FORMATS), *extra)
