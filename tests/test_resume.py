"""Interrupted runs: SIGTERM and kill -9 mid-epoch, then --resume; damaged checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imageclf.learn.checkpoint import checkpoint_position, read_checkpoint

from .helpers import ARCH, final_metrics, make_folder_dataset, run_cli

ARGS = ["--arch", ARCH, "--pretrained", "none", "--size", "32", "--presize", "40", "--bs", "4",
        "--epochs", "3", "--lr", "2e-3", "--precision", "fp32", "--seed", "5"]


def _start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imageclf", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _wait_for_checkpoint(proc: subprocess.Popen, folder: Path, epoch: int,
                         timeout: float = 120) -> dict:
    """Poll last.json until it records a mid-epoch checkpoint in `epoch`."""
    t0 = time.monotonic()
    last = folder / "checkpoints" / "last.json"
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        try:
            info = json.loads(last.read_text())
            if checkpoint_position(info)[0] == epoch and checkpoint_position(info)[1] > 0:
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    raise AssertionError("no mid-epoch checkpoint appeared")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "data", n_train=20, n_valid=4)


@pytest.mark.slow
def test_sigterm_then_kill9_then_resume_matches_an_uninterrupted_run(data: Path,
                                                                    tmp_path: Path):
    ref = tmp_path / "ref"
    r = run_cli("train", str(data), *ARGS, "--out", str(ref))
    assert r.returncode == 0, r.stderr

    run = tmp_path / "run"
    every = ["--checkpoint-every", "0.0005"]  # ~30 ms: a checkpoint every batch or two
    # 1) SIGTERM in the middle of epoch 0: a checkpoint, a clear message, exit 143
    p = _start(str(data), *ARGS, *every, "--out", str(run))
    _wait_for_checkpoint(p, run, epoch=0)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert f"imageclf train --resume {run}" in err and "Traceback" not in err
    info, _ = read_checkpoint(run / "checkpoints")
    p = info.progress
    assert p["batch_in_epoch"] > 0 or p["epochs_done"] > 0
    if p["batch_in_epoch"]:  # the epoch so far, for its images/s once resumed
        # each batch: 4 known images and 1 synthetic negative (the command line's default)
        assert p["epoch_images"] == 5 * p["batch_in_epoch"] and p["epoch_seconds"] > 0

    # 2) the same command again with --auto-resume (a restarted job): it continues the run;
    # then kill -9 in the middle of epoch 1 (no chance to clean up)
    p = _start(str(data), *ARGS, *every, "--out", str(run), "--auto-resume")
    _wait_for_checkpoint(p, run, epoch=1)
    p.kill()
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL

    # 3) resume to the end: the same metrics, bit for bit, as the run never interrupted
    r = run_cli("train", "--resume", str(run))
    assert r.returncode == 0, r.stderr
    assert final_metrics(run) == final_metrics(ref)
    assert not list((run / "checkpoints").glob("*.tmp*"))
    # the images trained before each interruption still count (3 epochs x 3 classes x 20
    # known images, and 1 synthetic negative beside each batch of 4: 15 an epoch)
    done = read_checkpoint(run / "checkpoints")[0]
    ref_done = read_checkpoint(ref / "checkpoints")[0]
    assert done.progress["train_images"] == ref_done.progress["train_images"] == 3 * (60 + 15)
    # an epoch's seconds (training and validation) hold at least its training time, the part
    # before an interruption included
    for row in json.loads((run / "metrics.json").read_text())["history"]:
        assert row["seconds"] >= 75 / row["img_per_s"]
