"""Image references: typed, each with its backing file, text form and reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imageclf.core.config import DataConfig
from imageclf.core.errors import DataError
from imageclf.data import refs
from imageclf.data.images import load_presized
from imageclf.data.pack import PackSettings, pack
from imageclf.data.store import StoreRef, read_index
from imageclf.data.tables import RowRef
from tests.helpers import make_folder_dataset


def test_text_round_trips_for_every_kind(tmp_path: Path):
    store = StoreRef(tmp_path / "s" / "train-000000.tar", 1536, 2048)
    row = RowRef(tmp_path / "t.parquet", "image", 7)
    for ref in (store, row, tmp_path / "a.jpg"):
        assert refs.parse(str(ref)) == ref
        assert refs.as_ref(str(ref)) == ref and refs.as_ref(ref) is ref
    assert refs.backing_file(store) == store.shard and store.store == tmp_path / "s"
    assert refs.backing_file(row) == tmp_path / "t.parquet"
    assert refs.text(Path("rel.jpg")) == str(Path("rel.jpg").absolute())
    assert str(StoreRef(Path("x/train-000000.tar"), 0, 1)).startswith(str(Path.cwd()))


def test_a_store_reference_reads_its_bytes_and_names_a_cut_shard(tmp_path: Path):
    data = make_folder_dataset(tmp_path / "data", n_train=3, n_valid=1)
    pack(DataConfig.build(path=str(data)).source, tmp_path / "store",
         PackSettings(presize=32))
    row = read_index(tmp_path / "store")[0]
    ref = StoreRef(tmp_path / "store" / row.shard, row.offset, row.size)
    got = refs.read(ref)
    assert isinstance(got, bytes) and len(got) == row.size and got[:2] == b"\xff\xd8"
    assert load_presized(ref, 32).array.shape[1] == 32
    assert load_presized(str(ref), 32).array.shape == load_presized(ref, 32).array.shape
    with open(ref.shard, "r+b") as f:
        f.truncate(row.offset + row.size // 2)
    with pytest.raises(DataError, match=f"truncated shard {ref.shard.name}"):
        ref.read()


def test_a_reference_is_kept_as_text_in_the_records(tmp_path: Path):
    from imageclf.core.records import Skipped

    ref = StoreRef(tmp_path / "train-000000.tar", 0, 10)
    s = Skipped(ref, "truncated")
    assert json.loads(json.dumps(s.to_json())) == {"path": str(ref), "reason": "truncated"}
