"""Losses: PyTorch's fused cross-entropy (label smoothing) and BCE-with-logits (multi-label)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean negative log-likelihood of the true class under softmax (log_softmax + nll fused)."""
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def bce_multi_label(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Independent sigmoid per class: an image may belong to several classes or to none."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def make_loss(multi_label: bool, label_smoothing: float = 0.0) -> LossFn:
    """The loss for single-label (cross-entropy) or multi-label (BCE) training."""
    if multi_label:
        return bce_multi_label
    return partial(cross_entropy, label_smoothing=label_smoothing)
