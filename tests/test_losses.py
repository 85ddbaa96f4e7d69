"""Losses: cross-entropy is the mean negative log-likelihood of the true class."""

import math

import pytest
import torch

from imageclf.losses import make_loss


def test_cross_entropy_by_hand_and_with_label_smoothing():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([0, 2])
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = 1 / (2 + math.e)
    assert float(make_loss(False)(logits, target)) == pytest.approx(
        -(math.log(p0) + math.log(p1)) / 2, rel=1e-6)
    smooth = make_loss(False, label_smoothing=0.3)(logits, target)
    assert float(smooth) != pytest.approx(float(make_loss(False)(logits, target)))
    assert make_loss(False)(logits.bfloat16(), target).dtype == torch.float32


def test_multi_label_is_independent_sigmoids():
    logits = torch.tensor([[0.0, 2.0]])
    target = torch.tensor([[0.0, 1.0]])
    expected = -(math.log(0.5) + math.log(1 / (1 + math.exp(-2)))) / 2
    assert float(make_loss(True)(logits, target)) == pytest.approx(expected, rel=1e-6)
