"""Evaluate a model/ folder on labelled images, and calibrate its "none of these" rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from imageclf.data.sources import find_eval_items
from imageclf.errors import ConfigError, DataError
from imageclf.interpret import Interpretation, map_targets, write_pictures
from imageclf.meta import ModelMeta
from imageclf.predict import Predictor


def evaluate(predictor: Predictor, data: str | Path, *, csv: str | None = None,
             label_regex: str | None = None, tta: bool = False, bs: int = 32,
             out_dir: str | Path | None = None, k: int = 9) -> Interpretation:
    """Run DATA's validation split (or all its labelled images) through the model; with
    `out_dir`, write confusion_matrix.png and top_losses.png there. Unreadable files are
    listed in `skipped`, never raised."""
    items = find_eval_items(data, csv_file=csv, label_regex=label_regex,
                            multi_label=predictor.multi_label)
    targets = map_targets(items.labels, items.classes, predictor.classes, predictor.multi_label)
    logits, keep, skipped = [], [], []
    offset = 0
    for chunk, x, errors in predictor.batches(items.paths, bs):
        if x is not None:
            logits.append(predictor.logits(x, tta))
        for j, (path, e) in enumerate(zip(chunk, errors, strict=True)):
            if e is None:
                keep.append(offset + j)
            else:
                skipped.append({"path": path, "reason": e})
        offset += len(chunk)
    if not keep:
        raise DataError(f"none of the {len(items)} labelled images in {data} could be read")
    out = torch.cat(logits)
    interp = Interpretation.from_logits(
        out, targets[torch.tensor(keep)], predictor.classes, predictor.multi_label,
        [items.paths[i] for i in keep],
        predictor.thresholds.tolist() if predictor.multi_label else None, skipped)
    if out_dir is not None:
        write_pictures(interp, out_dir, predictor.presize, predictor.method, predictor.augment,
                       k)
    return interp


def calibrate(predictor: Predictor, data: str | Path, keep: float = 0.95, **kw) -> dict:
    """Pick the "none of these" thresholds that keep `keep` of the in-distribution images:
    softmax models get `min_confidence` (the (1-keep) quantile of the top probability of the
    validation images); multi-label models get per-class `thresholds` (the (1-keep) quantile
    of each class's probability over the images that have it; 0.5 for a class with no
    validation image). Returns what it chose; `write_calibration` stores it."""
    if not 0 < keep < 1:
        raise ConfigError(f"--keep must be between 0 and 1 (exclusive); got {keep}")
    interp = evaluate(predictor, data, **kw)
    q = 1.0 - keep
    if predictor.multi_label:
        th = []
        for c in range(len(predictor.classes)):
            pos = interp.probs[interp.targets[:, c] > 0.5, c]
            th.append(float(torch.quantile(pos, q)) if len(pos) else 0.5)
        return {"thresholds": th, "keep": keep, "n": interp.n, "rule": "multi_label_thresholds"}
    top = interp.probs.max(1).values
    return {"min_confidence": float(torch.quantile(top, q)), "keep": keep, "n": interp.n,
            "rule": "min_confidence"}


def write_calibration(folder: str | Path, chosen: dict) -> Path:
    """Store calibrated thresholds in folder/model.json (atomically)."""
    meta = ModelMeta.read(folder)
    changes: dict = {"calibration": {k: v for k, v in chosen.items()
                                     if k not in ("thresholds", "min_confidence")}}
    if "thresholds" in chosen:
        changes["thresholds"] = tuple(chosen["thresholds"])
    if "min_confidence" in chosen:
        changes["min_confidence"] = chosen["min_confidence"]
    return dataclasses.replace(meta, **changes).write(folder)
