"""The Learner: freeze, parameter groups, lr_find, the loop, accumulation, compile."""

from pathlib import Path

import pytest
import torch

from imageclf.core.config import AugConfig, DataConfig, TrainConfig
from imageclf.learn.schedules import spread_lrs
from imageclf.model.classifier import norm_params
from imageclf.run.runs import build_learner

from .helpers import ARCH


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
    learn.fit(1, 1e-3)  # counters and history with something in them
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    progress, rows = learn.progress.copy(), list(learn.history.rows)
    learn.opt.state.clear()
    res = learn.lr_find(num_it=12)
    assert learn.progress == progress and learn.history.rows == rows
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


def test_same_seed_same_metrics(folder_dataset: Path):
    runs = []
    for _ in range(2):
        lr = build_learner(DataConfig.build(path=str(folder_dataset), size=32, presize=40, bs=6),
                           TrainConfig.build(arch=ARCH, pretrained="none", precision="fp32"))
        lr.fit_one_cycle(1, 1e-3)
        runs.append(lr.history.rows[-1]["valid_loss"])
    assert runs[0] == runs[1]


@pytest.mark.slow  # compiling takes half a minute on 2 cores
def test_compiled_training_matches_eager(folder_dataset: Path, monkeypatch: pytest.MonkeyPatch):
    """--compile: torch.compile (inductor) runs the training forward, recompiled after
    unfreezing; the run follows the eager one and the model keeps its plain keys."""
    import torch._inductor.config
    from torch._dynamo.eval_frame import OptimizedModule

    # scalar C++ kernels: what is checked here is how the learner wraps, recompiles and
    # unwraps, not inductor's vector code, and they compile 1.7x faster (27 s, not 47 s)
    monkeypatch.setattr(torch._inductor.config.cpp, "vec_isa_ok", False)

    from imageclf.learn.schedules import fine_tune_plan

    rows = {}
    for comp in (False, True):
        learn = build_learner(DataConfig.build(path=str(folder_dataset), size=32, presize=40, bs=6),
                              TrainConfig.build(arch="test_resnet", head="timm", pretrained="none",
                                          precision="fp32", compile=comp))
        learn.run_plan(fine_tune_plan(1, 1e-3, learn.n_groups))  # frozen, then unfrozen
        assert isinstance(learn.train_model, OptimizedModule) == comp
        assert not any("_orig_mod" in k for k in learn.model.state_dict())
        rows[comp] = learn.history.rows
    assert len(rows[True]) == len(rows[False]) == 2
    for a, b in zip(rows[True], rows[False], strict=True):
        for k in ("train_loss", "valid_loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-4), k


PLAIN = AugConfig(flip_p=0.0, p_affine=0.0, p_lighting=0.0, min_scale=1.0)  # no random draw


def test_accumulated_batches_step_like_one_batch_of_their_size(tmp_path: Path):
    """--accum-steps 2 at bs 8 against bs 16: the same images per step, the same rates per
    step (the schedule counts steps), so the same weights. A LayerNorm model with a plain
    head and no augmentation: nothing differs but the order of sums."""
    from .helpers import make_folder_dataset

    data = make_folder_dataset(tmp_path / "data", n_train=17, n_valid=2)  # 51 train images

    def run(bs: int, accum: int):
        learn = build_learner(DataConfig.build(path=str(data), size=32, presize=40, bs=bs,
                                               aug=PLAIN),
                              TrainConfig.build(arch="convnext_atto", head="timm",
                                                precision="fp32", accum_steps=accum))
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
    short = build_learner(DataConfig.build(path=str(data), size=32, presize=40, bs=10, aug=PLAIN),
                          TrainConfig.build(arch="convnext_atto", head="timm", precision="fp32",
                                      accum_steps=2))
    steps = []
    short.opt.register_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    short.fit_one_cycle(1, 1e-3)
    assert len(short.dls.train) == 5 and len(steps) == 3


def test_spread_lrs():
    assert spread_lrs((1e-4, 1e-2), 3) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert spread_lrs(3e-3, 3) == [3e-3] * 3


def test_clip_grad_caps_the_gradients_global_norm(folder_dataset: Path):
    """--clip-grad: at each step the optimiser sees gradients of global norm at most the
    setting's; without it they are left as they are (here well above it)."""
    from imageclf.learn.callbacks import Callback

    class Norms(Callback):
        def __init__(self) -> None:
            self.seen: list[float] = []

        def on_step_start(self, learn) -> None:
            grads = [p.grad for p in learn.model.parameters() if p.grad is not None]
            self.seen.append(float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    def norms(clip: float | None) -> list[float]:
        learn = build_learner(DataConfig.build(path=str(folder_dataset), size=32, presize=40,
                                               bs=6),
                              TrainConfig.build(arch=ARCH, pretrained="none", precision="fp32",
                                                clip_grad=clip))
        rec = Norms()
        learn.cbs.append(rec)
        learn.fit(1, 1e-3)
        return rec.seen

    free, clipped = norms(None), norms(0.01)
    assert max(free) > 0.05 and all(n <= 0.01 * 1.001 for n in clipped)
