"""Run by test_distributed under torchrun --max-restarts: the imageclf command line, except
that on the job's first attempt rank 1 dies at once (os._exit, no clean-up, as a process
killed by the machine would) after batch 2 of epoch 1. Usage: elastic_worker.py ARGS..."""

import os
import sys

from imageclf import checkpoint
from imageclf.cli import main

on_batch_end = checkpoint.Checkpointer.on_batch_end


def dies_once(self, learn):
    if (os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0" and learn.dist.rank == 1
            and learn.epochs_done == 1 and learn.batch_in_epoch == 2):
        os._exit(17)
    on_batch_end(self, learn)


checkpoint.Checkpointer.on_batch_end = dies_once
sys.argv = ["imageclf", *sys.argv[1:]]
main()
