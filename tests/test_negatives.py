"""train --negatives: images of no class, trained toward no class (outlier exposure), their
held-out part measured and used by calibrate."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from imageclf.core.config import DataConfig, TrainConfig
from imageclf.core.errors import ConfigError, DataError
from imageclf.data.dataloaders import DataLoaders
from imageclf.data.negatives import NEGATIVE, negative_set
from imageclf.data.sampling import negative_order
from imageclf.model.losses import cross_entropy, uniform_cross_entropy, with_negatives

from .helpers import ARCH, COLOURS, make_folder_dataset, run_cli, solid

NEG_COLOURS = ("yellow", "magenta", "cyan")


def make_negatives(root: Path, n: int = 12) -> Path:
    """A flat folder of images of none of the known colours."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        solid(COLOURS[NEG_COLOURS[i % 3]], seed=100 + i).save(root / f"n{i:02d}.jpg")
    return root


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "data", n_train=8, n_valid=4)


@pytest.fixture
def negatives(tmp_path: Path) -> Path:
    return make_negatives(tmp_path / "neg", 15)


def _cfg(data: Path, negatives: Path, bs: int = 4, **kw) -> DataConfig:
    return DataConfig.build(path=str(data), size=24, presize=32, bs=bs,
                            negatives=(str(negatives),), **kw)


# --- the loss ----------------------------------------------------------------------------
def test_uniform_target_loss_equals_its_hand_worked_value():
    # softmax of (0, ln 3) is (1/4, 3/4): the cross-entropy from (1/2, 1/2) is
    # (ln 4 + ln 4/3) / 2
    z = torch.tensor([[0.0, math.log(3.0)]])
    assert float(uniform_cross_entropy(z)) == pytest.approx((math.log(4) + math.log(4 / 3)) / 2)
    # equal logits: the lowest value, ln C
    assert float(uniform_cross_entropy(torch.zeros(2, 5))) == pytest.approx(math.log(5))


def test_the_loss_adds_the_weighted_term_of_the_negatives_to_the_known_loss():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, NEGATIVE, 2])
    loss = with_negatives(cross_entropy, 0.25, multi_label=False)
    want = cross_entropy(logits[[0, 2]], y[[0, 2]]) + 0.25 * uniform_cross_entropy(logits[[1]])
    assert float(loss(logits, y)) == pytest.approx(float(want))
    assert float(loss(logits[[0, 2]], y[[0, 2]])) == pytest.approx(
        float(cross_entropy(logits[[0, 2]], y[[0, 2]])))  # validation: the known loss alone
    # multi-label: a negative's row is all NEGATIVE, its target no label at all
    from imageclf.model.losses import bce_multi_label

    t = torch.tensor([[1.0, 0.0, 0.0], [-1.0, -1.0, -1.0], [0.0, 0.0, 1.0]])
    ml = with_negatives(bce_multi_label, 2.0, multi_label=True)
    want = bce_multi_label(logits[[0, 2]], t[[0, 2]]) + 2.0 * bce_multi_label(
        logits[[1]], torch.zeros(1, 3))
    assert float(ml(logits, t)) == pytest.approx(float(want))


# --- which negatives, where --------------------------------------------------------------
def test_each_negative_comes_round_once_before_any_comes_twice():
    which = negative_order(7, 3, 5, seed=1, epoch=0)
    flat = which.flatten()
    assert which.shape == (5, 3)
    assert sorted(flat[:7]) == list(range(7)) and sorted(flat[7:14]) == list(range(7))
    assert np.array_equal(which, negative_order(7, 3, 5, seed=1, epoch=0))  # replayed
    assert not np.array_equal(which, negative_order(7, 3, 5, seed=1, epoch=1))
    # two ranks share out exactly the one-process draws of twice the batch
    one = negative_order(7, 4, 5, seed=1, epoch=0)
    r0, r1 = (negative_order(7, 2, 5, seed=1, epoch=0, rank=r, world_size=2) for r in (0, 1))
    assert np.array_equal(one[:, 0::2], r0) and np.array_equal(one[:, 1::2], r1)


def test_negatives_ride_beside_every_training_batch_with_no_class(data: Path,
                                                                  negatives: Path):
    dls = DataLoaders.from_config(_cfg(data, negatives, bs=4, negatives_ratio=0.5))
    assert dls.classes == ("blue", "green", "red")  # a negative is never a class
    assert dls.negatives is not None
    assert len(dls.negatives.train) == 12 and len(dls.negatives.valid) == 3  # 20% held out
    batches = list(dls.train)
    assert len(batches) == len(dls.train) == 6  # the known images set the epoch's length
    for x, y in batches:
        assert x.shape[0] == 6 and y.tolist()[4:] == [NEGATIVE, NEGATIVE]
        assert all(0 <= v < 3 for v in y.tolist()[:4])
    # held-out negatives: their own validation loader; the known validation is unchanged
    assert dls.negatives_valid is not None and dls.negatives_valid.n_items == 3
    assert sum(len(y) for _, y in dls.valid) == 12


def test_two_ranks_with_negatives_see_one_process_batches(data: Path, negatives: Path):
    from .test_loader import _interleave

    one = DataLoaders.from_config(_cfg(data, negatives, bs=8))
    ranks = [DataLoaders.from_config(_cfg(data, negatives, bs=4), rank=r, world_size=2)
             for r in (0, 1)]
    for d in (one, *ranks):
        d.train.set_epoch(1)
    ref = list(one.train)
    shards = [list(d.train) for d in ranks]
    for b, (x, y) in enumerate(ref):
        assert (y == NEGATIVE).sum() == 4
        assert torch.equal(_interleave([s[b][1] for s in shards]), y)
        torch.testing.assert_close(_interleave([s[b][0] for s in shards]), x)


def test_resuming_mid_epoch_replays_the_same_negatives(data: Path, negatives: Path):
    dls = DataLoaders.from_config(_cfg(data, negatives, sampler="balanced"))
    dls.train.set_epoch(2)
    full = list(dls.train)
    dls.train.skip = 2
    rest = list(dls.train)
    assert len(rest) == len(full) - 2
    for (x, y), (x2, y2) in zip(full[2:], rest, strict=True):
        assert torch.equal(y, y2)
        torch.testing.assert_close(x, x2)


def test_negative_sources_and_their_splits(tmp_path: Path):
    split = tmp_path / "split"
    for part, n in (("train", 4), ("valid", 2)):
        make_negatives(split / part / "other", n)  # sub-folders: labels ignored
    csv = tmp_path / "neg.csv"
    flat = make_negatives(tmp_path / "flat", 5)
    csv.write_text("file,label,is_valid\n" + "".join(
        f"flat/n{i:02d}.jpg,other,{int(i == 0)}\n" for i in range(5)))
    found = negative_set((str(split), str(csv)))
    assert len(found.train) == 4 + 4 and len(found.valid) == 2 + 1
    assert flat / "n00.jpg" in found.valid
    with pytest.raises(ConfigError, match="--negatives .*nowhere is not a folder"):
        negative_set((str(tmp_path / "nowhere"),))
    with pytest.raises(DataError, match="no held-out"):
        negative_set((str(make_negatives(tmp_path / "one", 1)),))


def test_negatives_with_mixup_is_refused_before_any_work(data: Path, negatives: Path,
                                                         tmp_path: Path):
    r = run_cli("train", str(data), "--negatives", str(negatives), "--mixup", "0.4",
                "--pretrained", "none", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "--negatives cannot be combined with --mixup" in r.stderr
    assert "Traceback" not in r.stderr


# --- trained ------------------------------------------------------------------------------
ARGS = ["--arch", ARCH, "--pretrained", "none", "--size", "32", "--presize", "40", "--bs", "8",
        "--lr", "3e-3", "--precision", "fp32", "--seed", "3"]


@pytest.mark.slow
def test_a_multi_label_model_trained_with_negatives_answers_none_for_them(
        tmp_path: Path):
    data = make_folder_dataset(tmp_path / "data", n_train=12, n_valid=4)
    neg = make_negatives(tmp_path / "neg", 24)
    run = tmp_path / "run"
    r = run_cli("train", str(data), *ARGS, "--epochs", "12", "--multi-label", "--negatives",
                str(neg), "--negatives-weight", "1", "--out", str(run))
    assert r.returncode == 0, r.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["negatives_auroc"] > 0.9 and "negatives_none" in m
    held = list(negative_set((str(neg),)).valid)
    r = run_cli("predict", str(run / "model"), *map(str, held), "--json")
    answers = [json.loads(line)["labels"] for line in r.stdout.splitlines()]
    assert answers and all(a == ["none"] for a in answers), answers  # no label passes 0.5
    r = run_cli("predict", str(run / "model"), str(data / "valid"), "--json")
    known = [json.loads(line)["labels"] for line in r.stdout.splitlines()]
    assert sum(a != ["none"] for a in known) >= 0.9 * len(known)


def train_with_negatives(tmp: Path, epochs: int, *extra: str) -> tuple[Path, Path, Path]:
    """A softmax model (timm's head) trained from the command line with a folder of
    negatives and `extra` flags: (data, negatives, run)."""
    data = make_folder_dataset(tmp / "data", n_train=10, n_valid=4)
    neg = make_negatives(tmp / "neg", 20)
    run = tmp / "run"
    r = run_cli("train", str(data), *ARGS, "--epochs", str(epochs), "--negatives", str(neg),
                *extra, "--head", "timm", "--out", str(run), "--cache-dir", str(tmp / "cache"))
    assert r.returncode == 0, r.stderr
    return data, neg, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A softmax model trained with negatives (data, negatives, run)."""
    return train_with_negatives(tmp_path_factory.mktemp("neg"), 4)


def test_negatives_never_get_a_class_in_any_output(trained):
    data, neg, run = trained
    model = json.loads((run / "model" / "model.json").read_text())
    assert model["classes"] == ["blue", "green", "red"]
    # the command line draws synthetic negatives beside them by default
    assert model["negatives"]["sources"] == [str(neg.absolute()), "synthetic"]
    assert model["negatives"]["loss"] == "energy" and model["negatives"]["weight"] == 0.05
    assert model["negatives"]["n_train"] == 16 and model["negatives"]["n_valid"] == 4
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["class_counts"]["train"]) == {"blue", "green", "red"}
    assert "negatives_none" in m["history"][-1] and 0 <= m["negatives_none"] <= 1
    interp = json.loads((run / "interpretation.json").read_text())
    assert str(neg) not in json.dumps(interp)


def test_calibrate_without_ood_uses_the_held_out_negatives_and_says_so(trained, tmp_path):
    import shutil

    data, neg, run = trained
    model = tmp_path / "model"
    shutil.copytree(run / "model", model)
    r = run_cli("calibrate", str(model), str(data))
    assert r.returncode == 0, r.stderr
    assert f"on 4 unknown images from the held-out negatives of {neg.absolute()} (no --ood " \
           "given)" in r.stdout
    meta = json.loads((model / "model.json").read_text())
    ood = meta["open_set"]["ood"]
    assert ood["negatives"] is True and ood["n"] == 4
    assert {"vim", "ash", "scale", "msp+vim"} <= set(ood["scores"])  # timm's linear head
    # the figure a person reads, as the page's card shows it
    from imageclf.model.predict import Predictor
    from imageclf.openset.rule import calibrated_sentence
    from imageclf.serve.app import model_card

    sentence = calibrated_sentence(meta["open_set"])
    assert sentence.startswith("Of images like the 4 unknowns it was calibrated on")
    assert "while 5% of known images are" in sentence
    assert model_card(Predictor(model), model)["none_figure"] == sentence
    # evaluate --ood: the same kind of sentence, from what the rule answered there
    r = run_cli("evaluate", str(model), str(data), "--ood", str(neg), "--json")
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)["open_set"]
    share = 1 - found["unknown_accepted"] / found["n_unknown"]
    assert found["none_figure"].startswith(f"Of images like these 20 unknowns, {share:.0%} "
                                           "are answered none, while ")
    # negatives that have gone: calibrate says what to do instead
    moved = tmp_path / "moved"
    shutil.copytree(neg, moved)
    shutil.rmtree(neg)
    try:
        r = run_cli("calibrate", str(model), str(data))
        assert r.returncode == 2 and "--negatives" in r.stderr and "--ood" in r.stderr
    finally:
        shutil.copytree(moved, neg)


def test_resume_with_negatives_matches_an_uninterrupted_run(data: Path, negatives: Path,
                                                            tmp_path: Path):
    """Stopped mid-epoch (as SIGTERM's handler records it), then resumed: the same history,
    negatives' rejection figures included, as the run never stopped."""
    import imageclf.run.runs as runs
    from imageclf.learn.callbacks import Callback
    from imageclf.learn.checkpoint import STOP

    class StopAt(Callback):
        def on_batch_end(self, learn):
            if (learn.progress.epochs_done, learn.progress.batch_in_epoch) == (1, 2):
                STOP.requested = "SIGTERM"

    dcfg = DataConfig.build(path=str(data), size=24, presize=32, bs=6,
                            negatives=(str(negatives),), sampler="balanced")
    tcfg = TrainConfig.build(arch=ARCH, pretrained="none", precision="fp32", epochs=2, lr="2e-3")
    ref = runs.train_run(dcfg, tcfg.replace(out=str(tmp_path / "ref")))
    with pytest.raises(runs.Interrupted):
        runs.train_run(dcfg, tcfg.replace(out=str(tmp_path / "run")),
                       runs.RunContext(cbs=[StopAt()]))
    res = runs.resume_run(tmp_path / "run")
    assert "negatives_none" in ref.metrics.history[-1]
    assert res.metrics.history == [
        r | {k: res.metrics.history[i][k] for k in ("seconds", "img_per_s")}
        for i, r in enumerate(ref.metrics.history)]


def test_show_batch_titles_the_negatives_as_none(data: Path, negatives: Path,
                                                 tmp_path: Path):
    from imageclf.data.show import NEGATIVE_TITLE, show_batch

    dls = DataLoaders.from_config(_cfg(data, negatives, bs=8))
    fig = show_batch(dls, tmp_path / "batch.png", n=8)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles.count(NEGATIVE_TITLE) == 2  # a quarter of the grid
    assert set(titles) - {NEGATIVE_TITLE} <= {"blue", "green", "red"}
    assert (tmp_path / "batch.png").stat().st_size > 0
