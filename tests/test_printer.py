"""PrintEpochs: what a person sees while training."""

import io

from rich.console import Console

from imageclf.learn.callbacks import PrintEpochs, format_row


def test_format_row_reads_well():
    row = {"epoch": 3, "train_loss": 0.5, "valid_loss": 0.25, "valid_accuracy": 0.875,
           "seconds": 1.234, "img_per_s": 99.6}
    assert format_row(row) == ("epoch 3  train_loss=0.5000  valid_loss=0.2500  "
                               "valid_accuracy=0.8750  1.2s  100 img/s")


def test_a_row_per_epoch_and_a_bar_on_a_terminal(learn):
    plain = io.StringIO()
    learn.cbs.append(PrintEpochs(Console(file=plain, force_terminal=False, width=200)))
    learn.fit(2, 1e-3)
    lines = plain.getvalue().splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", "0"], ["epoch", "1"]]
    assert all("valid_loss=" in line and line.endswith("img/s") for line in lines)
    term = io.StringIO()
    learn.cbs = [PrintEpochs(Console(file=term, force_terminal=True, width=120), refresh=0)]
    learn.fit(1, 1e-3)
    out = term.getvalue()
    assert "epoch 2" in out and "loss" in out and "3/3" in out  # the bar reached the end
