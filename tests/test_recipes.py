"""Faster to a good model: progressive resizing, the weights' moving average, mixup and
CutMix, a validation size of its own."""

import json
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from imageclf.core.config import DataConfig, OptimConfig, RegConfig
from imageclf.data import augment
from imageclf.data.dataloaders import DataLoaders
from imageclf.data.mix import mix_batch
from imageclf.learn.callbacks import Callback, SizeSchedule
from imageclf.learn.ema import WeightEMA
from imageclf.learn.learner import Learner
from imageclf.model.classifier import create_model
from imageclf.model.predict import Predictor

from .helpers import ARCH, final_metrics, make_folder_dataset, run_cli
from .test_resume import _start, _wait_for_checkpoint


class Shapes(Callback):
    """The side of every training batch, in order."""

    def __init__(self) -> None:
        self.sides: list[tuple[int, int]] = []  # (epoch, side)

    def on_batch_end(self, learn: Learner) -> None:
        if not learn.sweeping:
            self.sides.append((learn.progress.epochs_done, learn.batch_side))


def _learner(data: Path, **kw) -> Learner:
    dls = DataLoaders.from_config(DataConfig.build(path=str(data), size=32, presize=40, bs=6,
                                             cache_dir=str(data.parent / "cache")))
    torch.manual_seed(0)
    cbs = kw.pop("cbs", ())
    return Learner(dls, create_model("resnet18", 3, "none", "timm"),
                   OptimConfig(precision="fp32"), RegConfig(**kw), cbs=cbs)


def test_size_schedule_changes_shapes_at_stage_boundaries_only(folder_dataset: Path):
    assert [SizeSchedule([16, 24, 32], 6).size_at(e) for e in range(6)] == [16, 16, 24, 24,
                                                                           32, 32]
    assert [SizeSchedule([16, 32], 3).size_at(e) for e in range(3)] == [16, 16, 32]
    rec = Shapes()
    learn = _learner(folder_dataset, cbs=[SizeSchedule([16, 24, 32], 6), rec])
    learn.fit_one_cycle(6, 1e-3)
    sides = [s for _, s in rec.sides]
    changes = [i for i in range(1, len(sides)) if sides[i] != sides[i - 1]]
    per_epoch = len(learn.dls.train)
    assert changes == [2 * per_epoch, 4 * per_epoch]  # the stage boundaries, nothing else
    assert sides[0] == 16 and sides[-1] == 32
    x, _ = next(iter(learn.dls.valid))
    assert x.shape[-1] == 32  # validation at the final size throughout


def test_ema_equals_a_hand_computed_average():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = WeightEMA(model, decay=0.5)
    w0 = torch.tensor([[1.0, 2.0]])
    steps = [torch.tensor([[3.0, 0.0]]), torch.tensor([[5.0, 4.0]])]
    expected = w0
    for t, w in enumerate(steps):
        with torch.no_grad():
            model.weight.copy_(w)
        d = min(0.5, (1 + t) / (10 + t))  # 0.1, then 2/11
        expected = d * expected + (1 - d) * w
        ema.update(model)
    torch.testing.assert_close(ema.module.weight, expected)
    assert ema.updates == 2
    again = WeightEMA(model, 0.5)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 2 and torch.equal(again.module.weight, ema.module.weight)


def test_mixed_targets_sum_to_one():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    kinds = set()
    for _ in range(20):
        xm, t, kind = mix_batch(x, y, 3, mixup=0.4, cutmix=1.0, g=g)
        kinds.add(kind)
        assert xm.shape == x.shape and t.shape == (8, 3)
        torch.testing.assert_close(t.sum(1), torch.ones(8))
        assert float(t.min()) >= 0
    assert kinds == {"mixup", "cutmix"}
    multi = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    _, t, _ = mix_batch(x[:4], multi, 2, mixup=0.4, cutmix=0.0, g=g)
    assert float(t.max()) <= 1.0 and t.shape == (4, 2)  # blended multi-hot


def test_mixing_adds_no_resample(folder_dataset: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []
    real = augment.F.grid_sample
    monkeypatch.setattr(augment.F, "grid_sample",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    learn = _learner(folder_dataset, mixup=0.4, cutmix=1.0)
    learn.fit_one_cycle(1, 1e-3)
    assert len(calls) == len(learn.dls.train) + len(learn.dls.valid)  # one per batch


@pytest.mark.slow
def test_size_ema_and_valid_size_round_trip_through_export(folder_dataset: Path,
                                                           tmp_path: Path):
    run = tmp_path / "run"
    r = run_cli("train", str(folder_dataset), "--pretrained", "none", "--size", "32",
                "--presize", "48", "--bs", "6", "--epochs", "2", "--lr", "1e-3",
                "--precision", "fp32", "--sizes", "24,32", "--valid-size", "40",
                "--ema", "0.9", "--mixup", "0.2", "--out", str(run))
    assert r.returncode == 0, r.stderr
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["size"] == 40 and meta["train_size"] == 32 and meta["ema"] is True
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["schedule"]["sizes"] == [24, 32] and cfg["train"]["reg"]["ema"] == 0.9
    pred = Predictor(run / "model")
    assert pred.size == 40
    small = Predictor(run / "model", size=32)
    x = small.load(sorted((folder_dataset / "valid" / "red").glob("*.jpg"))[0])[None]
    assert small.inputs(x)[0].shape[-1] == 32  # predict --size uses that size
    out = run_cli("predict", str(run / "model"), str(folder_dataset / "valid"), "--size",
                  "32", "--json")
    assert out.returncode == 0, out.stderr
    bad = run_cli("train", str(folder_dataset), "--size", "32", "--presize", "48", "--sizes",
                  "24,28", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "must end at --size (32)" in bad.stderr


@pytest.mark.slow
def test_resume_mid_stage_matches_an_uninterrupted_run(tmp_path: Path):
    data = make_folder_dataset(tmp_path / "data", n_train=20, n_valid=4)
    args = ["--arch", ARCH, "--pretrained", "none", "--size", "32", "--presize", "40",
            "--bs", "4", "--epochs", "4", "--lr", "2e-3", "--precision", "fp32", "--seed", "5",
            "--sizes", "24,32", "--ema", "0.9", "--mixup", "0.3", "--cutmix", "1.0"]
    ref = tmp_path / "ref"
    assert run_cli("train", str(data), *args, "--out", str(ref)).returncode == 0
    run = tmp_path / "run"
    p = _start(str(data), *args, "--checkpoint-every", "0.0005", "--out", str(run))
    _wait_for_checkpoint(p, run, epoch=1)  # inside the first stage (epochs 0-1 at 24)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=120)
    assert p.returncode == 143
    r = run_cli("train", "--resume", str(run))
    assert r.returncode == 0, r.stderr
    assert final_metrics(run) == final_metrics(ref)
