"""Metrics on a validation pass."""

import pytest
import torch

from imageclf.core.errors import ConfigError
from imageclf.model import metrics as M
from imageclf.model.metrics import accuracy_multi, compute


def test_accuracy_and_error_rate():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    m = compute(logits, torch.tensor([0, 1, 1, 1]), multi_label=False)
    # truth 0,1,1,1; predicted 0,1,0,1: class 0 P 1/2 R 1 F1 2/3; class 1 P 1 R 2/3 F1 4/5
    assert m == pytest.approx({"accuracy": 0.75, "error_rate": 0.25,
                               "macro_f1": (2 / 3 + 4 / 5) / 2,
                               "balanced_accuracy": (1 + 2 / 3) / 2})


def test_multi_label_accuracy_per_decision_and_threshold():
    logits = torch.tensor([[3.0, -3.0], [0.2, -0.2]])  # sigmoids ~0.95/0.05, 0.55/0.45
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert accuracy_multi(logits, target) == pytest.approx(0.75)
    assert accuracy_multi(logits, target, torch.tensor([0.6, 0.5])) == pytest.approx(1.0)
    m = compute(logits, target, multi_label=True)
    assert m["accuracy_multi"] == 0.75 and m["mAP"] == 1.0  # class 1 has no positive


def test_per_class_scores_from_a_hand_worked_confusion_matrix():
    # rows actual, columns predicted
    cm = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    s = M.from_confusion(cm)
    assert s["precision"][:2].tolist() == pytest.approx([5 / 7, 3 / 4])
    assert s["recall"][:2].tolist() == pytest.approx([5 / 6, 3 / 5])
    assert s["support"].tolist() == [6, 5, 0]
    f1 = [2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6), 2 * 0.75 * 0.6 / 1.35]
    assert M.macro_f1(cm) == pytest.approx(sum(f1) / 2)  # class 2 never occurs: left out
    assert M.balanced_accuracy(cm) == pytest.approx((5 / 6 + 3 / 5) / 2)


def test_balanced_accuracy_sees_the_minority_class():
    """95 of one class right, 5 of the other all wrong: accuracy 0.95, balanced 0.5."""
    target = torch.tensor([0] * 95 + [1] * 5)
    logits = torch.tensor([[1.0, 0.0]] * 100)
    cm = M.confusion_matrix(logits.argmax(1), target, 2)
    assert M.accuracy(logits, target) == pytest.approx(0.95)
    assert M.balanced_accuracy(cm) == pytest.approx(0.5)


def test_top_k_accuracy():
    logits = torch.tensor([[0.9, 0.5, 0.1, 0.0, 0.0, 0.0, 0.0],
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    target = torch.tensor([2, 0])  # 3rd of 7 for the first, last for the second
    assert M.top_k_accuracy(logits, target, 1) == 0.0
    assert M.top_k_accuracy(logits, target, 3) == 0.5
    assert M.top_k_accuracy(logits, target, 7) == 1.0
    assert "top5_accuracy" in compute(logits, target, multi_label=False)
    assert "top5_accuracy" not in compute(logits[:, :5], target, multi_label=False)


def test_average_precision_hand_worked():
    # ranked by score: +, -, +, -, + → precision at the positives 1/1, 2/3, 3/5
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    target = torch.tensor([1, 0, 1, 0, 1])
    assert M.average_precision(scores, target) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # a tie counts every tied image: + and - at the same score → 1/2
    assert M.average_precision(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == 0.5
    assert torch.isnan(torch.tensor(M.average_precision(scores, torch.zeros(5))))
    logits = torch.stack([scores, -scores], 1)
    t = torch.stack([target, torch.tensor([0, 0, 0, 0, 1])], 1)
    ap = M.per_class_ap(logits, t)
    assert ap.tolist() == pytest.approx([(1 + 2 / 3 + 3 / 5) / 3, 1.0])
    assert M.mean_average_precision(logits, t) == pytest.approx(float(ap.mean()))


def test_exact_match_and_multi_label_f1():
    pred = torch.tensor([[True, False], [True, True], [False, False]])
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert M.exact_match(pred, target) == pytest.approx(1 / 3)
    s = M.multi_label_prf(pred, target)
    # class 0: tp 2 fp 0 fn 0 → F1 1; class 1: tp 0 fp 1 fn 1 → F1 0
    assert s["f1"].tolist() == [1.0, 0.0] and s["support"].tolist() == [2, 1]


def test_metric_names_and_watch():
    assert M.check_metric(None, False, 10) == "valid_accuracy"
    assert M.check_metric("accuracy", False, 3) == "valid_accuracy"
    assert M.check_metric("macro_f1", False, 3) == "macro_f1"
    assert M.check_metric(None, True, 3) == "accuracy_multi"
    with pytest.raises(ConfigError, match="this run reports valid_loss, valid_accuracy"):
        M.check_metric("top5_accuracy", False, 3)  # 3 classes: no top-5
    with pytest.raises(ConfigError, match="accuracy_multi, mAP"):
        M.check_metric("macro_f1", True, 3)
    rows = [{"epoch": 0, "valid_loss": 1.0, "macro_f1": 0.5},
            {"epoch": 1, "valid_loss": 0.7, "macro_f1": 0.8},
            {"epoch": 2, "valid_loss": 0.9, "macro_f1": 0.7}]
    assert M.watch(rows, "macro_f1") == {"name": "macro_f1", "last": 0.7, "best": 0.8,
                                         "best_epoch": 1}
    assert M.watch(rows, "valid_loss")["best"] == 0.7  # lower is better
