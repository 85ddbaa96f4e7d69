"""Fixtures: every test gets its own presize cache; a small folder data set."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import ARCH, make_folder_dataset


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "data")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own presize cache folder."""
    d = tmp_path / "cache"
    monkeypatch.setenv("IMAGECLF_CACHE_DIR", str(d))
    return d




@pytest.fixture
def learn(folder_dataset: Path):
    """A small learner (helpers.ARCH) from scratch on 3 classes x 6 images, fp32 (3 batches
    an epoch)."""
    from imageclf.core.config import DataConfig, TrainConfig
    from imageclf.run.runs import build_learner

    return build_learner(DataConfig.build(path=str(folder_dataset), size=32, presize=40, bs=6),
                         TrainConfig.build(arch=ARCH, pretrained="none", precision="fp32"))


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small softmax model trained on noisy solid colours (fp32: comparable to ONNX)."""
    tmp = tmp_path_factory.mktemp("trained")
    data = make_folder_dataset(tmp / "data", n_train=10, n_valid=4)
    from imageclf.core.config import DataConfig, TrainConfig
    from imageclf.run.runs import train_run

    res = train_run(DataConfig.build(path=str(data), size=32, presize=40, bs=10,
                               cache_dir=str(tmp / "cache")),
                    TrainConfig.build(arch="resnet18", pretrained="none", epochs=4, lr="2e-3",
                                precision="fp32", out=str(tmp / "run"),
                                # the head these tests' expectations were set with (their
                                # open-set figures depend on the model, not on the head rule)
                                head="concat"))
    return res.out
