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


def tune_for_training(device: torch.device) -> None:
    """Settings for training on `device`. On CUDA: cuDNN times its convolution algorithms
    for each input shape and keeps the fastest (training batches all have one shape), and
    float32 matrix products may use TensorFloat-32 (what cuDNN's convolutions already do by
    default). Nothing changes on a CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
