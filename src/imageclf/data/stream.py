"""Training from a store at a URL: each process streams its own share of the shards.

The rule for one epoch (pure functions in data/sampling.py, tested without a loader):
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
from functools import cached_property
from pathlib import Path
from typing import IO

import numpy as np
import torch

from imageclf.core.config import DataConfig
from imageclf.core.errors import ConfigError, DataError
from imageclf.core.records import Skipped
from imageclf.data.cache import CacheStats, default_cache_dir
from imageclf.data.items import Items, targets_tensor
from imageclf.data.remote import RemoteStore, StreamItems, open_remote
from imageclf.data.sampling import (
    batches_per_epoch,
    buffer_shuffle,
    crop_fractions,
    epoch_generator,
    offsets_at,
    rank_segments,
    shard_order,
)
from imageclf.data.store import StoreRef, decode_hwc, sample_labels, square_into
from imageclf.data.storecache import CacheChoice
from imageclf.data.urlio import open_url

log = logging.getLogger(__name__)
BUFFER = 2048  # samples in the shuffle buffer (their JPEG bytes: ~30 MB at presize 160)
Sample = tuple[int, bytes, tuple[int, ...]]  # (item, JPEG bytes, class indices)


# --- reading ----------------------------------------------------------------------------------
class StreamedSource:
    """A split of a remote store, streamed shard by shard (see the module's rule) and
    decoded in threads. Implements BatchSource (data/loader.py); it builds nothing, so it
    has no cache: `key` names the stream for resume, `unreadable` the shards cut short."""

    negatives = None  # --negatives is refused for a stream
    extra = 0

    def __init__(self, store: RemoteStore, split: str, cfg: DataConfig, train: bool,
                 device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        self.store, self.split = store, split
        self.shards = store.shards[split]
        self.counts = [store.count(s) for s in self.shards]
        self.n = int(sum(self.counts))
        self.first = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(int)
        self.cfg, self.train, self.bs = cfg, train, cfg.bs
        self.pin = device.type == "cuda"
        self.rank, self.world_size = rank, world_size
        self.buffer = BUFFER
        self.key = hashlib.sha256(json.dumps([store.manifest.fingerprint, split, self.shards]
                                             ).encode()).hexdigest()[:20]
        self.choice = CacheChoice("stream", f"none: streamed from {store.base}")
        self.stats = CacheStats()
        self.lost: list[Skipped] = []
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                        thread_name_prefix="imageclf-stream")
        if store.manifest.presize != cfg.presize:
            raise DataError(f"the store at {store.base} holds images presized to "
                            f"{store.manifest.presize}: train with --presize "
                            f"{store.manifest.presize}")

    def prepare(self) -> None:
        """Nothing to build: the shards are read as the epoch goes."""

    def wait(self) -> None:
        """Nothing is written."""

    def unreadable(self) -> list[Skipped]:
        return list(self.lost)

    @property
    def n_items(self) -> int:
        return self.n

    @cached_property
    def _indexed(self) -> Items:
        """This split's samples as the store's index lists them (fetched now)."""
        return self.store.split_items(self.split)

    @cached_property
    def kept_paths(self) -> list[StoreRef]:
        """Where each sample lies (from the index: the top losses)."""
        return list(self._indexed.paths)

    @cached_property
    def targets(self) -> torch.Tensor:
        """Every sample's target, in item order (from the index). The batches carry the
        labels read from the shards and do not need these."""
        return targets_tensor(self._indexed)

    def __len__(self) -> int:
        return batches_per_epoch(self.n, self.bs, self.world_size, self.train)

    def _samples(self, j: int, start: int, end: int) -> Iterator[Sample]:
        """(item, JPEG bytes, labels) of samples [start, end) of shard j; a shard cut short
        ends early, named in the losses."""
        name = self.shards[j]
        t = 0
        try:
            with open_url(self.store.url(name)) as f:
                for sample in _grouped(f):
                    if t >= end:
                        break
                    if t >= start:
                        if "jpg" not in sample or not ({"cls", "json"} & sample.keys()):
                            break  # cut short inside the sample
                        where = f"shard {name}, sample {sample['__key__']}"
                        labels = sample_labels(sample, self.store.manifest, where)
                        yield int(self.first[j]) + t, sample["jpg"], labels
                    t += 1
        except (tarfile.TarError, EOFError, OSError) as e:
            if isinstance(e, DataError):
                raise
            log.debug("shard %s: %s", name, e)
        if t < end:
            why = f"truncated shard {name}: it ended after {t} of {self.counts[j]} samples"
            self.lost.append(Skipped(self.store.url(name), why))
            log.warning("%s; the rest of this epoch repeats earlier samples in their place",
                        why)

    def _stream(self, epoch: int) -> Iterator[Sample]:
        """This rank's samples for the epoch, in order (training: shuffled)."""
        if self.train:
            order = shard_order(len(self.shards), self.cfg.seed, epoch)
            runs = rank_segments(self.counts, order, self.rank, self.world_size)
            items = (s for run in runs for s in self._samples(*run))
            g = epoch_generator(self.cfg.seed, epoch, 10 + self.rank)
            return buffer_shuffle(items, self.buffer, g)
        return self._valid_stream()

    def _valid_stream(self) -> Iterator[Sample]:
        n, w, r = self.n, self.world_size, self.rank
        total = -(-n // w) * w
        keep_first: dict[int, Sample] = {}
        for j in range(len(self.shards)):
            for sample in self._samples(j, 0, self.counts[j]):
                if sample[0] < total - n:
                    keep_first[sample[0]] = sample
                if sample[0] % w == r:
                    yield sample
        for p in range(n, total):  # the padding: the first samples again
            if p % w == r and (p - n) in keep_first:
                yield keep_first[p - n]

    def _decode(self, batch: list[Sample], u: np.ndarray | None) -> torch.Tensor:
        """The batch's presize squares, each cropped where the epoch's draw `u` puts it
        along the long side the decoded image shows."""
        p = self.cfg.presize
        out = torch.empty((len(batch), 3, p, p), dtype=torch.uint8, pin_memory=self.pin)
        dst = out.numpy()

        def one(k: int) -> None:
            item, data, _ = batch[k]
            hwc = decode_hwc(data)
            off = int(offsets_at(np.int64(max(hwc.shape[:2])), p,
                                 None if u is None else u[item]))
            square_into(hwc, off, p, dst[k])

        list(self._pool.map(one, range(len(batch))))
        return out

    def _targets(self, batch: list[Sample]) -> torch.Tensor:
        """The batch's labels, as read from its samples' shards."""
        if not self.store.manifest.multi_label:
            return torch.tensor([labels[0] for _, _, labels in batch], dtype=torch.int64)
        y = torch.zeros(len(batch), len(self.store.manifest.classes))
        for k, (_, _, labels) in enumerate(batch):
            y[k, list(labels)] = 1.0
        return y

    def batches(self, epoch: int, skip: int = 0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(uint8 images, targets, item ids) of this rank's batches, from batch `skip`."""
        u = crop_fractions(self.n, self.train, epoch_generator(self.cfg.seed, epoch, 0))
        n_batches = len(self)
        per = n_batches * self.bs if self.train else -(-self.n // self.world_size)
        batch: list[Sample] = []
        done = 0
        last: list[Sample] = []
        stream = self._stream(epoch)
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
                    ids = torch.tensor([i for i, _, _ in batch])
                    yb = self._targets(batch)
                    yield self._decode(batch, u), yb.pin_memory() if self.pin else yb, ids
                last, batch = batch, []
                done += 1


def _grouped(f: IO[bytes]) -> Iterator[dict[str, bytes]]:
    """The samples of a tar stream: consecutive members with one key (WebDataset's layout),
    as {"__key__": key, ext: bytes}; the last may be incomplete where the stream was cut."""
    from webdataset.tariterators import base_plus_ext, tar_file_iterator

    sample: dict = {}
    for entry in tar_file_iterator(f):
        key, ext = base_plus_ext(entry["fname"])
        if key is None:
            continue
        if sample and key != sample["__key__"]:
            yield sample
            sample = {}
        sample.setdefault("__key__", key)
        sample[ext.lower()] = entry["data"]
    if sample:
        yield sample


def streamed_sources(cfg: DataConfig, device: torch.device, rank: int, world_size: int
                     ) -> tuple[StreamItems, StreamedSource, StreamedSource]:
    """(items, training source, validation source) of a store at a URL: its manifest
    fetched into the cache folder (the index when first needed), its shards streamed by
    each process."""
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

    def make(split: str, train: bool) -> StreamedSource:
        return StreamedSource(store, split, cfg, train, device, rank, world_size)

    return StreamItems(store), make("train", True), make("valid", False)
