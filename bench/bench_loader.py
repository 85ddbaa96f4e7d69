"""Loader throughput, imageclf vs fastai 2.8.12, side by side on Imagenette.

    python bench/bench_loader.py [--data DIR] [--epochs 3]

Each tool runs in its own process, one after the other (never at once: two cores).
Writes bench/results/loader.json and regenerates docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
import sys
import tempfile

from common import fastai_python, imagenette, machine, recipe_parser, run_json, save
from report import render


def main() -> None:
    ap = recipe_parser()
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    data = imagenette(a.data)
    args = [str(a.size), str(a.presize), str(a.bs), str(a.epochs)]
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: the first epoch is cold
        ours = run_json([sys.executable, "-m", "imageclf", "bench", "loader", str(data),
                         "--size", args[0], "--presize", args[1], "--bs", args[2],
                         "--epochs", args[3], "--cache-dir", cache, "--json"])
    ref = run_json([str(fastai_python()), str(__import__("pathlib").Path(__file__).parent
                                              / "fastai_loader.py"), str(data), *args])

    def summary(rows: list[dict]) -> dict:
        later = [r["img_per_s"] for r in rows[1:]] or [rows[0]["img_per_s"]]
        return {"cold_img_per_s": rows[0]["img_per_s"], "warm_img_per_s": statistics.median(later)}

    s_ours, s_ref = summary(ours["epochs"]), summary(ref["epochs"])
    result = {"machine": machine(), "settings": vars(a) | {"data": str(data)},
              "imageclf": ours, "fastai": ref,
              "summary": {"imageclf": s_ours, "fastai": s_ref}}
    for k in ("cold", "warm"):
        ratio = s_ours[f"{k}_img_per_s"] / s_ref[f"{k}_img_per_s"]
        result["summary"][f"{k}_ratio"] = round(ratio, 2)
    print(save("loader", result))
    print(result["summary"])
    render()


if __name__ == "__main__":
    main()
