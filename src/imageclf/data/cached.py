"""The cache-backed batch source: one split's uint8 batches gathered from its presize cache
(raw or JPEG, data/storecache.py), with the negatives' own cache beside it when training
with --negatives. The device loader (data/loader.py) moves and augments what it yields."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from imageclf.core.config import DataConfig
from imageclf.core.errors import DataError
from imageclf.core.records import Skipped
from imageclf.data.cache import CacheStats
from imageclf.data.negatives import negative_targets
from imageclf.data.refs import ImageRef
from imageclf.data.sampling import (
    balanced_order,
    batches_per_epoch,
    crop_offsets,
    epoch_generator,
    negative_order,
    per_batch,
)
from imageclf.data.storecache import Cache, CacheChoice, make_cache
from imageclf.data.synthetic import draw_batch

HostBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # uint8 images, targets, item ids


class CachedSource:
    """One split of a local data set, read from its presize cache. Implements BatchSource
    (data/loader.py): `batches(epoch, skip)` yields (images (B, 3, P, P) uint8, targets,
    item ids) on the host, pinned when they go to a GPU."""

    def __init__(self, paths: Sequence[ImageRef], targets: torch.Tensor, cfg: DataConfig,
                 train: bool, device: torch.device, *, part: tuple[int, int] = (0, 1),
                 role: str | None = None, negatives: Sequence[Path] = (),
                 synthetic: Sequence[str] = ()) -> None:
        """`targets`: (N,) class indices or (N, C) multi-hot; `part`: (rank, world size),
        this process's share; `negatives`: images of no class, beside each training batch;
        `synthetic`: the synthetic families drawn beside them (data/synthetic.py)."""
        self.paths = list(paths)
        self.all_targets = targets
        self.cfg, self.train = cfg, train
        self.pin = device.type == "cuda"
        self.cache = make_cache(self.paths, cfg, None, role or ("train" if train else "valid"),
                                device)
        self.bs = cfg.bs
        self.rank, self.world_size = part
        self.index: np.ndarray | None = None  # usable cache slots
        # training with negatives: their own cache, `extra` of them beside each batch
        self.negatives = make_cache(list(negatives), cfg, None, "negatives", device) \
            if negatives else None
        self.synthetic = tuple(synthetic) if train else ()
        extra = per_batch(cfg.ratio_of_negatives(bool(negatives)), cfg.bs) \
            if negatives or self.synthetic else 0
        # both: half the slots each (the synthetic ones at least one)
        self.n_synthetic = (max(1, extra // 2) if negatives else extra) if self.synthetic else 0
        self.n_files = extra - self.n_synthetic if negatives else 0
        self.extra = self.n_files + self.n_synthetic
        self.neg_index: np.ndarray | None = None
        self.multi_label = targets.dim() == 2
        self.n_classes = targets.shape[1] if self.multi_label else 0  # a negative's row

    # --- what the loader and the run ask of a source ----------------------------------------
    @property
    def key(self) -> str:
        return self.cache.key

    @property
    def choice(self) -> CacheChoice | None:
        return self.cache.choice

    @property
    def stats(self) -> CacheStats:
        return self.cache.stats

    def wait(self) -> None:
        """Until the cache is on disk (it is written in the background)."""
        self.cache.wait()

    def unreadable(self) -> list[Skipped]:
        return self.cache.unreadable()

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
    def kept_paths(self) -> list[ImageRef]:
        self.prepare()
        return [self.paths[i] for i in self.index]

    @property
    def targets(self) -> torch.Tensor:
        """Targets of the usable items, in cache order."""
        self.prepare()
        return self.all_targets[torch.from_numpy(self.index)]

    def __len__(self) -> int:
        return batches_per_epoch(self.n_items, self.bs, self.world_size, self.train)

    # --- one epoch ---------------------------------------------------------------------------
    def sampler(self, epoch: int) -> DistributedSampler:
        """This process's share of the split for `epoch` (PyTorch's own sampler).

        One process is the case num_replicas=1. Training: shuffled by (seed, epoch), padded
        by repeating the first items so every rank has as many. Validation: in order, rank r
        taking items r, r+N, ...; the padding it adds at the end is cut off again when the
        predictions are gathered (`Dist.gather_interleaved(t, n)`), so no image counts
        twice in the metrics."""
        s = DistributedSampler(range(self.n_items), num_replicas=self.world_size,
                               rank=self.rank, shuffle=self.train, seed=self.cfg.seed,
                               drop_last=False)
        s.set_epoch(epoch)
        return s

    def _order(self, epoch: int) -> np.ndarray:
        if self.train and self.cfg.sampler == "balanced":
            order = balanced_order(self.targets, self.cfg.seed, epoch, self.rank,
                                   self.world_size)
        else:
            order = np.fromiter(iter(self.sampler(epoch)), dtype=np.int64)
        if self.train and len(order) >= self.bs:
            order = order[: len(order) // self.bs * self.bs]  # drop the last partial batch
        return order

    def _offsets(self, cache: Cache, index: np.ndarray, g: torch.Generator) -> np.ndarray:
        """The crop offsets of the usable slots `index` of `cache` (sampling.crop_offsets)."""
        return crop_offsets(cache.lengths[index], self.cfg.presize, self.train, g)

    def _negatives(self, n_batches: int, epoch: int) -> tuple[np.ndarray, np.ndarray] | None:
        """This epoch's negatives of each batch and their crop offsets (None without)."""
        if self.negatives is None or not self.train:
            return None
        seed = self.cfg.seed
        which = negative_order(len(self.neg_index), self.n_files, n_batches, seed, epoch,
                               self.rank, self.world_size)
        return which, self._offsets(self.negatives, self.neg_index,
                                    epoch_generator(seed, epoch, 8))

    def _gather(self, parts: Sequence[tuple[Cache, np.ndarray, np.ndarray]],
                drawn: Sequence[int] = (), epoch: int = 0) -> torch.Tensor:
        """One uint8 batch of the (cache, slots, crop offsets) parts, in order, then the
        synthetic images of the epoch's global slots `drawn`."""
        p = self.cfg.presize
        n = sum(len(slots) for _, slots, _ in parts)
        out = torch.empty((n + len(drawn), 3, p, p), dtype=torch.uint8, pin_memory=self.pin)
        dst = out.numpy()
        j = 0
        for cache, slots, offsets in parts:
            cache.squares(slots, offsets, p, dst[j:j + len(slots)])
            j += len(slots)
        if drawn:
            known = out[:len(parts[0][1])]
            draw_batch(self.synthetic, drawn, p, self.cfg.seed, epoch, known, dst[n:])
        return out

    def _drawn(self, b: int) -> list[int]:
        """The global slots of batch `b`'s synthetic images that this process draws: the
        job's batch has n_synthetic × world size of them, rank r taking r, r+N, ..."""
        k, w = self.n_synthetic, self.world_size
        return [b * k * w + self.rank + w * j for j in range(k)]

    def batches(self, epoch: int, skip: int = 0) -> Iterator[HostBatch]:
        """The epoch's batches from batch `skip` on (resuming mid-epoch: the same batches as
        a full pass). With negatives, each batch's `extra` negatives follow its known
        images, their targets NEGATIVE."""
        self.prepare()
        order = self._order(epoch)
        offsets = self._offsets(self.cache, self.index, epoch_generator(self.cfg.seed, epoch, 0))
        negatives = self._negatives(-(-len(order) // self.bs), epoch)
        targets = self.targets
        for b, s in enumerate(range(0, len(order), self.bs)):
            if b < skip:
                continue
            sel = order[s:s + self.bs]
            yb = targets[torch.from_numpy(sel)]
            parts = [(self.cache, self.index[sel], offsets[sel])]
            if negatives is not None:
                nsel = negatives[0][b]
                parts.append((self.negatives, self.neg_index[nsel], negatives[1][nsel]))
            drawn = self._drawn(b) if self.n_synthetic else []
            if self.extra:
                yb = torch.cat([yb, negative_targets(self.extra, self.n_classes,
                                                     self.multi_label)])
            yield self._gather(parts, drawn, epoch), yb.pin_memory() if self.pin else yb, \
                torch.from_numpy(sel)
