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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .. import guard
from ..errors import DataError, UsageError

__all__ = ["InputSpec", "DataSource", "load_data", "model_input_specs", "parse_shapes", "onnx_to_numpy_dtype"]

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
            dtype = np.dtype(ORT_TYPE_TO_NUMPY.get(arg.type, np.float32))
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


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    guard.input_file(path, "data file", DataError)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise DataError(f"{path} is a .npy array, expected an .npz keyed by input name")
            return {key: npz[key] for key in npz.files}
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read data file {path}: {exc}") from exc


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
    mapping of arrays.  ``model`` is anything :func:`model_input_specs` accepts.
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
            keys = set(parts[0])
            for f, part in zip(files, parts):
                if set(part) != keys:
                    raise DataError(f"{f} has keys {sorted(part)}, expected {sorted(keys)} like {files[0].name}")
            source = DataSource({k: np.concatenate([p[k] for p in parts]) for k in keys}, str(path))
        else:
            source = DataSource(_load_npz(path), str(path))
    source.check_against(specs)
    return source
