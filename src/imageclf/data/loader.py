"""Batches of presized uint8 images, moved to the device and augmented there."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from imageclf.config import DataConfig
from imageclf.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugParams,
    BatchAugment,
    sample_params,
)
from imageclf.data.jpegcache import Cache, check_store_presize, make_cache
from imageclf.data.negatives import (
    NegativeSet,
    negative_order,
    negative_set,
    negative_targets,
    per_batch,
)
from imageclf.data.sources import Items, resolve
from imageclf.data.store import is_store_ref, split_store_ref
from imageclf.errors import DataError
from imageclf.records import Skipped

log = logging.getLogger(__name__)


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator for one (seed, epoch, purpose): resuming at an epoch replays it."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 7 + stream) % (2**63))


def item_weights(targets: torch.Tensor) -> torch.Tensor:
    """Sampling weight of each item so that every class is drawn equally often: 1 / images
    of its class; multi-label, the mean over its labels (an image with no label: 1 / images
    with no label)."""
    if targets.dim() == 1:
        counts = torch.bincount(targets.long()).double()
        return 1.0 / counts[targets.long()]
    t = targets.double()
    per_class = 1.0 / t.sum(0).clamp_min(1)
    n_labels = t.sum(1)
    none = n_labels == 0
    w = (t @ per_class) / n_labels.clamp_min(1)
    return torch.where(none, 1.0 / none.sum().clamp_min(1), w)


def balanced_order(targets: torch.Tensor, seed: int, epoch: int, rank: int = 0,
                   world_size: int = 1) -> np.ndarray:
    """This process's share of a class-balanced epoch: as many draws as items, with
    replacement, weighted by `item_weights`, from the (seed, epoch) generator, so a resumed
    epoch replays it and every rank draws the same global order, then takes items r, r+N,
    ... (padded like the shuffle so every rank has as many)."""
    n = len(targets)
    g = epoch_generator(seed, epoch, stream=5)
    order = torch.multinomial(item_weights(targets), n, replacement=True, generator=g)
    total = -(-n // world_size) * world_size
    order = torch.cat([order, order[: total - n]])
    return order[rank::world_size].numpy()


class BatchLoader:
    """One split: uint8 batches gathered from the cache in a background thread, augmented on
    the device by ONE grid_sample per batch. Yields (x, y): x (B, 3, S, S) float32
    normalised (channels_last), y (B,) int64 or (B, C) float multi-hot."""

    def __init__(self, paths: list[Path], targets: torch.Tensor, cfg: DataConfig, train: bool,
                 device: torch.device | str = "cpu", cache_dir: str | Path | None = None,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 rank: int = 0, world_size: int = 1, role: str | None = None,
                 negatives: Sequence[Path] = (), n_classes: int = 0,
                 multi_label: bool = False) -> None:
        self.paths = paths
        self.all_targets = targets
        self.cfg = cfg
        self.train = train
        self.device = torch.device(device)
        self.cache = make_cache(paths, cfg, cache_dir, role or ("train" if train else "valid"),
                                self.device)
        size = cfg.size if train else (cfg.valid_size or cfg.size)
        self.augment = BatchAugment(size, cfg.aug, mean, std)
        self.bs = cfg.bs
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip = 0  # batches of the next pass to skip (resuming mid-epoch)
        self.index: np.ndarray | None = None  # usable cache slots
        # training with negatives: their own cache, `neg_k` of them beside each batch
        self.negatives = make_cache(list(negatives), cfg, cache_dir, "negatives",
                                    self.device) if negatives else None
        self.neg_k = per_batch(cfg.negatives_ratio, cfg.bs) if negatives else 0
        self.neg_index: np.ndarray | None = None
        self.n_classes, self.multi_label = n_classes, multi_label

    def prepare(self) -> None:
        """Build (or open) the presize cache; decode only what it lacks."""
        if self.index is None:
            self.cache.build()
            self.index = np.flatnonzero(self.cache.ok)
        if self.negatives is not None and self.neg_index is None:
            self.negatives.build()
            self.neg_index = np.flatnonzero(self.negatives.ok)
            if not len(self.neg_index):
                raise DataError(f"none of the {len(self.negatives.paths)} --negatives "
                                "training images could be read")

    @property
    def n_items(self) -> int:
        self.prepare()
        return len(self.index)

    @property
    def targets(self) -> torch.Tensor:
        """Targets of the usable items, in cache order."""
        self.prepare()
        return self.all_targets[torch.from_numpy(self.index)]

    def sampler(self) -> DistributedSampler:
        """This process's share of the split for the current epoch (PyTorch's own sampler).

        One process is the case num_replicas=1. Training: shuffled by (seed, epoch), padded
        by repeating the first items so every rank has as many. Validation: in order, rank r
        taking items r, r+N, ...; the padding it adds at the end is cut off again when the
        predictions are gathered (`Dist.gather_interleaved(t, n)`), so no image counts
        twice in the metrics."""
        s = DistributedSampler(range(self.n_items), num_replicas=self.world_size,
                               rank=self.rank, shuffle=self.train, seed=self.cfg.seed,
                               drop_last=False)
        s.set_epoch(self.epoch)
        return s

    def _order(self) -> np.ndarray:
        if self.train and self.cfg.sampler == "balanced":
            order = balanced_order(self.targets, self.cfg.seed, self.epoch, self.rank,
                                   self.world_size)
        else:
            order = np.fromiter(iter(self.sampler()), dtype=np.int64)
        if self.train and len(order) >= self.bs:
            order = order[: len(order) // self.bs * self.bs]  # drop the last partial batch
        return order

    def __len__(self) -> int:
        n = -(-self.n_items // self.world_size)  # the sampler's per-rank count
        if self.train and n >= self.bs:
            n = n // self.bs * self.bs
        return -(-n // self.bs)

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

    def _gather(self, parts: Sequence[tuple[Cache, np.ndarray, np.ndarray]]
                ) -> torch.Tensor:
        """One uint8 batch of the (cache, slots, crop offsets) parts, in order."""
        p = self.cfg.presize
        pin = self.device.type == "cuda"
        n = sum(len(slots) for _, slots, _ in parts)
        out = torch.empty((n, 3, p, p), dtype=torch.uint8, pin_memory=pin)
        dst = out.numpy()
        j = 0
        for cache, slots, offsets in parts:
            cache.squares(slots, offsets, p, dst[j:j + len(slots)])
            j += len(slots)
        return out

    def _batches(self, order: np.ndarray, offsets: np.ndarray, targets: torch.Tensor,
                 negatives: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, targets) on the host; pinned when they go to a GPU, so that the
        copies can be non-blocking. With `negatives` ((batches, k) indices into the usable
        negatives, and their crop offsets), each batch's k negatives follow its known
        images, their targets NEGATIVE."""
        pin = self.device.type == "cuda"
        for b, s in enumerate(range(0, len(order), self.bs)):
            sel = order[s:s + self.bs]
            yb = targets[torch.from_numpy(sel)]
            parts = [(self.cache, self.index[sel], offsets[sel])]
            if negatives is not None:
                nsel = negatives[0][b]
                parts.append((self.negatives, self.neg_index[nsel], negatives[1][nsel]))
                yb = torch.cat([yb, negative_targets(len(nsel), self.n_classes,
                                                     self.multi_label)])
            yield self._gather(parts), yb.pin_memory() if pin else yb

    def _offsets(self, cache: Cache, index: np.ndarray, g: torch.Generator
                 ) -> np.ndarray:
        """Where each image's presize square starts along its long side: at random per
        epoch when training, centred otherwise."""
        room = np.maximum(cache.lengths[index] - self.cfg.presize, 0)
        if not self.train:
            return room // 2
        u = torch.rand(len(room), generator=g, dtype=torch.float64).numpy()
        return np.floor(u * (room + 1)).astype(np.int64)

    def _negatives(self, n_batches: int) -> tuple[np.ndarray, np.ndarray] | None:
        """This epoch's negatives of each batch and their crop offsets (None without)."""
        if self.negatives is None or not self.train:
            return None
        seed = self.cfg.seed
        which = negative_order(len(self.neg_index), self.neg_k, n_batches, seed, self.epoch,
                               self.rank, self.world_size)
        return which, self._offsets(self.negatives, self.neg_index,
                                    epoch_generator(seed, self.epoch, 8))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.prepare()
        seed = self.cfg.seed
        g_crop = epoch_generator(seed, self.epoch, 0)
        g_aug = epoch_generator(seed, self.epoch, 1)
        order = self._order()
        offsets = self._offsets(self.cache, self.index, g_crop)
        negatives = self._negatives(-(-len(order) // self.bs))
        targets = self.targets
        skip, self.skip = self.skip, 0
        if skip:  # resume mid-epoch: the same batches and augmentation draws as a full pass
            order = order[skip * self.bs:]
            if negatives is not None:
                negatives = (negatives[0][skip:], negatives[1])
            if self.train:
                for _ in range(skip):
                    self._params(self.bs + self.neg_k, g_aug)
        for xb, yb in prefetch(self._batches(order, offsets, targets, negatives),
                               self.device):
            xb = xb.to(self.device, non_blocking=True)
            yb = yb.to(self.device, non_blocking=True)
            params = self._params(xb.shape[0], g_aug) if self.train else None
            yield self.augment(xb, train=self.train, params=params), yb


def prefetch(items: Iterator, device: torch.device, depth: int = 2) -> Iterator:
    """`items` produced in a background thread, up to `depth` ahead of the consumer (the
    host gathers the next batch while the device works on this one). An error there is
    raised here; a consumer that stops early stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
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
        try:
            if device.type == "cuda":  # pin on this process's GPU, not on cuda:0
                torch.cuda.set_device(device)
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
            put(e)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
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


def targets_tensor(items: Items) -> torch.Tensor:
    """(N,) int64 class indices, or (N, C) float multi-hot for multi-label items."""
    if items.multi_label:
        t = torch.zeros(len(items), len(items.classes))
        for i, labels in enumerate(items.labels):
            t[i, list(labels)] = 1.0
        return t
    return torch.tensor([lab[0] for lab in items.labels], dtype=torch.int64)


@dataclass
class DataLoaders:
    """The training and validation loaders of one data set, and what was found in it."""

    items: Items
    train: BatchLoader
    valid: BatchLoader
    cfg: DataConfig
    negatives: NegativeSet | None = None
    negatives_valid: BatchLoader | None = None  # the negatives' held-out part

    @property
    def classes(self) -> tuple[str, ...]:
        return self.items.classes

    @property
    def multi_label(self) -> bool:
        return self.items.multi_label

    @classmethod
    def from_config(cls, cfg: DataConfig, device: torch.device | str = "cpu",
                    mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD, rank: int = 0,
                    world_size: int = 1) -> DataLoaders:
        """Resolve `cfg.source` and make both loaders (caches are built lazily); a store at
        a URL is streamed (data/stream.py)."""
        from imageclf.data.remote import is_url

        if is_url(cfg.source.path):
            return cls._streamed(cfg, device, mean, std, rank, world_size)
        items = resolve(cfg.source, cfg.seed)
        if items.paths and is_store_ref(items.paths[0]):
            check_store_presize(split_store_ref(items.paths[0])[0].parent, cfg.presize)
        targets = targets_tensor(items)
        tr, va = items.split_indices()
        neg = negative_set(cfg.negatives, cfg.source.valid_pct, cfg.seed) \
            if cfg.negatives else None
        n, ml = len(items.classes), items.multi_label

        def make(paths: list[Path], y: torch.Tensor, train: bool, **kw) -> BatchLoader:
            return BatchLoader(paths, y, cfg, train, device, mean=mean, std=std, rank=rank,
                               world_size=world_size, n_classes=n, multi_label=ml, **kw)

        train = make([items.paths[i] for i in tr], targets[tr], True,
                     negatives=neg.train if neg else ())
        valid = make([items.paths[i] for i in va], targets[va], False)
        neg_valid = make(list(neg.valid), negative_targets(len(neg.valid), n, ml), False,
                         role="negatives-valid") if neg else None
        return cls(items, train, valid, cfg, neg, neg_valid)

    @classmethod
    def _streamed(cls, cfg: DataConfig, device: torch.device | str,
                  mean: tuple[float, ...], std: tuple[float, ...], rank: int,
                  world_size: int) -> DataLoaders:
        """Both loaders of a store at a URL (data/stream.py)."""
        from imageclf.data.stream import streamed_loaders

        return cls(*streamed_loaders(cfg, device, mean, std, rank, world_size), cfg)

    def show_batch(self, n: int = 16, train: bool = True, path: str | Path | None = None):
        """A grid of one augmented training (or validation) batch with its labels, as a
        matplotlib Figure (saved when given a path)."""
        from imageclf.plots import show_batch

        return show_batch(self, path, n=n, train=train)

    def prepare(self) -> None:
        """Decode and cache both splits now."""
        for loader in self.loaders:
            loader.prepare()

    @property
    def loaders(self) -> list[BatchLoader]:
        """Training, validation and (with negatives) the negatives' held-out loader."""
        return [self.train, self.valid] + ([self.negatives_valid]
                                           if self.negatives_valid is not None else [])

    def cache_keys(self) -> dict[str, str]:
        """The presize caches' keys (which files, which presize): what a checkpoint must
        find again to resume."""
        keys = {"train": self.train.cache.key, "valid": self.valid.cache.key}
        if self.train.negatives is not None and self.negatives_valid is not None:
            keys |= {"negatives": self.train.negatives.key,
                     "negatives_valid": self.negatives_valid.cache.key}
        return keys

    def cache_forms(self) -> dict[str, str]:
        """Each split's cache form and why it was chosen: {"train": "raw: auto: ..."}."""
        caches = {"train": self.train.cache, "valid": self.valid.cache}
        if self.train.negatives is not None:
            caches["negatives"] = self.train.negatives
        return {k: c.choice.reason for k, c in caches.items() if c.choice is not None}

    def skipped(self) -> list[Skipped]:
        """Every file left out as unreadable, with the reason (negatives' too)."""
        self.prepare()
        out = self.train.cache.unreadable() + self.valid.cache.unreadable()
        if self.train.negatives is not None:
            out += self.train.negatives.unreadable()
        if self.negatives_valid is not None:
            out += self.negatives_valid.cache.unreadable()
        return out
