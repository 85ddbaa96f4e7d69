"""Negatives: images of none of the classes (`train --negatives DIR`), and which of them
land in each training batch.

A negative never gets a class. Its target is NEGATIVE (-1): the whole target for a softmax
model, every entry of the row for a multi-label one, so the loss (losses.with_negatives)
can tell it from a known image, and the batch goes through the same presize cache and the
same one-grid_sample augmentation as the known images beside it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imageclf.data.sources import (
    TRAIN_NAMES,
    VALID_NAMES,
    _find_split_dir,
    _is_tables,
    _random_split,
    _truthy,
    list_images,
)
from imageclf.errors import ConfigError, DataError

NEGATIVE = -1  # the target of an image of no class


@dataclass(frozen=True)
class NegativeSet:
    """The negatives of every --negatives source, split into training and held-out parts."""

    sources: tuple[str, ...]
    train: tuple[Path, ...]
    valid: tuple[Path, ...]


def _split_of(source: str, valid_pct: float, seed: int) -> tuple[list[Path], list[bool]]:
    """(paths, is_valid) of one source: a folder (its train/ and valid/ sub-folders when it
    has both, else every image under it, `valid_pct` held out at random with `seed`), a CSV
    whose first column names the files (an `is_valid` third column splits it), or
    Parquet/Arrow files (their split column or file names). Labels are ignored."""
    root = Path(source)
    if root.is_file() and root.suffix.lower() == ".csv":
        return _from_csv(root, valid_pct, seed)
    if _is_tables(root):
        from imageclf.data.tables import read_rows, table_files

        rows = read_rows(table_files(root), None, None, None)
        if all(s is None for s in rows.splits):
            return rows.paths, _random_split(len(rows.paths), valid_pct, seed)
        return rows.paths, [s == "valid" for s in rows.splits]
    if not root.is_dir():
        there = "" if root.exists() else " (nothing is there)"
        raise ConfigError(f"--negatives {root} is not a folder, a .csv, .parquet or .arrow "
                          f"file{there}")
    tr, va = _find_split_dir(root, TRAIN_NAMES), _find_split_dir(root, VALID_NAMES)
    if tr is not None and va is not None:
        a, b = _images(tr), _images(va)
        return a + b, [False] * len(a) + [True] * len(b)
    paths = _images(root)
    return paths, _random_split(len(paths), valid_pct, seed)


def _images(folder: Path) -> list[Path]:
    """`list_images`, also under sub-folders that are links (a negatives folder put
    together from class folders elsewhere)."""
    found = list_images(folder)
    for sub in sorted(folder.iterdir()):
        if sub.is_symlink() and sub.is_dir() and not sub.name.startswith("."):
            found += list_images(sub)
    return sorted(found)


def _from_csv(path: Path, valid_pct: float, seed: int) -> tuple[list[Path], list[bool]]:
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and r[0].strip()]
    except OSError as e:
        raise ConfigError(f"cannot read --negatives {path}: {e.strerror}") from e
    if rows and not (path.parent / rows[0][0].strip()).exists() and not Path(
            rows[0][0].strip()).suffix:
        rows = rows[1:]  # a header
    paths = [p if (p := Path(r[0].strip())).is_absolute() else path.parent / p for r in rows]
    if rows and all(len(r) >= 3 for r in rows):
        return paths, [_truthy(r[2], path) for r in rows]
    return paths, _random_split(len(paths), valid_pct, seed)


def negative_set(sources: tuple[str, ...], valid_pct: float = 0.2, seed: int = 0
                 ) -> NegativeSet:
    """Every source's images, split as `_split_of` says, in the order given. A source with
    no images, or one whose images are all training or all held-out, is an error: the
    negatives need both parts (training, and the rejection figures and `calibrate`)."""
    train: list[Path] = []
    valid: list[Path] = []
    for s in sources:
        paths, flags = _split_of(s, valid_pct, seed)
        if not paths:
            raise DataError(f"--negatives {s}: no image files found")
        train += [p for p, v in zip(paths, flags, strict=True) if not v]
        valid += [p for p, v in zip(paths, flags, strict=True) if v]
    if sources and (not train or not valid):
        part = "training" if not train else "held-out (validation)"
        raise DataError(f"--negatives {', '.join(sources)}: no {part} images (a valid/ "
                        "folder, an is_valid column, or enough images for --valid-pct)")
    return NegativeSet(tuple(sources), tuple(train), tuple(valid))


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
    from imageclf.data.loader import epoch_generator

    need = n_batches * k * world_size
    if n == 0 or need == 0:
        return np.zeros((n_batches, k), dtype=np.int64)
    g = epoch_generator(seed, epoch, stream=7)
    rounds = -(-need // n)
    seq = torch.cat([torch.randperm(n, generator=g) for _ in range(rounds)])[:need]
    per = seq.view(n_batches, k * world_size)
    return per[:, rank::world_size].numpy()


def negative_targets(k: int, n_classes: int, multi_label: bool) -> torch.Tensor:
    """The targets of `k` negatives: NEGATIVE, (k,) int64 or (k, C) float."""
    if multi_label:
        return torch.full((k, n_classes), float(NEGATIVE))
    return torch.full((k,), NEGATIVE, dtype=torch.int64)


def is_negative(y: torch.Tensor) -> torch.Tensor:
    """(B,) True where the target marks a negative."""
    return (y < 0).all(1) if y.dim() == 2 else y < 0
