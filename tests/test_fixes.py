"""--fixes: one setting, applied where a data set is resolved; the files stay as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imageclf.core.config import DataConfig, DataSource, TrainConfig
from imageclf.core.errors import ConfigError, DataError
from imageclf.data.fixes import Fix, apply_fixes, image_key, read_fixes, write_fixes
from imageclf.data.sources import resolve

from .helpers import make_folder_dataset, run_cli

HEADER = "image,decision,label,given,decided\n"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "data", n_train=6, n_valid=3)


def _fixes(tmp_path: Path, rows: str, name: str = "fixes.csv") -> Path:
    p = tmp_path / name
    p.write_text(HEADER + rows)
    return p


ROWS = ("train/blue/blue_0.jpg,relabel,red,blue,\n"
        "train/blue/blue_1.jpg,exclude,,blue,\n"
        "valid/green/green_2.jpg,relabel,blue,green,\n"
        "train/red/red_3.jpg,keep,,red,\n")


def test_fixes_change_the_counts_in_verify_as_the_rows_say(data: Path, tmp_path: Path):
    before = run_cli("verify", str(data), "--json")
    fixes = _fixes(tmp_path, ROWS)
    after = run_cli("verify", str(data), "--fixes", str(fixes), "--json")
    assert before.returncode == after.returncode == 0, after.stderr
    b, a = json.loads(before.stdout)["counts"], json.loads(after.stdout)["counts"]
    assert b["train"] == {"blue": 6, "green": 6, "red": 6}
    assert a["train"] == {"blue": 4, "green": 6, "red": 7}  # one moved to red, one out
    assert a["valid"] == {"blue": 4, "green": 2, "red": 3}
    assert json.loads(after.stdout)["fixes"] == {
        "file": str(fixes), "relabelled": 2, "excluded": 1, "kept": 1, "missing": []}
    assert sorted(p.name for p in (data / "train" / "blue").iterdir())[:2] == [
        "blue_0.jpg", "blue_1.jpg"]  # nothing moved or deleted


def test_training_sees_the_fixed_labels_and_records_the_file(data: Path, tmp_path: Path):
    from imageclf.data.dataloaders import DataLoaders
    from imageclf.run.runs import train_run

    fixes = _fixes(tmp_path, ROWS)
    cfg = DataConfig.build(path=str(data), size=32, presize=40, bs=6, fixes=str(fixes))
    dls = DataLoaders.from_config(cfg)
    assert dls.items.counts()["train"] == {"blue": 4, "green": 6, "red": 7}
    names = {p.name: dls.classes[int(y)] for p, y in zip(dls.train.source.kept_paths,
                                                        dls.train.source.targets, strict=True)}
    assert names["blue_0.jpg"] == "red" and "blue_1.jpg" not in names
    res = train_run(cfg, TrainConfig.build(arch="resnet10t_narrow", pretrained="none",
                                           epochs=1, lr="1e-3", precision="fp32",
                                           out=str(tmp_path / "run")))
    conf = json.loads((res.out / "config.json").read_text())["data"]["source"]
    import hashlib

    assert conf["fixes"] == str(fixes)
    assert conf["fixes_sha256"] == hashlib.sha256(fixes.read_bytes()).hexdigest()
    report = (res.out / "report.html").read_text()
    assert "2 relabelled, 1 excluded" in report


def test_pack_and_evaluate_read_the_fixes_too(data: Path, tmp_path: Path):
    from imageclf.core.commands import PackSettings
    from imageclf.data.pack import pack

    fixes = _fixes(tmp_path, ROWS)
    src = DataSource(path=str(data), fixes=str(fixes))
    pack(src, tmp_path / "store", PackSettings(presize=32))
    assert resolve(tmp_path / "store").counts()["train"] == {"blue": 4, "green": 6, "red": 7}
    ev = resolve(src, evaluate=True)
    assert ev.counts()["valid"] == {"blue": 4, "green": 2, "red": 3}


def test_a_missing_image_is_listed_not_fatal(data: Path, tmp_path: Path):
    fixes = _fixes(tmp_path, ROWS + "train/red/gone.jpg,exclude,,red,\n")
    items = resolve(DataSource(path=str(data), fixes=str(fixes)))
    assert items.fixed_by.missing == ("train/red/gone.jpg",)
    r = run_cli("verify", str(data), "--fixes", str(fixes))
    assert r.returncode == 0 and "1 named image(s) are not in the data set" in r.stdout


def test_an_unknown_class_is_one_line_naming_the_row(data: Path, tmp_path: Path):
    fixes = _fixes(tmp_path, ROWS + "train/red/red_0.jpg,relabel,purple,red,\n")
    r = run_cli("verify", str(data), "--fixes", str(fixes))
    assert r.returncode == 2
    assert "row 6 (train/red/red_0.jpg): 'purple' is not a class" in r.stderr
    assert "Traceback" not in r.stderr
    bad = _fixes(tmp_path, "train/red/red_0.jpg,rename,x,red,\n", "bad.csv")
    with pytest.raises(DataError, match="row 2 .*decision must be one of keep, relabel"):
        read_fixes(bad)


def test_fixes_from_another_data_set_are_refused(data: Path, tmp_path: Path):
    fixes = _fixes(tmp_path, "train/cats/tabby.jpg,exclude,,cats,\n"
                             "train/dogs/rex.jpg,relabel,cats,dogs,\n")
    with pytest.raises(DataError, match="none of its 2 image.* another data set"):
        resolve(DataSource(path=str(data), fixes=str(fixes)))


def test_a_fixes_file_changed_after_the_settings_were_made_is_refused(data: Path,
                                                                     tmp_path: Path):
    fixes = _fixes(tmp_path, ROWS)
    src = DataSource(path=str(data), fixes=str(fixes))
    fixes.write_text(HEADER + "train/blue/blue_0.jpg,exclude,,blue,\n")
    with pytest.raises(ConfigError, match="changed since these settings were made"):
        resolve(src)
    with pytest.raises(ConfigError, match="--fixes .*no_such.csv: cannot be read"):
        DataSource(path=str(data), fixes=str(tmp_path / "no_such.csv"))


def test_a_streamed_store_refuses_fixes(tmp_path: Path):
    from imageclf.data.dataloaders import DataLoaders

    fixes = _fixes(tmp_path, ROWS)
    cfg = DataConfig.build(path="http://127.0.0.1:9/store", size=32, presize=40,
                           fixes=str(fixes))
    with pytest.raises(ConfigError, match="streamed as it is"):
        DataLoaders.from_config(cfg)


def test_the_last_row_of_an_image_wins_and_the_file_round_trips(data: Path, tmp_path: Path):
    rows = [Fix("train/blue/blue_0.jpg", "exclude"), Fix("train/red/red_0.jpg", "keep"),
            Fix("train/blue/blue_0.jpg", "relabel", "green", "blue", "2026-12-05T10:00:00")]
    write_fixes(tmp_path / "f.csv", rows)
    assert read_fixes(tmp_path / "f.csv") == rows
    items, applied = apply_fixes(resolve(data), tmp_path / "f.csv", data)
    assert (applied.relabelled, applied.excluded, applied.kept) == (1, 0, 1)
    assert len(items) == 27


def test_image_keys_are_relative_to_the_data_set(data: Path):
    items = resolve(data)
    assert image_key(items.paths[0], data) == "train/blue/blue_0.jpg"
    assert image_key(Path("/elsewhere/x.jpg"), data) == "/elsewhere/x.jpg"
