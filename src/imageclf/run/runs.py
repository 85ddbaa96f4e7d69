"""One training run end to end: start, resume, or continue a restarted job (the files it
writes are rundir's)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imageclf.core.config import DataConfig, TrainConfig
from imageclf.core.diskspace import check_room, disk_full, is_disk_full
from imageclf.core.distributed import Dist
from imageclf.core.errors import ConfigError, ImageclfError
from imageclf.core.hardware import resolve_precision
from imageclf.core.settings import differences
from imageclf.data.dataloaders import DataLoaders
from imageclf.data.items import Items
from imageclf.learn.callbacks import Callback, SizeSchedule
from imageclf.learn.checkpoint import (
    Checkpointer,
    checkpoint_position,
    graceful_stop,
    read_checkpoint,
    restore,
)
from imageclf.learn.learner import Learner, set_seed
from imageclf.learn.lr_find import LRChoice, LRFindResult, resolve_rule
from imageclf.learn.schedules import Phase, fine_tune_plan, shaped, spread_lrs
from imageclf.model.classifier import check_arch, create_model
from imageclf.model.metrics import check_metric
from imageclf.run import finish, rundir
from imageclf.run.rundir import RunMetrics

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """How this process takes part in a run: its device, extra callbacks (progress
    printing), minutes between checkpoints within an epoch (0: at epoch ends only), and its
    place in a distributed job."""

    device: torch.device | str = "cpu"
    cbs: Sequence[Callback] = ()
    checkpoint_every: float = 0.0
    dist: Dist = field(default_factory=Dist)
    items: Items | None = None  # the labelled images, already resolved (an audit's fold)


@dataclass
class RunResult:
    """Where a run wrote its files, and its final metrics."""

    out: Path
    metrics: RunMetrics | None  # rank 0's; None on the other ranks (rank 0 writes the run)
    lr_find: dict[str, float] | None  # lr_find suggestions when it ran
    already_done: bool = False  # --auto-resume found the run finished: nothing was trained


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint."""

    def __init__(self, out: Path, signal_name: str, checkpoint: Path | None) -> None:
        super().__init__(f"{signal_name}: training stopped; checkpoint {checkpoint}")
        self.out, self.signal_name, self.checkpoint = out, signal_name, checkpoint


def build_learner(data: DataConfig, train: TrainConfig, ctx: RunContext | None = None
                  ) -> Learner:
    """Data loaders, model and learner for a run (no training). With several processes,
    each loads its shard of both splits (`data.bs` is the batch size per process)."""
    ctx = ctx or RunContext()
    check_arch(train.model.arch)
    resolve_precision(train.optim.precision, torch.device(ctx.device))  # fail early
    if data.negatives and (train.reg.mixup or train.reg.cutmix):
        raise ConfigError("--negatives cannot be combined with --mixup or --cutmix yet (a "
                          "mixed image would be part known, part of no class); drop one")
    if data.synthetic and (train.reg.mixup or train.reg.cutmix):
        log.info("--mixup/--cutmix: no synthetic negatives (a mixed image would be part "
                 "known, part of no class)")
        data = data.replace(synthetic=False)
    dls = DataLoaders.from_config(data, device=ctx.device, rank=ctx.dist.rank,
                                  world_size=ctx.dist.world_size, items=ctx.items)
    check_metric(train.output.metric, dls.multi_label, len(dls.classes))
    if dls.negatives is not None:
        src = dls.train.source
        what = [f"{len(dls.negatives.train)} images of --negatives"] if src.n_files else []
        what += [f"synthetic ({', '.join(dls.negatives.synthetic)})"] if src.n_synthetic else []
        log.info("negatives: %s; %d beside each batch of %d, %s loss, weight %g",
                 " and ".join(what), src.extra, data.bs,
                 "bce" if dls.multi_label else train.reg.negatives_loss,
                 train.reg.weight_of_negatives(dls.multi_label))
    cbs = list(ctx.cbs)
    sizes = train.schedule.sizes
    if sizes:
        if sizes[-1] != data.size or max(sizes) > data.presize:
            raise ConfigError(f"--sizes {','.join(map(str, sizes))} must end at --size "
                              f"({data.size}) and stay within --presize ({data.presize})")
        epochs = train.schedule.epochs + (train.schedule.freeze_epochs
                                          if train.model.fine_tunes else 0)
        cbs.append(SizeSchedule(sizes, epochs))
    dls.train.prepare()  # the presize cache is built before the model is made
    set_seed(data.seed)
    m = train.model
    model = create_model(m.arch, len(dls.classes), m.pretrained, m.built_head)
    return Learner(dls, model, train.optim, train.reg, cbs=cbs, device=ctx.device,
                   dist=ctx.dist)


def run_lr_find(learn: Learner, train: TrainConfig, out: Path | None = None) -> LRFindResult:
    """The finder's sweep as a run does it (at most `train.lr_find_steps` optimiser steps);
    lr_find.json and lr_find.png in `out` when given."""
    res = learn.lr_find(num_it=train.schedule.lr_find_steps)
    if out is not None:
        finish.write_lr_find(out, res)
    return res


def choose_lr(learn: Learner, train: TrainConfig, out: Path | None = None
              ) -> tuple[LRChoice, LRFindResult | None]:
    """The rate to train at: `train.lr` as a number, or lr_find's suggestion by its rule.
    When fine-tuning the sweep sees the frozen body, as fastai's (the rate first trains the
    frozen model). Several processes: every rank freezes (rebuilding DDP is collective),
    rank 0 alone sweeps, and its choice is sent to the others. Returns the choice and, on
    the rank that swept, the sweep."""
    schedule = train.schedule
    if schedule.lr_rule is None:
        return LRChoice(float(schedule.lr)), None
    if train.sweeps_frozen:
        learn.freeze()
    dist = learn.dist
    res = run_lr_find(learn, train, out) if dist.is_main else None
    found = dist.broadcast(res.suggestions if res is not None else None)
    rule = resolve_rule(schedule.lr_rule, found, train.model.fine_tunes)
    lr = found[rule]
    log.info("lr_find suggests %.2e (%s)", lr, rule)
    if lr < 1e-5:
        where = out / "lr_find.png" if out is not None else "the sweep's plot"
        log.warning("lr_find's pick %.2e (%s) is tiny: the sweep's loss barely fell. Look at "
                    "%s and pass --lr, or sweep longer with --lr-find-steps", lr, rule, where)
    return LRChoice(lr, rule, found), res


@dataclass
class _Job:
    """A learner ready to train through `plan` into `out`, from (epoch, batch) `start`."""

    learn: Learner
    out: Path
    plan: list[Phase]
    lr: LRChoice
    t0: float  # when the run (or this resumption) began, for its wall time
    train: TrainConfig
    start: tuple[int, int] = (0, 0)


def train_run(data: DataConfig, train: TrainConfig, ctx: RunContext | None = None, *,
              overwrite: bool = False) -> RunResult:
    """Train as configured (fine_tune when pretrained, fit_one_cycle from scratch) into a
    run directory (see rundir: config, metrics, plots, model/, report, checkpoints/ at each
    epoch end, every `ctx.checkpoint_every` minutes and on Ctrl-C). Several processes
    (torchrun): only rank 0 writes. An --out that already holds a run is refused unless
    `overwrite`."""
    ctx = ctx or RunContext()
    dist = ctx.dist
    _check_extras(train)
    out = Path(dist.decide(lambda: str(rundir.claim(train.output.out, overwrite))))
    try:
        learn = build_learner(data, train, ctx)
        dist.decide(lambda: _check_room(learn, out, resumed=False))  # every rank stops
    except ImageclfError:  # a setting the data refuses (--metric, ...), too little room
        if dist.is_main and not overwrite:
            rundir.release(out)
        raise
    if dist.is_main:
        rundir.write_config(out, data, train)
    t0 = time.perf_counter()
    lr, _ = choose_lr(learn, train, out)
    epochs, freeze_epochs = train.schedule.epochs, train.schedule.freeze_epochs
    if train.model.fine_tunes:
        plan = fine_tune_plan(epochs, lr.lr, learn.n_groups, freeze_epochs)
    else:
        plan = [Phase(epochs, spread_lrs(lr.lr, learn.n_groups))]
    plan = shaped(plan, train.schedule.lr_schedule)
    return _train(_Job(learn, out, plan, lr, t0, train), ctx)


def resume_run(run_dir: str | Path, ctx: RunContext | None = None) -> RunResult:
    """Continue RUN_DIR from its last checkpoint, with the settings in its config.json.
    Several processes: rank 0 reads the run directory and sends the others what it holds,
    so only rank 0's machine needs to see it (as only rank 0 writes it)."""
    ctx = ctx or RunContext()
    dist = ctx.dist
    run = Path(run_dir)
    data, train, info, tensors = dist.decide(
        lambda: (*rundir.read_config(run), *read_checkpoint(run / "checkpoints")))
    _check_extras(train)
    learn = build_learner(data, train, ctx)
    if learn.dls.cache_keys() != info.cache:
        raise ConfigError(f"--resume {run}: the data or its presize settings changed since the "
                          "checkpoint (cache key differs); start a new run instead")
    epoch, batch = checkpoint_position(info)
    was, now = info.world_size, dist.world_size
    restart_epoch = was != now and batch > 0
    if was != now and dist.is_main:
        per = data.bs * train.optim.accum_steps
        log.warning("%s: its checkpoint was written by %d process(es) and this job has %d: "
                    "each step now sees %d images instead of %d%s", run, was, now, per * now,
                    per * was, f", and epoch {epoch} starts again from its beginning "
                    "(its batches are dealt out differently)" if restart_epoch else "")
    restore(learn, info, tensors, restart_epoch)
    dist.decide(lambda: _check_room(learn, run, resumed=True))
    plan = [Phase(**p) for p in info.plan]
    start = (epoch, 0 if restart_epoch else batch)
    log.info("resuming %s at epoch %d, batch %d", run, *start)
    lr = LRChoice.from_dict(info.lr_choice)
    return _train(_Job(learn, run, plan, lr, time.perf_counter(), train, start), ctx)


def auto_run(data: DataConfig, train: TrainConfig, ctx: RunContext | None = None
             ) -> RunResult:
    """`train --auto-resume`: the same command run again (a job restarted by torchrun
    --max-restarts, a scheduler, a preempted machine) carries on where it stopped. --out
    with a checkpoint: resume it; finished: report it and train nothing; a run that stopped
    before its first checkpoint: start it again; empty or absent: start. A run there with
    other settings is refused, never mixed with this one."""
    ctx = ctx or RunContext()
    dist = ctx.dist
    if not train.output.out:
        raise ConfigError("--auto-resume needs --out: the run directory a restarted job finds "
                          "again")
    out = Path(train.output.out)
    state, metrics = dist.decide(lambda: _auto_state(out, data, train))
    # Only rank 0 reads and writes the run. If its machine sees no checkpoint where another
    # machine holds one (--out on a machine's own disk, and an elastic job's new node made
    # rank 0), starting afresh would silently drop the training done so far: refuse.
    # (rank 0's own view is its decision: it does not look again)
    views = dist.gather(None if dist.is_main else rundir.checkpoint_view(out))
    if state in ("start", "restart") and any(views):
        rank, view = next((r, v) for r, v in enumerate(views) if v)
        raise ConfigError(
            f"--auto-resume: rank 0's machine has no checkpoint in {out}, but rank {rank}'s "
            f"has one ({view}). Only rank 0 reads and writes the run directory: put --out on "
            "storage every machine sees, or start the job with that machine as rank 0")
    if state == "done":
        log.info("%s is already trained; nothing to do", out)
        return RunResult(out, metrics, metrics.lr_find, already_done=True)
    if state == "resume":
        return resume_run(out, ctx)
    if state == "restart":
        log.warning("%s stopped before its first checkpoint: starting it again", out)
    return train_run(data, train, ctx, overwrite=True)


def _auto_state(out: Path, data: DataConfig, train: TrainConfig
                ) -> tuple[str, RunMetrics | None]:
    """What --auto-resume does with --out: start, restart, resume or done (see auto_run),
    with the finished run's metrics."""
    if not rundir.run_files(out):
        return "start", None
    if (out / "config.json").exists():
        old_data, old_train = rundir.read_config(out)
        changed = differences(old_data, data) + differences(old_train, train, ("out",))
        if changed:
            raise ConfigError(f"--auto-resume: {out} holds a run with other settings ("
                              + "; ".join(changed) + "); give another --out, or the same "
                              "settings to continue it")
    if all((out / n).exists() for n in ("metrics.json", "model", "report.html")):
        return "done", rundir.read_metrics(out)
    if (out / "checkpoints" / "last.json").exists():
        return "resume", None
    if (out / "model").exists():  # a model and no checkpoint: not a run this job stopped
        raise ConfigError(f"--auto-resume: {out} holds a model but no checkpoint to continue "
                          "from; give another --out")
    return "restart", None


def _check_room(learn: Learner, out: Path, resumed: bool) -> None:
    """Refuse a run whose checkpoints, model and report will not fit under --out, before
    any training (finish.required_bytes)."""
    check_room(finish.required_bytes(learn, resumed), out,
               "the run directory (checkpoints, model/, report)",
               "free room, or choose --out on another disk",
               largest=finish.checkpoint_bytes(learn))


def _check_extras(train: TrainConfig) -> None:
    """Optional packages the settings need, before any work (the logger checks again)."""
    if train.output.tensorboard:
        from imageclf.run.tracking import check_tensorboard

        check_tensorboard()


def _train(job: _Job, ctx: RunContext) -> RunResult:
    learn = job.learn
    ck = Checkpointer(job.out / "checkpoints", ctx.checkpoint_every, job.lr)
    learn.cbs.append(ck)
    tb = None
    if job.train.output.tensorboard and learn.dist.is_main:
        from imageclf.run.tracking import TensorBoardLog

        tb = TensorBoardLog(job.out / "tensorboard")
        tb.start(learn, resumed=job.start != (0, 0))
        learn.cbs.append(tb)
    with graceful_stop():
        learn.run_plan(job.plan, *job.start)
    if learn.interrupted:
        raise Interrupted(job.out, learn.interrupted, ck.last_path)
    # the last epoch's validation pass, or a new one (collective across processes)
    preds = learn.last_preds if learn.last_preds is not None else learn.get_preds()
    found = job.lr.suggestions
    if not learn.dist.is_main:  # rank 0 writes the run
        return RunResult(job.out, None, found)
    try:
        metrics = finish.write_results(learn, job.out, job.lr, time.perf_counter() - job.t0,
                                       preds, job.train.output.metric)
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise disk_full(e, job.out, "the run's results", "the last checkpoint stays; free "
                        f"room, then `imageclf train --resume {job.out}` writes them") from e
    if tb is not None:
        tb.finish(job.out, metrics)
    log.info("run written to %s", job.out)
    return RunResult(job.out, metrics, found)
