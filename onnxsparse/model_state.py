"""What a model already is (quantized, stored sparse), for the steps and passes that refuse such models."""

from __future__ import annotations

import onnx_ir as ir

__all__ = ["QUANTIZED_OPS", "model_state"]

#: Op types that mean "this model is already quantized".
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "MatMulInteger", "ConvInteger", "MatMulNBits", "QGemm", "QAttention", "DynamicQuantizeLSTM",
    "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul",
})


def model_state(model: ir.Model) -> dict[str, str]:
    """States of ``model`` (``quantized``, ``sparse``) -> a description, as the recipe steps' ``refuses`` name them."""
    from .formats import is_decode_node, read_storage

    state: dict[str, str] = {}
    ops = {node.op_type for node in model.graph.all_nodes()}
    quantized = sorted(ops & QUANTIZED_OPS)
    if quantized:
        state["quantized"] = f"the input model is quantized (it has {', '.join(quantized[:3])})"
    if read_storage(model) or any(is_decode_node(node) for node in model.graph):
        state["sparse"] = "the input model stores weights sparse (onnxsparse sparsify)"
    return state
