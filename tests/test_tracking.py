"""train --tensorboard: the event files, read back with TensorBoard's own reader."""

import importlib.util
import json
import signal
from pathlib import Path

import pytest

from imageclf.learn.checkpoint import checkpoint_position

from .helpers import ARCH, make_folder_dataset, run_cli
from .test_resume import _start, _wait_for_checkpoint

ARGS = ["--arch", ARCH, "--pretrained", "none", "--size", "32", "--presize", "40", "--bs", "4",
        "--precision", "fp32", "--seed", "3", "--tensorboard"]


def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def _steps(ea, tag: str) -> list[int]:
    return [e.step for e in ea.Scalars(tag)]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "data", n_train=8, n_valid=3)


@pytest.mark.slow
def test_scalars_images_and_hparams(data: Path, tmp_path: Path):
    run = tmp_path / "run"
    r = run_cli("train", str(data), *ARGS, "--epochs", "2", "--lr", "auto",
                "--lr-find-steps", "10", "--out", str(run))
    assert r.returncode == 0, r.stderr
    ea = _events(run)
    batches = 2 * (24 // 4)  # 2 epochs of 6 batches; the lr_find sweep is not logged
    assert _steps(ea, "train/loss") == list(range(1, batches + 1))
    assert len(_steps(ea, "train/lr")) == batches
    history = json.loads((run / "metrics.json").read_text())["history"]
    valid = ea.Scalars("valid/valid_loss")
    assert [e.step for e in valid] == [6, 12]
    assert [e.value for e in valid] == pytest.approx([h["valid_loss"] for h in history])
    for tag in ("valid/valid_accuracy", "valid/macro_f1", "epoch/img_per_s", "epoch/seconds",
                "train/train_loss"):
        assert len(ea.Scalars(tag)) == 2, tag
    assert set(ea.Tags()["images"]) >= {"images/augmented_batch", "images/lr_find",
                                         "images/confusion_matrix"}
    # the hparams: the settings beside the final metrics (TensorBoard's hparams plugin)
    hp = _events_in(run / "tensorboard", "hparam/valid_accuracy")
    assert hp == pytest.approx(history[-1]["valid_accuracy"])


def _events_in(folder: Path, tag: str) -> float:
    """A scalar written by add_hparams (in its own event file in the same folder)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for f in sorted(folder.glob("events.out.tfevents.*")):
        ea = EventAccumulator(str(f))
        ea.Reload()
        if tag in ea.Tags()["scalars"]:
            return ea.Scalars(tag)[-1].value
    raise AssertionError(f"{tag} not found")


@pytest.mark.slow
def test_resume_continues_the_steps_without_duplicates(tmp_path: Path):
    data = make_folder_dataset(tmp_path / "data", n_train=20, n_valid=4)
    run = tmp_path / "run"
    p = _start(str(data), *ARGS, "--epochs", "2", "--lr", "2e-3", "--checkpoint-every",
               "0.0005", "--out", str(run))
    info = _wait_for_checkpoint(p, run, epoch=1)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=120)
    assert p.returncode == 143
    assert checkpoint_position(info)[0] == 1
    r = run_cli("train", "--resume", str(run))
    assert r.returncode == 0, r.stderr
    steps = _steps(_events(run), "train/loss")
    assert steps == list(range(1, 2 * 15 + 1))  # each of the 30 batches once, in order
    assert _steps(_events(run), "valid/valid_loss") == [15, 30]


def test_missing_tensorboard_stops_at_once_with_the_install_command(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    r = run_cli("train", str(data), *ARGS, "--epochs", "1", "--lr", "1e-3", "--out",
                str(tmp_path / "run"))
    assert r.returncode == 2
    assert "pip install 'imageclf[tensorboard]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # stopped before anything was written
