"""Checkpoints of a training run, graceful Ctrl-C / SIGTERM, and resume.

A checkpoint is two files under RUN_DIR/checkpoints/: `ckpt-E-B.safetensors` (model,
optimiser and RNG tensors) and `last.json` (where training stands: the TrainProgress
counters, the plan, the rate chosen, history, RNG states that are not tensors, the tensor
file's size and SHA-256). Both are
written to a temporary file, fsynced and renamed; `last.json` is written last and names the
tensor file, so a checkpoint cut short by a crash is never read: the previous one stays valid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from imageclf.core.clock import TrainProgress
from imageclf.core.diskspace import disk_full, is_disk_full
from imageclf.core.errors import DamagedFileError
from imageclf.core.fileio import atomic_write, file_sha256, write_text
from imageclf.core.records import Record
from imageclf.core.schema import doc
from imageclf.learn.callbacks import Callback
from imageclf.learn.lr_find import LRChoice

if TYPE_CHECKING:
    from imageclf.learn.learner import Learner

log = logging.getLogger(__name__)
FORMAT = 2  # 2: counters under "progress", the rate under "lr_choice"


@dataclass(frozen=True)
class CheckpointInfo(Record):
    """checkpoints/last.json: where training stands, and the tensor file that holds the
    rest (written last, so it only ever names a complete tensor file)."""

    format: int = doc("layout of this file (1: counters at the top level, read too)")
    tensors: str = doc("the tensor file beside it: model, optimiser moments, RNG tensors")
    size: int = doc("the tensor file's size in bytes")
    sha256: str = doc("the tensor file's SHA-256")
    progress: dict[str, Any] = doc("TrainProgress: epochs done, batch in epoch, images, "
                                   "seconds")
    time: float = doc("when it was written (Unix time)")
    world_size: int = doc("processes of the job that wrote it", 1)
    plan: list[dict[str, Any]] = doc("the recipe's phases (epochs, rates, frozen...)",
                                     default_factory=list)
    frozen: bool = doc("the body was frozen", False)
    optimizer: dict[str, Any] = doc("the optimiser's param groups and non-tensor state",
                                    default_factory=dict)
    rng: dict[str, Any] = doc("numpy's and Python's generator state (torch's is a tensor)",
                              default_factory=dict)
    history: dict[str, Any] = doc("History: epoch rows, per-batch losses and rates",
                                  default_factory=dict)
    cache: dict[str, str] = doc("the presize cache keys of both splits (and of the "
                                "negatives'): the same data",
                                default_factory=dict)
    lr_choice: dict[str, Any] | None = doc("LRChoice: the rate, its rule, the suggestions",
                                           None)


def _sha256(path: Path) -> str:
    return file_sha256(path, "checkpoint")


def _opt_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _load_opt(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict) -> None:
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for name, v in info["scalars"].items():
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    groups = info["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    # moments take their parameter's memory layout (channels_last conv weights): the fused
    # kernel walks tensors in memory order, so a contiguous moment beside a channels_last
    # weight would pair the wrong elements
    params = [p for g in opt.param_groups for p in g["params"]]
    for pid, st in state.items():
        p = params[pid]
        for k, v in st.items():
            if torch.is_tensor(v) and v.shape == p.shape:
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(learn: Learner, folder: Path, lr: LRChoice | None = None) -> Path:
    """Write a checkpoint of where `learn` stands now; return last.json's path."""
    folder.mkdir(parents=True, exist_ok=True)
    progress = learn.progress.to_dict()  # mid-epoch: the stretch still running counts
    epoch, batch = progress["epochs_done"], progress["batch_in_epoch"]
    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in learn.model.state_dict().items()}
    if learn.ema is not None:  # the moving average continues where it stood
        tensors |= {f"ema.{k}": v.cpu().contiguous() for k, v in learn.ema.state_dict().items()}
    opt_t, opt_info = _opt_tensors(learn.opt)
    tensors |= opt_t
    tensors["rng.torch"] = torch.get_rng_state()
    if learn.device.type == "cuda":  # dropout on the GPU draws from the device's generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state(learn.device)
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    name = f"ckpt-{epoch:04d}-{batch:06d}.safetensors"
    atomic_write(folder / name, lambda p: save_file(tensors, p))
    py_state = random.getstate()
    info = CheckpointInfo(
        FORMAT, name, (folder / name).stat().st_size, _sha256(folder / name), progress,
        time.time(), learn.dist.world_size, [dataclasses.asdict(p) for p in learn.plan],
        not all(p.requires_grad for p in learn.model.parameters()), opt_info,
        {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
         "python": [py_state[0], list(py_state[1]), py_state[2]]},
        learn.history.state(),
        learn.dls.cache_keys(),
        lr.to_dict() if lr is not None else None)
    write_text(folder / "last.json", json.dumps(info.to_json(), indent=1) + "\n")
    for old in folder.glob("ckpt-*.safetensors"):  # only the newest is kept
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder / "last.json"


def _upgrade(info: dict) -> dict:
    """A format-1 last.json (counters and rate at the top level) in today's layout."""
    if info.get("format", 1) >= 2:
        return info
    progress = {"epochs_done": info["epoch"], "batch_in_epoch": info["batch"],
                "train_images": info["train_images"], "train_seconds": info["train_seconds"],
                "epoch_images": info.get("epoch_images", 0),
                "epoch_seconds": info.get("epoch_seconds", 0.0)}
    lr = {"lr": info["lr"], "rule": info.get("lr_rule"), "suggestions": info.get("lr_find")}
    moved = ("epoch", "batch", "train_images", "train_seconds", "epoch_images",
             "epoch_seconds", "lr", "lr_rule", "lr_find", "mid_epoch")
    kept = {k: v for k, v in info.items() if k not in moved}
    return kept | {"format": 1, "progress": progress, "lr_choice": lr}


def checkpoint_position(info: CheckpointInfo | dict) -> tuple[int, int]:
    """(epochs done, batches done in the next epoch) of a checkpoint (or its parsed
    last.json)."""
    p = info.progress if isinstance(info, CheckpointInfo) else _upgrade(info)["progress"]
    return p["epochs_done"], p["batch_in_epoch"]


def read_checkpoint(folder: Path) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """(info, tensors) of the last complete checkpoint; a clear error when there is none."""
    last = folder / "last.json"
    if not last.exists():
        raise DamagedFileError(f"--resume: no checkpoint in {folder} (last.json is missing); "
                               "the run stopped before its first checkpoint")
    try:
        info = CheckpointInfo.from_json(_upgrade(json.loads(last.read_text())), str(last))
        tensor_file = folder / info.tensors
        TrainProgress.from_dict(info.progress)
    except (ValueError, KeyError, TypeError, DamagedFileError) as e:
        raise DamagedFileError(f"--resume: {last} is damaged ({type(e).__name__}: {e})") from e
    if Path(info.tensors).name != info.tensors or not tensor_file.exists():
        raise DamagedFileError(f"--resume: {last} names {info.tensors!r}, which is not in "
                               f"{folder}")
    if tensor_file.stat().st_size != info.size or _sha256(tensor_file) != info.sha256:
        raise DamagedFileError(f"--resume: {tensor_file} does not match its record in {last} "
                               "(size or SHA-256); the checkpoint is damaged")
    return info, load_file(tensor_file)


def restore(learn: Learner, info: CheckpointInfo, tensors: dict[str, torch.Tensor],
            restart_epoch: bool = False) -> None:
    """Put model, optimiser, RNGs, counters and history back as the checkpoint had them.
    `restart_epoch`: a mid-epoch checkpoint continues from its epoch's start, the record of
    that epoch's first batches dropped."""
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    learn.model.load_state_dict(model)
    ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    if learn.ema is not None:
        if not ema:
            raise DamagedFileError("this checkpoint has no moving average of the weights, "
                                   "but the run uses --ema")
        learn.ema.load_state_dict(ema)
    if info.frozen:
        learn.freeze()
    else:
        learn.unfreeze()
    _load_opt(learn.opt, tensors, info.optimizer)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and learn.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], learn.device)
    kind, pos, has_gauss, gauss = info.rng["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss,
                         gauss))
    v, state, g = info.rng["python"]
    random.setstate((v, tuple(state), g))
    learn.progress = TrainProgress.from_dict(info.progress)
    batch = learn.progress.batch_in_epoch
    history = dict(info.history)
    if restart_epoch and batch:  # the epoch's first steps are dropped: so is their count
        learn.progress.restart_epoch()
        history["batch_losses"] = history["batch_losses"][:-batch]
        history["batch_lrs"] = history["batch_lrs"][:-batch]
    learn.history.load_state(history, batch > 0 and not restart_epoch)


class Checkpointer(Callback):
    """Checkpoint at each epoch end and every `every_minutes` within an epoch; when a stop
    was requested (Ctrl-C, SIGTERM), checkpoint after the current step and stop."""

    order = 30  # after History has recorded the epoch

    def __init__(self, folder: Path, every_minutes: float = 0.0, lr: LRChoice | None = None
                 ) -> None:
        self.folder = folder
        self.every = every_minutes * 60
        self.lr = lr  # recorded in each checkpoint: a resumed run reports the same rate
        self.last_path: Path | None = None
        self._last = time.monotonic()

    def _save(self, learn: Learner) -> None:
        if learn.dist.is_main:  # one writer; every rank holds the same weights
            try:
                self.last_path = save_checkpoint(learn, self.folder, self.lr)
            except Exception as e:
                if not is_disk_full(e):
                    raise
                # atomic_write removed the half-written file; the previous one is whole
                kept = ("the last good checkpoint stays" if (self.folder / "last.json").exists()
                        else "no checkpoint was written yet")
                raise disk_full(e, self.folder, "a checkpoint",
                                f"{kept}; free room, then `imageclf train --resume "
                                f"{self.folder.parent}` continues") from e
        self._last = time.monotonic()

    def on_batch_end(self, learn: Learner) -> None:
        if not learn.stepped:  # in an accumulation group: its gradients are not saved
            return
        # several processes stop at the same step: a stop asked of any is a stop for all
        if learn.dist.any(STOP.requested):
            learn.interrupted = STOP.requested or "SIGTERM"
            learn.stop_training = True
            self._save(learn)
        elif self.every and time.monotonic() - self._last >= self.every:
            self._save(learn)

    def on_epoch_end(self, learn: Learner) -> None:
        self._save(learn)


class _Stop:
    requested: str | None = None


STOP = _Stop()


@contextlib.contextmanager
def graceful_stop() -> Iterator[_Stop]:
    """The first SIGINT/SIGTERM asks training to stop after the current step (and write a
    checkpoint); a second SIGINT stops at once."""
    STOP.requested = None

    def handler(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if STOP.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        STOP.requested = name
        log.warning("%s: stopping after the current step", name)

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in old:
            signal.signal(s, handler)
    except ValueError:  # not the main thread: no handlers, nothing to restore
        old = {}
    try:
        yield STOP
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        STOP.requested = None
