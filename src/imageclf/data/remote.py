"""A store at a URL: `http(s)://`, `file://`, or anything fsspec opens. Given as the store's
folder (`http://host/store/`), its manifest (`.../manifest.json`), or a brace list of its
training shards (`http://host/store/train-{000000..000127}.tar`, WebDataset's notation).
The manifest and the index are fetched (small); the shards are streamed (data/stream.py)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from imageclf.core.errors import DataError
from imageclf.data.items import Items
from imageclf.data.store import (
    INDEX,
    MANIFEST,
    IndexRow,
    StoreManifest,
    StoreRef,
    is_store,
    read_index,
    read_manifest,
)
from imageclf.data.urlio import REMOTE, is_url, open_url


def _fetch(url: str, dest: Path) -> None:
    with open_url(url) as src, open(dest, "wb") as f:
        shutil.copyfileobj(src, f)


@dataclass(frozen=True)
class RemoteStore:
    """A store at a URL: its manifest, index, and the shard URLs of each split."""

    base: str  # the folder's URL, ending in /
    local: Path  # where its manifest and index were fetched
    manifest: StoreManifest
    rows: list[IndexRow]
    shards: dict[str, list[str]]  # split -> shard names, in order

    def url(self, shard: str) -> str:
        return self.base + shard


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


def open_remote(source: str, cache: Path) -> RemoteStore:
    """Fetch the manifest and index of the store `source` names into `cache` and list its
    shards (the brace list given, for training, else the manifest's)."""
    base, train_override = _base(str(source))
    cache.mkdir(parents=True, exist_ok=True)
    for f in (MANIFEST, INDEX):
        try:
            _fetch(base + f, cache / f)
        except DataError as e:
            raise DataError(f"{source}: no store there ({base + f}: {e}). Give the URL of a "
                            "folder made by `imageclf pack`, its manifest.json, or a brace list "
                            "of its shards") from e
    m = read_manifest(cache)
    shards = {sp: m.shard_names(sp) for sp in ("train", "valid")}
    if train_override is not None:
        unknown = [s for s in train_override if s not in shards["train"]]
        if unknown:
            raise DataError(f"{source}: {unknown[0]} is not a training shard of the store at "
                            f"{base} (it has {', '.join(shards['train'][:3])}...)")
        shards["train"] = train_override
    # the rows in the order the shards are listed, train first: item i of a split is the
    # i-th sample read when its shards are read in order
    pos = {(sp, name): k for sp in ("train", "valid") for k, name in enumerate(shards[sp])}
    rows = sorted((r for r in read_index(cache, m) if (r.split, r.shard) in pos),
                  key=lambda r: (r.split != "train", pos[(r.split, r.shard)]))
    (cache / REMOTE).write_text(json.dumps({"base": base}))
    return RemoteStore(base, cache, m, rows, shards)


def items_from_remote(store: RemoteStore) -> Items:
    """The labelled images of a remote store, named as a local store's are, in the folder
    its manifest was fetched to: `StoreRef.read` finds the URL there (remote.json) and
    reads the bytes with a ranged request."""
    from imageclf.data.items import Items

    index = {c: i for i, c in enumerate(store.manifest.classes)}
    paths, labels, flags = [], [], []
    for r in store.rows:
        paths.append(StoreRef(store.local / r.shard, r.offset, r.size))
        labels.append(tuple(index[c] for c in r.labels))
        flags.append(r.split == "valid")
    if not any(flags) or all(flags):
        raise DataError(f"the store at {store.base} needs both a training and a validation "
                        "split to train from")
    return Items(tuple(paths), tuple(labels), store.manifest.classes, tuple(flags),
                 store.manifest.multi_label)

