"""The device loader: one split's uint8 batches from a BatchSource, produced on the host in a
background thread (prefetch), moved to the training device, augmented there by ONE
grid_sample per batch. The same path for every source: the cache-backed one (data/cached.py)
and a store streamed from a URL (data/stream.py)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Protocol

import torch

from imageclf.core.config import DataConfig
from imageclf.core.hardware import torch_threads
from imageclf.core.records import Skipped
from imageclf.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugParams,
    BatchAugment,
    sample_params,
)
from imageclf.data.cache import CacheStats
from imageclf.data.sampling import epoch_generator
from imageclf.data.storecache import Cache, CacheChoice


class BatchSource(Protocol):
    """Where one split's batches come from, on the host."""

    train: bool
    bs: int  # known images per batch
    extra: int  # images beside them in a training batch (negatives)
    rank: int
    world_size: int

    @property
    def key(self) -> str: ...  # what a checkpoint must find again to resume
    @property
    def choice(self) -> CacheChoice | None: ...  # the form it reads, and why
    @property
    def stats(self) -> CacheStats: ...  # what it decoded and reused
    @property
    def n_items(self) -> int: ...  # usable images
    @property
    def kept_paths(self) -> list: ...  # their references, in item order
    @property
    def targets(self) -> torch.Tensor: ...  # of the usable images, in item order

    def prepare(self) -> None: ...  # build or open what it reads from
    def wait(self) -> None: ...  # until what it writes in the background is written
    def unreadable(self) -> list[Skipped]: ...
    def __len__(self) -> int: ...  # this rank's batches in an epoch

    def batches(self, epoch: int, skip: int = 0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(images (B, 3, P, P) uint8, targets, item ids) of the epoch from batch `skip`."""
        ...


class BatchLoader:
    """One split: a BatchSource's uint8 batches, augmented on the device by ONE grid_sample
    per batch. Yields (x, y): x (B, 3, S, S) float32 normalised (channels_last), y (B,)
    int64 or (B, C) float multi-hot."""

    def __init__(self, source: BatchSource, cfg: DataConfig, device: torch.device | str = "cpu",
                 mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        self.source = source
        self.cfg, self.train = cfg, source.train
        self.device = torch.device(device)
        size = cfg.size if self.train else (cfg.valid_size or cfg.size)
        self.augment = BatchAugment(size, cfg.aug, mean, std)
        self.bs = cfg.bs
        self.rank, self.world_size = source.rank, source.world_size
        self.epoch = 0
        self.skip = 0  # batches of the next pass to skip (resuming mid-epoch)
        self.last_ids: torch.Tensor | None = None  # the items of the batch last yielded

    @property
    def cache(self) -> Cache:
        """The presize cache of a cache-backed source (a stream has none)."""
        return self.source.cache

    @property
    def paths(self) -> list:
        """Every item's reference, readable or not."""
        return self.source.paths

    @property
    def kept_paths(self) -> list:
        """The usable items' references, in item order."""
        return self.source.kept_paths

    def prepare(self) -> None:
        """Build (or open) what the source reads from."""
        self.source.prepare()

    @property
    def n_items(self) -> int:
        return self.source.n_items

    @property
    def targets(self) -> torch.Tensor:
        """Targets of the usable items, in item order."""
        return self.source.targets

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle, crops and augmentation the next pass replays."""
        self.epoch = epoch

    def _params(self, n: int, g: torch.Generator) -> AugParams:
        """Augmentation draws for this process's n images. With several processes the draws
        are made for the global batch and each rank takes its interleaved share, so a job of
        N processes augments every image exactly as one process with N× the batch would."""
        if self.world_size == 1:
            return sample_params(n, self.augment.aug, g)
        p = sample_params(n * self.world_size, self.augment.aug, g)
        r, w = self.rank, self.world_size
        return AugParams(p.matrix[r::w], p.contrast[r::w], p.brightness[r::w])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.source.prepare()
        g_aug = epoch_generator(self.cfg.seed, self.epoch, 1)
        skip, self.skip = self.skip, 0
        if skip and self.train:  # resume mid-epoch: the same augmentation draws as a full pass
            for _ in range(skip):
                self._params(self.bs + self.source.extra, g_aug)
        for xb, yb, ids in prefetch(self.source.batches(self.epoch, skip), self.device):
            self.last_ids = ids
            xb = xb.to(self.device, non_blocking=True)
            yb = yb.to(self.device, non_blocking=True)
            params = self._params(xb.shape[0], g_aug) if self.train else None
            yield self.augment(xb, train=self.train, params=params), yb


def prefetch(items: Iterator, device: torch.device, depth: int = 2) -> Iterator:
    """`items` produced in a background thread, up to `depth` ahead of the consumer (the
    host gathers the next batch while the device works on this one). An error there is
    raised here; a consumer that stops early stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop, counted = threading.Event(), threading.Event()
    if device.type == "cuda" and device.index is None:  # "cuda": this thread's current GPU
        device = torch.device("cuda", torch.cuda.current_device())

    def put(item: object) -> bool:
        """Hand over one item unless the consumer has gone; False when it has."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        # this thread's torch operations (the synthetic negatives' drawing) on one core, as
        # torch's pin-memory thread does. With two intra-op teams, the training step's
        # threads were preempted: at 64 px on 2 cores, an epoch with synthetic negatives
        # took 4.5 s instead of 3.7.
        torch_threads(1)
        counted.set()
        try:
            if device.type == "cuda":  # pin on this process's GPU, not on cuda:0
                torch.cuda.set_device(device)
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
            put(e)

    before = torch.get_num_threads()
    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    counted.wait()
    torch.set_num_threads(before)  # threads started later take the consumer's count again
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


_END = object()
