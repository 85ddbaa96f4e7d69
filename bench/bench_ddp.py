"""Several processes on one CPU machine: one process using every core against torchrun with
N gloo processes sharing the cores (OMP threads split between them), at the same global
batch. resnet18 from scratch, Imagenette (a per-class subset by default), size 128,
presize 160, global batch 64; each job from a cold presize cache: epoch 0 is cold, the
later ones warm. Images/s per epoch are the learner's own figures (the whole job's images).

    python bench/bench_ddp.py [--data DIR] [--subset 100] [--procs 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_name, imagenette, machine, recipe_parser, run, save, subset
from report import render


def job(data: Path, procs: int, a: argparse.Namespace, tmp: str) -> dict:
    out = Path(tmp) / f"run-{procs}"
    cores = os.cpu_count() or 1
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc_per_node", str(procs)] if procs > 1 else [sys.executable]
    cmd = [*launch, "-m", "imageclf", "train", str(data), "--pretrained", "none",
           "--size", str(a.size), "--presize", str(a.presize), "--bs", str(a.bs // procs),
           "--epochs", str(a.epochs), "--lr", "1e-3", "--seed", "0",
           "--cache-dir", str(Path(tmp) / f"cache-{procs}"), "--out", str(out)]
    t0 = time.perf_counter()
    run(cmd, env={"OMP_NUM_THREADS": str(max(1, cores // procs))})
    wall = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())
    rows = m["history"]
    return {"processes": procs, "bs_per_process": a.bs // procs, "threads_per_process":
            max(1, cores // procs), "global_batch": m["global_batch"], "wall_seconds": wall,
            "cold_img_per_s": rows[0]["img_per_s"],
            "warm_img_per_s": statistics.median(r["img_per_s"] for r in rows[1:]),
            "epochs": rows, "valid_accuracy": m["valid_accuracy"],
            "precision": m["precision"]}


def main() -> None:
    ap = recipe_parser()
    ap.add_argument("--subset", type=int, default=100)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    data = imagenette(a.data)
    if a.subset:
        data = subset(data, a.subset)
    with tempfile.TemporaryDirectory() as tmp:
        one = job(data, 1, a, tmp)
        print("1 process:", {k: v for k, v in one.items() if k != "epochs"}, flush=True)
        many = job(data, a.procs, a, tmp)
        print(f"{a.procs} processes:", {k: v for k, v in many.items() if k != "epochs"})
    result = {"machine": machine(), "settings": vars(a) | {"data": str(data)},
              "one": one, "many": many,
              "summary": {"warm_ratio": many["warm_img_per_s"] / one["warm_img_per_s"],
                          "cold_ratio": many["cold_img_per_s"] / one["cold_img_per_s"],
                          "wall_ratio": many["wall_seconds"] / one["wall_seconds"]}}
    print(result["summary"])
    print(save("ddp-cpu", result))
    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    m, st, one, many, sm = r["machine"], r["settings"], r["one"], r["many"], r["summary"]

    def row(j: dict) -> str:
        return (f"| {j['processes']} × bs {j['bs_per_process']} × {j['threads_per_process']}"
                f" thread(s) | {j['cold_img_per_s']:.1f} | {j['warm_img_per_s']:.1f} |"
                f" {j['wall_seconds']:.0f} | {j['valid_accuracy']:.1%} |")

    return "\n".join([
        "## Several processes on one CPU machine (torchrun, gloo)",
        "",
        f"resnet18 from scratch, {Path(st['data']).name} ({st['subset']} images per class and"
        f" split), size {st['size']}, presize {st['presize']}, global batch {st['bs']},"
        f" {st['epochs']} epochs, {one['precision']}; one process using every core against"
        f" {many['processes']} gloo processes sharing them; each job from a cold presize"
        " cache; images/s count the whole job's images. One run of each."
        f" Measured {m['date']} on {cpu_name(m)} ({m['cores']} cores), commit {m['commit']}.",
        "",
        "| job | cold epoch (img/s) | warm epochs, median (img/s) | wall (s) | valid accuracy |",
        "|---|---:|---:|---:|---:|",
        row(one), row(many),
        f"| **{many['processes']} processes / 1** | **{sm['cold_ratio']:.2f}×** |"
        f" **{sm['warm_ratio']:.2f}×** | **{sm['wall_ratio']:.2f}×** | |",
        "", "", ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    s = r.get("summary") or {}
    return f"warm img/s {s['warm_ratio']:.2f}× one process, wall {s['wall_ratio']:.2f}×"


if __name__ == "__main__":
    main()
