"""Small helpers to read shapes, constants and attributes from ``onnx_ir`` objects."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

Dims = tuple[int | None, ...]


def dims(value: ir.Value | None) -> Dims | None:
    """Static dims of a value (``None`` for symbolic/unknown dims); ``None`` if rank unknown."""
    if value is None:
        return None
    shape = value.shape
    if shape is None:
        const = value.const_value
        if const is not None:
            return tuple(int(d) for d in const.shape)
        return None
    out: list[int | None] = []
    for d in shape:
        out.append(d if isinstance(d, int) else None)
    return tuple(out)


def symbolic_dims(value: ir.Value | None) -> tuple[int | str | None, ...] | None:
    """Dims with symbolic names kept (``None`` for anonymous unknown dims)."""
    if value is None or value.shape is None:
        return dims(value)
    out: list[int | str | None] = []
    for d in value.shape:
        if isinstance(d, int):
            out.append(d)
        else:
            out.append(getattr(d, "value", None))
    return tuple(out)


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The constant array of an initializer value (``None`` otherwise)."""
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None:
        return None
    try:
        return tensor.numpy()
    except Exception:  # noqa: BLE001 - unreadable constant: treat as unknown
        return None


def constant_ints(value: ir.Value | None) -> tuple[int, ...] | None:
    arr = constant(value)
    if arr is None or arr.dtype.kind not in "iu":
        return None
    return tuple(int(x) for x in arr.reshape(-1))


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def opset_version(model_or_graph_opsets: dict[str, int], domain: str) -> int:
    if domain in ("", "ai.onnx"):
        return model_or_graph_opsets.get("", model_or_graph_opsets.get("ai.onnx", 1))
    return model_or_graph_opsets.get(domain, 1)
