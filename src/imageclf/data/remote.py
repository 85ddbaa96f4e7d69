"""A store at a URL: `http(s)://`, `file://`, or anything fsspec opens. Given as the store's
folder (`http://host/store/`), its manifest (`.../manifest.json`), or a brace list of its
training shards (`http://host/store/train-{000000..000127}.tar`, WebDataset's notation).
The manifest is fetched (small); the shards are streamed (data/stream.py), each sample's
label read from its own `.cls`/`.json` member. The index (a row an image: 130 MB at
ImageNet's size) is fetched only when something needs a sample's place in its shard or all
the labels at once: the top losses read by ranged requests, `--class-weights auto`."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from imageclf.core.errors import DataError
from imageclf.data.items import Items
from imageclf.data.store import (
    INDEX,
    MANIFEST,
    IndexRow,
    StoreManifest,
    is_store,
    read_index,
    read_manifest,
    rows_to_items,
)
from imageclf.data.urlio import REMOTE, is_url, open_url


def _fetch(url: str, dest: Path) -> None:
    with open_url(url) as src, open(dest, "wb") as f:
        shutil.copyfileobj(src, f)


@dataclass(frozen=True)
class RemoteStore:
    """A store at a URL: its manifest, the shard URLs of each split, and (fetched when first
    asked for) its index."""

    base: str  # the folder's URL, ending in /
    local: Path  # where its manifest (and index) are fetched
    manifest: StoreManifest
    shards: dict[str, list[str]]  # split -> shard names, in order

    def url(self, shard: str) -> str:
        return self.base + shard

    def count(self, shard: str) -> int:
        """Samples in one shard, as the manifest says."""
        return self._counts[shard]

    @cached_property
    def _counts(self) -> dict[str, int]:
        return self.manifest.shard_counts()

    @cached_property
    def rows(self) -> list[IndexRow]:
        """The index's rows of the listed shards, train first, each split in its shards'
        order (item i of a split is the i-th sample read when its shards are read in
        order). Fetched on the first call."""
        _fetch_into(self.base, INDEX, self.local, self.base)
        pos = {(sp, name): k for sp in ("train", "valid")
               for k, name in enumerate(self.shards[sp])}
        rows = sorted((r for r in read_index(self.local, self.manifest)
                       if (r.split, r.shard) in pos),
                      key=lambda r: (r.split != "train", pos[(r.split, r.shard)]))
        for sp in ("train", "valid"):
            have = sum(r.split == sp for r in rows)
            want = sum(self.count(s) for s in self.shards[sp])
            if have != want:
                raise DataError(f"the index of the store at {self.base} lists {have} {sp} "
                                f"samples, its manifest {want}; pack the store again")
        return rows

    def split_items(self, split: str) -> Items:
        """One split's samples as Items, in item order (from the index): where each lies,
        and its labels."""
        return rows_to_items(self.local, [r for r in self.rows if r.split == split],
                             self.manifest)


def _expand(pattern: str) -> list[str]:
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


def _base(text: str) -> tuple[str, list[str] | None]:
    """(the store folder's URL, the training shards a brace list names, else None)."""
    name = text.rsplit("/", 1)[1]
    if text.endswith("/"):
        return text, None
    if name == MANIFEST:
        return text[: -len(MANIFEST)], None
    if name.endswith(".tar") or "{" in name:
        return text[: len(text) - len(name)], [u.rsplit("/", 1)[1] for u in _expand(text)]
    return text + "/", None


def store_presize(source: str | Path | None) -> int | None:
    """The presize of the store DATA names (a folder, or a URL: its manifest alone is
    fetched); None when DATA is not a store."""
    if source is None:
        return None
    if is_url(source):
        url = _base(str(source))[0] + MANIFEST
        try:
            with open_url(url) as f:
                obj = json.loads(f.read())
        except (DataError, ValueError):
            return None  # not a store: training says so, with the reason
        return StoreManifest.from_json(obj, url).presize
    root = Path(source)
    return read_manifest(root).presize if is_store(root) else None


def _fetch_into(base: str, name: str, cache: Path, source: str) -> None:
    try:
        _fetch(base + name, cache / name)
    except DataError as e:
        raise DataError(f"{source}: no store there ({base + name}: {e}). Give the URL of a "
                        "folder made by `imageclf pack`, its manifest.json, or a brace list "
                        "of its shards") from e


def open_remote(source: str, cache: Path) -> RemoteStore:
    """Fetch the manifest of the store `source` names into `cache` and list its shards (the
    brace list given, for training, else the manifest's). The index is not fetched here."""
    base, train_override = _base(str(source))
    cache.mkdir(parents=True, exist_ok=True)
    (cache / INDEX).unlink(missing_ok=True)  # an earlier fetch's: the store may have changed
    _fetch_into(base, MANIFEST, cache, source)
    m = read_manifest(cache)
    shards = {sp: m.shard_names(sp) for sp in ("train", "valid")}
    if train_override is not None:
        unknown = [s for s in train_override if s not in shards["train"]]
        if unknown:
            raise DataError(f"{source}: {unknown[0]} is not a training shard of the store at "
                            f"{base} (it has {', '.join(shards['train'][:3])}...)")
        shards["train"] = train_override
    counts = m.shard_counts()
    if not any(counts[s] for s in shards["train"]) or not any(counts[s] for s in shards["valid"]):
        raise DataError(f"the store at {base} needs both a training and a validation split "
                        "to train from")
    (cache / REMOTE).write_text(json.dumps({"base": base}))
    return RemoteStore(base, cache, m, shards)


class StreamItems:
    """The labelled images of a store at a URL, as `Items`: the classes from its manifest;
    the references (named as a local store's are, in the folder the manifest was fetched
    to: `StoreRef.read` finds the URL there and makes a ranged request), labels and split
    from its index, fetched the first time one of them is asked for."""

    def __init__(self, store: RemoteStore) -> None:
        self.store = store
        self.classes = store.manifest.classes
        self.multi_label = store.manifest.multi_label

    @cached_property
    def items(self) -> Items:
        return rows_to_items(self.store.local, self.store.rows, self.store.manifest)

    def __len__(self) -> int:
        return sum(self.store.count(s) for sp in ("train", "valid")
                   for s in self.store.shards[sp])

    def __getattr__(self, name: str) -> object:  # paths, labels, is_valid, counts, ...
        if name in ("items", "store"):
            raise AttributeError(name)
        return getattr(self.items, name)
