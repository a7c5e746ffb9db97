"""Data sources keyed by model input name.

One format everywhere (``--calib``, ``--data``): an ``.npz`` whose keys are the
model's input names (first axis = samples), a folder of such files, or
``random`` (inputs generated from the signature and ``--shape``).  Every source
is checked against the model's inputs (names, rank, fixed dims, dtype) so a bad
file gets one clear line instead of an onnxruntime stack trace.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .. import guard, limits
from ..errors import DataError, UsageError

__all__ = ["InputSpec", "DataSource", "load_data", "model_input_specs", "parse_shapes", "onnx_to_numpy_dtype",
           "read_arrays"]

Dim = "int | str | None"


#: Calibration samples the pruning and sparsity passes use by default (``--calib-samples``).
DEFAULT_CALIB_SAMPLES = 128


@dataclass(frozen=True)
class InputSpec:
    """Name, element type and shape (ints fixed, str/None dynamic) of a graph input."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    def concrete_shape(self, overrides: Mapping[str, tuple[int, ...]], batch: int) -> tuple[int, ...]:
        if self.name in overrides:
            return tuple(overrides[self.name])
        dims: list[int] = []
        for axis, dim in enumerate(self.shape):
            if isinstance(dim, int) and dim > 0:
                dims.append(dim)
            elif axis == 0:
                dims.append(batch)
            else:
                raise UsageError(
                    f"input {self.name!r} has a dynamic dimension {dim!r} at axis {axis}; "
                    f"give its shape with --shape {self.name}=" + "x".join(
                        str(d) if isinstance(d, int) and d > 0 else "N" for d in self.shape
                    )
                )
        return tuple(dims)


def onnx_to_numpy_dtype(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def model_input_specs(model) -> list[InputSpec]:
    """Input specs of an ``onnx_ir`` model, ``ModelProto`` or onnxruntime session."""
    specs: list[InputSpec] = []
    if hasattr(model, "get_inputs"):  # onnxruntime.InferenceSession
        from .._ort import ORT_TYPE_TO_NUMPY

        for arg in model.get_inputs():
            dtype: np.dtype = np.dtype(ORT_TYPE_TO_NUMPY.get(arg.type, np.float32))
            specs.append(InputSpec(arg.name, dtype, tuple(arg.shape)))
        return specs
    if isinstance(model, onnx.ModelProto):
        initializers = {init.name for init in model.graph.initializer}
        for value in model.graph.input:
            if value.name in initializers:
                continue
            ttype = value.type.tensor_type
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in ttype.shape.dim
            )
            specs.append(InputSpec(value.name, onnx_to_numpy_dtype(ttype.elem_type), dims))
        return specs
    for value in model.graph.inputs:  # onnx_ir
        if value.is_initializer():
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        shape = tuple(
            (d if isinstance(d, int) else (d.value if d.value is not None else None))
            for d in (value.shape or ())
        )
        specs.append(InputSpec(value.name, np.dtype(dtype), shape))
    return specs


_SHAPE_RE = re.compile(r"^(?P<name>[^=]+)=(?P<dims>\d+(?:[x,]\d+)*)$")


def parse_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME=D0xD1x...`` options."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        match = _SHAPE_RE.match(item.strip())
        if not match:
            raise UsageError(f"bad --shape {item!r}: expected NAME=D0xD1x... (e.g. input=1x3x224x224)")
        shapes[match["name"]] = tuple(int(d) for d in re.split(r"[x,]", match["dims"]))
    return shapes


class DataSource:
    """Samples for every model input, served in batches.

    ``arrays`` maps input name to an array whose first axis indexes samples.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], origin: str = "") -> None:
        if not arrays:
            raise DataError(f"{origin or 'data'} holds no arrays")
        counts = {name: len(arr) for name, arr in arrays.items()}
        if len(set(counts.values())) != 1:
            raise DataError(f"{origin}: inputs have different numbers of samples: {counts}")
        self.arrays = dict(arrays)
        self.origin = origin

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batches(self, batch_size: int = 1, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        total = len(self) if limit is None else min(limit, len(self))
        for start in range(0, total, max(1, batch_size)):
            stop = min(start + batch_size, total)
            yield {name: arr[start:stop] for name, arr in self.arrays.items()}

    def take(self, count: int) -> "DataSource":
        return DataSource({k: v[:count] for k, v in self.arrays.items()}, self.origin)

    def check_against(self, specs: list[InputSpec]) -> None:
        """Raise :class:`DataError` naming the first mismatch with the model inputs."""
        expected = {spec.name for spec in specs}
        given = set(self.arrays)
        missing = sorted(expected - given)
        extra = sorted(given - expected)
        if missing:
            raise DataError(
                f"{self.origin}: no data for model input(s) {missing}"
                + (f" (file has {sorted(given)})" if given else "")
            )
        if extra:
            raise DataError(f"{self.origin}: key(s) {extra} are not model inputs (inputs: {sorted(expected)})")
        for spec in specs:
            arr = self.arrays[spec.name]
            if arr.ndim != len(spec.shape):
                raise DataError(
                    f"{self.origin}: input {spec.name!r} has rank {arr.ndim} (shape {list(arr.shape)}), "
                    f"model expects rank {len(spec.shape)} {list(spec.shape)}"
                )
            for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
                if axis > 0 and isinstance(want, int) and want > 0 and got != want:
                    raise DataError(
                        f"{self.origin}: input {spec.name!r} has shape {list(arr.shape)}, "
                        f"model expects {list(spec.shape)} (axis {axis})"
                    )
            if arr.dtype != spec.dtype:
                same_kind = np.can_cast(arr.dtype, spec.dtype, casting="same_kind")
                if not same_kind or arr.dtype.kind != spec.dtype.kind:
                    raise DataError(
                        f"{self.origin}: input {spec.name!r} has dtype {arr.dtype}, model expects {spec.dtype}"
                    )
                self.arrays[spec.name] = arr.astype(spec.dtype)


_NPY_MAGIC = b"\x93NUMPY"


def _read_npy_header(handle, where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and header length of one ``.npy`` stream, read before any data is allocated."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{where} is not a valid .npy array ({' '.join(str(exc).split())})") from None
    if dtype.hasobject:
        raise DataError(f"{where} holds Python objects (dtype {dtype}); only numeric arrays are read")
    return tuple(int(d) for d in shape), np.dtype(dtype), handle.tell()


def _check_header(shape: tuple[int, ...], dtype: np.dtype, data_bytes: int, where: str) -> None:
    """Rank, budget and stored size of an array from its header, before loading it."""
    if len(shape) == 0:
        raise DataError(f"{where} is a scalar; every array needs a first axis of samples")
    need = limits.check_alloc(where, shape, dtype)
    if data_bytes < need:
        raise DataError(f"{where} is truncated: its header says shape {list(shape)} {dtype} ({need} bytes), "
                        f"the file holds {data_bytes}")


def _load_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as handle:
        shape, dtype, offset = _read_npy_header(handle, str(path))
    _check_header(shape, dtype, path.stat().st_size - offset, str(path))
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read data file {path}: {exc}") from exc


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, each header checked (rank, budget, stored size) before it is loaded."""
    guard.input_file(path, "data file", DataError)
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            arrays: dict[str, np.ndarray] = {}
            for info in members:
                key = info.filename.removesuffix(".npy")
                where = f"{path}: array {key!r}"
                with archive.open(info) as handle:
                    shape, dtype, offset = _read_npy_header(handle, where)
                _check_header(shape, dtype, info.file_size - offset, where)
                with archive.open(info) as handle:
                    arrays[key] = np.lib.format.read_array(handle, allow_pickle=False)
    except DataError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise DataError(f"cannot read data file {path}: {' '.join(str(exc).split())}") from None
    if not arrays:
        raise DataError(f"{path} holds no arrays")
    return arrays


def read_arrays(path: Path) -> tuple[dict[str, np.ndarray], bool]:
    """The arrays of an ``.npz`` or a plain ``.npy`` (keyed by file stem), headers checked before loading;
    and whether the file was a plain ``.npy``."""
    guard.input_file(path, "data file", DataError)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    if magic == _NPY_MAGIC:
        return {path.stem: _load_npy(path)}, True
    return _load_npz(path), False


def _read_file(path: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """An ``.npz``, or a plain ``.npy`` when the model has exactly one input (the array is its samples)."""
    arrays, plain = read_arrays(path)
    if not plain:
        return arrays
    if len(specs) != 1:
        raise DataError(
            f"{path} is a single .npy array but the model has {len(specs)} inputs "
            f"{[spec.name for spec in specs]}: give an .npz keyed by input name"
        )
    return {specs[0].name: next(iter(arrays.values()))}


def _nan_allowed(model) -> set[str]:
    """Inputs that feed an op made for missing values (``IsNaN``, ``ai.onnx.ml`` ``Imputer``) may hold NaN."""
    if isinstance(model, onnx.ModelProto):
        reads = ((node.op_type, list(node.input)) for node in model.graph.node)
    elif hasattr(model, "graph") and not hasattr(model, "get_inputs"):  # onnx_ir
        reads = ((node.op_type, [v.name for v in node.inputs if v is not None]) for node in model.graph)
    else:  # an onnxruntime session: no graph to look at
        return set()
    return {name for op_type, inputs in reads if op_type in ("IsNaN", "Imputer") for name in inputs}


def _check_arrays(arrays: Mapping[str, np.ndarray], origin: str, nan_ok: set[str]) -> None:
    """Every array: no Python objects, at least one sample, and finite (floats) unless the model handles NaN itself."""
    for name, arr in arrays.items():
        if arr.dtype.hasobject:
            raise DataError(f"{origin}: array {name!r} holds Python objects; expected numbers, booleans or strings")
        if arr.ndim == 0:
            raise DataError(f"{origin}: array {name!r} is a scalar; every array needs a first axis of samples")
        if arr.shape[0] == 0:
            raise DataError(f"{origin}: array {name!r} holds zero samples (shape {list(arr.shape)})")
        if arr.dtype.kind == "f" and name not in nan_ok:
            finite = np.isfinite(arr)
            if not finite.all():
                bad = arr[~finite]
                raise DataError(
                    f"{origin}: array {name!r} has {bad.size} non-finite values "
                    f"({int(np.isnan(bad).sum())} NaN, {int(np.isinf(bad).sum())} Inf)"
                )


def _concat_folder(path: Path, files: list[Path], parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One array per key from a folder's files, which must agree in keys, sample shape and dtype."""
    first = parts[0]
    for f, part in zip(files, parts):
        if set(part) != set(first):
            raise DataError(f"{f} has keys {sorted(part)}, expected {sorted(first)} like {files[0].name}")
        for key, arr in part.items():
            ref = first[key]
            if arr.ndim == 0 or ref.ndim == 0:
                raise DataError(f"{f}: array {key!r} is a scalar; every array needs a first axis of samples")
            if arr.shape[1:] != ref.shape[1:] or arr.dtype != ref.dtype:
                raise DataError(
                    f"{f}: array {key!r} has samples of shape {list(arr.shape[1:])} {arr.dtype}, "
                    f"{files[0].name} has {list(ref.shape[1:])} {ref.dtype}; files in {path} must agree"
                )
    total = sum(limits.nbytes(part[key].shape, part[key].dtype) for part in parts for key in part)
    if total > limits.budget():
        limits.check_alloc(f"data folder {path}", (total,), np.uint8)
    return {k: np.concatenate([p[k] for p in parts]) for k in first}


def _random_arrays(specs: list[InputSpec], shapes: Mapping[str, tuple[int, ...]], samples: int, seed: int):
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = spec.concrete_shape(shapes, batch=1)
        full = (samples,) + shape[1:] if spec.name not in shapes else (samples * shape[0],) + shape[1:]
        if spec.dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(full).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            arrays[spec.name] = rng.integers(0, 2, full).astype(bool)
        else:
            arrays[spec.name] = rng.integers(0, 2, full).astype(spec.dtype)
    return arrays


def load_data(
    spec: str | os.PathLike | Mapping[str, np.ndarray] | DataSource,
    model,
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    samples: int = 8,
    seed: int = 0,
) -> DataSource:
    """Build a checked :class:`DataSource` for ``model`` from ``spec``.

    ``spec`` is an ``.npz`` path, a folder of ``.npz`` files, ``"random"`` or a
    mapping of arrays; for a model with one input, a plain ``.npy`` (its samples).
    Headers are checked against the memory budget before loading; float arrays
    must be finite unless they feed ``IsNaN``/``Imputer`` (made for missing values).  ``model`` is anything :func:`model_input_specs` accepts.
    """
    specs = model_input_specs(model)
    shapes = dict(shapes or {})
    if isinstance(spec, DataSource):
        source = spec
    elif isinstance(spec, Mapping):
        source = DataSource({k: np.asarray(v) for k, v in spec.items()}, "data")
    elif str(spec) == "random":
        source = DataSource(_random_arrays(specs, shapes, samples, seed), "random data")
    else:
        path = Path(spec)
        if not path.exists():
            raise DataError(f"data not found: {path}")
        if path.is_dir():
            files = sorted(path.glob("*.npz"))
            if not files:
                raise DataError(f"data folder {path} has no .npz files")
            parts = [_load_npz(f) for f in files]
            source = DataSource(_concat_folder(path, files, parts), str(path))
        else:
            source = DataSource(_read_file(path, specs), str(path))
    if not isinstance(spec, DataSource):
        _check_arrays(source.arrays, source.origin, _nan_allowed(model))
    source.check_against(specs)
    return source
