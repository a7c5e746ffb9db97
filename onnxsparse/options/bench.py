"""The options of ``bench``: one frozen dataclass for the command's flags and :func:`onnxsparse.validate.bench`.

Everything but the thread counts and batch sizes is :class:`~onnxsparse.options.run.RunOptions`,
shared with ``validate``; here both are comma lists (one row per value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .fields import Bad, Cli, ParseContext, option
from .run import RunOptions

__all__ = ["BenchOptions"]


def _int_list(value: Any, ctx: ParseContext) -> tuple[int | None, ...]:
    """``1,2``, ``4`` or a list of them (``auto`` or ``None``: onnxruntime's / the model's choice), deduplicated."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out: list[int | None] = []
    for item in items:
        for part in item.split(",") if isinstance(item, str) else [item]:
            part = part.strip() if isinstance(part, str) else part
            if part in (None, "", "auto"):
                out.append(None)
                continue
            if isinstance(part, bool) or not isinstance(part, (int, str)) or (
                    isinstance(part, str) and not part.lstrip("-").isdigit()):
                raise Bad(f"expected integers like 1,2,4, got {part!r}")
            number = int(part)
            if number < 1:
                raise Bad(f"values must be >= 1, got {number}")
            out.append(number)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True, kw_only=True)
class BenchOptions(RunOptions):
    """Latency, throughput, session time and peak memory of models across providers, threads and batches."""

    kind: ClassVar[str] = "bench"
    help: ClassVar[str] = "time models across execution providers, thread counts and batch sizes"
    transforms: ClassVar[bool] = False

    threads: tuple[int | None, ...] = option(
        (), parse=_int_list, kind="list",
        help="intra-op thread counts, comma-separated, e.g. 1,2 (default: onnxruntime's)",
        cli=Cli(metavar="LIST", append=True))
    batches: tuple[int | None, ...] = option(
        (), key="batch", parse=_int_list, kind="list",
        help="batch sizes, comma-separated, e.g. 1,8 (default: the model's fixed batch or 1)",
        cli=Cli(metavar="LIST", append=True))

    def thread_list(self) -> list[int | None]:
        """The thread counts to time (``None``: onnxruntime's choice)."""
        return list(self.threads) or [None]

    def batch_list(self) -> list[int | None]:
        """The batch sizes to time (``None``: the model's fixed batch or 1)."""
        return list(self.batches) or [None]
