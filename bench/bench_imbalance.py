"""Imbalanced classes: does --class-weights or --sampler balanced help the minority classes?

    python bench/bench_imbalance.py [--data DIR] [--epochs 5] [--size 64] [--presize 80]
        [--bs 64] [--keep 0.1] [--seeds 0]

Imagenette with 3 classes (drawn with a fixed seed) cut to --keep of their training images;
validation untouched. resnet18 from scratch, one-cycle at 3e-3, trained three ways with the
same seed: plain, `--class-weights auto`, `--sampler balanced`. Reports accuracy, balanced
accuracy, macro-F1 and the minority classes' mean recall (from each run's
interpretation.json). Writes bench/results/imbalance.json and regenerates
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_name, imagenette, machine, run, save
from report import render

WAYS = {"none": [], "class_weights": ["--class-weights", "auto"],
        "balanced_sampler": ["--sampler", "balanced"]}


def imbalanced(full: Path, root: Path, keep: float, seed: int) -> tuple[Path, list[str], dict]:
    """root/data: every class's validation images; the minority classes keep only the first
    `keep` of their training images (symlinks)."""
    classes = sorted(p.name for p in (full / "train").iterdir() if p.is_dir())
    minority = sorted(random.Random(seed).sample(classes, 3))
    counts = {}
    for split in ("train", "val"):
        for c in classes:
            dst = root / "data" / split / c
            dst.mkdir(parents=True)
            files = sorted((full / split / c).iterdir())
            if split == "train" and c in minority:
                files = files[: max(1, round(len(files) * keep))]
            for f in files:
                (dst / f.name).symlink_to(f.resolve())
            if split == "train":
                counts[c] = len(files)
    return root / "data", minority, counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--presize", type=int, default=80)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--lr", default="3e-3")
    ap.add_argument("--seeds", default="0")
    a = ap.parse_args()
    full = imagenette(a.data)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data, minority, counts = imbalanced(full, Path(tmp), a.keep, 0)
        print("minority classes:", minority, "train counts:", counts, flush=True)
        cache = ["--cache-dir", f"{tmp}/cache"]
        for seed in (int(s) for s in a.seeds.split(",")):
            for way, flags in WAYS.items():
                out = Path(tmp) / f"run-{seed}-{way}"
                t0 = time.perf_counter()
                run([sys.executable, "-m", "imageclf", "train", str(data), "--arch", "resnet18",
                     "--pretrained", "none", "--size", str(a.size), "--presize", str(a.presize),
                     "--bs", str(a.bs), "--epochs", str(a.epochs), "--lr", a.lr, "--seed",
                     str(seed), *cache, *flags, "--out", str(out)])
                interp = json.loads((out / "interpretation.json").read_text())
                recall = {r["class"]: r["recall"] for r in interp["per_class"]}
                row = {"seed": seed, "way": way, "accuracy": interp["accuracy"],
                       "balanced_accuracy": interp["balanced_accuracy"],
                       "macro_f1": interp["macro_f1"],
                       "minority_recall": statistics.mean(recall[c] for c in minority),
                       "majority_recall": statistics.mean(r for c, r in recall.items()
                                                          if c not in minority),
                       "wall_seconds": round(time.perf_counter() - t0, 1)}
                print(row, flush=True)
                runs.append(row)
    summary = {way: {k: statistics.median(r[k] for r in runs if r["way"] == way)
                     for k in ("accuracy", "balanced_accuracy", "macro_f1", "minority_recall",
                               "majority_recall")} for way in WAYS}
    result = {"machine": machine(), "settings": vars(a) | {"data": str(full)},
              "minority": minority, "train_counts": counts, "runs": runs,
              "summary": summary}
    print(save("imbalance", result))
    print(json.dumps(summary, indent=1))
    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    m, st = r["machine"], r["settings"]
    cut = ", ".join(f"{c} ({r['train_counts'][c]})" for c in r["minority"])
    others = round(statistics.median(v for c, v in r["train_counts"].items()
                                     if c not in r["minority"]))
    lines = [
        "## Imbalanced classes: class weights and the balanced sampler", "",
        f"`bench/bench_imbalance.py`: Imagenette with 3 classes cut to {st['keep']:.0%} of"
        f" their training images ({cut} left; the others about"
        f" {others} each), validation untouched; resnet18 from scratch, {st['epochs']} epochs at"
        f" {st['size']} px (presize {st['presize']}), one-cycle at {st['lr']}, the same seed"
        f" for each way (seeds {st['seeds']}; medians). Measured {m['date']} on {cpu_name(m)}"
        f" ({m['cores']} cores), commit {m['commit']}.", "",
        "| training | accuracy | balanced accuracy | macro-F1 | minority recall |"
        " majority recall |", "|---|---:|---:|---:|---:|---:|"]
    for way, v in r["summary"].items():
        lines.append(f"| {way.replace('_', ' ')} | {100 * v['accuracy']:.1f}% |"
                     f" {100 * v['balanced_accuracy']:.1f}% | {100 * v['macro_f1']:.1f}% |"
                     f" {100 * v['minority_recall']:.1f}% | {100 * v['majority_recall']:.1f}% |")
    return "\n".join([*lines, "", ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    s = r.get("summary") or {}
    return "minority recall " + ", ".join(
        f"{k} {100 * v['minority_recall']:.1f}%" for k, v in s.items())


if __name__ == "__main__":
    main()
