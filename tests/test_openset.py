"""The open-set scores and the figures that compare them, on hand-made logits and features."""

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from imageclf.core.errors import ConfigError, DamagedFileError
from imageclf.openset import scores as openset

CONFIDENT = torch.tensor([[8.0, 0.0, 0.0]])
UNSURE = torch.tensor([[1.0, 0.9, 0.8]])
FLAT_LOW = torch.tensor([[-3.0, -3.0, -3.0]])


def test_logit_scores_rank_a_confident_image_above_an_unsure_one():
    for score in (openset.msp, openset.max_logit, openset.energy, openset.sigmoid_max):
        assert score(CONFIDENT) > score(UNSURE) > score(FLAT_LOW), score.__name__
    # msp cannot tell a flat low image from a flat high one; energy and max_logit can
    assert openset.msp(FLAT_LOW) == pytest.approx(openset.msp(FLAT_LOW + 6), abs=1e-6)
    assert openset.energy(FLAT_LOW + 6) > openset.energy(FLAT_LOW)


def test_hand_computed_values_and_energys_sign():
    assert float(openset.msp(torch.tensor([[0.0, 0.0]]))) == pytest.approx(0.5)
    assert float(openset.max_logit(torch.tensor([[0.5, -2.0]]))) == pytest.approx(0.5)
    # the score is the negative free energy: E = -logsumexp = -log 2 for two zero logits
    assert float(openset.energy(torch.tensor([[0.0, 0.0]]))) == pytest.approx(math.log(2))
    assert float(openset.energy(torch.tensor([[0.0, 0.0]]), temperature=2.0)) == (
        pytest.approx(2 * math.log(2)))
    assert float(openset.sigmoid_max(torch.tensor([[0.0, -1.0]]))) == pytest.approx(0.5)


def test_knn_is_minus_the_cosine_distance_to_the_kth_neighbour():
    bank = openset.normalise(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])).half()
    f = torch.tensor([[3.0, 0.0]])  # same direction as the first row: its norm does not count
    assert float(openset.knn(f, bank, 1)) == pytest.approx(0.0, abs=1e-3)
    assert float(openset.knn(f, bank, 2)) == pytest.approx(math.cos(math.pi / 4) - 1, abs=1e-3)
    assert float(openset.knn(f, bank, 3)) == pytest.approx(-1.0, abs=1e-3)
    far = torch.tensor([[-1.0, -1.0]])
    assert openset.knn(far, bank, 1) < openset.knn(f, bank, 1)
    with pytest.raises(ConfigError, match="k must be between 1 and the bank's 3 rows"):
        openset.knn(f, bank, 4)


def test_mahalanobis_prefers_the_point_near_a_class_mean():
    feats = torch.tensor([[0.0, 0.0], [0.2, 0.0], [4.0, 4.0], [4.2, 4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    means, prec = openset.fit_mahalanobis(feats, labels, 2)
    assert torch.allclose(means, torch.tensor([[0.1, 0.0], [4.1, 4.0]]))
    near, far = torch.tensor([[0.1, 0.0]]), torch.tensor([[2.0, 9.0]])
    assert float(openset.mahalanobis(near, means, prec)) == pytest.approx(0.0, abs=1e-6)
    assert openset.mahalanobis(far, means, prec) < openset.mahalanobis(near, means, prec)
    # with the identity as precision it is minus the squared distance to the nearest mean
    d = openset.mahalanobis(torch.tensor([[1.0, 2.0]]), means, torch.eye(2))
    assert float(d) == pytest.approx(-(0.9 ** 2 + 2.0 ** 2))


def test_auroc_on_hand_worked_examples():
    known, unknown = torch.tensor([0.9, 0.4]), torch.tensor([0.5, 0.1])
    assert openset.auroc(known, unknown) == pytest.approx(3 / 4)  # 3 of 4 pairs in order
    assert openset.auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert openset.auroc(torch.tensor([0.0]), torch.tensor([1.0])) == 0.0
    assert openset.auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == 0.5  # ties: half
    assert openset.auroc(torch.tensor([1.0, 2.0]), torch.tensor([1.0])) == pytest.approx(0.75)
    with pytest.raises(ConfigError):
        openset.auroc(torch.tensor([1.0]), torch.tensor([]))


@pytest.mark.parametrize("n", [7, 20, 37, 200])
@pytest.mark.parametrize("keep", [0.5, 0.9, 0.95, 0.99])
def test_threshold_keeps_the_asked_share_within_one_image(n, keep):
    scores = torch.randn(n, generator=torch.Generator().manual_seed(n))
    t = openset.threshold_for(scores, keep)
    kept = int((scores >= t).sum())
    assert abs(kept - keep * n) <= 1, (kept, keep * n)
    assert kept >= keep * n - 1e-9 or kept == n  # never keeps fewer than asked


def test_fpr_counts_the_unknowns_at_or_above_the_threshold():
    known = torch.arange(1.0, 21.0)  # 1..20: keep 0.95 → threshold 2
    unknown = torch.tensor([0.0, 1.5, 2.0, 30.0])
    assert openset.threshold_for(known, 0.95) == 2.0
    assert openset.fpr_at(known, unknown, 0.95) == 0.5
    figs = openset.compare({"a": known, "b": -known}, {"a": unknown, "b": -unknown})
    assert openset.best(figs) == "a" and set(figs) == {"a", "b"}


def test_bank_is_fp16_normalised_and_subsampled_per_class():
    feats = torch.randn(300, 8, generator=torch.Generator().manual_seed(0)) * 5
    labels = torch.tensor([0] * 200 + [1] * 60 + [2] * 40)
    bank = openset.sample_bank(feats, labels, rows=90)
    assert bank.dtype == torch.float16 and bank.shape == (90, 8)
    assert torch.allclose(bank.float().norm(dim=1), torch.ones(90), atol=1e-2)
    rows = {tuple(r.tolist()) for r in openset.normalise(feats).half()}
    assert all(tuple(r.tolist()) in rows for r in bank)  # rows of the data, not new ones
    small = openset.sample_bank(feats, labels, rows=1000)  # fits: every row kept
    assert small.shape == (300, 8)
    # an equal share per class: 30 each, the smallest class (40) gives 30 too
    owner = {tuple(r.tolist()): int(c) for r, c in zip(openset.normalise(feats).half(), labels,
                                                        strict=True)}
    counts = torch.bincount(torch.tensor([owner[tuple(r.tolist())] for r in bank]))
    assert counts.tolist() == [30, 30, 30]


def test_stats_round_trip_through_safetensors(tmp_path):
    feats, labels = torch.randn(12, 4), torch.tensor([0, 1, 2] * 4)
    stats = openset.OpenSetStats.fit(feats, labels, 3, rows=6)
    path = tmp_path / openset.STATS_FILE
    stats.save(path)
    back = openset.OpenSetStats.load(path)
    assert torch.equal(back.bank, stats.bank) and torch.equal(back.precision, stats.precision)
    only = stats.only("knn")
    assert only.means is None and only.bank is not None
    save_file({"bank": stats.bank, "payload": torch.zeros(1)}, tmp_path / "odd.safetensors")
    with pytest.raises(DamagedFileError, match="unexpected tensor"):
        openset.OpenSetStats.load(tmp_path / "odd.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DamagedFileError, match="not a readable safetensors file"):
        openset.OpenSetStats.load(tmp_path / "bad.safetensors")
    assert set(load_file(path)) == {"bank", "means", "precision"}


def test_fused_score_standardises_each_part_on_the_known_images():
    feats = torch.tensor([[0.0, 0.0], [0.2, 0.0], [4.0, 4.0], [4.2, 4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    stats = openset.OpenSetStats.fit(feats, labels, 2)
    logits = torch.tensor([[3.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.5]])
    stats.fit_fusion(logits, feats, multi_label=False)
    fused = openset.score_of("msp+mahalanobis", logits, feats, stats)
    a, b = openset.msp(logits), openset.mahalanobis(feats, stats.means, stats.precision)
    expected = (a - a.mean()) / a.std() + (b - b.mean()) / b.std()
    torch.testing.assert_close(fused, expected)
    assert float(fused.mean()) == pytest.approx(0.0, abs=1e-5)  # centred on the known
    kept = stats.only("msp+mahalanobis")
    assert kept.bank is None and kept.fusion is not None and kept.means is not None
    with pytest.raises(ConfigError):
        openset.score_of("msp+mahalanobis", logits, feats, openset.OpenSetStats())


def test_ash_and_scale_shape_the_feature_then_take_the_energy():
    f = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0, 0, 0, 0, 0, 0]])
    w = torch.zeros(2, 10)
    w[0, 0], w[1, 1] = 1.0, 1.0
    b = torch.zeros(2)
    # ASH-S at 90%: only the top entry (4) stays, scaled by exp(10 / 4)
    want = torch.logsumexp(torch.tensor([4.0 * math.exp(10 / 4), 0.0]), 0)
    assert float(openset.ash(f, w, b)[0]) == pytest.approx(float(want), rel=1e-5)
    # SCALE at 85%: nothing pruned; the factor exp(10 / (4 + 3)) from the top two
    k = math.exp(10 / 7)
    want = torch.logsumexp(torch.tensor([4.0 * k, 3.0 * k]), 0)
    assert float(openset.scale(f, w, b)[0]) == pytest.approx(float(want), rel=1e-5)


def test_vim_marks_down_a_feature_outside_the_training_subspace():
    g = torch.Generator().manual_seed(0)
    train = torch.zeros(200, 6)
    train[:, :3] = torch.randn(200, 3, generator=g) * 3  # the features live in 3 dims
    train[:, 3:] = torch.randn(200, 3, generator=g) * 0.01
    w, b = torch.randn(4, 6, generator=g), torch.zeros(4)
    origin, basis, alpha = openset.fit_vim(train, w, b, principal=3)
    assert basis.shape == (6, 3) and torch.allclose(origin, torch.zeros(6), atol=1e-5)
    inside = torch.tensor([[2.0, -1.0, 1.0, 0.0, 0.0, 0.0]])
    outside = torch.tensor([[2.0, -1.0, 1.0, 0.0, 2.0, 0.0]])
    s_in, s_out = (openset.vim(x, x @ w.T, origin, basis, alpha) for x in (inside, outside))
    # inside: the residual is ~0 (the training noise's size), the score about the logits'
    # logsumexp
    assert float(s_in[0]) == pytest.approx(float(torch.logsumexp(inside @ w.T, 1)[0]),
                                           abs=0.2)
    assert float(s_out[0]) < float(s_in[0]) - 1.0


def test_head_scores_need_the_linear_head(run_dir: Path):
    """The concat head (the fixture's) offers neither vim nor ash: a clear error."""
    from imageclf.jobs.evaluate import calibrate
    from imageclf.model.predict import Predictor

    with pytest.raises(ConfigError, match="--score 'vim'.*--head timm"):
        calibrate(Predictor(run_dir / "model"), run_dir, score="vim")


def test_the_default_score_by_kind_of_model():
    """bench_open_set.py's choice: energy for a model trained with the energy-margin loss,
    else scale where the head is one linear layer, the fused mahalanobis score for the
    concat head and for multi-label models."""
    assert openset.default_score(multi_label=False, linear_head=True) == "scale"
    for head in (False, True):
        assert openset.default_score(False, head, negatives_loss="energy") == "energy"
        assert openset.default_score(False, head, negatives_loss="oe") != "energy"
    assert openset.default_score(True, True, negatives_loss="bce") == \
        "sigmoid_max+mahalanobis"
    assert openset.default_score(multi_label=False, linear_head=False) == "msp+mahalanobis"
    assert openset.default_score(multi_label=True, linear_head=True) == \
        "sigmoid_max+mahalanobis"
    for kind in (False, True):
        assert openset.default_score(False, kind) in openset.scores_for(False, kind)
