"""One training run end to end: the rate chosen, start, resume, auto-resume."""

import json
from pathlib import Path

import pytest

from imageclf.core.config import DataConfig, TrainConfig
from imageclf.jobs.evaluate import evaluate
from imageclf.learn.callbacks import Callback
from imageclf.model.classifier import create_model
from imageclf.model.predict import Predictor
from imageclf.run.runs import train_run

from .helpers import ARCH, add_bad_files, make_folder_dataset, solid


def test_a_tiny_auto_rate_is_reported(folder_dataset: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, caplog):
    """A sweep whose loss never fell: every suggestion is near its 1e-7 start. The run goes
    on at what was asked for, and the log says the rate is suspect and what to do."""
    import imageclf.run.runs as runs
    from imageclf.learn.lr_find import LRFindResult

    tiny = {"valley": 2e-7, "slide": 1e-7, "minimum": 1e-8, "steep": 1e-7}
    monkeypatch.setattr(runs, "run_lr_find",
                        lambda learn, train, out: LRFindResult([1e-7], [1.0], tiny))
    data = DataConfig.build(path=str(folder_dataset), size=32, presize=40, bs=6)
    train = TrainConfig.build(arch=ARCH, pretrained="none", precision="fp32", epochs=0,
                              out=str(tmp_path / "r"))
    with caplog.at_level("WARNING", logger="imageclf.run.runs"):
        res = runs.train_run(data, train)
    assert res.metrics.lr_rule == "valley" and res.metrics.lr == 2e-7
    assert "is tiny" in caplog.text and "--lr-find-steps" in caplog.text


def test_fine_tuning_sweeps_the_rate_with_the_body_frozen(folder_dataset: Path,
                                                          tmp_path: Path):
    """fastai's order: lr_find sees the frozen model when fine-tuning (its first phase trains
    at the rate found), the whole model from scratch."""
    import imageclf.run.runs as runs

    class BodyTrainable(Callback):
        def __init__(self):
            self.seen = []

        def on_batch_end(self, learn):
            self.seen.append(sum(p.numel() for p in learn.model.body.parameters()
                                 if p.requires_grad))

    data = DataConfig.build(path=str(folder_dataset), size=32, presize=40, bs=6)
    scratch = BodyTrainable()
    runs.train_run(data, TrainConfig.build(arch=ARCH, pretrained="none", precision="fp32", epochs=0,
                                     lr_find_steps=10, out=str(tmp_path / "a")),
                   runs.RunContext(cbs=[scratch]))
    tune = BodyTrainable()
    train = TrainConfig.build(arch=ARCH, pretrained=str(tmp_path / "a" / "model"),
                              precision="fp32", epochs=0, freeze_epochs=1, lr_find_steps=10,
                              out=str(tmp_path / "b"))
    res = runs.train_run(data, train, runs.RunContext(cbs=[tune]))
    n_body = sum(p.numel() for p in create_model(ARCH, 3, "none").body.parameters())
    sweep = len(json.loads((tmp_path / "b" / "lr_find.json").read_text())["lrs"])
    assert scratch.seen and set(scratch.seen) == {n_body}  # every body weight in the sweep
    assert len(tune.seen) > sweep and set(tune.seen[:sweep]) == {max(tune.seen)}
    assert 0 < max(tune.seen) < n_body / 100  # only the norm layers' scales and shifts
    assert res.metrics.lr_rule == "valley"


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
    res = train_run(DataConfig.build(path=str(data), size=32, presize=40, bs=6),
                    TrainConfig.build(arch=ARCH, pretrained="none", epochs=1, lr="1e-3",
                                      precision="fp32", out=str(tmp_path / "run")))
    skipped = {Path(s.path).name for s in res.metrics.skipped_files}
    assert len(res.metrics.skipped_files) == len(bad_train) + len(bad_valid)
    assert skipped == set(bad_train)
    assert all(s.reason for s in res.metrics.skipped_files)
    saved = json.loads((res.out / "metrics.json").read_text())
    assert len(saved["skipped_files"]) == len(bad_train) + len(bad_valid)
    html = (res.out / "report.html").read_text()
    assert f"Skipped files ({len(bad_train) + len(bad_valid)})" in html
    assert "truncated.jpg" in html and "bomb.png" in html
    # 18 good + 4 oddities used for training; every unreadable one left out
    from imageclf.data.dataloaders import DataLoaders

    dls = DataLoaders.from_config(DataConfig.build(path=str(data), size=32, presize=40, bs=6))
    assert dls.train.n_items == 18 + 4 and dls.valid.n_items == 9
    interp = evaluate(Predictor(res.out / "model"), data)
    assert interp.n == 9 and {Path(s.path).name for s in interp.skipped} == set(bad_valid)
