"""What the model gets wrong: confusion matrix, most confused pairs, per-class scores, top
losses. Works on (probabilities, targets) from any source: a learner or a Predictor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from imageclf.core.errors import ConfigError, DataError
from imageclf.core.records import Record, Skipped
from imageclf.core.schema import doc
from imageclf.model import metrics as M


def most_confused(cm: torch.Tensor, classes: Sequence[str], min_count: int = 1
                  ) -> list[tuple[str, str, int]]:
    """(actual, predicted, count) off-diagonal pairs, most frequent first."""
    off = cm.clone()
    off.fill_diagonal_(0)
    pairs = [(classes[i], classes[j], int(off[i, j])) for i, j in torch.nonzero(off >= min_count)]
    return sorted(pairs, key=lambda t: (-t[2], t[0], t[1]))


def per_class(classes: Sequence[str], scores: dict[str, torch.Tensor],
              ap: torch.Tensor | None = None) -> list[dict]:
    """Precision, recall, F1 and support (and AP, multi-label) of each class."""
    rows = [{"class": c, "precision": float(scores["precision"][i]),
             "recall": float(scores["recall"][i]), "f1": float(scores["f1"][i]),
             "support": int(scores["support"][i])} for i, c in enumerate(classes)]
    if ap is not None:
        for r, v in zip(rows, ap.tolist(), strict=True):
            r["ap"] = None if v != v else v  # NaN (no positive) → null in JSON
    return rows


def sample_losses(logits: torch.Tensor, target: torch.Tensor, multi_label: bool
                  ) -> torch.Tensor:
    """Loss of each image (cross-entropy, or BCE summed over classes)."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float(),
                                                  reduction="none").sum(1)
    return F.cross_entropy(logits.float(), target.long(), reduction="none")


@dataclass
class Interpretation:
    """Scores of a model on labelled images, and what it confuses."""

    classes: list[str]
    multi_label: bool
    probs: torch.Tensor  # (N, C)
    targets: torch.Tensor  # (N,) or (N, C) multi-hot
    losses: torch.Tensor  # (N,)
    paths: list[str]
    thresholds: torch.Tensor | None = None
    skipped: list[Skipped] = field(default_factory=list)

    @classmethod
    def from_logits(cls, logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str],
                    multi_label: bool, paths: Sequence[str | Path],
                    thresholds: Sequence[float] | None = None,
                    skipped: Sequence[Skipped] = ()) -> Interpretation:
        probs = logits.float().sigmoid() if multi_label else logits.float().softmax(1)
        th = torch.tensor(list(thresholds)) if thresholds is not None else (
            torch.full((len(classes),), 0.5) if multi_label else None)
        return cls(list(classes), multi_label, probs, targets,
                   sample_losses(logits, targets, multi_label), [str(p) for p in paths], th,
                   list(skipped))

    @property
    def n(self) -> int:
        return len(self.paths)

    def predicted(self) -> torch.Tensor:
        """Top class per image (single-label) or the multi-hot decision (multi-label)."""
        if self.multi_label:
            return (self.probs >= self.thresholds).long()
        return self.probs.argmax(1)

    def confusion_matrix(self) -> torch.Tensor:
        if self.multi_label:
            raise ConfigError("a confusion matrix needs a single-label model")
        return M.confusion_matrix(self.predicted(), self.targets, len(self.classes))

    def accuracy(self) -> float:
        """Top-1 accuracy, or the share of right (image, class) decisions for multi-label."""
        if self.multi_label:
            return float((self.predicted() == self.targets.long()).float().mean())
        return float((self.predicted() == self.targets).float().mean())

    def per_class(self) -> list[dict]:
        if self.multi_label:
            return per_class(self.classes, M.multi_label_prf(self.predicted().bool(),
                                                             self.targets),
                             M.per_class_ap(self.probs, self.targets))
        return per_class(self.classes, M.from_confusion(self.confusion_matrix()))

    def scores(self) -> dict[str, float]:
        """The whole-set metrics: macro-F1, balanced accuracy and top-5 accuracy (more than
        5 classes); multi-label: mAP, macro-F1 at the thresholds, exact-match ratio."""
        if not self.n:
            return {}
        if self.multi_label:
            pred = self.predicted().bool()
            f1 = M.multi_label_prf(pred, self.targets)["f1"]
            return {"mAP": M.mean_average_precision(self.probs, self.targets),
                    "macro_f1": float(f1.mean()), "exact_match": M.exact_match(pred,
                                                                               self.targets)}
        cm = self.confusion_matrix()
        out = {"macro_f1": M.macro_f1(cm), "balanced_accuracy": M.balanced_accuracy(cm)}
        if len(self.classes) > 5:
            out["top5_accuracy"] = M.top_k_accuracy(self.probs, self.targets, 5)
        return out

    def plot_confusion_matrix(self, path: str | Path | None = None):
        """The confusion matrix as a Figure (saved when given a path)."""
        from imageclf.core.plots import plot_confusion_matrix

        return plot_confusion_matrix(self.confusion_matrix(), self.classes, path)

    def most_confused(self, min_count: int = 1) -> list[tuple[str, str, int]]:
        if self.multi_label:
            return []
        return most_confused(self.confusion_matrix(), self.classes, min_count)

    def top_losses(self, k: int = 9) -> list[int]:
        """Indices of the k images with the highest loss."""
        k = min(k, self.n)
        return self.losses.topk(k).indices.tolist() if k else []

    def title(self, i: int) -> str:
        """predicted / actual / loss / probability of the prediction."""
        if self.multi_label:
            pred = [self.classes[j] for j in torch.nonzero(self.predicted()[i]).flatten()]
            act = [self.classes[j] for j in torch.nonzero(self.targets[i]).flatten()]
            return (f"{';'.join(pred) or 'none'}/{';'.join(act) or 'none'}\n"
                    f"{float(self.losses[i]):.2f}")
        p = int(self.probs[i].argmax())
        return (f"{self.classes[p]}/{self.classes[int(self.targets[i])]}\n"
                f"{float(self.losses[i]):.2f} / {float(self.probs[i, p]):.2f}")

    def record(self) -> InterpretationRecord:
        """What interpretation.json (and `evaluate --json`) hold."""
        return InterpretationRecord(
            self.scores(), self.n, self.accuracy(),
            float(self.losses.mean()) if self.n else float("nan"), self.multi_label,
            list(self.classes), self.per_class(),
            [Confused(a, p, c) for a, p, c in self.most_confused()], list(self.skipped),
            None if self.multi_label else self.confusion_matrix().tolist())

    def summary(self) -> dict:
        """The JSON of `imageclf evaluate` and interpretation.json."""
        return self.record().to_json()


@dataclass(frozen=True)
class Confused(Record):
    """A pair of classes the model mixes up."""

    actual: str = doc("the true class")
    predicted: str = doc("what the model answered")
    count: int = doc("images")


@dataclass(frozen=True)
class InterpretationRecord(Record):
    """interpretation.json: the validation split's interpretation. `scores` is stored flat
    at the top of the object (macro_f1, balanced_accuracy, top5_accuracy; multi-label: mAP,
    macro_f1, exact_match)."""

    inline = "scores"
    scores: dict[str, float] = doc("the whole-set metrics, at the top level")
    n: int = doc("images evaluated")
    accuracy: float = doc("top-1 accuracy (multi-label: right decisions per image and class)")
    loss: float = doc("mean loss")
    multi_label: bool = doc("independent sigmoids")
    classes: list[str] = doc("the model's classes, in output order")
    per_class: list[dict[str, float]] = doc("per class: precision, recall, f1, support (ap)")
    most_confused: list[Confused] = doc("the pairs most often mixed up, most first")
    skipped_files: list[Skipped] = doc("unreadable files, left out")
    confusion_matrix: list[list[int]] | None = doc("rows actual, columns predicted "
                                                   "(single-label)", None)

    def to_json(self) -> dict:
        out = super().to_json()
        if out["confusion_matrix"] is None:
            del out["confusion_matrix"]
        return out


def map_targets(labels: Sequence[Sequence[int]], data_classes: Sequence[str],
                model_classes: Sequence[str], multi_label: bool) -> torch.Tensor:
    """Targets in the model's class order; a label the model does not know is an error."""
    index = {c: i for i, c in enumerate(model_classes)}
    unknown = sorted({data_classes[j] for labs in labels for j in labs} - set(index))
    if unknown:
        raise DataError(f"the data has classes the model was not trained on: {unknown[:10]}; "
                          f"the model knows {list(model_classes)[:20]}")
    if multi_label:
        t = torch.zeros(len(labels), len(model_classes))
        for i, labs in enumerate(labels):
            for j in labs:
                t[i, index[data_classes[j]]] = 1.0
        return t
    return torch.tensor([index[data_classes[labs[0]]] for labs in labels], dtype=torch.long)


def centre_views(paths: Sequence[str | Path], presize: int, method: str, augment) -> torch.Tensor:
    """The images exactly as validation shows them to the model, as float RGB in [0, 1]."""
    from imageclf.data.images import load_centre_square

    x = torch.stack([torch.from_numpy(load_centre_square(p, presize, method)) for p in paths])
    return augment.denormalize(augment(x, train=False))


def write_pictures(interp: Interpretation, out_dir: str | Path, presize: int, method: str,
                   augment, k: int = 9) -> dict[str, Path]:
    """confusion_matrix.png (single-label) and top_losses.png into out_dir."""
    from imageclf.core.plots import image_grid, plot_confusion_matrix

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    if not interp.multi_label and interp.n:
        written["confusion_matrix"] = out_dir / "confusion_matrix.png"
        plot_confusion_matrix(interp.confusion_matrix(), interp.classes,
                              written["confusion_matrix"])
    idx = interp.top_losses(k)
    if idx:
        views = centre_views([interp.paths[i] for i in idx], presize, method, augment)
        written["top_losses"] = out_dir / "top_losses.png"
        image_grid(views, [interp.title(i) for i in idx], written["top_losses"])
    return written
