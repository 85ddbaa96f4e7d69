"""The presized uint8 cache: one memory-mapped file per data set and presize setting."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import torch

from imageclf.core.diskspace import check_room, disk_full, is_disk_full
from imageclf.core.errors import ImageclfError
from imageclf.core.fileio import atomic_write, commit
from imageclf.core.records import Record, Skipped
from imageclf.core.schema import doc
from imageclf.data import refs
from imageclf.data.device_decode import decode_chunk
from imageclf.data.images import presize_into, slot_length, verify_file
from imageclf.data.refs import ImageRef

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: the index's entries are objects


@dataclass(frozen=True)
class Slot(Record):
    """One file's entry in the cache index."""

    path: str = doc("the file (absolute)")
    size: int = doc("its size in bytes when decoded (-1: missing)")
    mtime: int = doc("its modification time in ns when decoded")
    ok: bool = doc("decoded into its slot", False)
    length: int = doc("the used long side of the slot (the image's, after presizing)", 0)
    transposed: bool = doc("stored transposed (a portrait image)", False)
    reason: str = doc("why it could not be used", "")


@dataclass(frozen=True)
class CacheIndex(Record):
    """KEY.json beside a cache's data file: what each slot of KEY-*.u8 holds."""

    version: int = doc("layout of this file")
    presize: int = doc("the presize side")
    method: str = doc("crop, squish or pad")
    data: str = doc("the data file's name: uint8 (N, 3, presize, long side)")
    shape: tuple[int, ...] = doc("the data file's array shape")
    entries: list[Slot] = doc("one per file, in slot order")


def _plan(index: CacheIndex | None, entries: list[Slot]
          ) -> tuple[list[tuple[int, int]], list[int]]:
    """([(new slot, old slot)] reusable from `index`, [new slots to decode]): a file's old
    slot is reused while its size and mtime are unchanged."""
    old = {e.path: (i, e) for i, e in enumerate(index.entries)} if index is not None else {}
    reuse, todo = [], []
    for i, e in enumerate(entries):
        hit = old.get(e.path)
        if hit is not None and (hit[1].size, hit[1].mtime) == (e.size, e.mtime):
            reuse.append((i, hit[0]))
        else:
            todo.append(i)
    return reuse, todo


def default_cache_dir() -> Path:
    """`IMAGECLF_CACHE_DIR`, else `$XDG_CACHE_HOME/imageclf`, else `~/.cache/imageclf`."""
    env = os.environ.get("IMAGECLF_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "imageclf"


def _stat(ref: ImageRef) -> tuple[int, int]:
    """(size, mtime) of a file; of its table file or shard for a table row or an image in a
    store."""
    try:
        st = os.stat(refs.backing_file(ref))
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def cache_key(paths: Sequence[ImageRef], presize: int, method: str, role: str) -> str:
    """The key of one split's cache: the presize settings and the data set's folder (both
    forms of the cache share it, so a run resumed in the other form is the same data)."""
    root = os.path.commonpath([refs.text(p) for p in paths]) if paths else ""
    key_src = json.dumps([CACHE_VERSION, presize, method, root, role])
    return hashlib.sha256(key_src.encode()).hexdigest()[:20]


@dataclass
class CacheStats:
    """What one build did: images decoded, images reused from the cache, images unreadable."""

    decoded: int = 0
    reused: int = 0
    unreadable: int = 0
    seconds: float = 0.0


class PresizeCache:
    """Presized uint8 images of a list of files, memory-mapped, built once and reused.

    Keyed by the presize settings and the data set's folder; each file's entry is reused
    while its size and mtime are unchanged, so a changed or added file is the only one
    decoded again. Writers build under a temporary name and rename; the index names the
    data file it belongs to, so a reader never sees a half-written cache.
    """

    def __init__(self, paths: Sequence[ImageRef], presize: int, method: str = "crop",
                 cache_dir: str | Path | None = None, workers: int = 0,
                 role: str = "", decode_device: torch.device | None = None) -> None:
        self.paths = [refs.as_ref(p) for p in paths]
        self.presize = presize
        self.method = method
        self.length = slot_length(presize, method)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.workers = workers or (os.cpu_count() or 1)
        self.decode_device = decode_device  # None: Pillow in worker processes
        self.key = cache_key(self.paths, presize, method, role)
        self.data: np.ndarray | None = None  # (N, 3, P, L) uint8 memmap
        self.lengths = np.zeros(len(self.paths), np.int32)  # used long side of each slot
        self.transposed = np.zeros(len(self.paths), bool)
        self.ok = np.zeros(len(self.paths), bool)
        self.reasons: dict[int, str] = {}
        self.stats = CacheStats()
        self.choice = None  # why this form was chosen (data/storecache.py's CacheChoice)
        self._persist_thread: threading.Thread | None = None

    @property
    def index_path(self) -> Path:
        return self.cache_dir / f"{self.key}.json"

    def _read_index(self) -> CacheIndex | None:
        try:
            index = CacheIndex.from_json(json.loads(self.index_path.read_text()))
            if index.version != CACHE_VERSION:
                return None
            if (self.cache_dir / index.data).stat().st_size != int(np.prod(index.shape)):
                return None
            return index
        except (OSError, ValueError, ImageclfError):  # unreadable: built again
            return None

    def build(self, progress: Callable[[int, int], None] | None = None) -> CacheStats:
        """Make every file's presized slot available, decoding only what the cache lacks."""
        t0 = time.perf_counter()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.cache_dir / f"{self.key}.lock", "w")  # noqa: SIM115 - closed below
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per machine; others wait, then read
        persist = None
        try:
            persist = self._build_locked(progress)
        finally:
            if persist is None:
                lock.close()  # closing releases the lock
        if persist is not None:
            # fsync + rename + index happen beside the first epoch, which already reads the
            # data from the temporary file; the lock is held until the index is written.
            def run() -> None:
                try:
                    persist()
                finally:
                    lock.close()

            self._persist_thread = threading.Thread(target=run, name="imageclf-cache-persist")
            self._persist_thread.start()
        self.stats.seconds = time.perf_counter() - t0
        return self.stats

    def wait(self) -> None:
        """Block until a fresh build is safely on disk (its index written)."""
        if self._persist_thread is not None:
            self._persist_thread.join()

    def _build_locked(self, progress: Callable[[int, int], None] | None
                      ) -> Callable[[], None] | None:
        stats = [_stat(p) for p in self.paths]
        index = self._read_index()
        entries = [Slot(refs.text(p), st[0], st[1])
                   for p, st in zip(self.paths, stats, strict=True)]
        reuse, todo = _plan(index, entries)
        n = len(self.paths)
        if index is not None and not todo and len(index.entries) == n and all(
                a == b for a, b in reuse):
            self._open(index)
            self.stats = CacheStats(reused=n, unreadable=int((~self.ok).sum()))
            return None
        shape = (n, 3, self.presize, self.length)
        name = f"{self.key}-{uuid.uuid4().hex[:12]}.u8"
        tmp = self.cache_dir / (name + ".tmp")
        out = self._allocate(tmp, shape)
        if reuse:
            src = np.memmap(self.cache_dir / index.data, dtype=np.uint8, mode="r",
                            shape=index.shape)
            for new, o in reuse:
                out[new] = src[o]
                entries[new] = dataclasses.replace(index.entries[o], path=entries[new].path)
            del src
        n_old_bad = sum(1 for new, _ in reuse if not entries[new].ok)
        n_bad = self._decode(todo, out, tmp, shape, entries, progress)
        # no msync here: it would write the whole file to disk now, synchronously; the
        # background persist() fsyncs it before the index makes it visible to others
        del out
        new_index = CacheIndex(CACHE_VERSION, self.presize, self.method, name, shape, entries)
        self._open(new_index, tmp)
        self.stats = CacheStats(decoded=len(todo) - n_bad, reused=len(reuse),
                                unreadable=n_bad + n_old_bad)
        log.info("presize cache %s: %d decoded, %d reused, %d unreadable", self.key,
                 self.stats.decoded, self.stats.reused, self.stats.unreadable)
        old_data = index.data if index is not None and index.data != name else None

        def persist() -> None:
            commit(tmp, self.cache_dir / name)  # written through its memory map
            # only now is the new cache visible to others
            text = json.dumps(new_index.to_json())
            atomic_write(self.index_path, lambda p: Path(p).write_text(text))
            if old_data is not None:
                # readers that still map the old file keep it alive until they close it
                (self.cache_dir / old_data).unlink(missing_ok=True)

        return persist

    def _allocate(self, tmp: Path, shape: tuple[int, ...]) -> np.ndarray:
        """The new data file, its blocks reserved up front: too little room is refused now,
        with the fix, instead of a worker dying on a full disk halfway through. A stale file
        of a killed build (this key's lock is held) is removed first."""
        for stale in self.cache_dir.glob(f"{self.key}-*.u8.tmp"):
            stale.unlink(missing_ok=True)
        need = int(np.prod(shape))
        fix = ("free room, or put the cache on another disk with --cache-dir, or use "
               "--cache jpeg (about 1/8 of the room)")
        check_room(need, self.cache_dir, "the presize cache", fix)
        try:
            with open(tmp, "wb") as f:
                if need:
                    os.posix_fallocate(f.fileno(), 0, need)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if is_disk_full(e):
                raise disk_full(e, self.cache_dir, "the presize cache", fix) from e
            raise
        return np.memmap(tmp, dtype=np.uint8, mode="r+", shape=shape)

    def _decode(self, todo: list[int], out: np.ndarray, tmp: Path, shape: tuple[int, ...],
                entries: list[Slot], progress: Callable[[int, int], None] | None) -> int:
        """Decode the `todo` slots into `out` (the file `tmp`), recording each in `entries`;
        returns how many were unreadable."""
        n_bad = done = 0
        chunks = [todo[s:s + 32] for s in range(0, len(todo), 32)]
        if self.decode_device is not None:
            decoded = (decode_chunk([(i, self.paths[i]) for i in c], self.presize,
                                    self.method, self.decode_device, out) for c in chunks)
        else:
            decoded = _decode_pool(self.workers, tmp, shape, self.paths, self.presize,
                                   self.method, chunks)
        for results in decoded:
            for i, ok, length, transposed, reason in results:
                entries[i] = dataclasses.replace(entries[i], ok=bool(ok), length=int(length),
                                                 transposed=bool(transposed), reason=reason)
                n_bad += not ok
                done += 1
            if progress is not None:
                progress(done, len(todo))
        return n_bad

    def _open(self, index: CacheIndex, data_file: Path | None = None) -> None:
        data_file = data_file or self.cache_dir / index.data
        self.data = np.memmap(data_file, dtype=np.uint8, mode="r", shape=index.shape)
        self.reasons = {}
        for i, e in enumerate(index.entries):
            self.ok[i], self.lengths[i], self.transposed[i] = e.ok, e.length, e.transposed
            if not e.ok:
                self.reasons[i] = e.reason or _why_missing(self.paths[i])

    def unreadable(self) -> list[Skipped]:
        """Every file that could not be used, with the reason."""
        return [Skipped(str(self.paths[i]), r) for i, r in sorted(self.reasons.items())]

    def squares(self, slots: np.ndarray, offsets: np.ndarray, p: int, dst: np.ndarray) -> None:
        """Copy the (3, P, P) squares of `slots` at `offsets` into dst (n, 3, P, P)."""
        data = self.data
        for k, (i, off) in enumerate(zip(slots, offsets, strict=True)):
            crop = data[i, :, :, off:off + p]  # (3, P, P) view of the memmap
            dst[k] = crop.transpose(0, 2, 1) if self.transposed[i] else crop


_worker_out: np.ndarray | None = None


def _init_worker(data_file: Path, shape: tuple[int, ...], forked: bool = False) -> None:
    global _worker_out
    if forked:
        import torch

        torch.set_num_threads(1)  # one decoder per core; torch's pool is not valid after fork
    _worker_out = np.memmap(data_file, dtype=np.uint8, mode="r+", shape=shape)


def _decode_chunk(paths: list[tuple[int, Path]], presize: int,
                  method: str) -> list[tuple[int, bool, int, bool, str]]:
    """Decode files into their slots of the worker's memmap; return their index entries."""
    return [presize_into(_worker_out, i, path, presize, method) for i, path in paths]


def _decode_pool(workers: int, data_file: Path, shape: tuple[int, ...], paths: list[Path],
                 presize: int, method: str, chunks: list[list[int]]) -> Iterator[list]:
    """Decode chunks of files in worker processes (threads where fork is unavailable):
    PIL holds the GIL for part of each decode, so processes are about 1.4x faster here."""
    jobs = [[(i, paths[i]) for i in chunk] for chunk in chunks]
    use_fork = sys.platform.startswith("linux") and len(jobs) > 1 and workers > 1
    if use_fork:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(data_file, shape, True)) as pool:
            yield from pool.map(_decode_chunk, jobs, repeat(presize), repeat(method))
    else:
        _init_worker(data_file, shape)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(_decode_chunk, jobs, repeat(presize), repeat(method))


def _why_missing(path: Path) -> str:
    return verify_file(path) or "unreadable"
