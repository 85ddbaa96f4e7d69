"""Experiment tracking: `train --tensorboard` writes RUN_DIR/tensorboard/ with
torch.utils.tensorboard (the `tensorboard` package, an optional extra).

Per optimiser batch the training loss and learning rate; per epoch the validation metrics,
images/s and seconds; the augmented batch, the lr_find curve and the confusion matrix as
images; the run's settings as TensorBoard hparams beside its final metrics. Only rank 0
writes. A resumed run continues the same step count, and the events a stopped run wrote
past its checkpoint are purged, so no step appears twice.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imageclf.core.errors import ConfigError
from imageclf.learn.callbacks import Callback

if TYPE_CHECKING:
    from imageclf.learn.learner import Learner
    from imageclf.run.rundir import RunMetrics

INSTALL = "pip install 'imageclf[tensorboard]'"


def check_tensorboard() -> None:
    """Stop at once, with the install command, when the tensorboard package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"--tensorboard needs the tensorboard package: {INSTALL}")


def global_step(learn: Learner) -> int:
    """Training batches done in the run so far (the x axis of every scalar)."""
    p = learn.progress
    return p.epochs_done * len(learn.dls.train) + p.batch_in_epoch


def hparams(out: Path) -> dict[str, Any]:
    """The run's settings as TensorBoard hparams: flat names, values int/float/str/bool."""
    from imageclf.run.rundir import read_config

    data, train = read_config(out)
    return {k: v if isinstance(v, bool | int | float | str) else
            "none" if v is None else str(v) for k, v in (data.flat() | train.flat()).items()}


def _png(path: Path) -> np.ndarray | None:
    """A PNG as an (H, W, 3) uint8 array, or None when it does not exist."""
    if not path.exists():
        return None
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class TensorBoardLog(Callback):
    """The TensorBoard record of one run (see the module's docstring)."""

    order = 20  # after History has added the epoch's row

    def __init__(self, log_dir: str | Path, flush_every: int = 50) -> None:
        check_tensorboard()
        self.log_dir = Path(log_dir)
        self.flush_every = flush_every
        self.writer = None
        self._pending: list[tuple[int, torch.Tensor, float]] = []

    def _open(self, purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def start(self, learn: Learner, resumed: bool) -> None:
        """Open the event file; a resumed run drops any event at or past where it resumes
        (a stopped run may have logged steps after its last checkpoint)."""
        step = global_step(learn)
        self._open(step + 1 if resumed else None)  # the step it resumes at was logged
        if not resumed:
            self.log_batch(learn)

    def log_batch(self, learn: Learner, n: int = 16) -> None:
        """The first augmented training batch, as the model sees it."""
        from imageclf.data.show import show_batch

        fig = show_batch(learn.dls, None, n=n, train=True, epoch=0)
        self.writer.add_figure("images/augmented_batch", fig, 0)

    def _flush(self) -> None:
        if not self._pending:
            return
        losses = torch.stack([v for _, v, _ in self._pending]).float().cpu().tolist()
        for (step, _, lr), loss in zip(self._pending, losses, strict=True):
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
        self._pending.clear()

    def on_batch_end(self, learn: Learner) -> None:
        if self.writer is None or learn.sweeping:  # lr_find's sweep is not training
            return
        # the loss stays on the device until a flush: no sync per step
        self._pending.append((global_step(learn), learn.loss.detach(),
                              float(learn.opt.param_groups[-1]["lr"])))
        if len(self._pending) >= self.flush_every:
            self._flush()

    def on_epoch_end(self, learn: Learner) -> None:
        if self.writer is None or learn.sweeping or not learn.history.rows:
            return
        self._flush()
        row = learn.history.rows[-1]
        step = global_step(learn)
        for k, v in row.items():
            if k == "epoch" or not isinstance(v, int | float):
                continue
            group = "epoch" if k in ("seconds", "img_per_s") else (
                "train" if k == "train_loss" else "valid")
            self.writer.add_scalar(f"{group}/{k}", v, step)
        self.writer.flush()

    def on_fit_end(self, learn: Learner) -> None:
        if self.writer is not None and not learn.sweeping:
            self._flush()
            self.writer.flush()

    def finish(self, out: Path, metrics: RunMetrics) -> None:
        """After the run's files are written: the lr_find curve and the confusion matrix,
        and the settings as hparams with the final metrics."""
        if self.writer is None:
            return
        for name in ("lr_find", "confusion_matrix"):
            img = _png(out / f"{name}.png")
            if img is not None:
                self.writer.add_image(f"images/{name}", img, 0, dataformats="HWC")
        final = {f"hparam/{k}": v for k, v in metrics.to_json().items()
                 if isinstance(v, int | float) and not isinstance(v, bool)
                 and k not in ("epochs", "processes", "global_batch")}
        self.writer.add_hparams(hparams(out), final, run_name=".")
        self.writer.close()
        self.writer = None
