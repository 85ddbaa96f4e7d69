"""Prediction from a model/ folder: Predictor, the predict command, "none of these"."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imageclf.core.config import DataConfig, TrainConfig
from imageclf.core.errors import ConfigError
from imageclf.jobs.evaluate import calibrate, write_calibration
from imageclf.model.predict import NONE_LABEL, Predictor
from imageclf.run.runs import train_run

from .helpers import add_bad_files, make_folder_dataset, run_cli, solid


@pytest.mark.slow
def test_predictor_imports_no_training_code(run_dir: Path):
    code = ("import sys; from imageclf.model.predict import Predictor; "
            f"p = Predictor({str(run_dir / 'model')!r}); "
            "bad = [m for m in ('imageclf.learn.learner', 'imageclf.learn.callbacks', "
            "'imageclf.run.runs', 'imageclf.data.loader', 'imageclf.data.cache') "
            "if m in sys.modules]; print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_predict_cli_json_agrees_with_predictor_and_reports_bad_files(run_dir: Path,
                                                                     tmp_path: Path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, c in enumerate([(220, 30, 30), (30, 200, 40), (30, 40, 220)]):
        solid(c, (50, 44), seed=100 + i).save(folder / f"img{i}.jpg", quality=90)
    add_bad_files(folder / "bad")
    r = run_cli("predict", str(run_dir / "model"), str(folder), str(folder / "bad"), "--json",
             "--top-k", "2")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    good = [x for x in rows if "error" not in x]
    bad = [x for x in rows if "error" in x]
    assert len(good) == 3 and len(bad) >= 6  # every unreadable kind reported per file
    pred = Predictor(run_dir / "model")
    ours = {p.path: p for p in pred.predict(sorted(folder.glob("*.jpg")), top_k=2)}
    for row in good:
        p = ours[row["path"]]
        assert row["labels"] == p.labels and len(row["top"]) == 2
        assert row["none_rule"] is None  # an uncalibrated softmax model always picks a class
        assert row["top"][0]["prob"] == pytest.approx(p.top[0][1], abs=1e-5)
    # only unreadable files: non-zero exit, still a report per file
    r = run_cli("predict", str(run_dir / "model"), str(folder / "bad" / "empty.jpg"))
    assert r.returncode == 1 and "empty.jpg" in r.stderr


def test_multi_label_model_answers_none(tmp_path: Path):
    """Independent sigmoids trained with some label-less images (grey backgrounds) answer
    `none` for an image of none of the classes; softmax could not."""
    root = tmp_path / "ml"
    make_folder_dataset(root, n_train=10, n_valid=4)
    rows = ["filename,labels,is_valid"]
    for f in sorted(root.rglob("*.jpg")):
        rows.append(f"{f.relative_to(root)},{f.parent.name},{f.parts[-3] == 'valid'}")
    (root / "empty").mkdir()
    levels = list(range(0, 256, 30))  # label-less greys, dark to light
    for i, g in enumerate(levels * 2):
        solid((g, g, g), (48, 40), seed=i).save(root / "empty" / f"g{i}.jpg", quality=90)
        rows.append(f"empty/g{i}.jpg,,{i % len(levels) == len(levels) - 1}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    res = train_run(DataConfig.build(path=str(root / "labels.csv"), size=32, presize=40, bs=10,
                               multi_label=True),
                    TrainConfig.build(arch="resnet18", pretrained="none", epochs=8, lr="3e-3",
                                precision="fp32", out=str(tmp_path / "run"),
                                head="concat"))  # the model the figures below hold for
    meta = json.loads((res.out / "model" / "model.json").read_text())
    assert meta["multi_label"] and meta["thresholds"] == [0.5, 0.5, 0.5]
    pred = Predictor(res.out / "model")
    assert pred.rule.name == "multi_label_thresholds"
    known = pred.predict(sorted((root / "valid" / "red").glob("*.jpg")))
    assert all(p.labels == ["red"] for p in known), [p.top for p in known]
    # a new grey picture (noise never seen in training) is none of red/green/blue; with
    # 36 images from scratch this holds for seeds 0-3 with every probability <= 0.29
    grey = tmp_path / "grey.jpg"
    solid((90, 90, 90), (48, 40), seed=99).save(grey)
    p = pred.predict(grey)[0]
    assert max(p.probs) < 0.5 and p.labels == [NONE_LABEL], p.probs
    chosen = calibrate(pred, root / "labels.csv", keep=0.9)
    # without --ood, auto is the documented default (openset.default_score), beside the
    # per-class thresholds
    assert chosen.score == "sigmoid_max+mahalanobis" and len(chosen.thresholds) == 3
    with pytest.raises(ConfigError, match="a multi-label model takes auto, sigmoid_max"):
        calibrate(pred, root / "labels.csv", score="msp")
    # a gate on sigmoid_max besides the thresholds: the grey image is still none, by the gate
    gated = calibrate(pred, root / "labels.csv", keep=0.9, score="sigmoid_max")
    assert gated.score == "sigmoid_max" and len(gated.thresholds) == 3
    write_calibration(res.out / "model", gated)
    p = Predictor(res.out / "model").predict(grey)[0]
    assert p.labels == [NONE_LABEL] and p.none_rule == "sigmoid_max"
    assert p.none_score == pytest.approx(max(p.probs)) and p.none_score < p.none_threshold
