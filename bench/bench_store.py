"""The presized store (imageclf pack) against the raw uint8 cache, side by side in one run:

1. disk per image and PSNR at presize 160 and 256, on a set of N distinct JPEG photos made
   from Imagenette (random crops, flips and rescales, short sides 180-480, quality 80-95);
2. build time and peak memory (PSS of the whole process tree): `pack` against the raw cache's build,
   at N and at 10k images;
3. training: resnet18 at 128 from presize 160 on Imagenette, 2 epochs, 2 seeds, with the
   raw cache, with the store read by index (--cache jpeg), and 1 seed streamed over HTTP
   from `python -m http.server` on 127.0.0.1: warm-epoch images/s and accuracy;
4. the loader alone (imageclf bench loader), images/s, raw against jpeg.

Usage: bench/bench_store.py [--n 100000] [--work DIR] [--only build|train]
Figures go to bench/results/store.json and docs/benchmarks.md (bench/report.py)."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from common import RESULTS, ROOT, cpu_name, imagenette, machine, measured, save, spread_csv

IMAGECLF = [sys.executable, "-m", "imageclf"]


def _make_one(job: tuple[str, str, int]) -> None:
    from PIL import Image, ImageOps

    src, dst, seed = job
    rng = random.Random(seed)
    with Image.open(src) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = rng.uniform(0.55, 1.0)
        cw, ch = int(w * s * rng.uniform(0.8, 1.0)), int(h * s * rng.uniform(0.8, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        im = im.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            im = ImageOps.mirror(im)
        short = rng.randint(180, 480)
        k = short / min(im.size)
        im = im.resize((round(im.width * k), round(im.height * k)), Image.Resampling.BICUBIC)
        im.save(dst, "JPEG", quality=rng.randint(80, 95))


def make_set(photos: Path, out: Path, n: int) -> Path:
    """N distinct JPEGs in class folders, made from the photos of `photos`/train."""
    if out.is_dir() and sum(1 for _ in out.rglob("*.jpg")) >= n:
        return out
    src = sorted(photos.glob("train/*/*.JPEG"))
    random.Random(0).shuffle(src)  # every class from the first images on
    jobs = []
    for i in range(n):
        p = src[i % len(src)]
        d = out / p.parent.name
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((str(p), str(d / f"{p.stem}_{i}.jpg"), i))
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_make_one, jobs, chunksize=256))
    return out


RAW_BUILD = """
import sys, time
from pathlib import Path
from imageclf.data.sources import resolve
from imageclf.data.cache import PresizeCache
items = resolve(sys.argv[1])
c = PresizeCache(list(items.paths), int(sys.argv[2]), cache_dir=sys.argv[3])
c.build(); c.wait()
print(sum(f.stat().st_size for f in Path(sys.argv[3]).glob("*.u8")))
"""


def psnr(store: Path, presize: int, k: int = 400) -> dict:
    """PSNR of k stored images against the raw presized image of their source."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "src"))
    from imageclf.data.images import load_presized
    from imageclf.data.store import StoreRef, read_index

    rows = read_index(store)
    rows = rows[:: max(1, len(rows) // k)][:k]
    vals = []
    for r in rows:
        raw = load_presized(r.source, presize).array.astype(np.float64)
        got = load_presized(StoreRef(store / r.shard, r.offset, r.size), presize).array
        vals.append(10 * np.log10(255**2 / np.mean((raw - got) ** 2)))
    return {"median": round(float(np.median(vals)), 2), "mean": round(float(np.mean(vals)), 2),
            "p10": round(float(np.percentile(vals, 10)), 2), "images": len(vals)}


def disk_and_build(data: Path, work: Path, presize: int, label: str) -> dict:
    store, cache = work / f"store-{label}-{presize}", work / f"cache-{label}-{presize}"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    raw = measured([sys.executable, "-c", RAW_BUILD, str(data), str(presize), str(cache)])
    raw_bytes = int(raw["stdout"].split()[-1])
    packed = measured([*IMAGECLF, "pack", str(data), "-o", str(store), "--presize",
                       str(presize), "--json"])
    m = json.loads(packed["stdout"])
    n = sum(m["counts"].values())
    store_bytes = sum(f.stat().st_size for f in store.iterdir())
    out = {"images": n, "presize": presize,
           "raw": {"bytes": raw_bytes, "per_image_kb": round(raw_bytes / n / 1e3, 2),
                   "seconds": raw["seconds"], "peak_mb": raw["peak_mb"]},
           "store": {"bytes": store_bytes, "per_image_kb": round(store_bytes / n / 1e3, 2),
                     "seconds": packed["seconds"], "peak_mb": packed["peak_mb"],
                     "shards": len(m["shards"])},
           "disk_ratio": round(store_bytes / raw_bytes, 4),
           "build_ratio": round(packed["seconds"] / raw["seconds"], 3)}
    if label == "full":
        out["psnr"] = psnr(store, presize)
    shutil.rmtree(cache, ignore_errors=True)
    return out


def train(source: str, work: Path, name: str, seed: int, extra: list[str]) -> dict:
    out = work / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    args = [*IMAGECLF, "train", source, "--arch", "resnet18", "--pretrained", "none",
            "--size", "128", "--presize", "160", "--bs", "64", "--epochs", "2",
            "--lr", "2e-3", "--seed", str(seed), "--out", str(out),
            "--cache-dir", str(work / "train-cache"), *extra]
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{name} failed:\n{r.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {"name": name, "seed": seed, "wall_s": round(time.perf_counter() - t0, 1),
            "valid_accuracy": m["valid_accuracy"],
            "warm_epoch_img_s": m["history"][-1]["img_per_s"],
            "epoch_img_s": [row["img_per_s"] for row in m["history"]], "cache": m["cache"]}


def loader(source: str, work: Path, cache: str) -> dict:
    r = subprocess.run([*IMAGECLF, "bench", "loader", source, "--epochs", "2", "--cache",
                        cache, "--cache-dir", str(work / f"loader-{cache}"), "--json"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout)


def serve(folder: Path) -> tuple[str, subprocess.Popen]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                          "127.0.0.1", "--directory", str(folder)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return f"http://127.0.0.1:{port}/", p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--work", default=str(ROOT / "bench" / "work" / "store"))
    ap.add_argument("--data", help="extracted Imagenette (default: the shared tar)")
    ap.add_argument("--runs", help="with --only train: the training runs to do again "
                    "(e.g. store-0,http-0), the others kept from the last result")
    ap.add_argument("--before", help="store.json of the same build measured at an earlier "
                    "commit on this machine, shown beside this run's rows")
    ap.add_argument("--only", choices=("build", "train"),
                    help="run one part, keeping the other part's figures from the last run "
                    "(with the machine and commit each part was measured on)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    photos = imagenette(args.data)
    result: dict = {"machine": machine(), "n": args.n}
    last = RESULTS / "store.json"
    if args.only and last.exists():
        old = json.loads(last.read_text())
        keep = ("loader", "imagenette_pack_s", "train") if args.only == "build" else (
            "make_set_s", "build", "n", *(("loader",) if args.runs else ()))
        result |= {k: old[k] for k in keep if k in old}
        result[f"machine_{'train' if args.only == 'build' else 'build'}"] = old.get(
            f"machine_{'train' if args.only == 'build' else 'build'}", old["machine"])
    if args.only != "train":
        t0 = time.perf_counter()
        big = make_set(photos, work / f"photos-{args.n}", args.n)
        result["make_set_s"] = round(time.perf_counter() - t0, 1)
        small = spread_csv(big, min(10_000, args.n // 10), work / "spread.csv")
        result["build"] = []
        for presize in (160, 256):
            for label, data in (("10k", small), ("full", big)):
                row = disk_and_build(data, work, presize, label)
                print(json.dumps(row), flush=True)
                result["build"].append(row)
                save("store", result)
    if args.before:
        old = json.loads(Path(args.before).read_text())
        result["build_before"] = {"machine": old["machine"], "build": old["build"]}
    if args.only != "build":
        redo = set(args.runs.split(",")) if args.runs else None
        old_runs = {t["name"]: t for t in json.loads(last.read_text()).get("train", [])} \
            if redo and last.exists() else {}
        if redo and last.exists():
            result["machine_train"] = machine()
            result["machine_kept_runs"] = json.loads(last.read_text())["machine"]
        if not redo:
            result["loader"] = {c: loader(str(photos), work, c) for c in ("raw", "jpeg")}
        store = work / "imagenette-store"
        shutil.rmtree(store, ignore_errors=True)
        packed = measured([*IMAGECLF, "pack", str(photos), "-o", str(store), "--presize",
                           "160", "--json"])
        result["imagenette_pack_s"] = packed["seconds"]
        runs = []

        def one(name: str, source: str, seed: int, extra: list[str]) -> None:
            if redo is not None and name not in redo and name in old_runs:
                runs.append(old_runs[name])
            else:
                runs.append(train(source, work, name, seed, extra))
                print(json.dumps(runs[-1]), flush=True)
            result["train"] = runs
            save("store", result)

        for seed in (0, 1):
            one(f"raw-{seed}", str(photos), seed, ["--cache", "raw"])
            one(f"store-{seed}", str(store), seed, ["--cache", "jpeg"])
        url, server = serve(work)
        try:
            one("http-0", url + "imagenette-store/", 0, [])
        finally:
            server.terminate()
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    save("store", result)


# --- its part of docs/benchmarks.md --------------------------------------------------------
IMAGENET_IMAGES = 1_281_167


def section(r: dict) -> str:
    m = r["machine"]
    lines = [
        "## The store: `imageclf pack` against the raw cache", "",
        f"`bench/bench_store.py`: {r['n']:,} distinct JPEG photos made from Imagenette's "
        "(random crops, flips, rescales to short sides of 180-480, quality 80-95), and an "
        "evenly spread tenth of them. Disk, build wall and peak memory (the PSS of the whole "
        "process tree, forked workers' shared pages counted once) side by side, the raw "
        "cache's build first. PSNR of 400 stored images against their raw presized image. "
        f"Measured {m['date']} on {cpu_name(m)} ({m['isa']}), {m['cores']} cores, commit "
        f"{m['commit']}. Goals: disk ≤ 1/6 of raw at ≥ 38 dB; build ≤ 1.2×; peak memory "
        "< 1 GB.", "",
        "| presize | images | raw KB/image | store KB/image | store/raw | PSNR median (p10) "
        "| raw build | pack | pack/raw | peak MB raw / pack | ImageNet raw → store |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in r["build"]:
        ps = b.get("psnr")
        proj = (f"{IMAGENET_IMAGES * b['raw']['per_image_kb'] / 1e6:.0f} GB → "
                f"{IMAGENET_IMAGES * b['store']['per_image_kb'] / 1e6:.0f} GB")
        lines.append(
            f"| {b['presize']} | {b['images']:,} | {b['raw']['per_image_kb']:.1f} | "
            f"{b['store']['per_image_kb']:.1f} | {b['disk_ratio']:.3f} | "
            + (f"{ps['median']:.1f} ({ps['p10']:.1f}) dB" if ps else "-")
            + f" | {b['raw']['seconds']:.0f} s | {b['store']['seconds']:.0f} s | "
            f"{b['build_ratio']:.2f}× | {b['raw']['peak_mb']} / {b['store']['peak_mb']} | "
            f"{proj} |")
    if r.get("build_before"):
        bm = r["build_before"]["machine"]
        lines += ["", f"The same build at commit {bm['commit']} (before pack's memory fixes), "
                  f"run separately on the same machine ({cpu_name(bm)}, {bm['date']}): "
                  "peak memory of pack, and its build against the raw cache's, then and now. "
                  "Each ratio is taken within its own run; the raw build itself varies from "
                  "run to run (its seconds are shown). Goal: flat within 10% from 10k to "
                  "100k images.", "",
                  "| presize | images | pack peak MB then | now | raw build then | now "
                  "| pack/raw then | now |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for b0, b in zip(r["build_before"]["build"], r["build"], strict=True):
            lines.append(f"| {b['presize']} | {b['images']:,} | {b0['store']['peak_mb']} | "
                         f"{b['store']['peak_mb']} | {b0['raw']['seconds']:.0f} s | "
                         f"{b['raw']['seconds']:.0f} s | {b0['build_ratio']:.2f}× | "
                         f"{b['build_ratio']:.2f}× |")
        for when, rows in (("then", r["build_before"]["build"]), ("now", r["build"])):
            growth = []
            for small, big in zip(rows[::2], rows[1::2], strict=True):
                g = big["store"]["peak_mb"] / small["store"]["peak_mb"] - 1
                growth.append(f"{small['presize']}: {100 * g:+.0f}%")
            lines += ["", f"Growth of pack's peak from 10k to 100k images, {when}: "
                      + ", ".join(growth) + "."]
    mt, mk = r.get("machine_train"), r.get("machine_kept_runs")
    if mt and (r.get("loader") or r.get("train")):
        lines += ["", f"The training rows below: measured {mt['date']} on {cpu_name(mt)} "
                  f"({mt['isa']}), {mt['cores']} cores, commit {mt['commit']}"
                  + (f"; the raw-cache rows and the loader at commit {mk['commit']}, the "
                     "same day and machine, one run earlier (before pack wrote its samples "
                     "in a seeded order, which the raw cache does not use)" if mk else "")
                  + "."]
    if r.get("loader"):
        lines += ["", "The loader alone (`imageclf bench loader`, Imagenette train, 128 px "
                  "from presize 160, batch 64, full augmentation), warm epoch:", "",
                  "| cache | images/s |", "|---|---:|"]
        for form, x in r["loader"].items():
            lines.append(f"| {form} | {x['epochs'][-1]['img_per_s']:.0f} |")
    if r.get("train"):
        lines += ["", "Training: resnet18 from scratch at 128 px from presize 160, batch 64, "
                  "2 epochs at 2e-3, Imagenette (9,469 train / 3,925 valid): the raw cache, "
                  "the store read by index (`--cache jpeg`), and the store streamed over "
                  "HTTP from `python -m http.server` on 127.0.0.1. Warm epoch = the second.",
                  "", "| run | seed | valid accuracy | warm epoch images/s | wall |",
                  "|---|---:|---:|---:|---:|"]
        for t in r["train"]:
            lines.append(f"| {t['name']} | {t['seed']} | {100 * t['valid_accuracy']:.1f}% | "
                         f"{t['warm_epoch_img_s']:.0f} | {t['wall_s']:.0f} s |")
    return "\n".join([*lines, "", ""])


if __name__ == "__main__":
    main()
