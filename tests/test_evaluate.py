"""Evaluating a model/ folder on labelled images, and calibrating "none of these"."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageclf.evaluate import calibrate, evaluate, write_calibration
from imageclf.predict import NONE_LABEL, Predictor


def test_evaluate_matches_the_training_run(run_dir: Path):
    """Predictor's decode/presize/centre-resize is the validation path: same loss, same
    accuracy as the learner measured on the same images."""
    data = Path(json.loads((run_dir / "config.json").read_text())["data"]["path"])
    pred = Predictor(run_dir / "model", precision="fp32")  # as the run was trained
    interp = evaluate(pred, data, out_dir=run_dir / "eval")
    m = json.loads((run_dir / "metrics.json").read_text())
    assert interp.n == 12
    assert interp.accuracy() == pytest.approx(m["valid_accuracy"], abs=1e-6)
    assert float(interp.losses.mean()) == pytest.approx(m["valid_loss"], rel=1e-4, abs=1e-5)
    assert (run_dir / "eval" / "confusion_matrix.png").is_file()
    assert (run_dir / "eval" / "top_losses.png").is_file()


def test_calibrate_and_none_of_these(run_dir: Path, tmp_path: Path):
    model = tmp_path / "model"
    shutil.copytree(run_dir / "model", model)
    data = Path(json.loads((run_dir / "config.json").read_text())["data"]["path"])
    chosen = calibrate(Predictor(model), data, keep=0.75)
    assert chosen["rule"] == "min_confidence" and 0 < chosen["min_confidence"] <= 1
    write_calibration(model, chosen)
    pred = Predictor(model)
    assert pred.none_rule == "min_confidence"
    assert pred.min_confidence == pytest.approx(chosen["min_confidence"])
    valid = sorted((data / "valid").rglob("*.jpg"))
    kept = [p.labels != [NONE_LABEL] for p in pred.predict(valid)]
    assert sum(kept) >= 0.75 * len(valid)  # the calibration's promise on its own data
    # an out-of-distribution image: answered `none` once the threshold is above its confidence
    ood = tmp_path / "ood.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)).save(ood)
    top = pred.predict(ood)[0].top[0][1]
    if top < pred.min_confidence:
        assert pred.predict(ood)[0].labels == [NONE_LABEL]
    strict = Predictor(model, min_confidence=min(1.0, top + 1e-3))
    assert strict.predict(ood)[0].labels == [NONE_LABEL]
    assert Predictor(model, min_confidence=0.0).predict(ood)[0].labels != [NONE_LABEL]
