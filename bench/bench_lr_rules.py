"""Which lr_find suggestion should `--lr auto` take? Valid accuracy after training with
each rule's rate, from the same sweep, per seed.

    python bench/bench_lr_rules.py [--data DIR] [--subset 250] [--size 64] [--presize 80]
        [--bs 64] [--epochs 5] [--rules valley,slide,minimum] [--seeds 0,1]
        [--pretrained none] [--transfer [--pretrain-epochs 4]] [--name lr_rules]

For each seed: one `imageclf lr-find --json`, then one `imageclf train --lr RATE` per rule
with that seed (same split, initialisation and augmentation draws; only the rate differs).
Default: resnet18 from scratch on 250 Imagenette images per class at 64 px, a few minutes a
run on two CPU cores. --transfer measures fine-tuning instead, with a body this script
trains itself (no hub weights are needed): resnet18 from scratch on the first half of the
classes (all their images), then each rule fine-tunes it on the other half (--subset images
per class). Writes bench/results/NAME.json and regenerates docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_name, imagenette, machine, pretrain_body, run, save, subset
from report import render


def imageclf(*args: str) -> str:
    return run([sys.executable, "-m", "imageclf", *args])


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
    ap.add_argument("--transfer", action="store_true")
    ap.add_argument("--pretrain-epochs", type=int, default=4)
    ap.add_argument("--name", default="lr_rules")
    a = ap.parse_args()
    full = data = imagenette(a.data)
    if a.subset:
        data = subset(full, a.subset)
    runs, pretrain = [], None
    with tempfile.TemporaryDirectory() as tmp:
        cache = ["--cache-dir", f"{tmp}/cache"]  # decoded once, shared by every run
        size = ["--size", str(a.size), "--presize", str(a.presize), "--bs", str(a.bs)]
        if a.transfer:
            data, body, pretrain = pretrain_body(full, data, tmp, ["--arch", a.arch, *size,
                                                                   *cache], a.pretrain_epochs)
            a.pretrained = str(body)
        common = ["--arch", a.arch, "--pretrained", a.pretrained, *size]
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
    result = {"machine": machine(), "settings": vars(a) | {"data": str(full)},
              "pretrain": pretrain, "runs": runs,
              "summary": {"median_valid_accuracy": by_rule}}
    print(save(a.name, result))
    print(result["summary"])
    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    m, st, runs = r["machine"], r["settings"], r["runs"]
    seeds = sorted({x["seed"] for x in runs})
    pre = r.get("pretrain")
    body = (f"fine-tuned (`fine_tune`: 1 frozen + {st['epochs']} epochs) on the second half of"
            f" the classes from a body the script trained from scratch on the first"
            f" {len(pre['classes'])} ({pre['epochs']} epochs, {pre['valid_accuracy']:.1%} valid"
            " there)" if pre else
            f"pretrained: {st['pretrained']}, {st['epochs']} epochs")
    lines = [
        "## Learning-rate finder: which suggestion trains best"
        + (f" (fine-tuning; {st['sweep']})" if pre and st.get("sweep") else " (fine-tuning)"
           if pre else " (from scratch)" if st["pretrained"] == "none" else ""),
        "",
        f"`bench/bench_lr_rules.py`: {st['arch']}, {body};"
        f" {st['subset'] or 'all'} Imagenette images per class, presize {st['presize']},"
        f" size {st['size']}, batch {st['bs']}; per seed one finder"
        " sweep, then one run per suggestion with that seed (only the rate differs)."
        f" Measured {m['date']} on {cpu_name(m)} ({m['cores']} cores), commit {m['commit']}.",
        "",
        "| rule | " + " | ".join(f"seed {s}: rate, valid accuracy" for s in seeds)
        + " | median accuracy |",
        "|---|" + "---:|" * (len(seeds) + 1),
    ]
    for rule, med in r["summary"]["median_valid_accuracy"].items():
        cells = [next((f"{x['lr']:.1e}, {x['valid_accuracy']:.1%}" for x in runs
                       if x["rule"] == rule and x["seed"] == s), "") for s in seeds]
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | **{med:.1%}** |")
    return "\n".join([*lines, "", "", ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    s = r.get("summary") or {}
    acc = s["median_valid_accuracy"]
    return "median valid accuracy " + ", ".join(
        f"{k} {100 * v:.1f}%" for k, v in acc.items())


if __name__ == "__main__":
    main()
