"""Write the hostile-input corpus (issue 16) into a folder, deterministically.

Every case is a file a user could hand to onnxsparse: corrupt or lying models
(byte lengths, dims, types, COO indices, graph structure, opsets, our storage
metadata, non-finite weights, huge ``ConstantOfShape``), bad data and labels
(NaN/Inf, scalars, truncated or header-only ``.npz``, headers claiming 2^46
elements, folders that disagree, zero samples), hostile recipes (5,000-digit
integers, deep nesting) and hostile options (``--damp nan``, a huge
``block:``).  :func:`write_cases` returns a :class:`Case` per file saying which
commands read it and what they must do.

Run as a script to write the corpus: ``python tests/hostile/make_cases.py OUT_DIR``.
"""

from __future__ import annotations

import contextlib
import io
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Case", "base_model", "write_cases"]

#: A budget-busting element count that also exceeds any machine's RAM (4 PiB of float32).
HUGE = (1 << 20, 1 << 20, 1 << 10)


@dataclass(frozen=True)
class Case:
    """One hostile input.

    ``kind``: ``model`` (the model argument), ``data`` (``--calib``/``--data``), ``labels``,
    ``recipe`` or ``option`` (extra command-line arguments in ``args``).  ``must_fail``: every
    command must exit 2 with one line; otherwise exit 0 with a correct result is allowed too.
    ``fails_for``: commands that must fail even though ``must_fail`` is false.
    """

    name: str
    kind: str
    path: Path
    must_fail: bool = True
    fails_for: tuple[str, ...] = ()
    args: tuple[str, ...] = field(default=())


# ------------------------------------------------------------------------------------------ models


def base_model() -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: every command works on it."""
    rng = np.random.default_rng(0)

    def init(name: str, shape: tuple[int, ...]) -> TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "hostile_base",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [init("w1", (8, 3, 3, 3)), init("b1", (8,)), init("w2", (16, 8, 3, 3)), init("b2", (16,)),
         init("fc.weight", (10, 16)), init("fc.bias", (10,))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _init(model: onnx.ModelProto, name: str) -> TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _as_coo(model: onnx.ModelProto, values: list[float], indices: np.ndarray,
            dims: tuple[int, ...] = (10, 16)) -> onnx.ModelProto:
    """``fc.weight`` as an ONNX COO ``sparse_initializer`` with the given parts."""
    graph = model.graph
    graph.initializer.remove(_init(model, "fc.weight"))
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.asarray(values, dtype=np.float32), "fc.weight"),
        numpy_helper.from_array(np.asarray(indices, dtype=np.int64), "fc.weight_indices"),
        list(dims),
    )
    graph.sparse_initializer.append(sparse)
    return model


def _raw_short(m: onnx.ModelProto) -> None:
    w = _init(m, "w2")
    w.raw_data = w.raw_data[: 250 * 4]  # 250 floats for a [16, 8, 3, 3] weight


def _raw_long(m: onnx.ModelProto) -> None:
    w = _init(m, "w2")
    w.raw_data = w.raw_data + b"\0" * 64


def _huge_dims(m: onnx.ModelProto) -> None:
    w = _init(m, "fc.weight")
    del w.dims[:]
    w.dims.extend([1 << 40, 1 << 20])


def _negative_dims(m: onnx.ModelProto) -> None:
    w = _init(m, "fc.weight")
    del w.dims[:]
    w.dims.extend([-10, -16])


def _undefined_dtype(m: onnx.ModelProto) -> None:
    _init(m, "fc.bias").data_type = TensorProto.UNDEFINED


def _dangling(m: onnx.ModelProto) -> None:
    _node(m, "relu2").input[0] = "produced_by_nobody"


def _cycle(m: onnx.ModelProto) -> None:
    _node(m, "conv2").input[0] = "r2"  # conv2 <- relu2 <- conv2


def _empty_op(m: onnx.ModelProto) -> None:
    _node(m, "relu1").op_type = ""


def _output_unproduced(m: onnx.ModelProto) -> None:
    m.graph.output.append(helper.make_tensor_value_info("ghost", TensorProto.FLOAT, [1]))


def _duplicate_init(m: onnx.ModelProto) -> None:
    m.graph.initializer.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias"))


def _attr_wrong_type(m: onnx.ModelProto) -> None:
    conv = _node(m, "conv1")
    conv.attribute.remove(next(a for a in conv.attribute if a.name == "pads"))
    conv.attribute.append(helper.make_attribute("pads", [1.0, 1.0, 1.0, 1.0]))


def _ml_opset_99(m: onnx.ModelProto) -> None:
    m.opset_import.append(helper.make_opsetid("ai.onnx.ml", 99))


def _negative_opset(m: onnx.ModelProto) -> None:
    m.opset_import[0].version = -1


def _custom_op(m: onnx.ModelProto) -> None:
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    m.graph.node.append(helper.make_node("Mystery", ["x"], ["extra"], name="mystery", domain="com.example"))
    m.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["batch", 3, 8, 8]))


def _nonfinite_weights(m: onnx.ModelProto) -> None:
    w = _init(m, "w2")
    array = numpy_helper.to_array(w).copy()
    array[0, 0, 0, 0], array[1, 0, 0, 0] = np.nan, np.inf
    w.CopyFrom(numpy_helper.from_array(array, "w2"))


def _constant_of_shape(m: onnx.ModelProto) -> None:
    m.graph.initializer.append(numpy_helper.from_array(np.array([100000, 100000], np.int64), "big_shape"))
    m.graph.node.append(helper.make_node("ConstantOfShape", ["big_shape"], ["big"], name="make_big"))
    m.graph.output.append(helper.make_tensor_value_info("big", TensorProto.FLOAT, [100000, 100000]))


def _storage_not_json(m: onnx.ModelProto) -> None:
    helper.set_model_props(m, {"onnxsparse.storage": "{'tensors': not json"})


MODEL_CASES: dict[str, Callable[[onnx.ModelProto], None | onnx.ModelProto]] = {
    "init_raw_short": _raw_short,
    "init_raw_long": _raw_long,
    "init_huge_dims": _huge_dims,
    "init_negative_dims": _negative_dims,
    "init_undefined_dtype": _undefined_dtype,
    "coo_out_of_range": lambda m: _as_coo(m, [1.0, 2.0, 3.0], np.array([0, 5, 999])),
    "coo_negative_index": lambda m: _as_coo(m, [1.0, 2.0, 3.0], np.array([0, -1, 5])),
    "coo_length_mismatch": lambda m: _as_coo(m, [1.0, 2.0, 3.0], np.array([0, 1, 2, 3])),
    "coo_huge_dense": lambda m: _as_coo(m, [1.0, 2.0, 3.0], np.array([0, 1, 2]), HUGE),
    "dangling_input": _dangling,
    "cycle": _cycle,
    "empty_op_type": _empty_op,
    "output_unproduced": _output_unproduced,
    "duplicate_initializer": _duplicate_init,
    "attribute_wrong_type": _attr_wrong_type,
    "ml_opset_99": _ml_opset_99,
    "negative_opset": _negative_opset,
    "constant_of_shape_huge": _constant_of_shape,
    "storage_not_json": _storage_not_json,
}


def _external_short(folder: Path) -> Path:
    """``w1`` in an external file whose declared ``length`` is shorter than its dims need."""
    model = base_model()
    w = _init(model, "w1")
    (folder / "external_short.data").write_bytes(w.raw_data)
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "external_short.data"), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "external_length_short.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _storage_bad_columns(folder: Path) -> Path:
    """A model sparsified to CSR by onnxsparse whose stored column indices point past the row."""
    import json

    from onnxsparse.cli import main

    sparse = folder / "_csr_source.onnx"
    base = folder / "_base_for_csr.onnx"
    base.write_bytes(base_model().SerializeToString())
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["sparsify", str(base), "-o", str(sparse), "--sparsity", "0.8", "--format", "csr",
                     "--min-size", "1", "-q", "--force"])
    assert code == 0, "could not build the CSR model the case corrupts"
    model = onnx.load(str(sparse))
    meta = json.loads(next(p.value for p in model.metadata_props if p.key == "onnxsparse.storage"))
    spec = next(s for s in meta["tensors"].values() if "col_indices" in s["inputs"])
    cols = _init(model, spec["inputs"]["col_indices"])
    array = numpy_helper.to_array(cols).copy()
    array.reshape(-1)[0] = np.iinfo(array.dtype).max
    cols.CopyFrom(numpy_helper.from_array(array, cols.name))
    path = folder / "storage_bad_columns.onnx"
    path.write_bytes(model.SerializeToString())
    sparse.unlink()
    base.unlink()
    return path


# -------------------------------------------------------------------------------------------- data


def good_data(samples: int = 4) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((samples, 3, 8, 8)).astype(np.float32)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz_with_member(path: Path, member: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", member)


def _header_only(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _write_data_cases(folder: Path) -> list[Case]:
    cases: list[Case] = []

    def npz(name: str, must_fail: bool = True, **arrays: np.ndarray) -> None:
        path = folder / f"{name}.npz"
        np.savez(path, **arrays)
        cases.append(Case(name, "data", path, must_fail))

    nan = good_data()
    nan[0, 0, 0, 0] = np.nan
    inf = good_data()
    inf[1, 2, 3, 4] = np.inf
    npz("data_nan", x=nan)
    npz("data_inf", x=inf)
    npz("data_scalar", x=np.float32(1.0))
    npz("data_zero_samples", x=np.zeros((0, 3, 8, 8), np.float32))

    good = folder / "_good_for_truncation.npz"
    np.savez(good, x=good_data())
    truncated = folder / "data_truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    cases.append(Case("data_truncated", "data", truncated))

    header_only = folder / "data_header_only.npz"
    _npz_with_member(header_only, _header_only((4, 3, 8, 8)))
    cases.append(Case("data_header_only", "data", header_only))

    huge = folder / "data_huge_header.npz"
    _npz_with_member(huge, _header_only((1 << 46,)))
    cases.append(Case("data_huge_header", "data", huge))

    plain = folder / "data_plain.npy"
    plain.write_bytes(_npy_bytes(good_data()))
    cases.append(Case("data_plain_npy", "data", plain, must_fail=False))

    mixed = folder / "data_folder_mismatch"
    mixed.mkdir()
    np.savez(mixed / "a.npz", x=good_data())
    np.savez(mixed / "b.npz", x=good_data()[:, :, :4, :4])
    cases.append(Case("data_folder_mismatch", "data", mixed))

    labels = good_data().sum(axis=(1, 2, 3)) > 0
    nan_labels = labels.astype(np.float32)
    nan_labels[2] = np.nan
    path = folder / "labels_nan.npy"
    np.save(path, nan_labels)
    cases.append(Case("labels_nan", "labels", path))
    return cases


# ------------------------------------------------------------------------------- recipes and options


def _write_recipe_cases(folder: Path) -> list[Case]:
    huge_int = folder / "recipe_huge_int.yaml"
    huge_int.write_text("steps:\n  - prune: {channels: " + "9" * 5000 + "}\n", encoding="utf-8")
    deep = folder / "recipe_deep.yaml"
    deep.write_text("steps:\n  - prune: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    return [Case("recipe_huge_int", "recipe", huge_int), Case("recipe_deep", "recipe", deep)]


def _option_cases(folder: Path) -> list[Case]:
    return [
        Case("damp_nan", "option", folder, args=("prune", "--calib", "{data}", "--repair", "lstsq",
                                                 "--damp", "nan")),
        Case("block_huge", "option", folder, must_fail=False,
             args=("sparsify", "--pattern", "block:1000000000x1000000000")),
    ]


# --------------------------------------------------------------------------------------------- all


def write_cases(folder: Path) -> list[Case]:
    """Write every case (and ``base.onnx``, ``data.npz``, ``labels.npy``, ``recipe.yaml``) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.onnx").write_bytes(base_model().SerializeToString())
    np.savez(folder / "data.npz", x=good_data())
    np.save(folder / "labels.npy", (good_data().sum(axis=(1, 2, 3)) > 0).astype(np.int64))
    (folder / "recipe.yaml").write_text("steps:\n  - prune: {channels: 0.25}\n", encoding="utf-8")

    cases: list[Case] = []
    for name, mutate in MODEL_CASES.items():
        model = _copy(base_model())
        model = mutate(model) or model
        path = folder / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        cases.append(Case(name, "model", path))
    cases.append(Case("external_length_short", "model", _external_short(folder)))
    cases.append(Case("storage_bad_columns", "model", _storage_bad_columns(folder)))

    custom = _copy(base_model())
    _custom_op(custom)
    (folder / "custom_domain_op.onnx").write_bytes(custom.SerializeToString())
    cases.append(Case("custom_domain_op", "model", folder / "custom_domain_op.onnx", must_fail=False))

    nonfinite = _copy(base_model())
    _nonfinite_weights(nonfinite)
    (folder / "nonfinite_weights.onnx").write_bytes(nonfinite.SerializeToString())
    cases.append(Case("nonfinite_weights", "model", folder / "nonfinite_weights.onnx", must_fail=False,
                      fails_for=("quantize",)))

    cases += _write_data_cases(folder)
    cases += _write_recipe_cases(folder)
    cases += _option_cases(folder)
    return cases


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile_cases")
    for case in write_cases(out):
        print(f"{case.kind:7s} {case.name:24s} {case.path}")
