"""Load and save models safely.

Loading goes through ``onnx`` (without external data) so the file can be checked
before anything trusts it: truncation, IR/opset versions newer than we support,
external-data locations escaping the model folder, missing data files.  The
checked proto is then turned into an ``onnx_ir`` model whose external tensors
stay memory-mapped, so multi-GB models are not copied.

Saving is atomic: everything is written into a temporary folder beside the
output and renamed into place only once complete; the input is never
overwritten.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Union

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from . import guard, limits, model_check
from ._workdir import JOURNAL, make_owned_temp_dir
from .errors import ModelLoadError, ModelSaveError

__all__ = [
    "keeps_value_info",
    "carry_value_info",
    "ModelSource",
    "load_model",
    "own_weights",
    "load_proto",
    "save_model",
    "check_output",
    "to_proto",
    "restore_types",
    "strip_unsupported_types",
    "inline_external_data",
    "model_file_bytes",
    "max_runtime_ir_version",
    "EXTERNAL_DATA_THRESHOLD",
]

ModelSource = Union[str, os.PathLike, bytes, onnx.ModelProto, ir.Model]

#: Models whose tensors exceed this many bytes are saved with external data
#: (protobuf cannot serialise a message larger than 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


# --------------------------------------------------------------------------- load


def load_proto(source: str | os.PathLike | bytes, *, load_external: bool = False) -> onnx.ModelProto:
    """Parse and vet a model file; external data is checked but not loaded."""
    if isinstance(source, (bytes, bytearray)):
        proto = _parse_bytes(bytes(source), "<bytes>")
        base_dir: Path | None = None
    else:
        path = Path(source)
        if path.is_dir():
            raise ModelLoadError(f"expected an .onnx file, got a directory: {path}")
        guard.regular_file(path, "model file", ModelLoadError)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
        guard.note_read(path, "input model")
        proto = _parse_bytes(data, str(path))
        base_dir = path.resolve().parent
    _check_versions(proto)
    _check_external_data(proto, base_dir)
    model_check.check_model(proto, base_dir)
    _densify_sparse_initializers(proto, base_dir)
    if load_external and base_dir is not None:
        onnx.external_data_helper.load_external_data_for_model(proto, str(base_dir))
    return proto


def load_model(source: ModelSource) -> ir.Model:
    """Load a model (path, bytes, ModelProto or ir.Model) as an ``onnx_ir`` model."""
    if isinstance(source, ir.Model):
        return source
    if isinstance(source, onnx.ModelProto):
        _check_versions(source)
        if _has_unsupported_types(source):
            copy = onnx.ModelProto()
            copy.CopyFrom(source)
            source = copy
        _densify_sparse_initializers(source, None)
        _stash_unsupported_types(source)
        return _remember_value_info(_deserialize(source), source)
    proto = load_proto(source)
    _stash_unsupported_types(proto)
    model = _remember_value_info(_deserialize(proto), proto)
    if not isinstance(source, (bytes, bytearray)):
        base_dir = str(Path(source).resolve().parent)
        for graph in (model.graph, *(function.graph for function in model.functions.values())):
            ir.external_data.set_base_dir(graph, base_dir)
    return model


#: ``model.meta`` key: did the model we loaded carry ``value_info`` for intermediate values?
_VALUE_INFO_KEY = "onnxsparse.value_info"


def _remember_value_info(model: ir.Model, proto: onnx.ModelProto) -> ir.Model:
    model.meta[_VALUE_INFO_KEY] = len(proto.graph.value_info) > 0
    return model


def keeps_value_info(model: ir.Model) -> bool:
    """Whether :func:`save_model` writes shapes of intermediate values: only if the input had them.

    Those shapes change what onnxruntime fuses (with them it fuses Add +
    LayerNormalization into SkipLayerNormalization), and so the speed: the
    all-MiniLM-L6-v2 TorchScript export, which has none, ran 1.10x slower once
    we had inferred and written them; its dynamo export, which has them, ran
    0.92x of its time without.  Writing what the input had keeps onnxruntime's
    choices, so what we write is never slower for that reason.  Models built
    in memory keep them.
    """
    return bool(model.meta.get(_VALUE_INFO_KEY, True))


def carry_value_info(model: ir.Model, source: ir.Model) -> ir.Model:
    """Give ``model`` (e.g. a quantizer's output) the ``value_info`` choice of the model it was made from."""
    model.meta[_VALUE_INFO_KEY] = keeps_value_info(source)
    return model


def _deserialize(proto: onnx.ModelProto) -> ir.Model:
    try:
        return own_weights(ir.serde.deserialize_model(proto))
    except Exception as exc:  # noqa: BLE001 - onnx_ir raises SerdeError wrapping anything
        cause: BaseException = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ModelLoadError(f"cannot read the model graph: {detail}") from exc


def own_weights(model: ir.Model) -> ir.Model:
    """Hold every in-file initializer as a numpy array, read from the proto once.

    onnx_ir keeps them as views of the proto, and each ``numpy()`` copies the
    bytes out of protobuf again: pruning VGG-19 (143M weights) read them about
    four times, 1 s of copying.  Sub-byte and exotic types stay as they are
    (they unpack on read); external data stays lazy (memory-mapped on read).
    """
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if not isinstance(tensor, ir.serde.TensorProtoTensor) or tensor.dtype.bitwidth < 8:
                continue
            if tensor.dtype.numpy().kind not in "fiub":
                continue
            value.const_value = ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=tensor.name)
    return model


# Types onnx_ir cannot represent (maps, e.g. skl2onnx's ZipMap output ``seq(map(int64, float))``) are
# taken off the graph inputs/outputs on load, kept in a metadata entry, and put back by
# :func:`to_proto` / :func:`save_model`.  onnxruntime infers them while they are missing.
_TYPES_KEY = "onnxsparse.stashed_types"


def _type_supported(tp: onnx.TypeProto) -> bool:
    kind = tp.WhichOneof("value")
    if kind in (None, "tensor_type", "sparse_tensor_type"):
        return True
    if kind == "map_type":
        return False
    if kind == "sequence_type":
        return _type_supported(tp.sequence_type.elem_type)
    if kind == "optional_type":
        return _type_supported(tp.optional_type.elem_type)
    return False


def _has_unsupported_types(proto: onnx.ModelProto) -> bool:
    g = proto.graph
    return any(not _type_supported(v.type) for v in (*g.input, *g.output, *g.value_info))


def strip_unsupported_types(proto: onnx.ModelProto) -> dict[str, dict[str, str]]:
    """Clear graph I/O types onnx_ir cannot hold, drop such ``value_info``; returns what was cleared."""
    graph = proto.graph
    stashed: dict[str, dict[str, str]] = {"input": {}, "output": {}}
    for kind, values in (("input", graph.input), ("output", graph.output)):
        for v in values:
            if not _type_supported(v.type):
                stashed[kind][v.name] = base64.b64encode(v.type.SerializeToString()).decode("ascii")
                v.ClearField("type")
    keep = [vi for vi in graph.value_info if _type_supported(vi.type)]
    if len(keep) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(keep)
    return stashed


def _stash_unsupported_types(proto: onnx.ModelProto) -> None:
    stashed = strip_unsupported_types(proto)
    if stashed["input"] or stashed["output"]:
        old = [p for p in proto.metadata_props if p.key == _TYPES_KEY]
        for p in old:
            proto.metadata_props.remove(p)
        proto.metadata_props.add(key=_TYPES_KEY, value=json.dumps(stashed, sort_keys=True))


def restore_types(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Put back the graph I/O types :func:`load_model` took off (in place; returns ``proto``)."""
    entries = [p for p in proto.metadata_props if p.key == _TYPES_KEY]
    if not entries:
        return proto
    stashed = json.loads(entries[-1].value)
    for p in entries:
        proto.metadata_props.remove(p)
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for v in values:
            encoded = stashed.get(kind, {}).get(v.name)
            if encoded is not None and not v.type.WhichOneof("value"):
                v.type.ParseFromString(base64.b64decode(encoded))
    return proto


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """``ir.to_proto`` plus the graph I/O types onnx_ir cannot hold (see :func:`load_model`)."""
    return restore_types(ir.to_proto(model))


def _parse_bytes(data: bytes, name: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{name} is empty, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{name} is not a valid ONNX model (truncated or corrupt protobuf)") from exc
    # Random bytes sometimes parse as an (almost) empty message.
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise ModelLoadError(f"{name} is not a valid ONNX model (no graph or IR version)")
    return proto


def _check_versions(proto: onnx.ModelProto) -> None:
    if proto.ir_version > onnx.IR_VERSION:
        raise ModelLoadError(
            f"model IR version {proto.ir_version} is newer than supported "
            f"(onnx {onnx.__version__} reads up to IR {onnx.IR_VERSION})"
        )
    latest = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > latest:
            raise ModelLoadError(
                f"model uses ONNX opset {opset.version}, newer than supported "
                f"(onnx {onnx.__version__} knows up to opset {latest})"
            )


def _iter_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a model holds: initializers, sparse initializers (values and indices) and
    tensor attributes (``Constant``'s ``value``/``sparse_value``, ...) of the graph, its subgraphs
    (If/Loop/Scan bodies) and its functions.  onnx's own walker skips the sparse ones."""

    def from_sparse(sparse: onnx.SparseTensorProto) -> Iterator[onnx.TensorProto]:
        yield sparse.values
        yield sparse.indices

    def from_nodes(nodes) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("sparse_tensor"):
                    yield from from_sparse(attr.sparse_tensor)
                for sparse in attr.sparse_tensors:
                    yield from from_sparse(sparse)
                if attr.HasField("g"):
                    yield from from_graph(attr.g)
                for sub in attr.graphs:
                    yield from from_graph(sub)

    def from_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from from_sparse(sparse)
        yield from from_nodes(graph.node)

    yield from from_graph(proto.graph)
    for function in proto.functions:
        yield from from_nodes(function.node)


def _external_int(info: dict[str, str], key: str, tensor: onnx.TensorProto) -> int | None:
    text = info.get(key)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ModelLoadError(f"tensor {tensor.name!r}: external data {key} {text!r} is not an integer") from None
    if value < 0:
        raise ModelLoadError(f"tensor {tensor.name!r}: external data {key} {value} is negative")
    return value


def _external_path(tensor: onnx.TensorProto, base_dir: Path | None) -> tuple[Path, str, dict[str, str]]:
    """The checked data file of an external tensor, its ``location`` and its entries."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if not location:
        raise ModelLoadError(f"tensor {tensor.name!r} is external but names no data file")
    if "\0" in location:
        raise ModelLoadError(f"tensor {tensor.name!r}: external data location {location!r} contains a NUL byte")
    if os.path.isabs(location) or Path(location).is_absolute() or location.startswith(("/", "\\")):
        raise ModelLoadError(
            f"tensor {tensor.name!r}: external data location {location!r} is an absolute path; "
            "only files inside the model's folder are allowed"
        )
    if ".." in Path(location.replace("\\", "/")).parts:
        raise ModelLoadError(
            f"tensor {tensor.name!r}: external data location {location!r} escapes the model's folder"
        )
    if base_dir is None:
        raise ModelLoadError(
            f"tensor {tensor.name!r} uses external data; load the model from its file path, not bytes"
        )
    data_path = (base_dir / location).resolve()  # symlinks followed: the target must stay inside too
    if base_dir != data_path and base_dir not in data_path.parents:
        raise ModelLoadError(
            f"tensor {tensor.name!r}: external data location {location!r} escapes the model's folder"
        )
    if not data_path.exists():
        raise ModelLoadError(f"external data file missing: {location} (needed by tensor {tensor.name!r})")
    guard.regular_file(data_path, "external data file", ModelLoadError)
    return data_path, location, info


def _check_external_data(proto: onnx.ModelProto, base_dir: Path | None) -> None:
    """Reject external data that escapes the model folder, is missing or short, or has bad offsets.

    Every external tensor is checked (sparse ones, subgraphs, functions and attributes too) and
    resolved against the model's folder only; the files are noted as inputs (:mod:`.guard`).
    """
    for tensor in _iter_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        data_path, location, info = _external_path(tensor, base_dir)
        offset = _external_int(info, "offset", tensor) or 0
        size = data_path.stat().st_size
        length = _external_int(info, "length", tensor)
        length = size - offset if length is None else length
        if length < 0 or offset + length > size:
            raise ModelLoadError(
                f"external data file {location} is too short for tensor {tensor.name!r} "
                f"(needs bytes {offset}..{offset + length}, file has {size})"
            )
        guard.note_read(data_path, "external data file")


def external_data_files(path: str | os.PathLike) -> list[Path]:
    """The external data files a model file names that exist inside its folder (no checks, no errors).

    Cheap when the model has none (no tensor names a ``location``).
    """
    path = Path(path)
    try:
        if not path.is_file() or not _mentions(path, b"location"):
            return []
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model we can read: load_proto will say why
        return []
    base = path.resolve().parent
    files: list[Path] = []
    for tensor in _iter_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        if not location or "\0" in location or os.path.isabs(location):
            continue
        data_path = (base / location).resolve()
        if data_path.is_file() and (base in data_path.parents) and data_path not in files:
            files.append(data_path)
    return files


def _densify_sparse_initializers(proto: onnx.ModelProto, base_dir: Path | None) -> None:
    """Turn ONNX COO ``sparse_initializer`` entries into dense initializers.

    ``onnx_ir`` drops sparse initializers on load, so they are densified here
    (exactly; onnxruntime does the same at session creation).  External values
    and indices are read from the model's folder (``base_dir``), never the working directory.
    """
    from onnx import numpy_helper

    def array(tensor: onnx.TensorProto) -> np.ndarray:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _external_path(tensor, base_dir)  # a proto given in memory was not checked by load_proto
            return numpy_helper.to_array(tensor, base_dir=str(base_dir))
        return numpy_helper.to_array(tensor)

    def densify(graph: onnx.GraphProto) -> None:
        for sparse in list(graph.sparse_initializer):
            values = array(sparse.values)
            indices = array(sparse.indices).astype(np.int64)
            dims = tuple(sparse.dims)
            limits.check_alloc(f"sparse initializer {sparse.values.name!r}", dims, values.dtype)
            dense = np.zeros(int(np.prod(dims)) if dims else 1, dtype=values.dtype)
            if indices.ndim == 2:
                indices = np.ravel_multi_index(tuple(indices.T), dims)
            dense[indices.reshape(-1)] = values.reshape(-1)
            graph.initializer.append(numpy_helper.from_array(dense.reshape(dims), sparse.values.name))
        del graph.sparse_initializer[:]
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    densify(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        densify(sub)

    densify(proto.graph)


# --------------------------------------------------------------------------- save


@functools.lru_cache(maxsize=1)
def max_runtime_ir_version() -> int:
    """Highest IR version the installed onnxruntime loads (probed once)."""
    try:
        import onnxruntime  # noqa: F401 - the probe below needs it
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        return onnx.IR_VERSION
    from ._ort import make_session

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    for version in range(onnx.IR_VERSION, 6, -1):
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
        model.ir_version = version
        try:
            make_session(model)
            return version
        except Exception:  # noqa: BLE001 - any failure means "not this version"
            continue
    return 7


def _tensor_bytes(model: ir.Model) -> int:
    total = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is not None:
                total += tensor.nbytes
    return total


@contextlib.contextmanager
def inline_external_data(model: ir.Model) -> Iterator[ir.Model]:
    """Within the block, tensors that live in external files are in-memory copies.

    ``ir.save``/``ir.to_proto`` write an external tensor as a reference to its
    *old* file, relative to the new model: a model saved elsewhere would point
    at a file that is not there.  The original tensors are put back afterwards.
    """
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for graph in model.graphs():
            for value in graph.initializers.values():
                tensor = value.const_value
                if isinstance(tensor, ir.ExternalTensor):
                    swapped.append((value, tensor))
                    value.const_value = ir.Tensor(tensor.numpy(), name=tensor.name)
        yield model
    finally:
        for value, tensor in swapped:
            value.const_value = tensor


@contextlib.contextmanager
def _value_info_as_loaded(model: ir.Model) -> Iterator[ir.Model]:
    """Within the block, values carry types/shapes only where :func:`save_model` should write them.

    ``onnx_ir`` writes a ``value_info`` entry for every typed value.  For an
    initializer it repeats what the tensor says: always dropped.  Intermediate
    values keep theirs only if the loaded model had ``value_info``
    (:func:`keeps_value_info`).
    """
    keep_intermediate = keeps_value_info(model)
    cleared: list[tuple[ir.Value, ir.TypeProtocol | None, ir.Shape | None]] = []
    try:
        for graph in model.graphs():
            keep = set(map(id, (*graph.inputs, *graph.outputs)))
            values = list(graph.initializers.values())
            if not keep_intermediate:
                values += [v for node in graph for v in node.outputs]
            for value in values:
                if id(value) in keep or (value.type is None and value.shape is None):
                    continue
                cleared.append((value, value.type, value.shape))
                value.type, value.shape = None, None
        yield model
    finally:
        for value, type_, shape in cleared:
            value.type, value.shape = type_, shape


def _write(model: ir.Model, path: Path, data_name: str | None) -> None:
    """Serialise ``model`` to ``path`` (weights in ``data_name`` beside it, if given)."""
    with _value_info_as_loaded(model):
        _write_typed(model, path, data_name)


def _write_typed(model: ir.Model, path: Path, data_name: str | None) -> None:
    if data_name:
        with inline_external_data(model):  # onnx_ir would release the source's memory maps (views held elsewhere)
            ir.save(model, path, external_data=data_name, size_threshold_bytes=1024)
        if model.metadata_props.get(_TYPES_KEY) is not None:
            proto = restore_types(onnx.load(str(path), load_external_data=False))
            path.write_bytes(proto.SerializeToString())
        return
    with inline_external_data(model):
        ir.save(model, path)
    if model.metadata_props.get(_TYPES_KEY) is not None:
        proto = restore_types(onnx.load(str(path), load_external_data=False))
        path.write_bytes(proto.SerializeToString())


def check_output(
    path: str | os.PathLike,
    *,
    protect: tuple[str | os.PathLike | None, ...] = (),
    force: bool = False,
    external_data: bool | None = None,
) -> Path:
    """Raise :class:`ModelSaveError` for an output :func:`save_model` would refuse.

    Commands call it before long work too, so a bad ``-o`` fails at once.  Never
    allowed, even with ``force``: the output or its ``OUT.data`` sidecar being a file
    this command reads (``protect``, expanded by :func:`.guard.input_files`, plus every file noted
    by :mod:`.guard`), or an existing output that is not a regular file.
    ``external_data``: whether ``OUT.data`` will be written (``None``: not known yet).
    """
    out = Path(path)
    try:
        inputs = guard.input_files(protect)
        sidecar = out.with_name(out.name + ".data")
        guard.refuse_input(out, extra=inputs)
        guard.refuse_input(sidecar, extra=inputs, role="external data of the output")
        if out.is_dir():
            raise ModelSaveError(f"output {out} is a directory")
        if out.exists() and not out.is_file():
            raise ModelSaveError(f"output {out} exists and is not a regular file")
        if out.exists() and not force:
            raise ModelSaveError(f"output {out} already exists (use --force to overwrite)")
        if external_data and sidecar.exists() and not force:
            raise ModelSaveError(f"{sidecar} already exists (use --force to overwrite)")
        if not out.resolve().parent.is_dir():
            raise ModelSaveError(f"output folder does not exist: {out.resolve().parent}")
    except OSError as exc:  # a name too long, a folder we may not search
        raise ModelSaveError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return out


def save_model(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    protect: tuple[str | os.PathLike | None, ...] = (),
    force: bool = False,
    external_data: bool | None = None,
    source: str | os.PathLike | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically; returns the path written.

    ``protect`` lists files that must never be overwritten (the inputs; every file
    noted by :mod:`.guard` is protected too).
    ``external_data``: ``True`` always, ``False`` never, ``None`` when the weights are too large
    for one protobuf or the model ``source`` it was made from kept its weights in external data
    (a model that came with external data leaves with it, whatever its new size).
    The data file is ``<name>.data``.
    The IR version is lowered to what the installed onnxruntime reads.
    Interrupted (an error, SIGINT, SIGTERM), it leaves the previous files as they were
    and no temporary folder behind.
    """
    if external_data is None:
        external_data = _tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD or bool(
            source is not None and external_data_files(source))
    out = check_output(path, protect=protect, force=force, external_data=external_data)
    parent = out.resolve().parent
    model.ir_version = min(model.ir_version, max_runtime_ir_version())

    data_name = out.name + ".data"
    tmp_dir: Path | None = None
    moved_data: Path | None = None
    backup: Path | None = None
    committed = False
    try:
        tmp_dir = make_owned_temp_dir(parent, "save")
        tmp_model = tmp_dir / out.name
        if external_data:
            _write(model, tmp_model, data_name)
            tmp_data = tmp_dir / data_name
            if tmp_data.exists():  # a SIGKILL from here to the commit is undone by the next run's sweep
                (tmp_dir / JOURNAL).write_text(json.dumps({"model": out.name, "data": data_name}))
                final_data = parent / data_name
                if final_data.exists():  # keep the old data until the model is in place
                    backup = tmp_dir / (data_name + ".old")
                    os.replace(final_data, backup)
                os.replace(tmp_data, final_data)
                moved_data = final_data
        else:
            _write(model, tmp_model, None)
        os.replace(tmp_model, out)
        committed = True
    except OSError as exc:
        raise ModelSaveError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        if not committed:  # the model rename is the commit point: undo the data-file move
            if moved_data is not None:
                moved_data.unlink(missing_ok=True)
            if backup is not None:
                os.replace(backup, parent / data_name)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return out


def _mentions(path: Path, word: bytes) -> bool:
    """Whether the file's bytes contain ``word`` (every external tensor has a ``location`` key)."""
    import mmap

    with open(path, "rb") as handle:
        if path.stat().st_size == 0:
            return False
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return view.find(word) >= 0


def model_file_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of a model file plus the external data files it references."""
    path = Path(path)
    return path.stat().st_size + sum(f.stat().st_size for f in external_data_files(path))
