"""Map a function over independent tasks: in-process, in local worker processes, or on Ray; cached on disk.

Sweeps such as :func:`onnxsparse.passes.sensitivity.sensitivity` are many independent evaluations of
one big object (a model and its calibration data).  :func:`run_tasks` ships that object **once per
worker** — a :class:`Setup` (a picklable factory and its arguments) each worker calls once, then
``fn(state, task)`` per task — instead of pickling it into every task:

* ``local`` with ``workers == 1`` (or too few tasks to pay for worker start-up): in this process;
* ``local`` with ``workers > 1``: a ``ProcessPoolExecutor`` (``spawn`` start method: onnxruntime's
  thread pools do not survive ``fork``) whose initializer runs the setup;
* ``ray`` / ``ray:ADDRESS``: one Ray actor per worker (``ray.init()`` on this machine, or the cluster at
  ADDRESS; Ray is an optional extra, ``pip install onnxsparse[ray]``), the setup put in Ray's object store
  once.

A :class:`TaskCache` stores each result under ``key`` as soon as it arrives (JSON, written atomically),
so an interrupted sweep resumes where it stopped.  Results come back in task order whatever the executor;
a deterministic ``fn`` gives identical results on every executor.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = ["ExecutorSpec", "Setup", "TaskCache", "default_cache_dir", "default_workers", "parse_executor",
           "run_tasks"]

logger = logging.getLogger(__name__)

#: with ``workers=None``, fewer pending tasks per worker than this run in-process
MIN_TASKS_PER_WORKER = 3
#: the cost of a fresh worker process before its setup: importing onnxsparse, onnxruntime and onnxscript
#: (2.5 s of CPU measured on the development machine; 5-7 s of wall time when its 2 cores were shared)
WORKER_START_SECONDS = 3.0


@dataclass(frozen=True)
class Setup:
    """``factory(*args)`` builds the state every task of a worker reads; both must be picklable."""

    factory: Callable[..., Any]
    args: tuple[Any, ...] = ()

    def build(self) -> Any:
        return self.factory(*self.args)


@dataclass(frozen=True)
class ExecutorSpec:
    kind: str  #: "local" or "ray"
    address: str | None = None  #: Ray cluster address (None: start or join Ray on this machine)

    def __str__(self) -> str:
        return self.kind + (f":{self.address}" if self.address else "")


def parse_executor(text: str | ExecutorSpec | None) -> ExecutorSpec:
    """``local``, ``ray`` or ``ray:ADDRESS`` (e.g. ``ray:auto``, ``ray:10.0.0.5:6379``)."""
    if text is None:
        return ExecutorSpec("local")
    if isinstance(text, ExecutorSpec):
        return text
    kind, _, address = text.partition(":")
    if kind not in ("local", "ray") or (kind == "local" and address):
        raise UsageError(f"bad --executor {text!r}: expected local, ray or ray:ADDRESS")
    return ExecutorSpec(kind, address or None)


def default_workers() -> int:
    """``min(cores, 4)``: the cores this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/onnxsparse`` (``~/.cache/onnxsparse`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnxsparse"


class TaskCache:
    """Results on disk, one JSON file per key, under ``root/namespace`` (the namespace says what the keys
    are relative to, e.g. a hash of the model, criterion and data)."""

    def __init__(self, root: str | os.PathLike, namespace: str) -> None:
        self.dir = Path(root) / namespace
        self.hits = 0

    @staticmethod
    def _file_name(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:32] + ".json"

    def get(self, key: str) -> Any | None:
        path = self.dir / self._file_name(key)
        try:
            with open(path, encoding="utf-8") as f:
                entry = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            logger.warning("ignoring unreadable cache entry %s", path)
            return None
        if entry.get("key") != key:
            return None
        self.hits += 1
        return entry["value"]

    def put(self, key: str, value: Any) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / self._file_name(key)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"key": key, "value": value}, f)
            os.replace(tmp, path)
        except OSError as exc:  # a read-only cache must not fail the sweep
            logger.warning("cannot write the cache in %s: %s", self.dir, exc)


# ---------------------------------------------------------------------------------------------- workers

_STATE: Any = None


def _init_worker(setup: Setup) -> None:
    global _STATE
    _STATE = setup.build()


def _call(fn: Callable[[Any, Any], Any], task: Any) -> Any:
    return fn(_STATE, task)


def run_tasks(
    setup: Setup,
    fn: Callable[[Any, Any], Any],
    tasks: Sequence[Any],
    *,
    keys: Sequence[str] | None = None,
    cache: TaskCache | None = None,
    executor: str | ExecutorSpec | None = "local",
    workers: int | None = 1,
    progress: bool = False,
    desc: str = "evaluations",
    local_state: Any = None,
    task_seconds: float | None = None,
    setup_seconds: float = 0.0,
) -> list[Any]:
    """``[fn(state, task) for task in tasks]`` with ``state = setup.build()`` once per worker.

    With a ``cache``, results already stored under ``keys[i]`` are not recomputed and new ones are stored
    as they arrive.  ``workers``: processes (``local``) or actors (``ray``; ``None`` = the cluster's CPUs).
    Locally, ``workers=None`` means up to :func:`default_workers` processes *when they pay off*: at least
    ``MIN_TASKS_PER_WORKER`` tasks each and, given the estimated ``task_seconds`` (one task) and
    ``setup_seconds`` (one ``setup.build()``), an expected saving larger than a worker's start-up
    (``WORKER_START_SECONDS + setup_seconds``); otherwise, and with ``workers=1``, in this process.
    Results must be JSON-serialisable when cached.  ``local_state``: the state already built in this process,
    used instead of ``setup.build()`` when the tasks run here.
    """
    from ._progress import progress_bar

    spec = parse_executor(executor)
    if cache is not None and (keys is None or len(keys) != len(tasks)):
        raise ValueError("a cache needs one key per task")
    results: list[Any] = [None] * len(tasks)
    pending: list[int] = []
    for i in range(len(tasks)):
        value = cache.get(keys[i]) if cache is not None and keys is not None else None
        if value is None:
            pending.append(i)
        else:
            results[i] = value
    bar = progress_bar(len(tasks), desc, unit="eval", enabled=progress, initial=len(tasks) - len(pending))

    def done(i: int, value: Any) -> None:
        results[i] = value
        if cache is not None and keys is not None:
            cache.put(keys[i], value)
        if bar is not None:
            bar.update(1)

    try:
        if not pending:
            pass
        elif spec.kind == "ray":
            _run_ray(setup, fn, tasks, pending, done, spec.address, workers)
        else:
            n = _local_workers(workers, len(pending), task_seconds, setup_seconds)
            if n <= 1:
                state = setup.build() if local_state is None else local_state
                for i in pending:
                    done(i, fn(state, tasks[i]))
            else:
                _run_processes(setup, fn, tasks, pending, done, n)
    finally:
        if bar is not None:
            bar.close()
    return results


def _local_workers(workers: int | None, pending: int, task_seconds: float | None, setup_seconds: float) -> int:
    if workers is not None:
        return min(workers, pending)
    n = min(default_workers(), pending // MIN_TASKS_PER_WORKER)
    if n > 1 and task_seconds is not None:
        saving = pending * task_seconds * (1 - 1 / n)
        if saving <= WORKER_START_SECONDS + setup_seconds:
            logger.info("running %d evaluations in-process: ~%.1f s saved by %d workers < their start-up",
                        pending, saving, n)
            return 1
    return n


def _run_processes(setup: Setup, fn, tasks, pending: list[int], done: Callable[[int, Any], None], n: int) -> None:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(n, mp_context=context, initializer=_init_worker,
                                                initargs=(setup,)) as pool:
        futures = {pool.submit(_call, fn, tasks[i]): i for i in pending}
        try:
            for future in concurrent.futures.as_completed(futures):
                done(futures[future], future.result())
        except BaseException:  # an error or Ctrl-C: do not start what is still queued
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'onnxsparse[ray]'") from None
    return ray


class _RayWorker:
    """One Ray actor: builds the state once, then evaluates tasks."""

    def __init__(self, setup: Setup) -> None:
        self.state = setup.build()

    def run(self, fn, index: int, task: Any) -> tuple[int, Any]:
        return index, fn(self.state, task)


def _run_ray(setup: Setup, fn, tasks, pending: list[int], done: Callable[[int, Any], None],
             address: str | None, workers: int | None) -> None:
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        n = max(1, min(n, len(pending)))
        actor = ray.remote(num_cpus=1)(_RayWorker)
        setup_ref = ray.put(setup)
        actors = [actor.remote(setup_ref) for _ in range(n)]
        queue = list(pending)
        running: dict[Any, Any] = {}
        for a in actors:  # two tasks in flight per actor: no idle gap between tasks
            for _ in range(2):
                if queue:
                    i = queue.pop(0)
                    running[a.run.remote(fn, i, tasks[i])] = a
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            a = running.pop(ref)
            i, value = ray.get(ref)
            done(i, value)
            if queue:
                j = queue.pop(0)
                running[a.run.remote(fn, j, tasks[j])] = a
        for a in actors:
            ray.kill(a)
    finally:
        if started:
            ray.shutdown()
