"""Backbone + head, pretrained weights, parameter groups, freeze."""

from pathlib import Path

import pytest
import torch

from imageclf.core.config import DataConfig, TrainConfig
from imageclf.core.errors import ConfigError
from imageclf.model.classifier import check_arch, create_model
from imageclf.run.runs import build_learner

from .helpers import ARCH


def test_hub_offline_fails_fast_with_a_way_out(monkeypatch: pytest.MonkeyPatch):
    import socket
    import time

    from imageclf.model.classifier import create_body

    def refuse(*_a, **_k):
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="--pretrained weights.safetensors") as e:
        create_body("resnet18", "hub")
    assert "model/ folder" in str(e.value) and "--pretrained none" in str(e.value)
    assert time.perf_counter() - t0 < 10


def test_pretrained_from_files_and_wrong_keys(tmp_path: Path):
    import timm
    from safetensors.torch import save_file

    from imageclf.model.classifier import create_body

    src = timm.create_model("resnet18", num_classes=7)
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")  # timm keys, with a 7-class classifier
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        body = create_body("resnet18", str(tmp_path / f))
        assert torch.equal(body.conv1.weight, src.conv1.weight)
    with pytest.raises(ConfigError, match="does not fit this architecture: missing keys"):
        create_body("resnet34", str(tmp_path / "w.safetensors"))


def test_pickle_payload_is_refused(tmp_path: Path):
    """A .pth that would run code when unpickled is refused (weights_only=True)."""
    import pickle

    from imageclf.model.classifier import create_body

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"conv1.weight": Payload()}))
    with pytest.raises(ConfigError, match="cannot read weights"):
        create_body("resnet18", str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_transfer_beats_scratch(tmp_path: Path):
    """A body trained on one generated set (colours), fine-tuned on a second (other colours),
    ends with a lower validation loss than the same model trained from scratch for the same
    number of steps."""
    from .helpers import make_folder_dataset

    a = make_folder_dataset(tmp_path / "a", n_train=16, n_valid=4)
    b = make_folder_dataset(tmp_path / "b", n_train=4, n_valid=6,
                            classes=("cyan", "magenta", "yellow"))
    data_a = DataConfig.build(path=str(a), size=32, presize=40, bs=8, seed=1)
    pre = build_learner(data_a, TrainConfig.build(arch=ARCH, pretrained="none", precision="fp32"))
    pre.fit_one_cycle(6, 3e-3)
    from imageclf.model.export import export_learner

    export_learner(pre, tmp_path / "pre" / "model")
    data_b = DataConfig.build(path=str(b), size=32, presize=40, bs=6, seed=2)
    results = {}
    for name, pretrained in (("transfer", str(tmp_path / "pre" / "model")),
                             ("scratch", "none")):
        learn = build_learner(data_b, TrainConfig.build(arch=ARCH, pretrained=pretrained,
                                                        precision="fp32"))
        learn.fine_tune(2, 2e-3, freeze_epochs=1)
        results[name] = learn.history.rows[-1]
    assert results["transfer"]["valid_loss"] < results["scratch"]["valid_loss"], results



def test_unknown_arch_names_close_ones():
    with pytest.raises(ConfigError, match="did you mean resnet18"):
        check_arch("resnet-18")
    with pytest.raises(ConfigError, match="--head must be one of concat, timm"):
        create_model("resnet18", 3, "none", "mlp")


def test_the_builder_records_arch_and_head():
    """What export needs to rebuild the model travels on the model itself."""
    m = create_model("resnet18", 3, "none", "timm")
    assert (m.arch, m.head_kind) == ("resnet18", "timm")
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 3)
