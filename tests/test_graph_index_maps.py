"""Index maps: tables, pairs, composition, simplification."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxsparse.graph import Block, Composed, Identity, Offset, Stride, Table, simplify


def test_tables() -> None:
    assert Identity().table(3).tolist() == [[0], [1], [2]]
    assert Offset(5).table(2).tolist() == [[5], [6]]
    assert Block(3).table(2).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert Block(2, 10).table(2).tolist() == [[10, 11], [12, 13]]
    assert Stride(4, 3).table(2).tolist() == [[0, 4, 8], [1, 5, 9]]
    src, dst = Block(2).pairs(2)
    assert src.tolist() == [0, 0, 1, 1] and dst.tolist() == [0, 1, 2, 3]
    assert Block(3).target_size(4) == 12 and Offset(2).target_size(3) == 5


def test_composition_block_then_offset() -> None:
    # channel c of a Concat input at offset 8, flattened with H*W = 4 afterwards
    m = Offset(8).then(Block(4))
    assert isinstance(m, Composed)
    assert m.table(2).tolist() == [[32, 33, 34, 35], [36, 37, 38, 39]]
    assert simplify(m.table(2)) == Block(4, 32)
    # head h of size D=3, then the per-head stride inside a shuffle-like layout
    assert Block(2).then(Offset(1)).table(2).tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    "m, n",
    [(Identity(), 5), (Offset(3), 4), (Block(3), 4), (Block(2, 6), 3), (Stride(5, 3), 5), (Stride(4, 2, 1), 3)],
)
def test_simplify_round_trip(m, n: int) -> None:
    assert simplify(m.table(n)) == m


def test_simplify_falls_back_to_table() -> None:
    rows = np.array([[0, 5], [1, 3]])
    m = simplify(rows)
    assert isinstance(m, Table) and m.table(2).tolist() == rows.tolist()
    with pytest.raises(ValueError):
        m.table(3)


@given(
    st.integers(1, 6),
    st.integers(1, 4),
    st.integers(0, 7),
    st.integers(1, 5),
)
def test_composed_equals_explicit_join(n: int, b: int, off: int, s: int) -> None:
    first, second = Block(b, off), Stride(s, 2)
    composed = first.then(second).table(n)
    mid = first.table(n)
    expected = second.table(int(mid.max()) + 1)[mid].reshape(n, -1)
    assert composed.tolist() == expected.tolist()
