"""What the CPU we run on can do for int8 kernels.

onnxruntime's x86 int8 kernels multiply uint8 activations by int8 weights
(u8s8).  Without a VNNI dot-product instruction (AVX512-VNNI, AVX-VNNI, AMX)
they use ``vpmaddubsw``, whose int16 intermediate sums can saturate, which
costs accuracy.  Quantizing weights to 7 bits (``reduce_range``) avoids it.  We
read ``/proc/cpuinfo`` to decide the default and to say in the report why.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuInfo", "VNNI_FLAGS", "TARGETS", "detect_cpu", "parse_cpuinfo", "target_cpu"]

#: ``/proc/cpuinfo`` flags that give onnxruntime a saturation-free u8s8 dot product.
VNNI_FLAGS: tuple[str, ...] = ("avx512_vnni", "avx_vnni", "amx_int8")

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@dataclass(frozen=True)
class CpuInfo:
    """The facts about the CPU that change how we quantize."""

    arch: str
    model_name: str
    vnni_flags: tuple[str, ...]
    source: str
    #: Channels per block of onnxruntime's blocked (NCHWc) CPU convolutions: 16 with AVX-512,
    #: 8 with AVX/AVX2, 1 where MLAS has no NCHWc kernels (every channel count is as fast).
    nchwc_block: int = 1

    @property
    def is_x86(self) -> bool:
        return self.arch.lower() in _X86

    @property
    def has_vnni(self) -> bool:
        return bool(self.vnni_flags)

    @property
    def u8s8_may_saturate(self) -> bool:
        """True on x86 without VNNI: the only case ``reduce_range`` is needed."""
        return self.is_x86 and not self.has_vnni

    def describe(self) -> str:
        if not self.is_x86:
            return f"{self.arch} ({self.model_name or 'unknown model'}): no u8s8 saturation issue"
        if self.has_vnni:
            return f"{self.arch} with {', '.join(self.vnni_flags)} ({self.model_name or 'unknown model'})"
        return f"{self.arch} without VNNI ({self.model_name or 'unknown model'}): u8s8 kernels may saturate"


def parse_cpuinfo(text: str, arch: str, source: str = "/proc/cpuinfo") -> CpuInfo:
    """Build a :class:`CpuInfo` from the text of ``/proc/cpuinfo``."""
    flags: set[str] = set()
    model_name = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key == "model name" and not model_name:
            model_name = value.strip()
    found = tuple(flag for flag in VNNI_FLAGS if flag in flags)
    block = 1
    if arch.lower() in _X86:
        block = 16 if "avx512f" in flags else 8 if {"avx2", "avx"} & flags else 1
    return CpuInfo(arch=arch, model_name=model_name, vnni_flags=found, source=source, nchwc_block=block)


@functools.lru_cache(maxsize=1)
def detect_cpu() -> CpuInfo:
    """Describe this machine's CPU (cached; ``/proc/cpuinfo`` on Linux)."""
    arch = platform.machine() or "unknown"
    path = Path("/proc/cpuinfo")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        # No /proc (macOS, Windows): we cannot see the flags; assume the worst on x86.
        return CpuInfo(arch=arch, model_name=platform.processor(), vnni_flags=(), source="unavailable")
    return parse_cpuinfo(text, arch, str(path))


#: Deployment CPUs one can quantize for from another machine (``--target``), named like Hugging Face
#: optimum's ``AutoQuantizationConfig`` presets; each resolves to the settings that preset uses
#: (reduce_range on without VNNI, u8s8 on x86, s8s8 on ARM; per-channel symmetric int8 weights).
TARGETS: dict[str, tuple[str, str]] = {
    "avx512_vnni": ("x86_64", "flags : avx avx2 avx512f avx512_vnni"),
    "avx512": ("x86_64", "flags : avx avx2 avx512f"),
    "avx2": ("x86_64", "flags : avx avx2"),
    "arm64": ("aarch64", "Features : fp asimd asimddp"),
}


def target_cpu(name: str) -> CpuInfo:
    """The :class:`CpuInfo` of a named deployment target (see :data:`TARGETS`)."""
    arch, text = TARGETS[name]
    return parse_cpuinfo(f"model name : {name} target\n{text}\n", arch, source=f"--target {name}")
