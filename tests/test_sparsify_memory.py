"""The memory-bounded encoders (issue 16) write the same bytes as the straightforward ones they replaced.

The references below are the previous whole-tensor implementations, kept here as the oracle.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxsparse.errors import Decline

from onnxsparse.formats import FORMATS
from onnxsparse.formats._bits import pack_codes, unpack_codes
from onnxsparse.formats.base import CodecOptions, TensorData
from onnxsparse.formats.storage import AUTO, Candidate, candidate, choose


def _reference_pack(codes: np.ndarray, width: int) -> np.ndarray:
    codes = np.asarray(codes, dtype=np.int64)
    if width == 16:
        return codes.astype("<u2")
    if width == 8:
        return codes.astype(np.uint8)
    per = 8 // width
    padded = np.zeros(-(-codes.size // per) * per, dtype=np.int64)
    padded[: codes.size] = codes
    shifts = width * np.arange(per, dtype=np.int64)
    return (padded.reshape(-1, per) << shifts).sum(axis=1).astype(np.uint8)


def _reference_delta(tensor: TensorData, width: int) -> tuple[np.ndarray, np.ndarray, int]:
    span = (1 << width) if width < 8 else (1 << width) - 1
    positions = tensor.positions
    entries = np.concatenate([[0], positions]) if positions.size and positions[0] != 0 else positions
    gaps = np.diff(entries)
    reps = (gaps + span - 1) // span
    count = int(reps.sum()) + min(entries.size, 1)
    steps = np.full(count, span, dtype=np.int64)
    steps[-1:] = 1
    real = np.concatenate([[0], np.cumsum(reps)]).astype(np.int64)[: entries.size]
    steps[real[1:] - 1] = gaps - (reps - 1) * span
    values = np.full(count, tensor.fill, dtype=tensor.dtype)
    values[real[entries.size - tensor.k:]] = tensor.values
    codes = steps - 1 if width < 8 else steps
    return _reference_pack(codes, width), values, count


def _tensors() -> list[TensorData]:
    rng = np.random.default_rng(7)
    out = []
    for sparsity, shape in ((0.5, (96, 130)), (0.97, (64, 257)), (0.999, (300, 301)), (0.0, (33, 17)),
                            (1.0, (16, 16)), (0.8, (1000,))):
        array = rng.standard_normal(shape).astype(np.float32)
        array[rng.random(shape) < sparsity] = 0
        out.append(TensorData(f"s{sparsity}", array))
    anchored = np.zeros((50, 50), dtype=np.float32)  # first value far from position 0: filler anchor + long gaps
    anchored.reshape(-1)[[700, 701, 2499]] = [1.5, -2.0, 3.0]
    out.append(TensorData("anchored", anchored))
    return out


@pytest.mark.parametrize("width", [2, 4, 8, 16])
def test_pack_codes_matches_reference(width: int) -> None:
    rng = np.random.default_rng(width)
    for size in (0, 1, 5, (1 << 23) + 5):  # the last spans several packing chunks
        codes = rng.integers(0, 1 << width, size=size)
        packed = pack_codes(codes, width)
        assert packed.dtype == _reference_pack(codes, width).dtype
        assert packed.tobytes() == _reference_pack(codes, width).tobytes()
        assert np.array_equal(unpack_codes(packed, width, size), codes)


@pytest.mark.parametrize("tensor", _tensors(), ids=lambda t: t.name)
@pytest.mark.parametrize("width", [2, 4, 8, 16])
def test_delta_bytes_match_reference(tensor: TensorData, width: int) -> None:
    encoded = FORMATS.get("delta")().encode(tensor, CodecOptions(delta_widths=(width,)))
    gaps, values, count = _reference_delta(tensor, width)
    assert encoded.params["count"] == count
    assert encoded.arrays["gaps"].dtype == gaps.dtype and encoded.arrays["gaps"].tobytes() == gaps.tobytes()
    assert encoded.arrays["values"].tobytes() == values.tobytes()


@pytest.mark.parametrize("tensor", _tensors(), ids=lambda t: t.name)
def test_bsr_values_match_reference(tensor: TensorData) -> None:
    if len(tensor.shape) != 2:
        pytest.skip("bsr blocks a matrix")
    for block in ((1, 1), (2, 2), (4, 1)):
        rows, cols = tensor.shape
        if rows % block[0] or cols % block[1]:
            continue
        encoded = FORMATS.get("bsr")().encode(tensor, CodecOptions(block=block))
        r, c = encoded.params["block"]
        blocks = tensor.array.reshape(rows // r, r, cols // c, c).transpose(0, 2, 1, 3).reshape(-1, r, c)
        where = np.flatnonzero(np.any(blocks != 0, axis=(1, 2)))
        assert encoded.arrays["values"].tobytes() == np.ascontiguousarray(blocks[where]).tobytes()
        assert np.array_equal(encoded.arrays["block_col_indices"], where % (cols // c))
        pointers = np.concatenate([[0], np.cumsum(np.bincount(where // (cols // c), minlength=rows // r))])
        assert np.array_equal(encoded.arrays["block_row_ptr"], pointers)
        assert encoded.arrays["block_row_ptr"].dtype == np.dtype(np.uint8 if where.size < 256 else np.uint16
                                                                 if where.size < 1 << 16 else np.int32)


@pytest.mark.parametrize("tensor", _tensors(), ids=lambda t: t.name)
def test_auto_choice_and_bytes_match_keeping_every_candidate(tensor: TensorData) -> None:
    """``choose`` keeps only the provisional winner's payload; the choice and bytes are those of all kept."""
    options = CodecOptions()
    tried: list[Candidate] = [Candidate("dense", None, None, tensor.n * tensor.dtype.itemsize)]
    for name, cls in FORMATS.items():
        if name != "dense" and cls.in_auto:
            try:
                tried.append(candidate(tensor, name, options, 18))
            except Decline:  # this format does not apply to the tensor
                pass
    smallest = min(c.stored_bytes for c in tried)
    near = [c for c in tried if c.stored_bytes <= smallest * 1.02]
    expected = min(near, key=lambda c: (FORMATS.get(c.format).cost_rank, c.stored_bytes))
    chosen, _ = choose(tensor, AUTO, options, 18)
    assert (chosen.format, chosen.decoder, chosen.stored_bytes) == (expected.format, expected.decoder,
                                                                    expected.stored_bytes)
    if expected.encoded is None:
        assert chosen.encoded is None
        return
    assert chosen.encoded is not None
    assert chosen.encoded.params == expected.encoded.params
    assert {k: v.tobytes() for k, v in chosen.encoded.arrays.items()} == \
        {k: v.tobytes() for k, v in expected.encoded.arrays.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_select_lowest_is_the_stable_argsort_prefix(dtype: type) -> None:
    from onnxsparse.sparsity.patterns import select_lowest

    rng = np.random.default_rng(3)
    scores: np.ndarray = rng.integers(0, 20, size=5000).astype(dtype)  # many ties
    if np.dtype(dtype).kind == "f":
        scores[rng.random(scores.size) < 0.1] = np.nan
        scores[:7] = -0.0
    for count in (0, 1, 17, 2500, 4600, 4999, 5000):
        expected = np.sort(np.argsort(scores, kind="stable")[:count])
        assert np.array_equal(select_lowest(scores, count), expected)
