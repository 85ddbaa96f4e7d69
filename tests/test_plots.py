"""Pictures, drawn without touching matplotlib's global state."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from imageclf.plots import image_grid, plot_confusion_matrix, plot_losses, plot_lr_find


@pytest.mark.slow
def test_importing_imageclf_leaves_the_backend_and_pyplot_alone():
    """A notebook's inline backend stays in place after `import imageclf.runs`."""
    code = ("import sys, matplotlib; matplotlib.use('svg'); import imageclf.runs, imageclf.plots, "
            "imageclf.report; print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["svg", "False"]


def test_every_plot_is_a_png(tmp_path: Path):
    paths = [
        image_grid(torch.rand(5, 3, 16, 16), [str(i) for i in range(5)], tmp_path / "g.png"),
        plot_lr_find([1e-5, 1e-4, 1e-3, 1e-2], [2.0, 1.5, 1.0, 3.0],
                     {"valley": 1e-4, "minimum": 1e-4}, tmp_path / "lr.png"),
        plot_losses([2.0, 1.5, 1.2, 1.0], [{"valid_loss": 1.6}, {"valid_loss": 1.1}], 2,
                    tmp_path / "l.png"),
        plot_confusion_matrix(torch.tensor([[3, 1], [0, 4]]), ["a", "b"], tmp_path / "c.png"),
    ]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100
