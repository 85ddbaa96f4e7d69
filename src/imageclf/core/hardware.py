"""What this machine can do; precision and autocast, resolved once for training and
prediction alike."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from imageclf.core.config import PRECISIONS
from imageclf.core.errors import ConfigError

log = logging.getLogger(__name__)


# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) below AVX-512, and those that still include
# native bf16 math
_ONEDNN_BELOW_AVX512 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"})
_ONEDNN_BF16_ISAS = frozenset({
    "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "ALL"})


def _caps(env: dict[str, str] | None) -> tuple[str, str]:
    env = os.environ if env is None else env
    return (env.get("ONEDNN_MAX_CPU_ISA", "").strip().upper(),
            env.get("ATEN_CPU_CAPABILITY", "").strip().lower())


def isa_capped_below_bf16(env: dict[str, str] | None = None) -> bool:
    """True when the process is told to use less than the CPU has, below its bf16 math:
    ONEDNN_MAX_CPU_ISA under AVX512_CORE_BF16 (oneDNN's convolutions and products), or
    ATEN_CPU_CAPABILITY avx2/default (PyTorch's own kernels). This is how an AVX2-only CPU
    is approximated on a newer one, and auto precision then picks fp32 as it would there."""
    onednn, aten = _caps(env)
    return (bool(onednn) and onednn not in _ONEDNN_BF16_ISAS) or aten in ("avx2", "default")


def isa_capped_below_avx512(env: dict[str, str] | None = None) -> bool:
    """True when ONEDNN_MAX_CPU_ISA or ATEN_CPU_CAPABILITY caps the process below AVX-512."""
    onednn, aten = _caps(env)
    return onednn in _ONEDNN_BELOW_AVX512 or aten in ("avx2", "default")


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_has_bf16() -> bool:
    """True when this CPU runs bf16 matrix math natively (AMX or AVX512-BF16), and the
    process is not capped below it (`isa_capped_below_bf16`)."""
    flags = _cpu_flags()
    return ("amx_bf16" in flags or "avx512_bf16" in flags) and not isa_capped_below_bf16()


@functools.cache
def cpu_avx2_only() -> bool:
    """True when oneDNN runs AVX2 kernels here and no AVX-512 ones: an x86 CPU with AVX2 but
    no AVX512F, or a newer one capped below AVX-512. There fp32 convolutions' weight
    gradients on tiny maps are slow (smallconv.py)."""
    flags = _cpu_flags()
    return "avx2" in flags and ("avx512f" not in flags or isa_capped_below_avx512())


def native_bf16(device: torch.device) -> bool:
    """True when `device` runs bf16 matrix math natively: a CUDA GPU that supports it, or a
    CPU with AMX/AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


@dataclass(frozen=True)
class Precision:
    """How forward passes run: the autocast dtype (None: fp32) and whether gradients are
    scaled (fp16 training)."""

    name: str
    dtype: torch.dtype | None
    scaler: bool
    device_type: str = "cpu"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context for a forward pass (nothing for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def resolve_precision(requested: str, device: torch.device, training: bool = True
                      ) -> Precision:
    """auto: bf16 where the device runs it natively (CPUs with AMX/AVX512-BF16, most CUDA
    GPUs); otherwise, for training on CUDA, fp16 with gradient scaling; else fp32.
    Prediction never picks fp16 by itself. Forcing fp16 for training on a CPU is an error;
    forcing bf16 where it runs emulated is allowed, with a warning."""
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}; "
                          f"got {requested!r}")
    cuda = device.type == "cuda"
    if requested == "auto":
        requested = "bf16" if native_bf16(device) else ("fp16" if cuda and training
                                                         else "fp32")
    if requested == "fp32":
        return Precision("fp32", None, False, device.type)
    if requested == "bf16":
        if training and not native_bf16(device):
            log.warning("--precision bf16 on %s, which has no native bf16 math (AMX or "
                        "AVX512-BF16 on a CPU): it runs emulated, slower than fp32", device)
        return Precision("bf16", torch.bfloat16, False, device.type)
    if training and not cuda:
        raise ConfigError("--precision fp16 needs a CUDA GPU; on this CPU use auto, bf16 "
                          "or fp32")
    return Precision("fp16", torch.float16, training, device.type)


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """The device a process runs on: auto takes its local GPU (LOCAL_RANK) when CUDA is
    there, else the CPU; cuda without a visible GPU, or more processes on a machine than
    GPUs, is an error that says what to do."""
    cuda = torch.cuda.is_available() and requested in ("auto", "cuda")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible; use --device cpu")
    if cuda and local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"this process has LOCAL_RANK {local_rank}, but only {torch.cuda.device_count()} "
            "CUDA GPU(s) are visible here: start at most one process per GPU (torchrun "
            "--nproc_per_node <= the GPU count), or train on the CPU with --device cpu")
    return torch.device(f"cuda:{local_rank}" if cuda else "cpu")


def check_compiler(device: torch.device) -> None:
    """torch.compile's CPU backend (inductor) builds C++ at run time: without a compiler it
    would fail at the first step, after the data were prepared. Fail now instead."""
    if device.type != "cpu":
        return
    cxx = os.environ.get("CXX")
    if not any(shutil.which(c) for c in ([cxx] if cxx else ["g++", "clang++"])):
        raise ConfigError("--compile on the CPU needs a C++ compiler (g++ or clang++, or $CXX); "
                          "install one (e.g. apt install g++) or train without --compile")


def tune_for_training(device: torch.device) -> None:
    """Settings for training on `device`. On CUDA: cuDNN times its convolution algorithms
    for each input shape and keeps the fastest (training batches all have one shape), and
    float32 matrix products may use TensorFloat-32 (what cuDNN's convolutions already do by
    default). Nothing changes on a CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")


def torch_threads(n: int | None = None) -> None:
    """A thread pool's initializer: torch in this thread uses `n` threads (all the cores
    when None). Threads that decode beside the model take 1 (see `decoding_pool`): libgomp
    keeps a pool of workers per thread that runs parallel torch code, and once the pools
    together hold more threads than there are cores, every parallel region waits in the
    kernel instead of spinning. Measured on 2 cores: resnet18's forward in a second
    multi-threaded thread took 17.9 ms against 7.3 ms with one (fp32, 32 px)."""
    torch.get_num_threads()  # the thread takes the default first, so that nothing resets it
    torch.set_num_threads(n or os.cpu_count() or 1)


def decoding_pool(workers: int, prefix: str = "imageclf-decode") -> ThreadPoolExecutor:
    """Threads that run torch single-threaded, all started now. torch.set_num_threads in a
    thread also sets the count that threads started later take, so it is put back once they
    have all set theirs: the rest of the process keeps its own."""
    before = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers, initializer=torch_threads, initargs=(1,),
                              thread_name_prefix=prefix)
    barrier = threading.Barrier(workers)
    for started in [pool.submit(barrier.wait, 30) for _ in range(workers)]:
        started.result()
    torch.set_num_threads(before)  # this thread's count already: only the default moves back
    return pool
