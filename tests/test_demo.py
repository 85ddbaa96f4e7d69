"""The demo: its drawn shapes data set, and the whole job as a library function."""

import json
from pathlib import Path

import pytest
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


@pytest.mark.slow
def test_the_demo_is_a_library_function_that_says_what_it_does(tmp_path: Path):
    from imageclf.jobs.demo import demo

    said, verified = [], []
    res = demo(tmp_path / "demo", epochs=1, n_train=12, lr_find_steps=10, say=said.append,
               verified=lambda data, report: verified.append((data, report)))
    assert (res.model / "model.safetensors").is_file() and (res.run.out / "report.html").is_file()
    assert 0.0 <= res.accuracy <= 1.0 and res.fresh == 8 and 0 <= res.fresh_none <= 8
    assert verified and verified[0][0] == tmp_path / "demo" / "data"
    text = "\n".join(said)
    for part in ("drawing a shapes data set", "lr_find:", "evaluate ", '"none of these"',
                 "fresh images of no shape answered none", "run directory:"):
        assert part in text, part
    assert json.loads((res.model / "model.json").read_text())["open_set"]["score"]
