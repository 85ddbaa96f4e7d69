"""Losses: cross-entropy is the mean negative log-likelihood of the true class."""

import math

import pytest
import torch

from imageclf.core.errors import ConfigError
from imageclf.model.losses import class_weights, inverse_frequency, make_loss


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


def test_class_weights_inverse_frequency_mean_one():
    targets = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    w = inverse_frequency(targets, 4)  # class 3 has no image: weight 1
    inv = torch.tensor([1 / 6, 1 / 3, 1.0])
    assert w[:3].tolist() == pytest.approx((inv / inv.mean()).tolist())
    assert float(w[:3].mean()) == pytest.approx(1.0) and float(w[3]) == 1.0
    # multi-label: pos_weight = negatives / positives
    multi = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert inverse_frequency(multi, 2).tolist() == pytest.approx([1 / 3, 3.0])


def test_weighted_cross_entropy_by_hand_and_with_label_smoothing():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = torch.tensor([0, 1, 1])
    w = torch.tensor([0.5, 2.0])
    nll = -torch.log_softmax(logits, 1)[torch.arange(3), target]
    expected = (0.5 * nll[0] + 2.0 * nll[1] + 2.0 * nll[2]) / (0.5 + 2.0 + 2.0)
    assert float(make_loss(False, weight=w)(logits, target)) == pytest.approx(float(expected))
    smooth = make_loss(False, label_smoothing=0.1, weight=w)(logits, target)
    assert float(smooth) == pytest.approx(float(torch.nn.functional.cross_entropy(
        logits, target, weight=w, label_smoothing=0.1)))
    pos = make_loss(True, weight=torch.tensor([1.0, 4.0]))
    t = torch.tensor([[1.0, 1.0]])
    x = torch.tensor([[0.0, 0.0]])
    assert float(pos(x, t)) == pytest.approx((math.log(2) + 4 * math.log(2)) / 2)


def test_class_weights_from_a_file(tmp_path):
    f = tmp_path / "w.json"
    f.write_text('{"cat": 2, "dog": 0.5}')
    assert class_weights(str(f), torch.tensor([0, 1]), ["cat", "dog"]).tolist() == [2.0, 0.5]
    assert class_weights("none", torch.tensor([0, 1]), ["cat", "dog"]) is None
    f.write_text('{"cat": 2, "cow": 1, "dog": -1}')
    with pytest.raises(ConfigError, match="not classes of the data.*cow.*positive numbers"):
        class_weights(str(f), torch.tensor([0, 1]), ["cat", "dog"])
    f.write_text('{"cat": 2}')
    with pytest.raises(ConfigError, match="no weight for \\['dog'\\]"):
        class_weights(str(f), torch.tensor([0, 1]), ["cat", "dog"])
