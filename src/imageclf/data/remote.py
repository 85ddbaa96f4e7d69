"""A store at a URL: `http(s)://`, `file://`, or anything fsspec opens. Given as the store's
folder (`http://host/store/`), its manifest (`.../manifest.json`), or a brace list of its
training shards (`http://host/store/train-{000000..000127}.tar`, WebDataset's notation).
The manifest and the index are fetched (small); the shards are streamed (data/stream.py)."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imageclf.data.store import (
    INDEX,
    MANIFEST,
    IndexRow,
    StoreManifest,
    read_index,
    read_manifest,
    store_ref,
)
from imageclf.errors import ConfigError, DataError

URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
TIMEOUT_S = 60


def is_url(text: str | Path | None) -> bool:
    """A URL (scheme://...) rather than a local path."""
    return text is not None and bool(URL.match(str(text)))


def open_url(url: str) -> IO[bytes]:
    """A binary stream of `url`, read as it arrives: urllib for http(s), the file for
    file://, fsspec for any other scheme."""
    try:
        if url.startswith(("http://", "https://")):
            return urllib.request.urlopen(url, timeout=TIMEOUT_S)  # noqa: S310 - the user's
        if url.startswith("file://"):
            return open(urllib.request.url2pathname(url[len("file://"):]), "rb")  # noqa: SIM115
    except (OSError, urllib.error.URLError) as e:
        raise DataError(f"cannot open {url}: {getattr(e, 'reason', None) or e}") from e
    try:
        import fsspec
    except ImportError as e:
        raise ConfigError(f"{url}: the {url.split('://')[0]} scheme needs fsspec "
                          "(pip install fsspec and its filesystem's package)") from e
    try:
        return fsspec.open(url, "rb").open()
    except Exception as e:  # noqa: BLE001 - each filesystem raises its own kinds
        raise DataError(f"cannot open {url}: {e}") from e


def read_range(url: str, offset: int, size: int) -> bytes:
    """`size` bytes of `url` from `offset`: one ranged request where the server supports it,
    else read past the bytes before."""
    headers = {"Range": f"bytes={offset}-{offset + size - 1}"}
    if url.startswith(("http://", "https://")):
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),  # noqa: S310
                                          timeout=TIMEOUT_S)
        except (OSError, urllib.error.URLError) as e:
            raise DataError(f"cannot open {url}: {getattr(e, 'reason', None) or e}") from e
        with resp:
            if resp.status != 206:  # the whole file came: skip to the offset
                left = offset
                while left > 0:
                    chunk = resp.read(min(left, 2**20))
                    if not chunk:
                        break
                    left -= len(chunk)
            return resp.read(size)
    with open_url(url) as f:
        f.seek(offset)
        return f.read(size)


REMOTE = "remote.json"  # in the local folder a remote store's manifest and index are fetched to


def remote_base(folder: Path) -> str | None:
    """The URL of the store whose manifest and index were fetched into `folder`."""
    try:
        return json.loads((folder / REMOTE).read_text())["base"]
    except (OSError, ValueError, KeyError):
        return None


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


def open_remote(source: str, cache: Path) -> RemoteStore:
    """Fetch the manifest and index of the store `source` names into `cache` and list its
    shards (the brace list given, for training, else the manifest's)."""
    text = str(source)
    name = text.rsplit("/", 1)[1]
    train_override = None
    if text.endswith("/"):
        base = text
    elif name == MANIFEST:
        base = text[: -len(MANIFEST)]
    elif name.endswith(".tar") or "{" in name:
        base = text[: len(text) - len(name)]
        train_override = [u.rsplit("/", 1)[1] for u in _expand(text)]
    else:
        base = text + "/"
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
    rows = sorted((r for r in read_index(cache) if (r.split, r.shard) in pos),
                  key=lambda r: (r.split != "train", pos[(r.split, r.shard)]))
    (cache / REMOTE).write_text(json.dumps({"base": base}))
    return RemoteStore(base, cache, m, rows, shards)


def items_from_remote(store: RemoteStore):  # -> Items
    """The labelled images of a remote store, named as a local store's are, in the folder
    its manifest was fetched to: `read_store_image` finds the URL there (remote.json) and
    reads the bytes with a ranged request."""
    from imageclf.data.sources import Items

    index = {c: i for i, c in enumerate(store.manifest.classes)}
    paths, labels, flags = [], [], []
    for r in store.rows:
        paths.append(store_ref(store.local / r.shard, r.offset, r.size))
        labels.append(tuple(index[c] for c in r.labels))
        flags.append(r.split == "valid")
    if not any(flags) or all(flags):
        raise DataError(f"the store at {store.base} needs both a training and a validation "
                        "split to train from")
    return Items(tuple(paths), tuple(labels), store.manifest.classes, tuple(flags),
                 store.manifest.multi_label)

