"""Finishing a run: the room its files need, checked before training, and the files written
after it (metrics, plots, model/, interpretation, report.html). The run directory's format
is rundir.py."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from imageclf.core.fileio import write_json
from imageclf.learn.lr_find import LRChoice
from imageclf.run.rundir import RunMetrics, Watched

if TYPE_CHECKING:
    import torch

    from imageclf.learn.learner import Learner
    from imageclf.learn.lr_find import LRFindResult
    from imageclf.model.interpret import Interpretation


# --- outputs --------------------------------------------------------------------------
def write_lr_find(out: Path, res: LRFindResult) -> None:
    """lr_find.json (the curve and suggestions) and lr_find.png."""
    from imageclf.core.plots import plot_lr_find

    write_json(out / "lr_find.json", res.to_json(), sort_keys=True)
    plot_lr_find(res.lrs, res.losses, res.suggestions, out / "lr_find.png")


REPORT_BYTES = 16 * 2**20  # plots, report.html, metrics, interpretation: generous


def required_bytes(learn: Learner, resumed: bool = False) -> int:
    """Disk a run directory needs, computed before training: two checkpoints (a new one is
    whole before the old one goes; one when resuming, the old one is already there), each
    the weights, their moving average and the optimiser's state; then model/ and the report.
    The optimiser's state is counted from its kind (Adam: 2 tensors a parameter, SGD: 1,
    Lookahead: one more)."""
    ckpt = checkpoint_bytes(learn)
    return ckpt * (1 if resumed else 2) + learn_weights(learn) + REPORT_BYTES


def learn_weights(learn: Learner) -> int:
    """Bytes of the model's weights as saved (model/model.safetensors)."""
    return sum(t.numel() * t.element_size() for t in learn.model.state_dict().values())


def checkpoint_bytes(learn: Learner) -> int:
    """Bytes of one checkpoint: weights, their moving average, the optimiser's state."""
    weights = learn_weights(learn)
    params = sum(p.numel() * 4 for p in learn.model.parameters())
    name = type(learn.opt).__name__.lower() + " " + type(
        getattr(learn.opt, "optimizer", learn.opt)).__name__.lower()
    per = 2 if "adam" in name or "lamb" in name else 1
    per += "lookahead" in name
    return weights * (2 if learn.ema is not None else 1) + params * per


def write_results(learn: Learner, out: Path, lr: LRChoice, wall: float,
                  preds: tuple[torch.Tensor, torch.Tensor], metric: str | None = None
                  ) -> RunMetrics:
    """A trained run's files: metrics.csv, losses.png, metrics.json, model/, the validation
    interpretation and report.html. Returns the metrics."""
    from imageclf.core.plots import plot_losses
    from imageclf.model.export import export_learner
    from imageclf.model.metrics import check_metric, watch
    from imageclf.run.report import build_report

    rows = learn.history.rows
    with open(out / "metrics.csv", "w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    plot_losses(learn.history.batch_losses, rows, len(learn.dls.train), out / "losses.png")
    last = rows[-1] if rows else {}
    p = learn.progress
    watched = watch(rows, check_metric(metric, learn.multi_label, len(learn.dls.classes)))
    metrics = RunMetrics(
        {k: v for k, v in last.items() if k not in ("epoch", "seconds", "img_per_s")},
        len(rows), lr.lr, p.train_seconds, wall,
        learn.dls.cfg.bs * learn.accum * learn.dist.world_size, learn.dist.world_size,
        p.img_per_s, learn.precision.name, str(learn.device), learn.dls.skipped(), rows,
        Watched(**watched), learn.dls.items.counts(), lr.suggestions,
        lr.rule if lr.suggestions is not None else None, learn.dls.cache_forms(),
        dataclasses.asdict(fixed) if (fixed := learn.dls.items.fixed_by) else None)
    write_json(out / "metrics.json", metrics.to_json())
    export_learner(learn, out / "model")
    interpret_run(learn, out, preds=preds)
    build_report(out)
    return metrics


def interpret_run(learn: Learner, out: Path, k: int = 9,
                  preds: tuple[torch.Tensor, torch.Tensor] | None = None) -> Interpretation:
    """Validation-split interpretation of a trained learner: interpretation.json (accuracy,
    per-class scores, most confused pairs), confusion_matrix.png and top_losses.png."""
    from imageclf.model.interpret import write_pictures

    valid, cfg = learn.dls.valid, learn.dls.cfg
    interp = learn.interpret(preds)
    write_json(out / "interpretation.json", interp.summary(), sort_keys=True)
    write_pictures(interp, out, cfg.presize, cfg.resize_method, valid.augment, k)
    return interp
