"""What the CLI prints: PrintEpochs, the training progress a person watches (a bar per epoch,
a row per epoch), and the open-set tables of evaluate and calibrate."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from imageclf.callbacks import Callback

if TYPE_CHECKING:
    from imageclf.learner import Learner

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

    def __init__(self, console: Console, refresh: float = 0.5) -> None:
        self.console = console
        self.refresh = refresh  # seconds between loss readings (each waits for the device)
        self.bar: Progress | None = None

    def on_epoch_start(self, learn: Learner) -> None:
        if not self.console.is_terminal:
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


def score_table(figures: dict, keep: float, chosen: str | None = None) -> Table:
    """AUROC and FPR per open-set score, the chosen one marked."""
    table = Table()
    for c in ("score", "AUROC", f"FPR at {keep:.0%} kept"):
        table.add_column(c, justify="left" if c == "score" else "right")
    for name, f in figures.items():
        mark = " (chosen)" if name == chosen else ""
        table.add_row(name + mark, f"{f['auroc']:.4f}", f"{f['fpr']:.4f}")
    return table


def print_open_set(console: Console, r: dict) -> None:
    """What `evaluate --ood` found."""
    console.print(f"open set: {r['n_known']} known images, {r['n_unknown']} unknown from "
                  f"{r['ood']}")
    console.print(score_table(r["scores"], r["keep"], r["score"]))
    if r["threshold"] is None:
        console.print(f"this model has no none rule ({r['rule']}): every unknown image "
                      "gets a class; run `imageclf calibrate` to give it one")
    else:
        console.print(f"rule {r['rule']} below {r['threshold']:.4g}: "
                      f"{r['unknown_accepted']} of {r['n_unknown']} unknown images got a "
                      f"class; {r['known_answered_none']} of {r['n_known']} known images "
                      "were answered none")
    if r["unknown_accepted_as"]:
        console.print("unknown images accepted as: " + ", ".join(
            f"{c} {n}" for c, n in r["unknown_accepted_as"].items()))
    if r["skipped_unknown"]:
        console.print(f"{len(r['skipped_unknown'])} unreadable unknown file(s) skipped",
                      style="yellow")
