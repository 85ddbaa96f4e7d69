"""Evaluate a model/ folder on labelled images (and on unknown ones), and calibrate its
"none of these" rule."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imageclf.core.config import DataSource
from imageclf.core.errors import ConfigError, DataError
from imageclf.core.modelmeta import CalibrationInfo, ModelMeta
from imageclf.core.plots import plot_open_set
from imageclf.core.records import Skipped
from imageclf.data.items import Items
from imageclf.data.sources import list_images, resolve
from imageclf.model.classifier import linear_head
from imageclf.model.interpret import Interpretation, map_targets, write_pictures
from imageclf.model.predict import NONE_LABEL, Outputs, Predictor, to_probs
from imageclf.openset import rule as none_rule
from imageclf.openset import scores as openset
from imageclf.openset.calibrate import (
    Calibration,
    Known,
    candidates,
    choose,
    class_thresholds,
    labels_of,
    subsample_per_class,
)
from imageclf.openset.scores import OpenSetStats


@dataclass
class Seen:
    """Images run through a model: their outputs, which of them were read, what was not."""

    outputs: Outputs
    kept: list[int]  # indices (into the paths given) of the images that were read
    skipped: list[Skipped] = field(default_factory=list)


def run_images(predictor: Predictor, paths: Sequence[str | Path], *, bs: int = 32,
               tta: bool = False, features: bool = False, what: str = "images",
               each: Callable[[torch.Tensor | None, list[int], int], None] | None = None
               ) -> Seen:
    """Every readable image of `paths` through the model; unreadable ones are listed, and
    only when none is readable is it an error. `each(batch, its indices, images done)` is
    called after every chunk with the uint8 batch of its readable images (None: none)."""
    parts, kept, skipped = [], [], []
    offset = 0
    for chunk, x, errors in predictor.batches(paths, bs):
        if x is not None:
            parts.append(predictor.outputs(x, tta, features))
        read = []
        for j, (path, e) in enumerate(zip(chunk, errors, strict=True)):
            if e is None:
                read.append(offset + j)
            else:
                skipped.append(Skipped(path, e))
        kept += read
        offset += len(chunk)
        if each is not None:
            each(x, read, offset)
    if not kept:
        raise DataError(f"none of the {len(paths)} {what} could be read")
    return Seen(Outputs.cat(parts), kept, skipped)


def evaluate(predictor: Predictor, data: DataSource | str | Path, *, tta: bool = False,
             bs: int = 32, out_dir: str | Path | None = None, k: int = 9) -> Interpretation:
    """Run DATA's validation split (or all its labelled images) through the model; with
    `out_dir`, write confusion_matrix.png and top_losses.png there. Unreadable files are
    listed in `skipped`, never raised."""
    interp, _ = _evaluate(predictor, data, tta=tta, bs=bs)
    if out_dir is not None:
        write_pictures(interp, out_dir, predictor.presize, predictor.method, predictor.augment,
                       k)
    return interp


def _source(data: DataSource | str | Path, predictor: Predictor) -> DataSource:
    """The data source, read as the model reads labels (one or several per image)."""
    src = data if isinstance(data, DataSource) else DataSource(path=str(data))
    return dataclasses.replace(src, multi_label=predictor.multi_label)


def _evaluate(predictor: Predictor, data: DataSource | str | Path, *, tta: bool, bs: int,
              features: bool = False) -> tuple[Interpretation, Outputs]:
    src = _source(data, predictor)
    items = resolve(src, evaluate=True)
    targets = map_targets(items.labels, items.classes, predictor.classes, predictor.multi_label)
    seen = run_images(predictor, items.paths, bs=bs, tta=tta, features=features,
                      what=f"labelled images in {src.path}")
    interp = Interpretation.from_logits(
        seen.outputs.logits, targets[torch.tensor(seen.kept)], predictor.classes,
        predictor.multi_label, [items.paths[i] for i in seen.kept],
        predictor.rule.class_thresholds.tolist() if predictor.multi_label else None,
        seen.skipped)
    return interp, seen.outputs


# --- open set ----------------------------------------------------------------------------
def unknown_images(folder: str | Path) -> list[Path]:
    """Every image file under `folder` (labels, if any, are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--ood {folder} is not a folder")
    paths = list_images(folder)
    if not paths:
        raise ConfigError(f"--ood {folder}: no image files found")
    return paths


def held_out_negatives(meta: ModelMeta) -> tuple[list[Path], str, bool] | None:
    """(paths, where they come from, True) of the negatives a model trained with
    `--negatives` held out, split as training split them; None for a model trained without.
    A source that has gone is a clear error naming --ood."""
    from imageclf.data.negatives import file_sources, negative_set

    neg = meta.negatives
    files = file_sources(neg.sources) if neg is not None else ()
    if not files:  # none, or only synthetic ones: no held-out images to read
        return None
    gone = [s for s in files if not Path(s).exists()]
    if gone:
        raise ConfigError(f"the model was trained with --negatives {gone[0]}, which is no "
                          "longer there: give the unknowns with --ood DIR")
    found = negative_set(files, neg.valid_pct, neg.seed)
    return list(found.valid), "held-out negatives of " + ", ".join(files), True


def evaluate_open_set(predictor: Predictor, data: DataSource | str | Path, ood: str | Path,
                      *, keep: float = 0.95, tta: bool = False, bs: int = 32,
                      out_dir: str | Path | None = None) -> tuple[Interpretation, dict]:
    """The model on DATA's validation images (known) and on the images in `ood` (unknown):
    AUROC and FPR at `keep` of every score the model can compute, and for its own rule how
    many unknowns it accepted, as which class. With `out_dir`, evaluate's pictures and
    open_set.png there."""
    rule = predictor.rule
    interp, known_out = _evaluate(predictor, data, tta=tta, bs=bs,
                                  features=rule.needs_features)
    seen = run_images(predictor, unknown_images(ood), bs=bs, tta=tta,
                      features=rule.needs_features, what=f"images in --ood {ood}")
    names = list(_allowed(predictor)[:3])
    if rule.score is not None and rule.score not in names:
        names.append(rule.score)
    known = openset.score_outputs(names, known_out, rule.stats, rule.k)
    unknown = openset.score_outputs(names, seen.outputs, rule.stats, rule.k)
    figures = openset.compare(known, unknown, keep)
    score = rule.score or names[0]

    def decided(out: Outputs, scores: torch.Tensor) -> list[list[str]]:
        return rule.decide(to_probs(out.logits, predictor.multi_label), scores,
                           predictor.classes)

    unknown_labels = decided(seen.outputs, unknown[score])
    accepted = Counter(c for labels in unknown_labels for c in labels if c != NONE_LABEL)
    known_none = sum(ls == [NONE_LABEL] for ls in decided(known_out, known[score]))
    accepted_n = sum(ls != [NONE_LABEL] for ls in unknown_labels)
    report = {"ood": str(ood), "n_known": len(known[score]), "n_unknown": len(seen.kept),
              "keep": keep, "rule": rule.name, "score": score,
              "threshold": rule.threshold, "scores": figures,
              "unknown_accepted": accepted_n,
              "unknown_accepted_as": dict(accepted.most_common()),
              "known_answered_none": known_none,
              "none_figure": none_rule.none_sentence(
                  1.0 - accepted_n / len(unknown_labels), known_none / len(known[score]),
                  f"these {len(seen.kept)} unknowns"),
              "skipped_unknown": [s.to_json() for s in seen.skipped]}
    if out_dir is not None:  # evaluate's pictures, and the scores' histogram
        write_pictures(interp, out_dir, predictor.presize, predictor.method,
                       predictor.augment)
        plot_open_set(known[score], unknown[score], rule.threshold, score,
                      Path(out_dir) / "open_set.png")
    return interp, report


# --- calibration -------------------------------------------------------------------------
def calibrate(predictor: Predictor, data: DataSource | str | Path, keep: float = 0.95, *,
              score: str = "auto", ood: str | Path | None = None,
              bank_rows: int = openset.BANK_ROWS, k: int = openset.KNN_K, bs: int = 32
              ) -> Calibration:
    """Choose the "none of these" rule on DATA: the threshold on `score` that keeps `keep`
    of the validation images (multi-label: of those with a label; one without is none).
    DATA is split as training splits it (its valid/ folder or is_valid column, else the
    same 20% with seed 0): thresholds come from the validation part, knn's feature bank and
    mahalanobis's class means from the training part.

    `score="auto"`: with `ood` (a folder of images from no known class), the score with
    the best AUROC there; without, `openset.default_score`. Multi-label models also get
    per-class thresholds (each keeps `keep` of the validation images that have the class).
    """
    allowed = _check_calibration(predictor, keep, score, bank_rows, k)
    src = _source(data, predictor)
    items = resolve(src)
    train_idx, valid_idx = items.split_indices()
    if not valid_idx:
        raise DataError(f"{src.path} has no validation images to calibrate on")
    unknowns = (unknown_images(ood), str(ood), False) if ood is not None \
        else held_out_negatives(predictor.meta)
    neg = predictor.meta.negatives
    score, names = candidates(score, allowed, openset.default_score(
        predictor.multi_label, linear_head(predictor.model) is not None,
        neg.loss if neg is not None else None), unknowns is not None)
    needs_stats = any(c in openset.FEATURE_SCORES for c in names)
    stats = _training_stats(predictor, items, train_idx, bank_rows, bs) if needs_stats \
        else None
    known = _known_scores(predictor, items, valid_idx, names, stats, keep,
                          (k, bs, f"validation images in {src.path}"))
    unknown = None
    if unknowns is not None:
        unk = run_images(predictor, unknowns[0], bs=bs, features=needs_stats,
                         what=f"unknown images ({unknowns[1]})")
        unknown = openset.score_outputs(names, unk.outputs, stats, k)
    far = _far_scores(predictor, names, stats, k, bs) if names else None
    return choose(score, keep, known, unknown, k, stats,
                  (unknowns[1], unknowns[2]) if unknowns is not None else ("", False), far)


FAR_PER_FAMILY, FAR_SEED = 100, 7  # calibrate's drawn images of no kind


def _far_scores(predictor: Predictor, names: list[str], stats: OpenSetStats | None, k: int,
                bs: int) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Each candidate score of FAR_PER_FAMILY images of every held-out synthetic family
    (drawn shapes, textures, line drawings: no training run draws them), and the
    families."""
    from imageclf.data.synthetic import HELD_OUT

    drawn = _far_images()
    seen = run_images(predictor, [p for f in HELD_OUT for p in drawn[f]], bs=bs,
                      features=stats is not None, what="drawn images of no kind")
    return openset.score_outputs(names, seen.outputs, stats, k), HELD_OUT


def _far_images() -> dict[str, list[Path]]:
    """The held-out families' images, drawn once into the cache folder (the same files
    for every calibration: a fixed seed)."""
    import shutil
    import tempfile

    from imageclf.data.cache import default_cache_dir
    from imageclf.data.synthetic import HELD_OUT, write_held_out

    root = default_cache_dir() / f"far-v1-seed{FAR_SEED}-n{FAR_PER_FAMILY}-jpg"
    if not (root / "complete").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".far-", dir=root.parent))
        write_held_out(tmp, FAR_PER_FAMILY, FAR_SEED, suffix="jpg")
        (tmp / "complete").touch()
        try:
            tmp.rename(root)
        except OSError:  # another process drew them first: theirs are the same
            shutil.rmtree(tmp, ignore_errors=True)
    return {f: sorted((root / f).glob("*.jpg")) for f in HELD_OUT}


def _check_calibration(predictor: Predictor, keep: float, score: str, bank_rows: int,
                       k: int) -> tuple[str, ...]:
    """The scores this model can compute; a setting out of range is a clear error."""
    if not 0 < keep < 1:
        raise ConfigError(f"--keep must be between 0 and 1 (exclusive); got {keep}")
    allowed = _allowed(predictor)
    if score != "auto" and score not in allowed:
        kind = "multi-label" if predictor.multi_label else "softmax"
        why = (" (vim, ash, scale and msp+vim read a softmax model's linear head: train "
               "with --head timm)" if score in openset.HEAD_SCORES + ("msp+vim",) else "")
        raise ConfigError(f"--score {score!r}: a {kind} model takes auto, "
                          f"{', '.join(allowed)}{why}")
    if bank_rows < 1 or k < 1:
        raise ConfigError(f"--bank-rows and --k must be at least 1; got {bank_rows}, {k}")
    return allowed


def _known_scores(predictor: Predictor, items: Items, valid_idx: list[int],
                  names: list[str], stats: OpenSetStats | None, keep: float,
                  how: tuple[int, int, str]
                  ) -> Known:
    """(each candidate score of the known validation images, how many, multi-label
    per-class thresholds); `how`: (knn's k, the batch size, what they are, in words)."""
    k, bs, what = how
    targets = map_targets(items.labels, items.classes, predictor.classes, predictor.multi_label)
    valid = run_images(predictor, [items.paths[i] for i in valid_idx], bs=bs,
                       features=stats is not None, what=what)
    if stats is not None:  # the fused score is standardised on the known images
        stats.fit_fusion(valid.outputs.logits, valid.outputs.features, predictor.multi_label)
    valid_targets = targets[torch.tensor([valid_idx[i] for i in valid.kept])]
    thresholds = (class_thresholds(valid.outputs.logits.sigmoid(), valid_targets, keep)
                  if predictor.multi_label else None)
    known = openset.score_outputs(names, valid.outputs, stats, k)
    labelled = valid_targets.sum(1) > 0 if predictor.multi_label else None
    if labelled is not None and labelled.any():  # an image with no label is none, not known
        known = {name: v[labelled] for name, v in known.items()}
        return known, int(labelled.sum()), thresholds
    return known, len(valid.kept), thresholds


def _training_stats(predictor: Predictor, items: Items, train_idx: list[int], bank_rows: int,
                    bs: int) -> OpenSetStats:
    """knn's bank and mahalanobis's class means and precision from at most `bank_rows`
    training images, an equal share per class (the cost of calibrating stays bounded on a
    large data set)."""
    if not train_idx:
        raise DataError("the data has no training images: knn and mahalanobis need them")
    train_idx = subsample_per_class(train_idx, [items.labels[i] for i in train_idx], bank_rows)
    train = run_images(predictor, [items.paths[i] for i in train_idx], bs=bs, features=True,
                       what="training images")
    labels = labels_of([items.labels[train_idx[i]] for i in train.kept])
    # labels in the model's order; -1 (an image with no class) indexes the last entry
    model_index = {c: i for i, c in enumerate(predictor.classes)}
    remap = torch.tensor([model_index.get(c, -1) for c in items.classes] + [-1])
    return OpenSetStats.fit(train.outputs.features, remap[labels], len(predictor.classes),
                            bank_rows, linear_head(predictor.model))


def _allowed(predictor: Predictor) -> tuple[str, ...]:
    """The open-set scores this model can compute."""
    return openset.scores_for(predictor.multi_label, linear_head(predictor.model) is not None)


def write_calibration(folder: str | Path, chosen: Calibration) -> Path:
    """Store what calibrate chose in folder/model.json (atomically), the training
    statistics of knn / mahalanobis in folder/open_set.safetensors, and with --ood figures
    the histogram in folder/open_set.png."""
    folder = Path(folder)
    meta = ModelMeta.read(folder)
    stats_path, png = folder / openset.STATS_FILE, folder / "open_set.png"
    open_set = None
    if chosen.score is not None:
        file = None
        if chosen.stats is not None and chosen.score in openset.FEATURE_SCORES:
            chosen.stats.save(stats_path)  # before model.json names it
            file = openset.STATS_FILE
        open_set = chosen.rule(file)
    if chosen.histogram is not None:
        plot_open_set(*chosen.histogram, chosen.threshold, chosen.score, png,
                      f"calibrated: {chosen.score}, keeps {chosen.keep:.0%} of known")
    changes: dict = {"open_set": open_set, "min_confidence": None,
                     "calibration": CalibrationInfo(chosen.keep, chosen.n, chosen.score
                                                    or none_rule.MULTI_LABEL_THRESHOLDS)}
    if chosen.thresholds is not None:
        changes["thresholds"] = tuple(chosen.thresholds)
    written = dataclasses.replace(meta, **changes).write(folder)
    if open_set is None or open_set.file is None:  # what the new model.json no longer uses
        stats_path.unlink(missing_ok=True)
    if chosen.histogram is None:
        png.unlink(missing_ok=True)
    return written
