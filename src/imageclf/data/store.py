"""The presized store's format and its reading on one machine: presized images as JPEG in
WebDataset tar shards (`train-000000.tar`, `valid-000000.tar`, ...), an index of where each
image's bytes lie (index.csv) and a manifest (manifest.json). data/pack.py writes it.

A sample is one key in WebDataset's layout: `KEY.jpg` (the presized image, upright) and
`KEY.cls` (the class index) or, multi-label, `KEY.json` (`{"labels": [names]}`). The split
is in the shard's name; each sample's source file is in index.csv.

An image in a store is named by a `StoreRef` (shard, offset, size), which the decoders (the
presize cache, verify, the Predictor) read with one pread of the JPEG's bytes.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imageclf.core.errors import DataError
from imageclf.core.records import Record, Skipped
from imageclf.core.schema import doc
from imageclf.data.items import Items
from imageclf.data.urlio import read_range, remote_base

FORMAT = "imageclf-store"
VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.csv"
STATE = "pack.json"  # a pack under way (or killed): rerunning it continues
MARK = "::store::"
SPLITS = ("train", "valid")
INDEX_COLUMNS = ("key", "split", "shard", "offset", "size", "width", "height", "labels",
                 "source")


@dataclass(frozen=True)
class ShardInfo(Record):
    """One shard of a store."""

    name: str = doc("the tar file's name, beside manifest.json")
    split: str = doc("train or valid")
    count: int = doc("samples in it")
    bytes: int = doc("its size in bytes")


@dataclass(frozen=True)
class StoreManifest(Record):
    """manifest.json: what a store holds and how it was made."""

    format: str = doc("always imageclf-store")
    version: int = doc("layout of the store")
    classes: tuple[str, ...] = doc("class names; a sample's .cls is an index into them")
    multi_label: bool = doc("samples have several or no labels")
    presize: int = doc("the presize side the images were resized to")
    method: str = doc("crop, squish or pad")
    quality: int = doc("JPEG quality")
    counts: dict[str, int] = doc("samples per split")
    shards: list[ShardInfo] = doc("the shards, train first, in order")
    source: str = doc("the data set it was packed from")
    fingerprint: str = doc("hash of the source's files (path, size, mtime, labels, split) and "
                           "the settings: a changed source is told apart by it")
    skipped: list[Skipped] = doc("files of the source left out, with the reason")
    subsampling: str = doc("chroma subsampling of the JPEGs: 4:4:4 or 4:2:0", "4:4:4")
    psnr: dict[str, float] | None = doc(
        "--quality auto: the target, and the median and 10th percentile PSNR (dB) of the "
        "chosen setting on a sample of the images (its size)", None)

    def shard_names(self, split: str) -> list[str]:
        """The shards of one split, in order."""
        return [s.name for s in self.shards if s.split == split]

    def shard_counts(self) -> dict[str, int]:
        """Samples in each shard, by name."""
        return {s.name: s.count for s in self.shards}


# --- references -------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreRef:
    """One image in a store: its shard and where its JPEG bytes lie in it. Written as
    `SHARD::store::OFFSET::SIZE` (`str`, `parse`)."""

    shard: Path  # absolute
    offset: int
    size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "shard", Path(self.shard).absolute())

    def __str__(self) -> str:
        return f"{self.shard}{MARK}{self.offset}::{self.size}"

    @classmethod
    def parse(cls, text: str) -> StoreRef:
        """The reference `str` wrote."""
        shard, rest = str(text).split(MARK, 1)
        offset, size = rest.split("::", 1)
        return cls(Path(shard), int(offset), int(size))

    @property
    def file(self) -> Path:
        """The shard: what is stat'ed for the cache."""
        return self.shard

    @property
    def store(self) -> Path:
        """The store's folder."""
        return self.shard.parent

    def read(self) -> bytes:
        """The JPEG bytes: one pread, or one ranged request for a store fetched from a URL.
        Raises DataError naming the shard when they are not all there (a truncated or
        missing shard)."""
        shard, offset, size = self.shard, self.offset, self.size
        if not shard.exists():
            base = remote_base(shard.parent)
            if base is not None:  # a store at a URL
                data = read_range(base + shard.name, offset, size)
                if len(data) != size:
                    raise DataError(f"truncated shard {base + shard.name}: the index needs "
                                    f"{offset + size} bytes")
                return data
        try:
            fd = os.open(shard, os.O_RDONLY)
        except OSError as e:
            raise DataError(f"shard {shard.name} of store {shard.parent}: {e.strerror}") from e
        try:
            data = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        if len(data) != size:
            have = os.stat(shard).st_size
            raise DataError(f"truncated shard {shard.name} of store {shard.parent}: {have} "
                            f"bytes, the index needs {offset + size}; pack the store again")
        return data


# --- the store on disk ------------------------------------------------------------------
def is_store(root: Path) -> bool:
    """DATA is a store's folder (complete or not)."""
    return root.is_dir() and ((root / MANIFEST).is_file() or (root / STATE).is_file())


def read_manifest(root: Path) -> StoreManifest:
    """A complete store's manifest; a clear error for a pack not finished."""
    if not (root / MANIFEST).is_file():
        if (root / STATE).is_file():
            raise DataError(f"store {root} is not complete (its pack was stopped): rerun "
                            "the same `imageclf pack` command to finish it")
        raise DataError(f"{root} has no {MANIFEST}: not a store made by `imageclf pack`")
    try:
        m = StoreManifest.from_json(json.loads((root / MANIFEST).read_text()),
                                    str(root / MANIFEST))
    except (OSError, ValueError) as e:
        raise DataError(f"{root / MANIFEST} cannot be read: {e}") from e
    if m.format != FORMAT or m.version != VERSION:
        raise DataError(f"{root / MANIFEST}: format {m.format} v{m.version}, this imageclf "
                        f"reads {FORMAT} v{VERSION}; pack the data again")
    bad = next((s.name for s in m.shards if not plain_shard_name(s.name)), None)
    if bad is not None:  # a store is data from elsewhere: it names only files of its own
        raise DataError(f"{root / MANIFEST}: shard {bad!r} is not a plain file name in the "
                        "store's folder; the store is refused")
    return m


def plain_shard_name(name: str) -> bool:
    """A shard's name as pack writes it: a .tar file directly in the store's folder."""
    return (isinstance(name, str) and name.endswith(".tar") and "/" not in name
            and "\\" not in name and not name.startswith("."))


@dataclass(frozen=True)
class IndexRow:
    """One sample of a store's index."""

    key: str
    split: str
    shard: str
    offset: int
    size: int
    width: int
    height: int
    labels: tuple[str, ...]
    source: str

    def as_csv(self) -> list[str]:
        return [self.key, self.split, self.shard, str(self.offset), str(self.size),
                str(self.width), str(self.height), " ".join(self.labels), self.source]

    def as_line(self) -> str:
        """Its line of index.csv, as csv.writer writes it (with the line end)."""
        buf = io.StringIO()
        csv.writer(buf).writerow(self.as_csv())
        return buf.getvalue()

    @classmethod
    def from_csv(cls, row: list[str]) -> IndexRow:
        k, sp, sh, off, size, w, h, labels, src = row
        return cls(k, sp, sh, int(off), int(size), int(w), int(h),
                   tuple(labels.split()), src)


def read_index(root: Path, m: StoreManifest | None = None) -> list[IndexRow]:
    """Every sample of a store, train first, in shard order (`iter_index`, held)."""
    return list(iter_index(root, m))


def iter_index(root: Path, m: StoreManifest | None = None) -> Iterator[IndexRow]:
    """The store's index row by row. A row that names a shard the manifest (`m`, read when
    not given) does not list, or a label it does not list, refuses the store in one line."""
    m = m if m is not None else read_manifest(root)
    shards, classes = {s.name for s in m.shards}, set(m.classes)
    index = root / INDEX
    try:
        with open(index, newline="") as f:
            rows = csv.reader(f)
            header = next(rows)
            if tuple(header) != INDEX_COLUMNS:
                raise DataError(f"{index}: columns {header}, expected {list(INDEX_COLUMNS)}")
            for i, cells in enumerate(rows, start=2):  # row 1 is the header
                r = IndexRow.from_csv(cells)
                _check_row(index, i, r, (shards, classes), m)
                yield r
    except (OSError, ValueError, StopIteration) as e:
        raise DataError(f"{index} cannot be read ({e}); pack the store again") from e


def _check_row(index: Path, i: int, r: IndexRow, known: tuple[set[str], set[str]],
               m: StoreManifest) -> None:
    """Row i's shard is one of the manifest's, its labels among its classes."""
    shards, classes = known
    if r.shard not in shards:
        raise DataError(f"{index} row {i}: shard {r.shard!r} is not one of this store's "
                        "shards (manifest.json); the store is refused")
    unknown = next((c for c in r.labels if c not in classes), None)
    if unknown is not None:
        raise DataError(f"{index} row {i}: label {unknown!r} is not one of the store's "
                        f"classes ({', '.join(m.classes[:5])}"
                        f"{', ...' if len(m.classes) > 5 else ''}); pack the store again")


def items_from_store(root: Path, evaluate: bool = False) -> Items:
    """The labelled images of a store, split as it was packed; `evaluate`: the validation
    split only (all of it, when the store has none)."""
    m = read_manifest(root)
    rows = read_index(root, m)
    if evaluate and any(r.split == "valid" for r in rows):
        rows = [r for r in rows if r.split == "valid"]
    items = rows_to_items(root, rows, m, evaluate)
    if not items.paths:
        raise DataError(f"store {root} holds no images")
    if not evaluate and all(items.is_valid):
        raise DataError(f"store {root} has no training split")
    if not evaluate and not any(items.is_valid):
        raise DataError(f"store {root} has no validation split: pack it from data with one "
                        "(a valid/ folder, or --valid-pct)")
    return items


def rows_to_items(root: Path, rows: list[IndexRow], m: StoreManifest, all_valid: bool = False
                  ) -> Items:
    """Items of index rows (their shards in `root`); `all_valid`: every one in the
    validation split."""
    index = {c: i for i, c in enumerate(m.classes)}
    return Items(tuple(StoreRef(root / r.shard, r.offset, r.size) for r in rows),
                 tuple(tuple(index[c] for c in r.labels) for r in rows), m.classes,
                 tuple(all_valid or r.split == "valid" for r in rows), m.multi_label)


def sample_labels(sample: dict[str, bytes], m: StoreManifest, where: str) -> tuple[int, ...]:
    """The class indices of one sample read from a shard (its `.cls` or `.json` member, as
    pack writes them); DataError naming `where` when they are missing or not the store's."""
    try:
        if "cls" in sample:
            labels: tuple[int, ...] = (int(sample["cls"]),)
        else:
            index = {c: i for i, c in enumerate(m.classes)}
            labels = tuple(index[c] for c in json.loads(sample["json"])["labels"])
        if any(not 0 <= c < len(m.classes) for c in labels):
            raise ValueError(f"class {labels} of {len(m.classes)}")
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"{where}: no label of this store's classes ({e!r}); pack the store "
                        "again") from e
    return labels


# --- decoding ---------------------------------------------------------------------------
def decode_hwc(data: bytes) -> np.ndarray:
    """A stored JPEG → (H, W, 3) uint8 (Pillow on libjpeg-turbo)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def square_into(hwc: np.ndarray, offset: int, p: int, dst: np.ndarray) -> None:
    """Copy into dst (3, P, P) the P-square of an upright (H, W, 3) image at `offset` along
    its long side (the rows of a portrait image, the columns of a landscape one)."""
    portrait = hwc.shape[0] > hwc.shape[1]
    crop = hwc[offset:offset + p, :p] if portrait else hwc[:p, offset:offset + p]
    dst[...] = crop.transpose(2, 0, 1)


def decode_square(data: bytes, offset: int, p: int, dst: np.ndarray) -> None:
    """Decode a stored JPEG into dst (3, P, P): its square at `offset` along the long side."""
    square_into(decode_hwc(data), offset, p, dst)


def encode_jpeg(hwc: np.ndarray, quality: int, subsampling: int = 0) -> bytes:
    """(H, W, 3) uint8 → JPEG bytes at `quality`, full-resolution chroma (4:4:4: at quality
    90 and presize 160, 39.4 dB median PSNR on Imagenette against 37.4 dB with 4:2:0, for
    1.2x the bytes). Standard Huffman tables: optimised ones saved 5.5% of the bytes and
    cost 0.63 ms an image against 0.18 ms, a quarter of the presize's own time."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(hwc).save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()
