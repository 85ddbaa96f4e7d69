"""Checkpoints: what they hold, their integrity, a stop within an accumulation group."""

import json
from pathlib import Path

import pytest

from imageclf.core.config import DataConfig, TrainConfig
from imageclf.core.errors import DamagedFileError
from imageclf.learn.callbacks import Callback
from imageclf.learn.checkpoint import checkpoint_position, read_checkpoint

from .helpers import ARCH, make_folder_dataset, run_cli


def test_a_stop_inside_an_accumulation_group_waits_for_its_step(folder_dataset: Path,
                                                               tmp_path: Path):
    """SIGTERM (as the handler records it) after batch 3 with --accum-steps 2: training
    stops after batch 4, where the group's step is taken and a checkpoint can hold
    everything; resuming ends exactly as a run never stopped."""
    import imageclf.run.runs as runs
    from imageclf.learn.checkpoint import STOP

    class StopAt(Callback):
        def on_batch_end(self, learn):
            if (learn.progress.epochs_done, learn.progress.batch_in_epoch) == (0, 3):
                STOP.requested = "SIGTERM"

    data = DataConfig.build(path=str(folder_dataset), size=32, presize=40, bs=3)
    train = TrainConfig.build(arch=ARCH, pretrained="none", precision="fp32", epochs=2, lr="2e-3",
                              accum_steps=2)
    ref = runs.train_run(data, train.replace(out=str(tmp_path / "ref")))
    with pytest.raises(runs.Interrupted):
        runs.train_run(data, train.replace(out=str(tmp_path / "run")),
                       runs.RunContext(cbs=[StopAt()]))
    info = json.loads((tmp_path / "run" / "checkpoints" / "last.json").read_text())
    assert checkpoint_position(info) == (0, 4)
    res = runs.resume_run(tmp_path / "run")
    assert res.metrics.history == [
        r | {k: res.metrics.history[i][k] for k in ("seconds", "img_per_s")}
        for i, r in enumerate(ref.metrics.history)]
    assert res.metrics.global_batch == 6



def test_damaged_or_missing_checkpoint_is_never_used(tmp_path: Path):
    data = make_folder_dataset(tmp_path / "data", n_train=20, n_valid=4)
    run = tmp_path / "run"
    short = ["--arch", ARCH, "--pretrained", "none", "--size", "32", "--presize", "40", "--bs", "4",
             "--epochs", "1", "--lr", "1e-3"]
    r = run_cli("train", str(data), *short, "--out", str(run))
    assert r.returncode == 0, r.stderr
    folder = run / "checkpoints"
    info, tensors = read_checkpoint(folder)
    assert checkpoint_position(info) == (1, 0) and tensors
    # a half-written temp file beside it (a crash during a later write) changes nothing
    (folder / "ckpt-0002-000003.safetensors.tmpabc").write_bytes(b"\0" * 100)
    assert checkpoint_position(read_checkpoint(folder)[0]) == (1, 0)
    # a damaged tensor file is refused by its recorded size/hash
    f = folder / info.tensors
    f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DamagedFileError, match="damaged"):
        read_checkpoint(folder)
    r = run_cli("train", "--resume", str(run))
    assert r.returncode == 2 and "damaged" in r.stderr and "Traceback" not in r.stderr
    (folder / "last.json").unlink()
    with pytest.raises(DamagedFileError, match="no checkpoint"):
        read_checkpoint(folder)


def test_a_format_1_checkpoint_still_reads(tmp_path: Path):
    """last.json as written before the counters had one home (flat keys, the rate beside
    them) reads into today's layout: a run stopped by an older imageclf resumes."""
    data = make_folder_dataset(tmp_path / "data", n_train=4, n_valid=2)
    run = tmp_path / "run"
    r = run_cli("train", str(data), "--arch", ARCH, "--pretrained", "none", "--size", "32",
                "--presize", "40", "--bs", "4", "--epochs", "1", "--lr", "1e-3", "--out",
                str(run), "--no-synthetic")
    assert r.returncode == 0, r.stderr
    folder = run / "checkpoints"
    info = json.loads((folder / "last.json").read_text())
    p, lr = info.pop("progress"), info.pop("lr_choice")
    assert p["train_images"] == 12 and lr == {"lr": 1e-3, "rule": None, "suggestions": None}
    old = info | {"format": 1, "epoch": p["epochs_done"], "batch": p["batch_in_epoch"],
                  "mid_epoch": False, "train_images": p["train_images"],
                  "train_seconds": p["train_seconds"], "epoch_images": p["epoch_images"],
                  "epoch_seconds": p["epoch_seconds"], "lr": lr["lr"],
                  "lr_rule": lr["rule"], "lr_find": lr["suggestions"]}
    (folder / "last.json").write_text(json.dumps(old))
    got, tensors = read_checkpoint(folder)
    assert got.progress == p and got.lr_choice == lr and got.format == 1 and tensors
    assert checkpoint_position(old) == checkpoint_position(got) == (1, 0)
