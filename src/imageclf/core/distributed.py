"""Several processes on PyTorch's own engine (torch.distributed, started by torchrun).

`torchrun --nproc_per_node N -m imageclf train ...` sets RANK / WORLD_SIZE / LOCAL_RANK;
`from_env()` joins the process group (nccl on GPUs, gloo on CPUs) and returns who we are.
One process alone needs none of this: `Dist()` is the single-process default.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as tdist

from imageclf.core.errors import BY_NAME, ImageclfError
from imageclf.core.hardware import pick_device

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def broadcast(self, obj: object) -> object:
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float) -> float:
        """The average of `value` over the ranks."""
        if not self.active:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64)
        tdist.all_reduce(t)
        return float(t) / self.world_size

    def any(self, flag: object) -> bool:
        """True on every rank when any rank's flag is set."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0])
        tdist.all_reduce(t)
        return bool(t.item() > 0)

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.active:
            return [obj]
        box: list = [None] * self.world_size
        tdist.all_gather_object(box, obj)
        return box

    def gather_interleaved(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """Rows sharded as order[rank::world_size] on each rank (DistributedSampler without
        shuffling, padded to equal shares) → the first n rows in order, padding dropped."""
        if not self.active:
            return t[:n]
        parts: list[torch.Tensor | None] = [None] * self.world_size
        tdist.all_gather_object(parts, t.cpu())
        total = sum(p.shape[0] for p in parts)
        out = torch.empty((total, *t.shape[1:]), dtype=t.dtype)
        for r, p in enumerate(parts):
            out[r::self.world_size] = p
        return out[:n]

    def decide(self, fn: Callable[[], T]) -> T:
        """fn() on rank 0 and its result on every rank. An ImageclfError it raises is raised on
        every rank, so a refusal (a run directory in use, a damaged checkpoint) stops the
        whole job with rank 0's message instead of leaving the others waiting."""
        if not self.active:
            return fn()
        box: tuple[bool, object] | None = None
        if self.is_main:
            try:
                box = (True, fn())
            except ImageclfError as e:
                box = (False, (type(e).__name__, str(e)))
        ok, value = self.broadcast(box)  # type: ignore[misc]
        if not ok:
            kind, message = value  # type: ignore[misc]
            raise BY_NAME.get(kind, ImageclfError)(message)
        return value  # type: ignore[return-value]

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment, (0, 1, 0) without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def from_env(device: str = "auto") -> tuple[Dist, torch.device]:
    """Join torchrun's process group when there is one; pick this process's device
    (auto: its local GPU when CUDA is there, else the CPU)."""
    rank, world, local = env_world()
    dev = pick_device(device, local)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend=backend_for(dev), store=attempt_store(rank, world),
                                 rank=rank, world_size=world, device_id=dev if cuda else None)
    return Dist(rank, world, local), dev


def attempt_store(rank: int, world: int) -> tdist.Store:
    """torchrun's key-value store (env://), with keys of this attempt's own. torchrun
    --max-restarts restarts every process of a failed job against the same store, where
    the previous attempt's processes left their addresses under the same keys: a restarted
    rank 0 could read a dead process's address there before the new one wrote its own,
    and the job would fail connecting (seen with gloo, torch 2.14)."""
    store, _, _ = next(tdist.rendezvous("env://", rank, world))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return tdist.PrefixStore(f"imageclf/attempt-{attempt}", store)


def backend_for(dev: torch.device) -> str:
    """gloo on CPUs. On GPUs nccl for the device's tensors (DDP's gradients), with gloo
    beside it for the small CPU tensors the loop exchanges (the stop flag each step, the
    epoch's mean loss, gathered predictions): nccl alone refuses CPU tensors, and moving
    them to the GPU would make every step wait for the device."""
    return "cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo"


def shutdown(wait: bool = False) -> None:
    """Leave the process group (if joined). `wait`: first meet the other processes at a
    barrier, so none tears its connections down while a peer is still using them (gloo can
    abort the process then). Only when every process got this far: a barrier after one
    failed would wait for its timeout. A learner left in a reference cycle still holds the
    process group through its DDP wrapper: collected here, while the interpreter is whole,
    it is not torn down in the interpreter's exit, where gloo's threads could abort the
    process ("terminate called without an active exception", about 1 run in 10 of the
    two-process test before its worker dropped its learner)."""
    if tdist.is_available() and tdist.is_initialized():
        gc.collect()
        if wait:
            tdist.barrier()
        tdist.destroy_process_group()
