"""Hostile and malformed input for every command: one line on stderr, exit 2, nothing written.

Every command that reads a model is run on: a missing file, a directory, a
truncated file, random bytes, an IR version and an opset newer than supported,
external data with ``../`` and absolute locations, and a missing external data
file.  Commands that write a model are also run with the output equal to the
input, in a folder that does not exist, and on an existing file without
``--force``; commands that only report get a ``--report`` in a missing folder.
Each case must exit with code 2 and print exactly one line (``onnxsparse:
error: ...``) on stderr, no traceback; no output file appears and the input
file is unchanged.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import cli, sample
from onnx import TensorProto, helper, numpy_helper

#: command -> argv builder (model, output path, second good model)
COMMANDS: dict[str, Callable[[Path, Path, Path], list[str]]] = {
    "inspect": lambda m, o, g: ["inspect", str(m)],
    "prune": lambda m, o, g: ["prune", str(m), "-o", str(o), "--channels", "0.3"],
    "sparsify": lambda m, o, g: ["sparsify", str(m), "-o", str(o), "--sparsity", "0.5"],
    "sensitivity": lambda m, o, g: ["sensitivity", str(m), "--calib", "random"],
    "densify": lambda m, o, g: ["densify", str(m), "-o", str(o)],
    "quantize": lambda m, o, g: ["quantize", str(m), "-o", str(o), "--mode", "dynamic"],
    "validate": lambda m, o, g: ["validate", str(g), str(m), "--runs", "1", "--warmup", "0", "--no-memory"],
    "bench": lambda m, o, g: ["bench", str(m), "--runs", "1", "--warmup", "0", "--no-memory"],
    "run": lambda m, o, g: ["run", "preset:smallest-file", str(m), "-o", str(o)],
}
WRITERS = ("prune", "sparsify", "densify", "quantize", "run")
REPORTERS = ("inspect", "validate", "bench")
INPUT_CASES = (
    "missing", "directory", "truncated", "random_bytes", "empty", "ir_too_new", "opset_too_new",
    "external_dotdot", "external_absolute", "external_missing", "external_short",
    "external_nul", "external_offset_text", "external_length_negative", "external_symlink_out",
    "sparse_external_cwd", "sparse_indices_dotdot", "constant_external_dotdot", "sparse_constant_absolute",
    "subgraph_external_dotdot", "function_external_absolute", "fifo", "dev_zero",
)  # fmt: skip
OUTPUT_CASES = ("output_is_input", "output_folder_missing", "output_exists")


def _small_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "conv.weight")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "conv2.weight")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "conv.weight"], ["h"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "conv2.weight"], ["y"], name="conv2")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [w, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _external(model: onnx.ModelProto, location: str, length: int | None = None) -> onnx.ModelProto:
    """``model`` with conv.weight pointing at external ``location``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    tensor = next(t for t in out.graph.initializer if t.name == "conv.weight")
    size = len(tensor.raw_data) or 8 * 27 * 4
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", str(length or size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return out


def _set_external(tensor: TensorProto, location: str, offset: str = "0", length: str | None = None) -> None:
    """Make ``tensor`` point at ``location`` instead of holding its bytes."""
    size = len(tensor.raw_data) or 4 * int(np.prod(tensor.dims))
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.ClearField("int64_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length or str(size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _sparse_weight(location_values: str | None, location_indices: str | None) -> onnx.ModelProto:
    """The small model with conv2.weight stored as an ONNX COO ``sparse_initializer``."""
    model = _small_model()
    dense = next(t for t in model.graph.initializer if t.name == "conv2.weight")
    array = numpy_helper.to_array(dense)
    model.graph.initializer.remove(dense)
    flat = np.flatnonzero(array)
    values = numpy_helper.from_array(array.reshape(-1)[flat], "conv2.weight")
    indices = numpy_helper.from_array(flat.astype(np.int64), "conv2.weight.indices")
    if location_values:
        _set_external(values, location_values)
    if location_indices:
        _set_external(indices, location_indices)
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(array.shape)))
    return model


def _with_constant(model: onnx.ModelProto, attribute: onnx.AttributeProto) -> onnx.ModelProto:
    """``model`` plus an unused Constant node carrying ``attribute``."""
    node = helper.make_node("Constant", [], ["unused_const"], name="const")
    node.attribute.append(attribute)
    model.graph.node.append(node)
    return model


def _make_input(case: str, folder: Path) -> Path:
    """Write the hostile input for ``case`` into ``folder``; returns the path given to the command."""
    good = _small_model()
    path = folder / "model.onnx"
    if case == "missing":
        return folder / "does_not_exist.onnx"
    if case == "directory":
        path = folder / "a_folder.onnx"
        path.mkdir()
        return path
    if case == "truncated":
        data = good.SerializeToString()
        path.write_bytes(data[: len(data) // 2])
    elif case == "random_bytes":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "ir_too_new":
        good.ir_version = onnx.IR_VERSION + 5
        path.write_bytes(good.SerializeToString())
    elif case == "opset_too_new":
        good.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
        path.write_bytes(good.SerializeToString())
    elif case == "external_dotdot":
        (folder.parent / "outside.data").write_bytes(b"\0" * 4096)
        path.write_bytes(_external(good, "../outside.data").SerializeToString())
    elif case == "external_absolute":
        (folder / "abs.data").write_bytes(b"\0" * 4096)
        path.write_bytes(_external(good, str((folder / "abs.data").resolve())).SerializeToString())
    elif case == "external_missing":
        path.write_bytes(_external(good, "weights.data").SerializeToString())
    elif case == "external_short":
        (folder / "weights.data").write_bytes(b"\0" * 16)
        path.write_bytes(_external(good, "weights.data").SerializeToString())
    elif case in ("external_nul", "external_offset_text", "external_length_negative"):
        (folder / "weights.data").write_bytes(b"\0" * 4096)
        model = _external(good, "weights.data\0.x" if case == "external_nul" else "weights.data")
        entries = {e.key: e for e in model.graph.initializer[0].external_data}
        if case == "external_offset_text":
            entries["offset"].value = "12abc"
        elif case == "external_length_negative":
            entries["length"].value = "-8"
        path.write_bytes(model.SerializeToString())
    elif case == "external_symlink_out":
        (folder.parent / "outside.data").write_bytes(b"\0" * 4096)
        (folder / "link.data").symlink_to(folder.parent / "outside.data")
        path.write_bytes(_external(good, "link.data").SerializeToString())
    elif case == "sparse_external_cwd":
        # the values' file exists only in the working directory (the test's cwd): never read from there
        path.write_bytes(_sparse_weight("cwd_only.data", None).SerializeToString())
    elif case == "sparse_indices_dotdot":
        (folder.parent / "outside.data").write_bytes(b"\0" * 4096)
        path.write_bytes(_sparse_weight(None, "../outside.data").SerializeToString())
    elif case == "constant_external_dotdot":
        (folder.parent / "outside.data").write_bytes(b"\0" * 4096)
        tensor = numpy_helper.from_array(np.ones(16, np.float32), "c")
        _set_external(tensor, "../outside.data")
        path.write_bytes(_with_constant(good, helper.make_attribute("value", tensor)).SerializeToString())
    elif case == "sparse_constant_absolute":
        (folder / "abs.data").write_bytes(b"\0" * 4096)
        values = numpy_helper.from_array(np.ones(2, np.float32), "sv")
        _set_external(values, str((folder / "abs.data").resolve()))
        sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0, 3], np.int64), "si"), [4])
        path.write_bytes(_with_constant(good, helper.make_attribute("sparse_value", sparse)).SerializeToString())
    elif case == "subgraph_external_dotdot":
        (folder.parent / "outside.data").write_bytes(b"\0" * 4096)
        inner = numpy_helper.from_array(np.ones(4, np.float32), "inner_w")
        _set_external(inner, "../outside.data")
        branch = helper.make_graph([helper.make_node("Identity", ["inner_w"], ["b"])], "branch", [],
                                   [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])], [inner])
        good.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
        good.graph.node.append(helper.make_node("If", ["cond"], ["unused_if"], then_branch=branch, else_branch=branch))
        path.write_bytes(good.SerializeToString())
    elif case == "function_external_absolute":
        (folder / "abs.data").write_bytes(b"\0" * 4096)
        tensor = numpy_helper.from_array(np.ones(4, np.float32), "fc")
        _set_external(tensor, str((folder / "abs.data").resolve()))
        const = helper.make_node("Constant", [], ["y"], value=tensor)
        good.functions.append(helper.make_function("local", "F", [], ["y"], [const], [helper.make_opsetid("", 17)]))
        good.opset_import.append(helper.make_opsetid("local", 1))
        path.write_bytes(good.SerializeToString())
    elif case == "fifo":
        path = folder / "pipe.onnx"
        os.mkfifo(path)  # opening it would block until a writer comes: must be refused before open
        return path
    elif case == "dev_zero":
        return Path("/dev/zero")
    else:  # pragma: no cover
        raise AssertionError(case)
    return path


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def _assert_one_line_error(code: int, out: str, err: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("onnxsparse: error: "), err
    assert "Traceback" not in err and "internal error" not in err


def test_every_registered_command_is_covered() -> None:
    from onnxsparse.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) <= set(COMMANDS), set(sub.choices) - set(COMMANDS)
    assert {"inspect", "prune", "sparsify", "densify", "quantize", "validate", "bench", "run"} <= set(sub.choices)


@pytest.mark.parametrize("case", INPUT_CASES)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_input(command: str, case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "cwd_only.data").write_bytes(b"\0" * 4096)
    monkeypatch.chdir(cwd)
    model = _make_input(case, folder)
    good = folder / "good.onnx"
    good.write_bytes(_small_model().SerializeToString())
    out = folder / "out.onnx"
    before = _snapshot(tmp_path)
    code, stdout, err = cli(*COMMANDS[command](model, out, good))
    _assert_one_line_error(code, stdout, err)
    assert _snapshot(tmp_path) == before, "a file was written or changed"


def test_hostile_inputs_are_valid_otherwise(tmp_path: Path) -> None:
    """The sparse / subgraph / function cases fail for their external data alone: with the data
    inside the model's folder the same structures load."""
    from onnxsparse.io import load_proto

    model = _sparse_weight("values.data", None)
    values = model.graph.sparse_initializer[0].values
    raw = numpy_helper.to_array(next(t for t in _small_model().graph.initializer if t.name == "conv2.weight"))
    (tmp_path / "values.data").write_bytes(raw.reshape(-1).astype(np.float32).tobytes())
    assert int(values.external_data[2].value) == raw.size * 4
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    proto = load_proto(tmp_path / "m.onnx")
    dense = next(t for t in proto.graph.initializer if t.name == "conv2.weight")
    np.testing.assert_array_equal(numpy_helper.to_array(dense), raw)


@pytest.mark.parametrize("case", OUTPUT_CASES)
@pytest.mark.parametrize("command", WRITERS)
def test_bad_output(command: str, case: str, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    source = sample("resnet_mini") if command != "densify" else None
    model.write_bytes(source.read_bytes() if source else _small_model().SerializeToString())
    if case == "output_is_input":
        out = model
    elif case == "output_folder_missing":
        out = tmp_path / "no" / "such" / "folder" / "out.onnx"
    else:
        out = tmp_path / "out.onnx"
        out.write_bytes(b"keep me")
    before = _snapshot(tmp_path)
    code, stdout, err = cli(*COMMANDS[command](model, out, model))
    _assert_one_line_error(code, stdout, err)
    assert _snapshot(tmp_path) == before, "a file was written or changed"


@pytest.mark.parametrize("command", [
    *REPORTERS,
])
def test_report_in_missing_folder(command: str, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(_small_model().SerializeToString())
    before = _snapshot(tmp_path)
    report = tmp_path / "missing" / "report.json"
    code, stdout, err = cli(*COMMANDS[command](model, tmp_path / "o.onnx", model), "--report", str(report))
    _assert_one_line_error(code, stdout, err)
    assert _snapshot(tmp_path) == before


def test_small_model_is_valid() -> None:
    """The base of every hostile case is itself a good model (so the errors are the hostile part)."""
    onnx.checker.check_model(_small_model(), full_check=True)
    code, out, err = cli("inspect", "--json", "-")  # "-" is not a file either: still one line
    assert code == 2 and len(err.strip().splitlines()) == 1
