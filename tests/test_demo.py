"""The demo's drawn shapes data set."""

from pathlib import Path

from PIL import Image

from imageclf.data.shapes import make_shapes_dataset

from .helpers import find


def test_shapes_are_drawn_into_train_and_valid_class_folders(tmp_path: Path):
    make_shapes_dataset(tmp_path / "shapes", n_train=3, n_valid=2)
    items = find(tmp_path / "shapes")
    assert items.classes == ("circle", "square", "star", "triangle")
    counts = items.counts()
    assert set(counts["train"].values()) == {3} and set(counts["valid"].values()) == {2}
    with Image.open(items.paths[0]) as im:
        assert im.mode == "RGB" and min(im.size) >= 32
