"""TrainProgress: the run's counters and its one clock."""

import json
import time

import pytest

from imageclf.core.clock import TrainProgress


def test_counts_epochs_batches_and_images():
    p = TrainProgress()
    for _ in range(2):
        p.start_epoch()
        p.start()
        for _ in range(3):
            p.add_batch(4)
        p.stop()
        p.end_epoch()
    assert (p.epochs_done, p.batch_in_epoch, p.train_images, p.epoch_images) == (2, 0, 24, 12)
    assert 0 <= p.epoch_seconds <= p.train_seconds


def test_the_clock_runs_only_while_training():
    p = TrainProgress()
    p.start_epoch()
    p.start()
    time.sleep(0.05)
    running, epoch_running = p.clock()
    assert running >= 0.05 and epoch_running >= 0.05
    p.stop()
    stopped = p.train_seconds
    time.sleep(0.05)
    assert p.clock() == (stopped, p.epoch_seconds)  # stopped: nothing more is counted
    with p.validating():
        time.sleep(0.02)
    assert p.valid_seconds >= 0.02 and p.train_seconds == stopped


def test_a_mid_epoch_resume_keeps_the_epoch_so_far_and_a_restart_drops_it():
    p = TrainProgress(epochs_done=1, batch_in_epoch=2, train_images=20, train_seconds=10.0,
                      epoch_images=8, epoch_seconds=4.0)
    q = TrainProgress.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q == p
    q.start_epoch(start_batch=2)  # resumed mid-way: the epoch's count carries on
    assert (q.epoch_images, q.epoch_seconds, q.batch_in_epoch) == (8, 4.0, 2)
    p.restart_epoch()  # the epoch starts again: its count leaves the run's totals
    assert (p.train_images, p.train_seconds, p.epoch_images, p.batch_in_epoch) == (
        12, pytest.approx(6.0), 0, 0)


def test_a_copy_is_independent():
    p = TrainProgress()
    saved = p.copy()
    p.add_batch(5)
    assert saved.train_images == 0 and p.train_images == 5
