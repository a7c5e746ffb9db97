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

import onnx_ir as ir
from onnx_ir.passes import PassResult

from ..formats import expand_all

__all__ = ["DensifyPass", "densify"]

logger = logging.getLogger(__name__)


class DensifyPass(ir.passes.InPlacePass):
    """Replace decode subgraphs by dense initializers; ``self.expanded`` maps name -> format."""

    def __init__(self) -> None:
        super().__init__()
        self.expanded: dict[str, str] = {}

    def call(self, model: ir.Model) -> PassResult:
        self.expanded = expand_all(model)
        for name, fmt in self.expanded.items():
            logger.debug("densified %s (%s)", name, fmt)
        return PassResult(model, modified=bool(self.expanded))


def densify(model: ir.Model) -> dict[str, str]:
    """Densify ``model`` in place; returns ``{tensor name: format it was stored in}``."""
    densify_pass = DensifyPass()
    densify_pass(model)
    return densify_pass.expanded
