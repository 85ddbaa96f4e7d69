from pathlib import Path

import pytest

from imageclf.core.errors import ConfigError, DataError

from .helpers import COLOURS, find, solid


def test_folder_split_and_sorted_classes(folder_dataset: Path):
    items = find(folder_dataset)
    assert items.classes == ("blue", "green", "red")
    counts = items.counts()
    assert counts["train"] == {"blue": 6, "green": 6, "red": 6}
    assert counts["valid"] == {"blue": 3, "green": 3, "red": 3}


def test_multi_label_from_class_folders_is_honoured(folder_dataset: Path):
    """--multi-label on class folders trains sigmoids (one label each), not silently a
    softmax."""
    items = find(folder_dataset, multi_label=True)
    assert items.multi_label and all(len(labs) == 1 for labs in items.labels)
    assert not find(folder_dataset).multi_label


def test_val_folder_name_is_accepted(folder_dataset: Path):
    (folder_dataset / "valid").rename(folder_dataset / "val")
    assert sum(find(folder_dataset).is_valid) == 9


def test_random_split_is_seeded(tmp_path: Path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(10):
            solid((i * 20, 0, 0), (8, 8)).save(tmp_path / c / f"{i}.png")
    a = find(tmp_path, valid_pct=0.3, seed=1)
    b = find(tmp_path, valid_pct=0.3, seed=1)
    c = find(tmp_path, valid_pct=0.3, seed=2)
    assert a.is_valid == b.is_valid and sum(a.is_valid) == 6
    assert a.is_valid != c.is_valid


def test_regex_labels_pets_layout(tmp_path: Path):
    d = tmp_path / "images"
    d.mkdir()
    for name in ("great_pyrenees_173.jpg", "great_pyrenees_2.jpg", "Abyssinian_1.jpg",
                 "Abyssinian_20.jpg", "pug_3.jpg", "pug_4.jpg"):
        solid((1, 2, 3), (8, 8)).save(d / name)
    items = find(d, label_regex=r"^(.+)_\d+\.jpg$", valid_pct=0.34)
    assert items.classes == ("Abyssinian", "great_pyrenees", "pug")
    with pytest.raises(ConfigError, match="capture group"):
        find(d, label_regex=r"\d+")


def test_csv_single_multi_and_is_valid(tmp_path: Path):
    for i, c in enumerate(COLOURS):
        solid(COLOURS[c], (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text(
        "filename,label,is_valid\n0.png,red,0\n1.png,green,1\n2.png,blue,0\n")
    items = find(tmp_path / "labels.csv")
    assert not items.multi_label and items.is_valid == (False, True, False)
    (tmp_path / "multi.csv").write_text("fname,labels\n0.png,red warm\n1.png,green\n2.png,\n")
    items = find(tmp_path / "multi.csv", valid_pct=0.34)
    assert items.multi_label and items.classes == ("green", "red", "warm")
    assert items.labels[0] == (1, 2) and items.labels[2] == ()


def test_bad_layouts_are_clear_errors(tmp_path: Path, folder_dataset: Path):
    (folder_dataset / "train" / "empty_class").mkdir()
    with pytest.raises(DataError, match="no images.*empty_class"):
        find(folder_dataset)
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    solid((0, 0, 0), (8, 8)).save(one / "only" / "a.png")
    solid((0, 0, 0), (8, 8)).save(one / "only" / "b.png")
    with pytest.raises(DataError, match="at least 2"):
        find(one)
    solid((0, 0, 0), (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "cols.csv").write_text("x.png\n")
    with pytest.raises(DataError, match="columns"):
        find(tmp_path / "cols.csv")
    with pytest.raises(ConfigError, match="not a folder"):
        find(tmp_path / "nothing")


def test_csv_listing_missing_files_reports_them_and_goes_on(tmp_path: Path):
    """Labels files drift from folders: a listed file deleted by hand is left out with its
    reason, like a dangling link, and the run goes on with the rest."""
    from imageclf.core.config import DataConfig
    from imageclf.data.dataloaders import DataLoaders

    rows = ["filename,label,is_valid"]
    for i, c in enumerate(["red", "green"] * 4):
        solid(COLOURS[c], (16, 16), seed=i).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{c},{i >= 6}")
    rows += ["gone.png,red,0", "also-gone.jpg,green,1"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    items = find(tmp_path / "labels.csv")
    assert len(items) == 10
    dls = DataLoaders.from_config(DataConfig.build(path=str(tmp_path / "labels.csv"), size=16,
                                             presize=16, bs=4,
                                             cache_dir=str(tmp_path / "cache")))
    skipped = {Path(s.path).name: s.reason for s in dls.skipped()}
    assert skipped == {"gone.png": "file not found", "also-gone.jpg": "file not found"}
    assert dls.train.n_items == 6 and dls.valid.n_items == 2
    # a first row naming a missing image is a row, not a header
    (tmp_path / "noheader.csv").write_text("gone.png,red\n0.png,red\n1.png,green\n")
    assert len(find(tmp_path / "noheader.csv", valid_pct=0.34)) == 3
