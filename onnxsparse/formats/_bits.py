"""Bit packing helpers shared by the codecs (little-endian bit order, as the decode graphs read it)."""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["pack_codes", "unpack_codes", "packed_size", "code_table", "popcount_table", "bit_position_table",
           "bit_table"]


#: bytes packed per chunk by :func:`pack_codes`
_PACK_CHUNK = 1 << 20


def packed_size(count: int, width: int) -> int:
    """Bytes used by ``count`` codes of ``width`` bits (widths 2, 4, 8, 16)."""
    if width >= 8:
        return count * (width // 8)
    per = 8 // width
    return -(-count // per)


def pack_codes(codes: np.ndarray, width: int) -> np.ndarray:
    """Pack non-negative integers < 2**width; sub-byte codes fill each byte from the low bits."""
    codes = np.asarray(codes)
    if width == 16:
        return codes.astype("<u2")
    if width == 8:
        return codes.astype(np.uint8)
    per = 8 // width
    shifts = width * np.arange(per, dtype=np.int64)
    out = np.empty(-(-codes.size // per), dtype=np.uint8)
    step = per * _PACK_CHUNK  # in chunks: whole-tensor int64 temporaries cost several times the tensor
    for start in range(0, codes.size, step):
        part = codes[start:start + step]
        padded = np.zeros(-(-part.size // per) * per, dtype=np.int64)
        padded[: part.size] = part
        out[start // per: start // per + padded.size // per] = (padded.reshape(-1, per) << shifts).sum(axis=1)
    return out


def unpack_codes(packed: np.ndarray, width: int, count: int) -> np.ndarray:
    packed = np.asarray(packed)
    if width >= 8:
        return packed.astype(np.int64)[:count]
    per = 8 // width
    shifts = width * np.arange(per, dtype=np.int64)
    codes = (packed.astype(np.int64)[:, None] >> shifts) & ((1 << width) - 1)
    return codes.reshape(-1)[:count]


@functools.lru_cache(maxsize=None)
def code_table(width: int) -> np.ndarray:
    """``[256, 8 // width]``: the codes packed in each byte value."""
    per = 8 // width
    byte = np.arange(256, dtype=np.int64)[:, None]
    return (byte >> (width * np.arange(per))) & ((1 << width) - 1)


@functools.lru_cache(maxsize=None)
def bit_table() -> np.ndarray:
    """``[256, 8]``: bit ``j`` of each byte value."""
    return code_table(1)


@functools.lru_cache(maxsize=None)
def popcount_table() -> np.ndarray:
    """``[256]``: set bits per byte value."""
    return bit_table().sum(axis=1)


@functools.lru_cache(maxsize=None)
def bit_position_table() -> np.ndarray:
    """``[256 * 8]``: entry ``b*8 + r`` is the position of the ``r``-th set bit of byte ``b``."""
    table = np.zeros((256, 8), dtype=np.int64)
    bits = bit_table()
    for value in range(256):
        where = np.flatnonzero(bits[value])
        table[value, : where.size] = where
    return table.reshape(-1)
