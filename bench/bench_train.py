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

from common import fastai_python, imagenette, machine, recipe_parser, run, run_json, save
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
        run([sys.executable, "-m", "imageclf", "train", str(data), "--pretrained", "none",
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


if __name__ == "__main__":
    main()
