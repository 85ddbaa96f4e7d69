"""The "none of these" rule: its score, its decision, and what it needs to score."""

import pytest
import torch

from imageclf.core.errors import ConfigError
from imageclf.openset import scores as openset
from imageclf.openset.rule import NoneRule

CONFIDENT = torch.tensor([[8.0, 0.0, 0.0]])


def test_rule_applies_its_score_and_decides():
    from imageclf.model.predict import Outputs

    out = Outputs(CONFIDENT, CONFIDENT)
    rule = NoneRule("energy", 1.0)
    assert not rule.needs_features and NoneRule("knn", -0.1).needs_features
    assert torch.allclose(rule.scores(out), openset.energy(CONFIDENT))
    with pytest.raises(ConfigError, match="needs features"):
        NoneRule("knn", -0.1).scores(out)
    probs = CONFIDENT.softmax(1)
    classes = [f"c{i}" for i in range(CONFIDENT.shape[1])]
    low = torch.full((len(probs),), 0.5)
    assert rule.decide(probs, low, classes) == [["none"]] * len(probs)
    top = [[classes[int(i)]] for i in probs.argmax(1)]
    assert NoneRule().decide(probs, None, classes) == top  # no rule: a class
    assert NoneRule().name is None and rule.name == "energy"
