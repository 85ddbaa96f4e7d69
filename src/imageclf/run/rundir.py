"""The run directory: claiming `--out`, the files a run holds, reading and writing them."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageclf import __version__
from imageclf.core.config import DataConfig, TrainConfig, read_settings
from imageclf.core.errors import ConfigError, DamagedFileError
from imageclf.core.fileio import write_json
from imageclf.core.records import Record, Skipped
from imageclf.core.schema import doc

if TYPE_CHECKING:

    pass

CLAIM = "run.json"  # created exclusively before any work: the directory belongs to one run
# what a run writes into its directory: finding one of them there means a run is there
RUN_FILES = (CLAIM, "config.json", "checkpoints", "model", "metrics.json")


@dataclass(frozen=True)
class RunClaim(Record):
    """run.json: the claim on a run directory, created exclusively before any work."""

    started: str = doc("when the run started (ISO 8601, local time with offset)")
    host: str = doc("the machine's name")
    pid: int = doc("the process id of rank 0")
    imageclf: str = doc("the imageclf version")


@dataclass(frozen=True)
class Watched(Record):
    """The metric a run's summary watches (`--metric`) over its epochs."""

    name: str = doc("its name in the epoch rows (valid_accuracy, macro_f1, valid_loss, ...)")
    last: float | None = doc("its value at the last epoch")
    best: float | None = doc("its best value (lowest for losses)", None)
    best_epoch: int | None = doc("the epoch of the best value", None)


@dataclass(frozen=True)
class RunMetrics(Record):
    """metrics.json: a finished run's results. `final` is stored flat at the top of the
    object (train_loss, valid_loss, valid_accuracy, ... as the last epoch's row has
    them)."""

    inline = "final"
    final: dict[str, float] = doc("the last epoch's losses and metrics, at the top level")
    epochs: int = doc("epochs trained")
    lr: float = doc("the rate trained at (the head's, when fine-tuning)")
    train_seconds: float = doc("time in the training steps", 0.0)
    wall_seconds: float = doc("the run's time end to end (this resumption's, if resumed)",
                              0.0)
    global_batch: int = doc("images per optimiser step: bs x accumulation x processes", 0)
    processes: int = doc("training processes", 1)
    train_img_per_s: float = doc("training images per second, the job's", 0.0)
    precision: str = doc("the precision trained in: bf16, fp16 or fp32", "")
    device: str = doc("the training device of rank 0", "")
    skipped_files: list[Skipped] = doc("unreadable files, left out", default_factory=list)
    history: list[dict[str, float]] = doc("a row per epoch, as metrics.csv",
                                          default_factory=list)
    metric: Watched | None = doc("the watched metric (runs before --metric: none)", None)
    class_counts: dict[str, dict[str, int]] = doc("images per class, for train and valid",
                                                  default_factory=dict)
    lr_find: dict[str, float] | None = doc("lr_find's four suggestions, when it ran", None)
    lr_rule: str | None = doc("the suggestion trained at (none: the rate was a number)", None)
    cache: dict[str, str] = doc("each split's presize cache form (raw or jpeg) and why "
                                "(--cache)", default_factory=dict)
    fixes: dict[str, Any] | None = doc("what --fixes changed: file, relabelled, excluded, "
                                       "kept, missing (images it names that are not in the "
                                       "data set)", None)

    @property
    def accuracy(self) -> float | None:
        """Valid accuracy, or the multi-label accuracy per decision."""
        return self.final.get("valid_accuracy", self.final.get("accuracy_multi"))

    @property
    def watched(self) -> Watched:
        """The watched metric; valid accuracy for a run that recorded none."""
        if self.metric is not None:
            return self.metric
        name = "accuracy_multi" if "accuracy_multi" in self.final else "valid_accuracy"
        return Watched(name, self.accuracy)


def default_run_dir() -> Path:
    """runs/<timestamp>."""
    return Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def run_files(path: Path) -> list[str]:
    """The names of RUN_FILES that `path` holds."""
    return [n for n in RUN_FILES if (path / n).exists()]


def _refuse(path: Path, found: list[str]) -> ConfigError:
    return ConfigError(f"--out {path} already holds a run ({', '.join(found)}); nothing was "
                       f"changed. Continue it with `imageclf train --resume {path}`, or give "
                       "another --out")


def claim(out: str | Path | None, overwrite: bool = False) -> Path:
    """Create the run directory and claim it for this run, before any work: the claim file
    is created exclusively, so of two runs started at once into the same --out only one
    gets it, and the other stops with the same message as for a finished run. Fails early
    and clearly if the folder is not writable, or already holds a run (unless `overwrite`:
    a run restarted in its own directory). Without `out`: runs/<timestamp>, -2, -3... when a
    run started in the same second."""
    if out is None:
        base, n = default_run_dir(), 1
        while True:
            path = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                return _claim(path, False)
            except ConfigError:
                if not run_files(path):  # not taken: unwritable
                    raise
                n += 1
    return _claim(Path(out), overwrite)


def release(path: Path) -> None:
    """Give back a claim whose run stopped before any work (bad settings found once the data
    was read): the claim file goes, and the folder too when nothing else is in it, so the
    same --out can be used again."""
    (path / CLAIM).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.rmdir()  # only when empty


def _claim(path: Path, overwrite: bool) -> Path:
    found = [] if overwrite else run_files(path)
    if found:
        raise _refuse(path, found)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / CLAIM, flags, 0o666)
    except FileExistsError:  # another run claimed it after the check above
        raise _refuse(path, run_files(path) or [CLAIM]) from None
    except OSError as e:
        raise ConfigError(f"--out {path} is not writable ({e.strerror}); choose another "
                          "folder") from e
    claim = RunClaim(dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                     socket.gethostname(), os.getpid(), __version__)
    with os.fdopen(fd, "w") as f:
        json.dump(claim.to_json(), f, indent=2)
        f.write("\n")
    return path


# --- settings -------------------------------------------------------------------------
def write_config(out: Path, data: DataConfig, train: TrainConfig) -> None:
    """config.json: every setting needed to rerun (and to resume)."""
    write_json(out / "config.json", {"data": data.to_json(), "train": train.to_json()},
               sort_keys=True)


def read_config(run: Path) -> tuple[DataConfig, TrainConfig]:
    """The settings in RUN/config.json."""
    try:
        return read_settings(json.loads((run / "config.json").read_text()),
                             str(run / "config.json"))
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as e:
        raise DamagedFileError(f"{run / 'config.json'}: cannot be read as a run's settings "
                               f"({type(e).__name__}: {e})") from e


def checkpoint_view(out: Path) -> str | None:
    """What this machine holds at `out`: a finished run, a checkpoint (where), or nothing."""
    if (out / "metrics.json").exists():
        return "a finished run"
    try:
        info = json.loads((out / "checkpoints" / "last.json").read_text())
        from imageclf.learn.checkpoint import checkpoint_position

        return "epoch {}, batch {}".format(*checkpoint_position(info))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return "an unreadable one"


def read_metrics(run: Path) -> RunMetrics:
    """RUN/metrics.json of a finished run."""
    try:
        return RunMetrics.from_json(json.loads((run / "metrics.json").read_text()),
                                    str(run / "metrics.json"))
    except (OSError, ValueError) as e:
        raise DamagedFileError(f"{run / 'metrics.json'} is damaged ({e})") from e


