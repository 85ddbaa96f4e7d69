"""A source's images one at a time, in a fixed order, without holding the listing: what
batch prediction reads (jobs/batch_predict.py). Each image is named by its reference's
text (data/refs.py): a file's path, a store's `SHARD::store::OFFSET::SIZE`, a table's row.

- a folder: every image file under it, depth first, each directory's entries sorted (one
  directory's names are held at a time; a folder of a million files in one directory holds
  a million short strings, not a million Paths);
- a CSV: its first column, relative to the CSV's folder (a header row is skipped, as
  `--csv` skips it), read row by row;
- a store (a folder made by `imageclf pack`): its index, read row by row;
- Parquet/Arrow files: their rows (data/tables.py reads the image column whole);
- a store at a URL: its manifest and index fetched (data/remote.py), each image then read
  with a ranged request.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from imageclf.core.errors import ConfigError, DataError
from imageclf.data.sources import is_header, is_image_name, is_tables, resolve_name
from imageclf.data.store import StoreRef, is_store, iter_index, read_manifest
from imageclf.data.tables import read_rows, table_files
from imageclf.data.urlio import is_url


@dataclass(frozen=True)
class Listing:
    """The images of one source, listed lazily (`__iter__`), and its fingerprint."""

    root: Path
    kind: str  # folder, csv, store or tables

    @classmethod
    def of(cls, source: str | Path) -> Listing:
        """The listing of a folder, a CSV, a store or Parquet/Arrow files; a clear error
        for anything else."""
        if is_url(source):
            return cls(_fetched_store(str(source)), "store")
        root = Path(source)
        if is_store(root):
            read_manifest(root)  # a store still being packed is refused here, in one line
            return cls(root, "store")
        if root.is_file() and root.suffix.lower() == ".csv":
            return cls(root, "csv")
        if is_tables(root):
            return cls(root, "tables")
        if root.is_dir():
            return cls(root, "folder")
        there = "nothing is there" if not root.exists() else "not a folder, .csv or table"
        raise ConfigError(f"{root}: {there}; give a folder of images, a CSV whose first "
                          "column names them, a store, or Parquet/Arrow files")

    def __iter__(self) -> Iterator[str]:
        return {"folder": _walk, "csv": _csv_rows, "store": _store_rows,
                "tables": _table_rows}[self.kind](self.root)

    def chunks(self, size: int) -> Iterator[list[str]]:
        """The listing cut into lists of `size` (the last may be shorter)."""
        it = iter(self)
        while chunk := list(islice(it, size)):
            yield chunk

    def fingerprint(self) -> tuple[str, int]:
        """(hash of every image's reference, size and mtime, and the count): a source changed
        since a job started is told apart by it. One pass over the listing, a stat an image
        (a store: its manifest's own fingerprint)."""
        if self.kind == "store":
            m = read_manifest(self.root)
            return m.fingerprint, sum(m.counts.values())
        h, n = hashlib.sha256(json.dumps([self.kind, str(self.root.absolute())]).encode()), 0
        for text in self:
            try:
                st = os.stat(text if self.kind != "tables" else text.split("::", 1)[0])
                h.update(f"{text}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{text}\0missing\n".encode())
            n += 1
        return h.hexdigest()[:32], n


def _fetched_store(url: str) -> Path:
    """A store at a URL: its manifest and index fetched into the cache folder, where its
    references point (`StoreRef.read` makes a ranged request for each image)."""
    from imageclf.data.cache import default_cache_dir
    from imageclf.data.remote import open_remote

    rank = os.environ.get("RANK", "0")  # torchrun's processes on one machine: one each
    where = default_cache_dir() / ("predict-" + hashlib.sha256(f"{url} {rank}".encode()
                                                               ).hexdigest()[:16])
    store = open_remote(url, where)
    store.rows  # noqa: B018 - fetches index.csv and checks it against the manifest
    return where


def _walk(folder: Path) -> Iterator[str]:
    try:
        with os.scandir(folder) as it:
            entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it
                             if not e.name.startswith("."))
    except OSError as e:
        raise DataError(f"cannot list {folder}: {e.strerror or e}") from e
    for name, is_dir in entries:
        if is_image_name(name):
            yield os.path.join(folder, name)  # a directory named like an image: its row
        elif is_dir:  # says it is not one
            yield from _walk(Path(folder) / name)


def _csv_rows(path: Path) -> Iterator[str]:
    try:
        with open(path, newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or not row[0].strip() or (i == 0 and is_header(row, path.parent)):
                    continue  # an empty row, or the header
                yield str(resolve_name(path.parent, row[0].strip()))
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e


def _store_rows(root: Path) -> Iterator[str]:
    for r in iter_index(root):
        yield str(StoreRef(root / r.shard, r.offset, r.size))


def _table_rows(root: Path) -> Iterator[str]:
    for ref in read_rows(table_files(root), None, None, None).paths:
        yield str(ref)
