"""Choosing the "none of these" rule from scores: the threshold that keeps a share of the
known images, the score with the best AUROC on unknown ones, multi-label per-class
thresholds. Pure functions of score tensors; running images through a model to get them is
jobs/evaluate.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from imageclf.core.modelmeta import FarFigures, OodFigures, OpenSetRule
from imageclf.openset import scores as openset
from imageclf.openset.scores import OpenSetStats


@dataclass
class Calibration:
    """What `calibrate` chose: the open-set score and threshold (None: per-class thresholds
    only), multi-label per-class thresholds, the figures on --ood, the training statistics
    the chosen score needs."""

    score: str | None
    threshold: float | None
    keep: float
    n: int
    thresholds: list[float] | None = None
    k: int = openset.KNN_K
    ood: dict | None = None
    stats: OpenSetStats | None = None
    histogram: tuple[torch.Tensor, torch.Tensor] | None = None  # known, unknown scores
    far: dict | None = None  # FarFigures' fields: every candidate's figures far-OOD

    def rule(self, file: str | None = None) -> OpenSetRule:
        """What model.json stores of it (`file`: where the training statistics went)."""
        knn = self.score == "knn"
        return OpenSetRule(self.score, self.threshold, self.keep, self.n, self.k,
                           int(self.stats.bank.shape[0]) if knn and self.stats else None,
                           file, OodFigures(**self.ood) if self.ood is not None else None,
                           FarFigures(**self.far) if self.far is not None else None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of `calibrate --json`: the rule, and multi-label per-class thresholds."""
        out = self.rule().to_json() if self.score is not None else {
            "score": None, "threshold": None, "keep": self.keep, "n": self.n}
        if self.thresholds is not None:
            out["thresholds"] = self.thresholds
        return out


def subsample_per_class(idx: list[int], labels: Sequence[Sequence[int]], rows: int,
                        seed: int = 0) -> list[int]:
    """At most `rows` of `idx`, an equal share per (first) label, drawn with a fixed seed;
    a class smaller than its share keeps all its images. In the original order."""
    pick = openset.per_class_sample(labels_of(labels), rows, seed)
    return [idx[i] for i in pick.tolist()]


def labels_of(items_labels: Sequence[Sequence[int]]) -> torch.Tensor:
    return torch.tensor([labs[0] if labs else -1 for labs in items_labels])


def class_thresholds(probs: torch.Tensor, targets: torch.Tensor, keep: float) -> list[float]:
    """Multi-label: per class, the sigmoid threshold that keeps `keep` of the validation
    images that have it (0.5 for a class none has)."""
    out = []
    for c in range(probs.shape[1]):
        pos = probs[targets[:, c] > 0.5, c]
        out.append(openset.threshold_for(pos, keep) if len(pos) else 0.5)
    return out


def candidates(score: str, allowed: Sequence[str], default: str | None,
               has_unknowns: bool) -> tuple[str | None, list[str]]:
    """(the score asked for, the scores to compute): `auto` with unknowns to measure on
    tries every allowed score; without, it is the documented default."""
    if score == "auto" and not has_unknowns:
        score = default
    return score, list(allowed) if score == "auto" else ([score] if score else [])


Known = tuple[dict[str, torch.Tensor], int, "list[float] | None"]  # scores, n, thresholds


def choose(score: str | None, keep: float, known: Known,
           unknown: dict[str, torch.Tensor] | None, k: int, stats: OpenSetStats | None,
           where: tuple[str, bool] = ("", False),
           far: tuple[dict[str, torch.Tensor], tuple[str, ...]] | None = None) -> Calibration:
    """The rule: `score` (auto: the best AUROC on `unknown` among the scores that hold far,
    `openset.best_on_both`) below the threshold that keeps `keep` of the known images; with
    unknowns, every candidate's figures on them. `known`: (each candidate's scores of the
    known images, how many, multi-label per-class thresholds); `where`: (where the unknowns
    come from, whether they are held-out negatives); `far`: (each candidate's scores of
    drawn images of no kind, their families)."""
    known, n, thresholds = known
    figures = hist = None
    far_figures = openset.compare(known, far[0], keep) if far is not None else None
    if unknown is not None:
        figures = openset.compare(known, unknown, keep)
        if score == "auto":
            score = openset.best_on_both(figures, far_figures) if far_figures \
                else openset.best(figures)
        hist = (known[score], unknown[score]) if score else None
    if not score:
        return Calibration(None, None, keep, n, thresholds)
    ood = {"folder": where[0], "n": len(hist[1]), "scores": figures,
           "negatives": where[1]} if figures is not None else None
    far_meta = {"families": far[1], "n": len(next(iter(far[0].values()))),
                "scores": far_figures} if far_figures else None
    return Calibration(score, openset.threshold_for(known[score], keep), keep, n, thresholds,
                       k, ood, stats.only(score) if stats is not None else None, hist,
                       far_meta)
