"""Interpretation: the confusion matrix, per-class scores, most confused, top losses."""

import pytest
import torch

from imageclf.model.interpret import Interpretation, map_targets


def test_a_hand_made_validation_pass():
    classes = ["cat", "dog", "fox"]
    # 5 images: cat→cat, cat→dog, dog→dog, fox→dog (very sure), fox→fox
    logits = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [0, 3.0, 0], [0, 9.0, 0], [0, 0, 3.0]])
    targets = torch.tensor([0, 0, 1, 2, 2])
    it = Interpretation.from_logits(logits, targets, classes, False,
                                    [f"{i}.jpg" for i in range(5)])
    assert it.confusion_matrix().tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 1]]
    assert it.accuracy() == pytest.approx(0.6)
    assert it.most_confused()[:2] == [("cat", "dog", 1), ("fox", "dog", 1)]
    assert it.top_losses(1) == [3]  # the very sure mistake
    dog = next(r for r in it.per_class() if r["class"] == "dog")
    assert dog["precision"] == pytest.approx(1 / 3) and dog["recall"] == pytest.approx(1.0)
    assert dog["support"] == 1
    s = it.summary()
    assert s["n"] == 5 and sum(map(sum, s["confusion_matrix"])) == 5


def test_targets_follow_the_model_class_order():
    t = map_targets([(0,), (1,)], ("b", "a"), ["a", "b"], multi_label=False)
    assert t.tolist() == [1, 0]
