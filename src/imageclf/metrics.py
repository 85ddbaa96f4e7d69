"""Metrics on a whole validation pass: accuracy, error rate, multi-label accuracy."""

from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Share of images whose top class is the true one."""
    return float((logits.argmax(1) == target).float().mean())


def error_rate(logits: torch.Tensor, target: torch.Tensor) -> float:
    """1 - accuracy."""
    return 1.0 - accuracy(logits, target)


def accuracy_multi(logits: torch.Tensor, target: torch.Tensor,
                   thresholds: float | torch.Tensor = 0.5) -> float:
    """Share of (image, class) decisions right when each sigmoid is cut at its threshold."""
    pred = torch.sigmoid(logits.float()) > torch.as_tensor(thresholds)
    return float((pred == target.bool()).float().mean())


def compute(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> dict[str, float]:
    """The metrics reported per epoch."""
    if multi_label:
        return {"accuracy_multi": accuracy_multi(logits, target)}
    acc = accuracy(logits, target)
    return {"accuracy": acc, "error_rate": 1.0 - acc}
