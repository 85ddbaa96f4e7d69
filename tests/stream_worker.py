"""Run by test_stream under torchrun: the imageclf command line, logging where each attempt
starts and which samples each training batch held ($IMAGECLF_TEST_LOG.<attempt>.<rank>:
"start EPOCH BATCH", then one line "EPOCH BATCH id id ..." per batch, EPOCH and BATCH the
position after it), and with IMAGECLF_TEST_KILL set, on the job's first attempt rank 1 kills
itself with SIGKILL after batch 3 of epoch 1 (before that batch's checkpoint), as a machine
lost mid-epoch.
Usage: stream_worker.py ARGS..."""

import os
import signal
import sys

from imageclf.cli import main
from imageclf.learn import checkpoint

on_batch_end = checkpoint.Checkpointer.on_batch_end


def write(learn, line: str) -> None:
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    with open(f"{os.environ['IMAGECLF_TEST_LOG']}.{attempt}.{learn.dist.rank}", "a") as f:
        f.write(line + "\n")


def start(self, learn):
    write(learn, f"start {learn.progress.epochs_done} {learn.progress.batch_in_epoch}")


def event(self, learn):
    p = learn.progress
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    ids = learn.dls.train.last_ids.tolist()
    write(learn, f"{p.epochs_done} {p.batch_in_epoch} " + " ".join(map(str, ids)))
    if (p.epochs_done, p.batch_in_epoch) == (1, 3) and attempt == "0" \
            and learn.dist.rank == 1 and os.environ.get("IMAGECLF_TEST_KILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    on_batch_end(self, learn)


checkpoint.Checkpointer.on_batch_end = event
checkpoint.Checkpointer.on_fit_start = start
sys.argv = ["imageclf", *sys.argv[1:]]
main()
