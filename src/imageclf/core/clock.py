"""Where training stands: epochs and batches done, images and seconds; the one clock."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainProgress:
    """The counters of a run, in one place: the Learner advances them, a checkpoint writes
    and reads them, lr_find copies and restores them. Images count the whole job's (every
    process's share). Seconds are training time; the clock runs only during training steps
    (and, separately, the epoch's validation), so a resumed run adds to what the checkpoint
    recorded."""

    epochs_done: int = 0  # also the index of the epoch being trained
    batch_in_epoch: int = 0  # batches done in the current epoch
    train_images: int = 0  # the run's
    train_seconds: float = 0.0
    epoch_images: int = 0  # the current epoch's (carried across a mid-epoch resume)
    epoch_seconds: float = 0.0
    valid_seconds: float = 0.0  # the current epoch's validation pass
    _t0: float | None = field(default=None, repr=False, compare=False)

    # --- the clock -------------------------------------------------------------------
    def start(self) -> None:
        """Training steps begin (an epoch, or its rest after a resume)."""
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        """Training steps end: the running stretch is added to the run and the epoch."""
        self.train_seconds, self.epoch_seconds = self.clock()
        self._t0 = None

    def clock(self) -> tuple[float, float]:
        """(the run's, the current epoch's) training seconds up to now."""
        running = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        return self.train_seconds + running, self.epoch_seconds + running

    @contextlib.contextmanager
    def validating(self) -> Iterator[None]:
        """Times the epoch's validation pass (valid_seconds)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.valid_seconds = time.perf_counter() - t0

    # --- counting ----------------------------------------------------------------------
    def start_epoch(self, start_batch: int = 0) -> None:
        """An epoch begins at `start_batch` (0, or where a mid-epoch checkpoint stood, whose
        images and seconds it keeps)."""
        self.batch_in_epoch = start_batch
        self.valid_seconds = 0.0
        if not start_batch:
            self.epoch_seconds, self.epoch_images = 0.0, 0

    def add_batch(self, images: int) -> None:
        """One batch of `images` (the job's) trained."""
        self.epoch_images += images
        self.train_images += images
        self.batch_in_epoch += 1

    def end_epoch(self) -> None:
        """The epoch is validated and done."""
        self.epochs_done += 1
        self.batch_in_epoch = 0

    def restart_epoch(self) -> None:
        """The current epoch starts again from its first batch: its count is dropped from
        the run's totals with its steps."""
        self.train_seconds -= self.epoch_seconds
        self.train_images -= self.epoch_images
        self.epoch_seconds, self.epoch_images, self.batch_in_epoch = 0.0, 0, 0

    @property
    def epoch_img_per_s(self) -> float:
        """The current epoch's training images per second."""
        return self.epoch_images / max(self.epoch_seconds, 1e-9)

    @property
    def img_per_s(self) -> float:
        """The run's training images per second."""
        return self.train_images / max(self.train_seconds, 1e-9)

    # --- copies and files --------------------------------------------------------------
    def copy(self) -> TrainProgress:
        """An independent copy (lr_find puts it back after its sweep)."""
        return dataclasses.replace(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, the running stretch of training included (a mid-epoch checkpoint)."""
        seconds, epoch_seconds = self.clock()
        return {"epochs_done": self.epochs_done, "batch_in_epoch": self.batch_in_epoch,
                "train_images": self.train_images, "train_seconds": seconds,
                "epoch_images": self.epoch_images, "epoch_seconds": epoch_seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainProgress:
        """Rebuild from `to_dict`'s output."""
        return cls(**{k: d[k] for k in ("epochs_done", "batch_in_epoch", "train_images",
                                         "train_seconds", "epoch_images", "epoch_seconds")})
