"""Metrics on a validation pass."""

import pytest
import torch

from imageclf.metrics import accuracy_multi, compute


def test_accuracy_and_error_rate():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    m = compute(logits, torch.tensor([0, 1, 1, 1]), multi_label=False)
    assert m == {"accuracy": 0.75, "error_rate": 0.25}


def test_multi_label_accuracy_per_decision_and_threshold():
    logits = torch.tensor([[3.0, -3.0], [0.2, -0.2]])  # sigmoids ~0.95/0.05, 0.55/0.45
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert accuracy_multi(logits, target) == pytest.approx(0.75)
    assert accuracy_multi(logits, target, torch.tensor([0.6, 0.5])) == pytest.approx(1.0)
    assert compute(logits, target, multi_label=True) == {"accuracy_multi": 0.75}
