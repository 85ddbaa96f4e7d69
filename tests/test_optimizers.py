"""--opt adamw|ranger|sgd, --schedule flat_cos, and the architectures imageclf registers."""

import json
import math
from pathlib import Path

import pytest
import timm
import torch

from imageclf.core.config import DataConfig, TrainConfig
from imageclf.core.errors import ConfigError
from imageclf.learn.callbacks import Callback
from imageclf.learn.optim import make_optimizer
from imageclf.learn.schedules import FLAT_PCT, Phase, flat_cos_lr, shaped
from imageclf.model.classifier import create_model

from .helpers import ARCH


class Rates(Callback):
    """The first group's rate and momentum at every optimiser step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.moms: list[float] = []

    def on_batch_end(self, learn) -> None:
        g = learn.opt.param_groups[0]
        self.lrs.append(g["lr"])
        self.moms.append(g["betas"][0] if "betas" in g else g["momentum"])


def test_flat_cos_by_hand():
    assert flat_cos_lr(0.0, 1e-2) == 1e-2 and flat_cos_lr(0.72, 1e-2, pct_start=0.72) == 1e-2
    assert math.isclose(flat_cos_lr(1.0, 1e-2), 1e-7)
    # halfway down the cosine: halfway between lr_max and lr_max / div_final
    assert math.isclose(flat_cos_lr(0.86, 1.0, pct_start=0.72), (1 + 1e-5) / 2)
    plan = [Phase(1, [1.0], 0.99, frozen=True), Phase(3, [1.0], 0.3, frozen=False),
            Phase(1, [1.0], constant=True)]
    got = shaped(plan, "flat_cos")
    assert [(p.shape, p.pct_start) for p in got] == [
        ("flat_cos", 0.99), ("flat_cos", FLAT_PCT), ("one_cycle", 0.25)]
    assert shaped(plan, "one_cycle") == plan


def test_optimizers_come_from_timm_with_their_settings():
    w = torch.nn.Parameter(torch.ones(3))
    groups = [{"params": [w], "weight_decay": 0.1, "layer": 0}]
    ranger = make_optimizer("ranger", groups, torch.device("cpu"))
    assert type(ranger).__name__ == "Lookahead"
    g = ranger.param_groups[0]
    assert g["betas"] == (0.95, 0.99) and g["eps"] == 1e-6 and g["weight_decay"] == 0.1
    assert g["lookahead_k"] == 6 and g["lookahead_alpha"] == 0.5 and g["layer"] == 0
    sgd = make_optimizer("sgd", [{"params": [w], "layer": 0}], torch.device("cpu"))
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9
    held = [make_optimizer(n, [{"params": [w], "layer": 0}], torch.device("cpu"), mom=0.8)
            for n in ("adamw", "ranger", "sgd")]
    assert [o.param_groups[0].get("betas", (o.param_groups[0].get("momentum"),))[0]
            for o in held] == [0.8, 0.8, 0.8]
    with pytest.raises(ConfigError, match="--opt"):
        make_optimizer("lamb", groups, torch.device("cpu"))


def test_the_mini_net_is_timm_s_own_byobnet_and_exports(tmp_path: Path):
    assert all(timm.is_model(n) for n in ("xse_resnext_mini", "xse_resnext_mini_mish",
                                          "xse_resnext_mini_fastai",
                                          "xse_resnext_mini_xresnet",
                                          "xse_resnext_mini_xresnet_blur",
                                          "xse_resnext_mini_xresnet_mish",
                                          "xse_resnext_mini_xresnet_sa"))
    model = create_model("xse_resnext_mini", 4, "none", "timm")
    assert type(model.body).__name__ == "ByobNet"
    convs = [m for m in model.body.stages.modules() if isinstance(m, torch.nn.Conv2d)]
    assert {c.groups for c in convs} >= {64}  # the grouped 3x3 convolutions
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4)
    with pytest.raises(ValueError, match="no hub weights"):
        timm.create_model("xse_resnext_mini", pretrained=True)


def test_the_fastai_built_mini_net_keeps_its_own_init():
    """Stem 32-32-64, SE with the net's SiLU, He fan-in weights and each block's last norm
    at zero, even though imageclf asks timm for zero_init_last=False."""
    body = create_model("xse_resnext_mini_fastai", 4, "none", "timm").body
    stem = [m.out_channels for m in body.stem.modules() if isinstance(m, torch.nn.Conv2d)]
    assert stem == [32, 32, 64]
    blocks = [m for m in body.stages.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 4
    for b in blocks:
        assert torch.count_nonzero(b.conv2_kxk.bn.weight) == 0
        assert isinstance(b.attn_last.act, torch.nn.SiLU)
        w = b.conv1_kxk.conv.weight  # dense 3x3: fan-in = in_channels * 9
        fan_in = w.shape[1] * 9
        assert abs(w.std().item() - math.sqrt(2 / fan_in)) < 0.1 * math.sqrt(2 / fan_in)
    # timm's ByobNet draws on fan-out instead: 2x smaller here (256 out vs 64 in)
    timm_w = create_model("xse_resnext_mini", 4, "none", "timm").body.stages[0][0]
    assert timm_w.conv1_kxk.conv.weight.std() < 0.6 * blocks[0].conv1_kxk.conv.weight.std()


def test_the_xresnet_mini_net_puts_the_groups_first_as_fastai_does():
    """fastai's XResNet cuts the block's widening convolution into groups and keeps the
    second dense; timm's ByobNet does the opposite, which halves the weights."""
    body = create_model("xse_resnext_mini_xresnet", 10, "none", "timm").body
    blocks = [m for m in body.stages.modules() if type(m).__name__ == "GroupsFirstBlock"]
    assert len(blocks) == 4
    for b in blocks:
        first, second = b.conv1_kxk.conv, b.conv2_kxk.conv
        assert first.groups == 64 and second.groups == 1
        assert first.out_channels == 4 * second.out_channels  # the 4x-wide middle
        assert torch.count_nonzero(b.conv2_kxk.bn.weight) == 0
    assert [m.out_channels for m in body.stem.modules()
            if isinstance(m, torch.nn.Conv2d)] == [32, 32, 64]
    # fastai 2.8's XResNet(SEResNeXtBlock, 1, [1, 1, 1, 1], groups=64, reduction=8) with a
    # 512-to-10 linear head counts 12,938,274 weights; the body here plus that head:
    n = sum(p.numel() for p in body.parameters()) + 512 * 10 + 10
    assert n == 12_938_274
    timm_body = create_model("xse_resnext_mini_fastai", 10, "none", "timm").body
    assert sum(p.numel() for p in timm_body.parameters()) < 0.55 * n
    x = torch.randn(2, 3, 64, 64)
    assert body.eval()(x).shape[:2] == (2, 512)
    # the record's own Mish, the squeeze-excitation's included, and the same weights
    mish = create_model("xse_resnext_mini_xresnet_mish", 10, "none", "timm").body
    acts = {type(m).__name__ for m in mish.modules()} & {"Mish", "SiLU", "ReLU"}
    assert acts == {"Mish"}
    assert ([(k, p.shape) for k, p in mish.named_parameters()]
            == [(k, p.shape) for k, p in body.named_parameters()])


def _train(data: Path, tmp: Path, name: str, **kw):
    from imageclf.run import runs

    cfg = DataConfig.build(path=str(data), size=32, presize=40, bs=4,
                           cache_dir=str(tmp / "cache"))
    train = TrainConfig.build(arch=ARCH, pretrained="none", precision="fp32",
                              epochs=2, lr="1e-2", out=str(tmp / name), **kw)
    rates = Rates()
    return runs.train_run(cfg, train, runs.RunContext(cbs=[rates])), rates


def test_ranger_flat_cos_follows_the_schedule_and_resumes_exactly(tmp_path: Path):
    """The rate is flat for 72% of the steps then falls, momentum stays at ranger's 0.95;
    a stop mid-run (Lookahead's slow weights in the checkpoint) resumes to the same end."""
    from imageclf.learn.checkpoint import STOP
    from imageclf.run import runs

    from .helpers import make_folder_dataset

    data = make_folder_dataset(tmp_path / "data", n_train=8, n_valid=2)  # 24 images: 6 steps
    ref, rates = _train(data, tmp_path, "ref", opt="ranger", lr_schedule="flat_cos")
    n = len(rates.lrs)
    flat = math.ceil(FLAT_PCT * n)
    assert rates.lrs[:flat] == [1e-2] * flat and rates.lrs[-1] < rates.lrs[flat] < 1e-2
    assert set(rates.moms) == {0.95}
    plan = json.loads((tmp_path / "ref" / "checkpoints" / "last.json").read_text())["plan"]
    assert plan[0]["shape"] == "flat_cos"

    class StopAt(Callback):
        def on_batch_end(self, learn):
            if (learn.progress.epochs_done, learn.progress.batch_in_epoch) == (0, 4):
                STOP.requested = "SIGTERM"

    cfg = DataConfig.build(path=str(data), size=32, presize=40, bs=4,
                           cache_dir=str(tmp_path / "cache"))
    train = TrainConfig.build(arch=ARCH, pretrained="none", precision="fp32",
                              epochs=2, lr="1e-2", opt="ranger", lr_schedule="flat_cos",
                              out=str(tmp_path / "run"))
    with pytest.raises(runs.Interrupted):
        runs.train_run(cfg, train, runs.RunContext(cbs=[StopAt()]))
    res = runs.resume_run(tmp_path / "run")
    keys = ("seconds", "img_per_s")
    assert [{k: v for k, v in r.items() if k not in keys} for r in res.metrics.history] == [
        {k: v for k, v in r.items() if k not in keys} for r in ref.metrics.history]


def test_mom_is_held_by_flat_cos_kept_by_the_run_and_refused_by_one_cycle(tmp_path: Path):
    """--mom 0.9 (the leaderboard record's ranger momentum): beta1 at every step, and in
    the run's config.json, so that a resumed run builds the same optimiser. one_cycle
    cycles the momentum itself, so --mom with it is a clear error."""
    from imageclf.core.config import read_settings

    from .helpers import make_folder_dataset, run_cli

    data = make_folder_dataset(tmp_path / "data", n_train=8, n_valid=2)
    _, rates = _train(data, tmp_path, "mom", opt="ranger", lr_schedule="flat_cos", mom=0.9)
    assert len(rates.moms) == 12 and set(rates.moms) == {0.9}
    saved = json.loads((tmp_path / "mom" / "config.json").read_text())
    assert read_settings(saved, "config.json")[1].optim.mom == 0.9
    r = run_cli("train", str(data), "--arch", ARCH, "--pretrained", "none", "--mom", "0.9",
                "--epochs", "1", "--out", str(tmp_path / "refused"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--mom (mom in OptimConfig) is held only by --schedule flat_cos" in r.stderr
    assert not (tmp_path / "refused").exists()


def test_sgd_one_cycle_cycles_the_momentum(tmp_path: Path):
    from .helpers import make_folder_dataset

    data = make_folder_dataset(tmp_path / "data", n_train=8, n_valid=2)
    _, rates = _train(data, tmp_path, "sgd", opt="sgd")
    assert min(rates.moms) < 0.9 < max(rates.moms)  # one-cycle's 0.95 → 0.85 → 0.95
    assert max(rates.lrs) == pytest.approx(1e-2, rel=0.05)


def test_the_blur_stem_net_is_the_xresnet_net_with_an_anti_aliased_pool():
    """`xse_resnext_mini_xresnet_blur` keeps every weight of the record's net and only
    swaps the stem's stride-2 max-pool for a stride-1 max-pool and a stride-2 blur, so a
    one-pixel shift of the stem's output moves what the first stage reads less."""
    blur = create_model("xse_resnext_mini_xresnet_blur", 10, "none", "timm").body
    plain = create_model("xse_resnext_mini_xresnet", 10, "none", "timm").body
    assert ([(n, p.shape) for n, p in blur.named_parameters()]
            == [(n, p.shape) for n, p in plain.named_parameters()])
    max_pool, low_pass = blur.stem.pool
    assert max_pool.stride == 1 and type(low_pass).__name__ == "BlurPool2d"
    x = torch.rand(4, 64, 32, 32, generator=torch.Generator().manual_seed(0))

    def moved(pool):
        y, shifted = pool(x), pool(torch.roll(x, 1, dims=3))
        return ((y - shifted)[..., 2:-2].abs().mean() / y.abs().mean()).item()

    assert moved(blur.stem.pool) < 0.75 * moved(plain.stem.pool)  # 0.033 against 0.053
    assert blur.eval()(torch.randn(2, 3, 64, 64)).shape[:2] == (2, 512)


def test_the_self_attention_net_adds_fastais_simple_self_attention_to_the_first_stage():
    """`xse_resnext_mini_xresnet_sa` is the record's net plus fastai's SimpleSelfAttention
    after the first stage's squeeze-excitation: 64 x 64 weights and a gamma, starting as
    the identity, then gamma * (x x^T)(W x) + x with W spectrally normalised, every output
    position reading every input position."""
    from imageclf.model.archs import SimpleSelfAttention
    sa_net = create_model("xse_resnext_mini_xresnet_sa", 10, "none", "timm").body
    plain = dict(create_model("xse_resnext_mini_xresnet", 10, "none", "timm").body
                 .named_parameters())
    extra = {n: p.shape for n, p in sa_net.named_parameters()
             if n.replace("attn_last.0.", "attn_last.") not in plain}
    assert extra == {"stages.0.0.attn_last.1.gamma": (1,),
                     "stages.0.0.attn_last.1.conv.parametrizations.weight.original": (64, 64, 1)}
    sa = sa_net.stages[0][0].attn_last[1]
    assert isinstance(sa, SimpleSelfAttention) and sa.gamma.item() == 0
    x = torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sa(x), x)  # the identity until gamma moves
    with torch.no_grad():
        sa.gamma.fill_(0.01)
        for _ in range(20):  # power iterations settle the spectral norm
            sa.train()(x)
        sa.eval()
        w = sa.conv.weight.squeeze(-1)
        assert torch.linalg.matrix_norm(w, 2).item() == pytest.approx(1.0, rel=0.02)
        flat = x.flatten(2)
        want = 0.01 * (flat @ flat.transpose(1, 2)) @ (w @ flat) + flat
        assert torch.allclose(sa(x), want.view_as(x), rtol=1e-4, atol=1e-4)
        far = x.clone()
        far[:, :, 7, 7] += 1.0  # one corner changed: the opposite corner's output moves
        assert (sa(far) - sa(x))[:, :, 0, 0].abs().max() > 1e-3


def test_the_self_attention_net_exports_and_loads_with_identical_logits(tmp_path: Path):
    """The spectral norm's state (its weight and power-iteration vectors) goes through
    model.safetensors and timm's rebuild of the name."""
    from imageclf.core.modelmeta import ModelMeta
    from imageclf.model.export import save_model
    from imageclf.model.folder import load_model
    model = create_model("xse_resnext_mini_xresnet_sa", 3, "none", "timm")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)  # the zero-started norms would hide the attention
        model.body.stages[0][0].attn_last[1].gamma.fill_(1e-4)
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        model.train()(x)  # one power iteration away from the built state
        ref = model.eval()(x)
    meta = ModelMeta(arch=model.arch, head=model.head_kind, classes=("a", "b", "c"), size=64,
                     presize=64, resize_method="crop", mean=(0.5, 0.5, 0.5),
                     std=(0.25, 0.25, 0.25), loss="cross_entropy")
    save_model(model, tmp_path / "model", meta)
    loaded, _ = load_model(tmp_path / "model")
    with torch.no_grad():
        assert torch.allclose(loaded(x), ref, atol=1e-5)
