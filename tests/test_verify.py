"""verify_items: every file checked once, counted per class and split."""

from pathlib import Path

import pytest

from imageclf.data.verify import class_balance, verify_items

from .helpers import add_bad_files, find


def test_counts_and_unreadable_files(folder_dataset: Path):
    bad = add_bad_files(folder_dataset / "valid" / "red")
    items = find(folder_dataset)
    header, full = verify_items(items, full=False), verify_items(items)
    assert {Path(u.path).name for u in full.unreadable} == set(bad)
    assert {Path(u.path).name for u in header.unreadable} == set(bad) - {"truncated.jpg"}
    d = full.to_dict()
    assert d["counts"]["valid"] == {"blue": 3, "green": 3, "red": 3}
    assert d["n_usable"] == 27 and d["n_items"] == 27 + len(bad)
    assert d["checked"] == "decode" and header.to_dict()["checked"] == "header"


def test_class_balance_and_its_warnings():
    b = class_balance({"train": {"a": 40, "b": 10, "c": 3}, "valid": {"a": 8, "b": 2, "c": 0}})
    assert b["ratio"] == {"train": pytest.approx(40 / 3, abs=0.01), "valid": None}
    assert "class c has only 3 train image(s)" in b["warnings"]
    assert "class b has only 2 valid image(s)" in b["warnings"]
    assert any(w.startswith("class c has no validation images") for w in b["warnings"])
    assert class_balance({"train": {"a": 5, "b": 5}})["warnings"] == []


def test_progress_is_reported_per_file(folder_dataset: Path):
    items = find(folder_dataset)
    done = []
    verify_items(items, progress=done.append)
    assert sum(done) == len(items)


def test_skipped_files_are_grouped_by_cause_and_a_shard_names_its_split(tmp_path: Path):
    from imageclf.core.records import Skipped
    from imageclf.data.store import StoreRef
    from imageclf.data.verify import skipped_by_cause

    shard = tmp_path / "store" / "valid-000000.tar"
    cut = [Skipped(StoreRef(shard, 100 * i, 90), f"truncated shard {shard.name} of store "
                   f"{shard.parent}: 250 bytes, the index needs {100 * i + 90}")
           for i in range(3, 6)]
    other = [Skipped(tmp_path / "a.jpg", "empty file"), Skipped(tmp_path / "b.jpg", "empty file"),
             Skipped(tmp_path / "c.jpg", "not an image (unknown format)")]
    assert skipped_by_cause(other + cut, {"train": 40, "valid": 10}) == [
        "valid-000000.tar is truncated: 3 of 10 validation images lost",
        "2 files: empty file", "1 file: not an image (unknown format)"]
