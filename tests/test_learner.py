import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from imageclf.callbacks import Callback
from imageclf.config import AugConfig, ConfigError, DataConfig, TrainConfig
from imageclf.export import load_model, save_model
from imageclf.learner import resolve_precision, spread_lrs
from imageclf.lr_finder import minimum, resolve_rule, slide, smooth, steep, valley
from imageclf.models import check_arch, create_model, norm_params
from imageclf.runs import build_learner
from imageclf.schedules import cos_anneal, exp_sweep, one_cycle_lr, one_cycle_mom


def test_schedules_by_hand():
    assert cos_anneal(1.0, 0.0, 0.0) == 1.0 and cos_anneal(1.0, 0.0, 1.0) == 0.0
    assert math.isclose(cos_anneal(1.0, 0.0, 0.5), 0.5)
    assert math.isclose(one_cycle_lr(0.0, 1.0), 1 / 25)
    assert math.isclose(one_cycle_lr(0.25, 1.0), 1.0)
    assert math.isclose(one_cycle_lr(1.0, 1.0), 1e-5)
    assert math.isclose(one_cycle_mom(0.25), 0.85) and math.isclose(one_cycle_mom(1.0), 0.95)
    assert math.isclose(exp_sweep(0, 100), 1e-7) and math.isclose(exp_sweep(99, 100), 10.0)
    assert math.isclose(exp_sweep(50, 101, 1e-4, 1.0), 1e-2)


def test_lr_suggestions_on_a_synthetic_curve():
    lrs = [exp_sweep(i, 100) for i in range(100)]
    # slowly rising, then falling between 1e-4 and 1e-2, then blowing up
    losses = [2.5 + 1e-3 * i - 2.0 / (1 + math.exp(-3 * (math.log10(lr) + 3)))
              for i, lr in enumerate(lrs)]
    losses = [v + (50 * (math.log10(lr) + 1.5) ** 2 if lr > 10**-1.5 else 0)
              for v, lr in zip(losses, lrs, strict=True)]
    s = smooth(losses, beta=0.5)
    assert 1e-4 < valley(lrs, s) < 1e-2
    assert 1e-4 < steep(lrs, s) < 1e-2
    assert 1e-3 < minimum(lrs, s) < 1e-1 / 10 * 10
    assert lrs[0] <= slide(lrs, s) <= 10**-1.5  # left of the blow-up
    assert spread_lrs((1e-4, 1e-2), 3) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert spread_lrs(3e-3, 3) == [3e-3] * 3


@pytest.fixture
def learn(folder_dataset: Path):
    return build_learner(DataConfig(path=str(folder_dataset), size=32, presize=40, bs=6),
                         TrainConfig(arch="resnet18", pretrained="none", precision="fp32"))


class ReadEachLoss(Callback):
    """Reads every batch's loss at once: what History must end up with."""

    def __init__(self):
        self.losses = []

    def on_batch_end(self, learn):
        self.losses.append(float(learn.loss.detach()))


def test_history_reads_the_losses_in_bulk_and_misses_none(learn):
    """History keeps each step's loss on the device and reads them in bulk (a read per
    step would make the host wait for the device every step); nothing is lost or reordered,
    mid-epoch (flush_every) or at the epoch's end, and each epoch's train_loss is the mean
    of its own batches."""
    seen = ReadEachLoss()
    learn.cbs.append(seen)
    learn.history.flush_every = 2  # 3 batches an epoch: a flush within, the rest at the end
    learn.fit(2, 1e-3)
    per_epoch = len(learn.dls.train)
    assert per_epoch == 3 and len(seen.losses) == 2 * per_epoch
    assert learn.history.batch_losses == pytest.approx(seen.losses, rel=1e-6)
    for e, row in enumerate(learn.history.rows):
        mine = seen.losses[e * per_epoch:(e + 1) * per_epoch]
        assert row["train_loss"] == pytest.approx(sum(mine) / per_epoch, rel=1e-6)


def test_freeze_keeps_body_except_norm_layers_bit_identical(learn):
    learn.freeze()
    before = {k: v.clone() for k, v in learn.model.body.named_parameters()}
    learn.fit(1, 1e-2)
    norms = norm_params(learn.model.body)  # ids
    changed_norm = 0
    for name, p in learn.model.body.named_parameters():
        if id(p) in norms:
            changed_norm += not torch.equal(p, before[name])
        else:
            assert torch.equal(p, before[name]), name
    assert changed_norm > 0  # BatchNorm stays trainable while frozen


def test_param_groups_get_spread_rates_and_no_decay_on_norms(learn):
    learn.set_lrs(spread_lrs((1e-5, 1e-3), learn.n_groups))
    by_layer = {g["layer"]: g["lr"] for g in learn.opt.param_groups}
    assert by_layer == pytest.approx({0: 1e-5, 1: 1e-4, 2: 1e-3})
    norms = norm_params(learn.model)
    for g in learn.opt.param_groups:
        if any(id(p) in norms for p in g["params"]):
            assert g["weight_decay"] == 0.0
    assert learn.n_groups == 3 and all(len(g) for g in learn.groups)


def test_lr_find_restores_state(learn):
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    res = learn.lr_find(num_it=12)
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(res.lrs) == len(res.losses) >= 3
    assert set(res.suggestions) == {"valley", "slide", "minimum", "steep"}
    assert not learn.opt.state  # the optimiser is as fresh as before


def test_overfits_a_tiny_batch(learn):
    x, y = next(iter(learn.dls.train))
    learn.model.train()
    learn.set_lrs([1e-3] * 3)
    for _ in range(25):
        learn.train_step(x, y)
    assert float(learn.loss.detach()) < 0.2


def test_export_round_trip_gives_identical_logits(learn, tmp_path: Path):
    learn.fit(1, 1e-3)
    learn.model.eval()
    x, _ = next(iter(learn.dls.valid))
    with torch.no_grad():
        ref = learn.model(x)
    save_model(learn.model, tmp_path / "model", {
        "arch": "resnet18", "head": "concat", "classes": list(learn.dls.classes), "size": 32,
        "presize": 40, "resize_method": "crop", "mean": [0.5] * 3, "std": [0.25] * 3,
        "loss": "cross_entropy"})
    model, meta = load_model(tmp_path / "model")
    with torch.no_grad():
        out = model(x.contiguous())
    assert meta["classes"] == ["blue", "green", "red"]
    assert torch.allclose(out, ref, atol=1e-5)
    (tmp_path / "model" / "model.json").write_text("{broken")
    with pytest.raises(ConfigError, match="model.json"):
        load_model(tmp_path / "model")


def test_same_seed_same_metrics(folder_dataset: Path):
    runs = []
    for _ in range(2):
        lr = build_learner(DataConfig(path=str(folder_dataset), size=32, presize=40, bs=6),
                           TrainConfig(pretrained="none", precision="fp32", seed=3))
        lr.fit_one_cycle(1, 1e-3)
        runs.append(lr.history.rows[-1]["valid_loss"])
    assert runs[0] == runs[1]


def test_bad_model_settings_are_clear():
    with pytest.raises(ConfigError, match="did you mean resnet18"):
        check_arch("resnet-18")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="--lr must be a number or one of auto, valley"):
        TrainConfig(lr="fast")
    assert [TrainConfig(lr=v).lr_rule for v in ("auto", "minimum", "3e-3")] == \
        ["auto", "minimum", None]


def test_auto_rate_rule():
    found = {"valley": 4e-4, "slide": 2e-3, "minimum": 4e-3, "steep": 1e-7}
    assert resolve_rule("auto", found, pretrained=False) == "minimum"  # from scratch
    assert resolve_rule("auto", found, pretrained=True) == "valley"  # fine-tuning
    assert resolve_rule("steep", found, pretrained=False) == "steep"  # asked for by name
    # a flat, noisy start: the lowest loss came before the descent, minimum is 1e-8
    flat = {"valley": 1.6e-3, "slide": 2.6e-7, "minimum": 7e-8, "steep": 1e-7}
    assert resolve_rule("auto", flat, pretrained=False) == "valley"


def test_hub_offline_fails_fast_with_a_way_out(monkeypatch: pytest.MonkeyPatch):
    import socket
    import time

    from imageclf.models import create_body

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

    from imageclf.models import create_body

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

    from imageclf.models import create_body

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
    from .conftest import make_folder_dataset

    a = make_folder_dataset(tmp_path / "a", n_train=16, n_valid=4)
    b = make_folder_dataset(tmp_path / "b", n_train=4, n_valid=6,
                            classes=("cyan", "magenta", "yellow"))
    data_a = DataConfig(path=str(a), size=32, presize=40, bs=8)
    pre = build_learner(data_a, TrainConfig(pretrained="none", precision="fp32", seed=1))
    pre.fit_one_cycle(6, 3e-3)
    from imageclf.export import save_model

    save_model(pre.model, tmp_path / "pre" / "model", {
        "arch": "resnet18", "head": "concat", "classes": list(pre.dls.classes), "size": 32,
        "presize": 40, "resize_method": "crop", "mean": [0.5] * 3, "std": [0.25] * 3,
        "loss": "cross_entropy"})
    data_b = DataConfig(path=str(b), size=32, presize=40, bs=6)
    results = {}
    for name, pretrained in (("transfer", str(tmp_path / "pre" / "model")),
                             ("scratch", "none")):
        learn = build_learner(data_b, TrainConfig(pretrained=pretrained, precision="fp32",
                                                  seed=2))
        learn.fine_tune(2, 2e-3, freeze_epochs=1)
        results[name] = learn.history.rows[-1]
    assert results["transfer"]["valid_loss"] < results["scratch"]["valid_loss"], results


def test_compiled_training_matches_eager(folder_dataset: Path):
    """--compile: torch.compile (inductor) runs the training forward, recompiled after
    unfreezing; the run follows the eager one and the model keeps its plain keys."""
    from torch._dynamo.eval_frame import OptimizedModule

    from imageclf.learner import fine_tune_plan

    rows = {}
    for comp in (False, True):
        learn = build_learner(DataConfig(path=str(folder_dataset), size=32, presize=40, bs=6),
                              TrainConfig(arch="test_resnet", head="timm", pretrained="none",
                                          precision="fp32", compile=comp))
        learn.run_plan(fine_tune_plan(1, 1e-3, learn.n_groups))  # frozen, then unfrozen
        assert isinstance(learn.train_model, OptimizedModule) == comp
        assert not any("_orig_mod" in k for k in learn.model.state_dict())
        rows[comp] = learn.history.rows
    assert len(rows[True]) == len(rows[False]) == 2
    for a, b in zip(rows[True], rows[False], strict=True):
        for k in ("train_loss", "valid_loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-4), k


def test_compile_without_a_cpp_compiler_is_refused_early(monkeypatch: pytest.MonkeyPatch):
    import shutil

    from imageclf.learner import check_compiler

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        check_compiler(torch.device("cpu"))
    check_compiler(torch.device("cuda"))  # GPUs compile with Triton: nothing to check here


def test_forced_bf16_without_native_support_warns(monkeypatch: pytest.MonkeyPatch, caplog):
    """auto never picks bf16 where it would run emulated; asked for by hand, it says so."""
    import imageclf.learner as L

    monkeypatch.setattr(L, "native_bf16", lambda device: False)
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"
    with caplog.at_level("WARNING", logger="imageclf.learner"):
        assert resolve_precision("bf16", torch.device("cpu")).name == "bf16"
    assert "no native bf16" in caplog.text
    monkeypatch.setattr(L, "native_bf16", lambda device: True)
    caplog.clear()
    with caplog.at_level("WARNING", logger="imageclf.learner"):
        assert resolve_precision("auto", torch.device("cpu")).name == "bf16"
        resolve_precision("bf16", torch.device("cpu"))
    assert "no native bf16" not in caplog.text


def test_a_tiny_auto_rate_is_reported(folder_dataset: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, caplog):
    """A sweep whose loss never fell: every suggestion is near its 1e-7 start. The run goes
    on at what was asked for, and the log says the rate is suspect and what to do."""
    import imageclf.runs as runs
    from imageclf.learner import LRFindResult

    tiny = {"valley": 2e-7, "slide": 1e-7, "minimum": 1e-8, "steep": 1e-7}
    monkeypatch.setattr(runs, "run_lr_find",
                        lambda learn, out, steps: LRFindResult([1e-7], [1.0], tiny))
    data = DataConfig(path=str(folder_dataset), size=32, presize=40, bs=6)
    train = TrainConfig(pretrained="none", precision="fp32", epochs=0, out=str(tmp_path / "r"))
    with caplog.at_level("WARNING", logger="imageclf.runs"):
        res = runs.train_run(data, train)
    assert res.metrics["lr_rule"] == "valley" and res.metrics["lr"] == 2e-7
    assert "is tiny" in caplog.text and "--lr-find-steps" in caplog.text


def test_fine_tuning_sweeps_the_rate_with_the_body_frozen(folder_dataset: Path,
                                                          tmp_path: Path):
    """fastai's order: lr_find sees the frozen model when fine-tuning (its first phase trains
    at the rate found), the whole model from scratch."""
    import imageclf.runs as runs

    class BodyTrainable(Callback):
        def __init__(self):
            self.seen = []

        def on_batch_end(self, learn):
            self.seen.append(sum(p.numel() for p in learn.model.body.parameters()
                                 if p.requires_grad))

    data = DataConfig(path=str(folder_dataset), size=32, presize=40, bs=6)
    scratch = BodyTrainable()
    runs.train_run(data, TrainConfig(pretrained="none", precision="fp32", epochs=0,
                                     lr_find_steps=10, out=str(tmp_path / "a")), cbs=[scratch])
    tune = BodyTrainable()
    res = runs.train_run(data, TrainConfig(pretrained=str(tmp_path / "a" / "model"),
                                           precision="fp32", epochs=0, freeze_epochs=1,
                                           lr_find_steps=10, out=str(tmp_path / "b")),
                         cbs=[tune])
    n_body = sum(p.numel() for p in create_model("resnet18", 3, "none").body.parameters())
    sweep = len(json.loads((tmp_path / "b" / "lr_find.json").read_text())["lrs"])
    assert scratch.seen and set(scratch.seen) == {n_body}  # every body weight in the sweep
    assert len(tune.seen) > sweep and set(tune.seen[:sweep]) == {max(tune.seen)}
    assert 0 < max(tune.seen) < n_body / 100  # only the norm layers' scales and shifts
    assert res.metrics["lr_rule"] == "valley"


PLAIN = AugConfig(flip_p=0.0, p_affine=0.0, p_lighting=0.0, min_scale=1.0)  # no random draw


def test_accumulated_batches_step_like_one_batch_of_their_size(tmp_path: Path):
    """--accum-steps 2 at bs 8 against bs 16: the same images per step, the same rates per
    step (the schedule counts steps), so the same weights. A LayerNorm model with a plain
    head and no augmentation: nothing differs but the order of sums."""
    from .conftest import make_folder_dataset

    data = make_folder_dataset(tmp_path / "data", n_train=17, n_valid=2)  # 51 train images

    def run(bs: int, accum: int):
        learn = build_learner(DataConfig(path=str(data), size=32, presize=40, bs=bs, aug=PLAIN),
                              TrainConfig(arch="convnext_atto", head="timm", precision="fp32",
                                          accum=accum))
        start = {k: v.clone() for k, v in learn.model.state_dict().items()}
        learn.fit_one_cycle(2, 2e-3)
        return learn, start

    (one, w0), (acc, _) = run(16, 1), run(8, 2)
    assert len(one.dls.train) == 3 and len(acc.dls.train) == 6  # 3 steps an epoch each
    w1, w2 = one.model.state_dict(), acc.model.state_dict()
    diff = sum(float((w1[k] - w2[k]).float().pow(2).sum()) for k in w1) ** 0.5
    norm = sum(float(w1[k].float().pow(2).sum()) for k in w1) ** 0.5
    moved = sum(float((w1[k] - w0[k]).float().pow(2).sum()) for k in w1) ** 0.5
    assert diff / norm < 1e-4 and moved > 100 * diff  # trained, and to the same place
    for a, b in zip(one.history.rows, acc.history.rows, strict=True):
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-3)
    # the epoch's last group may be short: 5 batches of 10 in groups of 2 make 3 steps
    short = build_learner(DataConfig(path=str(data), size=32, presize=40, bs=10, aug=PLAIN),
                          TrainConfig(arch="convnext_atto", head="timm", precision="fp32",
                                      accum=2))
    steps = []
    short.opt.register_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    short.fit_one_cycle(1, 1e-3)
    assert len(short.dls.train) == 5 and len(steps) == 3


def test_a_stop_inside_an_accumulation_group_waits_for_its_step(folder_dataset: Path,
                                                               tmp_path: Path):
    """SIGTERM (as the handler records it) after batch 3 with --accum-steps 2: training
    stops after batch 4, where the group's step is taken and a checkpoint can hold
    everything; resuming ends exactly as a run never stopped."""
    import imageclf.runs as runs
    from imageclf.checkpoint import STOP

    class StopAt(Callback):
        def on_batch_end(self, learn):
            if learn.epochs_done == 0 and learn.batch_in_epoch == 3:
                STOP.requested = "SIGTERM"

    data = DataConfig(path=str(folder_dataset), size=32, presize=40, bs=3)
    train = TrainConfig(pretrained="none", precision="fp32", epochs=2, lr="2e-3", accum=2)
    ref = runs.train_run(data, dataclasses.replace(train, out=str(tmp_path / "ref")))
    with pytest.raises(runs.Interrupted):
        runs.train_run(data, dataclasses.replace(train, out=str(tmp_path / "run")),
                       cbs=[StopAt()])
    info = json.loads((tmp_path / "run" / "checkpoints" / "last.json").read_text())
    assert (info["epoch"], info["batch"]) == (0, 4)
    res = runs.resume_run(tmp_path / "run")
    assert res.metrics["history"] == [
        r | {k: res.metrics["history"][i][k] for k in ("seconds", "img_per_s")}
        for i, r in enumerate(ref.metrics["history"])]
    assert res.metrics["global_batch"] == 6
