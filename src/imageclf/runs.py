"""One training run end to end, written to a run directory."""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from imageclf.callbacks import Callback
from imageclf.checkpoint import Checkpointer, graceful_stop, read_checkpoint, restore
from imageclf.config import (
    LR_FIND_STEPS,
    ConfigError,
    DataConfig,
    TrainConfig,
    from_dict,
    save_json,
    to_dict,
)
from imageclf.data.loader import DataLoaders
from imageclf.distributed import Dist
from imageclf.export import save_model
from imageclf.interpret import Interpretation, write_pictures
from imageclf.learner import (
    Learner,
    LRFindResult,
    Phase,
    fine_tune_plan,
    resolve_precision,
    set_seed,
    spread_lrs,
)
from imageclf.lr_finder import resolve_rule
from imageclf.models import check_arch, create_model
from imageclf.plots import plot_losses, plot_lr_find
from imageclf.report import build_report

log = logging.getLogger(__name__)


def default_run_dir() -> Path:
    """runs/<timestamp>, with -2, -3... when a run started in the same second."""
    base = Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


# what a run writes into its directory: finding one of them there means a run is there
RUN_FILES = ("config.json", "checkpoints", "model", "metrics.json")


def run_files(path: Path) -> list[str]:
    """The names of RUN_FILES that `path` holds."""
    return [n for n in RUN_FILES if (path / n).exists()]


def prepare_out(out: str | Path | None, overwrite: bool = False) -> Path:
    """Create the run directory, failing early with a clear message if it is not writable,
    or if it already holds a run (unless `overwrite`): a new run never replaces an earlier
    one's model and checkpoints."""
    path = Path(out) if out else default_run_dir()
    found = [] if overwrite else run_files(path)
    if found:
        raise ConfigError(f"--out {path} already holds a run ({', '.join(found)}); nothing was "
                          f"changed. Continue it with `imageclf train --resume {path}`, or give "
                          "another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out {path} is not writable ({e.strerror}); choose another "
                          "folder") from e
    return path


@dataclass
class RunResult:
    """Where a run wrote its files, and its final metrics."""

    out: Path
    metrics: dict
    lr_find: dict[str, float] | None  # lr_find suggestions when it ran
    already_done: bool = False  # --auto-resume found the run finished: nothing was trained


def build_learner(data: DataConfig, train: TrainConfig, device: str | torch.device = "cpu",
                  cbs: Sequence[Callback] = (), dist: Dist | None = None) -> Learner:
    """Data loaders, model and learner for a run (no training). With several processes,
    each loads its shard of both splits (`data.bs` is the batch size per process)."""
    dist = dist or Dist()
    check_arch(train.arch)
    resolve_precision(train.precision, torch.device(device))  # bad settings fail before work
    dls = DataLoaders.from_config(data, device=device, rank=dist.rank,
                                  world_size=dist.world_size)
    set_seed(train.seed)
    model = create_model(train.arch, len(dls.classes), train.pretrained, train.head)
    learn = Learner(dls, model, wd=train.wd, precision=train.precision,
                    label_smoothing=train.label_smoothing, cbs=cbs, device=device, dist=dist,
                    compile=train.compile, accum=train.accum)
    learn.arch, learn.head_kind = train.arch, train.head
    return learn


def run_lr_find(learn: Learner, out: Path | None = None, steps: int = LR_FIND_STEPS
                ) -> LRFindResult:
    """lr_find (a sweep of at most `steps` optimiser steps), and its plot when `out` is given."""
    res = learn.lr_find(num_it=steps)
    if out is not None:
        save_json({"lrs": res.lrs, "losses": res.losses, "suggestions": res.suggestions,
                   "images_per_step": res.images_per_step}, out / "lr_find.json")
        plot_lr_find(res.lrs, res.losses, res.suggestions, out / "lr_find.png")
    return res


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint."""

    def __init__(self, out: Path, signal_name: str, checkpoint: Path | None) -> None:
        super().__init__(f"{signal_name}: training stopped; checkpoint {checkpoint}")
        self.out, self.signal_name, self.checkpoint = out, signal_name, checkpoint


def train_run(data: DataConfig, train: TrainConfig, device: str | torch.device = "cpu",
              cbs: Sequence[Callback] = (), checkpoint_every: float = 0.0,
              dist: Dist | None = None, overwrite: bool = False) -> RunResult:
    """Train as configured (fine_tune when pretrained, fit_one_cycle from scratch) and write
    config.json, metrics.csv, metrics.json, lr_find.png, losses.png, model/, the validation
    interpretation (interpretation.json, confusion_matrix.png, top_losses.png), report.html
    and checkpoints/ (each epoch end, every `checkpoint_every` minutes, and on Ctrl-C).
    Several processes (torchrun): only rank 0 writes; lr_find runs on rank 0 and its choice
    is broadcast. An --out that already holds a run is refused unless `overwrite`."""
    dist = dist or Dist()
    out = Path(dist.decide(lambda: str(prepare_out(train.out, overwrite))))
    learn = build_learner(data, train, device, cbs, dist)
    if dist.is_main:
        save_json({"data": to_dict(data), "train": to_dict(train)}, out / "config.json")
    t0 = time.perf_counter()
    found = None
    if train.lr_rule is not None:
        if train.sweeps_frozen:
            learn.freeze()  # on every rank: rebuilding the DDP wrapper is collective
        mine = run_lr_find(learn, out, train.lr_find_steps).suggestions if dist.is_main else None
        found = dist.broadcast(mine)
        rule = resolve_rule(train.lr_rule, found, train.fine_tunes)
        lr = found[rule]
        log.info("lr_find suggests %.2e (%s)", lr, rule)
        if lr < 1e-5:
            log.warning("lr_find's pick %.2e (%s) is tiny: the sweep's loss barely fell. "
                        "Look at %s and pass --lr, or sweep longer with --lr-find-steps",
                        lr, rule, out / "lr_find.png")
    else:
        lr, rule = float(train.lr), None
    if train.fine_tunes:
        plan = fine_tune_plan(train.epochs, lr, learn.n_groups, train.freeze_epochs)
    else:
        plan = [Phase(train.epochs, spread_lrs(lr, learn.n_groups))]
    return _train(learn, data, out, plan, lr, found, rule, t0, checkpoint_every)


def resume_run(run_dir: str | Path, device: str | torch.device = "cpu",
               cbs: Sequence[Callback] = (), checkpoint_every: float = 0.0,
               dist: Dist | None = None) -> RunResult:
    """Continue RUN_DIR from its last checkpoint, with the settings in its config.json.
    Several processes: rank 0 reads the run directory and sends the others what it holds,
    so only rank 0's machine needs to see it (as only rank 0 writes it)."""
    dist = dist or Dist()
    run = Path(run_dir)
    data, train, info, tensors = dist.decide(lambda: _read_run(run))
    learn = build_learner(data, train, device, cbs, dist)
    keys = {"train": learn.dls.train.cache.key, "valid": learn.dls.valid.cache.key}
    if keys != info["cache"]:
        raise ConfigError(f"--resume {run}: the data or its presize settings changed since the "
                          "checkpoint (cache key differs); start a new run instead")
    was, now = info.get("world_size", 1), learn.dist.world_size
    restart_epoch = was != now and info["batch"] > 0
    if was != now and dist.is_main:
        per = data.bs * train.accum
        log.warning("%s: its checkpoint was written by %d process(es) and this job has %d: "
                    "each step now sees %d images instead of %d%s", run, was, now, per * now,
                    per * was, f", and epoch {info['epoch']} starts again from its beginning "
                    "(its batches are dealt out differently)" if restart_epoch else "")
    restore(learn, info, tensors, restart_epoch)
    plan = [Phase(**p) for p in info["plan"]]
    start = (info["epoch"], 0 if restart_epoch else info["batch"])
    log.info("resuming %s at epoch %d, batch %d", run, *start)
    return _train(learn, data, run, plan, info["lr"], info.get("lr_find"), info.get("lr_rule"),
                  time.perf_counter(), checkpoint_every, start)


def _read_config(run: Path) -> tuple[DataConfig, TrainConfig]:
    try:
        cfg = json.loads((run / "config.json").read_text())
        return from_dict(DataConfig, cfg["data"]), from_dict(TrainConfig, cfg["train"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--resume {run}: cannot read its config.json ({e})") from e


def _read_run(run: Path) -> tuple[DataConfig, TrainConfig, dict, dict[str, torch.Tensor]]:
    data, train = _read_config(run)
    return (data, train, *read_checkpoint(run / "checkpoints"))


def auto_run(data: DataConfig, train: TrainConfig, device: str | torch.device = "cpu",
             cbs: Sequence[Callback] = (), checkpoint_every: float = 0.0,
             dist: Dist | None = None) -> RunResult:
    """`train --auto-resume`: the same command run again (a job restarted by torchrun
    --max-restarts, a scheduler, a preempted machine) carries on where it stopped. --out
    with a checkpoint: resume it; finished: report it and train nothing; a run that stopped
    before its first checkpoint: start it again; empty or absent: start. A run there with
    other settings is refused, never mixed with this one."""
    dist = dist or Dist()
    if not train.out:
        raise ConfigError("--auto-resume needs --out: the run directory a restarted job finds "
                          "again")
    out = Path(train.out)
    state, metrics = dist.decide(lambda: _auto_state(out, data, train))
    # Only rank 0 reads and writes the run. If its machine sees no checkpoint where another
    # machine holds one (--out on a machine's own disk, and an elastic job's new node made
    # rank 0), starting afresh would silently drop the training done so far: refuse.
    # (rank 0's own view is its decision: it does not look again)
    views = dist.gather(None if dist.is_main else _checkpoint_view(out))
    if state in ("start", "restart") and any(views):
        rank, view = next((r, v) for r, v in enumerate(views) if v)
        raise ConfigError(
            f"--auto-resume: rank 0's machine has no checkpoint in {out}, but rank {rank}'s "
            f"has one ({view}). Only rank 0 reads and writes the run directory: put --out on "
            "storage every machine sees, or start the job with that machine as rank 0")
    if state == "done":
        log.info("%s is already trained; nothing to do", out)
        return RunResult(out, metrics, metrics.get("lr_find"), already_done=True)
    if state == "resume":
        return resume_run(out, device, cbs, checkpoint_every, dist)
    if state == "restart":
        log.warning("%s stopped before its first checkpoint: starting it again", out)
    return train_run(data, train, device, cbs, checkpoint_every, dist, overwrite=True)


def _checkpoint_view(out: Path) -> str | None:
    """What this machine holds at `out`: a finished run, a checkpoint (where), or nothing."""
    if (out / "metrics.json").exists():
        return "a finished run"
    try:
        info = json.loads((out / "checkpoints" / "last.json").read_text())
        return f"epoch {info['epoch']}, batch {info['batch']}"
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return "an unreadable one"


def _auto_state(out: Path, data: DataConfig, train: TrainConfig) -> tuple[str, dict | None]:
    """What --auto-resume does with --out: start, restart, resume or done (see auto_run),
    with the finished run's metrics."""
    if not run_files(out):
        return "start", None
    if (out / "config.json").exists():
        old_data, old_train = _read_config(out)
        changed = [f"{scope}.{k}: {a[k]!r} there, {b[k]!r} now"
                   for scope, a, b in (("data", _flat(old_data), _flat(data)),
                                       ("train", _flat(old_train), _flat(train)))
                   for k in a if k != "out" and a[k] != b.get(k)]
        if changed:
            raise ConfigError(f"--auto-resume: {out} holds a run with other settings ("
                              + "; ".join(changed) + "); give another --out, or the same "
                              "settings to continue it")
    if all((out / n).exists() for n in ("metrics.json", "model", "report.html")):
        try:
            return "done", json.loads((out / "metrics.json").read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"--auto-resume: {out / 'metrics.json'} is damaged ({e})") from e
    if (out / "checkpoints" / "last.json").exists():
        return "resume", None
    if (out / "model").exists():  # a model and no checkpoint: not a run this job stopped
        raise ConfigError(f"--auto-resume: {out} holds a model but no checkpoint to continue "
                          "from; give another --out")
    return "restart", None


def _flat(cfg: object) -> dict:
    """A settings dataclass as flat JSON values (nested ones as aug.x), as config.json
    reads back."""
    d = json.loads(json.dumps(to_dict(cfg)))
    return {f"{k}.{kk}" if isinstance(v, dict) else k: vv
            for k, v in d.items() for kk, vv in (v.items() if isinstance(v, dict) else [(k, v)])}


def _train(learn: Learner, data: DataConfig, out: Path, plan: list[Phase], lr: float,
           found: dict | None, rule: str | None, t0: float, checkpoint_every: float,
           start: tuple[int, int] = (0, 0)) -> RunResult:
    ck = Checkpointer(out / "checkpoints", checkpoint_every,
                      {"lr": lr, "lr_find": found, "lr_rule": rule})
    learn.cbs.append(ck)
    with graceful_stop():
        learn.run_plan(plan, *start)
    if learn.interrupted:
        raise Interrupted(out, learn.interrupted, ck.last_path)
    # the last epoch's validation pass, or a new one (collective across processes)
    preds = learn.last_preds if learn.last_preds is not None else learn.get_preds()
    if not learn.dist.is_main:  # rank 0 writes the run
        return RunResult(out, dict(learn.history.rows[-1]) if learn.history.rows else {}, found)
    wall = time.perf_counter() - t0
    rows = learn.history.rows
    with open(out / "metrics.csv", "w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    plot_losses(learn.history.batch_losses, rows, len(learn.dls.train), out / "losses.png")
    last = rows[-1] if rows else {}
    metrics = {k: v for k, v in last.items() if k not in ("epoch", "seconds", "img_per_s")}
    metrics |= {"epochs": len(rows), "lr": lr, "train_seconds": learn.train_seconds,
                "wall_seconds": wall,
                "global_batch": data.bs * learn.accum * learn.dist.world_size,
                "processes": learn.dist.world_size,
                "train_img_per_s": learn.train_images / max(learn.train_seconds, 1e-9),
                "precision": learn.precision.name, "device": str(learn.device),
                "skipped_files": learn.dls.skipped(), "history": rows}
    if found is not None:
        metrics["lr_find"] = found
        metrics["lr_rule"] = rule  # the suggestion trained at (None: the rate was a number)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    save_model(learn.model, out / "model", {
        "arch": learn.arch, "head": learn.head_kind, "classes": list(learn.dls.classes),
        "size": data.size, "presize": data.presize, "resize_method": data.resize_method,
        "mean": learn.dls.valid.augment.mean.tolist(), "std": learn.dls.valid.augment.std.tolist(),
        "loss": "bce_multi_label" if learn.multi_label else "cross_entropy",
        "multi_label": learn.multi_label,
        "thresholds": [0.5] * len(learn.dls.classes) if learn.multi_label else None})
    interpret_run(learn, data, out, preds=preds)
    build_report(out)
    log.info("run written to %s", out)
    return RunResult(out, metrics, found)


def interpret_run(learn: Learner, data: DataConfig, out: Path, k: int = 9,
                  preds: tuple[torch.Tensor, torch.Tensor] | None = None) -> Interpretation:
    """Validation-split interpretation of a trained learner: interpretation.json (accuracy,
    per-class scores, most confused pairs), confusion_matrix.png and top_losses.png."""
    logits, y = preds if preds is not None else learn.get_preds()
    valid = learn.dls.valid
    paths = [valid.paths[i] for i in valid.index]  # every rank's shard, in order
    interp = Interpretation.from_logits(logits, y, learn.dls.classes, learn.multi_label, paths,
                                        skipped=learn.dls.skipped())
    save_json(interp.summary(), out / "interpretation.json")
    write_pictures(interp, out, data.presize, data.resize_method, valid.augment, k)
    return interp
