"""report.html: one page a person can read."""

import json
from pathlib import Path

import pytest

from imageclf.core.errors import DamagedFileError
from imageclf.run.report import build_report


def test_the_per_epoch_table_is_formatted_for_reading(tmp_path: Path):
    history = [{"epoch": 0, "train_loss": 0.123456789, "valid_loss": 0.5, "seconds": 12.3456,
                "img_per_s": 1234.5678}]
    (tmp_path / "metrics.json").write_text(json.dumps({
        "valid_accuracy": 0.9, "valid_loss": 0.5, "epochs": 1, "train_seconds": 12.3,
        "train_img_per_s": 1234.5678, "lr": 3e-5, "history": history}))
    html = build_report(tmp_path).read_text()
    assert ">0.1235</td>" in html and ">12.3</td>" in html and ">1,235</td>" in html
    assert "1234.5678" not in html and "12.3456" not in html
    assert "the learning rate was given (3.00e-05)" in html


def test_not_a_run_directory(tmp_path: Path):
    with pytest.raises(DamagedFileError, match="not a run directory"):
        build_report(tmp_path)
