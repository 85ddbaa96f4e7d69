"""Metrics on a whole validation pass, plain torch.

Single-label: accuracy, error rate, per-class precision / recall / F1 / support, macro-F1,
balanced accuracy (mean recall over the classes present), top-5 accuracy. Multi-label:
accuracy per (image, class) decision, average precision per class and its mean (mAP), F1
at the stored thresholds, exact-match ratio.
"""

from __future__ import annotations

import torch

from imageclf.core.errors import ConfigError


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Share of images whose top class is the true one."""
    return float((logits.argmax(1) == target).float().mean())


def error_rate(logits: torch.Tensor, target: torch.Tensor) -> float:
    """1 - accuracy."""
    return 1.0 - accuracy(logits, target)


def top_k_accuracy(logits: torch.Tensor, target: torch.Tensor, k: int = 5) -> float:
    """Share of images whose true class is among the k highest scores."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == target[:, None]).any(1).float().mean())


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) int64 counts: row = actual class, column = predicted class."""
    return torch.bincount(target.long() * n + pred.long(), minlength=n * n).view(n, n)


def prf(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Precision, recall and F1 per class from true/false positive and false negative
    counts (0 where undefined)."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    precision = tp / (tp + fp).clamp_min(1)
    recall = tp / (tp + fn).clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return precision, recall, f1


def from_confusion(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class precision, recall, F1 and support of a confusion matrix."""
    tp = cm.diagonal()
    p, r, f = prf(tp, cm.sum(0) - tp, cm.sum(1) - tp)
    return {"precision": p, "recall": r, "f1": f, "support": cm.sum(1)}


def macro_f1(cm: torch.Tensor) -> float:
    """Mean F1 over the classes that occur (as truth or as prediction)."""
    s = from_confusion(cm)
    present = (s["support"] + cm.sum(0)) > 0
    return float(s["f1"][present].mean()) if present.any() else 0.0


def balanced_accuracy(cm: torch.Tensor) -> float:
    """Mean recall over the classes that have validation images."""
    s = from_confusion(cm)
    present = s["support"] > 0
    return float(s["recall"][present].mean()) if present.any() else 0.0


def accuracy_multi(logits: torch.Tensor, target: torch.Tensor,
                   thresholds: float | torch.Tensor = 0.5) -> float:
    """Share of (image, class) decisions right when each sigmoid is cut at its threshold."""
    pred = torch.sigmoid(logits.float()) >= torch.as_tensor(thresholds)
    return float((pred == target.bool()).float().mean())


def average_precision(scores: torch.Tensor, target: torch.Tensor) -> float:
    """Average precision of one class: the mean, over its positive images, of the precision
    among the images scored at least as high (ties counted together). NaN without
    positives."""
    pos = target.bool()
    n_pos = int(pos.sum())
    if n_pos == 0:
        return float("nan")
    s = scores.double()
    # for each positive: positives and images at or above its score
    above = (s[None, :] >= s[pos][:, None])
    hits = (above & pos[None, :]).sum(1).double()
    return float((hits / above.sum(1).double()).mean())


def per_class_ap(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(C,) average precision per class (NaN for a class with no positive)."""
    return torch.tensor([average_precision(logits[:, c], target[:, c])
                         for c in range(logits.shape[1])], dtype=torch.float64)


def mean_average_precision(logits: torch.Tensor, target: torch.Tensor) -> float:
    """mAP: the mean AP over classes with at least one positive."""
    ap = per_class_ap(logits, target)
    ap = ap[~ap.isnan()]
    return float(ap.mean()) if len(ap) else float("nan")


def exact_match(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Share of images whose whole set of labels is right."""
    return float((pred == target.bool()).all(1).float().mean())


def multi_label_prf(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class precision, recall, F1 and support of multi-hot decisions."""
    t = target.bool()
    tp, fp, fn = (pred & t).sum(0), (pred & ~t).sum(0), (~pred & t).sum(0)
    p, r, f = prf(tp, fp, fn)
    return {"precision": p, "recall": r, "f1": f, "support": t.sum(0)}


def compute(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> dict[str, float]:
    """The metrics reported per epoch."""
    if multi_label:
        return {"accuracy_multi": accuracy_multi(logits, target),
                "mAP": mean_average_precision(logits, target)}
    n = logits.shape[1]
    cm = confusion_matrix(logits.argmax(1), target, n)
    acc = accuracy(logits, target)
    out = {"accuracy": acc, "error_rate": 1.0 - acc, "macro_f1": macro_f1(cm),
           "balanced_accuracy": balanced_accuracy(cm)}
    if n > 5:
        out["top5_accuracy"] = top_k_accuracy(logits, target, 5)
    return out


def names(multi_label: bool, n_classes: int) -> tuple[str, ...]:
    """The per-epoch metric names of a model, as they appear in a run's metrics
    (accuracy as valid_accuracy)."""
    if multi_label:
        return ("valid_loss", "accuracy_multi", "mAP")
    out = ("valid_loss", "valid_accuracy", "error_rate", "macro_f1", "balanced_accuracy")
    return out + (("top5_accuracy",) if n_classes > 5 else ())


LOWER_IS_BETTER = ("valid_loss", "error_rate")


def check_metric(name: str | None, multi_label: bool, n_classes: int) -> str:
    """The metric a run watches (`--metric`): the name, or the default (valid accuracy,
    accuracy_multi for multi-label). A name this kind of model does not report is an
    error listing those it does."""
    known = names(multi_label, n_classes)
    if name is None:
        return "accuracy_multi" if multi_label else "valid_accuracy"
    alias = {"accuracy": "valid_accuracy", "loss": "valid_loss"}.get(name, name)
    if alias not in known:
        raise ConfigError(f"--metric {name!r}: this run reports {', '.join(known)}")
    return alias


def watch(rows: list[dict], name: str) -> dict:
    """The watched metric over a run's epochs: its last and best value, and the best
    epoch."""
    vals = [(r["epoch"], r[name]) for r in rows if name in r]
    if not vals:
        return {"name": name, "last": None, "best": None, "best_epoch": None}
    pick = min if name in LOWER_IS_BETTER else max
    epoch, best = pick(vals, key=lambda v: v[1])
    return {"name": name, "last": vals[-1][1], "best": best, "best_epoch": epoch}


REJECTION_KEEP = 0.95  # the known share a training run's rejection figure keeps


def rejection(known: torch.Tensor, negatives: torch.Tensor, multi_label: bool,
              keep: float = REJECTION_KEEP) -> dict[str, float]:
    """How well the plain confidence (msp, sigmoid_max for multi-label) tells the held-out
    negatives from the known validation images, from their logits: `negatives_auroc`, and
    `negatives_none`, the share of negatives below the threshold that keeps `keep` of the
    known images (what `calibrate` would answer `none` for with that score)."""
    from imageclf.openset import scores as openset

    score = openset.sigmoid_max if multi_label else openset.msp
    k, n = score(known), score(negatives)
    return {"negatives_auroc": openset.auroc(k, n),
            "negatives_none": 1.0 - openset.fpr_at(k, n, keep)}
