"""Run by test_distributed under torchrun: the imageclf command line, with one event added
at batch 2 of epoch 1, chosen by IMAGECLF_TEST_EVENT:
- "die" (default): on the job's first attempt rank 1 dies at once (os._exit, no clean-up,
  as a process killed by the machine would);
- "grow": a job of one process writes the file $IMAGECLF_TEST_MARK and waits there (at most
  a minute) until torchrun stops it, as it does when another node joins an elastic job.
Usage: elastic_worker.py ARGS..."""

import os
import sys
import time
from pathlib import Path

from imageclf import checkpoint
from imageclf.cli import main

on_batch_end = checkpoint.Checkpointer.on_batch_end


def event(self, learn):
    if learn.epochs_done == 1 and learn.batch_in_epoch == 2:
        if os.environ.get("IMAGECLF_TEST_EVENT", "die") == "die":
            if os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0" and learn.dist.rank == 1:
                os._exit(17)
        elif learn.dist.world_size == 1:
            Path(os.environ["IMAGECLF_TEST_MARK"]).touch()
            deadline = time.monotonic() + 60
            while not checkpoint.STOP.requested and time.monotonic() < deadline:
                time.sleep(0.05)
    on_batch_end(self, learn)


checkpoint.Checkpointer.on_batch_end = event
sys.argv = ["imageclf", *sys.argv[1:]]
main()
