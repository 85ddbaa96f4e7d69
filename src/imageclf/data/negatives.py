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

from imageclf.core.config import DataConfig
from imageclf.core.errors import DataError
from imageclf.data.sources import resolve_unlabelled
from imageclf.data.synthetic import SYNTHETIC
from imageclf.data.synthetic import parse as synthetic_families

NEGATIVE = -1  # the target of an image of no class


@dataclass(frozen=True)
class NegativeSet:
    """The negatives of every --negatives source, split into training and held-out parts."""

    sources: tuple[str, ...]
    train: tuple[Path, ...]
    valid: tuple[Path, ...]
    synthetic: tuple[str, ...] = ()  # the synthetic families (data/synthetic.py), if asked

    @property
    def files(self) -> tuple[str, ...]:
        """The sources that name files (not `synthetic`)."""
        return file_sources(self.sources)


def file_sources(sources: tuple[str, ...]) -> tuple[str, ...]:
    """The --negatives sources that name files, in order: not `synthetic[:FAMILY,...]`."""
    return tuple(s for s in sources if synthetic_families(s) is None)


def negative_set(sources: tuple[str, ...], valid_pct: float = 0.2, seed: int = 0
                 ) -> NegativeSet:
    """Every source's images, split as `resolve_unlabelled` says, in the order given. A source with
    no images, or one whose images are all training or all held-out, is an error: the
    negatives need both parts (training, and the rejection figures and `calibrate`).
    `synthetic` (or `synthetic:FAMILY,...`) names no files: it turns on the synthetic
    families."""
    train: list[Path] = []
    valid: list[Path] = []
    files = file_sources(sources)
    families: list[str] = []
    for s in sources:
        families += [f for f in synthetic_families(s) or () if f not in families]
    for s in files:
        paths, flags = resolve_unlabelled(s, valid_pct, seed)
        if not paths:
            raise DataError(f"--negatives {s}: no image files found")
        train += [p for p, v in zip(paths, flags, strict=True) if not v]
        valid += [p for p, v in zip(paths, flags, strict=True) if v]
    if files and (not train or not valid):
        part = "training" if not train else "held-out (validation)"
        raise DataError(f"--negatives {', '.join(files)}: no {part} images (a valid/ "
                        "folder, an is_valid column, or enough images for --valid-pct)")
    return NegativeSet(tuple(sources), tuple(train), tuple(valid), tuple(families))


def negative_sources(cfg: DataConfig) -> tuple[str, ...]:
    """The --negatives sources, and `synthetic` after them with --synthetic (unless they
    name synthetic families already)."""
    named = len(file_sources(cfg.negatives)) < len(cfg.negatives)
    return cfg.negatives + ((SYNTHETIC,) if cfg.synthetic and not named else ())


def negative_targets(k: int, n_classes: int, multi_label: bool) -> torch.Tensor:
    """The targets of `k` negatives: NEGATIVE, (k,) int64 or (k, C) float."""
    if multi_label:
        return torch.full((k, n_classes), float(NEGATIVE))
    return torch.full((k,), NEGATIVE, dtype=torch.int64)


def is_negative(y: torch.Tensor) -> torch.Tensor:
    """(B,) True where the target marks a negative."""
    return (y < 0).all(1) if y.dim() == 2 else y < 0
