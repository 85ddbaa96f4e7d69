"""Loader throughput, imageclf vs fastai 2.8.12, side by side on Imagenette.

    python bench/bench_loader.py [--data DIR] [--epochs 3]

Each tool runs in its own process, one after the other (never at once: two cores).
Writes bench/results/loader.json and regenerates docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
import sys
import tempfile

from common import cpu_name, fastai_python, imagenette, machine, recipe_parser, run_json, save
from report import render


def main() -> None:
    ap = recipe_parser()
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    data = imagenette(a.data)
    args = [str(a.size), str(a.presize), str(a.bs), str(a.epochs)]
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: the first epoch is cold
        ours = run_json([sys.executable, "-m", "imageclf", "bench", "loader", str(data),
                         "--no-synthetic",
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


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    m, s, st = r["machine"], r["summary"], r["settings"]
    lines = [
        "## Data loader: images/s through the full training batch pipeline",
        "",
        f"Imagenette train split, presize {st['presize']}, size {st['size']}, batch {st['bs']},"
        f" {st['epochs']} epochs. imageclf: presize cache + one grid_sample per batch;"
        f" fastai {r['fastai'].get('version', '2.8.12')}: `Resize({st['presize']})` +"
        f" `aug_transforms(size={st['size']}, min_scale=0.75)`,"
        f" num_workers={r['fastai']['num_workers']} (its default here)."
        f" Measured {m['date']} on {cpu_name(m)}"
        f" ({m['cores']} cores), commit {m['commit']}.",
        "",
        "| tool | cold epoch (img/s) | warm epochs, median (img/s) |",
        "|---|---:|---:|",
        f"| imageclf | {s['imageclf']['cold_img_per_s']:.0f} |"
        f" {s['imageclf']['warm_img_per_s']:.0f} |",
        f"| fastai | {s['fastai']['cold_img_per_s']:.0f} | {s['fastai']['warm_img_per_s']:.0f} |",
        f"| **ratio** | **{s['cold_ratio']:.2f}×** | **{s['warm_ratio']:.2f}×** |",
        "",
        "Per epoch (seconds): imageclf "
        + ", ".join(f"{e['seconds']:.1f}" for e in r["imageclf"]["epochs"])
        + "; fastai " + ", ".join(f"{e['seconds']:.1f}" for e in r["fastai"]["epochs"]) + ".",
        "",
        "",
        "",
    ]
    return "\n".join(lines)


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    s = r.get("summary") or {}
    return (f"warm {s['warm_ratio']:.2f}×, cold {s['cold_ratio']:.2f}× fastai's "
            "images/s")


if __name__ == "__main__":
    main()
