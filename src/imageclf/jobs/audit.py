"""`imageclf audit DATA -o AUDIT`: find the images of a labelled data set that need a person's
look: likely wrong labels, duplicates (within a split, and training images copied into the
validation split), and strays that look like no class. Writes AUDIT/issues.csv (and
.parquet), AUDIT/summary.json; `imageclf review AUDIT` shows them, and the decisions go to
AUDIT/fixes.csv, which `--fixes` applies (data/fixes.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imageclf.core.commands import AuditSettings
from imageclf.core.config import DataConfig, TrainConfig
from imageclf.core.errors import ConfigError
from imageclf.core.modelmeta import ModelMeta
from imageclf.core.records import Skipped
from imageclf.data.audit_files import KINDS, AuditSummary, Issue, write_audit
from imageclf.data.duplicates import (
    DIM,
    descriptors,
    find_duplicates,
    pixel_hashes,
    unlike_the_rest,
)
from imageclf.data.fixes import key_root, keys_of
from imageclf.data.items import Items
from imageclf.data.sources import resolve
from imageclf.jobs.evaluate import run_images
from imageclf.model.label_issues import find_label_issues, fold_of, linear_probs
from imageclf.model.predict import Predictor, to_probs

if TYPE_CHECKING:
    from imageclf.learn.callbacks import Callback

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int | None], None]  # (step, done, total)


@dataclass
class Scan:
    """Every image through a model once: outputs and what duplicates are found from."""

    logits: np.ndarray  # (N, C) float32; rows of unreadable images are zero
    features: np.ndarray  # (N, F) float32
    hashes: list[str]
    desc: np.ndarray  # (N, DIM) float32
    ok: np.ndarray  # (N,) bool: the image was read
    skipped: list[Skipped]


def scan(predictor: Predictor, refs: Sequence[Any], bs: int = 64,
         progress: Progress | None = None, step: str = "scan") -> Scan:
    """Every image of `refs` through `predictor` (validation decode, presize and resize),
    with its pooled features, pixel hash and duplicate descriptor; unreadable images are
    listed, never raised."""
    n = len(refs)
    desc = np.zeros((n, DIM), np.float32)
    hashes = [""] * n

    def each(x: torch.Tensor | None, idx: list[int], done: int) -> None:
        if x is not None:
            desc[idx] = descriptors(x)
            for i, h in zip(idx, pixel_hashes(x), strict=True):
                hashes[i] = h
        if progress:
            progress(step, done, n)

    seen = run_images(predictor, [str(r) for r in refs], bs=bs, features=True, each=each)
    ok = np.zeros(n, bool)
    ok[seen.kept] = True
    logits = np.zeros((n, len(predictor.classes)), np.float32)
    logits[seen.kept] = seen.outputs.raw.numpy()
    feats = np.zeros((n, seen.outputs.features.shape[1]), np.float32)
    feats[seen.kept] = seen.outputs.features.numpy()
    return Scan(logits, feats, hashes, desc, ok, seen.skipped)


def fingerprint(keys: Sequence[str]) -> str:
    """sha256 of the sorted image keys: the same data set (whatever its labels) gives the
    same value."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


# --- where the features and probabilities come from -------------------------------------
def _body_folder(train: TrainConfig, data: DataConfig, items: Items, tmp: Path) -> Path:
    """A model/ folder around a pretrained body (its head untrained: only the features are
    read)."""
    from imageclf.data.augment import IMAGENET_MEAN, IMAGENET_STD
    from imageclf.model.classifier import create_model
    from imageclf.model.export import save_model

    head = train.model.built_head
    model = create_model(train.model.arch, len(items.classes), train.model.pretrained, head)
    meta = ModelMeta(arch=train.model.arch, head=head, classes=items.classes,
                     size=data.size, presize=data.presize, resize_method=data.resize_method,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     loss="bce_multi_label" if items.multi_label else "cross_entropy",
                     multi_label=items.multi_label)
    return save_model(model, tmp / "body", meta)


def _train(data: DataConfig, train: TrainConfig, items: Items, out: Path,
           cbs: Sequence[Callback], device: str | torch.device) -> Path:
    """Train as `train` would on `items` (its split as given) into `out`; its model/."""
    from imageclf.run.runs import RunContext, train_run

    cfg = train.replace(out=str(out), tensorboard=False)
    train_run(data, cfg, RunContext(device, list(cbs), items=items), overwrite=True)
    return out / "model"


def _predictor(folder: Path | str, train: TrainConfig, device: str | torch.device
               ) -> Predictor:
    return Predictor(folder, device=device, precision=train.optim.precision)


# --- the audit ---------------------------------------------------------------------------
@dataclass
class AuditResult:
    """An audit's summary and its rows, worst first within each kind."""

    summary: AuditSummary
    issues: list[Issue]
    out: Path


def audit(data: DataConfig, train: TrainConfig, settings: AuditSettings, out: str | Path, *,
          device: str | torch.device = "cpu", cbs: Sequence[Callback] = (),
          progress: Progress | None = None) -> AuditResult:
    """Audit the labelled images of `data.source` (its --fixes applied) into `out`."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = resolve(data.source, data.seed)
    root = key_root(data.source.path)
    keys = keys_of(items, root)
    ml, n_classes = items.multi_label, len(items.classes)
    labels = np.array([lab[0] if lab else -1 for lab in items.labels], np.int64)
    with tempfile.TemporaryDirectory(prefix="audit-", dir=out) as tmp_dir:
        tmp = Path(tmp_dir)
        if settings.folds >= 2:
            if ml:
                raise ConfigError("--folds: a multi-label data set is audited with one model "
                                  "(--folds 0)")
            sc, probs = _by_folds(data, train, settings, items, labels, tmp, device, cbs,
                                  progress)
            how = f"{settings.folds} models, each trained on the other folds"
        else:
            if settings.model is not None:
                folder, how = Path(settings.model), f"the body of {settings.model}"
            elif train.model.pretrained != "none":
                folder = _body_folder(train, data, items, tmp)
                how = f"{train.model.arch} with {train.model.pretrained} weights"
            else:
                folder = _train(data, train, items, tmp / "run", cbs, device)
                how = (f"{train.model.arch} trained on the given labels for "
                       f"{train.schedule.epochs} epoch(s)")
            pred = _predictor(folder, train, device)
            if settings.model is not None and list(pred.classes) != list(items.classes) \
                    and not ml:
                log.info("%s predicts other classes than the data set's; only its features "
                         "are used", settings.model)
            sc = scan(pred, items.paths, data.bs, progress)
            probs = None
            if not ml:
                probs = np.zeros((len(items), n_classes))
                ok = sc.ok
                probs[ok] = linear_probs(sc.features[ok], labels[ok], n_classes,
                                         seed=data.seed)
            how = f"a cross-validated linear head on the features of {how}"
    if progress:
        progress("issues", 0, None)
    issues = _label_rows(items, keys, labels, probs, sc.ok) if probs is not None else []
    pairs = find_duplicates(sc.desc[sc.ok], [h for h, o in zip(sc.hashes, sc.ok, strict=True)
                                             if o], settings.near)
    kept = np.nonzero(sc.ok)[0]
    dup_rows, exact = _duplicate_rows(items, keys, kept, pairs)
    issues += dup_rows
    strays = np.zeros(len(items))
    strays[sc.ok] = unlike_the_rest(sc.desc[sc.ok])
    issues += _stray_rows(items, keys, strays, sc.ok, settings.stray_share)
    counts = {k: sum(1 for r in issues if r.kind == k) for k in KINDS}
    summary = AuditSummary(
        data=str(Path(data.source.path).absolute()), fixes=data.source.fixes,
        images=len(items), classes=items.classes, multi_label=ml, features=how,
        folds=settings.folds, counts=counts, exact_duplicates=exact,
        unreadable=sc.skipped, seconds=round(time.perf_counter() - t0, 1),
        created=datetime.now().astimezone().isoformat(timespec="seconds"),
        data_fingerprint=fingerprint(keys), settings=settings.to_json())
    write_audit(out, summary, issues)
    return AuditResult(summary, issues, out)


def _by_folds(data: DataConfig, train: TrainConfig, settings: AuditSettings, items: Items,
              labels: np.ndarray, tmp: Path, device: str | torch.device,
              cbs: Sequence[Callback], progress: Progress | None
              ) -> tuple[Scan, np.ndarray]:
    """K models, each trained on K-1 folds of every labelled image (train and valid alike)
    and judging the fold it did not see."""
    k_folds = settings.folds
    fold = fold_of(labels, k_folds, data.seed)
    if data.cache_dir is None:  # each fold's split is its own cache: gone with the audit
        data = dataclasses.replace(data, cache_dir=str(tmp / "cache"))
    n = len(items)
    parts: list[tuple[np.ndarray, Scan]] = []
    for k in range(k_folds):
        split = dataclasses.replace(items, is_valid=tuple(bool(f == k) for f in fold))
        folder = _train(data, train, split, tmp / f"fold-{k}", cbs, device)
        held = np.nonzero(fold == k)[0]
        pred = _predictor(folder, train, device)
        parts.append((held, scan(pred, [items.paths[i] for i in held], data.bs, progress,
                                 f"fold {k + 1}/{k_folds}")))
    first = parts[0][1]
    whole = Scan(np.zeros((n, first.logits.shape[1]), np.float32),
                 np.zeros((n, first.features.shape[1]), np.float32), [""] * n,
                 np.zeros((n, first.desc.shape[1]), np.float32), np.zeros(n, bool), [])
    for held, s in parts:
        whole.logits[held], whole.features[held] = s.logits, s.features
        whole.desc[held], whole.ok[held] = s.desc, s.ok
        for i, h in zip(held, s.hashes, strict=True):
            whole.hashes[i] = h
        whole.skipped += s.skipped
    probs = to_probs(torch.from_numpy(whole.logits), False).double().numpy()
    probs[~whole.ok] = 0.0
    return whole, probs


def _given(items: Items, i: int) -> str:
    return " ".join(items.classes[c] for c in items.labels[i])


def _split(items: Items, i: int) -> str:
    return "valid" if items.is_valid[i] else "train"


def _label_rows(items: Items, keys: list[str], labels: np.ndarray, probs: np.ndarray,
                ok: np.ndarray) -> list[Issue]:
    kept = np.nonzero(ok)[0]
    ranked, quality = find_label_issues(labels[kept], probs[kept])
    rows = []
    for r in ranked.tolist():
        i = int(kept[r])
        p = probs[i].copy()
        p[labels[i]] = -1.0  # the suggestion is another class
        s = int(p.argmax())
        rows.append(Issue(keys[i], "label", round(1.0 - float(quality[r]), 4),
                          _given(items, i), items.classes[s], "", _split(items, i),
                          f"p({items.classes[labels[i]]}) = {probs[i, labels[i]]:.2f}, "
                          f"p({items.classes[s]}) = {probs[i, s]:.2f}"))
    return rows


def _duplicate_rows(items: Items, keys: list[str], kept: np.ndarray, pairs: list
                    ) -> tuple[list[Issue], int]:
    """One row per flagged copy: across splits the training image (the one to leave out),
    within a split the later one; each image's most similar partner."""
    best: dict[tuple[int, str], Issue] = {}
    exact = 0
    for p in pairs:
        a, b = int(kept[p.a]), int(kept[p.b])
        exact += p.exact
        if items.is_valid[a] != items.is_valid[b]:
            flagged, other = (b, a) if items.is_valid[a] else (a, b)
            kind = "leak"
        else:
            flagged, other, kind = b, a, "duplicate"
        how = "the same pixels" if p.exact else (
            f"similarity {p.similarity:.3f}" + (", mirrored" if p.mirrored else ""))
        row = Issue(keys[flagged], kind, round(p.similarity, 4), _given(items, flagged), "",
                    keys[other], _split(items, flagged),
                    how + (f"; labelled {_given(items, other)} there"
                           if items.labels[other] != items.labels[flagged] else ""))
        old = best.get((flagged, kind))
        if old is None or row.score > old.score:
            best[(flagged, kind)] = row
    rows = sorted(best.values(), key=lambda r: (KINDS.index(r.kind), -r.score, r.image))
    return rows, exact


def _stray_rows(items: Items, keys: list[str], scores: np.ndarray, ok: np.ndarray,
                share: float) -> list[Issue]:
    """The `share` of readable images least like the rest of the set (`unlike_the_rest`)."""
    kept = np.nonzero(ok)[0]
    n = math.ceil(share * len(kept)) if share > 0 else 0
    median = float(np.median(scores[kept]))
    rows = []
    for r in np.argsort(-scores[kept], kind="stable")[:n].tolist():
        i = int(kept[r])
        rows.append(Issue(keys[i], "stray", round(float(scores[i]), 4), _given(items, i),
                          "", "", _split(items, i),
                          f"{scores[i] / max(median, 1e-12):.1f}x the median distance from "
                          "the set's colours and layout"))
    return rows
