"""Which default-domain opset a model has, and whether it can be raised without changing any node.

Decode graphs need opset 11 (``CumSum``, ``ScatterElements``, ``Range``) and 16
for ``ScatterElements(reduction=add)``.  Raising a model's opset is only safe
when every existing node means the same at the new version: its schema did not
change, or changed only compatibly (same inputs/outputs the node uses, no
attribute removed or retyped, no new required attribute, the node's types
still allowed) and its meaning did not change silently (``Softmax`` at 13).
``ReduceMean`` 13 -> 18 (``axes`` moved to an input) is the typical blocker;
then the tensor falls back to an older decode graph or stays dense, with the
reason in the report.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx.defs
import onnx_ir as ir

from ..errors import Decline

__all__ = ["check_opset_raise", "model_opset", "set_model_opset"]

_DEFAULT_DOMAINS = ("", "ai.onnx")


def model_opset(model: ir.Model) -> int:
    imports = model.opset_imports
    for domain in _DEFAULT_DOMAINS:
        if domain in imports:
            return int(imports[domain])
    return 0


def set_model_opset(model: ir.Model, version: int) -> None:
    key = next((d for d in _DEFAULT_DOMAINS if d in model.opset_imports), "")
    model.opset_imports[key] = version
    if key in model.graph.opset_imports or not model.graph.opset_imports:
        model.graph.opset_imports[key] = version
    for node in _nodes(model):
        if node.domain in _DEFAULT_DOMAINS:
            if node.version is not None:
                node.version = None  # follow the model's opset
            for output in node.outputs:
                if _unused(output):  # its type may differ at the new version: let the runtime infer it
                    output.type = None
                    output.shape = None


def _nodes(model: ir.Model) -> Iterator[ir.Node]:
    yield from ir.traversal.RecursiveGraphIterator(model.graph)
    for function in model.functions.values():
        yield from ir.traversal.RecursiveGraphIterator(function)


def _schema(op_type: str, version: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op_type, version, "")
    except Exception:  # noqa: BLE001 - unknown op at this version
        return None


def _allowed(schema: onnx.defs.OpSchema, param: onnx.defs.OpSchema.FormalParameter) -> set[str]:
    for constraint in schema.type_constraints:
        if constraint.type_param_str == param.type_str:
            return set(constraint.allowed_type_strs)
    return {param.type_str}


def _unused(value: ir.Value) -> bool:
    return not value.uses() and not value.is_graph_output()


def _param(params: list, index: int):
    if index < len(params):
        return params[index]
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


def _type_str(value: ir.Value | None) -> str | None:
    if value is None or not isinstance(value.type, ir.TensorType):
        return None
    dtype = value.type.dtype
    return f"tensor({_ONNX_TYPE_NAMES.get(dtype, dtype.name.lower())})"


_ONNX_TYPE_NAMES = {ir.DataType.FLOAT: "float", ir.DataType.DOUBLE: "double"}


#: (op, version) where the meaning changed without the signature changing
_SEMANTIC_CHANGES = {("Softmax", 13), ("LogSoftmax", 13), ("Hardmax", 13)}


def _check_node(node: ir.Node, old: onnx.defs.OpSchema, new: onnx.defs.OpSchema) -> None:
    """Declines with what changed between the two schemas that ``node`` would notice."""
    optional = onnx.defs.OpSchema.FormalParameterOption.Optional
    if new.deprecated:
        raise Decline("deprecated")
    for op_type, version in _SEMANTIC_CHANGES:
        if node.op_type == op_type and old.since_version < version <= new.since_version:
            raise Decline(f"its semantics changed at opset {version}")
    for kind, values in (("input", node.inputs), ("output", node.outputs)):
        old_params = list(old.inputs if kind == "input" else old.outputs)
        new_params = list(new.inputs if kind == "input" else new.outputs)
        variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
        for index, value in enumerate(values):
            before, after = _param(old_params, index), _param(new_params, index)
            if after is None or before is None or (before.option == variadic) != (after.option == variadic):
                raise Decline(f"{kind} {index} changed")
            if value is None:
                if after.option != optional:
                    raise Decline(f"{kind} {index} became required")
                continue
            if kind == "output" and _unused(value):
                continue  # nobody reads it (e.g. Dropout's mask): its type may change
            known = _type_str(value)
            if known is not None:
                if known in _allowed(old, before) and known not in _allowed(new, after):
                    raise Decline(f"{kind} {index} type {known} no longer allowed")
            elif not _allowed(old, before) <= _allowed(new, after):
                raise Decline(f"{kind} {index} types narrowed")
        if kind == "input":
            for index in range(len(values), len(new_params)):
                if new_params[index].option != optional and index >= len(old_params):
                    raise Decline(f"new required input {new_params[index].name}")
    for name, attr in old.attributes.items():
        if name in node.attributes and (name not in new.attributes or new.attributes[name].type != attr.type):
            raise Decline(f"attribute {name!r} removed or retyped")
    for name, attr in new.attributes.items():
        if name not in old.attributes and attr.required:
            raise Decline(f"new required attribute {name!r}")


def check_opset_raise(model: ir.Model, target: int) -> None:
    """Returns if the default-domain opset can be raised to ``target`` safely, else declines with why not."""
    current = model_opset(model)
    if current >= target:
        return
    if current == 0:
        raise Decline("model imports no default-domain opset")
    if target > onnx.defs.onnx_opset_version():
        raise Decline(f"onnx {onnx.__version__} knows opsets up to {onnx.defs.onnx_opset_version()}")
    for node in _nodes(model):
        if node.domain not in _DEFAULT_DOMAINS:
            continue
        version = node.version or current
        old, new = _schema(node.op_type, version), _schema(node.op_type, target)
        if old is None or new is None:
            raise Decline(f"{node.op_type} has no schema at opset {version if old is None else target}")
        if old.since_version == new.since_version:
            continue
        try:
            _check_node(node, old, new)
        except Decline as exc:
            raise Decline(f"{node.op_type} changed between opset {version} and {target} ({exc.reason})") from None
