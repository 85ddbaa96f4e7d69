"""Training from a store at a URL: each process streams its own share of the shards.

The rule for one epoch (pure functions below, tested without a loader):
- the split's shards are put in an order drawn from (seed, epoch), the same on every rank;
- their samples, in that order, form one sequence of N; rank r of W takes the contiguous
  positions [r·⌈N/W⌉, (r+1)·⌈N/W⌉), reading only the shards that hold them (a shard's
  leading samples before its share are read past, not decoded);
- where W does not divide N, the sequence is padded by repeating its first samples, as
  PyTorch's DistributedSampler pads: those few are seen twice, every other sample once;
- within its share a rank shuffles through a buffer seeded by (seed, epoch, rank); training
  drops its last partial batch, as the local loader does.
Validation reads every validation shard in order; rank r keeps positions r, r+W, ... (the
same interleaving, and padding, that the local loader and `gather_interleaved` use).
Resuming mid-epoch replays the same stream and skips the batches already trained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imageclf.data.cache import CacheStats, default_cache_dir
from imageclf.data.jpegcache import CacheChoice
from imageclf.data.loader import BatchLoader, epoch_generator, prefetch, targets_tensor
from imageclf.data.remote import RemoteStore, open_url
from imageclf.data.sources import Items
from imageclf.data.store import decode_square, store_ref
from imageclf.errors import DataError
from imageclf.records import Skipped

log = logging.getLogger(__name__)
BUFFER = 2048  # samples in the shuffle buffer (their JPEG bytes: ~30 MB at presize 160)


# --- the plan: pure functions ---------------------------------------------------------------
def shard_order(n_shards: int, seed: int, epoch: int) -> list[int]:
    """The epoch's order of the shards, the same on every rank."""
    return torch.randperm(n_shards, generator=epoch_generator(seed, epoch, 9)).tolist()


def rank_segments(counts: list[int], order: list[int], rank: int, world: int
                  ) -> list[tuple[int, int, int]]:
    """Rank's share of the epoch as runs (shard, first sample, end) in reading order: the
    positions [rank·⌈N/W⌉, (rank+1)·⌈N/W⌉) of the shards' samples in `order`, positions
    past N wrapping to the start (the padding)."""
    n = sum(counts)
    per = -(-n // world)
    lo, hi = rank * per, (rank + 1) * per
    spans = [(lo, min(hi, n))] if lo < n else []
    if hi > n:
        spans.append((max(lo, n) - n, hi - n))
    out = []
    for a, b in spans:
        start = 0
        for j in order:
            end = start + counts[j]
            s, e = max(a, start), min(b, end)
            if s < e:
                out.append((j, s - start, e - start))
            start = end
    return out


def buffer_shuffle(items: Iterator, size: int, g: torch.Generator) -> Iterator:
    """Items in a shuffled order, holding at most `size` at a time."""
    buf: list = []
    for it in items:
        if len(buf) < size:
            buf.append(it)
            continue
        k = int(torch.randint(len(buf), (1,), generator=g))
        buf[k], it = it, buf[k]
        yield it
    for k in torch.randperm(len(buf), generator=g).tolist():
        yield buf[k]


# --- reading ----------------------------------------------------------------------------------
@dataclass
class StreamSource:
    """What a streamed split has in place of a cache: a key for resume, the losses found."""

    key: str
    lengths: np.ndarray  # (N,) each sample's long side
    transposed: np.ndarray  # (N,) stored portrait
    stats: CacheStats = field(default_factory=CacheStats)
    choice: CacheChoice | None = None
    lost: list[Skipped] = field(default_factory=list)

    def build(self, progress=None) -> CacheStats:
        return self.stats

    def wait(self) -> None:
        """Nothing is written."""

    def unreadable(self) -> list[Skipped]:
        return list(self.lost)


class StreamLoader(BatchLoader):
    """A split of a remote store, streamed shard by shard (see the module's rule), decoded
    in threads and augmented on the device like BatchLoader's batches."""

    def __init__(self, store: RemoteStore, split: str, targets: torch.Tensor, cfg, train: bool,
                 device: torch.device | str = "cpu", mean=None, std=None, rank: int = 0,
                 world_size: int = 1, n_classes: int = 0, multi_label: bool = False) -> None:
        from imageclf.data.augment import IMAGENET_MEAN, IMAGENET_STD, BatchAugment

        self.store, self.split = store, split
        self.shards = store.shards[split]
        rows = [r for r in store.rows if r.split == split]
        by_shard: dict[str, list] = {s: [] for s in self.shards}
        for r in rows:
            if r.shard in by_shard:
                by_shard[r.shard].append(r)
        self.rows = [r for s in self.shards for r in by_shard[s]]  # item order
        self.counts = [len(by_shard[s]) for s in self.shards]
        self.first = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(int)
        self.keys = [r.key for r in self.rows]
        self.paths = [store_ref(store.local / r.shard, r.offset, r.size) for r in self.rows]
        self.all_targets = targets
        self.cfg, self.train = cfg, train
        self.device = torch.device(device)
        size = cfg.size if train else (cfg.valid_size or cfg.size)
        self.augment = BatchAugment(size, cfg.aug, mean or IMAGENET_MEAN, std or IMAGENET_STD)
        self.bs = cfg.bs
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0
        self.last_ids: torch.Tensor | None = None
        self.buffer = BUFFER
        self.index = np.arange(len(self.rows))
        self.negatives, self.neg_k, self.neg_index = None, 0, None
        self.n_classes, self.multi_label = n_classes, multi_label
        key_src = json.dumps([store.manifest.fingerprint, split, self.shards])
        self.cache = StreamSource(
            hashlib.sha256(key_src.encode()).hexdigest()[:20],
            np.array([max(r.width, r.height) for r in self.rows], np.int32),
            np.array([r.height > r.width for r in self.rows], bool),
            choice=CacheChoice("stream", f"none: streamed from {store.base}"))
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                        thread_name_prefix="imageclf-stream")
        if store.manifest.presize != cfg.presize:
            raise DataError(f"the store at {store.base} holds images presized to "
                            f"{store.manifest.presize}: train with --presize "
                            f"{store.manifest.presize}")

    def prepare(self) -> None:
        """Nothing to build: the shards are read as the epoch goes."""

    def _samples(self, j: int, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """(item, JPEG bytes) of samples [start, end) of shard j; a shard cut short ends
        early, named in the losses."""
        from webdataset.tariterators import tar_file_iterator

        name = self.shards[j]
        t = 0
        try:
            with open_url(self.store.url(name)) as f:
                for entry in tar_file_iterator(f, select_files=lambda n: n.endswith(".jpg")):
                    if t >= end:
                        break
                    if t >= start:
                        item = int(self.first[j]) + t
                        if entry["fname"] != self.keys[item] + ".jpg":
                            raise DataError(f"shard {name} does not match the store's index "
                                            f"at sample {t} ({entry['fname']}); pack it again")
                        yield item, entry["data"]
                    t += 1
        except (tarfile.TarError, EOFError, OSError) as e:
            if isinstance(e, DataError):
                raise
            log.debug("shard %s: %s", name, e)
        if t < end:
            why = f"truncated shard {name}: it ended after {t} of {self.counts[j]} samples"
            self.cache.lost.append(Skipped(self.store.url(name), why))
            log.warning("%s; the rest of this epoch repeats earlier samples in their place",
                        why)

    def _stream(self) -> Iterator[tuple[int, bytes]]:
        """This rank's samples for the epoch, in order (training: shuffled)."""
        if self.train:
            order = shard_order(len(self.shards), self.cfg.seed, self.epoch)
            runs = rank_segments(self.counts, order, self.rank, self.world_size)
            items = (s for run in runs for s in self._samples(*run))
            g = epoch_generator(self.cfg.seed, self.epoch, 10 + self.rank)
            return buffer_shuffle(items, self.buffer, g)
        return self._valid_stream()

    def _valid_stream(self) -> Iterator[tuple[int, bytes]]:
        n, w, r = len(self.rows), self.world_size, self.rank
        total = -(-n // w) * w
        keep_first: dict[int, bytes] = {}
        for j in range(len(self.shards)):
            for item, data in self._samples(j, 0, self.counts[j]):
                if item < total - n:
                    keep_first[item] = data
                if item % w == r:
                    yield item, data
        for p in range(n, total):  # the padding: the first samples again
            if p % w == r and (p - n) in keep_first:
                yield p - n, keep_first[p - n]

    def _decode(self, batch: list[tuple[int, bytes]], offsets: np.ndarray) -> torch.Tensor:
        p = self.cfg.presize
        out = torch.empty((len(batch), 3, p, p), dtype=torch.uint8,
                          pin_memory=self.device.type == "cuda")
        dst = out.numpy()

        def one(k: int) -> None:
            item, data = batch[k]
            decode_square(data, int(offsets[item]), p, bool(self.cache.transposed[item]),
                          dst[k])

        list(self._pool.map(one, range(len(batch))))
        return out

    def _batch_stream(self, skip: int
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(uint8 images, targets, item ids) of this rank's batches, from batch `skip`."""
        offsets = self._offsets(self.cache, self.index,
                                epoch_generator(self.cfg.seed, self.epoch, 0))
        n_batches = len(self)
        per = n_batches * self.bs if self.train else -(-len(self.rows) // self.world_size)
        batch: list[tuple[int, bytes]] = []
        done = 0
        last: list[tuple[int, bytes]] = []
        stream = self._stream()
        while done < n_batches:
            sample = next(stream, None)
            if sample is None:  # a shard was cut short: repeat the last batch's samples
                if not last:
                    raise DataError(f"no sample of the {self.split} split could be read "
                                    f"from {self.store.base}")
                sample = last[len(batch) % len(last)]
            batch.append(sample)
            if len(batch) == self.bs or (not self.train and done * self.bs + len(batch) == per):
                if done >= skip:
                    ids = torch.tensor([i for i, _ in batch])
                    yield self._decode(batch, offsets), self.all_targets[ids], ids
                last, batch = batch, []
                done += 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g_aug = epoch_generator(self.cfg.seed, self.epoch, 1)
        skip, self.skip = self.skip, 0
        if self.train:
            for _ in range(skip):  # the same augmentation draws as a full pass
                self._params(self.bs, g_aug)
        pin = self.device.type == "cuda"
        for xb, yb, ids in prefetch(self._batch_stream(skip), self.device):
            self.last_ids = ids  # which samples the batch being yielded holds
            xb = xb.to(self.device, non_blocking=True)
            yb = (yb.pin_memory() if pin else yb).to(self.device, non_blocking=True)
            params = self._params(xb.shape[0], g_aug) if self.train else None
            yield self.augment(xb, train=self.train, params=params), yb


def streamed_loaders(cfg, device: torch.device | str, mean: tuple[float, ...],
                     std: tuple[float, ...], rank: int, world_size: int
                     ) -> tuple[Items, StreamLoader, StreamLoader]:
    """(items, training loader, validation loader) of a store at a URL: its manifest and
    index fetched into the cache folder, its shards streamed by each process."""
    from imageclf.data.remote import items_from_remote, open_remote
    from imageclf.errors import ConfigError

    if cfg.negatives:
        raise ConfigError("--negatives with a store at a URL is not supported: pack the "
                          "negatives into the store's folder, or train from a local copy")
    if cfg.sampler != "shuffle":
        raise ConfigError(f"--sampler {cfg.sampler} draws images at random from the whole "
                          "set, which a stream of shards cannot: use --sampler shuffle, or "
                          "train from a local copy of the store")
    url = str(cfg.source.path)
    where = Path(cfg.cache_dir or default_cache_dir()) / (
        "remote-" + hashlib.sha256(f"{url} {rank}".encode()).hexdigest()[:16])
    store = open_remote(url, where)
    items = items_from_remote(store)
    targets = targets_tensor(items)
    tr, va = items.split_indices()
    n, ml = len(items.classes), items.multi_label

    def make(split: str, y: torch.Tensor, train: bool) -> StreamLoader:
        return StreamLoader(store, split, y, cfg, train, device, mean, std, rank,
                            world_size, n, ml)

    return items, make("train", targets[tr], True), make("valid", targets[va], False)
