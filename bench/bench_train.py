"""Training, imageclf vs fastai 2.8.12, side by side: resnet18 from scratch on Imagenette.

    python bench/bench_train.py [--data DIR] [--epochs 2] [--lr 3e-3]

The same recipe in both tools (presize 160, size 128, batch 64, fit_one_cycle(epochs, lr)),
each in its own process, one after the other. Wall time is the whole process, start to
exit, with a cold cache for imageclf (its first epoch decodes the images). Writes
bench/results/train.json and regenerates docs/benchmarks.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_name, fastai_python, imagenette, machine, recipe_parser, run, run_json, save
from report import render


def main() -> None:
    ap = recipe_parser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--skip-fastai", action="store_true",
                    help="Reuse the fastai figures already in bench/results/NAME.json.")
    ap.add_argument("--name", default="train",
                    help="Results file bench/results/NAME.json (train*: one section each).")
    a = ap.parse_args()
    data = imagenette(a.data)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run([sys.executable, "-m", "imageclf", "train", str(data),
             "--no-synthetic", "--pretrained", "none",
             "--size", str(a.size), "--presize", str(a.presize), "--bs", str(a.bs),
             "--epochs", str(a.epochs), "--lr", str(a.lr), "--precision", a.precision,
             "--cache-dir", f"{tmp}/cache", "--out", f"{tmp}/run"])
        wall = time.perf_counter() - t0
        m = json.loads(Path(f"{tmp}/run/metrics.json").read_text())
    ours = {"tool": "imageclf", "wall_seconds": wall, "valid_accuracy": m["valid_accuracy"],
            "valid_loss": m["valid_loss"], "train_seconds": m["train_seconds"],
            "train_img_per_s": m["train_img_per_s"], "precision": m["precision"],
            "epochs": m["history"]}
    print("imageclf", {k: v for k, v in ours.items() if k != "epochs"}, flush=True)
    prev = Path(__file__).parent / "results" / f"{a.name}.json"
    if a.skip_fastai and prev.exists():
        ref = json.loads(prev.read_text())["fastai"]
    else:
        t0 = time.perf_counter()
        ref = run_json([str(fastai_python()), str(Path(__file__).parent / "fastai_train.py"),
                        str(data), str(a.size), str(a.presize), str(a.bs), str(a.epochs),
                        str(a.lr)])
        ref["wall_seconds"] = time.perf_counter() - t0
    print("fastai", {k: v for k, v in ref.items() if k != "epochs"}, flush=True)
    result = {"machine": machine(), "settings": vars(a) | {"data": str(data)},
              "imageclf": ours, "fastai": ref,
              "summary": {"wall_ratio": round(ours["wall_seconds"] / ref["wall_seconds"], 3),
                          "accuracy_diff": round(ours["valid_accuracy"]
                                                 - ref["valid_accuracy"], 4)}}
    print(save(a.name, result))
    print(result["summary"])
    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    m, st, o, f, s = r["machine"], r["settings"], r["imageclf"], r["fastai"], r["summary"]
    lines = [
        f"## Training: resnet18 from scratch, whole run ({cpu_name(m)})",
        "",
        f"Imagenette, presize {st['presize']}, size {st['size']}, batch {st['bs']},"
        f" `fit_one_cycle({st['epochs']}, {st['lr']})`, same recipe in both tools; wall time is"
        " the whole process from start to exit (imageclf with a cold presize cache, so its"
        f" first epoch includes decoding). imageclf precision: {o['precision']}"
        + (" (bf16 autocast + channels_last: this CPU has AMX)" if o["precision"] == "bf16"
           else " (+ channels_last: this CPU has no native bf16, so auto chose fp32)")
        + "; fastai: fp32 (its mixed precision"
        f" is CUDA-only). Measured {m['date']} on {cpu_name(m)} ({m['cores']} cores),"
        f" commit {m['commit']}.",
        "",
        "| tool | valid accuracy | valid loss | wall (s) |",
        "|---|---:|---:|---:|",
        f"| imageclf | {o['valid_accuracy']:.1%} | {o['valid_loss']:.3f} |"
        f" {o['wall_seconds']:.0f} |",
        f"| fastai | {f['valid_accuracy']:.1%} | {f['valid_loss']:.3f} | {f['wall_seconds']:.0f} |",
        f"| **imageclf / fastai** | **{s['accuracy_diff']*100:+.1f} points** | |"
        f" **{s['wall_ratio']:.2f}×** |",
        "",
        f"imageclf trained at {o['train_img_per_s']:.0f} img/s"
        f" ({o['train_seconds']:.0f} s in training steps).",
        "",
        "",
        "",
    ]
    return "\n".join(lines)


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    s = r.get("summary") or {}
    return (f"wall {s['wall_ratio']:.2f}× fastai's, accuracy "
            f"{100 * s['accuracy_diff']:+.1f} points")


if __name__ == "__main__":
    main()
