"""What this machine can do."""

from __future__ import annotations

import functools

import torch


@functools.cache
def cpu_has_bf16() -> bool:
    """True when this CPU runs bf16 matrix math natively (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    """True when `device` runs bf16 matrix math natively: a CUDA GPU that supports it, or a
    CPU with AMX/AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()
