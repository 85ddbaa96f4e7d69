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
from imageclf.config import ConfigError, DataConfig, TrainConfig, save_json, to_dict
from imageclf.data.loader import DataLoaders
from imageclf.export import save_model
from imageclf.learner import Learner, LRFindResult, resolve_precision, set_seed
from imageclf.models import check_arch, create_model
from imageclf.plots import plot_losses, plot_lr_find

log = logging.getLogger(__name__)


def default_run_dir() -> Path:
    """runs/<timestamp>."""
    return Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def prepare_out(out: str | Path | None) -> Path:
    """Create the run directory, failing early with a clear message if it is not writable."""
    path = Path(out) if out else default_run_dir()
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
    lr_find: LRFindResult | None


def build_learner(data: DataConfig, train: TrainConfig, device: str | torch.device = "cpu",
                  cbs: Sequence[Callback] = ()) -> Learner:
    """Data loaders, model and learner for a run (no training)."""
    check_arch(train.arch)
    resolve_precision(train.precision, torch.device(device))  # bad settings fail before work
    dls = DataLoaders.from_config(data, device=device)
    set_seed(train.seed)
    model = create_model(train.arch, len(dls.classes), train.pretrained, train.head)
    return Learner(dls, model, wd=train.wd, precision=train.precision,
                   label_smoothing=train.label_smoothing, cbs=cbs, device=device)


def run_lr_find(learn: Learner, out: Path | None = None) -> LRFindResult:
    """lr_find, and its plot when `out` is given."""
    res = learn.lr_find()
    if out is not None:
        plot_lr_find(res.lrs, res.losses, res.suggestions, out / "lr_find.png")
    return res


def train_run(data: DataConfig, train: TrainConfig, device: str | torch.device = "cpu",
              cbs: Sequence[Callback] = ()) -> RunResult:
    """Train as configured (fine_tune when pretrained, fit_one_cycle from scratch) and write
    config.json, metrics.csv, metrics.json, lr_find.png, losses.png and model/."""
    out = prepare_out(train.out)
    learn = build_learner(data, train, device, cbs)
    save_json({"data": to_dict(data), "train": to_dict(train)}, out / "config.json")
    t0 = time.perf_counter()
    found = None
    if train.lr == "auto":
        found = run_lr_find(learn, out)
        lr = found.suggestions["valley"]
        log.info("lr_find suggests %.2e (valley)", lr)
    else:
        lr = float(train.lr)
    if train.pretrained != "none":
        learn.fine_tune(train.epochs, lr, freeze_epochs=train.freeze_epochs)
    else:
        learn.fit_one_cycle(train.epochs, lr)
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
                "train_img_per_s": learn.train_images / max(learn.train_seconds, 1e-9),
                "precision": learn.precision.name, "device": str(learn.device),
                "skipped_files": learn.dls.skipped(), "history": rows}
    if found is not None:
        metrics["lr_find"] = found.suggestions
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    save_model(learn.model, out / "model", {
        "arch": train.arch, "head": train.head, "classes": list(learn.dls.classes),
        "size": data.size, "presize": data.presize, "resize_method": data.resize_method,
        "mean": learn.dls.valid.augment.mean.tolist(), "std": learn.dls.valid.augment.std.tolist(),
        "loss": "bce_multi_label" if learn.multi_label else "cross_entropy",
        "multi_label": learn.multi_label,
        "thresholds": [0.5] * len(learn.dls.classes) if learn.multi_label else None})
    log.info("run written to %s", out)
    return RunResult(out, metrics, found)
