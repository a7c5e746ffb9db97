import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest


@pytest.fixture(autouse=True)
def _fixed_kernel_block(monkeypatch):
    """``--round-to auto`` reads the CPU; tests see one profile (AVX-512: 16-channel blocks) on every machine."""
    import onnxsparse.passes.prune as prune_module

    monkeypatch.setattr(
        prune_module, "auto_round_to",
        lambda: (16, "auto: onnxruntime's blocked NCHWc Conv kernels use 16-channel blocks on this CPU (test profile)"),
    )


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path_factory):
    """Caches (``sensitivity --cache``'s default) go to a temporary folder, never the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
