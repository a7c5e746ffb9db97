"""One way to make a progress bar: tqdm on stderr that leaves no trace, or nothing when disabled."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_bar"]


def progress_bar(total: int | None = None, desc: str | None = None, *, unit: str = "it", enabled: bool = True,
                 **options: Any):
    """A ``tqdm`` bar on stderr (``leave=False``), or ``None`` when not ``enabled``.

    tqdm is imported only when a bar is made; ``options`` go to ``tqdm`` as they are.
    """
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, **options)
