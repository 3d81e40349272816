"""Which precision a replica computes in, and on which device: no torch needed to
decide for a CPU (torch is imported only to ask about a CUDA device)."""

from __future__ import annotations

from typing import Literal

#: ``auto`` resolves to ``bf16`` where the hardware runs it fast, else ``fp32``.
Precision = Literal["auto", "fp32", "bf16"]
#: CPU features with native bf16 matrix arithmetic (AVX512-BF16, AMX).
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def default_device() -> str:
    """``cuda`` where torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there bf16
    convolutions run 1.6-2x faster than fp32 (``benchmarks/model_throughput.py``);
    elsewhere bf16 is emulated and slower."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo = fh.read()
        except OSError:  # not Linux: no flags to read, stay with fp32
            return False
    flags = set(cpuinfo.split())
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def resolve_precision(precision: Precision, device: str) -> Literal["fp32", "bf16"]:
    """The precision ``auto`` stands for on ``device`` (``cpu`` or ``cuda``).

    CUDA: bf16 where the device supports it (Ampere and later; a driver with no
    local GPU, planning for a GPU cluster, assumes it does). CPU: bf16 with
    AVX512-BF16 or AMX, fp32 otherwise.
    """
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return "bf16"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"
