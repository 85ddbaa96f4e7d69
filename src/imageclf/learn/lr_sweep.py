"""The learning-rate finder's sweep on a Learner, and its result (lr_find.json)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from imageclf.core.records import Record, doc
from imageclf.learn.callbacks import LRSweep
from imageclf.learn.lr_find import suggest

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from imageclf.learn.learner import Learner


@dataclass
class LRFindResult(Record):
    """lr_find.json: a finder sweep's rates, smoothed losses, and the four suggestions."""

    lrs: list[float] = doc("the rate of each optimiser step")
    losses: list[float] = doc("the smoothed training loss at each step")
    suggestions: dict[str, float] = doc("valley, slide, minimum and steep (lr-find.md)")
    images_per_step: int = doc("images each full step saw (the last of an epoch may be short)",
                               0)

    def plot(self, path: str | Path | None = None) -> Figure:
        """The loss against the rate with the suggestions marked (saved when given a
        path; a notebook shows the Figure inline)."""
        from imageclf.core.plots import plot_lr_find

        return plot_lr_find(self.lrs, self.losses, self.suggestions, path)


def sweep(learn: Learner, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100
          ) -> LRFindResult:
    """Exponential sweep start→end over num_it optimiser steps, stopped when the smoothed
    loss exceeds 4× its best; model, optimiser and RNG are restored afterwards, in memory.
    Each step sees the images a training step will: `accum` batches, and with several
    processes (the sweep runs on rank 0 alone) `accum × world_size` of rank 0's batches,
    so the rate it finds is for the job's global batch."""
    model_state = copy.deepcopy(learn.model.state_dict())
    opt_state = copy.deepcopy(learn.opt.state_dict())
    rng = torch.get_rng_state()
    progress = learn.progress.copy()
    rows = list(learn.history.rows)
    sweep = LRSweep(start_lr, end_lr, num_it)
    wrapped, learn.train_model = learn.train_model, learn.model  # rank 0 alone: no DDP
    accum, learn.accum = learn.accum, learn.accum * learn.dist.world_size
    try:
        steps = -(-len(learn.dls.train) // learn.accum)  # optimiser steps per epoch
        epochs = -(-num_it // max(steps, 1))
        learn.loop(epochs, [sweep], validate=False)
    finally:
        learn.model.load_state_dict(model_state)
        learn.opt.load_state_dict(opt_state)
        torch.set_rng_state(rng)
        learn.progress = progress
        learn.history.rows = rows
        learn.history.clear_batches()
        learn.train_model = wrapped  # not rebuilt: building DDP is collective
        learn.accum = accum
    n = len(sweep.losses)
    # the last points are the blow-up that stopped the sweep: not candidates
    lrs, losses = sweep.lrs[:n], sweep.losses
    keep = max(3, n - 1) if n > 5 else n
    return LRFindResult(lrs, losses, suggest(lrs[:keep], losses[:keep]),
                        max(sweep.step_images, default=0))
