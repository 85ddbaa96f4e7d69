"""The cost of lr_find, imageclf vs fastai 2.8.12: resnet18 from scratch on Imagenette,
size 128, presize 160, batch 64, the 100-iteration sweep; whole-process wall time (imageclf
with a cold presize cache) and the suggestions.

    python bench/bench_lr_find.py [--data DIR]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import cpu_name, fastai_python, imagenette, machine, recipe_parser, run_json, save
from report import render


def main() -> None:
    a = recipe_parser().parse_args()
    data = imagenette(a.data)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_json([sys.executable, "-m", "imageclf", "lr-find", str(data), "--no-synthetic",
                        "--pretrained", "none", "--size", str(a.size), "--presize",
                        str(a.presize), "--bs", str(a.bs), "--cache-dir", tmp, "--json"])
        wall = time.perf_counter() - t0
    ours = {"tool": "imageclf", "wall_seconds": wall, "iterations": len(res["lrs"]),
            "suggestions": res["suggestions"]}
    t0 = time.perf_counter()
    ref = run_json([str(fastai_python()), str(Path(__file__).parent / "fastai_lr_find.py"),
                    str(data), str(a.size), str(a.presize), str(a.bs)])
    ref["wall_seconds"] = time.perf_counter() - t0
    result = {"machine": machine(), "settings": vars(a) | {"data": str(data)},
              "imageclf": ours, "fastai": ref,
              "summary": {"wall_ratio": round(wall / ref["wall_seconds"], 3)}}
    print(save("lr_find", result))
    print(ours, ref)
    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    m, st, o, f = r["machine"], r["settings"], r["imageclf"], r["fastai"]

    def sugg(d: dict) -> str:
        return ", ".join(f"{k} {v:.1e}" for k, v in d["suggestions"].items())

    return "\n".join([
        "## Learning-rate finder: cost of one sweep",
        "",
        f"resnet18 from scratch, Imagenette, presize {st['presize']}, size {st['size']},"
        f" batch {st['bs']}; whole process from start to exit (imageclf with a cold cache)."
        f" Measured {m['date']} on {cpu_name(m)} ({m['cores']} cores), commit {m['commit']}.",
        "",
        "| tool | iterations | wall (s) | suggestions |",
        "|---|---:|---:|---|",
        f"| imageclf | {o['iterations']} | {o['wall_seconds']:.0f} | {sugg(o)} |",
        f"| fastai | {f['iterations']} | {f['wall_seconds']:.0f} | {sugg(f)} |",
        f"| **imageclf / fastai** | | **{r['summary']['wall_ratio']:.2f}×** | |",
        "", "", ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    s = r.get("summary") or {}
    return f"sweep wall {s['wall_ratio']:.2f}× fastai's"


if __name__ == "__main__":
    main()
