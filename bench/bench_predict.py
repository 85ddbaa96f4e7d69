"""Single-image prediction latency, imageclf's Predictor vs fastai 2.8.12's Learner.predict:
resnet18 at 224 (presize 460), file to probabilities, in process, median over files.

    python bench/bench_predict.py [--data DIR] [--n 60]

Latency does not depend on the weights, so both use a freshly initialised resnet18 with a
10-class head. Writes bench/results/predict.json and regenerates docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import cpu_name, fastai_python, imagenette, machine, random_resnet18, run_json, save
from report import render


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--presize", type=int, default=460)
    a = ap.parse_args()
    data = imagenette(a.data)
    files = sorted(str(p) for p in (data / "val").rglob("*.JPEG"))[:: 37][: a.n + 5]
    here = Path(__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        random_resnet18(Path(tmp) / "model", a.size, a.presize)
        ours = {p: run_json([sys.executable, str(here / "imageclf_predict.py"),
                             f"{tmp}/model", p, *files]) for p in ("fp32", "bf16")}
    ref = run_json([str(fastai_python()), str(here / "fastai_predict.py"), str(data),
                    str(a.size), str(a.presize), *files])
    result = {"machine": machine(), "settings": vars(a) | {"data": str(data)},
              "imageclf": ours, "fastai": ref,
              "summary": {p: round(ref["median_ms"] / o["median_ms"], 2)
                          for p, o in ours.items()}}
    print(save("predict", result))
    print(result["summary"], {p: o["median_ms"] for p, o in ours.items()}, ref["median_ms"])
    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    m, st, o, f = r["machine"], r["settings"], r["imageclf"], r["fastai"]
    lines = [
        "## Prediction: single-image latency, file to probabilities",
        "",
        f"resnet18 at {st['size']} (presize {st['presize']}), one Imagenette validation JPEG"
        f" per call, in process, {f['n']} calls after 5 warm-up calls; imageclf's"
        " `Predictor.predict(path)` against fastai's `Learner.predict(path)`."
        f" Measured {m['date']} on {cpu_name(m)} ({m['cores']} cores), commit {m['commit']}.",
        "",
        "| tool | precision | median (ms) | p90 (ms) | fastai / tool |",
        "|---|---|---:|---:|---:|",
    ]
    for p, v in o.items():
        lines.append(f"| imageclf | {p} | {v['median_ms']:.1f} | {v['p90_ms']:.1f} |"
                     f" **{r['summary'][p]:.2f}×** |")
    lines += [f"| fastai | fp32 | {f['median_ms']:.1f} | {f['p90_ms']:.1f} | 1.00× |", "",
              "", ""]
    return "\n".join(lines)


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    s = r.get("summary") or {}
    return "latency: fastai / imageclf " + ", ".join(
        f"{k} {v:.2f}×" for k, v in s.items())


if __name__ == "__main__":
    main()
