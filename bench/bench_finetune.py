"""Fine-tuning on small data: do the time-to-accuracy techniques and defaults hold there?

    python bench/bench_finetune.py [--data DIR] [--subset 250] [--seeds 0,1]
        [--variants NAME='ARGS' ...] [--name finetune]

A body this script trains itself (resnet18 from scratch on the first half of Imagenette's
classes, all their images, 64 px) is fine-tuned (`fine_tune`: 1 frozen + 4 epochs) on the
other half, --subset images per class. Per seed one lr_find sweep (valley, the fine-tuning
default) fixes the rate; then one run per variant with that seed and rate, so only the
variant differs. Each variant's final model is also evaluated with --tta. Writes
bench/results/NAME.json and regenerates docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import (
    cpu_name,
    imagenette,
    machine,
    pretrain_body,
    run,
    run_json,
    save,
    split_env,
    subset,
)
from report import render

VARIANTS = [
    "defaults=",
    "conv_grad_native=IMAGECLF_CONV_GRAD=native",
    "ema_0.99=--ema 0.99",
    "label_smoothing_0.1=--label-smoothing 0.1",
]


def imageclf(*args: str, env: dict[str, str] | None = None) -> str:
    return run([sys.executable, "-m", "imageclf", *args], env)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--subset", type=int, default=250, help="Images per class to fine-tune on.")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--presize", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--pretrain-epochs", type=int, default=4)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--variants", nargs="*", default=VARIANTS)
    ap.add_argument("--name", default="finetune")
    a = ap.parse_args()
    full = imagenette(a.data)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = ["--cache-dir", f"{tmp}/cache"]
        size = ["--arch", "resnet18", "--size", str(a.size), "--presize", str(a.presize),
                "--bs", "64", *cache]
        data, body, pretrain = pretrain_body(full, subset(full, a.subset), tmp, size,
                                             a.pretrain_epochs)
        common = [str(data), "--pretrained", str(body), *size]
        for seed in (int(s) for s in a.seeds.split(",")):
            sweep = run_json([sys.executable, "-m", "imageclf", "lr-find", *common,
                              "--seed", str(seed), "--json"])
            lr = sweep["suggestions"]["valley"]
            for variant in a.variants:
                name, args = variant.split("=", 1)
                env, words = split_env(args)
                out = f"{tmp}/run-{seed}-{name}"
                t0 = time.perf_counter()
                imageclf("train", *common, "--seed", str(seed), "--epochs", str(a.epochs),
                         "--lr", repr(lr), *words, "--out", out, env=env)
                wall = round(time.perf_counter() - t0, 1)
                m = json.loads(Path(f"{out}/metrics.json").read_text())
                tta = json.loads(imageclf("evaluate", f"{out}/model", str(data), "--tta",
                                          "--json").strip().splitlines()[-1])["accuracy"]
                row = {"seed": seed, "variant": name, "args": args, "lr": lr,
                       "valid_accuracy": m["valid_accuracy"], "tta_accuracy": tta,
                       "wall_seconds": wall}
                print(row, flush=True)
                runs.append(row)
    names = [v.split("=", 1)[0] for v in a.variants]
    summary = {n: {k: statistics.median(r[k] for r in runs if r["variant"] == n)
                   for k in ("valid_accuracy", "tta_accuracy", "wall_seconds")} for n in names}
    result = {"machine": machine(), "settings": vars(a) | {"data": str(full)},
              "pretrain": pretrain, "runs": runs, "summary": summary}
    print(save(a.name, result))
    print(json.dumps(summary, indent=1))
    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    m, st, pre = r["machine"], r["settings"], r["pretrain"]
    seeds = st["seeds"].split(",")
    lines = [
        "## Fine-tuning on small data: the new techniques and defaults", "",
        f"`bench/bench_finetune.py`: resnet18 body trained here from scratch on"
        f" {len(pre['classes'])} Imagenette classes ({pre['epochs']} epochs,"
        f" {100 * pre['valid_accuracy']:.1f}% valid there), fine-tuned (`fine_tune`: 1 frozen"
        f" + {st['epochs']} epochs) on the other classes, {st['subset']} images per class, at"
        f" {st['size']} px (presize {st['presize']}); per seed one lr_find sweep (valley) fixes"
        f" the rate for every variant. Seeds {', '.join(seeds)}; medians. Measured"
        f" {m['date']} on {cpu_name(m)} ({m['cores']} cores), commit {m['commit']}.", "",
        "| variant | args | valid accuracy | with TTA | per seed | wall (s) |",
        "|---|---|---:|---:|---|---:|"]
    for name, v in r["summary"].items():
        per = ", ".join(f"{100 * x['valid_accuracy']:.1f}%" for x in r["runs"]
                        if x["variant"] == name)
        args = next(x["args"] for x in r["runs"] if x["variant"] == name)
        lines.append(f"| {name} | `{args or '(defaults)'}` | {100 * v['valid_accuracy']:.1f}% |"
                     f" {100 * v['tta_accuracy']:.1f}% | {per} | {v['wall_seconds']:.0f} |")
    return "\n".join([*lines, "", ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    s = r.get("summary") or {}
    return "median valid accuracy " + ", ".join(
        f"{k} {100 * v['valid_accuracy']:.1f}%" for k, v in s.items())


if __name__ == "__main__":
    main()
