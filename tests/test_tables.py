"""Parquet and Arrow data: files written here as Hugging Face datasets writes them, with a
corrupt image among the rows."""

import io
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imageclf.core.config import DataConfig
from imageclf.core.errors import ConfigError, DataError
from imageclf.data.dataloaders import DataLoaders
from imageclf.data.tables import RowRef, read_image

from .helpers import ARCH, COLOURS, find, run_cli, solid

CLASSES = ["blue", "green", "red"]


def _jpeg(colour: str, seed: int) -> bytes:
    buf = io.BytesIO()
    solid(COLOURS[colour], (40, 32), seed=seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _hf_table(n_per_class: int, seed: int, corrupt_row: int | None = None) -> pa.Table:
    """An `image` struct column {bytes, path} and an int `label` whose class names are in
    the schema metadata, as `datasets` writes an ImageFolder dataset."""
    images, labels = [], []
    for i in range(n_per_class * len(CLASSES)):
        c = i % len(CLASSES)
        data = _jpeg(CLASSES[c], seed + i)
        if i == corrupt_row:
            data = data[: len(data) // 3]  # a download cut short
        images.append({"bytes": data, "path": f"img{i}.jpg"})
        labels.append(c)
    features = {"image": {"_type": "Image"},
                "label": {"names": CLASSES, "_type": "ClassLabel"}}
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("label", pa.int64())],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    return pa.Table.from_pylist([{"image": im, "label": lab}
                                 for im, lab in zip(images, labels, strict=True)], schema)


@pytest.fixture
def hf(tmp_path: Path) -> Path:
    """data/train-00000-of-00001.parquet (a corrupt image in row 4, row groups of 5 rows)
    and data/validation-00000-of-00001.parquet."""
    root = tmp_path / "hf"
    (root / "data").mkdir(parents=True)
    pq.write_table(_hf_table(6, 0, corrupt_row=4), root / "data" / "train-00000-of-00001.parquet",
                   row_group_size=5)
    pq.write_table(_hf_table(2, 100), root / "data" / "validation-00000-of-00001.parquet")
    return root


def test_hugging_face_layout_splits_and_class_names(hf: Path):
    items = find(hf)
    assert items.classes == tuple(CLASSES) and len(items) == 18 + 6
    assert sum(items.is_valid) == 6
    ref = items.paths[4]
    assert isinstance(ref, RowRef) and RowRef.parse(str(ref)) == ref
    file, col, row = ref.table, ref.column, ref.row
    assert file.name.startswith("train-") and col == "image" and row == 4
    assert len(find(hf, evaluate=True)) == 6  # the validation rows
    assert read_image(items.paths[0]) == _jpeg("blue", 0)


def test_rows_decode_into_the_cache_with_the_corrupt_one_reported(hf: Path, tmp_path: Path):
    dls = DataLoaders.from_config(DataConfig.build(path=str(hf), size=24, presize=32, bs=4,
                                             cache_dir=str(tmp_path / "cache")))
    skipped = dls.skipped()
    assert len(skipped) == 1 and RowRef.parse(skipped[0].path).row == 4
    assert "truncated" in skipped[0].reason
    assert dls.train.n_items == 17 and dls.valid.n_items == 6
    x, y = next(iter(dls.train))
    assert x.shape == (4, 3, 24, 24)
    # verify finds it too, by decoding (and --quick by the header, which is whole)
    r = run_cli("verify", str(hf), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_usable"] == 23 and len(out["unreadable"]) == 1


@pytest.mark.slow
def test_train_and_evaluate_on_parquet(hf: Path, tmp_path: Path):
    run = tmp_path / "run"
    r = run_cli("train", str(hf), "--arch", ARCH,
                "--pretrained", "none", "--size", "24", "--presize", "32",
                "--bs", "6", "--epochs", "1", "--lr", "1e-3", "--out", str(run))
    assert r.returncode == 0, r.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert len(m["skipped_files"]) == 1
    r = run_cli("evaluate", str(run / "model"), str(hf), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 6


def test_split_column_string_labels_and_arrow_files(tmp_path: Path):
    rows = [{"img": _jpeg(c, i), "cls": c, "part": part}
            for i, (c, part) in enumerate([("red", "train"), ("green", "train"),
                                           ("red", "train"), ("green", "val"),
                                           ("red", "validation"), ("green", "test")])]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "all.parquet")
    with pytest.raises(ConfigError, match="--image-col and --label-col"):
        find(tmp_path / "all.parquet")
    items = find(tmp_path / "all.parquet", image_col="img", label_col="cls",
                       split_col="part")
    assert len(items) == 5 and sum(items.is_valid) == 2  # the test row is left out
    assert items.classes == ("green", "red")
    with pytest.raises(ConfigError, match="--label-col 'nope'.*has columns img, cls, part"):
        find(tmp_path / "all.parquet", image_col="img", label_col="nope")
    # Arrow IPC: the file format and the stream format (what `datasets` caches)
    with pa.OSFile(str(tmp_path / "f.arrow"), "wb") as sink, \
            pa.ipc.new_file(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=2):
            w.write_batch(batch)
    (tmp_path / "s").mkdir()
    with pa.OSFile(str(tmp_path / "s" / "train.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    for f in (tmp_path / "f.arrow", tmp_path / "s"):
        got = find(f, image_col="img", label_col="cls", split_col="part")
        assert len(got) == 5 and read_image(got.paths[3]) == rows[3]["img"]
    bad = pa.Table.from_pylist([{"img": b"x", "cls": "a", "part": "holdout"}])
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="split value 'holdout'"):
        find(tmp_path / "bad.parquet", image_col="img", label_col="cls",
                   split_col="part")


def test_without_pyarrow_the_message_says_how_to_install(hf: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow → ImportError
    r = run_cli("verify", str(hf))
    assert r.returncode == 2 and "pip install 'imageclf[parquet]'" in r.stderr
