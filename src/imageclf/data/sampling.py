"""Sampling and ordering: which items each process reads in each epoch, in which order,
and where each image is cropped.
Pure functions of (seed, epoch, rank), the same on every rank, so a resumed epoch replays
them; tested without a loader."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


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


def per_batch(ratio: float, bs: int) -> int:
    """Negatives beside `bs` known images in each training batch (at least one)."""
    return max(1, round(ratio * bs))


def negative_order(n: int, k: int, n_batches: int, seed: int, epoch: int, rank: int = 0,
                   world_size: int = 1) -> np.ndarray:
    """(n_batches, k) indices into the `n` usable negatives: this process's `k` negatives
    of each batch of the epoch. The job draws one global sequence from the (seed, epoch)
    generator, shuffles of all `n` placed end to end (so each negative comes round once
    before any comes twice), deals `k * world_size` to each batch and rank r takes entries
    r, r+N, ... of it: a resumed epoch, and a job of several processes, see exactly the
    negatives one uninterrupted process would."""
    from imageclf.data.sampling import epoch_generator

    need = n_batches * k * world_size
    if n == 0 or need == 0:
        return np.zeros((n_batches, k), dtype=np.int64)
    g = epoch_generator(seed, epoch, stream=7)
    rounds = -(-need // n)
    seq = torch.cat([torch.randperm(n, generator=g) for _ in range(rounds)])[:need]
    per = seq.view(n_batches, k * world_size)
    return per[:, rank::world_size].numpy()


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


def batches_per_epoch(n_items: int, bs: int, world_size: int, train: bool) -> int:
    """One rank's batches in an epoch: its share as the sampler deals it (padded to equal
    shares), training dropping the last partial batch."""
    n = -(-n_items // world_size)
    if train and n >= bs:
        n = n // bs * bs
    return -(-n // bs)


def crop_offsets(lengths: np.ndarray, presize: int, train: bool, g: torch.Generator
                 ) -> np.ndarray:
    """Where each image's presize square starts along its long side (`lengths`): at random
    per epoch when training, centred otherwise."""
    return offsets_at(lengths, presize, crop_fractions(len(lengths), train, g))


def crop_fractions(n: int, train: bool, g: torch.Generator) -> np.ndarray | None:
    """The epoch's draw behind `crop_offsets` for n images, before their lengths are known
    (a stream learns them as it decodes): None when not training (centred)."""
    return torch.rand(n, generator=g, dtype=torch.float64).numpy() if train else None


def offsets_at(lengths: np.ndarray, presize: int, u: np.ndarray | None) -> np.ndarray:
    """The crop offsets of images of `lengths` for the draw `u` (crop_fractions)."""
    room = np.maximum(lengths - presize, 0)
    if u is None:
        return room // 2
    return np.floor(u * (room + 1)).astype(np.int64)
