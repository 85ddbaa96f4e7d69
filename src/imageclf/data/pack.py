"""Packing a data set into a presized store (data/store.py): each file decoded and presized
once, encoded as JPEG, written into WebDataset tar shards by split.

Both cores decode (forked workers, a bounded window of chunks in flight, so memory stays
flat whatever the set's size). A shard becomes visible only whole: it is written under a
temporary name, fsynced and renamed, then its rows are written beside it (`NAME.rows.json`).
A pack killed at any point and run again keeps every complete shard and continues with the
next; index.csv and manifest.json are written last, from the shards' rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from imageclf.core.commands import PackSettings
from imageclf.core.config import DataSource
from imageclf.core.diskspace import check_room, disk_full, is_disk_full
from imageclf.core.errors import DataError
from imageclf.core.fileio import write_json
from imageclf.core.records import Skipped
from imageclf.data import jpegquality, refs
from imageclf.data.cache import _stat
from imageclf.data.images import UnreadableImage, load_presized
from imageclf.data.shards import ShardWriter, done_shards, rows_file
from imageclf.data.store import (
    FORMAT,
    INDEX,
    INDEX_COLUMNS,
    MANIFEST,
    SPLITS,
    STATE,
    VERSION,
    ShardInfo,
    StoreManifest,
    encode_jpeg,
    read_manifest,
)

log = logging.getLogger(__name__)
CHUNK = 16  # files a worker presizes at a time
SAMPLE_FOR_SIZE = 32  # files encoded up front to estimate the store's size


@dataclass(frozen=True, slots=True)
class PackItem:
    """One file to pack, its labels by name and its split. The file is kept as its
    reference's text (`str`, data/refs.py): a str is a quarter of a Path's memory, and a
    listing of 100k files is held for the whole pack."""

    ref: str
    labels: tuple[str, ...]
    split: str

    @classmethod
    def of(cls, ref: refs.ImageRef, labels: tuple[str, ...], split: str) -> PackItem:
        return cls(str(ref), labels, split)

    @property
    def path(self) -> refs.ImageRef:
        return refs.parse(self.ref)


class _Refs(Sequence):
    """The items' references, parsed as they are read (--quality auto reads a sample)."""

    def __init__(self, items: Sequence[PackItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # noqa: ANN001, ANN204 - Sequence's int or slice
        return self.items[i].path


def fingerprint(items: Sequence[PackItem], s: PackSettings) -> str:
    """Hash of every file (path, size, mtime), its labels and split, and the settings that
    change the stored bytes: equal fingerprints, equal stores."""
    h = hashlib.sha256(json.dumps([FORMAT, VERSION, s.presize, s.method, s.quality,
                                   s.shard_bytes] + ([s.subsampling] if s.subsampling else [])
                                  ).encode())
    for it in items:
        ref = it.path  # parsed once
        size, mtime = _stat(ref)
        h.update(json.dumps([refs.text(ref), size, mtime, list(it.labels),
                             it.split]).encode())
    return h.hexdigest()[:32]


def encode_file(path: Path, s: PackSettings) -> tuple[bytes, int, int] | str:
    """(JPEG bytes, width, height) of one file presized, upright; or why it is unreadable."""
    try:
        pre = load_presized(path, s.presize, s.method)
    except UnreadableImage as e:
        return str(e)
    hwc = pre.hwc()
    return encode_jpeg(hwc, s.quality, s.subsampling), int(hwc.shape[1]), int(hwc.shape[0])


def _encode_chunk(texts: list[str], s: PackSettings) -> list:
    return [encode_file(refs.parse(t), s) for t in texts]


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one decoder per core; torch's pool is not valid after fork


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[Executor]:
    """The encoders: forked processes on Linux (threads elsewhere, or for one worker),
    forked at once. Opened before the listing is made (`pack`), they never hold a copy of
    it: forked after, each worker shares the parent's pages of it, and the parent's own
    reads of it (reference counts) then copy every page (about 1.2 KB an image at 100k
    images, measured as the pack's peak PSS)."""
    if not (sys.platform.startswith("linux") and workers > 1):
        with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
            yield pool
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_init_worker) as pool:
        pool.submit(int).result()  # a fork pool starts all its workers on the first task
        yield pool


def _workers(s: PackSettings) -> int:
    return s.workers or (os.cpu_count() or 1)


def _encoded(pool: Executor, items: Sequence[PackItem], s: PackSettings, window: int
             ) -> Iterator[tuple[PackItem, tuple[bytes, int, int] | str]]:
    """Each item with its encoding, in order; at most `window` chunks in flight."""
    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    pending: deque = deque()
    it = iter(chunks)
    for chunk in it:
        pending.append((chunk, pool.submit(_encode_chunk, [c.ref for c in chunk], s)))
        if len(pending) >= window:
            break
    while pending:
        chunk, fut = pending.popleft()
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(_encode_chunk, [c.ref for c in nxt], s)))
        yield from zip(chunk, fut.result(), strict=True)


def _estimate(items: Sequence[PackItem], s: PackSettings) -> int:
    """Bytes the store will take: the mean JPEG of a few files, times the files, plus tar
    headers and a 20% margin."""
    sample = [encode_file(it.path, s) for it in items[:SAMPLE_FOR_SIZE]]
    sizes = [len(e[0]) for e in sample if not isinstance(e, str)]
    mean = (sum(sizes) / len(sizes)) if sizes else 3 * s.presize * s.presize / 8
    return int(len(items) * (mean + 2048) * 1.2)


def pack_items(items: Sequence[PackItem], out: Path, labels: tuple[Sequence[str], bool],
               s: PackSettings, source: str,
               progress: Callable[[int, int], None] | None = None,
               overwrite: bool = False, pool: Executor | None = None) -> StoreManifest:
    """Write `items` as a store in `out` (or finish a stopped pack of the same items, or
    return the store already there); refuse a folder holding a store of other data.
    `labels`: (classes, multi-label); `pool`: encoders already started (else started
    here)."""
    classes, multi_label = labels
    out.mkdir(parents=True, exist_ok=True)
    s, choice = jpegquality.resolve(_Refs(items), s)  # --quality auto
    fp = fingerprint(items, s)
    finished_store = _claim(out, fp, overwrite)
    if finished_store is not None:
        return finished_store
    write_json(out / STATE, {"fingerprint": fp, "source": source})
    index = {c: i for i, c in enumerate(classes)}
    by_split = {sp: [it for it in items if it.split == sp] for sp in SPLITS}
    done = {sp: done_shards(out, sp) for sp in SPLITS}
    todo = {sp: by_split[sp][sum(r["consumed"] for r in done[sp]):] for sp in SPLITS}
    n_todo = sum(len(v) for v in todo.values())
    free_needed = _estimate(todo["train"] + todo["valid"], s) if n_todo else 0
    check_room(free_needed, out, "the store", "pack to another disk with -o")
    workers = _workers(s)
    count = _Count(len(items) - n_todo, len(items), progress)
    with contextlib.nullcontext(pool) if pool is not None else _pool(workers) as pool:
        for sp in SPLITS:
            writer = ShardWriter(out, sp, len(done[sp]), s, index, multi_label)
            pos0 = sum(len(by_split[x]) for x in SPLITS[:SPLITS.index(sp)])
            first = pos0 + len(by_split[sp]) - len(todo[sp])
            _write_split(writer, _encoded(pool, todo[sp], s, 4 * workers), first, count, out)
            done[sp] += writer.records
    if progress is not None:
        progress(len(items), len(items))
    return _finish(out, done, (classes, multi_label), s, (source, fp),
                   choice.record(s.psnr) if choice is not None else None)


def _claim(out: Path, fp: str, overwrite: bool) -> StoreManifest | None:
    """The store already finished in `out` (None: there is work to do). A store of other
    data there is refused, or with `overwrite` cleared."""
    existing = _existing_fingerprint(out)
    if existing is not None and existing != fp:
        if not overwrite:
            raise DataError(
                f"{out} holds a store of other data or settings (its source files, labels, "
                "split or presize/quality changed since it was packed). Fix: pack into a new "
                "folder (-o), or add --overwrite to replace it")
        _clear(out)
    if not (out / MANIFEST).is_file():
        return None
    # finished (a pack stopped in its last step: tidy up)
    for p in out.glob("*.rows.json"):
        p.unlink()
    (out / STATE).unlink(missing_ok=True)
    return read_manifest(out)


@dataclass
class _Count:
    """Images packed so far, reported to `progress` every CHUNK."""

    done: int
    total: int
    progress: Callable[[int, int], None] | None

    def one(self) -> None:
        self.done += 1
        if self.progress is not None and self.done % CHUNK == 0:
            self.progress(self.done, self.total)


def _write_split(writer: ShardWriter, encoded: Iterator, first: int, count: _Count,
                 out: Path) -> None:
    """One split's encoded images into its shards, keys numbered from `first`. A shard cut
    short by an error is abandoned: the pack continues after the last complete one."""
    try:
        for k, (item, enc) in enumerate(encoded):
            writer.add(f"{first + k:09d}", item, enc)
            count.one()
        writer.close()
    except OSError as e:
        writer.abandon()
        if is_disk_full(e):
            raise disk_full(e, out, "the store", "free room, or pack to another disk with -o; "
                            "then rerun the same command: it continues after the last "
                            "complete shard") from e
        raise
    except BaseException:
        writer.abandon()
        raise


def _existing_fingerprint(out: Path) -> str | None:
    for name in (MANIFEST, STATE):
        try:
            return json.loads((out / name).read_text())["fingerprint"]
        except (OSError, ValueError, KeyError):
            continue
    return None


def _clear(out: Path) -> None:
    for p in out.iterdir():
        if p.name in (MANIFEST, STATE, INDEX) or p.name.split("-", 1)[0] in SPLITS:
            p.unlink() if p.is_file() else shutil.rmtree(p)


def _finish(out: Path, done: dict[str, list[dict]], labels: tuple[Sequence[str], bool],
            s: PackSettings, origin: tuple[str, str], psnr: dict | None) -> StoreManifest:
    """index.csv and manifest.json from the shards' rows; then the rows files go. `labels`:
    (classes, multi-label); `origin`: (source, fingerprint)."""
    (classes, multi_label), (source, fp) = labels, origin
    import csv

    from imageclf.core.fileio import atomic_write

    recs = done["train"] + done["valid"]

    def write_index(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(INDEX_COLUMNS)
            for r in recs:  # one shard's rows in memory at a time
                for row in json.loads(rows_file(out, r["name"]).read_text())["rows"]:
                    f.write(row) if isinstance(row, str) else w.writerow(row)  # older packs

    atomic_write(out / INDEX, write_index)
    m = StoreManifest(
        FORMAT, VERSION, tuple(classes), multi_label, s.presize, s.method, s.quality,
        {sp: sum(r["count"] for r in done[sp]) for sp in SPLITS},
        [ShardInfo(r["name"], r["split"], r["count"], r["bytes"]) for r in recs],
        source, fp, [Skipped(**k) for r in recs for k in r["skipped"]],
        "4:2:0" if s.subsampling == 2 else "4:4:4", psnr)
    write_json(out / MANIFEST, m.to_json())
    for r in recs:
        rows_file(out, r["name"]).unlink(missing_ok=True)
    (out / STATE).unlink(missing_ok=True)
    return m


def pack(source: DataSource, out: str | Path, s: PackSettings,
         progress: Callable[[int, int], None] | None = None,
         overwrite: bool = False) -> StoreManifest:
    """Pack a data source (folders, regex, CSV, Parquet: a DataSource) into a store in `out`,
    split as training would split it, its samples in an order drawn from `s.seed`: a source
    listed class by class would otherwise give shards of one class each, and a stream read
    shard by shard through a shuffle buffer trains on a few classes at a time (Imagenette
    packed in folder order and streamed reached 27.3% where the same store read by index
    reached 69.4%)."""
    import numpy as np

    from imageclf.data.sources import resolve

    with _pool(_workers(s)) as pool:  # before the listing: see _pool
        items = resolve(source, s.seed)
        order = np.random.default_rng(s.seed).permutation(len(items))
        label_names: dict[tuple[int, ...], tuple[str, ...]] = {}  # one tuple a label set
        names = [PackItem.of(items.paths[i], label_names.setdefault(
            items.labels[i], tuple(items.classes[c] for c in items.labels[i])),
            "valid" if items.is_valid[i] else "train") for i in order]
        labels = (items.classes, items.multi_label)
        del items  # the names hold their text: the Paths go
        src = str(Path(source.path).absolute()) if source.path else ""
        return pack_items(names, Path(out), labels, s, src, progress, overwrite, pool)
