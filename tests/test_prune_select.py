"""Selection: uniform ratio, global ranking, round-to, min-keep."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxsparse.errors import UsageError
from onnxsparse.passes.prune_select import keep_count, round_keep, select_global, select_uniform


def test_keep_count_floor_and_min_keep() -> None:
    assert keep_count(64, 0.3) == 64 - 19
    assert keep_count(10, 0.5) == 5
    assert keep_count(3, 0.9) == 1
    assert keep_count(3, 0.9, min_keep=2) == 2
    assert keep_count(1, 0.5) == 1
    assert keep_count(7, 0.0) == 7


def test_round_to() -> None:
    assert keep_count(64, 0.3, round_to=8) == 48  # 45 -> nearest multiple of 8
    assert keep_count(100, 0.3, round_to=8) == 72  # 70 -> 72
    assert keep_count(20, 0.1, round_to=8) == 16  # 18 -> 16 (24 does not fit)
    assert keep_count(6, 0.5, round_to=8) == 3  # smaller than N: untouched by rounding
    assert keep_count(64, 0.95, round_to=8) == 8  # at least N
    assert round_keep(13, 16, 4) == 12


@given(st.integers(1, 300), st.floats(0, 0.99), st.integers(1, 16), st.integers(1, 8))
def test_keep_count_invariants(size: int, ratio: float, round_to: int, min_keep: int) -> None:
    keep = keep_count(size, ratio, round_to, min_keep)
    assert 1 <= keep <= size
    assert keep >= min(min_keep, size)
    if size >= round_to and keep > min_keep:
        assert keep % round_to == 0


def test_uniform_removes_lowest_scores() -> None:
    scores = {0: np.array([5.0, 1.0, 3.0, 0.5, 4.0]), 1: np.array([1.0, 1.0, 1.0, 1.0])}
    removed = select_uniform(scores, 0.4)
    assert removed[0].tolist() == [1, 3]
    assert removed[1].tolist() == [0]  # ties break by index


def test_global_normalises_per_group_and_protects_min_keep() -> None:
    # group 1 has tiny absolute weights but is uniform; group 0 has one clear loser
    scores = {0: np.array([10.0, 10.0, 10.0, 0.1]), 1: np.array([0.01, 0.01, 0.01, 0.01])}
    removed = select_global(scores, 0.125)  # budget: 1 of 8
    assert {k: v.tolist() for k, v in removed.items()} == {0: [3]}
    removed = select_global(scores, 0.9, min_keep=2)
    assert all(4 - len(v) >= 2 for v in removed.values())


def test_global_total_budget() -> None:
    rng = np.random.default_rng(0)
    scores = {i: rng.random(n) for i, n in enumerate([16, 32, 64])}
    removed = select_global(scores, 0.5)
    assert sum(len(v) for v in removed.values()) == 56


def test_bad_options_raise() -> None:
    with pytest.raises(UsageError):
        select_uniform({0: np.ones(3)}, 1.0)
    with pytest.raises(UsageError):
        select_uniform({0: np.ones(3)}, 0.5, round_to=0)
    with pytest.raises(UsageError):
        select_global({0: np.ones(3)}, 0.5, min_keep=0)


def test_round_to_counts_channels_when_units_hold_several() -> None:
    from onnxsparse.passes.prune_select import unit_multiple

    assert unit_multiple(16, 4) == 4 and unit_multiple(16, 1) == 16 and unit_multiple(8, 12) == 2
    removed = select_uniform({0: np.arange(34.0), 1: np.arange(34.0)}, 0.5, round_to={0: 4, 1: 1})
    assert 34 - len(removed[0]) == 16 and 34 - len(removed[1]) == 17
