"""The first run a user makes: `imageclf demo` end to end, timed as a whole process from an
empty folder and an empty cache, side by side with an earlier commit's demo (default: the
resnet18 one it replaced), natively and with the CPU capped at AVX2 in fp32
(ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2: how an AVX2-only CPU is approximated on
a newer one). The reference tree is given this tree's hardware.py, so that under the cap it
chooses fp32 as it would on an AVX2 CPU (its own reads bf16 from /proc/cpuinfo and runs
emulated bf16, over 20 minutes). Then the share of Imagenette photos the new demo's model
answers "none of these" for (it has seen only drawn shapes).

    python bench/bench_demo.py [--data IMAGENETTE] [--reference COMMIT] [--photos 200]
                               [--name demo-MACHINE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, cpu_name, imagenette, machine, save

AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
REFERENCE = "3f35317"  # the last commit with the resnet18 demo (64 px, 10 epochs, lr auto)


def demo(src: Path, work: Path, env: dict[str, str]) -> dict:
    """One `imageclf demo` from `src` (a tree's src/ folder) in a fresh folder and cache."""
    out, cache = work / "demo", work / "cache"
    full = {**os.environ, **env, "PYTHONPATH": str(src), "IMAGECLF_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "imageclf", "demo", "--out", str(out)],
                       capture_output=True, text=True, env=full)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"demo from {src} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    m = json.loads((out / "run" / "metrics.json").read_text())
    epochs = [row["seconds"] for row in m["history"]]
    none = re.search(r"answers none for (\d+)% of (\d+)", r.stdout)
    return {"wall_s": round(wall, 1), "valid_accuracy": m["valid_accuracy"],
            "precision": m["precision"], "epochs": len(epochs),
            "epoch_seconds_median": sorted(epochs)[len(epochs) // 2],
            "drawn_none_share": int(none.group(1)) / 100 if none else None,
            "model": str(out / "run" / "model")}


def photos_none(model: str, photos: list[Path]) -> float:
    """The share of `photos` the model answers none for."""
    r = subprocess.run([sys.executable, "-m", "imageclf", "predict", model,
                        *map(str, photos), "--json"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=True)
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return sum(row.get("labels") == ["none"] for row in rows) / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", help="extracted Imagenette (train/, val/) for the photos")
    ap.add_argument("--reference", default=REFERENCE, help="the commit whose demo to compare")
    ap.add_argument("--photos", type=int, default=200, help="Imagenette photos to predict")
    ap.add_argument("--name", default="demo", help="results name: demo-SOMETHING keeps the "
                    "figures of another machine beside the first")
    args = ap.parse_args()
    val = sorted(imagenette(args.data).glob("val/*/*"))
    photos = val[:: max(1, len(val) // args.photos)][: args.photos]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "reference"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.reference],
                       cwd=ROOT, check=True, capture_output=True)
        hw = "src/imageclf/core/hardware.py"
        (old / hw).write_text((ROOT / hw).read_text())
        try:
            for name, src, env in (("new, AVX2 cap, fp32", ROOT / "src", AVX2),
                                   ("reference, AVX2 cap, fp32", old / "src", AVX2),
                                   ("new, native ISA", ROOT / "src", {})):
                work = Path(tmp) / re.sub(r"\W+", "-", name)
                rows[name] = demo(src, work, env)
                if name.startswith("new"):
                    rows[name]["photos_none_share"] = photos_none(rows[name]["model"], photos)
                rows[name].pop("model")
                print(name, rows[name], flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT,
                           capture_output=True)
    new, ref = rows["new, AVX2 cap, fp32"], rows["reference, AVX2 cap, fp32"]
    result = {"machine": machine(), "reference_commit": args.reference,
              "photos": len(photos), "rows": rows,
              "summary": {"avx2_wall_s": new["wall_s"], "avx2_accuracy": new["valid_accuracy"],
                          "avx2_wall_ratio": new["wall_s"] / ref["wall_s"],
                          "native_wall_s": rows["new, native ISA"]["wall_s"],
                          "photos_none_share": new["photos_none_share"]}}
    print(save(args.name, result))


# --- its part of docs/benchmarks.md --------------------------------------------------------
REAL_AVX2_REFERENCE_DEMO_S = 592  # the resnet18 demo on a real 2-core AVX2 EPYC (issue 27)


def section(r: dict) -> str:
    m, rows = r["machine"], r["rows"]
    scale = REAL_AVX2_REFERENCE_DEMO_S / rows["reference, AVX2 cap, fp32"]["wall_s"]
    lines = [
        "## The first run: `imageclf demo` end to end"
        + (f", on {cpu_name(m)}" if m.get("cpu_id") else ""), "",
        "A whole process from an empty folder and cache: draw the shapes, verify, lr_find, "
        "train, evaluate, calibrate \"none of these\" and show one rejection "
        "(`bench/bench_demo.py`). Side by side in one run with the demo of commit "
        f"{r['reference_commit']} (resnet18, 64 px, `--lr auto`). \"AVX2 cap\" is "
        "`ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`, fp32: an approximation of an "
        f"AVX2-only CPU, not one: the reference demo took {REAL_AVX2_REFERENCE_DEMO_S} s on a "
        f"real 2-core AVX2 EPYC, {scale:.1f}× its capped wall here, and the same factor would "
        f"put the new demo at about {scale * rows['new, AVX2 cap, fp32']['wall_s']:.0f} s "
        f"there (not measured on one). Measured {m['date']} on {cpu_name(m)} ({m['isa']}), "
        f"{m['cores']} cores, commit {m['commit']}.", "",
        "| demo | wall | valid accuracy | precision | epoch (median) | drawn no-shape images "
        f"answered none | of {r['photos']} Imagenette photos answered none |",
        "|---|---:|---:|---|---:|---:|---:|"]
    for name, x in rows.items():
        drawn, photos = x.get("drawn_none_share"), x.get("photos_none_share")
        lines.append(
            f"| {name} | {x['wall_s']:.0f} s | {100 * x['valid_accuracy']:.1f}% | "
            f"{x['precision']} | {x['epoch_seconds_median']:.1f} s | "
            + (f"{100 * drawn:.0f}%" if drawn is not None else "-") + " | "
            + (f"{100 * photos:.0f}%" if photos is not None else "-") + " |")
    return "\n".join([*lines, "", ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    s = r.get("summary") or {}
    return (f"`imageclf demo` {s['avx2_wall_s']:.0f} s at {100 * s['avx2_accuracy']:.1f}%"
            f" capped at AVX2 fp32 ({s['avx2_wall_ratio']:.2f}× the resnet18 demo's "
            f"wall), {s['native_wall_s']:.0f} s native; "
            f"{100 * s['photos_none_share']:.0f}% of photos answered none")


if __name__ == "__main__":
    main()
