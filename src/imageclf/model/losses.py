"""Losses: PyTorch's fused cross-entropy (label smoothing, class weights) and
BCE-with-logits (multi-label, pos_weight), and the class weights for imbalanced data."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from imageclf.core.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                  label_smoothing: float = 0.0,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean negative log-likelihood of the true class under softmax (log_softmax + nll
    fused); with `weight`, each image counts by its class's weight (PyTorch's weighted
    mean)."""
    if weight is not None:
        weight = weight.to(logits.device)
    return F.cross_entropy(logits.float(), target, weight=weight,
                           label_smoothing=label_smoothing)


def bce_multi_label(logits: torch.Tensor, target: torch.Tensor,
                    pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Independent sigmoid per class: an image may belong to several classes or to none.
    `pos_weight` scales each class's positive term."""
    if pos_weight is not None:
        pos_weight = pos_weight.to(logits.device)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(),
                                              pos_weight=pos_weight)


def make_loss(multi_label: bool, label_smoothing: float = 0.0,
              weight: torch.Tensor | None = None) -> LossFn:
    """The loss for single-label (cross-entropy) or multi-label (BCE) training; `weight`:
    per-class weights (softmax) or pos_weight (multi-label)."""
    if multi_label:
        return partial(bce_multi_label, pos_weight=weight) if weight is not None \
            else bce_multi_label
    return partial(cross_entropy, label_smoothing=label_smoothing, weight=weight)


def inverse_frequency(targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Softmax: weight ∝ 1 / images of the class, normalised so the mean weight over the
    classes is 1 (a class with no training image gets the mean, 1). Multi-label (targets
    (N, C)): pos_weight = negatives / positives per class (1 for a class never present)."""
    if targets.dim() == 2:
        pos = targets.float().sum(0)
        neg = len(targets) - pos
        return torch.where(pos > 0, neg / pos.clamp_min(1), torch.ones_like(pos))
    counts = torch.bincount(targets.long(), minlength=n_classes).float()
    inv = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
    present = counts > 0
    inv = inv / inv[present].mean()
    return torch.where(present, inv, torch.ones_like(inv))


def class_weights(spec: str, targets: torch.Tensor | Callable[[], torch.Tensor],
                  classes: Sequence[str]) -> torch.Tensor | None:
    """`--class-weights`: none → None; auto → `inverse_frequency` of the training targets
    (`targets`, or a function that gives them: called only here); a .json file mapping
    every class name to a positive number → those weights."""
    if spec == "none":
        return None
    if spec == "auto":
        return inverse_frequency(targets() if callable(targets) else targets, len(classes))
    path = Path(spec)
    try:
        given = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"--class-weights {path}: cannot read ({e.strerror})") from e
    except ValueError as e:
        raise ConfigError(f"--class-weights {path}: not valid JSON ({e})") from e
    if not isinstance(given, dict):
        raise ConfigError(f"--class-weights {path}: expected an object {{class: weight}}")
    missing = [c for c in classes if c not in given]
    unknown = sorted(set(given) - set(classes))
    bad = [c for c, v in given.items() if not isinstance(v, int | float) or isinstance(v, bool)
           or not v > 0]
    if missing or unknown or bad:
        raise ConfigError(f"--class-weights {path}: " + "; ".join(
            p for p in (f"no weight for {missing[:5]}" if missing else "",
                        f"not classes of the data: {unknown[:5]}" if unknown else "",
                        f"weights must be positive numbers: {bad[:5]}" if bad else "") if p))
    return torch.tensor([float(given[c]) for c in classes])


def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from the uniform distribution over the C classes, averaged over the
    images: mean over images of -(1/C)·Σ_c log softmax(z)_c (outlier exposure's term,
    Hendrycks et al. 2019). Lowest, log C, when every class is equally likely."""
    return -logits.float().log_softmax(1).mean(1).mean()


NEGATIVES_LOSSES = ("oe", "energy")
# the energy-margin loss's margins on the free energy -logsumexp(logits): known images are
# pushed below M_IN, negatives above M_OUT (bench/bench_open_set.py, docs/open-set.md)
ENERGY_M_IN, ENERGY_M_OUT = -7.0, -3.0


def energy_margin(known: torch.Tensor, negatives: torch.Tensor, m_in: float = ENERGY_M_IN,
                  m_out: float = ENERGY_M_OUT) -> torch.Tensor:
    """Energy-margin loss (Liu et al., NeurIPS 2020): with E(x) = -logsumexp(logits), the
    mean of max(0, E - m_in)² over the known images plus the mean of max(0, m_out - E)²
    over the negatives (a part with no rows adds 0)."""
    def mean_sq(t: torch.Tensor) -> torch.Tensor:
        return t.pow(2).mean() if t.numel() else t.sum()

    e_in = -torch.logsumexp(known.float(), 1)
    e_out = -torch.logsumexp(negatives.float(), 1)
    return mean_sq(F.relu(e_in - m_in)) + mean_sq(F.relu(m_out - e_out))


def with_negatives(base: LossFn, weight: float, multi_label: bool, kind: str = "oe"
                   ) -> LossFn:
    """`base` on the known images of a batch plus `weight` × the negatives' term: for a
    multi-label model BCE toward no label (every sigmoid 0); for a softmax one, `oe`:
    `uniform_cross_entropy` of the negatives, `energy`: `energy_margin` of the known images
    and the negatives. Negatives are the rows whose target is data.negatives.NEGATIVE; a
    batch of known images only (validation) gets `base` alone."""
    from imageclf.data.negatives import is_negative

    if kind not in NEGATIVES_LOSSES:
        raise ConfigError(f"--negatives-loss {kind}: choose from {', '.join(NEGATIVES_LOSSES)}")

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        neg = is_negative(target)
        if not bool(neg.any()):
            return base(logits, target)
        known = ~neg
        total = base(logits[known], target[known]) if bool(known.any()) \
            else logits.sum() * 0.0
        z = logits[neg]
        if multi_label:
            term = F.binary_cross_entropy_with_logits(z.float(), torch.zeros_like(z.float()))
        elif kind == "energy":
            term = energy_margin(logits[known], z)
        else:
            term = uniform_cross_entropy(z)
        return total + weight * term

    return loss
