"""Negatives: images of none of the classes (`train --negatives DIR`), and which of them
land in each training batch.

A negative never gets a class. Its target is NEGATIVE (-1): the whole target for a softmax
model, every entry of the row for a multi-label one, so the loss (losses.with_negatives)
can tell it from a known image, and the batch goes through the same presize cache and the
same one-grid_sample augmentation as the known images beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from imageclf.core.errors import DataError
from imageclf.data.sources import resolve_unlabelled

NEGATIVE = -1  # the target of an image of no class


@dataclass(frozen=True)
class NegativeSet:
    """The negatives of every --negatives source, split into training and held-out parts."""

    sources: tuple[str, ...]
    train: tuple[Path, ...]
    valid: tuple[Path, ...]


def negative_set(sources: tuple[str, ...], valid_pct: float = 0.2, seed: int = 0
                 ) -> NegativeSet:
    """Every source's images, split as `resolve_unlabelled` says, in the order given. A source with
    no images, or one whose images are all training or all held-out, is an error: the
    negatives need both parts (training, and the rejection figures and `calibrate`)."""
    train: list[Path] = []
    valid: list[Path] = []
    for s in sources:
        paths, flags = resolve_unlabelled(s, valid_pct, seed)
        if not paths:
            raise DataError(f"--negatives {s}: no image files found")
        train += [p for p, v in zip(paths, flags, strict=True) if not v]
        valid += [p for p, v in zip(paths, flags, strict=True) if v]
    if sources and (not train or not valid):
        part = "training" if not train else "held-out (validation)"
        raise DataError(f"--negatives {', '.join(sources)}: no {part} images (a valid/ "
                        "folder, an is_valid column, or enough images for --valid-pct)")
    return NegativeSet(tuple(sources), tuple(train), tuple(valid))


def negative_targets(k: int, n_classes: int, multi_label: bool) -> torch.Tensor:
    """The targets of `k` negatives: NEGATIVE, (k,) int64 or (k, C) float."""
    if multi_label:
        return torch.full((k, n_classes), float(NEGATIVE))
    return torch.full((k,), NEGATIVE, dtype=torch.int64)


def is_negative(y: torch.Tensor) -> torch.Tensor:
    """(B,) True where the target marks a negative."""
    return (y < 0).all(1) if y.dim() == 2 else y < 0
