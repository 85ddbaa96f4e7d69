"""Checking every file of a data set once: usable counts per class and split, and the
unreadable files with the reason."""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from imageclf.data.images import verify_file
from imageclf.data.sources import Items


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_items` found."""

    items: Items  # every file found
    usable: Items  # those that can be used
    unreadable: list[dict[str, str]]  # {"path", "reason"}
    full: bool  # decoded every image (else read headers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (`imageclf verify --json`)."""
        return {"n_items": len(self.items), "n_usable": len(self.usable),
                "classes": list(self.items.classes), "multi_label": self.items.multi_label,
                "counts": self.usable.counts(), "unreadable": self.unreadable,
                "checked": "decode" if self.full else "header"}


def verify_items(items: Items, full: bool = False, threads: int | None = None
                 ) -> VerifyReport:
    """Check every file (its header, or with `full` the whole decode). Pillow decodes with
    the GIL released, so threads keep every core busy."""
    check = functools.partial(verify_file, full=full)
    with ThreadPoolExecutor(threads or max(4, os.cpu_count() or 1)) as pool:
        reasons = list(pool.map(check, items.paths))
    bad = [{"path": str(p), "reason": r} for p, r in zip(items.paths, reasons, strict=True) if r]
    usable = items.subset([i for i, r in enumerate(reasons) if r is None])
    return VerifyReport(items, usable, bad, full)
