"""Checking every file of a data set once: usable counts per class and split, the class
balance, and the unreadable files with the reason."""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageclf.core.records import Skipped
from imageclf.data import refs
from imageclf.data.images import verify_file
from imageclf.data.items import Items
from imageclf.data.store import StoreRef, is_store, read_manifest

FEW = 5  # a class with fewer images than this in a split gets a warning


def class_balance(counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Per split, the ratio of the largest class to the smallest (None when a class has no
    image there), and warnings: a class with fewer than FEW images in a split, or none in
    validation."""
    out: dict[str, Any] = {"ratio": {}, "warnings": []}
    for split, per in counts.items():
        if not per:
            continue
        lo, hi = min(per.values()), max(per.values())
        out["ratio"][split] = round(hi / lo, 2) if lo else None
        for cls, n in per.items():
            if n == 0 and split == "valid":
                out["warnings"].append(f"class {cls} has no validation images: its accuracy "
                                       "cannot be measured")
            elif n < FEW:
                out["warnings"].append(f"class {cls} has only {n} {split} image(s)")
    return out


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_items` found."""

    items: Items  # every file found
    usable: Items  # those that can be used
    unreadable: list[Skipped]
    full: bool  # decoded every image (else read headers)
    left_out: list[Skipped] = field(default_factory=list)  # what pack left out of a store

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (`imageclf verify --json`)."""
        counts = self.usable.counts()
        return {"n_items": len(self.items), "n_usable": len(self.usable),
                "classes": list(self.items.classes), "multi_label": self.items.multi_label,
                "counts": counts, "balance": class_balance(counts),
                "unreadable": [s.to_json() for s in self.unreadable],
                "left_out_by_pack": [s.to_json() for s in self.left_out],
                "checked": "decode" if self.full else "header"}


def verify_items(items: Items, full: bool = True, threads: int | None = None,
                 progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check every file: decode it as training does (JPEGs in draft mode), or with
    `full=False` read only its header (fast, but a truncated file passes). Pillow decodes
    with the GIL released, so threads keep every core busy. `progress(n)` is called as
    files are done."""
    check = functools.partial(verify_file, full=full)
    reasons = []
    with ThreadPoolExecutor(threads or max(4, os.cpu_count() or 1)) as pool:
        for r in pool.map(check, items.paths):
            reasons.append(r)
            if progress is not None:
                progress(1)
    bad = [Skipped(str(p), r) for p, r in zip(items.paths, reasons, strict=True) if r]
    usable = items.subset([i for i, r in enumerate(reasons) if r is None])
    return VerifyReport(items, usable, bad, full)


def left_out_by_pack(data: str | Path | None) -> list[Skipped]:
    """The files `pack` left out of the store DATA is (its manifest lists them); none when
    DATA is not a store."""
    root = Path(data) if data is not None else None
    return list(read_manifest(root).skipped) if root is not None and is_store(root) else []


SPLIT_WORDS = {"train": "training", "valid": "validation"}


def skipped_by_cause(skipped: Sequence[Skipped], totals: dict[str, int]) -> list[str]:
    """The unreadable files as a person reads them: a store's shard that lost images is one
    line naming the shard, its split and how many of the split's `totals` were lost
    ("valid-000000.tar is truncated: 78 of 153 validation images lost"); other files are
    counted by reason, the commonest first."""
    shards: dict[str, list[str]] = {}
    reasons: Counter[str] = Counter()
    for s in skipped:
        ref = refs.parse(s.path)
        if isinstance(ref, StoreRef):
            shards.setdefault(ref.shard.name, []).append(s.reason)
        else:
            reasons[s.reason] += 1
    out = []
    for name, why in sorted(shards.items()):
        split = name.split("-", 1)[0]
        total = f" of {totals[split]}" if split in totals else ""
        what = ("is truncated" if all("truncated" in w for w in why)
                else f"cannot be read ({why[0]})")
        out.append(f"{name} {what}: {len(why)}{total} {SPLIT_WORDS.get(split, split)} "
                   f"image{'s' * (len(why) != 1)} lost")
    out += [f"{n} file{'s' * (n != 1)}: {reason}" for reason, n in
            sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))]
    return out
