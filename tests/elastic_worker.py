"""Run by test_distributed under torchrun: the imageclf command line, with events added.
IMAGECLF_TEST_EVENT chooses them:
- "die" (default): on the job's first attempt rank 1 dies at once (os._exit, no clean-up,
  as a process killed by the machine would) at batch 2 of epoch 1;
- "grow": a job of one process writes the file $IMAGECLF_TEST_MARK at batch 2 of epoch 1
  and waits there (at most a minute) until torchrun stops it, as it does when another node
  joins an elastic job; and with IMAGECLF_TEST_DOOMED set, a process in a job of two writes
  its own and its torchrun's process ids to $IMAGECLF_TEST_MARK.doomed at batch 1 of
  epoch 2 and waits (at most a minute) for the test to kill both, as a lost machine.
Usage: elastic_worker.py ARGS..."""

import os
import sys
import time
from pathlib import Path

from imageclf.cli import main
from imageclf.learn import checkpoint

on_batch_end = checkpoint.Checkpointer.on_batch_end


def wait(until) -> None:
    deadline = time.monotonic() + 60
    while not until() and time.monotonic() < deadline:
        time.sleep(0.05)


def event(self, learn):
    at = (learn.progress.epochs_done, learn.progress.batch_in_epoch)
    world = learn.dist.world_size
    if os.environ.get("IMAGECLF_TEST_EVENT", "die") == "die":
        if at == (1, 2) and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0" \
                and learn.dist.rank == 1:
            os._exit(17)
    elif at == (1, 2) and world == 1:
        Path(os.environ["IMAGECLF_TEST_MARK"]).touch()
        wait(lambda: checkpoint.STOP.requested)
    elif at == (2, 1) and world == 2 and os.environ.get("IMAGECLF_TEST_DOOMED"):
        mark = Path(os.environ["IMAGECLF_TEST_MARK"] + ".doomed")
        mark.with_suffix(".tmp").write_text(f"{os.getpid()} {os.getppid()}")
        mark.with_suffix(".tmp").rename(mark)
        wait(lambda: False)
    on_batch_end(self, learn)


checkpoint.Checkpointer.on_batch_end = event
sys.argv = ["imageclf", *sys.argv[1:]]
main()
