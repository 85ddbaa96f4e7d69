"""Training throughput on the training device: end to end vs the model's own ceiling.

    python bench/bench_device.py [--data DIR] [--arch resnet50] [--size 224] [--bs 128]
        [--presize 256] [--epochs 3] [--decode cpu|device] [--compile] [--device auto]

Ceiling: the same Learner's `train_step` (same model, precision, channels_last, fused
AdamW) on one synthetic batch already on the device, timed over --steps steps after
--warmup. End to end: the Learner training on the images from a fresh presize cache: the
first epoch is cold (decoding into the cache), the later ones warm; images/s per epoch is
the learner's own figure (its training loop only; the device is synchronised before the
clock stops). Goal on a GPU: warm epoch >= 90% of the ceiling. Writes
bench/results/device.json (or --name) and regenerates docs/benchmarks.md.

For a machine that cannot take the whole data set along, `--subset N` copies N images per
class of each split into bench/work/subset-N first (Imagenette: --subset 250 is 50 MiB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from common import cpu_name, imagenette, machine, save, subset
from imageclf.core.config import DataConfig, TrainConfig
from imageclf.core.distributed import from_env
from imageclf.run.runs import RunContext, build_learner
from report import render


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def ceiling(learn, dev: torch.device, size: int, bs: int, warmup: int, steps: int,
            n_classes: int) -> float:
    """Images/s of train_step alone on a batch already on the device."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(bs, 3, size, size, generator=g).to(dev).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, n_classes, (bs,), generator=g).to(dev)
    learn.model.train()
    learn.set_lrs([1e-4] * learn.n_groups)
    for _ in range(warmup):
        learn.train_step(x, y)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        learn.train_step(x, y)
    sync(dev)
    return steps * bs / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--subset", type=int, default=0)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--presize", type=int, default=256)
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--decode", default="cpu")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--name", default="device")
    a = ap.parse_args()
    data = imagenette(a.data)
    if a.subset:
        data = subset(data, a.subset)
    _, dev = from_env(a.device)
    tcfg = TrainConfig.build(arch=a.arch, pretrained="none", head="timm", precision=a.precision,
                       compile=a.compile)
    with tempfile.TemporaryDirectory() as tmp:
        def dcfg(cache: str) -> DataConfig:
            return DataConfig.build(path=str(data), size=a.size, presize=a.presize, bs=a.bs,
                                    cache_dir=f"{tmp}/{cache}", decode=a.decode)

        # the ceiling first, on its own learner and cache (a learner starts its cache's
        # build when it is made): the end-to-end run starts from fresh weights, optimiser
        # state and a cold cache
        learn = build_learner(dcfg("cache-ceiling"), tcfg, RunContext(dev))
        n_classes = len(learn.dls.classes)
        top = ceiling(learn, dev, a.size, a.bs, a.warmup, a.steps, n_classes)
        print(f"ceiling: {top:.0f} img/s", flush=True)
        del learn
        t0 = time.perf_counter()
        learn = build_learner(dcfg("cache"), tcfg, RunContext(dev))  # builds the cache
        build = time.perf_counter() - t0
        assert learn.dls.train.cache.stats.decoded > 0, "the cache must start cold"
        learn.fit_one_cycle(a.epochs, a.lr)
        wall = time.perf_counter() - t0
        rows = learn.history.rows
        stats = learn.dls.train.cache.stats
    warm = [r["img_per_s"] for r in rows[1:]]
    result = {
        "machine": machine() | {"device": torch.cuda.get_device_name(dev)
                                if dev.type == "cuda" else "cpu",
                                "torch": torch.__version__,
                                "cpu_threads": torch.get_num_threads(),
                                "cpu_count": os.cpu_count()},
        "settings": vars(a) | {"data": str(data), "precision": learn.precision.name},
        "ceiling_img_per_s": top,
        "epochs": rows,
        "cold_img_per_s": rows[0]["img_per_s"],
        "warm_img_per_s": statistics.median(warm) if warm else None,
        "cache": {"decoded": stats.decoded, "unreadable": stats.unreadable,
                  "seconds": stats.seconds},
        "cache_build_seconds": build,
        "wall_seconds": wall,
        "valid_accuracy": rows[-1]["valid_accuracy"],
    }
    if warm:
        result["warm_fraction_of_ceiling"] = result["warm_img_per_s"] / top
    result["cold_fraction_of_ceiling"] = result["cold_img_per_s"] / top
    print({k: v for k, v in result.items() if k not in ("epochs", "machine", "settings")})
    print(save(a.name, result))
    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(results: list[dict]) -> str:
    """bench_device.py runs: training images/s end to end against the step's ceiling."""
    lines = [
        "## Training device: end to end vs the training step's ceiling",
        "",
        "`bench/bench_device.py`: the ceiling is the same Learner's `train_step` on one"
        " synthetic batch already on the device; end to end is `fit_one_cycle` on Imagenette"
        " from a fresh presize cache (built when the learner is made, its seconds in their"
        " own column; the first epoch cold, later epochs warm), images/s of the training"
        " loop. Goal on a GPU: warm >= 90% of the ceiling. On a machine"
        " with a CUDA GPU, `bash bench/gpu_checks.sh DATA` runs the CUDA tests and the three"
        " GPU rows (default, `--decode device`, `--compile`) in under ten minutes.",
        "",
        "| device | date, commit | model | size / presize | batch | precision | decode |"
        " compile | cache build (s) | ceiling (img/s) | cold (img/s) | warm (img/s) |"
        " warm / ceiling |",
        "|---|---|---|---|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]

    def where(m: dict) -> str:  # a GPU's name, or which CPU
        return f"cpu ({cpu_name(m)})" if m["device"] == "cpu" else m["device"]

    for r in results:
        m, st = r["machine"], r["settings"]
        warm = r.get("warm_img_per_s")
        frac = r.get("warm_fraction_of_ceiling")
        # runs before the learner built its cache when made decoded inside the first epoch
        build = r.get("cache_build_seconds")
        build = f"{build:.1f}" if build is not None else "in the cold epoch"
        lines.append(
            f"| {where(m)} | {m['date']}, {m['commit']} | {st['arch']} |"
            f" {st['size']} / {st['presize']} | {st['bs']} | {st['precision']} |"
            f" {st['decode']} | {'yes' if st['compile'] else 'no'} | {build} |"
            f" {r['ceiling_img_per_s']:.0f} | {r['cold_img_per_s']:.0f} |"
            f" {warm:.0f} | **{frac:.0%}** |" if warm is not None else
            f"| {where(m)} | {m['date']}, {m['commit']} | {st['arch']} | ... | | | | | {build} |"
            f" {r['ceiling_img_per_s']:.0f} | {r['cold_img_per_s']:.0f} | | |")
    return "\n".join([*lines, ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    return (f"warm epochs {100 * r['warm_fraction_of_ceiling']:.0f}% of the step's "
            f"ceiling ({r['warm_img_per_s']:.0f} of {r['ceiling_img_per_s']:.0f} img/s)")


if __name__ == "__main__":
    main()
