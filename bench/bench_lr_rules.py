"""Which lr_find suggestion should `--lr auto` take? Valid accuracy after training with
each rule's rate, from the same sweep, per seed.

    python bench/bench_lr_rules.py [--data DIR] [--subset 250] [--size 64] [--presize 80]
        [--bs 64] [--epochs 5] [--rules valley,slide,minimum] [--seeds 0,1]
        [--pretrained none]

For each seed: one `imageclf lr-find --json`, then one `imageclf train --lr RATE` per rule
with that seed (same split, initialisation and augmentation draws; only the rate differs).
Default: resnet18 from scratch on 250 Imagenette images per class at 64 px, a few minutes a
run on two CPU cores. Writes bench/results/lr_rules.json and regenerates docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import imagenette, machine, save, subset
from report import render


def imageclf(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "imageclf", *args], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(f"imageclf {args[0]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--subset", type=int, default=250, help="Images per class (0: all).")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--presize", type=int, default=80)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rules", default="valley,slide,minimum")
    ap.add_argument("--seeds", default="0,1")
    a = ap.parse_args()
    data = imagenette(a.data)
    if a.subset:
        data = subset(data, a.subset)
    common = ["--arch", a.arch, "--pretrained", a.pretrained, "--size", str(a.size),
              "--presize", str(a.presize), "--bs", str(a.bs)]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = ["--cache-dir", f"{tmp}/cache"]  # decoded once, shared by every run
        for seed in (int(s) for s in a.seeds.split(",")):
            out = imageclf("lr-find", str(data), *common, *cache, "--seed", str(seed),
                           "--json")
            sugg = json.loads(out.strip().splitlines()[-1])["suggestions"]
            print(f"seed {seed}: {sugg}", flush=True)
            for rule in a.rules.split(","):
                run = f"{tmp}/run-{seed}-{rule}"
                t0 = time.perf_counter()
                imageclf("train", str(data), *common, *cache, "--seed", str(seed),
                         "--epochs", str(a.epochs), "--lr", repr(sugg[rule]), "--out", run)
                m = json.loads(Path(f"{run}/metrics.json").read_text())
                row = {"seed": seed, "rule": rule, "lr": sugg[rule],
                       "valid_accuracy": m["valid_accuracy"], "valid_loss": m["valid_loss"],
                       "wall_seconds": round(time.perf_counter() - t0, 1)}
                print(row, flush=True)
                runs.append(row)
    by_rule = {rule: statistics.median(r["valid_accuracy"] for r in runs if r["rule"] == rule)
               for rule in a.rules.split(",")}
    result = {"machine": machine(), "settings": vars(a) | {"data": str(data)},
              "runs": runs, "summary": {"median_valid_accuracy": by_rule}}
    print(save("lr_rules", result))
    print(result["summary"])
    render()


if __name__ == "__main__":
    main()
