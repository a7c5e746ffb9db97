"""Bring every model into the shape later passes rely on.

Exports keep weights in many places: initializers, ``Constant`` nodes (Paddle,
tf2onnx), ``ConstantOfShape`` and other foldable subgraphs, and (IR < 4) as
graph inputs too.  After this pass every weight is an initializer, foldable
subgraphs are folded, and shapes are inferred.  Outputs are unchanged.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnx_ir.passes import PassResult
from onnxscript.optimizer import fold_constants

__all__ = ["NormalizePass", "normalize"]

logger = logging.getLogger(__name__)

#: Fold subgraphs of any size: weights made by ConstantOfShape can be large.
_NO_LIMIT = 1 << 62


class NormalizePass(ir.passes.InPlacePass):
    """Lift constants to initializers, fold constant subgraphs, infer shapes."""

    def __init__(self, *, fold: bool = True, infer_shapes: bool = True) -> None:
        super().__init__()
        self.fold = fold
        self.infer_shapes = infer_shapes

    def call(self, model: ir.Model) -> PassResult:
        # IR < 4 exports list every initializer as an input too; those are weights.
        modified = common.RemoveInitializersFromInputsPass()(model).modified
        if model.ir_version < 4:  # IR 4 is the first that allows initializers that are not inputs
            model.ir_version = 4
            modified = True
        before = _signature(model)
        if self.fold:
            result = fold_constants(
                model,
                input_size_limit=_NO_LIMIT,
                output_size_limit=_NO_LIMIT,
                should_fold=_fold_weight_generators,
            )
            modified |= bool(getattr(result, "modified", False))
        for step in (
            common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            common.LiftSubgraphInitializersToMainGraphPass(),
            common.RemoveUnusedNodesPass(),
            common.RemoveUnusedOpsetsPass(),
        ):
            modified |= step(model).modified
        if self.infer_shapes:
            try:
                modified |= common.ShapeInferencePass(data_prop=True).call(model).modified
            except Exception as exc:  # noqa: BLE001 - inference is best effort
                logger.warning("shape inference failed: %s", exc)
        after = _signature(model)
        if before != after:  # pragma: no cover - guarded invariant
            raise AssertionError(f"normalisation changed the model signature: {before} -> {after}")
        return PassResult(model, modified=modified)


def _fold_weight_generators(node: ir.Node) -> bool | None:
    """Fold ``ConstantOfShape`` (onnxscript keeps it by default): it makes weights."""
    if node.domain in ("", "ai.onnx") and node.op_type == "ConstantOfShape":
        return True
    return None


def _signature(model: ir.Model) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (
        tuple(v.name or "" for v in model.graph.inputs),
        tuple(v.name or "" for v in model.graph.outputs),
    )


def normalize(model: ir.Model, *, fold: bool = True, infer_shapes: bool = True) -> ir.Model:
    """Normalise ``model`` in place and return it."""
    NormalizePass(fold=fold, infer_shapes=infer_shapes)(model)
    return model
