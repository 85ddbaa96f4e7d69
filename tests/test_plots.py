"""Pictures, drawn without touching matplotlib's global state."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from imageclf.core.plots import (
    image_grid,
    plot_confusion_matrix,
    plot_losses,
    plot_lr_find,
    plot_open_set,
)


@pytest.mark.slow
def test_importing_imageclf_leaves_the_backend_and_pyplot_alone():
    """A notebook's inline backend stays in place after `import imageclf.run.runs`."""
    code = ("import sys, matplotlib; matplotlib.use('svg'); import imageclf.run.runs, "
            "imageclf.core.plots, imageclf.run.report; "
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["svg", "False"]


def test_every_plot_is_a_figure_saved_as_a_png(tmp_path: Path):
    figs = [
        image_grid(torch.rand(5, 3, 16, 16), [str(i) for i in range(5)], tmp_path / "g.png"),
        plot_lr_find([1e-5, 1e-4, 1e-3, 1e-2], [2.0, 1.5, 1.0, 3.0],
                     {"valley": 1e-4, "minimum": 1e-4}, tmp_path / "lr.png"),
        plot_losses([2.0, 1.5, 1.2, 1.0], [{"valid_loss": 1.6}, {"valid_loss": 1.1}], 2,
                    tmp_path / "l.png"),
        plot_confusion_matrix(torch.tensor([[3, 1], [0, 4]]), ["a", "b"], tmp_path / "c.png"),
        plot_open_set(torch.rand(20), torch.rand(10) - 0.5, 0.1, "energy", tmp_path / "o.png"),
    ]
    assert all(isinstance(f, Figure) for f in figs)  # shown inline by a notebook
    for p in ("g", "lr", "l", "c", "o"):
        with Image.open(tmp_path / f"{p}.png") as im:
            assert im.format == "PNG" and im.size[0] > 100
