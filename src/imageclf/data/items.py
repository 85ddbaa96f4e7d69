"""Items: a labelled image set (image references, class indices, split), and its targets
as a tensor."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from imageclf.data.fixes import FixesApplied
    from imageclf.data.refs import ImageRef


@dataclass(frozen=True)
class Items:
    """A labelled image set: image references (`paths`), integer labels (multi-hot lists if
    multi-label), split."""

    paths: tuple[ImageRef, ...]
    labels: tuple[tuple[int, ...], ...]  # one class index per item, or several if multi-label
    classes: tuple[str, ...]
    is_valid: tuple[bool, ...]
    multi_label: bool = False
    fixed_by: FixesApplied | None = None  # what a --fixes file changed (data/fixes.py)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: list[int]) -> Items:
        """The items at `keep` indices, same classes."""
        return Items(
            tuple(self.paths[i] for i in keep),
            tuple(self.labels[i] for i in keep),
            self.classes,
            tuple(self.is_valid[i] for i in keep),
            self.multi_label,
        )

    def split_indices(self) -> tuple[list[int], list[int]]:
        """(train indices, valid indices)."""
        train = [i for i, v in enumerate(self.is_valid) if not v]
        valid = [i for i, v in enumerate(self.is_valid) if v]
        return train, valid

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class for each split: {"train": {cls: n}, "valid": {cls: n}}."""
        out: dict[str, dict[str, int]] = {}
        for split, flag in (("train", False), ("valid", True)):
            c: Counter[str] = Counter()
            for labels, v in zip(self.labels, self.is_valid, strict=True):
                if v == flag:
                    for lab in labels:
                        c[self.classes[lab]] += 1
            out[split] = {k: c.get(k, 0) for k in self.classes}
        return out


def targets_tensor(items: Items) -> torch.Tensor:
    """(N,) int64 class indices, or (N, C) float multi-hot for multi-label items."""
    if items.multi_label:
        t = torch.zeros(len(items), len(items.classes))
        for i, labels in enumerate(items.labels):
            t[i, list(labels)] = 1.0
        return t
    return torch.tensor([lab[0] for lab in items.labels], dtype=torch.int64)
