"""Model I/O: lossless load/save round trips, external data, and every refusal."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from helpers import SAMPLES, random_feeds, run, sample, session
from onnxsparse.errors import ModelLoadError, ModelSaveError
from onnxsparse.io import load_model, load_proto, max_runtime_ir_version, model_file_bytes, save_model

SAMPLE_NAMES = sorted(p.stem for p in SAMPLES.glob("*.onnx"))


def feeds_for(path: Path) -> list[dict[str, np.ndarray]]:
    """Two input sets: random, and the same with every sign flipped (if_model takes both branches)."""
    feeds = random_feeds(path, batch=2, seed=0)
    flipped = {k: (-v if v.dtype.kind == "f" else v) for k, v in feeds.items()}
    return [feeds, flipped]


def assert_same_outputs(a, b, feeds_list) -> None:
    sa, sb = session(a), session(b)
    assert [o.name for o in sa.get_outputs()] == [o.name for o in sb.get_outputs()]
    for feeds in feeds_list:
        for x, y in zip(run(sa, feeds), run(sb, feeds)):
            np.testing.assert_array_equal(x, y)


def external_copy(src: Path, folder: Path, location: str = "weights.data") -> Path:
    """``src`` saved by onnx with every tensor in one external data file."""
    proto = onnx.load(str(src))
    out = folder / src.name
    onnx.save_model(proto, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return out


def set_locations(model_path: Path, location: str) -> None:
    """Rewrite every external-data location in the model file (no data is moved)."""
    proto = onnx.load(str(model_path), load_external_data=False)
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    model_path.write_bytes(proto.SerializeToString())


def test_samples_exist() -> None:
    assert len(SAMPLE_NAMES) >= 9, SAMPLE_NAMES


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_round_trip_outputs_identical(name: str, tmp_path: Path) -> None:
    src = sample(name)
    model = load_model(src)
    out = save_model(model, tmp_path / f"{name}.onnx", protect=(src,))
    assert out.exists() and not (tmp_path / f"{name}.onnx.data").exists()
    saved = onnx.load(str(out))
    assert saved.ir_version <= max_runtime_ir_version()
    assert [i.name for i in saved.graph.input] == [i.name for i in onnx.load(str(src)).graph.input]
    assert_same_outputs(src, out, feeds_for(src))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnxsparse-")]


@pytest.mark.parametrize("name", ["resnet_mini", "if_model", "transformer_encoder"])
def test_round_trip_with_external_data(name: str, tmp_path: Path) -> None:
    src = sample(name)
    out = save_model(load_model(src), tmp_path / "ext.onnx", external_data=True)
    data = tmp_path / "ext.onnx.data"
    assert data.is_file() and data.stat().st_size > 0
    proto = onnx.load(str(out), load_external_data=False)
    external = [t for t in onnx.external_data_helper._get_all_tensors(proto)
                if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external, "no tensor was written as external data"
    assert model_file_bytes(out) == out.stat().st_size + data.stat().st_size
    assert_same_outputs(src, out, feeds_for(src))
    # ... and loading the external-data model back and saving it inline is lossless too.
    back = save_model(load_model(out), tmp_path / "inline.onnx", external_data=False)
    assert not (tmp_path / "inline.onnx.data").exists()
    assert_same_outputs(src, back, feeds_for(src))


def test_load_external_data_written_by_onnx(tmp_path: Path) -> None:
    src = sample("resnet_mini")
    ext = external_copy(src, tmp_path)
    model = load_model(ext)
    external = [v for v in model.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]
    assert external, "weights should stay external (memory-mapped) after load"
    assert_same_outputs(src, ir.external_data.load_to_model(model), feeds_for(src))
    assert load_proto(ext, load_external=True).graph.initializer[0].HasField("raw_data")


def test_load_from_bytes_and_proto() -> None:
    src = sample("resnet_mini")
    from_bytes = load_model(src.read_bytes())
    from_proto = load_model(onnx.load(str(src)))
    assert isinstance(from_bytes, ir.Model) and isinstance(from_proto, ir.Model)
    assert_same_outputs(src, from_bytes, feeds_for(src))
    assert_same_outputs(src, from_proto, feeds_for(src))
    assert load_model(from_proto) is from_proto


def test_sparse_initializer_is_densified() -> None:
    dense = np.zeros((4, 6), np.float32)
    dense[1, 2], dense[3, 5] = 1.5, -2.0
    idx = np.flatnonzero(dense).astype(np.int64)
    values = onnx.numpy_helper.from_array(dense.reshape(-1)[idx], "w")
    sparse = onnx.helper.make_sparse_tensor(values, onnx.numpy_helper.from_array(idx, "w_idx"), [4, 6])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 6])],
        sparse_initializer=[sparse],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = load_model(proto.SerializeToString())
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(), dense)


# --------------------------------------------------------------------------- load refusals


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nope.onnx")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="directory"):
        load_model(tmp_path)


@pytest.mark.parametrize("payload", [b"", b"hello world, not onnx\n", bytes(range(256)) * 4])
def test_not_onnx(payload: bytes, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(payload)
    with pytest.raises(ModelLoadError, match="empty|not a valid ONNX model"):
        load_model(bad)


@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_truncated(fraction: float, tmp_path: Path) -> None:
    data = sample("resnet_mini").read_bytes()
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load_model(bad)


def test_ir_version_too_new(tmp_path: Path) -> None:
    proto = onnx.load(str(sample("resnet_mini")))
    proto.ir_version = onnx.IR_VERSION + 1
    bad = tmp_path / "new.onnx"
    bad.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match=f"IR version {onnx.IR_VERSION + 1} is newer"):
        load_model(bad)


def test_opset_too_new(tmp_path: Path) -> None:
    proto = onnx.load(str(sample("resnet_mini")))
    proto.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    bad = tmp_path / "new.onnx"
    bad.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match="opset"):
        load_model(bad)


@pytest.mark.parametrize("location", ["/etc/passwd", "../weights.data", "sub/../../weights.data"])
def test_external_data_escaping_folder(location: str, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    ext = external_copy(sample("resnet_mini"), folder)
    os.replace(folder / "weights.data", tmp_path / "weights.data")  # the target really exists
    set_locations(ext, location)
    with pytest.raises(ModelLoadError, match="absolute path|escapes the model's folder"):
        load_model(ext)


def test_external_data_symlink_escaping_folder(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    ext = external_copy(sample("resnet_mini"), folder)
    os.replace(folder / "weights.data", tmp_path / "weights.data")
    (folder / "weights.data").symlink_to(tmp_path / "weights.data")
    with pytest.raises(ModelLoadError, match="escapes the model's folder"):
        load_model(ext)


def test_external_data_missing(tmp_path: Path) -> None:
    ext = external_copy(sample("resnet_mini"), tmp_path)
    (tmp_path / "weights.data").unlink()
    with pytest.raises(ModelLoadError, match="external data file missing: weights.data"):
        load_model(ext)


def test_external_data_too_short(tmp_path: Path) -> None:
    ext = external_copy(sample("resnet_mini"), tmp_path)
    data = tmp_path / "weights.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="too short"):
        load_model(ext)


def test_external_data_from_bytes_refused(tmp_path: Path) -> None:
    ext = external_copy(sample("resnet_mini"), tmp_path)
    with pytest.raises(ModelLoadError, match="external data"):
        load_model(ext.read_bytes())


# --------------------------------------------------------------------------- save refusals


def test_save_refuses_input_path(tmp_path: Path) -> None:
    src = tmp_path / "model.onnx"
    src.write_bytes(sample("resnet_mini").read_bytes())
    before = src.read_bytes()
    model = load_model(src)
    for target in (src, tmp_path / "." / "model.onnx"):
        with pytest.raises(ModelSaveError, match="refusing to overwrite the input"):
            save_model(model, target, protect=(src,), force=True)
    link = tmp_path / "link.onnx"
    link.symlink_to(src)
    with pytest.raises(ModelSaveError, match="refusing to overwrite the input"):
        save_model(model, link, protect=(src,), force=True)
    assert src.read_bytes() == before


def test_save_refuses_existing_output_without_force(tmp_path: Path) -> None:
    model = load_model(sample("resnet_mini"))
    out = tmp_path / "out.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(ModelSaveError, match="already exists"):
        save_model(model, out)
    assert out.read_bytes() == b"keep me"
    save_model(model, out, force=True)
    assert_same_outputs(sample("resnet_mini"), out, feeds_for(sample("resnet_mini")))


def test_save_into_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelSaveError, match="does not exist"):
        save_model(load_model(sample("resnet_mini")), tmp_path / "no" / "out.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("external", [False, True])
def test_failed_save_leaves_nothing(external: bool, tmp_path: Path, monkeypatch) -> None:
    model = load_model(sample("resnet_mini"))
    real_save = ir.save

    def failing_save(m, path, *args, **kwargs):
        real_save(m, path, *args, **kwargs)  # write the files completely, then fail
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ir, "save", failing_save)
    with pytest.raises(ModelSaveError, match="cannot write .*No space left"):
        save_model(model, tmp_path / "out.onnx", external_data=external)
    assert list(tmp_path.iterdir()) == []


def test_failed_final_rename_leaves_no_data_file(tmp_path: Path, monkeypatch) -> None:
    """The model rename is the commit point: if it fails, the moved data file goes too."""
    import onnxsparse.io as io_mod

    model = load_model(sample("resnet_mini"))
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("out.onnx"):
            raise OSError(13, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", replace)
    with pytest.raises(ModelSaveError, match="Permission denied"):
        save_model(model, tmp_path / "out.onnx", external_data=True)
    assert list(tmp_path.iterdir()) == []


def test_failed_forced_overwrite_keeps_old_model_and_data(tmp_path: Path, monkeypatch) -> None:
    import onnxsparse.io as io_mod

    src = sample("resnet_mini")
    out = save_model(load_model(src), tmp_path / "out.onnx", external_data=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = os.replace

    def replace(a, b):
        if str(b).endswith("out.onnx"):
            raise OSError(13, "Permission denied")
        return real_replace(a, b)

    monkeypatch.setattr(io_mod.os, "replace", replace)
    with pytest.raises(ModelSaveError):
        save_model(load_model(sample("densenet_block")), out, external_data=True, force=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
