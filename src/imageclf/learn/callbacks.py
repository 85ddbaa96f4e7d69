"""Callback base with named no-op hooks; history, the one-cycle schedule, the lr sweep, and
PrintEpochs, the progress a person watches (a bar per epoch on a terminal or in a notebook,
a row per epoch)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from imageclf.learn.lr_find import should_stop
from imageclf.learn.schedules import (
    ONE_CYCLE_MOMS,
    exp_sweep,
    flat_cos_lr,
    one_cycle_lr,
    one_cycle_mom,
)

if TYPE_CHECKING:
    from imageclf.learn.learner import Learner


class Callback:
    """Hooks called by the Learner's loop; each receives the learner. Stop training by
    setting `learn.stop_training = True`, never by raising."""

    order = 0

    def on_fit_start(self, learn: Learner) -> None: ...
    def on_epoch_start(self, learn: Learner) -> None: ...
    def on_batch_start(self, learn: Learner) -> None: ...
    def on_backward_start(self, learn: Learner) -> None: ...  # learn.loss is computed
    def on_step_start(self, learn: Learner) -> None: ...  # gradients in (and clipped)
    def on_batch_end(self, learn: Learner) -> None: ...
    def on_validation_end(self, learn: Learner) -> None: ...
    def on_epoch_end(self, learn: Learner) -> None: ...
    def on_fit_end(self, learn: Learner) -> None: ...


class History(Callback):
    """Per-batch training loss and learning rates; one row per epoch with the metrics."""

    order = 10

    flush_every = 256  # batches whose losses may wait on the device before one read

    def __init__(self) -> None:
        self._batch_losses: list[float] = []
        self.batch_lrs: list[float] = []
        self.rows: list[dict[str, float]] = []
        self._losses: list[float] = []
        self._pending: list[torch.Tensor] = []
        self._resumed = False

    @property
    def batch_losses(self) -> list[float]:
        """The training loss of every batch so far."""
        self._flush()
        return self._batch_losses

    def _flush(self) -> None:
        """Read the losses still on the device in one transfer. Reading each batch's loss as
        it comes (float()) would make the host wait for the device at every step, so it
        could no longer queue the next step's work while the device runs this one."""
        if self._pending:
            values = torch.stack(self._pending).float().cpu().tolist()
            self._pending.clear()
            self._batch_losses.extend(values)
            self._losses.extend(values)

    def state(self) -> dict:
        """Everything needed to continue the record after a resume (mid-epoch included)."""
        self._flush()
        return {"rows": self.rows, "batch_losses": self._batch_losses,
                "batch_lrs": self.batch_lrs, "epoch_losses": self._losses}

    def clear_batches(self) -> None:
        """Forget the per-batch record (the lr finder's sweep is not part of training)."""
        self._pending.clear()
        self._batch_losses.clear()
        self.batch_lrs.clear()

    def load_state(self, state: dict, mid_epoch: bool) -> None:
        self.rows = list(state["rows"])
        self._pending.clear()
        self._batch_losses = list(state["batch_losses"])
        self.batch_lrs = list(state["batch_lrs"])
        self._losses = list(state["epoch_losses"])
        self._resumed = mid_epoch

    def on_epoch_start(self, learn: Learner) -> None:
        if self._resumed:  # continue the interrupted epoch's record
            self._resumed = False
            return
        self._flush()
        self._losses = []

    def on_batch_end(self, learn: Learner) -> None:
        self._pending.append(learn.loss.detach())
        if len(self._pending) >= self.flush_every:
            self._flush()
        self.batch_lrs.append(learn.opt.param_groups[-1]["lr"])

    def on_validation_end(self, learn: Learner) -> None:
        self._flush()
        p = learn.progress  # an epoch resumed mid-way counts its time before the stop too
        loss = learn.dist.mean(sum(self._losses) / max(len(self._losses), 1))
        row = {"epoch": p.epochs_done, "train_loss": loss}
        row |= learn.last_validation
        row |= {"seconds": p.epoch_seconds + p.valid_seconds, "img_per_s": p.epoch_img_per_s}
        self.rows.append(row)


class SizeSchedule(Callback):
    """Progressive resizing: the training size of each epoch, from `sizes` spread evenly over
    the run's epochs (stage i covers epochs [i·E/S, (i+1)·E/S)). The one grid_sample
    resamples the presize cache to the stage's size, so a smaller stage costs less in the
    model and nothing in the loader. The stage follows from the epoch alone, so a resumed
    run (mid-stage too) trains each epoch at the size it had. The lr finder's sweep runs at
    the first stage's size, where training starts."""

    order = -20  # before the epoch's batches are drawn

    def __init__(self, sizes: Sequence[int], total_epochs: int) -> None:
        self.sizes, self.total = list(sizes), max(1, total_epochs)

    def size_at(self, epoch: int) -> int:
        return self.sizes[min(len(self.sizes) - 1, epoch * len(self.sizes) // self.total)]

    def on_epoch_start(self, learn: Learner) -> None:
        epoch = 0 if learn.sweeping else learn.progress.epochs_done
        learn.dls.train.augment.size = self.size_at(epoch)


class OneCycle(Callback):
    """fastai's one-cycle: per-group lr cosine up then down, Adam beta1 the other way; or,
    with shape "flat_cos", fit_flat_cos: the rate flat, then a cosine down, the momentum
    left at the optimiser's own."""

    order = -10

    def __init__(self, lr_max: list[float], total_steps: int, div: float = 25.0,
                 div_final: float = 1e5, pct_start: float = 0.25,
                 moms: tuple[float, float, float] = ONE_CYCLE_MOMS,
                 shape: str = "one_cycle") -> None:
        self.lr_max, self.total = lr_max, max(total_steps, 1)
        self.div, self.div_final, self.pct_start, self.moms = div, div_final, pct_start, moms
        self.shape = shape
        self.step = 0

    def on_batch_start(self, learn: Learner) -> None:
        if not learn.group_start:  # the schedule counts optimiser steps
            return
        pct = min(self.step / self.total, 1.0)
        if self.shape == "flat_cos":
            learn.set_lrs([flat_cos_lr(pct, lr, self.div_final, self.pct_start)
                           for lr in self.lr_max])
        else:
            learn.set_lrs([one_cycle_lr(pct, lr, self.div, self.div_final, self.pct_start)
                           for lr in self.lr_max])
            learn.set_beta1(one_cycle_mom(pct, self.moms, self.pct_start))
        self.step += 1


class LRSweep(Callback):
    """The lr finder's sweep: exponential rates, smoothed loss, stop on blow-up."""

    order = -10

    def __init__(self, start: float = 1e-7, end: float = 10.0, num_it: int = 100,
                 beta: float = 0.98, stop_factor: float = 4.0) -> None:
        self.start, self.end, self.num_it = start, end, num_it
        self.beta, self.stop_factor = beta, stop_factor
        self.lrs: list[float] = []
        self.losses: list[float] = []  # smoothed
        self.raw: list[float] = []
        self._group: list[float] = []  # losses of the batches of the current step
        self.step_images: list[int] = []  # images each optimiser step saw
        self._images = 0  # of the current step
        self._avg, self.best = 0.0, math.inf

    def on_batch_start(self, learn: Learner) -> None:
        if not learn.group_start:  # one rate per optimiser step
            return
        lr = exp_sweep(len(self.lrs), self.num_it, self.start, self.end)
        learn.set_lrs([lr] * learn.n_groups)
        self.lrs.append(lr)
        self._group.clear()
        self._images = 0

    def on_batch_end(self, learn: Learner) -> None:
        self._group.append(float(learn.loss.detach()))
        self._images += learn.batch_size
        if not learn.stepped:
            return
        self.step_images.append(self._images)
        loss = sum(self._group) / len(self._group)  # the step's batches, as it saw them
        self.raw.append(loss)
        i = len(self.raw)
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        smooth = self._avg / (1 - self.beta**i)
        self.losses.append(smooth)
        self.best = min(self.best, smooth)
        if should_stop(smooth, self.best, self.stop_factor) or i >= self.num_it:
            learn.stop_training = True


HIDDEN = ("epoch", "seconds", "img_per_s")  # printed in their own format


def format_row(row: dict) -> str:
    """One epoch's line: its metrics, seconds and images/s."""
    cells = [f"{k}={v:.4f}" for k, v in row.items() if k not in HIDDEN]
    return (f"epoch {row['epoch']}  " + "  ".join(cells)
            + f"  {row['seconds']:.1f}s  {row['img_per_s']:.0f} img/s")


class PrintEpochs(Callback):
    """A progress bar per epoch (on a terminal) and a table row per epoch, like fastai's,
    with images/s. Runs after History (order 10) has added the epoch's row."""

    order = 20

    def __init__(self, console: Console | None = None, refresh: float = 0.5) -> None:
        self.console = console or Console(markup=False, emoji=False, highlight=False)
        self.refresh = refresh  # seconds between loss readings (each waits for the device)
        self.bar: Progress | None = None

    def on_epoch_start(self, learn: Learner) -> None:
        if learn.sweeping or not (self.console.is_terminal or self.console.is_jupyter):
            return
        self.bar = Progress("epoch", "{task.fields[epoch]}", BarColumn(), MofNCompleteColumn(),
                            "loss {task.fields[loss]}", TimeRemainingColumn(),
                            console=self.console, transient=True)
        self.bar.start()
        self.task = self.bar.add_task("", total=len(learn.dls.train),
                                      epoch=learn.progress.epochs_done, loss="-")
        self._shown = 0.0

    def on_batch_end(self, learn: Learner) -> None:
        if self.bar is None:
            return
        now = time.monotonic()
        if now - self._shown >= self.refresh:
            self._shown = now
            self.bar.update(self.task, loss=f"{float(learn.loss.detach()):.3f}")
        self.bar.update(self.task, advance=1)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def on_validation_end(self, learn: Learner) -> None:
        self._close()
        if learn.history.rows:
            self.console.print(format_row(learn.history.rows[-1]))

    def on_fit_end(self, learn: Learner) -> None:
        self._close()


def in_notebook() -> bool:
    """Running in a Jupyter kernel."""
    import sys

    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"
