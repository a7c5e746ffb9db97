"""``onnxsparse bench``: one row per model x provider x threads x batch, JSON layout, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto

from helpers import cli, sample
from onnxsparse.validate import bench
from test_validate_support import DIGITS_X, tiny_model

ROW_KEYS = {"model", "provider", "ep", "device", "threads", "batch", "available", "reason", "active_providers",
            "session_seconds", "session_samples_s", "latency", "memory", "memory_note"}


def test_cli_table_has_every_configuration():
    code, out, err = cli("bench", sample("digits_cnn"), sample("resnet_mini"), "--threads", "1,2", "--batch", "1,4",
                         "--runs", "3", "--warmup", "0", "--no-memory", "-q")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.startswith("/") or line.startswith("samples/")]
    table = [r for r in rows if len(r) > 5]
    assert len(table) == 2 * 2 * 2
    configs = {(r[0].rsplit("/", 1)[-1], r[2], r[3]) for r in table}
    assert configs == {(m, t, b) for m in ("digits_cnn.onnx", "resnet_mini.onnx") for t in "12" for b in "14"}
    assert all(r[4] == "ok" for r in table)


def test_json_rows_and_throughput():
    code, out, err = cli("bench", sample("digits_cnn"), "--batch", "2", "--runs", "4", "--warmup", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["schema"] == "onnxsparse.bench/1" and len(data["rows"]) == 1
    (row,) = data["rows"]
    assert set(row) == ROW_KEYS
    lat = row["latency"]
    assert lat["batch"] == 2 and lat["runs"] == 4 and len(lat["samples_ms"]) == 4
    assert lat["throughput"] == pytest.approx(2 * 1000 / float(np.median(lat["samples_ms"])), rel=1e-9)
    assert lat["stopped_by"] == "runs" and lat["budget_seconds"] is None
    assert data["settings"]["runs"] == 4 and data["settings"]["budget_seconds"] is None
    assert row["memory"]["session_bytes"] > 0  # memory is on by default
    assert data["models"][0]["file_bytes"] == sample("digits_cnn").stat().st_size


def test_data_file_and_fixed_batch_rows(tmp_path):
    fixed = tiny_model(tmp_path / "fixed.onnx", inputs=(("x", TensorProto.FLOAT, [1, 4]),))
    result = bench([fixed], batches="1,2", runs=2, warmup=0, memory=False)
    one, two = result.rows
    assert one.available and one.latency.batch == 1
    assert not two.available and "fixed batch size of 1" in two.reason
    assert "cpu: 1 row(s) not measured: model has a fixed batch size of 1" in result.notes
    data = bench([sample("digits_cnn")], data=DIGITS_X, samples=5, batches=8, runs=2, warmup=0, memory=False)
    assert data.rows[0].latency.batch == 8  # 5 samples repeated to fill the batch


@pytest.mark.parametrize("args, message", [
    (("--threads", "0"), "--threads: values must be >= 1"),
    (("--batch", "x"), "--batch: expected integers like 1,2,4"),
    (("--providers", "nope"), "unknown execution provider"),
    (("--report", "b.txt"), "unknown report format"),
])
def test_bad_input_exits_2(args, message):
    code, _, err = cli("bench", sample("digits_cnn"), *args, "--runs", "1", "--no-memory")
    assert code == 2 and message in err


def test_models_with_different_inputs_are_timed_together(tmp_path):
    other = tiny_model(tmp_path / "tiny.onnx", inputs=(("x", TensorProto.FLOAT, ["N", 4]),))
    result = bench([sample("digits_cnn"), other], runs=3, warmup=0, memory=False)
    assert [r.model for r in result.rows] == [str(sample("digits_cnn")), str(other)]
    assert all(r.available and r.latency.runs == 3 for r in result.rows)
    assert result.models[1].inputs == [{"name": "x", "dtype": "float32", "shape": ["N", 4]}]


def test_model_that_needs_a_shape_says_so():
    code, _, err = cli("bench", sample("lstm"), "--runs", "1", "--no-memory")
    assert code == 2 and "--shape input=" in err
    code, out, err = cli("bench", sample("lstm"), "--shape", "input=1x5x8", "--runs", "2", "--no-memory", "--json")
    assert code == 0, err
    assert json.loads(out)["rows"][0]["latency"]["runs"] == 2
    assert np.isfinite(json.loads(out)["rows"][0]["latency"]["p50_ms"])


def test_budget_flags_reach_settings_and_rows():
    """Without --runs the loop is timed by a budget; only bounds are asserted, never speed."""
    code, out, err = cli("bench", sample("digits_cnn"), "--budget", "0.01", "--min-runs", "3", "--max-runs", "40",
                         "--warmup", "0", "--no-memory", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert {k: data["settings"][k] for k in ("runs", "budget_seconds", "min_runs", "max_runs")} == {
        "runs": None, "budget_seconds": 0.01, "min_runs": 3, "max_runs": 40}
    lat = data["rows"][0]["latency"]
    assert 3 <= lat["runs"] <= 40 and len(lat["samples_ms"]) == lat["runs"]
    assert lat["stopped_by"] in ("budget", "min_runs", "max_runs") and lat["budget_seconds"] == 0.01
    assert lat["stopped_by"] != "budget" or lat["loop_seconds"] >= 0.01
    code, _, err = cli("bench", sample("digits_cnn"), "--runs", "3", "--max-runs", "9", "--no-memory")
    assert code == 2 and "--runs fixes the number of timed runs" in err
