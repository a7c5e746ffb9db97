"""Assertions the CLI tests of several areas share (helpers.py belongs to the lead)."""

from __future__ import annotations


def one_line_error(code: int, out: str, err: str) -> str:
    """The command failed as a user error: exit 2, nothing on stdout, one ``onnxsparse: error:`` line; returns it."""
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("onnxsparse: error: ")
    assert out == ""
    return lines[0]
