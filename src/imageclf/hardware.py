"""What this machine can do."""

from __future__ import annotations

import functools


@functools.cache
def cpu_has_bf16() -> bool:
    """True when this CPU runs bf16 matrix math natively (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
