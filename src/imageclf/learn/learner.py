"""Learner: the training loop, fit, fit_one_cycle, fine_tune, freeze/unfreeze and the lr
finder's sweep (its suggestions are lr_find.py, the recipes' phases schedules.py)."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from imageclf.core.clock import TrainProgress
from imageclf.core.config import OptimConfig, RegConfig
from imageclf.core.distributed import Dist
from imageclf.core.hardware import check_compiler, resolve_precision, tune_for_training
from imageclf.learn.callbacks import Callback, History, LRSweep, OneCycle, PrintEpochs, in_notebook
from imageclf.learn.ema import WeightEMA
from imageclf.learn.lr_find import LRFindResult, sweep_result
from imageclf.learn.optim import optimizer_for
from imageclf.learn.schedules import Phase, fine_tune_plan, spread_lrs
from imageclf.model import metrics as M
from imageclf.model.classifier import Classifier, freeze, param_groups, unfreeze
from imageclf.model.losses import LossFn, class_weights, make_loss, with_negatives
from imageclf.model.smallconv import use_for_training

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from imageclf.model.interpret import Interpretation

log = logging.getLogger(__name__)


class Learner:
    """A model, its data, loss, optimiser and callbacks; the training loop lives here."""

    def __init__(self, dls, model: Classifier, optim: OptimConfig | None = None,
                 reg: RegConfig | None = None, *, cbs: Sequence[Callback] = (),
                 device: torch.device | str | None = None, dist: Dist | None = None,
                 loss_func: LossFn | None = None) -> None:
        self.dls = dls
        self.optim, self.reg = optim or OptimConfig(), reg or RegConfig()
        self.accum = self.optim.accum_steps  # batches whose gradients make one step
        self.device = torch.device(device or dls.train.device)
        self.multi_label = bool(dls.multi_label)
        self.loss_func = loss_func or self._make_loss()
        self.precision = resolve_precision(self.optim.precision, self.device)
        self.dist = dist or Dist()
        self.model = self._place(model)
        self.train_model: torch.nn.Module = self.model
        # the weights' moving average, validated and exported instead when on
        self.ema = WeightEMA(self.model, self.reg.ema) if self.reg.ema else None
        self._wrap()
        self.groups = param_groups(self.model)
        self.n_groups = len(self.groups)
        self.opt = optimizer_for(self.model, self.groups, self.optim, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaler)
        self.cbs: list[Callback] = list(cbs)
        # a bar per epoch and a row per epoch: in a notebook unless given (the command line
        # brings its own, and a script stays quiet unless it passes PrintEpochs())
        if in_notebook() and not any(isinstance(c, PrintEpochs) for c in self.cbs):
            self.cbs.append(PrintEpochs())
        self.history = History()
        self._extra: list[Callback] = []
        self.stop_training = False
        self.loss = torch.tensor(0.0)
        self.batch_size = 0
        self.last_validation: dict[str, float] = {}
        self.last_preds: tuple[torch.Tensor, torch.Tensor] | None = None
        self.progress = TrainProgress()  # epochs, batches, images and seconds so far
        self.interrupted: str | None = None  # set (to the signal's name) to stop mid-epoch
        self.stepped = True  # the last batch ended with an optimiser step
        self.plan: list[Phase] = []
        log.info("precision %s on %s", self.precision.name, self.device)

    def _make_loss(self) -> LossFn:
        """Cross-entropy (label smoothing, class weights) or BCE (pos_weight) as `reg`
        asks, the weights from the training split's targets (read only for
        `--class-weights auto`: a stream's come from its index)."""
        weights = class_weights(self.reg.class_weights, lambda: self.dls.train.targets,
                                self.dls.classes)
        loss = make_loss(self.multi_label, self.reg.label_smoothing, weights)
        if getattr(self.dls, "negatives", None) is not None:  # --negatives, --synthetic
            weight = self.reg.weight_of_negatives(self.multi_label)
            loss = with_negatives(loss, weight, self.multi_label, self.reg.negatives_loss)
        return loss

    def _place(self, model: Classifier) -> Classifier:
        """The model on the device, channels_last, with the CPU's small-map convolutions."""
        tune_for_training(self.device)
        model = model.to(self.device, memory_format=torch.channels_last)
        if self.device.type == "cpu" and not self.optim.compile:
            use_for_training(model)  # faster weight gradients on small feature maps
        if self.optim.compile:
            check_compiler(self.device)
        return model

    # --- optimiser -------------------------------------------------------------------
    def set_lrs(self, lrs: Sequence[float]) -> None:
        """Learning rate of each layer group (stem+early, late, head)."""
        for g in self.opt.param_groups:
            g["lr"] = lrs[g["layer"]]

    def set_beta1(self, beta1: float) -> None:
        """Adam's momentum term (SGD's momentum) for every group."""
        for g in self.opt.param_groups:
            if "betas" in g:
                g["betas"] = (beta1, g["betas"][1])
            else:
                g["momentum"] = beta1

    def _wrap(self) -> None:
        """The module the training forward goes through, rebuilt whenever the set of
        trainable parameters changes: DistributedDataParallel with several processes, then
        torch.compile when asked (compiling the DDP wrapper lets Dynamo split the graph at
        DDP's gradient buckets, so communication still overlaps the backward pass).
        `self.model` stays the plain module: its state_dict keys, validation, lr_find and
        export never see the wrappers."""
        wrapped: torch.nn.Module = self.model
        self._ddp = None
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = self._ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.train_model = torch.compile(wrapped) if self.optim.compile else wrapped

    def freeze(self) -> None:
        """Train only the head (and the body's norm layers)."""
        freeze(self.model)
        self._wrap()

    def unfreeze(self) -> None:
        """Train everything."""
        unfreeze(self.model)
        self._wrap()

    # --- the loop ----------------------------------------------------------------------
    def plot_losses(self, path: str | Path | None = None) -> Figure:
        """Training loss per batch and validation loss per epoch, as a Figure."""
        from imageclf.core.plots import plot_losses

        return plot_losses(self.history.batch_losses, self.history.rows, len(self.dls.train),
                           path)

    def interpret(self, preds: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> Interpretation:
        """The validation split's interpretation: confusion matrix, per-class scores, top
        losses, unreadable files (`interp.plot_confusion_matrix()`, `interp.summary()`).
        `preds`: (logits, targets) of a pass already made, else the last validation's, else
        a new pass."""
        from imageclf.model.interpret import Interpretation

        logits, y = preds or self.last_preds or self.get_preds()
        valid = self.dls.valid
        paths = valid.kept_paths  # every rank's shard, in order
        return Interpretation.from_logits(logits, y, self.dls.classes, self.multi_label,
                                          paths, skipped=self.dls.skipped())

    @property
    def sweeping(self) -> bool:
        """The lr finder's sweep is running (its batches are not training)."""
        return any(isinstance(c, LRSweep) for c in self._extra)

    def _call(self, event: str) -> None:
        for cb in sorted([*self.cbs, self.history, *self._extra], key=lambda c: c.order):
            getattr(cb, event)(self)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision context for forward passes."""
        return self.precision.autocast()

    @property
    def group_start(self) -> bool:
        """This batch starts an accumulation group (every batch does when accum is 1)."""
        return self.progress.batch_in_epoch % self.accum == 0

    def _group(self) -> tuple[int, bool]:
        """(batches in this batch's accumulation group, whether it is the group's last).
        Groups are `accum` batches from the epoch's start; the epoch's last group may be
        shorter, and its batches then count for more: each batch's loss is divided by its
        group's size, so every step averages the gradients of the batches it saw."""
        if self.accum == 1:
            return 1, True
        b, n = self.progress.batch_in_epoch, len(self.dls.train)
        start = b - b % self.accum
        size = max(1, min(self.accum, n - start))
        return size, b + 1 >= start + size

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward and backward on a batch, then the optimiser step once the gradients are
        in: after every batch, or with accum > 1 after every accum-th (and the epoch's
        last). With several processes, gradients are exchanged only for the batch before a
        step. Override to change the step itself."""
        size, self.stepped = self._group()
        if (self.reg.mixup or self.reg.cutmix) and not self.sweeping:
            x, y = self._mix(x, y)
        sync = self.stepped or self._ddp is None
        with contextlib.nullcontext() if sync else self._ddp.no_sync():
            with self.autocast():
                out = self.train_model(x)
            self.loss = self.loss_func(out, y)
            self._call("on_backward_start")
            self.scaler.scale(self.loss / size if size > 1 else self.loss).backward()
        if not self.stepped:
            return
        if self.optim.clip_grad is not None:
            self.scaler.unscale_(self.opt)  # the norm of the true gradients (fp16's scaler)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.clip_grad)
        self._call("on_step_start")
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None and not self.sweeping:
            self.ema.update(self.model)

    def _mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup / CutMix of this batch, drawn from its (seed, epoch, batch) generator."""
        from imageclf.data.mix import mix_batch
        from imageclf.data.sampling import epoch_generator

        g = epoch_generator(self.dls.cfg.seed, self.progress.epochs_done,
                            1000 + self.progress.batch_in_epoch)
        x, y, _ = mix_batch(x, y, len(self.dls.classes), self.reg.mixup, self.reg.cutmix, g)
        return x, y

    @property
    def eval_model(self) -> Classifier:
        """The weights validation, interpretation and export use: the moving average when
        --ema is on, else the model itself."""
        return self.ema.module if self.ema is not None else self.model

    def loop(self, epochs: int, extra: Sequence[Callback] = (), validate: bool = True,
             start_batch: int = 0) -> None:
        """The loop itself: `epochs` passes over the training split with `extra` callbacks
        for this call (a schedule, the lr sweep), validating after each unless told not to;
        the first pass starts at batch `start_batch`."""
        self._extra = list(extra)
        self.stop_training = False
        self._call("on_fit_start")
        progress = self.progress
        try:
            for _ in range(epochs):
                self.model.train()
                self.dls.train.set_epoch(progress.epochs_done)
                self.dls.train.skip = start_batch
                progress.start_epoch(start_batch)
                self._call("on_epoch_start")
                start_batch, n = 0, 0
                progress.start()
                for x, y in self.dls.train:
                    self.batch_size, self.batch_side = x.shape[0], x.shape[-1]
                    self._call("on_batch_start")
                    self.train_step(x, y)
                    n += 1
                    progress.add_batch(self.batch_size * self.dist.world_size)  # the job's
                    self._call("on_batch_end")
                    if self.stop_training:
                        break
                if self.device.type == "cuda":  # queued kernels belong to this epoch's time
                    torch.cuda.synchronize(self.device)
                progress.stop()
                if self.interrupted:  # mid-epoch stop: no validation, no epoch end
                    break
                if validate and not (self.stop_training and not self.history.rows and not n):
                    with progress.validating():
                        self.last_validation = self.validate()
                    self._call("on_validation_end")
                progress.end_epoch()
                self._call("on_epoch_end")
                if self.stop_training:
                    break
        finally:
            # a stop in the middle of an accumulation group: its gradients never step
            self.opt.zero_grad(set_to_none=True)
            self.stepped = True
            self._call("on_fit_end")
            self._extra = []

    @torch.no_grad()
    def get_preds(self, loader=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, C) float32, targets) over a loader, default the validation split."""
        loader = loader or self.dls.valid
        model = self.eval_model
        model.eval()
        outs, ys = [], []
        for x, y in loader:
            with self.autocast():
                outs.append(model(x).float())
            ys.append(y)
        logits, targets = torch.cat(outs).cpu(), torch.cat(ys).cpu()
        if self.dist.active and not getattr(loader, "train", False):  # sharded: reassemble
            logits = self.dist.gather_interleaved(logits, loader.n_items)
            targets = self.dist.gather_interleaved(targets, loader.n_items)
        return logits, targets

    def validate(self) -> dict[str, float]:
        """valid_loss and the metrics on the validation split."""
        logits, y = self.get_preds()
        self.last_preds = (logits, y)  # the run's interpretation reuses the final pass
        out = {"valid_loss": float(self.loss_func(logits, y))}
        out |= {f"valid_{k}" if k == "accuracy" else k: v
                for k, v in M.compute(logits, y, self.multi_label).items()}
        neg = getattr(self.dls, "negatives_valid", None)
        if neg is not None:
            out |= M.rejection(logits, self.get_preds(neg)[0], self.multi_label)
        return out

    # --- recipes -----------------------------------------------------------------------
    def fit(self, epochs: int, lr: float | Sequence[float] = 1e-3) -> None:
        """Train at a constant rate (one value, or a (low, high) range over the groups)."""
        self.run_plan([Phase(epochs, spread_lrs(lr, self.n_groups), constant=True)])

    def fit_one_cycle(self, epochs: int, lr_max: float | Sequence[float] = 1e-3,
                      div: float = 25.0, div_final: float = 1e5,
                      pct_start: float = 0.25) -> None:
        """fastai's one-cycle policy over `epochs`."""
        self.run_plan([Phase(epochs, spread_lrs(lr_max, self.n_groups), pct_start, div,
                             div_final)])

    def fine_tune(self, epochs: int, base_lr: float = 2e-3, freeze_epochs: int = 1,
                  lr_mult: float = 100.0, pct_start: float = 0.3, div: float = 5.0) -> None:
        """fastai's recipe: one-cycle on the frozen model (pct_start 0.99), then halve base_lr,
        unfreeze and one-cycle over (base_lr/lr_mult, base_lr) with pct_start 0.3, div 5."""
        self.run_plan(fine_tune_plan(epochs, base_lr, self.n_groups, freeze_epochs, lr_mult,
                                     pct_start, div))

    def run_plan(self, plan: Sequence[Phase], start_epoch: int = 0, start_batch: int = 0
                 ) -> None:
        """Train through `plan`'s phases, optionally from (epoch, batch) within the plan:
        a resumed run replays exactly the schedule an uninterrupted one would follow."""
        self.plan = list(plan)
        first = 0
        for phase in self.plan:
            if start_epoch >= first + phase.epochs:
                first += phase.epochs
                continue
            if phase.frozen is True:
                self.freeze()
            elif phase.frozen is False:
                self.unfreeze()
            done = max(0, start_epoch - first)
            per_epoch = -(-len(self.dls.train) // self.accum)  # optimiser steps
            if phase.constant:
                self.set_lrs(phase.lr_max)
                extra: list[Callback] = []
            else:
                sched = OneCycle(phase.lr_max, phase.epochs * per_epoch, phase.div,
                                 phase.div_final, phase.pct_start, shape=phase.shape)
                sched.step = done * per_epoch + start_batch // self.accum
                extra = [sched]
            self.loop(phase.epochs - done, extra, start_batch=start_batch)
            start_batch = 0
            first += phase.epochs
            if self.stop_training:
                break

    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0,
                num_it: int = 100) -> LRFindResult:
        """Exponential sweep start→end over num_it optimiser steps, stopped when the
        smoothed loss exceeds 4× its best; model, optimiser and RNG are restored afterwards,
        in memory. Each step sees the images a training step will: `accum` batches, and with
        several processes (the sweep runs on rank 0 alone) `accum × world_size` of rank 0's
        batches, so the rate it finds is for the job's global batch."""
        saved = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.opt.state_dict()),
                 torch.get_rng_state(), self.progress.copy(), list(self.history.rows))
        sweep = LRSweep(start_lr, end_lr, num_it)
        wrapped, self.train_model = self.train_model, self.model  # rank 0 alone: no DDP
        accum, self.accum = self.accum, self.accum * self.dist.world_size
        try:
            steps = -(-len(self.dls.train) // self.accum)  # optimiser steps per epoch
            self.loop(-(-num_it // max(steps, 1)), [sweep], validate=False)
        finally:
            self.model.load_state_dict(saved[0])
            self.opt.load_state_dict(saved[1])
            torch.set_rng_state(saved[2])
            self.progress, self.history.rows = saved[3], saved[4]
            self.history.clear_batches()
            self.train_model = wrapped  # not rebuilt: building DDP is collective
            self.accum = accum
        return sweep_result(sweep.lrs, sweep.losses, sweep.step_images)

def set_seed(seed: int) -> None:
    """Seed torch and numpy's global generators (model init, dropout)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
