"""``ai.onnx.ml`` preprocessing ops (scikit-learn pipelines exported by skl2onnx).

They keep their input's ``[N, C]`` shape.  ``Binarizer`` is elementwise with a
scalar threshold, so both axes pass through.  ``Scaler`` and ``Imputer`` hold
one offset/scale/fill value per feature in attributes that are not sliced, and
``Normalizer`` normalises across the features: the feature axis is refused with
that reason, the sample axis passes through.
"""

from __future__ import annotations

from ...errors import Decline

import onnx_ir as ir

from ..context import CoupleContext
from ..registry import OpRule

__all__ = ["MLElementwiseRule", "RULES"]

_REFUSE = {
    "Scaler": "per-feature offset/scale attributes are not sliced",
    "Imputer": "per-feature fill values are attributes that are not sliced",
    "Normalizer": "normalises across the feature axis",
}


class MLElementwiseRule(OpRule):
    op_types = ("Scaler", "Imputer", "Normalizer", "Binarizer")
    domain = "ai.onnx.ml"

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        ctx.same_shape(x, y)
        reason = _REFUSE.get(node.op_type)
        for k in range(r):
            if reason is not None and k == r - 1:
                ctx.block(x, k, reason)
                ctx.block(y, k, reason)
            else:
                ctx.couple(x, k, y, k)
        return None


RULES: tuple[OpRule, ...] = (MLElementwiseRule(),)
