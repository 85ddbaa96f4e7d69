"""Callbacks: History, the one-cycle schedule, the lr sweep."""

import pytest

from imageclf.learn.callbacks import Callback


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



def test_one_cycle_rates_rise_then_fall_per_step(learn):
    learn.fit_one_cycle(2, 1e-2)
    lrs = learn.history.batch_lrs
    assert len(lrs) == 6  # one rate per optimiser step
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1
    assert max(lrs) == pytest.approx(1e-2, rel=0.1)
    assert lrs[0] == pytest.approx(1e-2 / 25, rel=1e-6) and lrs[-1] < max(lrs) / 5


def test_lr_sweep_grows_exponentially_and_stops_on_a_blow_up(learn):
    from imageclf.learn.callbacks import LRSweep

    sweep = LRSweep(1e-5, 1e3, num_it=30)
    learn.loop(10, [sweep], validate=False)
    assert 3 <= len(sweep.lrs) <= 30
    ratios = [b / a for a, b in zip(sweep.lrs, sweep.lrs[1:], strict=False)]
    assert ratios == pytest.approx([ratios[0]] * len(ratios))  # a constant factor per step
    if len(sweep.lrs) < 30:  # stopped early: the last smoothed loss blew up past 4x the best
        assert sweep.losses[-1] > 4 * sweep.best or sweep.losses[-1] != sweep.losses[-1]
