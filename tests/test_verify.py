"""verify_items: every file checked once, counted per class and split."""

from pathlib import Path

from imageclf.data.sources import find_items
from imageclf.data.verify import verify_items

from .helpers import add_bad_files


def test_counts_and_unreadable_files(folder_dataset: Path):
    bad = add_bad_files(folder_dataset / "valid" / "red")
    items = find_items(folder_dataset)
    header, full = verify_items(items), verify_items(items, full=True)
    assert {Path(u["path"]).name for u in full.unreadable} == set(bad)
    assert {Path(u["path"]).name for u in header.unreadable} == set(bad) - {"truncated.jpg"}
    d = full.to_dict()
    assert d["counts"]["valid"] == {"blue": 3, "green": 3, "red": 3}
    assert d["n_usable"] == 27 and d["n_items"] == 27 + len(bad)
    assert d["checked"] == "decode" and header.to_dict()["checked"] == "header"
