"""Elementwise ops: activations, arithmetic with per-channel or scalar constants, residual joins.

Every axis of every input couples to the matching output axis under numpy
broadcasting (a size-1 axis broadcasts and stays free).  So a per-channel
constant ``[C, 1, 1]`` is sliced with its channels, a scalar is left alone, and
a residual ``Add``/``Sum``/``Mul``/``Max`` of two activations ties their
channels together: removing channel ``c`` of one branch removes it from the
other.  None of these ops mixes positions, so nothing else is needed.
"""

from __future__ import annotations

from ...errors import Decline

import onnx_ir as ir

from ..context import CoupleContext
from ..registry import OpRule
from ..weights import is_weight
from ..slots import Role

__all__ = ["UnaryRule", "MsUnaryRule", "BroadcastRule", "DropoutRule", "CastLikeRule", "RULES"]

#: One input, same-shape output (extra inputs/attributes are scalars).
UNARY_OPS: tuple[str, ...] = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Erf", "Elu",
    "Selu", "Celu", "Softplus", "Softsign", "ThresholdedRelu", "Mish", "Swish", "Identity",
    "Cast", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
    "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
    "Not", "IsNaN", "IsInf", "Shrink", "BitwiseNot",
)  # fmt: skip

#: Inputs broadcast together into one output.
BROADCAST_OPS: tuple[str, ...] = (
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Sum", "Max", "Min", "Mean", "PRelu", "Clip",
    "Where", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor",
    "BitwiseAnd", "BitwiseOr", "BitwiseXor",
)  # fmt: skip


def _const_roles(ctx: CoupleContext, inputs) -> None:
    for x in inputs:
        if not is_weight(x):
            continue
        for k, d in enumerate(ctx.dims(x) or ()):
            if d not in (None, 1):
                ctx.role(x, k, Role.CONST)


class UnaryRule(OpRule):
    op_types = UNARY_OPS

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        if x is None or y is None:
            raise Decline(f"{ctx.describe()}: missing input")
        ctx.same_shape(x, y)
        ctx.broadcast([x], y)
        for extra in node.inputs[1:]:  # e.g. scalar parameters
            if extra is None:
                continue
            extra_dims = ctx.dims(extra)
            if extra_dims is None or any(d != 1 for d in extra_dims):
                raise Decline(f"{ctx.describe()}: non-scalar extra input '{extra.name}'")
            ctx.handled_all(extra)
        return None


class BroadcastRule(OpRule):
    op_types = BROADCAST_OPS

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        y = ctx.output(0)
        if y is None:
            raise Decline(f"{ctx.describe()}: missing output")
        inputs = list(node.inputs)
        ctx.broadcast(inputs, y)
        _const_roles(ctx, inputs)
        return None


class MsUnaryRule(UnaryRule):
    """onnxruntime's element-wise activations (``com.microsoft``), as exporters and its fusions write them."""

    op_types = ("Gelu", "FastGelu", "QuickGelu", "BiasGelu", "FastGeluBias")
    domain = "com.microsoft"

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        if x is None or y is None:
            raise Decline(f"{ctx.describe()}: missing input")
        ctx.same_shape(x, y)
        inputs = [v for v in node.inputs if v is not None]  # BiasGelu / FastGelu: a bias on the last axis
        ctx.broadcast(inputs, y)
        _const_roles(ctx, inputs[1:])
        return None


class DropoutRule(OpRule):
    op_types = ("Dropout",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        if x is None or y is None:
            raise Decline(f"{ctx.describe()}: missing input")
        ctx.broadcast([x], y)
        mask = ctx.output(1)
        if mask is not None:
            ctx.identity(x, mask)
        for extra in node.inputs[1:]:
            ctx.handled_all(extra)
        return None


class CastLikeRule(OpRule):
    op_types = ("CastLike",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, like, y = ctx.input(0), ctx.input(1), ctx.output(0)
        if x is None or y is None:
            raise Decline(f"{ctx.describe()}: missing input")
        ctx.handled_all(like)  # only its element type matters
        ctx.broadcast([x], y)
        return None


RULES: tuple[OpRule, ...] = (UnaryRule(), MsUnaryRule(), BroadcastRule(), DropoutRule(), CastLikeRule())
