"""train --negatives synthetic: images of no class drawn on the fly, the energy-margin loss,
and calibrate's near and far figures."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from imageclf.core.config import DataConfig, TrainConfig
from imageclf.core.errors import ConfigError
from imageclf.data import synthetic
from imageclf.data.dataloaders import DataLoaders
from imageclf.data.negatives import NEGATIVE
from imageclf.model.losses import cross_entropy, energy_margin, with_negatives
from imageclf.openset.scores import best_on_both

from .helpers import ARCH, make_folder_dataset, run_cli
from .test_negatives import make_negatives


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "data", n_train=8, n_valid=4)


def _cfg(data: Path, bs: int = 4, negatives: tuple[str, ...] = ("synthetic",),
         **kw) -> DataConfig:
    return DataConfig.build(path=str(data), size=24, presize=32, bs=bs, negatives=negatives,
                            **kw)


# --- the generators -------------------------------------------------------------------------
@pytest.mark.parametrize("family", synthetic.FAMILIES)
def test_each_family_is_a_function_of_seed_epoch_and_slot(family: str):
    known = torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))

    def one(seed: int, epoch: int, slot: int) -> torch.Tensor:
        return synthetic.draw(family, 48, synthetic.image_generator(seed, epoch, slot), known[1])

    a = one(0, 1, 5)
    assert a.shape == (3, 48, 48) and a.dtype == torch.uint8
    assert torch.equal(a, one(0, 1, 5))  # replayed exactly
    assert not torch.equal(a, one(0, 2, 5))  # another epoch
    assert not torch.equal(a, one(1, 1, 5))  # another seed
    assert not torch.equal(a, one(0, 1, 6))  # another slot
    if family != "fields":  # a flat field may be one colour; the others never are
        assert a.float().std() > 1


def test_shuffle_keeps_the_pixels_and_loses_the_layout():
    img = torch.arange(3 * 48 * 48, dtype=torch.int64).remainder(251).to(torch.uint8)
    img = img.view(3, 48, 48)
    out = synthetic.shuffle(img, synthetic.image_generator(0, 0, 0))
    assert sorted(out.flatten().tolist()) == sorted(img.flatten().tolist())
    assert not torch.equal(out, img)


def test_synthetic_families_are_named_or_refused():
    assert synthetic.parse("synthetic") == synthetic.FAMILIES
    assert synthetic.parse("synthetic:noise,fractal") == ("noise", "fractal")
    assert synthetic.parse("other/synthetic") is None  # a path, not the families
    with pytest.raises(ConfigError, match="unknown synthetic families.*fractal, noise"):
        synthetic.parse("synthetic:fractals")


def test_held_out_families_are_written_the_same_for_a_seed(tmp_path: Path):
    a = synthetic.write_held_out(tmp_path / "a", 3, seed=5)
    b = synthetic.write_held_out(tmp_path / "b", 3, seed=5)
    assert set(a) == set(synthetic.HELD_OUT) and not set(a) & set(synthetic.FAMILIES)
    for family in a:
        assert [p.read_bytes() for p in a[family]] == [p.read_bytes() for p in b[family]]


# --- in the batches -------------------------------------------------------------------------
def test_synthetic_negatives_ride_beside_every_batch_with_no_class(data: Path):
    dls = DataLoaders.from_config(_cfg(data, bs=4, negatives_ratio=0.5))
    assert dls.classes == ("blue", "green", "red")  # never a class
    assert dls.negatives_valid is None  # nothing on disk to hold out
    first = list(dls.train)
    assert len(first) == len(dls.train) == 6
    for x, y in first:
        assert x.shape[0] == 6 and y.tolist()[4:] == [NEGATIVE, NEGATIVE]
        assert all(0 <= v < 3 for v in y.tolist()[:4])
    again = list(dls.train)
    for (x, _), (x2, _) in zip(first, again, strict=True):
        torch.testing.assert_close(x, x2)  # the same epoch: the same images
    dls.train.set_epoch(1)
    assert not torch.equal(list(dls.train)[0][0][4:], first[0][0][4:])


def test_user_and_synthetic_negatives_share_the_slots(data: Path, tmp_path: Path):
    neg = make_negatives(tmp_path / "neg", 15)
    dls = DataLoaders.from_config(_cfg(data, bs=8, negatives=(str(neg), "synthetic")))
    src = dls.train.source
    assert (src.n_files, src.n_synthetic) == (2, 2)
    x, y = next(iter(dls.train))
    assert x.shape[0] == 12 and (y == NEGATIVE).sum() == 4
    assert dls.negatives_valid is not None and dls.negatives_valid.n_items == 3


def test_two_ranks_draw_their_shares_of_one_process_synthetic_batches(data: Path):
    from .test_loader import _interleave

    one = DataLoaders.from_config(_cfg(data, bs=8))
    ranks = [DataLoaders.from_config(_cfg(data, bs=4), rank=r, world_size=2) for r in (0, 1)]
    for d in (one, *ranks):
        d.train.set_epoch(1)
    ref = list(one.train)
    shards = [list(d.train) for d in ranks]
    for b, (x, y) in enumerate(ref):
        assert (y == NEGATIVE).sum() == 2  # 0.25 per known image: synthetic ones alone
        assert torch.equal(_interleave([s[b][1] for s in shards]), y)
        torch.testing.assert_close(_interleave([s[b][0] for s in shards]), x)


def test_resuming_mid_epoch_replays_the_same_synthetic_images(data: Path):
    dls = DataLoaders.from_config(_cfg(data))
    dls.train.set_epoch(2)
    full = list(dls.train)
    dls.train.skip = 2
    rest = list(dls.train)
    for (x, y), (x2, y2) in zip(full[2:], rest, strict=True):
        assert torch.equal(y, y2)
        torch.testing.assert_close(x, x2)


# --- the loss -------------------------------------------------------------------------------
def test_energy_margin_equals_its_hand_worked_value():
    # E = -logsumexp: known (ln 2, ln 2) → E = -ln 4, above m_in = -2 by 2 - ln 4;
    # negatives (0, 0) → E = -ln 2, below m_out = -0.5 by ln 2 - 0.5
    known = torch.full((1, 2), math.log(2.0))
    neg = torch.zeros(1, 2)
    m_in, m_out = -2.0, -0.5
    want = (2 - math.log(4)) ** 2 + (math.log(2) - 0.5) ** 2
    assert float(energy_margin(known, neg, m_in, m_out)) == pytest.approx(want)
    # past both margins, nothing to pay
    assert float(energy_margin(torch.full((2, 2), 5.0), torch.full((3, 2), -5.0), m_in,
                               m_out)) == 0.0
    # in the training loss: the known images' cross-entropy plus weight × the margin term
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, NEGATIVE, 2])
    loss = with_negatives(cross_entropy, 0.1, multi_label=False, kind="energy")
    want = cross_entropy(logits[[0, 2]], y[[0, 2]]) + 0.1 * energy_margin(logits[[0, 2]],
                                                                        logits[[1]])
    assert float(loss(logits, y)) == pytest.approx(float(want))
    e_in = -torch.logsumexp(logits[[0, 2]], 1)
    e_out = -torch.logsumexp(logits[[1]], 1)
    by_hand = (torch.relu(e_in + 7) ** 2).mean() + (torch.relu(-3 - e_out) ** 2).mean()
    assert float(energy_margin(logits[[0, 2]], logits[[1]])) == pytest.approx(float(by_hand))


def test_resume_with_synthetic_negatives_matches_an_uninterrupted_run(data: Path,
                                                                      tmp_path: Path):
    import imageclf.run.runs as runs
    from imageclf.learn.callbacks import Callback
    from imageclf.learn.checkpoint import STOP

    class StopAt(Callback):
        def on_batch_end(self, learn):
            if (learn.progress.epochs_done, learn.progress.batch_in_epoch) == (1, 2):
                STOP.requested = "SIGTERM"

    dcfg = DataConfig.build(path=str(data), size=24, presize=32, bs=6,
                            negatives=("synthetic",))
    tcfg = TrainConfig.build(arch=ARCH, pretrained="none", precision="fp32", epochs=2,
                             lr="2e-3", negatives_loss="energy")
    ref = runs.train_run(dcfg, tcfg.replace(out=str(tmp_path / "ref")))
    with pytest.raises(runs.Interrupted):
        runs.train_run(dcfg, tcfg.replace(out=str(tmp_path / "run")),
                       runs.RunContext(cbs=[StopAt()]))
    res = runs.resume_run(tmp_path / "run")
    assert res.metrics.history == [
        r | {k: res.metrics.history[i][k] for k in ("seconds", "img_per_s")}
        for i, r in enumerate(ref.metrics.history)]
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert meta["negatives"]["sources"] == ["synthetic"]
    assert meta["negatives"]["loss"] == "energy"


# --- calibrate: near and far ----------------------------------------------------------------
def test_a_score_at_chance_far_is_never_picked_while_another_holds():
    near = {"msp": {"auroc": 0.99, "fpr": 0.1}, "energy": {"auroc": 0.8, "fpr": 0.5},
            "scale": {"auroc": 0.7, "fpr": 0.6}}
    far = {"msp": {"auroc": 0.55, "fpr": 0.9}, "energy": {"auroc": 0.91, "fpr": 0.3},
           "scale": {"auroc": 0.97, "fpr": 0.1}}
    assert best_on_both(near, far) == "energy"  # the best near of those that hold far
    rng = np.random.default_rng(0)
    for _ in range(200):  # whatever the figures, never < 0.6 far while one is > 0.9
        names = [f"s{i}" for i in range(5)]
        n = {k: {"auroc": float(rng.uniform(0.4, 1)), "fpr": 0.5} for k in names}
        f = {k: {"auroc": float(rng.uniform(0.3, 1)), "fpr": 0.5} for k in names}
        pick = best_on_both(n, f)
        if max(v["auroc"] for v in f.values()) > 0.9:
            assert f[pick]["auroc"] >= 0.85


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A softmax model trained with user and synthetic negatives (data, negatives, run)."""
    from .test_negatives import train_with_negatives

    return train_with_negatives(tmp_path_factory.mktemp("syn"), 3, "--negatives", "synthetic")


def test_calibrate_prints_near_and_far_for_every_score_and_stores_both(trained, tmp_path):
    from imageclf.model.predict import Predictor
    from imageclf.openset.rule import calibrated_sentence
    from imageclf.serve.app import model_card

    data, neg, run = trained
    model = tmp_path / "model"
    shutil.copytree(run / "model", model)
    r = run_cli("calibrate", str(model), str(data))
    assert r.returncode == 0, r.stderr
    assert "and far: on 300 drawn images of no kind (shapes, textures, lines" in r.stdout
    meta = json.loads((model / "model.json").read_text())
    rule = meta["open_set"]
    assert meta["negatives"]["sources"] == [str(neg.absolute()), "synthetic"]
    near, far = rule["ood"]["scores"], rule["far"]["scores"]
    assert set(near) == set(far) and {"msp", "energy", "scale", "knn"} <= set(near)
    assert rule["far"]["n"] == 300 and rule["far"]["families"] == list(synthetic.HELD_OUT)
    for name in near:  # one row per score: its name, then near and far AUROC and FPR
        row = next(line for line in r.stdout.splitlines() if f" {name} " in f" {line} ")
        cells = [c for c in row.replace("│", " ").split() if c[0].isdigit()]
        assert cells == [f"{near[name]['auroc']:.4f}", f"{near[name]['fpr']:.4f}",
                         f"{far[name]['auroc']:.4f}", f"{far[name]['fpr']:.4f}"]
    assert rule["score"] == best_on_both(near, far)
    sentence = calibrated_sentence(rule)
    share = 1 - far[rule["score"]]["fpr"]
    assert sentence.endswith(f"Of 300 drawn images of no kind (shapes, textures, lines), "
                             f"{share:.0%} are answered none.")
    assert model_card(Predictor(model), model)["none_figure"] == sentence
    # the report shows both sides, and so does the model card
    from imageclf.jobs.card import gather, render
    from imageclf.run.report import build_report

    shutil.copytree(model, run / "model", dirs_exist_ok=True)
    html = build_report(run).read_text()
    assert "near AUROC" in html and "far AUROC" in html and "drawn images of no kind" in html
    card = render(gather(run / "model"))
    assert "near AUROC | near FPR" in card and "far AUROC | far FPR" in card


def test_calibrate_without_unknowns_still_measures_the_default_far(data: Path, tmp_path: Path):
    from .test_negatives import ARGS

    run = tmp_path / "run"
    r = run_cli("train", str(data), *ARGS, "--epochs", "1", "--head", "timm", "--out", str(run),
                "--cache-dir", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    r = run_cli("calibrate", str(run / "model"), str(data))
    assert r.returncode == 0, r.stderr
    assert "far: on 300 drawn images of no kind" in r.stdout
    rule = json.loads((run / "model" / "model.json").read_text())["open_set"]
    assert rule["ood"] is None and set(rule["far"]["scores"]) == {rule["score"]}


def test_an_unknown_synthetic_family_is_a_clear_error(data: Path, tmp_path: Path):
    from .test_negatives import ARGS

    r = run_cli("train", str(data), *ARGS, "--epochs", "1", "--negatives",
                "synthetic:fractal,stars", "--out", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    assert "unknown synthetic families ['stars']" in r.stderr and "Traceback" not in r.stderr
