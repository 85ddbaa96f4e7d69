"""A store's JPEG size chosen by quality: `pack --quality auto` against the fixed q90, on
Imagenette and on a high-detail set (generated textures), imageclf alone.

    python bench/bench_jpeg_quality.py [--data DIR] [--per-class 100] [--textures 600]

Each store's size per image, its share of the raw cache's slot (3 x P x ceil(1.25 P)
bytes), and the PSNR of every stored image against the presized image it was encoded from
(median and 10th percentile). Writes bench/results/jpeg_quality.json and regenerates
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import cpu_name, imagenette, machine, save
from imageclf.core.commands import PackSettings
from imageclf.core.config import DataSource
from imageclf.data.images import load_presized
from imageclf.data.jpegquality import psnr
from imageclf.data.pack import pack
from imageclf.data.store import StoreRef, decode_hwc, read_index
from report import render


def subset(data: Path, out: Path, per_class: int) -> Path:
    """`per_class` images of each class and split of `data`, as links."""
    for split in ("train", "val"):
        for cls in sorted(p for p in (data / split).iterdir() if p.is_dir()):
            (out / split / cls.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.iterdir())[:per_class]:
                (out / split / cls.name / f.name).symlink_to(f)
    return out


def textures(out: Path, n: int, seed: int = 0) -> Path:
    """Stand-ins for high-detail photos: 640 x 480 images of detail at every scale down to
    two pixels (noise at four scales, resized smoothly, more energy at the coarse ones as in
    photographs) and fine stripes, saved at JPEG 97; two classes by the stripes' direction."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    for i in range(n):
        cls = "vertical" if i % 2 else "horizontal"
        img = np.zeros((480, 640, 3), np.float32)
        for scale in (2, 4, 16, 64):
            small = (rng.random((480 // scale + 1, 640 // scale + 1, 3)) * 255).astype(np.uint8)
            big = np.asarray(Image.fromarray(small).resize((640, 480), Image.BICUBIC))
            img += big.astype(np.float32) * (scale**0.5 / 8)
        wave = np.sin((xx if cls == "vertical" else yy) * rng.uniform(0.3, 1.2)
                      + rng.uniform(0, 6))
        img = img / img.max() * 215 + 40 * (wave[..., None] + 1) / 2
        split = "val" if i % 5 == 0 else "train"
        (out / split / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            out / split / cls / f"t{i:05d}.jpg", quality=97)
    return out


def measure(data: Path, store: Path, quality: str, presize: int, target: float) -> dict:
    """Pack `data` at `quality` and measure every stored image."""
    t0 = time.perf_counter()
    s = PackSettings(presize=presize, quality=int(quality) if quality.isdigit() else quality,
                     psnr=target)
    m = pack(DataSource(path=str(data)), store, s)
    seconds = time.perf_counter() - t0
    scores = []
    for r in read_index(store):
        stored = decode_hwc(StoreRef(store / r.shard, r.offset, r.size).read())
        pre = load_presized(Path(r.source), presize, m.method)
        scores.append(psnr(pre.hwc(), stored))
    n = sum(m.counts.values())
    per = sum(sh.bytes for sh in m.shards) / n
    slot = 3 * presize * math.ceil(presize * 1.25)
    return {"quality": quality, "chosen": m.quality, "subsampling": m.subsampling, "n": n,
            "bytes_per_image": round(per), "of_raw": round(per / slot, 4),
            "psnr_median": round(float(np.median(scores)), 2),
            "psnr_p10": round(float(np.percentile(scores, 10)), 2),
            "pack_seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", help="extracted Imagenette (train/, val/)")
    ap.add_argument("--per-class", type=int, default=100, help="Imagenette images a class "
                    "and split")
    ap.add_argument("--textures", type=int, default=600)
    ap.add_argument("--presize", type=int, default=160)
    ap.add_argument("--psnr", type=float, default=38.0)
    a = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"imagenette": subset(imagenette(a.data), Path(tmp) / "imagenette",
                                     a.per_class),
                "textures": textures(Path(tmp) / "textures", a.textures)}
        for name, data in sets.items():
            for q in ("90", "auto"):
                rows[f"{name}, {q}"] = measure(data, Path(tmp) / f"{name}-{q}", q, a.presize,
                                               a.psnr)
                print(name, rows[f"{name}, {q}"], flush=True)
    result = {"machine": machine(), "settings": vars(a), "rows": rows}
    print(save("jpeg_quality", result))
    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    m, st = r["machine"], r["settings"]
    lines = [
        "## The store's JPEG chosen by quality: `pack --quality auto`", "",
        f"`bench/bench_jpeg_quality.py`: {st['per_class']} Imagenette photos a class and "
        f"split (its 224 px copy) and {st['textures']} generated high-detail textures "
        "(640 x 480, smooth noise at four scales down to 2 px and fine stripes, saved at JPEG "
        f"97), packed at presize {st['presize']} with the fixed q90 (4:4:4) and with "
        f"`--quality auto --psnr {st['psnr']:g}`. PSNR: every stored image against the "
        "presized image it was encoded from; raw: the raw cache's slot, 3 x P x "
        "ceil(1.25 P) bytes. Goal: at most 1/6 of raw at a median of at least 38 dB. "
        f"Measured {m['date']} on {cpu_name(m)}, {m['cores']} cores, commit {m['commit']}.",
        "",
        "| set, quality | chosen | images | KB an image | of raw | PSNR median | PSNR p10 |",
        "|---|---|---:|---:|---:|---:|---:|"]
    for name, x in r["rows"].items():
        lines.append(f"| {name} | {x['chosen']} {x['subsampling']} | {x['n']} | "
                     f"{x['bytes_per_image'] / 1024:.1f} | {x['of_raw']:.3f} | "
                     f"{x['psnr_median']:.1f} dB | {x['psnr_p10']:.1f} dB |")
    return "\n".join([*lines, "", ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    return "--quality auto: " + ", ".join(
        f"{k.split(',')[0]} {x['of_raw']:.3f} of raw at {x['psnr_median']:.1f} dB"
        for k, x in r["rows"].items() if k.endswith("auto"))


if __name__ == "__main__":
    main()
