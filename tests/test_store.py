"""The presized store: pack, read by index, read by webdataset, resume a killed pack, refuse
a changed source, report a truncated shard, the jpeg form of the cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from imageclf.core.config import DataConfig
from imageclf.core.errors import DataError
from imageclf.data.dataloaders import DataLoaders
from imageclf.data.images import load_presized
from imageclf.data.pack import PackSettings, pack
from imageclf.data.sources import resolve
from imageclf.data.store import StoreRef, read_index, read_manifest
from imageclf.data.storecache import choose_form
from imageclf.data.verify import skipped_by_cause

from .helpers import ARCH, add_bad_files, make_folder_dataset, run_cli

SETTINGS = PackSettings(presize=32, shard_bytes=8 * 1024)


def _pack(data: Path, out: Path, s: PackSettings = SETTINGS, **kw):
    return pack(DataConfig.build(path=str(data)).source, out, s, **kw)


def test_pack_keeps_items_labels_and_splits(folder_dataset: Path, tmp_path: Path):
    add_bad_files(folder_dataset / "train" / "red")
    m = _pack(folder_dataset, tmp_path / "store")
    src, st = resolve(folder_dataset), resolve(tmp_path / "store")
    assert st.classes == src.classes
    usable = {str(p): (lab, v) for p, lab, v in zip(src.paths, src.labels, src.is_valid,
                                                    strict=True)
              if p.name[0] in "bgr" and "_" in p.name}
    rows = read_index(tmp_path / "store")
    assert sorted(r.source for r in rows) == sorted(usable)
    assert {r.source: (lab, v) for r, lab, v in zip(rows, st.labels, st.is_valid,
                                                    strict=True)} == usable
    # written in a seeded order, so that a shard is not one class: train first
    train = [r for r in rows if r.split == "train"]
    assert rows[:len(train)] == train
    assert [r.labels[0] for r in train] != sorted(r.labels[0] for r in train)
    assert m.counts == {"train": 18, "valid": 9}
    assert len(m.shards) > 2  # 8 KB shards: several per split
    bad = {Path(s.path).name: s.reason for s in m.skipped}
    assert set(bad) >= {"empty.jpg", "truncated.jpg", "text.jpg", "dangling.jpg"}
    assert "truncated" in bad["truncated.jpg"]


def test_stored_image_is_the_presized_image(folder_dataset: Path, tmp_path: Path):
    _pack(folder_dataset, tmp_path / "store")
    row = read_index(tmp_path / "store")[0]
    st = resolve(tmp_path / "store")
    raw = load_presized(row.source, 32).array.astype(np.float64)  # (3, 32, 38)
    stored = load_presized(st.paths[0], 32).array.astype(np.float64)
    assert stored.shape == raw.shape == (3, 32, 38)
    psnr = 10 * np.log10(255**2 / np.mean((raw - stored) ** 2))
    assert psnr > 30  # JPEG quality 90 of a noisy image


# webdataset's pipeline leaves its last shard's file to the garbage collector
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_webdataset_reads_the_shards_and_the_index_points_at_them(folder_dataset: Path,
                                                                   tmp_path: Path):
    import webdataset as wds

    out = tmp_path / "store"
    m = _pack(folder_dataset, out)
    urls = [str(out / s.name) for s in m.shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    rows = read_index(out)
    assert [s["__key__"] for s in samples] == [r.key for r in rows]
    for s, r in zip(samples, rows, strict=True):
        assert s["jpg"].shape == (r.height, r.width, 3)
        assert m.classes[int(s["cls"])] == r.labels[0]
    for shard in m.shards:  # offsets as tar's own headers give them
        with tarfile.open(out / shard.name) as t:
            want = {mem.name[:-4]: mem.offset_data for mem in t if mem.name.endswith(".jpg")}
        assert {r.key: r.offset for r in rows if r.shard == shard.name} == want


def test_train_from_store_raw_and_jpeg_caches_see_the_same_pixels(folder_dataset: Path,
                                                                  tmp_path: Path):
    _pack(folder_dataset, tmp_path / "store")
    batches = {}
    for form in ("raw", "jpeg"):
        cfg = DataConfig.build(path=str(tmp_path / "store"), size=24, presize=32, bs=6,
                               cache=form, cache_dir=str(tmp_path / form))
        dls = DataLoaders.from_config(cfg)
        batches[form] = [(x.clone(), y) for x, y in dls.train]
        assert dls.train.cache.choice.form == form
    for (xa, ya), (xb, yb) in zip(batches["raw"], batches["jpeg"], strict=True):
        assert torch.equal(ya, yb)
        assert torch.equal(xa, xb)


def test_jpeg_cache_of_a_folder_packs_once_and_keeps_unreadables(folder_dataset: Path,
                                                                 tmp_path: Path):
    add_bad_files(folder_dataset / "train" / "blue")
    cfg = DataConfig.build(path=str(folder_dataset), size=24, presize=32, bs=6, cache="jpeg",
                           cache_dir=str(tmp_path / "c"))
    dls = DataLoaders.from_config(cfg)
    n = sum(x.shape[0] for x, _ in dls.train)
    assert n == 18 and dls.train.cache.stats.decoded == 18
    assert {Path(s.path).name for s in dls.skipped()} >= {"empty.jpg", "truncated.jpg"}
    again = DataLoaders.from_config(cfg)
    again.prepare()
    assert again.train.cache.stats.reused == 18 and again.train.cache.stats.decoded == 0
    raw = DataLoaders.from_config(DataConfig.build(path=str(folder_dataset), size=24,
                                                   presize=32, bs=6, cache="raw"))
    x_raw = next(iter(raw.valid))[0]
    x_jpeg = next(iter(again.valid))[0]
    assert (x_raw - x_jpeg).abs().mean() < 0.05  # normalised units: JPEG's small error


def test_auto_chooses_raw_while_it_fits_and_says_why(tmp_path: Path):
    small = choose_form("auto", 1000, 160, "crop", tmp_path)
    assert small.form == "raw" and "fits" in small.reason
    huge = choose_form("auto", 10**9, 460, "crop", tmp_path)
    assert huge.form == "jpeg" and "would not fit" in huge.reason
    assert choose_form("jpeg", 10, 32, "crop", tmp_path).form == "jpeg"


def test_run_directory_records_the_cache_form(folder_dataset: Path, tmp_path: Path):
    r = run_cli("train", str(folder_dataset), "--arch", ARCH, "--pretrained", "none",
                "--size", "24", "--presize", "32", "--epochs", "1", "--bs", "6",
                "--lr", "1e-2", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    cache = json.loads((tmp_path / "run" / "metrics.json").read_text())["cache"]
    assert cache["train"].startswith("auto: raw, it fits")
    assert "presize cache auto: raw" in r.stdout


def test_changed_source_is_refused_with_the_fix(folder_dataset: Path, tmp_path: Path):
    _pack(folder_dataset, tmp_path / "store")
    f = next((folder_dataset / "train" / "red").iterdir())
    time.sleep(0.01)
    f.write_bytes(f.read_bytes())  # a new mtime
    with pytest.raises(DataError, match="--overwrite"):
        _pack(folder_dataset, tmp_path / "store")
    r = run_cli("pack", str(folder_dataset), "-o", str(tmp_path / "store"), "--presize", "32")
    assert r.returncode == 2 and "other data" in r.stderr
    m = _pack(folder_dataset, tmp_path / "store", overwrite=True)
    assert sum(m.counts.values()) == 27


def test_truncated_shard_is_named_and_its_images_left_out(folder_dataset: Path,
                                                          tmp_path: Path):
    out = tmp_path / "store"
    m = _pack(folder_dataset, out)
    victim = max((s for s in m.shards if s.split == "train"), key=lambda s: s.count).name
    rows = [r for r in read_index(out) if r.shard == victim]
    cut = rows[len(rows) // 2].offset + 1  # into the middle sample's JPEG
    os.truncate(out / victim, cut)
    lost = [r for r in rows if r.offset + r.size > cut]
    assert lost and len(lost) < len(rows)
    r = run_cli("verify", str(out))
    assert r.returncode == 0 and f"truncated shard {victim}" in r.stdout
    for form in ("jpeg", "raw"):
        cfg = DataConfig.build(path=str(out), size=24, presize=32, bs=1, cache=form,
                               cache_dir=str(tmp_path / form))
        dls = DataLoaders.from_config(cfg)
        n = sum(x.shape[0] for x, _ in dls.train)
        assert n == 18 - len(lost)
        skipped = dls.skipped()
        assert len(skipped) == len(lost)
        assert all(victim in s.reason for s in skipped)
        assert skipped_by_cause(skipped, {"train": 18, "valid": 9}) == [
            f"{victim} is truncated: {len(lost)} of 18 training images lost"]
    r = run_cli("train", str(out), "--arch", ARCH, "--pretrained", "none", "--size", "24",
                "--bs", "4", "--epochs", "1", "--lr", "1e-3", "--precision", "fp32",
                "--cache-dir", str(tmp_path / "t"), "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert f"{victim} is truncated: {len(lost)} of 18 training images lost" in r.stdout


def test_verify_of_a_store_lists_what_pack_left_out(folder_dataset: Path, tmp_path: Path):
    bad = add_bad_files(folder_dataset / "train" / "red")
    _pack(folder_dataset, tmp_path / "store")
    r = run_cli("verify", str(tmp_path / "store"))
    assert r.returncode == 0 and "left out when the store was packed" in r.stdout
    for name in ("empty.jpg", "truncated.jpg", "text.jpg"):
        assert name in r.stdout and name in bad
    got = json.loads(run_cli("verify", str(tmp_path / "store"), "--json").stdout)
    assert {Path(s["path"]).name for s in got["left_out_by_pack"]} >= {"empty.jpg", "text.jpg"}


def test_store_presize_above_the_stored_is_refused(folder_dataset: Path, tmp_path: Path):
    _pack(folder_dataset, tmp_path / "store")
    with pytest.raises(DataError, match="--presize 32"):
        DataLoaders.from_config(DataConfig.build(path=str(tmp_path / "store"), size=24,
                                                 presize=48))


def test_unfinished_store_says_to_rerun_pack(folder_dataset: Path, tmp_path: Path):
    out = tmp_path / "store"
    _pack(folder_dataset, out)
    (out / "manifest.json").unlink()
    (out / "pack.json").write_text("{}")
    r = run_cli("train", str(out), "--pretrained", "none", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "rerun the same `imageclf pack`" in r.stderr


def _many_images(root: Path, n: int) -> Path:
    return make_folder_dataset(root, n_train=n, n_valid=n // 4, size=(96, 80))


@pytest.mark.slow
def test_pack_killed_and_rerun_gives_the_same_store(tmp_path: Path):
    data = _many_images(tmp_path / "data", 120)
    code = ("import sys; from imageclf.core.config import DataConfig; "
            "from imageclf.data.pack import PackSettings, pack; "
            f"pack(DataConfig.build(path={str(data)!r}).source, sys.argv[1], "
            "PackSettings(presize=64, shard_bytes=16 * 1024, workers=1))")
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, "-c", code, str(whole)], check=True)
    killed = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-c", code, str(killed)])
    deadline = time.monotonic() + 60
    while len(list(killed.glob("*.rows.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "manifest.json").exists(), "the pack ended before it was killed"
    done = len(list(killed.glob("*.rows.json")))
    subprocess.run([sys.executable, "-c", code, str(killed)], check=True)
    names = sorted(p.name for p in whole.iterdir())
    assert names == sorted(p.name for p in killed.iterdir())
    for name in names:
        assert (whole / name).read_bytes() == (killed / name).read_bytes(), name
    assert done >= 3 and len(read_manifest(killed).shards) > done


def test_store_refs_name_their_shard(folder_dataset: Path, tmp_path: Path):
    _pack(folder_dataset, tmp_path / "store")
    st = resolve(tmp_path / "store", evaluate=True)
    assert all(v for v in st.is_valid) and len(st) == 9
    ref = st.paths[0]
    assert isinstance(ref, StoreRef) and StoreRef.parse(str(ref)) == ref
    shard, offset, size = ref.shard, ref.offset, ref.size
    assert shard.name == "valid-000000.tar" and offset % 512 == 0 and size > 0


def _edit_index(store: Path, row: int, column: str, value: str) -> None:
    """Set one cell of index.csv (row 1 is the first sample)."""
    import csv

    with open(store / "index.csv", newline="") as f:
        rows = list(csv.reader(f))
    rows[row][rows[0].index(column)] = value
    with open(store / "index.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.mark.parametrize("shard", ["../../../../etc/passwd", "/etc/passwd", "valid-999999.tar"])
def test_an_index_naming_a_file_outside_the_store_is_refused(folder_dataset: Path,
                                                             tmp_path: Path, shard: str):
    store = tmp_path / "store"
    _pack(folder_dataset, store)
    _edit_index(store, 2, "shard", shard)
    with pytest.raises(DataError, match=f"index.csv row 3: shard {shard!r} is not one of this "
                                        "store's shards"):
        resolve(store)
    r = run_cli("verify", str(store))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "is not one of this store's shards" in r.stderr and "Traceback" not in r.stderr
    url = store.as_uri() + "/"  # a store at a URL: the same rule, where its index is read
    dls = DataLoaders.from_config(DataConfig.build(path=url, size=24, presize=32,
                                                   cache_dir=str(tmp_path / "c")))
    with pytest.raises(DataError, match="is not one of this store's shards"):
        dls.valid.kept_paths  # noqa: B018 - the top losses' references


def test_a_manifest_naming_a_shard_outside_the_store_is_refused(folder_dataset: Path,
                                                                tmp_path: Path):
    store = tmp_path / "store"
    _pack(folder_dataset, store)
    m = json.loads((store / "manifest.json").read_text())
    m["shards"][0]["name"] = "../outside.tar"
    (store / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="shard '../outside.tar' is not a plain file name"):
        resolve(store)


def test_a_label_the_manifest_does_not_list_is_one_line(folder_dataset: Path,
                                                        tmp_path: Path):
    store = tmp_path / "store"
    _pack(folder_dataset, store)
    _edit_index(store, 4, "labels", "zebra")
    r = run_cli("verify", str(store))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{store / 'index.csv'} row 5: label 'zebra' is not one of the store's classes" \
        in r.stderr


def test_a_store_s_own_presize_is_the_command_line_s_default(folder_dataset: Path,
                                                             tmp_path: Path):
    store = tmp_path / "store"
    _pack(folder_dataset, store)  # presize 32, below every command's own default
    r = run_cli("show-batch", str(store), "--size", "24", "-o", str(tmp_path / "b.png"))
    assert r.returncode == 0, r.stderr
    r = run_cli("bench", "loader", store.as_uri() + "/", "--size", "24", "--bs", "6",
                "--epochs", "1", "--cache-dir", str(tmp_path / "c"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["presize"] == 32, r.stderr
    r = run_cli("pack", str(store), "-o", str(tmp_path / "again"))
    assert r.returncode == 0 and read_manifest(tmp_path / "again").presize == 32, r.stderr
    r = run_cli("show-batch", str(folder_dataset), "--size", "24", "-o", str(tmp_path / "f.png"),
                "--cache-dir", str(tmp_path / "c2"))
    assert r.returncode == 0, r.stderr  # not a store: 460, as before
    r = run_cli("show-batch", str(store), "--size", "24", "--presize", "64", "-o",
                str(tmp_path / "c.png"))
    assert r.returncode == 2 and "would enlarge them" in r.stderr  # asked: refused, as before


def test_quality_auto_picks_the_smallest_setting_that_reaches_the_psnr(folder_dataset: Path,
                                                                       tmp_path: Path):
    from imageclf.data import jpegquality
    from imageclf.data.sources import resolve as find_items

    paths = find_items(folder_dataset).paths
    low = jpegquality.choose(paths, PackSettings(presize=32, psnr=30.0))
    high = jpegquality.choose(paths, PackSettings(presize=32, psnr=44.0))
    assert low.reached and low.psnr_median >= 30 and high.psnr_median > low.psnr_median
    assert high.bytes_mean > low.bytes_mean  # a higher target costs bytes
    r = run_cli("pack", str(folder_dataset), "-o", str(tmp_path / "store"), "--presize", "32",
                "--quality", "auto", "--psnr", "36")
    assert r.returncode == 0 and "--quality auto chose" in r.stdout, r.stderr
    m = read_manifest(tmp_path / "store")
    assert m.psnr["target"] == 36 and m.psnr["median"] >= 36 and m.quality in jpegquality.QUALITIES
    assert m.subsampling in ("4:2:0", "4:4:4")
    dls = DataLoaders.from_config(DataConfig.build(path=str(tmp_path / "store"), size=24,
                                                   presize=32, cache_dir=str(tmp_path / "c")))
    x, _ = next(iter(dls.train))
    assert x.shape[-1] == 24
    again = run_cli("pack", str(folder_dataset), "-o", str(tmp_path / "store"), "--presize",
                    "32", "--quality", "auto", "--psnr", "36")
    assert again.returncode == 0, again.stderr  # the same choice: the store is found complete


def test_psnr_of_identical_and_of_known_images():
    from imageclf.data.jpegquality import psnr

    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 1) == pytest.approx(20 * np.log10(255.0), abs=1e-9)


def _writer_bytes_per_sample(tmp_path: Path, n: int, multi_label: bool) -> float:
    """Python memory a shard's writer holds per sample after n samples of one shard."""
    import tracemalloc

    from imageclf.data.pack import PackItem
    from imageclf.data.shards import ShardWriter

    w = ShardWriter(tmp_path, "train", 0, PackSettings(presize=32, shard_bytes=2**40),
                     {"a": 0, "b": 1}, multi_label)
    jpeg = bytes(300)
    w.add("000000000", PackItem.of(Path("/x/warmup.jpg"), ("a",), "train"), (jpeg, 32, 40))
    items = [PackItem.of(Path(f"/data/some/folder/a/image_{i:07d}.jpg"), ("a",), "train")
             for i in range(1, n + 1)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i, item in enumerate(items, start=1):
        w.add(f"{i:09d}", item, (jpeg, 32, 40))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    # what the writer's code and the libraries it calls hold (not other threads' objects)
    mine = [tracemalloc.Filter(True, f"*{name}") for name in
            ("shards.py", "store.py", "tarfile.py", "writer.py", "csv.py")]
    held = sum(d.size_diff for d in after.filter_traces(mine).compare_to(
        before.filter_traces(mine), "filename"))
    w.close()
    return held / n


@pytest.mark.parametrize("multi_label", [False, True])
def test_a_shard_writer_holds_about_its_index_line_a_sample(tmp_path: Path,
                                                            multi_label: bool):
    per = _writer_bytes_per_sample(tmp_path, 3000, multi_label)
    assert per < 250, per  # its line of index.csv (150 B); the old writer held ~1 KB
    rows = json.loads(
        (tmp_path / "train-000000.tar.rows.json").read_text())["rows"]
    with tarfile.open(tmp_path / "train-000000.tar") as t:  # offsets counted as written
        offsets = {m.name: m.offset_data for m in t if m.name.endswith(".jpg")}
    assert len(rows) == 3001
    for line in rows[::500]:
        key, _, _, offset, size = line.split(",")[:5]
        assert offsets[key + ".jpg"] == int(offset) and size == "300"


def test_pack_starts_its_encoders_before_the_listing(folder_dataset: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    """Forked after the listing, each encoder would share its pages and the parent's
    reads would copy them: about 1.2 KB an image at 100k images."""
    import multiprocessing

    from imageclf.data import sources

    seen = []

    def listing(*a, **kw):
        seen.append(len(multiprocessing.active_children()))
        return resolve_before(*a, **kw)

    resolve_before = sources.resolve
    monkeypatch.setattr(sources, "resolve", listing)
    _pack(folder_dataset, tmp_path / "store", PackSettings(presize=32, workers=2))
    assert seen == [2]
