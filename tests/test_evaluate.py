"""Evaluating a model/ folder on labelled images, and calibrating "none of these"."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from imageclf.core.errors import ConfigError, DamagedFileError
from imageclf.jobs.evaluate import calibrate, evaluate, write_calibration
from imageclf.model.predict import NONE_LABEL, Predictor
from imageclf.openset.calibrate import subsample_per_class

from .helpers import run_cli


def test_evaluate_matches_the_training_run(run_dir: Path):
    """Predictor's decode/presize/centre-resize is the validation path: same loss, same
    accuracy as the learner measured on the same images."""
    data = Path(json.loads((run_dir / "config.json").read_text())["data"]["source"]["path"])
    pred = Predictor(run_dir / "model", precision="fp32")  # as the run was trained
    interp = evaluate(pred, data, out_dir=run_dir / "eval")
    m = json.loads((run_dir / "metrics.json").read_text())
    assert interp.n == 12
    assert interp.accuracy() == pytest.approx(m["valid_accuracy"], abs=1e-6)
    assert float(interp.losses.mean()) == pytest.approx(m["valid_loss"], rel=1e-4, abs=1e-5)
    assert (run_dir / "eval" / "confusion_matrix.png").is_file()
    assert (run_dir / "eval" / "top_losses.png").is_file()


def _data(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / "config.json").read_text())["data"]["source"]["path"])


def _copy_model(run_dir: Path, tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(run_dir / "model", model)
    return model


def _noise(folder: Path, n: int = 6) -> Path:
    """Images from no known class: uniform noise, nothing like the solid colours."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(folder / f"n{i}.png")
    return folder


def test_calibrate_and_none_of_these(run_dir: Path, tmp_path: Path):
    model, data = _copy_model(run_dir, tmp_path), _data(run_dir)
    chosen = calibrate(Predictor(model), data, keep=0.75, score="msp")
    assert chosen.score == "msp" and 0 < chosen.threshold <= 1 and chosen.n == 12
    write_calibration(model, chosen)
    meta = json.loads((model / "model.json").read_text())
    assert meta["open_set"]["score"] == "msp" and meta["min_confidence"] is None
    assert not (model / "open_set.safetensors").exists()  # msp needs no statistics
    pred = Predictor(model)
    assert pred.rule.name == "msp" and pred.rule.threshold == pytest.approx(chosen.threshold)
    # an out-of-distribution image: answered `none` once the threshold is above its confidence
    ood = _noise(tmp_path / "ood", 1) / "n0.png"
    top = pred.predict(ood)[0].top[0][1]
    strict = Predictor(model, min_confidence=min(1.0, top + 1e-3))
    answer = strict.predict(ood)[0]
    assert answer.labels == [NONE_LABEL] and answer.none_rule == "msp"
    assert answer.none_score == pytest.approx(top) and answer.none_threshold > top
    assert Predictor(model, min_confidence=0.0).predict(ood)[0].labels != [NONE_LABEL]


@pytest.mark.parametrize("score", ["msp", "max_logit", "energy", "knn", "mahalanobis",
                                   "msp+mahalanobis"])
def test_calibrated_threshold_keeps_the_asked_share(run_dir: Path, tmp_path: Path, score):
    """Through the whole path: calibrate, store, load, predict the validation images."""
    model, data = _copy_model(run_dir, tmp_path), _data(run_dir)
    keep = 0.75
    write_calibration(model, calibrate(Predictor(model), data, keep=keep, score=score, k=3))
    valid = sorted((data / "valid").rglob("*.jpg"))
    answers = Predictor(model).predict(valid)
    kept = sum(a.labels != [NONE_LABEL] for a in answers)
    assert abs(kept - keep * len(valid)) <= 1, (score, kept)
    assert {a.none_rule for a in answers} == {score}
    assert all((a.labels == [NONE_LABEL]) == (a.none_score < a.none_threshold) for a in answers)


def test_knn_bank_round_trips_through_the_model_folder(run_dir: Path, tmp_path: Path):
    model, data = _copy_model(run_dir, tmp_path), _data(run_dir)
    chosen = calibrate(Predictor(model), data, keep=0.9, score="knn", bank_rows=6, k=2)
    write_calibration(model, chosen)
    meta = json.loads((model / "model.json").read_text())
    far = meta["open_set"].pop("far")  # the score's figures on drawn images of no kind
    assert far["n"] == 300 and set(far["scores"]) == {"knn"}
    assert meta["open_set"] | {"threshold": 0} == {
        "score": "knn", "threshold": 0, "keep": 0.9, "n": 12, "k": 2, "rows": 6,
        "file": "open_set.safetensors", "ood": None}
    stored = load_file(model / "open_set.safetensors")  # safetensors: no pickle to run
    assert set(stored) == {"bank"} and stored["bank"].dtype == torch.float16
    assert stored["bank"].shape[0] == 6  # 2 per class of the 3, of 30 training images
    pred = Predictor(model)
    assert torch.equal(pred.rule.stats.bank, stored["bank"]) and pred.rule.k == 2
    # recalibrating with a score that needs no statistics removes the file
    write_calibration(model, calibrate(pred, data, keep=0.9, score="energy"))
    assert not (model / "open_set.safetensors").exists()
    assert Predictor(model).rule.name == "energy"


def test_a_missing_statistics_file_is_a_clear_error(run_dir: Path, tmp_path: Path):
    model, data = _copy_model(run_dir, tmp_path), _data(run_dir)
    write_calibration(model, calibrate(Predictor(model), data, keep=0.9, score="knn"))
    (model / "open_set.safetensors").unlink()
    with pytest.raises(DamagedFileError, match="open_set.safetensors is missing.*calibrate"):
        Predictor(model)


def test_a_model_from_before_open_set_scores_keeps_its_min_confidence(run_dir: Path,
                                                                       tmp_path: Path):
    model = _copy_model(run_dir, tmp_path)
    meta = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps(meta | {
        "min_confidence": 0.999999, "calibration": {"keep": 0.95, "n": 12,
                                                    "rule": "min_confidence"}}))
    answer = Predictor(model).predict(sorted((_data(run_dir) / "valid").rglob("*.jpg"))[0])[0]
    assert answer.labels == [NONE_LABEL] and answer.none_rule == "msp"
    assert answer.none_threshold == pytest.approx(0.999999)


def test_score_must_suit_the_model(run_dir: Path):
    with pytest.raises(ConfigError, match="a softmax model takes auto, msp"):
        calibrate(Predictor(run_dir / "model"), _data(run_dir), score="sigmoid_max")


@pytest.mark.slow
def test_evaluate_ood_on_trivially_different_unknowns(run_dir: Path, tmp_path: Path):
    run, data = tmp_path / "run", _data(run_dir)
    shutil.copytree(run_dir, run)
    model = run / "model"
    ood = _noise(tmp_path / "ood")
    (ood / "broken.jpg").write_bytes(b"not an image")
    res = run_cli("evaluate", str(model), str(data), "--ood", str(ood), "-o",
                  str(tmp_path / "eval"), "--json")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)["open_set"]
    assert r["n_known"] == 12 and r["n_unknown"] == 6 and len(r["skipped_unknown"]) == 1
    assert r["rule"] is None and r["unknown_accepted"] == 6  # uncalibrated: all get a class
    assert r["scores"]["energy"]["auroc"] == 1.0 and r["scores"]["msp"]["auroc"] == 1.0
    assert (tmp_path / "eval" / "open_set.png").stat().st_size > 5000
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()
    # calibrated with --ood: auto picks a perfect score, and the unknowns are all refused
    res = run_cli("calibrate", str(model), str(data), "--ood", str(ood), "--json")
    assert res.returncode == 0, res.stderr
    chosen = json.loads(res.stdout)
    assert chosen["ood"]["scores"][chosen["score"]]["auroc"] == 1.0
    assert set(chosen["ood"]["scores"]) == {"msp", "max_logit", "energy", "knn", "mahalanobis",
                                            "msp+mahalanobis"}
    assert (model / "open_set.png").is_file()
    html = (run / "report.html").read_text()  # the run's report is rebuilt with the figure
    assert "None of these" in html and 'alt="open-set scores"' in html
    res = run_cli("evaluate", str(model), str(data), "--ood", str(ood))
    assert res.returncode == 0, res.stderr
    assert "0 of 6 unknown images got a class" in res.stdout


def test_calibrate_runs_at_most_bank_rows_training_images():
    idx = list(range(100, 160))
    labels = [(0,)] * 40 + [(1,)] * 15 + [(2,)] * 5
    keep = subsample_per_class(idx, labels, 30)
    got = [labels[idx.index(i)][0] for i in keep]
    assert keep == sorted(keep) and len(keep) == 25  # 10 + 10 + all 5 of the small class
    assert got.count(0) == 10 and got.count(1) == 10 and got.count(2) == 5
    assert subsample_per_class(idx, labels, 100) == idx
