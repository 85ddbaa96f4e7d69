"""DataLoaders: a data set's training and validation loaders, made from a DataConfig. The
one place the kind of batch source is picked: a store at a URL is streamed (data/stream.py),
everything else is read from its presize cache (data/cached.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from imageclf.core.config import DataConfig
from imageclf.core.errors import ConfigError
from imageclf.core.records import Skipped
from imageclf.data.augment import IMAGENET_MEAN, IMAGENET_STD
from imageclf.data.cached import CachedSource
from imageclf.data.items import Items, targets_tensor
from imageclf.data.loader import BatchLoader, BatchSource
from imageclf.data.negatives import (
    NegativeSet,
    negative_set,
    negative_sources,
    negative_targets,
)
from imageclf.data.sources import resolve
from imageclf.data.store import StoreRef
from imageclf.data.storecache import check_store_presize
from imageclf.data.stream import streamed_sources
from imageclf.data.urlio import is_url

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
                    world_size: int = 1, items: Items | None = None) -> DataLoaders:
        """Resolve `cfg.source` (or take `items`, already resolved) and make both loaders
        (caches are built lazily)."""
        device = torch.device(device)

        def loader(source: BatchSource) -> BatchLoader:
            return BatchLoader(source, cfg, device, mean, std)

        if is_url(cfg.source.path):
            if cfg.source.fixes is not None:
                raise ConfigError(f"--fixes: a store at a URL ({cfg.source.path}) is streamed "
                                  "as it is; copy the store into a folder and give that with "
                                  "--fixes, or pack a new store with --fixes")
            if cfg.synthetic:
                log.info("a store streamed from a URL trains without synthetic negatives")
            items, train, valid = streamed_sources(cfg, device, rank, world_size)
            return cls(items, loader(train), loader(valid), cfg)
        items = items if items is not None else resolve(cfg.source, cfg.seed)
        if items.paths and isinstance(items.paths[0], StoreRef):
            check_store_presize(items.paths[0].store, cfg.presize)
        targets = targets_tensor(items)
        tr, va = items.split_indices()
        sources = negative_sources(cfg)
        neg = negative_set(sources, cfg.source.valid_pct, cfg.seed) if sources else None
        n, ml = len(items.classes), items.multi_label

        def cached(paths: list, y: torch.Tensor, train: bool, **kw) -> BatchLoader:
            return loader(CachedSource(paths, y, cfg, train, device, part=(rank, world_size),
                                       **kw))

        train = cached([items.paths[i] for i in tr], targets[tr], True,
                       negatives=neg.train if neg else (),
                       synthetic=neg.synthetic if neg else ())
        valid = cached([items.paths[i] for i in va], targets[va], False)
        neg_valid = cached(list(neg.valid), negative_targets(len(neg.valid), n, ml), False,
                           role="negatives-valid") if neg and neg.valid else None
        return cls(items, train, valid, cfg, neg, neg_valid)

    def show_batch(self, n: int = 16, train: bool = True, path: str | Path | None = None
                   ) -> Figure:
        """A grid of one augmented training (or validation) batch with its labels, as a
        matplotlib Figure (saved when given a path)."""
        from imageclf.data.show import show_batch  # matplotlib: only when a batch is shown

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

    def _sources(self) -> dict[str, object]:
        """What each part is read from: the splits' sources and the negatives' caches."""
        out: dict[str, object] = {"train": self.train.source, "valid": self.valid.source}
        negatives = getattr(self.train.source, "negatives", None)
        if negatives is not None:
            out["negatives"] = negatives
        if self.negatives_valid is not None:
            out["negatives_valid"] = self.negatives_valid.source
        return out

    def cache_keys(self) -> dict[str, str]:
        """The presize caches' keys (which files, which presize): what a checkpoint must
        find again to resume."""
        keys = {k: s.key for k, s in self._sources().items()}
        if "negatives_valid" not in keys:
            keys.pop("negatives", None)
        return keys

    def cache_forms(self) -> dict[str, str]:
        """Each split's cache form and why it was chosen: {"train": "raw: auto: ..."}."""
        return {k: s.choice.reason for k, s in self._sources().items()
                if k != "negatives_valid" and s.choice is not None}

    def skipped(self) -> list[Skipped]:
        """Every file left out as unreadable, with the reason (negatives' too)."""
        self.prepare()
        return [s for source in self._sources().values() for s in source.unreadable()]
