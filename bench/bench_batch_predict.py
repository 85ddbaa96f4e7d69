"""Batch prediction (`imageclf predict MODEL SOURCE -o OUT`) against its ceiling and the
loops people write, side by side in one run:

1. the ceiling: the model's forward pass alone on pre-decoded uint8 batches (the same
   normalisation on the device), images/s;
2. `predict -o` from JPEG files (a CSV list of Imagenette validation photos) and from a
   store of the same photos (presize 256), whole process and its own images/s;
3. a plain PIL + torchvision + DataLoader loop and timm's inference pipeline
   (bench/predict_loops.py), fp32, resnet18 at 224;
4. two processes under torchrun against one, on the same files;
5. resume: kill -9 halfway, rerun, compare the union of the parts with an uninterrupted run;
6. memory: peak RSS of `predict -o` over 10k and 100k tiny generated images.
Models: resnet18 at 224 (presize 256) and the fastest recipe's resnet10t at 64 (presize
112), seeded random weights (speed does not depend on them).

    python bench/bench_batch_predict.py [--data DIR] [--n 1000] [--skip-memory]
Figures: bench/results/batch_predict.json, docs/benchmarks.md (bench/report.py)."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, ROOT, cpu_name, imagenette, machine, measured, save, spread_csv

IMAGECLF = [sys.executable, "-m", "imageclf"]
HERE = Path(__file__).parent
MODELS = {"resnet18": ("resnet18", "concat", 224, 256),
          "resnet10t_fastest": ("resnet10t", "timm", 64, 112)}


def make_model(folder: Path, arch: str, head: str, size: int, presize: int) -> Path:
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from imageclf.core.modelmeta import ModelMeta
    from imageclf.model.classifier import create_model
    from imageclf.model.export import save_model

    torch.manual_seed(0)
    return save_model(create_model(arch, 10, "none", head), folder, ModelMeta(
        arch=arch, head=head, classes=tuple(f"c{i}" for i in range(10)), size=size,
        presize=presize, resize_method="crop", mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225), loss="cross_entropy"))


CEILING = """
import json, sys, time, torch
from imageclf.model.predict import Predictor
model, csv_path, precision, bs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
files = [l.split(",")[0] for l in open(csv_path).read().splitlines()[1:]]
pred = Predictor(model, precision=precision)
xs = [torch.stack([pred.load(f) for f in files[i:i + bs]]) for i in range(0, len(files), bs)]
pred.outputs(xs[0])
t0 = time.perf_counter()
for x in xs:
    pred.outputs(x)
print(json.dumps({"images": len(files), "seconds": time.perf_counter() - t0,
                  "precision": pred.precision.name}))
"""


def rate(r: dict) -> float:
    return round(r["images"] / r["seconds"], 1)


def ours(model: Path, source: Path, out: Path, precision: str, extra: tuple = (),
         launch: tuple = ()) -> dict:
    cmd = [*(launch or IMAGECLF), "predict", str(model), str(source), "-o", str(out),
           "--precision", precision, "--bs", "32", "--json", *extra]
    r = measured(cmd)
    m = json.loads(r["stdout"][r["stdout"].index("{"):])
    n = m["predicted"] + m["unreadable"]
    return {"images": n, "process_images_per_s": m["images_per_s"],
            "whole_images_per_s": round(n / r["seconds"], 1), "wall": r["seconds"],
            "peak_mb": r["peak_mb"]}


def throughput(data: Path, work: Path, n: int) -> dict:
    files = spread_csv(data / "val", n, work / "files.csv", "*.JPEG")
    store = work / "store"
    subprocess.run([*IMAGECLF, "pack", str(files), "-o", str(store), "--presize", "256"],
                   check=True, capture_output=True)  # its split is not read: every row is
    out: dict = {}
    for name, (arch, head, size, presize) in MODELS.items():
        model = make_model(work / name, arch, head, size, presize)
        rows: dict = {}
        for precision in ("fp32", "auto"):
            ceil = json.loads(subprocess.run(
                [sys.executable, "-c", CEILING, str(model), str(files), precision, "32"],
                check=True, capture_output=True, text=True).stdout)
            rows[f"ceiling_{precision}"] = {"images_per_s": rate(ceil),
                                            "precision": ceil["precision"]}
            rows[f"files_{precision}"] = ours(model, files, work / f"o-{name}-{precision}",
                                              precision)
            if name == "resnet18":  # the store is presized at 256, this model's presize
                rows[f"store_{precision}"] = ours(model, store, work / f"s-{name}-{precision}",
                                                  precision)
            print(name, precision, json.dumps(rows), flush=True)
        if name == "resnet18":
            for kind in ("pil", "timm"):
                r = json.loads(subprocess.run(
                    [sys.executable, str(HERE / "predict_loops.py"), kind, str(files),
                     str(size), "32", "2"], check=True, capture_output=True,
                    text=True).stdout)
                rows[f"{kind}_loop"] = {"images_per_s": rate(r)}
            run = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", "2", "-m", "imageclf"]
            rows["torchrun_2_fp32"] = ours(model, files, work / "t2", "fp32", launch=run)
        out[name] = rows
    return out


KILL_AT = """
import os, signal, sys
from imageclf.core.commands import BatchOptions, PredictOptions
from imageclf.jobs.batch_predict import predict_batch
from imageclf.model.predict import Predictor
model, source, out, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def progress(s):
    if s.done >= after:
        os.kill(os.getpid(), signal.SIGKILL)
predict_batch(Predictor(model), source, out, PredictOptions(bs=32), BatchOptions(chunk=128),
              top_k=3, progress=progress)  # the command line's --top-k
"""


def resume(work: Path, n: int) -> dict:
    import pyarrow.parquet as pq

    model, files = work / "resnet10t_fastest", work / "files.csv"
    killed, whole = work / "killed", work / "whole"
    p = subprocess.run([sys.executable, "-c", KILL_AT, str(model), str(files), str(killed),
                        str(n // 2)], capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    kept = len(list(killed.glob("part-*.parquet")))
    a = ours(model, files, killed, "auto", ("--chunk", "128"))
    ours(model, files, whole, "auto", ("--chunk", "128"))
    ra, rb = (sorted(pq.read_table(d).to_pylist(), key=lambda r: r["path"])
              for d in (killed, whole))
    return {"parts_kept": kept, "parts": -(-n // 128), "rows": len(ra),
            "rows_equal": ra == rb, "rerun_images": a["images"]}


def tiny_images(root: Path, n: int) -> Path:
    """n 32x24 noise JPEGs in folders of 1000 (made once)."""
    import numpy as np
    from PIL import Image

    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) >= n:
        return root
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"d{i // 1000:04d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
            d / f"image_{i:07d}.jpg", quality=80)
    return root


def memory(work: Path) -> dict:
    model = make_model(work / "tiny", "resnet10t", "timm", 32, 40)
    big = tiny_images(work / "tiny-100k", 100_000)
    small = work / "tiny-10k"
    if not small.exists():  # a copy: the listing does not follow links to folders
        small.mkdir()
        for d in sorted(big.iterdir())[:10]:
            shutil.copytree(d, small / d.name)
    out = {}
    for name, src in (("10k", small), ("100k", big)):
        shutil.rmtree(work / f"m-{name}", ignore_errors=True)  # a fresh job, not a resume
        r = ours(model, src, work / f"m-{name}", "auto", ("--chunk", "4096"))
        out[name] = {"images": r["images"], "peak_mb": r["peak_mb"], "wall": r["wall"],
                     "images_per_s": r["process_images_per_s"]}
        print(name, out[name], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true",
                    help="measure the memory rows alone, keeping the last result's others")
    a = ap.parse_args()
    data = imagenette(a.data)
    result: dict = {"machine": machine(), "n": a.n}
    if a.memory_only:
        result = json.loads((RESULTS / "batch_predict.json").read_text())
        result["machine_memory"] = machine()
    else:
        _throughput_and_resume(data, a.n, result)
    if not a.skip_memory:
        keep = ROOT / "bench" / "work" / "batch_predict"
        keep.mkdir(parents=True, exist_ok=True)
        result["memory"] = memory(keep)
    print(save("batch_predict", result))


def _throughput_and_resume(data: Path, n: int, result: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result["throughput"] = throughput(data, work, n)
        save("batch_predict", result)
        result["resume"] = resume(work, n)
        save("batch_predict", result)


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    m, t = r["machine"], r["throughput"]
    lines = [
        "## Batch prediction: `predict -o` against its ceiling and the usual loops",
        "",
        f"`bench/bench_batch_predict.py`: {r['n']} Imagenette validation photos listed in a "
        "CSV (and packed into a store at presize 256), batch 32, seeded random weights. "
        "Ceiling: the forward pass alone on pre-decoded batches. `predict -o`: its own "
        "images/s (listing and model load excluded) and the whole process's. The loops "
        "(bench/predict_loops.py): PIL + torchvision transforms + a DataLoader with 2 "
        "workers, and timm's inference pipeline (ImageDataset + create_loader, 2 workers); "
        f"both fp32 resnet18. Measured {m['date']} on {cpu_name(m)} ({m['cores']} cores), "
        f"commit {m['commit']}.",
        "",
        "| model | run | precision | images/s | of the ceiling | whole process images/s |",
        "|---|---|---|---:|---:|---:|",
    ]
    for model, rows in t.items():
        for key, v in rows.items():
            run, _, prec = key.rpartition("_")
            if prec not in ("fp32", "auto"):
                run, prec = key, "fp32"
            ceil = rows[f"ceiling_{prec}"]
            shown = ceil["precision"] if prec == "auto" else prec
            ips = v.get("process_images_per_s", v.get("images_per_s"))
            frac = "" if run == "ceiling" else f"{ips / ceil['images_per_s']:.2f}"
            whole = v.get("whole_images_per_s")
            run = "torchrun, 2 processes (rank 0's share)" if run == "torchrun_2" else run
            lines.append(f"| {model} | {run} | {shown} | {ips:.0f} | {frac} | "
                         f"{'' if whole is None else f'{whole:.0f}'} |")
    if "resume" in r:
        s = r["resume"]
        lines += ["", f"Resume: killed (SIGKILL) after half the images with {s['parts_kept']} "
                  f"of {s['parts']} parts written; after the rerun the job has "
                  f"{s['rerun_images']} rows, and the union of the parts "
                  f"{'equals' if s['rows_equal'] else 'DIFFERS from'} an uninterrupted run's "
                  f"{s['rows']} rows."]
    if "memory" in r:
        mm = r["memory"]
        lines += ["", "Memory: peak PSS of the whole `predict -o` process tree over tiny "
                  "generated JPEGs (32x24, folders of 1000), resnet10t at 32: "
                  + ", ".join(f"{k} images {v['peak_mb']} MB ({v['images_per_s']:.0f} images/s)"
                              for k, v in mm.items()) + "."]
    return "\n".join(lines) + "\n"


def headline(r: dict) -> str:
    t = r["throughput"]["resnet18"]
    best = max(t["pil_loop"]["images_per_s"], t["timm_loop"]["images_per_s"])
    f32, auto = t["files_fp32"]["process_images_per_s"], t["files_auto"]["process_images_per_s"]
    return (f"resnet18 from files: fp32 {f32:.0f} images/s, "
            f"{f32 / t['ceiling_fp32']['images_per_s']:.2f} of the ceiling, {f32 / best:.2f}x "
            f"the best fp32 loop; {t['ceiling_auto']['precision']} {auto:.0f} images/s, "
            f"{auto / best:.2f}x")


if __name__ == "__main__":
    main()
