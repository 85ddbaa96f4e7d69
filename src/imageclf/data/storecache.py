"""The presize cache in its compressed form: presized images read from a store's JPEGs
(data/store.py) and decoded per batch, instead of raw uint8 slots; and the choice between
the two forms (`--cache auto`: by the room each needs)."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from imageclf.core.diskspace import free_bytes, human
from imageclf.core.errors import ConfigError, DataError
from imageclf.core.records import Skipped
from imageclf.data import refs
from imageclf.data.cache import CacheStats, PresizeCache, cache_key, default_cache_dir
from imageclf.data.images import slot_length
from imageclf.data.refs import ImageRef
from imageclf.data.store import StoreRef, decode_square, read_index, read_manifest

if TYPE_CHECKING:
    from imageclf.core.config import DataConfig

log = logging.getLogger(__name__)
FORMS = ("auto", "raw", "jpeg")
ROOM_SHARE = 0.5  # raw is chosen while it takes at most this share of free disk and of memory


@dataclass(frozen=True)
class CacheChoice:
    """Which form a cache takes, and why (recorded in the run directory)."""

    form: str  # raw or jpeg
    reason: str


def memory_bytes() -> int:
    """The machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_form(asked: str, n: int, presize: int, method: str, cache_dir: Path,
                stored: bool = False) -> CacheChoice:
    """`raw` or `jpeg` for a cache of n images: as asked, or (auto) raw while its uint8
    slots take at most half the free disk under the cache folder and half the memory, so
    that every epoch reads them from the page cache; else the compressed JPEGs (a store)."""
    if asked not in FORMS:
        raise ConfigError(f"--cache must be one of {', '.join(FORMS)}; got {asked!r}")
    raw = n * 3 * presize * slot_length(presize, method)
    free, mem = free_bytes(cache_dir), memory_bytes()
    sizes = f"raw uint8 takes {human(raw)}; {human(free)} free under {cache_dir}, " \
            f"{human(mem)} memory"
    if asked != "auto":
        return CacheChoice(asked, f"--cache {asked} ({sizes})")
    if raw <= ROOM_SHARE * free and raw <= ROOM_SHARE * mem:
        return CacheChoice("raw", f"auto: raw, it fits ({sizes})")
    where = "the store's own shards" if stored else "JPEGs packed into the cache folder"
    return CacheChoice("jpeg", f"auto: jpeg from {where}, raw would not fit comfortably "
                       f"({sizes})")


class StoreCache:
    """The presized images of `paths` as JPEGs in a store, decoded per batch in threads
    (Pillow releases the GIL while decoding). Images already in a store of the same presize
    are read where they are; other files are packed once into a store in the cache folder.
    The same interface as PresizeCache: build, ok, lengths, transposed, squares."""

    def __init__(self, paths: Sequence[ImageRef], presize: int, method: str = "crop",
                 cache_dir: str | Path | None = None, workers: int = 0, role: str = "",
                 threads: int = 0) -> None:
        self.paths = [refs.as_ref(p) for p in paths]
        self.presize, self.method = presize, method
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.workers = workers
        self.role = role
        self.direct = bool(self.paths) and all(isinstance(p, StoreRef) for p in self.paths)
        # the raw cache's key (same files, same presize): a run resumed in the other form
        # (--cache auto deciding again on a fuller disk) is the same data; the two forms'
        # files differ (KEY.json and KEY-*.u8 against KEY.store/) and share KEY.lock
        self.key = cache_key(self.paths, presize, method, role)
        n = len(self.paths)
        self.refs: list[StoreRef | None] = [None] * n
        self.lengths = np.zeros(n, np.int32)
        self.transposed = np.zeros(n, bool)
        self.ok = np.zeros(n, bool)
        self.reasons: dict[int, str] = {}
        self.stats = CacheStats()
        self.choice: CacheChoice | None = None
        self._pool = ThreadPoolExecutor(max_workers=threads or (os.cpu_count() or 1),
                                        thread_name_prefix="imageclf-jpeg")
        self._built = False

    def build(self, progress=None) -> CacheStats:
        """Find (or pack) every image's JPEG; nothing is decoded here."""
        if self._built:
            return self.stats
        if self.direct:
            self._open_direct()
        else:
            self._pack(progress)
        self._built = True
        return self.stats

    def wait(self) -> None:
        """Nothing is written in the background."""

    def _set(self, i: int, ref: Path, width: int, height: int) -> None:
        self.refs[i] = ref
        self.transposed[i] = height > width
        self.lengths[i] = max(width, height)
        self.ok[i] = True

    def _open_direct(self) -> None:
        """Refs into stores: each image's size from its store's index; a shard cut short
        leaves its missing images out, named."""
        by_store: dict[Path, list[int]] = {}
        for i, p in enumerate(self.paths):
            by_store.setdefault(p.store, []).append(i)
        for root, idx in by_store.items():
            m = read_manifest(root)
            if m.presize != self.presize or m.method != self.method:
                raise ConfigError(
                    f"store {root} holds images presized to {m.presize} ({m.method}); "
                    f"--cache jpeg reads them as they are: train with --presize {m.presize} "
                    f"--resize-method {m.method}, or --cache raw to presize them again")
            rows = {(r.shard, r.offset): r for r in read_index(root, m)}
            sizes = {s.name: (root / s.name).stat().st_size if (root / s.name).exists()
                     else 0 for s in m.shards}
            for i in idx:
                ref = self.paths[i]
                shard, offset, size = ref.shard, ref.offset, ref.size
                r = rows.get((shard.name, offset))
                if r is None:
                    self.reasons[i] = f"not in the index of store {root}"
                elif offset + size > sizes.get(shard.name, 0):
                    self.reasons[i] = (f"truncated shard {shard.name} of store {root}: "
                                       f"{sizes.get(shard.name, 0)} bytes, the index needs "
                                       f"{offset + size}; pack the store again")
                else:
                    self._set(i, self.paths[i], r.width, r.height)
        bad = len(self.reasons)
        self.stats = CacheStats(reused=len(self.paths) - bad, unreadable=bad)
        if bad:
            log.warning("%d image(s) of the store cannot be read: %s", bad,
                        next(iter(self.reasons.values())))

    def _pack(self, progress) -> None:
        """Pack the files into this cache's store (once; a changed set is packed again)."""
        from imageclf.data.pack import PackItem, PackSettings, pack_items

        out = self.cache_dir / f"{self.key}.store"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        items = [PackItem.of(p, (), "train") for p in self.paths]
        with open(self.cache_dir / f"{self.key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one packer per machine; the others wait
            before = (out / "manifest.json").is_file()
            m = pack_items(items, out, ((), True),
                           PackSettings(self.presize, self.method, workers=self.workers),
                           str(self.cache_dir), progress, overwrite=True)
        where = {r.source: r for r in read_index(out)}
        skipped = {s.path: s.reason for s in m.skipped}
        for i, p in enumerate(self.paths):
            r = where.get(str(p))
            if r is None:
                self.reasons[i] = skipped.get(str(p), "unreadable")
            else:
                self._set(i, StoreRef(out / r.shard, r.offset, r.size), r.width, r.height)
        bad = len(self.reasons)
        fresh = len(self.paths) - bad
        self.stats = CacheStats(decoded=0 if before else fresh, reused=fresh if before else 0,
                                unreadable=bad)

    def _square(self, i: int, off: int, p: int, dst: np.ndarray) -> None:
        """Decode image i and write its (3, P, P) square at `off` along the long side."""
        decode_square(self.refs[i].read(), off, p, dst)

    def squares(self, slots: np.ndarray, offsets: np.ndarray, p: int, dst: np.ndarray) -> None:
        """Decode the images at `slots` into dst (n, 3, P, P), in threads."""
        list(self._pool.map(lambda k: self._square(int(slots[k]), int(offsets[k]), p,
                                                   dst[k]), range(len(slots))))

    def unreadable(self) -> list[Skipped]:
        """Every file that could not be used, with the reason."""
        return [Skipped(str(self.paths[i]), r) for i, r in sorted(self.reasons.items())]

    def close(self) -> None:
        self._pool.shutdown(wait=False)



def check_store_presize(root: Path, presize: int) -> None:
    """Training from a store needs --presize at most the store's (raw re-presizes it)."""
    m = read_manifest(root)
    if presize > m.presize:
        raise DataError(f"store {root} holds images presized to {m.presize}; --presize "
                        f"{presize} would enlarge them: train with --presize {m.presize} "
                        "(or less), or pack the data again at the presize you want")


Cache = PresizeCache | StoreCache


def make_cache(paths: list[ImageRef], cfg: DataConfig, cache_dir: str | Path | None, role: str,
               device: torch.device) -> Cache:
    """The presize cache of one split in the form `cfg.cache` asks (auto: by the room it
    needs); the choice and its reason are logged and kept on the cache (`choice`)."""
    where = Path(cache_dir or cfg.cache_dir or default_cache_dir())
    stored = bool(paths) and all(isinstance(p, StoreRef) for p in paths)
    choice = choose_form(cfg.cache, len(paths), cfg.presize, cfg.resize_method, where,
                         stored)
    if stored and choice.form == "jpeg" and cfg.cache == "auto":
        root = paths[0].store
        if read_manifest(root).presize != cfg.presize:  # the store cannot be read as it is
            choice = CacheChoice("raw", f"auto: raw, the store's presize is not {cfg.presize}")
    log.info("%s cache: %s", role, choice.reason)
    if choice.form == "jpeg":
        cache: Cache = StoreCache(paths, cfg.presize, cfg.resize_method, where,
                                  cfg.decode_workers, role=role)
    else:
        cache = PresizeCache(paths, cfg.presize, cfg.resize_method, where,
                             cfg.decode_workers, role=role,
                             decode_device=device if cfg.decode == "device" else None)
    cache.choice = choice
    return cache
