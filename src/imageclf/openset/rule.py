"""The "none of these" rule a model folder stores, and the sentence a person reads about it.

`NoneRule` decides, for one model, when the answer is `none`: an open-set score of
`openset` below its calibrated threshold, or (multi-label) no class passing its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from imageclf.core.errors import ConfigError, DamagedFileError
from imageclf.core.modelmeta import KNN_K
from imageclf.openset.scores import FEATURE_SCORES, STATS_FILE, OpenSetStats, score_outputs

if TYPE_CHECKING:
    from imageclf.core.modelmeta import ModelMeta


MULTI_LABEL_THRESHOLDS = "multi_label_thresholds"  # the rule's name without a score
NONE_LABEL = "none"


@dataclass
class NoneRule:
    """"None of these" for one model, the one place it is decided: below `threshold` on
    `score`, the answer is none; a multi-label model also answers none when no class
    reaches its own threshold (`class_thresholds`). Without a score, a softmax model
    always picks a class."""

    score: str | None = None
    threshold: float | None = None
    multi_label: bool = False
    class_thresholds: torch.Tensor | None = None  # (C,) multi-label decision thresholds
    k: int = KNN_K
    stats: OpenSetStats | None = None

    @classmethod
    def of_model(cls, meta: ModelMeta, folder: Path, min_confidence: float | None = None
                 ) -> NoneRule:
        """The rule a model folder stores: calibrate's `open_set` (statistics from
        STATS_FILE), else an older model's `min_confidence` (msp); `min_confidence` given
        here replaces either with msp at that threshold (0: no score)."""
        th = meta.thresholds or [0.5] * meta.n_classes
        base = cls(multi_label=meta.multi_label, class_thresholds=torch.tensor(th))
        if min_confidence is not None:
            if not 0 <= min_confidence <= 1:
                raise ConfigError(f"--min-confidence must be between 0 and 1; got "
                                  f"{min_confidence}")
            return dataclasses.replace(base, score="msp", threshold=min_confidence) \
                if min_confidence > 0 else base
        if meta.open_set is not None:
            o = meta.open_set
            stats = _load_stats(o.score, o.file or STATS_FILE, folder)
            return dataclasses.replace(base, score=o.score, threshold=o.threshold, k=o.k,
                                       stats=stats)
        if meta.min_confidence:
            return dataclasses.replace(base, score="msp", threshold=meta.min_confidence)
        return base

    @property
    def name(self) -> str | None:
        """How "none" is decided: the score's name, multi_label_thresholds, or None (the
        model always answers a class)."""
        if self.score is not None:
            return self.score
        return MULTI_LABEL_THRESHOLDS if self.multi_label else None

    @property
    def needs_features(self) -> bool:
        return self.score in FEATURE_SCORES

    def scores(self, out: Any) -> torch.Tensor | None:
        """The rule's score per image of a batch's outputs (None without a score)."""
        if self.score is None:
            return None
        return score_outputs([self.score], out, self.stats, self.k)[self.score]

    def decide(self, probs: torch.Tensor, scores: torch.Tensor | None,
               classes: Sequence[str]) -> list[list[str]]:
        """Labels per image: `none` when its score is below the threshold; otherwise the
        top class, or (multi-label) every class passing its threshold, `none` if none
        does."""
        out = []
        for j, p in enumerate(probs):
            if self.score is not None and scores is not None \
                    and float(scores[j]) < self.threshold:
                out.append([NONE_LABEL])
            elif self.multi_label:
                hit = torch.nonzero(p >= self.class_thresholds).flatten()
                out.append([classes[i] for i in hit] or [NONE_LABEL])
            else:
                out.append([classes[int(p.argmax())]])
        return out

    def shown(self, p: torch.Tensor, score: float | None) -> tuple[float, float] | None:
        """(score, threshold) a person is shown for one image: the open-set score against
        its threshold, or (multi-label without one) the class that comes closest to passing
        its threshold, its probability against that threshold. None when the model always
        answers a class."""
        if self.score is not None and score is not None:
            return float(score), self.threshold
        if self.multi_label:
            i = int((p - self.class_thresholds).argmax())
            return float(p[i]), float(self.class_thresholds[i])
        return None


def _load_stats(score: str, file: str, folder: Path) -> OpenSetStats | None:
    """The training statistics a feature score reads from the model folder."""
    if score not in FEATURE_SCORES:
        return None
    path = folder / file
    if not path.resolve().is_relative_to(folder.resolve()):
        raise DamagedFileError(f"{folder / 'model.json'}: open_set file must be inside "
                               f"{folder}")
    if not path.exists():
        raise DamagedFileError(f"{path} is missing: model.json's open_set score {score} "
                               "needs it; run `imageclf calibrate` again")
    return OpenSetStats.load(path)


# --- the figure a person reads -----------------------------------------------------------
def none_sentence(unknown_none: float, known_none: float, what: str) -> str:
    """"Of images like <what>, N% are answered none, while M% of known images are."."""
    return (f"Of images like {what}, {unknown_none:.0%} are answered none, while "
            f"{known_none:.0%} of known images are.")


def calibrated_sentence(open_set: dict | None) -> str | None:
    """`none_sentence` of a model.json's `open_set` as calibrate measured it on its unknowns
    (--ood, or the held-out negatives), then the share of drawn images of no kind (its far
    figures) answered none; None when it has neither."""
    open_set = open_set or {}
    ood, far, score = open_set.get("ood"), open_set.get("far"), open_set.get("score")
    parts = []
    if ood and score in ood.get("scores", {}):
        parts.append(none_sentence(
            1.0 - ood["scores"][score]["fpr"], 1.0 - float(open_set.get("keep") or 0.0),
            f"the {ood['n']} unknowns it was calibrated on ({ood['folder']})"))
    if far and score in far.get("scores", {}):
        parts.append(f"Of {far['n']} drawn images of no kind ({', '.join(far['families'])}), "
                     f"{1.0 - far['scores'][score]['fpr']:.0%} are answered none.")
    return " ".join(parts) or None
