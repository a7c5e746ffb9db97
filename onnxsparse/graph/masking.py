"""The masked-equivalence oracle: make the channels a plan removes contribute nothing.

Which masking is exact
----------------------
A removed channel can only influence kept outputs where some node *sums over
the channel axis* (Conv/ConvTranspose/Gemm/MatMul: a :class:`Contraction`).
Every other op a rule lets a channel through is channel-wise (activations,
BatchNorm, per-channel constants, residual Add, Concat/Split, pooling,
reshapes), and ops that mix channels (LRN, LayerNorm over channels, Softmax or
Reduce over channels, GroupNorm across groups) block the group.  So zeroing
the channel *at every contraction* (the consumer's matching input weights, or
multiplying the activation by a 0/1 mask when the partner is not a constant)
removes its effect exactly, whatever happens to it before.

Zeroing the *producer* instead (filter rows + bias) is exact only when the
channel is 0 at every consumer: a BatchNorm after the conv adds
``beta - gamma*mean/sqrt(var+eps)``, ``Sigmoid(0) = 0.5``, a per-channel ``Add``
shifts it, and a residual ``Add`` brings the other branch's value back, so the
channel reaches the consumer non-zero.  We therefore mask at the consumers.

A quantized weight (``DequantizeLinear`` of an int8 initializer, the QDQ form) is masked
in its integer codes: the removed positions are set to their zero point, which
dequantizes to exactly ``0.0``.  The masked model keeps the QDQ structure, so
onnxruntime runs the same integer kernels on it as on the pruned model (multiplying the
dequantized activation by a mask instead would break its QDQ fusion and compare a float
kernel with an integer one).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .weights import dequantize_node, zero_codes, zero_qoperator_codes
from .plan import PrunePlan

__all__ = ["masked_copy"]


def masked_copy(model: ir.Model, plan: PrunePlan) -> ir.Model:
    """A copy of ``model`` (the one ``plan`` was built on, before pruning) with removed channels masked."""
    copy = model.clone()
    masks = plan.masks()
    nodes = {node.name: node for node in copy.graph}
    counter = 0
    for c in plan.graph.contractions:
        node = nodes.get(c.node)
        if node is None:  # pragma: no cover - the copy has the same nodes
            raise AssertionError(f"node {c.node} missing from the copy")
        x = node.inputs[c.input]
        if x is None:
            continue
        mask = masks.get((x.name or "", c.axis))
        if mask is None:
            continue
        if c.weight is not None:
            w = node.inputs[c.weight[0]]
            w_mask = masks.get((w.name or "", c.weight[1])) if w is not None else None
            if w is not None and w_mask is not None and w.const_value is not None:
                array = zero_qoperator_codes(w, c.weight[1], ~w_mask)  # QLinearConv & co: zero point
                if array is None:
                    array = np.array(w.const_value.numpy())  # copy
                    index: list[slice | np.ndarray] = [slice(None)] * array.ndim
                    index[c.weight[1]] = ~w_mask
                    array[tuple(index)] = 0
                w.const_value = ir.Tensor(array, name=w.name)
                continue
            dq = dequantize_node(w) if w is not None and w_mask is not None else None
            codes = dq.inputs[0] if dq is not None else None
            if dq is not None and codes is not None and w_mask is not None and len(codes.uses()) == 1 \
                    and not codes.is_graph_output():
                array = zero_codes(dq, c.weight[1], ~w_mask)
                codes.const_value = ir.Tensor(array, name=codes.name)
                continue
        rank = len(x.shape) if x.shape is not None else None
        if rank is None:  # pragma: no cover - slots need a known rank
            raise AssertionError(f"rank of {x.name} unknown")
        dtype: np.dtype = x.dtype.numpy() if x.dtype is not None else np.dtype(np.float32)
        shape = [1] * rank
        shape[c.axis] = mask.size
        name = f"{x.name}__mask{counter}"
        counter += 1
        const = ir.Value(name=name, shape=ir.Shape(shape), const_value=ir.Tensor(mask.reshape(shape).astype(dtype), name=name))
        const.type = ir.TensorType(x.dtype) if x.dtype is not None else None
        copy.graph.register_initializer(const)
        mul = ir.Node("", "Mul", [x, const], name=f"{node.name}__mask{counter}", num_outputs=1)
        mul.outputs[0].name = f"{x.name}__masked{counter}"
        mul.outputs[0].shape = x.shape
        mul.outputs[0].type = x.type
        copy.graph.insert_before(node, mul)
        node.replace_input_with(c.input, mul.outputs[0])
    return copy
