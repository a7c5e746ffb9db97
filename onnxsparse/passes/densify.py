"""Turn every onnxsparse-stored tensor back into a plain dense initializer.

Decode subgraphs are found by their markers (node metadata / names, see
:mod:`onnxsparse.formats`); each is decoded with numpy from the metadata, or by
running the subgraph with onnxruntime if a tool dropped the metadata, and
replaced by one initializer with the tensor's name.  ONNX COO
``sparse_initializer`` entries are densified when the model is loaded
(:func:`onnxsparse.io.load_model`).  The result is bit-exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir
from onnx_ir.passes import PassResult

from ..formats import expand_all, is_decode_node, read_storage
from ..options.densify import DensifyOptions

__all__ = ["DensifyPass", "DensifyResult", "densify"]

logger = logging.getLogger(__name__)


@dataclass
class DensifyResult(PassResult):
    """The pass result with ``expanded``: tensor name -> the format it was stored in."""

    expanded: dict[str, str] = field(default_factory=dict, kw_only=True)


class DensifyPass(ir.passes.InPlacePass):
    """Replace decode subgraphs by dense initializers; :meth:`call` returns a :class:`DensifyResult`.

    Idempotent: a second run finds nothing stored and reports no change.
    """

    def __init__(self, options: DensifyOptions | None = None) -> None:
        super().__init__()
        self.options = options or DensifyOptions()
        self.expanded: dict[str, str] = {}

    def call(self, model: ir.Model) -> DensifyResult:
        self.expanded = expand_all(model)
        for name, fmt in self.expanded.items():
            logger.debug("densified %s (%s)", name, fmt)
        return DensifyResult(model, bool(self.expanded), expanded=dict(self.expanded))

    def ensures(self, model: ir.Model) -> None:
        """Nothing stored sparse is left: no storage metadata, no decode node."""
        if read_storage(model) or any(is_decode_node(node) for node in model.graph):
            raise ir.passes.PostconditionError("sparse storage left after densify")


def densify(model: ir.Model, **options: Any) -> dict[str, str]:
    """Densify ``model`` in place; returns ``{tensor name: format it was stored in}``."""
    result = DensifyPass(DensifyOptions.from_kwargs(options, "densify()"))(model)
    assert isinstance(result, DensifyResult)
    return result.expanded
