"""Time to accuracy: how soon is a model good enough? fastai 2.8.12 against imageclf's same
recipe and imageclf's fastest recipe, side by side, each a whole process from a cold cache.

    python bench/bench_time_to_accuracy.py [--data DIR] [--fastest "ARGS"] [--name NAME]
        [--recipes NAME=ARGS ...] [--skip-fastai]

Imagenette from scratch, batch 64: resnet18 for fastai and the same recipe at 128 px; the
fastest recipe chooses its net (resnet10t) and sizes. Each process's validation
accuracy is logged with the wall time since its start after every epoch (read from its
output as it happens). Reported: the wall time at which each first reaches fastai's final
accuracy, and the best accuracy each reaches; each imageclf model is then evaluated with
and without test-time augmentation (`evaluate --tta`, untimed). --recipes adds imageclf rows
(ablations: the same seed and epochs with one technique on or off); leading NAME=VALUE
words in a recipe set environment variables (IMAGECLF_CONV_GRAD=native). Writes
bench/results/NAME.json and regenerates docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_name, fastai_python, imagenette, machine, save, split_env
from report import render

HERE = Path(__file__).resolve().parent
SAME = "--size 128 --presize 160 --epochs 2 --lr 3e-3 --head concat"  # fastai's head too
# resnet10t: the first to fastai's accuracy capped at AVX2 (0.14x against resnet18's 0.23x)
# and with AVX512-BF16 (0.10x against 0.13x); resnet18's AMX figure, 0.15x, predates it
FASTEST = ("--arch resnet10t --sizes 48,64 --size 64 --presize 112 --epochs 2 --lr 3e-3 "
           "--head timm")
ROW = re.compile(r"^epoch (\d+)\s.*valid_accuracy=([0-9.]+)")


def curve(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run one process; (seconds since start, epoch, accuracy) at each epoch it reports."""
    t0 = time.perf_counter()
    errors = tempfile.TemporaryFile("w+")  # read at the end: a full pipe would stall it
    # unbuffered: each epoch's line arrives when it is printed, so its time is right
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True,
                         bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    points = []
    for line in p.stdout:
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            points.append({"seconds": round(time.perf_counter() - t0, 1), "epoch": r["epoch"],
                           "valid_accuracy": r["valid_accuracy"]})
        elif m := ROW.match(line):
            points.append({"seconds": round(time.perf_counter() - t0, 1),
                           "epoch": int(m.group(1)), "valid_accuracy": float(m.group(2))})
        print(f"  [{time.perf_counter() - t0:6.1f}s] {line[:150]}", flush=True)
    code = p.wait()
    errors.seek(0)
    err = errors.read()
    if code != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{err[-3000:]}")
    return {"wall_seconds": round(time.perf_counter() - t0, 1), "points": points}


def evaluate_views(model: Path, data: Path, views: list[tuple[str, list[str]]]) -> dict:
    """`imageclf evaluate` of one model folder once per view (KEY, extra words): the
    validation accuracy of each, by key (untimed)."""
    out = {}
    for key, extra in views:
        ev = subprocess.run([sys.executable, "-m", "imageclf", "evaluate", str(model),
                             str(data), "--json", *extra],
                            capture_output=True, text=True, check=True)
        out[key] = json.loads(ev.stdout.strip().splitlines()[-1])["accuracy"]
    return out


def first_reaching(points: list[dict], target: float) -> float | None:
    return next((p["seconds"] for p in points if p["valid_accuracy"] >= target), None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--fastest", default=FASTEST)
    ap.add_argument("--recipes", nargs="*", default=[],
                    help="More imageclf rows, NAME='ARGS' each.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-fastai", action="store_true",
                    help="Reuse the fastai curve already in bench/results/NAME.json.")
    ap.add_argument("--fastai-from", help="Reuse the fastai curve of this results name "
                    "(ablations: the target only, not a side-by-side figure).")
    ap.add_argument("--keep-models", help="Copy each run's model/ folder under this folder "
                    "(for bench_bn_recal.py).")
    ap.add_argument("--title", help="The docs section's heading (a further results set).")
    ap.add_argument("--note", help="A sentence for the docs section (what the set shows).")
    ap.add_argument("--no-same", action="store_true", help="Leave out imageclf_same.")
    ap.add_argument("--only", nargs="*", help="Run only these --recipes rows (no same, no "
                    "fastest); the rest of bench/results/NAME.json is kept.")
    ap.add_argument("--eval-sizes", default="",
                    help="Also evaluate each final model at these sides (comma separated): "
                    "the test-time resolution, untimed.")
    ap.add_argument("--name", default="time_to_accuracy")
    a = ap.parse_args()
    data = imagenette(a.data)
    rows: dict[str, dict] = {}
    prev = HERE / "results" / f"{a.name}.json"
    recipes = {} if a.no_same else {"imageclf_same": SAME}
    recipes |= {"imageclf_fastest": a.fastest} | dict(r.split("=", 1) for r in a.recipes)
    if a.only:
        rows = json.loads(prev.read_text())["rows"]
        recipes = {k: v for k, v in recipes.items() if k in a.only}
    with tempfile.TemporaryDirectory() as tmp:
        if a.only:
            pass
        elif a.fastai_from:
            rows["fastai"] = json.loads((HERE / "results" / f"{a.fastai_from}.json")
                                        .read_text())["rows"]["fastai"]
            rows["fastai"]["reused_from"] = a.fastai_from
        elif a.skip_fastai and prev.exists():
            rows["fastai"] = json.loads(prev.read_text())["rows"]["fastai"]
        else:
            print("fastai 2.8.12: fit_one_cycle(2, 3e-3), Resize(160), "
                  "aug_transforms(size=128, min_scale=0.75)", flush=True)
            rows["fastai"] = curve([str(fastai_python()), str(HERE / "fastai_curve.py"),
                                    str(data), "128", "160", "64", "2", "3e-3"])
            rows["fastai"]["args"] = "fit_one_cycle(2, 3e-3) at 128, Resize(160)"
        for name, args in recipes.items():
            print(f"{name}: {args}", flush=True)
            out = Path(tmp) / name
            env, words = split_env(args)
            rows[name] = curve([sys.executable, "-m", "imageclf", "train", str(data),
                                "--no-synthetic",
                                "--arch", "resnet18", "--pretrained", "none", "--bs", "64",
                                "--seed", str(a.seed), *words,
                                "--cache-dir", f"{tmp}/cache-{name}", "--out", str(out)], env)
            rows[name]["args"] = args
            # test-time augmentation on the final model (not part of the timed run)
            views = [("final_accuracy", []), ("tta_accuracy", ["--tta"])]
            views += [(f"accuracy_at_{s}", ["--size", s]) for s in a.eval_sizes.split(",") if s]
            rows[name] |= evaluate_views(out / "model", data, views)
            rows[name]["train_args"] = json.loads((out / "config.json").read_text())
            if a.keep_models:
                shutil.copytree(out / "model", Path(a.keep_models) / name, dirs_exist_ok=True)
    target = rows["fastai"]["points"][-1]["valid_accuracy"]
    ref_wall = rows["fastai"]["wall_seconds"]
    summary = {"target_accuracy": target, "fastai_wall_seconds": ref_wall}
    for r in rows.values():
        r["reached_at_seconds"] = first_reaching(r["points"], target)
        r["best_accuracy"] = max(p["valid_accuracy"] for p in r["points"])
        if r["reached_at_seconds"] is not None:
            r["fraction_of_fastai_wall"] = round(r["reached_at_seconds"] / ref_wall, 3)
    summary["fastest_fraction"] = rows["imageclf_fastest"].get("fraction_of_fastai_wall")
    summary["fastest_best_accuracy"] = rows["imageclf_fastest"]["best_accuracy"]
    result = {"machine": machine(), "settings": vars(a) | {"data": str(data)}, "rows": rows,
              "summary": summary}
    print(save(a.name, result))
    print(json.dumps(summary, indent=1))
    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    m, rows, s, st = r["machine"], r["rows"], r["summary"], r["settings"]
    reused = rows["fastai"].get("reused_from")
    sizes = sorted({int(k.rsplit("_", 1)[1]) for row in rows.values() for k in row
                    if k.startswith("accuracy_at_")})
    lines = [
        f"## {st.get('title') or 'Time to accuracy: resnet18 from scratch on Imagenette'}",
        "", "`bench/bench_time_to_accuracy.py`: Imagenette, batch 64, each run a whole"
        " process from a cold cache; validation accuracy logged with the wall time after"
        f" every epoch. Target: fastai's final accuracy, {100 * s['target_accuracy']:.1f}%"
        f" after {s['fastai_wall_seconds']:.0f} s"
        + (f" (fastai's row is reused from `{reused}`, measured in that run: its target"
           " only, not a side-by-side figure)" if reused else "")
        + f". {st['note'] + ' ' if st.get('note') else ''}Measured {m['date']} on {cpu_name(m)}"
        f" ({m['cores']} cores{', ' + m['isa'] if 'isa' in m else ''}"
        f"{', capped at ' + m['isa_cap'] if m.get('isa_cap') else ''}), commit {m['commit']}.",
        "",
        "| run | recipe | reaches the target at | / fastai's wall | best accuracy |"
        " with TTA |" + "".join(f" at {z} px |" for z in sizes)
        + " wall | accuracy per epoch (s) |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * len(sizes) + "---:|---|"]
    for name, row in rows.items():
        if name == "fastai" and reused:
            continue
        at = row.get("reached_at_seconds")
        frac = row.get("fraction_of_fastai_wall")
        pts = ", ".join(f"{100 * p['valid_accuracy']:.1f}% ({p['seconds']:.0f})"
                        for p in row["points"])
        at_sizes = "".join(f" {100 * row[f'accuracy_at_{z}']:.1f}% |"
                           if f"accuracy_at_{z}" in row else " - |" for z in sizes)
        lines.append(f"| {name} | `{row['args']}` | {'-' if at is None else f'{at:.0f} s'} |"
                     f" {'-' if frac is None else f'{frac:.2f}×'} |"
                     f" {100 * row['best_accuracy']:.1f}% |"
                     + (f" {100 * row['tta_accuracy']:.1f}% |" if "tta_accuracy" in row
                        else " - |") + at_sizes
                     + f" {row['wall_seconds']:.0f} s |"
                     f" {pts} |")
    return "\n".join([*lines, "", ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    s = r.get("summary") or {}
    f = s.get("fastest_fraction")
    return (f"fastest recipe reaches fastai's {100 * s['target_accuracy']:.1f}% at "
            + (f"{f:.2f}× fastai's wall" if f is not None else "never")
            + f"; best {100 * s['fastest_best_accuracy']:.1f}%")


if __name__ == "__main__":
    main()
