"""imageclf audit: planted wrong labels, copies and a stray are found; the files it writes
follow their records; --apply writes the corrected labels."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imageclf.core.commands import AuditSettings
from imageclf.core.config import DataConfig, DataSource, TrainConfig
from imageclf.core.errors import ConfigError
from imageclf.data.audit_files import KINDS, AuditSummary, Issue, read_issues, read_summary
from imageclf.data.duplicates import (
    descriptors,
    find_duplicates,
    pixel_hashes,
    unlike_the_rest,
)
from imageclf.data.images import load_centre_square
from imageclf.data.sources import resolve
from imageclf.jobs.audit import audit

from .audit_data import COPY, FLIPPED, LEAK, STRAY, make_audit_dataset, picture
from .audit_data import random_body as make_random_body
from .helpers import run_cli


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_audit_dataset(tmp_path_factory.mktemp("audit") / "data")


@pytest.fixture(scope="module")
def random_body(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_body(tmp_path_factory.mktemp("body") / "model")


def _data(path: Path, **kw: object) -> DataConfig:
    return DataConfig.build(path=str(path), size=32, presize=48, bs=16, **kw)


def _train(**kw: object) -> TrainConfig:
    return TrainConfig.build(arch="resnet10t", pretrained="none", epochs=3, lr="3e-3",
                             precision="fp32", **kw)


def test_the_planted_faults_are_found_and_the_files_follow_their_records(
        planted: Path, random_body: Path, tmp_path: Path):
    res = audit(_data(planted), _train(), AuditSettings(model=str(random_body)),
                tmp_path / "audit")
    by_kind = {k: [r for r in res.issues if r.kind == k] for k in KINDS}
    labels = {r.image: r for r in by_kind["label"]}
    assert set(FLIPPED) <= set(labels), [r.image for r in by_kind["label"]]
    assert all(labels[k].suggested == "red" and labels[k].given == "blue" for k in FLIPPED)
    # no more than a few false alarms among the 110 images
    assert len(labels) <= len(FLIPPED) + 3
    leak = [r for r in by_kind["leak"] if r.image == LEAK[0]]
    assert leak and leak[0].duplicate_of == LEAK[1] and leak[0].split == "train"
    assert "mirrored" in leak[0].note
    copies = {(r.image, r.duplicate_of) for r in by_kind["duplicate"]}
    assert copies == {tuple(sorted(COPY, reverse=True))} or copies == {COPY}
    assert by_kind["duplicate"][0].score == 1.0 and res.summary.exact_duplicates == 1
    assert STRAY == by_kind["stray"][0].image  # the worst stray first
    # the files: the summary and the table read back as their records, counts agree
    s = read_summary(res.out)
    assert s == res.summary and isinstance(s, AuditSummary)
    assert s.counts == {k: len(v) for k, v in by_kind.items()}
    assert read_issues(res.out) == res.issues
    with open(res.out / "issues.csv", newline="") as f:
        assert next(csv.reader(f)) == [f.name for f in dataclasses.fields(Issue)]
    import pyarrow.parquet as pq

    t = pq.read_table(res.out / "issues.parquet")
    assert t.column("image").to_pylist() == [r.image for r in res.issues]
    assert s.images == 110 and s.classes == ("blue", "green", "red", "yellow")
    assert "linear head" in s.features and random_body.name in s.features


def test_near_copies_are_found_and_different_images_are_not():
    """Copies cropped by 8%, shrunk to 0.6x, re-encoded at JPEG q60, every other one
    mirrored, among 120 other drawn scenes."""
    import io

    from PIL import ImageDraw

    def scene(seed: int, size: int = 160) -> Image.Image:
        rng = np.random.default_rng(seed)
        im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(8):
            x0, y0 = rng.integers(0, size, 2)
            w, h = rng.integers(size // 10, size // 2, 2)
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
                [int(x0), int(y0), int(x0 + w), int(y0 + h)],
                fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        return im

    originals = [scene(i) for i in range(120)]
    copies = []
    for i, im in enumerate(originals[:10]):
        im = im.crop((6, 6, 154, 154)).resize((96, 96))
        if i % 2:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=60)
        copies.append(Image.open(buf).convert("RGB"))
    x = torch.stack([torch.from_numpy(np.asarray(im.resize((64, 64))).transpose(2, 0, 1).copy())
                     for im in originals + copies])
    pairs = find_duplicates(descriptors(x), pixel_hashes(x))
    found = {(p.a, p.b) for p in pairs}
    assert found == {(i, 120 + i) for i in range(10)}, sorted(found)
    assert [p.mirrored for p in pairs] == [bool(i % 2) for i in range(10)]


def test_the_stray_score_ranks_an_image_unlike_the_rest_first():
    x = torch.stack([torch.from_numpy(np.asarray(picture("green", i, 48)).transpose(2, 0, 1)
                                      .copy()) for i in range(40)])
    odd = (np.indices((48, 48)).sum(0) // 6 % 2 * 255).astype(np.uint8)
    x[17] = torch.from_numpy(np.stack([odd, odd * 0, odd]))  # a magenta checkerboard
    assert int(unlike_the_rest(descriptors(x)).argmax()) == 17


@pytest.mark.slow
def test_an_audit_that_trains_its_own_model_and_by_folds(planted: Path, tmp_path: Path):
    """Without --model: a model trained on the given labels, then the cross-validated head;
    with --folds 2: two models, each judging the half it did not see."""
    for settings in (AuditSettings(), AuditSettings(folds=2)):
        res = audit(_data(planted), _train(), settings, tmp_path / f"a{settings.folds}")
        kinds = {(r.kind, r.image) for r in res.issues}
        assert ("leak", LEAK[0]) in kinds and ("stray", STRAY) in {
            (r.kind, r.image) for r in res.issues if r.kind == "stray"}
        assert res.summary.folds == settings.folds
        assert sum(r.image in FLIPPED for r in res.issues if r.kind == "label") >= 1
        assert not list((tmp_path / f"a{settings.folds}").glob("audit-*"))  # temp runs gone


def test_apply_writes_the_corrected_labels(planted: Path, tmp_path: Path):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("image,decision,label,given,decided\n"
                     + "".join(f"{k},relabel,red,blue,\n" for k in FLIPPED)
                     + f"{STRAY},exclude,,red,\n{LEAK[0]},exclude,,green,\n")
    out = tmp_path / "labels.csv"
    r = run_cli("audit", str(planted), "--apply", str(fixes), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "3 relabelled, 2 excluded" in r.stdout
    items = resolve(DataSource(path=str(planted), csv=str(out)))
    assert len(items) == 110 - 2
    names = {Path(p).name: items.classes[lab[0]] for p, lab in zip(items.paths, items.labels,
                                                                  strict=True)}
    assert all(names[Path(k).name] == "red" for k in FLIPPED)
    assert Path(STRAY).name not in names
    r = run_cli("audit", str(planted), "--apply", str(fixes), "-o", str(tmp_path / "x.txt"))
    assert r.returncode == 2 and "-o labels.csv" in r.stderr


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="--folds"):
        AuditSettings(folds=1)


def test_the_cli_prints_the_summary_and_json(planted: Path, random_body: Path,
                                             tmp_path: Path):
    r = run_cli("audit", str(planted), "-o", str(tmp_path / "a"), "--model", str(random_body),
                "--size", "32", "--presize", "48", "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    assert "likely mislabelled" in r.stdout and "imageclf review" in r.stdout
    r = run_cli("audit", str(planted), "-o", str(tmp_path / "b"), "--model", str(random_body),
                "--size", "32", "--presize", "48", "--precision", "fp32", "--json")
    s = json.loads(r.stdout)
    assert s["counts"]["leak"] >= 1 and s["images"] == 110


def test_the_first_pass_reads_what_validation_reads(planted: Path):
    """The pixel hash is of the validation presize: the exact copy (PNG of a JPEG) hashes
    equal, its source and a mirrored copy do not."""
    a = torch.from_numpy(load_centre_square(planted / COPY[0], 48))[None]
    b = torch.from_numpy(load_centre_square(planted / COPY[1], 48))[None]
    assert pixel_hashes(a) == pixel_hashes(b)
    assert pixel_hashes(a) != pixel_hashes(a.flip(-1))


def test_a_store_is_audited_and_its_keys_name_its_images(planted: Path, random_body: Path,
                                                         tmp_path: Path):
    """The same faults in a store (imageclf pack): the leak and the copy are found, and each
    row's key leads back to its image (what fixes.csv and the review page read)."""
    from imageclf.core.commands import PackSettings
    from imageclf.data import refs
    from imageclf.data.pack import pack
    from imageclf.serve.review import image_ref

    store = tmp_path / "store"
    pack(DataSource(path=str(planted)), store, PackSettings(presize=48))
    res = audit(_data(store), _train(), AuditSettings(model=str(random_body)), tmp_path / "a")
    kinds = {r.kind for r in res.issues}
    assert {"leak", "duplicate", "label"} <= kinds
    leak = next(r for r in res.issues if r.kind == "leak")
    assert "::store::" in leak.image and not leak.image.startswith("/")
    ref = image_ref(leak.image, store)
    assert isinstance(ref, refs.StoreRef) and ref.read()[:2] == b"\xff\xd8"
    items = resolve(DataSource(path=str(store)))
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(f"image,decision,label,given,decided\n{leak.image},exclude,,green,\n")
    fixed = resolve(DataSource(path=str(store), fixes=str(fixes)))
    assert len(fixed) == len(items) - 1 and fixed.fixed_by.excluded == 1
