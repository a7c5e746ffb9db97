"""Independent tasks in-process, in worker processes and on Ray (:mod:`onnxsparse.executor`), and the
sensitivity sweep on each: same numbers bit for bit, cached evaluations not run again."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import sample

from onnxsparse.errors import UsageError
from onnxsparse.executor import (
    ExecutorSpec,
    Setup,
    TaskCache,
    default_cache_dir,
    parse_executor,
    run_tasks,
)
from onnxsparse.passes.sensitivity import sensitivity

TRANSFORMER = sample("digits_transformer")
SHAPES = {"input": (1, 7, 8)}


def _state(offset: int) -> dict:
    return {"offset": offset, "pid": os.getpid()}


def _add(state: dict, task: int) -> list:
    return [task + state["offset"], state["pid"]]


def _fail_on(state: dict, task: int) -> list:
    if task == state["offset"]:
        raise RuntimeError(f"task {task} interrupted")
    return [task * 10, 0]


def test_in_process_and_processes_give_the_same_results_in_task_order() -> None:
    tasks = list(range(12))
    here = run_tasks(Setup(_state, (5,)), _add, tasks, workers=1)
    assert [r[0] for r in here] == [t + 5 for t in tasks] and {r[1] for r in here} == {os.getpid()}
    there = run_tasks(Setup(_state, (5,)), _add, tasks, workers=2)
    assert [r[0] for r in there] == [r[0] for r in here]
    pids = {r[1] for r in there}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # worker processes, state built once each


def test_auto_workers_stay_in_process_when_the_sweep_is_too_short() -> None:
    tasks = list(range(12))
    results = run_tasks(Setup(_state, (0,)), _add, tasks, workers=None, task_seconds=0.01)
    assert {r[1] for r in results} == {os.getpid()}


def test_cache_keeps_finished_tasks_and_an_interrupted_sweep_resumes(tmp_path: Path) -> None:
    keys = [f"task {t}" for t in range(6)]
    cache = TaskCache(tmp_path, "ns")
    with pytest.raises(RuntimeError, match="task 3 interrupted"):
        run_tasks(Setup(_state, (3,)), _fail_on, list(range(6)), keys=keys, cache=cache)
    assert len(list((tmp_path / "ns").glob("*.json"))) == 3  # tasks 0..2 were stored as they finished
    cache = TaskCache(tmp_path, "ns")
    # resumed: the first three come from the cache (the new offset would change them), the rest are run
    results = run_tasks(Setup(_state, (1,)), _add, list(range(6)), keys=keys, cache=cache)
    assert cache.hits == 3
    assert results[:3] == [[0, 0], [10, 0], [20, 0]] and [r[0] for r in results[3:]] == [4, 5, 6]
    again = TaskCache(tmp_path, "ns")
    assert run_tasks(Setup(_state, (99,)), _fail_on, list(range(6)), keys=keys, cache=again) == results
    assert again.hits == 6
    assert TaskCache(tmp_path, "other").get("task 0") is None


def test_default_cache_dir_honours_xdg(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "onnxsparse"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "onnxsparse"


def test_parse_executor_and_missing_ray(monkeypatch) -> None:
    assert parse_executor("local") == ExecutorSpec("local")
    assert parse_executor("ray") == ExecutorSpec("ray")
    assert parse_executor("ray:10.0.0.5:6379") == ExecutorSpec("ray", "10.0.0.5:6379")
    for bad in ("dask", "local:x", ""):
        with pytest.raises(UsageError, match="--executor"):
            parse_executor(bad)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'onnxsparse\[ray\]'"):
        run_tasks(Setup(_state, (0,)), _add, [1], executor="ray")


def _numbers(report) -> list:
    groups = [(g.id, r.ratio, r.rel_mse, r.cosine, r.per_output) for g in report.groups for r in g.results]
    blocks = [(b.id, b.rel_mse, b.cosine, b.per_output) for b in report.blocks]
    return groups + blocks


@pytest.fixture(scope="module")
def serial_report():
    return sensitivity(TRANSFORMER, "random", ratios=(0.25, 0.5), samples=8, shapes=SHAPES, workers=1)


def test_sensitivity_in_worker_processes_is_bit_identical(serial_report, tmp_path: Path) -> None:
    assert len(serial_report.blocks) == 4 and serial_report.sessions == 8 + 4
    parallel = sensitivity(TRANSFORMER, "random", ratios=(0.25, 0.5), samples=8, shapes=SHAPES, workers=2,
                           cache=tmp_path)
    assert _numbers(parallel) == _numbers(serial_report)
    assert parallel.cached == 0
    resumed = sensitivity(TRANSFORMER, "random", ratios=(0.25, 0.5), samples=8, shapes=SHAPES, workers=2,
                          cache=tmp_path)
    assert resumed.cached == resumed.sessions == 12 and _numbers(resumed) == _numbers(serial_report)
    # another criterion or other data is another namespace: nothing read from the cache
    other = sensitivity(TRANSFORMER, "random", ratios=(0.25,), samples=4, shapes=SHAPES, workers=1, cache=tmp_path)
    assert other.cached == 0


def test_sensitivity_on_ray_is_bit_identical(serial_report) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        report = sensitivity(TRANSFORMER, "random", ratios=(0.25, 0.5), samples=8, shapes=SHAPES,
                             executor="ray", workers=2)
    finally:
        ray.shutdown()
    assert _numbers(report) == _numbers(serial_report)


def test_cache_key_covers_external_data_and_ray_ships_it_inlined(tmp_path: Path) -> None:
    """Changing only the external data file changes the namespace; remote workers get the weights inlined."""
    import shutil

    import onnx

    from onnxsparse.passes.sensitivity import _cache_namespace, _model_source

    src = sample("real_zoo_external_resnet18")
    folder = tmp_path / "m"
    folder.mkdir()
    model = folder / src.name
    shutil.copy(src, model)
    shutil.copy(src.parent / (src.name + ".data"), folder / (src.name + ".data"))
    arrays = {"x": np.zeros((1, 2), np.float32)}
    before = _cache_namespace(model, "l2", arrays, 1, 1, ["y"])
    data = folder / (src.name + ".data")
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1
    data.write_bytes(bytes(raw))
    assert _cache_namespace(model, "l2", arrays, 1, 1, ["y"]) != before
    shipped = onnx.load_from_string(_model_source(model, ship_bytes=True))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in shipped.graph.initializer)
    assert _model_source(model, ship_bytes=False) == str(model)
