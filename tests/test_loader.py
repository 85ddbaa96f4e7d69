"""Batches: labels, determinism, the random presize crop, multi-label, sharding."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imageclf.core.config import AugConfig, DataConfig
from imageclf.data.dataloaders import DataLoaders
from imageclf.data.sampling import balanced_order, item_weights

from .helpers import solid


def _cfg(path: Path, bs: int = 4, **kw) -> DataConfig:
    return DataConfig.build(path=str(path), size=24, presize=32, bs=bs, **kw)


def test_batches_labels_and_determinism(folder_dataset: Path):
    dls = DataLoaders.from_config(_cfg(folder_dataset))
    xs, ys = zip(*list(dls.valid), strict=True)
    assert xs[0].shape == (4, 3, 24, 24) and xs[0].dtype == torch.float32
    assert sum(len(y) for y in ys) == 9
    # solid colours: the label's channel is the brightest one in every validation image
    channel = {"red": 0, "green": 1, "blue": 2}
    for x, y in zip(xs, ys, strict=True):
        img = dls.valid.augment.denormalize(x)
        for im, lab in zip(img, y, strict=True):
            assert int(im.mean((1, 2)).argmax()) == channel[dls.classes[int(lab)]]
    dls.train.set_epoch(3)
    a = [x for x, _ in dls.train]
    dls.train.set_epoch(3)
    b = [x for x, _ in dls.train]
    dls.train.set_epoch(4)
    c = [x for x, _ in dls.train]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_random_presize_crop_moves_along_long_side(tmp_path: Path):
    for c, col in (("a", (255, 0, 0)), ("b", (0, 255, 0))):
        for split in ("train", "valid"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(4):
                im = np.zeros((32, 64, 3), np.uint8)
                im[:, :32] = col  # left half coloured, right half black
                Image.fromarray(im).save(d / f"{i}.png")
    cfg = DataConfig.build(path=str(tmp_path), size=32, presize=32, bs=8,
                     aug=AugConfig(flip_p=0, p_affine=0, p_lighting=0, min_scale=1.0,
                                   ratio=(1, 1)))
    dls = DataLoaders.from_config(cfg)
    means = set()
    for epoch in range(6):
        dls.train.set_epoch(epoch)
        for x, _ in dls.train:
            means |= {round(float(v), 2) for v in dls.train.augment.denormalize(x).mean((1, 2, 3))}
    assert len(means) > 1  # the crop position varies between images and epochs
    v1 = [x for x, _ in dls.valid]
    v2 = [x for x, _ in dls.valid]
    assert torch.equal(v1[0], v2[0])


def test_multi_label_targets_are_multi_hot(tmp_path: Path):
    for i in range(8):
        solid((200, 20 * i, 0), (16, 16)).save(tmp_path / f"{i}.png")
    rows = ["fn,labels"] + [f"{i}.png,{'red warm' if i % 2 else 'red'}" for i in range(8)]
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    dls = DataLoaders.from_config(DataConfig.build(path=str(tmp_path / "l.csv"), size=16,
                                             presize=16, bs=4, valid_pct=0.25))
    x, y = next(iter(dls.valid))
    assert dls.multi_label and y.dtype == torch.float32 and y.shape[1] == 2
    assert set(y.sum(1).tolist()) <= {1.0, 2.0}


def _interleave(parts: list[torch.Tensor]) -> torch.Tensor:
    out = torch.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), dtype=parts[0].dtype)
    for r, p in enumerate(parts):
        out[r::len(parts)] = p
    return out


def test_two_ranks_see_one_process_batches(folder_dataset: Path):
    """DistributedSampler shards: rank r's batch b, interleaved with the other rank's, is the
    one-process batch b of twice the size, augmentation included; validation covers every
    image once after the sampler's padding is cut off."""
    one = DataLoaders.from_config(_cfg(folder_dataset, bs=8))
    ranks = [DataLoaders.from_config(_cfg(folder_dataset, bs=4), rank=r, world_size=2)
             for r in (0, 1)]
    for epoch in (0, 1):
        for d in (one, *ranks):
            d.train.set_epoch(epoch)
        ref = list(one.train)
        shards = [list(d.train) for d in ranks]
        assert len(ref) == len(shards[0]) == len(shards[1]) == len(one.train) == 2
        for b, (x, y) in enumerate(ref):
            assert torch.equal(_interleave([s[b][1] for s in shards]), y)
            torch.testing.assert_close(_interleave([s[b][0] for s in shards]), x)
    assert [len(d.valid) for d in ranks] == [2, 2]  # 9 images: 5 each, one repeated
    vx = [torch.cat([x for x, _ in d.valid]) for d in ranks]
    vy = [torch.cat([y for _, y in d.valid]) for d in ranks]
    assert [len(v) for v in vy] == [5, 5]
    ref_x = torch.cat([x for x, _ in one.valid])
    ref_y = torch.cat([y for _, y in one.valid])
    assert torch.equal(_interleave(vy)[:9], ref_y)
    torch.testing.assert_close(_interleave(vx)[:9], ref_x)


def test_balanced_sampler_draws_classes_equally_and_replays(tmp_path: Path):
    """A 9:3:1-imbalanced set: the balanced sampler's epochs hold the classes about
    equally; the same (seed, epoch) gives the same order, and two ranks deal out one
    process's draws."""
    targets = torch.tensor([0] * 90 + [1] * 30 + [2] * 10)
    w = item_weights(targets)
    assert [float(w[targets == c].sum()) for c in range(3)] == pytest.approx([1.0] * 3)
    counts = torch.zeros(3)
    for epoch in range(20):
        order = balanced_order(targets, seed=1, epoch=epoch)
        assert len(order) == 130
        counts += torch.bincount(targets[order], minlength=3)
    share = counts / counts.sum()
    assert share.tolist() == pytest.approx([1 / 3] * 3, abs=0.03)
    assert np.array_equal(balanced_order(targets, 1, 4), balanced_order(targets, 1, 4))
    assert not np.array_equal(balanced_order(targets, 1, 4), balanced_order(targets, 1, 5))
    ranks = [balanced_order(targets, 1, 4, r, 2) for r in (0, 1)]
    assert np.array_equal(np.stack(ranks, 1).reshape(-1), balanced_order(targets, 1, 4))
    # multi-label: an image counts by the mean of its labels' inverse frequencies
    multi = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert item_weights(multi).tolist() == pytest.approx([1 / 3, 1 / 3, (1 / 3 + 1) / 2, 1.0])


def test_balanced_sampler_in_the_loader(folder_dataset: Path):
    dls = DataLoaders.from_config(_cfg(folder_dataset, bs=3, sampler="balanced"))
    ys = torch.cat([y for _, y in dls.train])
    assert len(ys) == 18 and set(ys.tolist()) <= {0, 1, 2}
    again = torch.cat([y for _, y in dls.train])  # same epoch: replayed
    assert torch.equal(ys, again)


def test_batches_per_epoch_and_crop_offsets_are_pure():
    from imageclf.data.sampling import batches_per_epoch, crop_offsets

    assert batches_per_epoch(10, 4, 1, train=True) == 2  # the partial batch dropped
    assert batches_per_epoch(10, 4, 1, train=False) == 3
    assert batches_per_epoch(10, 4, 3, train=True) == 1 and batches_per_epoch(3, 4, 1, True) == 1
    lengths = np.array([40, 50, 32])
    assert crop_offsets(lengths, 32, False, torch.Generator()).tolist() == [4, 9, 0]
    a = crop_offsets(lengths, 32, True, torch.Generator().manual_seed(3))
    b = crop_offsets(lengths, 32, True, torch.Generator().manual_seed(3))
    assert a.tolist() == b.tolist()
    assert all(0 <= o <= r for o, r in zip(a.tolist(), [8, 18, 0], strict=True))


def test_prefetch_thread_computes_on_one_core_and_leaves_the_consumer_alone():
    """The producer's torch operations (synthetic negatives) run on one intra-op thread, so
    they do not preempt the training step's team; the consumer keeps its own count, and so
    do threads started afterwards."""
    import threading

    from imageclf.data.loader import prefetch

    before = torch.get_num_threads()
    if before < 2:
        torch.set_num_threads(2)
    try:
        main = torch.get_num_threads()
        seen = list(prefetch((torch.get_num_threads() for _ in range(3)), torch.device("cpu")))
        assert seen == [1, 1, 1]
        assert torch.get_num_threads() == main
        later: list[int] = []
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert later == [main]
    finally:
        torch.set_num_threads(before)
