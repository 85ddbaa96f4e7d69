"""The presize cache: built once, reused, never read half-written."""

import json
import os
from pathlib import Path

import numpy as np
import torch

from imageclf.core.config import DataConfig
from imageclf.data.cache import PresizeCache, default_cache_dir
from imageclf.data.dataloaders import DataLoaders

from .helpers import add_bad_files, solid


def _cfg(path: Path, bs: int = 4, **kw) -> DataConfig:
    return DataConfig.build(path=str(path), size=24, presize=32, bs=bs, **kw)


def test_cache_dir_precedence(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("IMAGECLF_CACHE_DIR", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("IMAGECLF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "imageclf"


def test_second_epoch_and_second_run_decode_nothing(folder_dataset: Path):
    dls = DataLoaders.from_config(_cfg(folder_dataset))
    first = [x.clone() for x, _ in dls.valid]
    assert dls.valid.cache.stats.decoded == 9
    list(dls.train)
    list(dls.train)  # the second epoch reads the cache: no new build
    assert dls.train.cache.stats.decoded == 18
    dls.train.cache.wait()
    dls.valid.cache.wait()
    again = DataLoaders.from_config(_cfg(folder_dataset))  # a later run (lr_find, then train)
    second = [x for x, _ in again.valid]
    assert again.valid.cache.stats.decoded == 0 and again.valid.cache.stats.reused == 9
    list(again.train)
    assert again.train.cache.stats.decoded == 0
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_changed_file_alone_is_decoded_again(folder_dataset: Path):
    dls = DataLoaders.from_config(_cfg(folder_dataset))
    dls.prepare()
    dls.train.cache.wait()
    target = folder_dataset / "train" / "red" / "red_0.jpg"
    solid((10, 10, 240), (48, 40)).save(target)  # now blue, under a red label
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = DataLoaders.from_config(_cfg(folder_dataset))
    again.train.prepare()
    stats = again.train.cache.stats
    assert stats.decoded == 1 and stats.reused == 17
    slot = again.train.paths.index(target)
    pixel = again.train.cache.data[slot][:, 16, 16]
    assert pixel[2] > 180 and pixel[0] < 60


def test_half_written_or_garbled_cache_is_never_used(folder_dataset: Path, _cache_dir: Path):
    dls = DataLoaders.from_config(_cfg(folder_dataset))
    dls.train.prepare()
    dls.train.cache.wait()
    cache = dls.train.cache
    index = json.loads(cache.index_path.read_text())
    data_file = cache.cache_dir / index["data"]
    # a writer killed mid-write leaves only a .tmp file; a truncated data file fails the size
    # check; a garbled index is ignored. Each time the next run decodes again.
    with open(data_file, "r+b") as f:
        f.truncate(100)
    fresh = PresizeCache(cache.paths, 32, cache_dir=_cache_dir, role="train")
    fresh.build()
    fresh.wait()
    assert fresh.stats.decoded == 18
    cache.index_path.write_text("{not json")
    again = PresizeCache(cache.paths, 32, cache_dir=_cache_dir, role="train")
    again.build()
    again.wait()
    assert again.stats.decoded == 18
    assert not list(_cache_dir.glob("*.tmp"))


def test_bad_files_are_left_out_and_reported(folder_dataset: Path):
    expected = add_bad_files(folder_dataset / "train" / "red")
    dls = DataLoaders.from_config(_cfg(folder_dataset))
    skipped = {Path(s.path).name: s.reason for s in dls.skipped()}
    assert set(skipped) == set(expected)
    for name, fragment in expected.items():
        assert fragment in skipped[name]
    assert dls.train.n_items == 18
    n = sum(x.shape[0] for x, _ in dls.train)
    assert n == 16  # 18 usable, batches of 4, last partial batch dropped in training


def test_concurrent_builders_do_not_corrupt(folder_dataset: Path, _cache_dir: Path):
    """Two builders of the same cache, one after the other under the lock, both valid."""
    import threading

    paths = sorted((folder_dataset / "train").rglob("*.jpg"))
    caches = [PresizeCache(paths, 32, cache_dir=_cache_dir, role="t", workers=1)
              for _ in range(2)]
    threads = [threading.Thread(target=c.build) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in caches:
        c.wait()
    assert sorted(c.stats.decoded for c in caches) == [0, 18]
    assert np.array_equal(np.asarray(caches[0].data), np.asarray(caches[1].data))
