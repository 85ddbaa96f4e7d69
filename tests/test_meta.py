"""model.json's type: one definition for writing, reading, validating and documenting."""

import dataclasses
import json
from pathlib import Path

import pytest

from imageclf.core.errors import DamagedFileError
from imageclf.core.modelmeta import FORMAT_VERSION, ModelMeta, OpenSetRule
from imageclf.core.schema import record_markdown
from imageclf.openset.rule import NoneRule

META = ModelMeta(arch="resnet18", head="concat", classes=("a", "b"), size=32, presize=40,
                 resize_method="crop", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                 loss="cross_entropy")


def test_round_trip_and_frozen(tmp_path: Path):
    META.write(tmp_path)
    back = ModelMeta.read(tmp_path)
    assert back == META and back.format_version == FORMAT_VERSION
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.size = 64
    assert NoneRule.of_model(META, tmp_path).name is None
    # a model calibrated before open-set scores: its min_confidence is msp
    assert NoneRule.of_model(dataclasses.replace(META, min_confidence=0.4), tmp_path).name \
        == "msp"
    calibrated = dataclasses.replace(META, open_set={"score": "energy", "threshold": 2.5})
    assert isinstance(calibrated.open_set, OpenSetRule)
    assert NoneRule.of_model(calibrated, tmp_path).name == "energy"
    calibrated.write(tmp_path)
    assert ModelMeta.read(tmp_path) == calibrated


@pytest.mark.parametrize("change,needle", [
    ({"size": -3}, "field 'size': expected a positive integer, got -3"),
    ({"classes": ["a", "a"]}, "field 'classes': expected a non-empty list of distinct"),
    ({"mean": [0.5, 0.5]}, "field 'mean': expected a list of 3 numbers"),
    ({"loss": "hinge"}, "field 'loss': expected cross_entropy or bce_multi_label"),
    ({"min_confidence": 1.5}, "field 'min_confidence': expected null or a number in [0, 1]"),
    ({"thresholds": [0.5]}, "field 'thresholds': expected 2 numbers (one per class), got 1"),
    ({"threshold": [0.5, 0.5]}, "unknown field(s) threshold"),
    ({"open_set": {"score": "odin", "threshold": 0.1}}, "field 'open_set': expected null or"),
    ({"open_set": {"score": "knn", "threshold": -0.2}}, "and for knn an integer `k`"),
    ({"format_version": 99}, "format_version 99 is newer than this imageclf reads"),
])
def test_errors_name_the_file_the_field_and_what_was_expected(tmp_path: Path, change, needle):
    (tmp_path / "model.json").write_text(json.dumps(META.to_json() | change))
    with pytest.raises(DamagedFileError) as e:
        ModelMeta.read(tmp_path)
    assert str(e.value).startswith(str(tmp_path / "model.json") + ": ")
    assert needle in str(e.value)


def test_a_missing_field_is_named(tmp_path: Path):
    obj = META.to_json()
    del obj["presize"], obj["head"]
    (tmp_path / "model.json").write_text(json.dumps(obj))
    with pytest.raises(DamagedFileError, match="missing field\\(s\\) head, presize"):
        ModelMeta.read(tmp_path)


def test_the_documented_schema_is_the_dataclass():
    """docs/run-directory.md holds the table generated from ModelMeta's fields."""
    doc = (Path(__file__).parents[1] / "docs" / "run-directory.md").read_text()
    assert record_markdown(ModelMeta, nested=False) in doc
    for f in dataclasses.fields(ModelMeta):
        assert f"`{f.name}`" in doc
