"""After training: run directory contents, Predictor, evaluate, calibrate, predict CLI, ONNX,
"none of these", damaged model bundles."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imageclf.config import ConfigError, DataConfig, TrainConfig
from imageclf.evaluate import calibrate, evaluate, write_calibration
from imageclf.export import load_model
from imageclf.predict import NONE_LABEL, Predictor
from imageclf.runs import train_run

from .conftest import CliResult, add_bad_files, make_folder_dataset, run_cli, solid


def _cli(*args: str) -> CliResult:
    return run_cli(*args)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small softmax model trained on noisy solid colours (fp32: comparable to ONNX)."""
    tmp = tmp_path_factory.mktemp("trained")
    data = make_folder_dataset(tmp / "data", n_train=10, n_valid=4)
    res = train_run(DataConfig(path=str(data), size=32, presize=40, bs=10,
                               cache_dir=str(tmp / "cache")),
                    TrainConfig(arch="resnet18", pretrained="none", epochs=4, lr="2e-3",
                                precision="fp32", out=str(tmp / "run")))
    return res.out


def test_run_directory_has_everything(run_dir: Path):
    for name in ("config.json", "metrics.csv", "metrics.json", "losses.png", "report.html",
                 "interpretation.json", "confusion_matrix.png", "top_losses.png",
                 "model/model.safetensors", "model/model.json"):
        assert (run_dir / name).is_file(), name
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("valid_loss", "valid_accuracy", "epochs", "train_seconds", "train_img_per_s",
                "precision", "device"):
        assert key in m
    assert m["global_batch"] == 10 and m["processes"] == 1  # bs 10, no accumulation
    interp = json.loads((run_dir / "interpretation.json").read_text())
    assert interp["n"] == 12 and len(interp["per_class"]) == 3
    assert sum(map(sum, interp["confusion_matrix"])) == 12
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # losses, confusion matrix, top losses
    assert "Skipped files (0)" in html
    assert "images per step<b>10</b>" in html and "processes<b>1</b>" in html


def test_predictor_imports_no_training_code(run_dir: Path):
    code = ("import sys; from imageclf.predict import Predictor; "
            f"p = Predictor({str(run_dir / 'model')!r}); "
            "bad = [m for m in ('imageclf.learner', 'imageclf.callbacks', 'imageclf.runs', "
            "'imageclf.data.loader', 'imageclf.data.cache') if m in sys.modules]; print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


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


def test_predict_cli_json_agrees_with_predictor_and_reports_bad_files(run_dir: Path,
                                                                     tmp_path: Path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, c in enumerate([(220, 30, 30), (30, 200, 40), (30, 40, 220)]):
        solid(c, (50, 44), seed=100 + i).save(folder / f"img{i}.jpg", quality=90)
    add_bad_files(folder / "bad")
    r = _cli("predict", str(run_dir / "model"), str(folder), str(folder / "bad"), "--json",
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
    r = _cli("predict", str(run_dir / "model"), str(folder / "bad" / "empty.jpg"))
    assert r.returncode == 1 and "empty.jpg" in r.stderr


def test_onnx_matches_pytorch(run_dir: Path, tmp_path: Path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    r = _cli("export", str(run_dir / "model"), "--onnx", "-o", str(out))
    assert r.returncode == 0 and out.is_file(), r.stderr
    pred = Predictor(run_dir / "model", precision="fp32")  # ONNX runs in fp32
    data = Path(json.loads((run_dir / "config.json").read_text())["data"]["path"])
    paths = sorted((data / "valid").rglob("*.jpg"))[:5]
    x = torch.stack([pred.load(p) for p in paths])
    ours = pred.probs_from_logits(pred.logits(x))
    rgb = pred.augment.denormalize(pred.augment(x, train=False)).numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    theirs = sess.run(["probs"], {"image": rgb.astype(np.float32)})[0]
    assert theirs.shape == (5, 3)
    np.testing.assert_allclose(theirs, ours.numpy(), atol=1e-4)
    # dynamic batch
    assert sess.run(["probs"], {"image": rgb[:1].astype(np.float32)})[0].shape == (1, 3)


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
    res = train_run(DataConfig(path=str(root / "labels.csv"), size=32, presize=40, bs=10,
                               multi_label=True),
                    TrainConfig(arch="resnet18", pretrained="none", epochs=8, lr="3e-3",
                                precision="fp32", out=str(tmp_path / "run")))
    meta = json.loads((res.out / "model" / "model.json").read_text())
    assert meta["multi_label"] and meta["thresholds"] == [0.5, 0.5, 0.5]
    pred = Predictor(res.out / "model")
    assert pred.none_rule == "multi_label_thresholds"
    known = pred.predict(sorted((root / "valid" / "red").glob("*.jpg")))
    assert all(p.labels == ["red"] for p in known), [p.top for p in known]
    # a new grey picture (noise never seen in training) is none of red/green/blue; with
    # 36 images from scratch this holds for seeds 0-3 with every probability <= 0.29
    grey = tmp_path / "grey.jpg"
    solid((90, 90, 90), (48, 40), seed=99).save(grey)
    p = pred.predict(grey)[0]
    assert max(p.probs) < 0.5 and p.labels == [NONE_LABEL], p.probs
    chosen = calibrate(pred, root / "labels.csv", keep=0.9)
    assert chosen["rule"] == "multi_label_thresholds" and len(chosen["thresholds"]) == 3


@pytest.mark.parametrize("damage,needle", [
    (lambda d: (d / "model.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "model.json").write_text(json.dumps({"arch": "resnet18"})), "missing keys"),
    (lambda d: _edit(d, weights="../../elsewhere.safetensors"), "inside"),
    (lambda d: _edit(d, classes=[]), "'classes'"),
    (lambda d: _edit(d, size="big"), "'size'"),
    (lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:1000]), "model.safetensors"),
    (lambda d: _edit(d, classes=["a", "b"]), "does not match"),
])
def test_damaged_bundle_gives_a_clear_error(run_dir: Path, tmp_path: Path, damage, needle):
    model = tmp_path / "model"
    shutil.copytree(run_dir / "model", model)
    damage(model)
    with pytest.raises(ConfigError, match=needle):
        load_model(model)
    r = _cli("predict", str(model), str(model / "model.json"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and needle.split()[0] in r.stderr


def _edit(folder: Path, **changes) -> None:
    meta = json.loads((folder / "model.json").read_text())
    meta.update(changes)
    (folder / "model.json").write_text(json.dumps(meta))


def test_salted_folder_trains_and_every_bad_file_is_reported(tmp_path: Path):
    """Every unreadable kind in train and valid: training completes, metrics.json and
    report.html list them, readable oddities are used; evaluate reports them too."""
    data = make_folder_dataset(tmp_path / "data", n_train=6, n_valid=3)
    bad_train = add_bad_files(data / "train" / "red")
    bad_valid = add_bad_files(data / "valid" / "green")
    odd = data / "train" / "blue"
    solid((30, 40, 220), (50, 40)).convert("L").save(odd / "gray.png")
    solid((30, 40, 220), (50, 40)).convert("CMYK").save(odd / "cmyk.jpg")
    solid((30, 40, 220), (50, 40)).convert("P").save(odd / "palette.gif")
    solid((30, 40, 220), (50, 40)).save(odd / "png_named.jpg", format="PNG")
    res = train_run(DataConfig(path=str(data), size=32, presize=40, bs=6),
                    TrainConfig(pretrained="none", epochs=1, lr="1e-3", precision="fp32",
                                out=str(tmp_path / "run")))
    skipped = {Path(s["path"]).name for s in res.metrics["skipped_files"]}
    assert len(res.metrics["skipped_files"]) == len(bad_train) + len(bad_valid)
    assert skipped == set(bad_train)
    assert all(s["reason"] for s in res.metrics["skipped_files"])
    saved = json.loads((res.out / "metrics.json").read_text())
    assert len(saved["skipped_files"]) == len(bad_train) + len(bad_valid)
    html = (res.out / "report.html").read_text()
    assert f"Skipped files ({len(bad_train) + len(bad_valid)})" in html
    assert "truncated.jpg" in html and "bomb.png" in html
    # 18 good + 4 oddities used for training; every unreadable one left out
    from imageclf.data.loader import DataLoaders

    dls = DataLoaders.from_config(DataConfig(path=str(data), size=32, presize=40, bs=6))
    assert dls.train.n_items == 18 + 4 and dls.valid.n_items == 9
    interp = evaluate(Predictor(res.out / "model"), data)
    assert interp.n == 9 and {Path(s["path"]).name for s in interp.skipped} == set(bad_valid)
