"""Fusions of open-set scores that imageclf does not ship, measured on the models
bench_open_set.py trained: is there a sum (or minimum) of standardised scores that keeps
msp's near-OOD strength and ASH's far-OOD one?

    python bench/open_set_fusions.py --runs DIR [RUN_NAME ...]

DIR is bench_open_set.py's --runs folder (its dealt classes, far sets and trained runs);
each run is scored once more with the statistics calibrate builds, then every fusion is
formed from the single scores, each standardised by its mean and spread on the known
validation images. Writes bench/results/open_set_fusions.json (exploratory: not in
docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench_open_set import FAR_KINDS
from common import imagenette, machine, save
from imageclf.core.config import DataSource
from imageclf.data.negatives import negative_set
from imageclf.data.sources import list_images, resolve
from imageclf.jobs.evaluate import run_images
from imageclf.model.classifier import linear_head
from imageclf.model.predict import Predictor
from imageclf.openset import scores as O

PAIRS = (("msp", "mahalanobis"), ("msp", "vim"), ("msp", "ash"), ("msp", "scale"),
         ("energy", "ash"))


def outputs(pred: Predictor, paths: list[Path]):
    return run_images(pred, paths, bs=64, features=True).outputs


def singles(o, st: O.OpenSetStats) -> dict[str, torch.Tensor]:
    f, r = o.features, o.raw
    return {"msp": O.msp(r), "energy": O.energy(r),
            "mahalanobis": O.mahalanobis(f, st.means, st.precision),
            "vim": st._vim(f, r), "ash": O.ash(f, st.head_weight, st.head_bias),
            "scale": O.scale(f, st.head_weight, st.head_bias)}


def fusions(s: dict[str, torch.Tensor], z: dict[str, tuple[torch.Tensor, torch.Tensor]]
            ) -> dict[str, torch.Tensor]:
    zz = {n: (v - z[n][0]) / z[n][1] for n, v in s.items()}
    out = dict(s)
    for a, b in PAIRS:
        out[f"{a}+{b}"] = zz[a] + zz[b]
        out[f"min({a},{b})"] = torch.minimum(zz[a], zz[b])
    out["msp+mahalanobis+ash"] = zz["msp"] + zz["mahalanobis"] + zz["ash"]
    return out


def score_run(runs: Path, name: str, full: Path) -> dict:
    row = json.loads((runs / name / "bench_row.json").read_text())
    root = runs / "data" / f"seed{row['seed']}"
    pred = Predictor(runs / name / "model")
    items = resolve(DataSource(path=str(root / "known")))
    tr, va = items.split_indices()
    train = outputs(pred, [items.paths[i] for i in tr])
    labels = torch.tensor([pred.classes.index(items.classes[items.labels[i][0]]) for i in tr])
    st = O.OpenSetStats.fit(train.features, labels, len(pred.classes),
                            head=linear_head(pred.model))
    known = singles(outputs(pred, [items.paths[i] for i in va]), st)
    z = {n: (v.mean(), v.std()) for n, v in known.items()}
    known = fusions(known, z)
    sets = {"negatives": list(negative_set((str(root / "negatives"),)).valid),
            "near": [p for c in row["classes"]["unseen"] for p in list_images(full / "val" / c)]}
    sets |= {f"far-{k}": list_images(runs / "far" / ("shapes-src/valid" if k == "shapes"
                                                         else k)) for k in FAR_KINDS}
    scored = {s: fusions(singles(outputs(pred, paths), st), z) for s, paths in sets.items()}
    scored["far"] = {n: torch.cat([scored[s][n] for s in scored if s.startswith("far-")])
                     for n in known}
    return {"run": name, "figures": {s: O.compare(known, v) for s, v in scored.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--data")
    ap.add_argument("names", nargs="*")
    a = ap.parse_args()
    runs, full = Path(a.runs), imagenette(a.data)
    names = a.names or sorted(p.parent.name for p in runs.glob("*/bench_row.json"))
    rows = []
    for name in names:
        r = score_run(runs, name, full)
        rows.append(r)
        print(name)
        for n, f in r["figures"]["near"].items():
            print(f"  {n:22s} near {100 * f['auroc']:.1f}  far "
                  f"{100 * r['figures']['far'][n]['auroc']:.1f}", flush=True)
    print(save("open_set_fusions", {"machine": machine(), "runs": rows}))


if __name__ == "__main__":
    main()
