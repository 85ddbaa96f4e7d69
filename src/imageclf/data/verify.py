"""Checking every file of a data set once: usable counts per class and split, the class
balance, and the unreadable files with the reason."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from imageclf.core.records import Skipped
from imageclf.data.images import verify_file
from imageclf.data.items import Items

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (`imageclf verify --json`)."""
        counts = self.usable.counts()
        return {"n_items": len(self.items), "n_usable": len(self.usable),
                "classes": list(self.items.classes), "multi_label": self.items.multi_label,
                "counts": counts, "balance": class_balance(counts),
                "unreadable": [s.to_json() for s in self.unreadable],
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
