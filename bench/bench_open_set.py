"""Which open-set score tells unknown images from known ones best? AUROC and FPR at 95% TPR
of every score `imageclf calibrate` offers, on Imagenette with two classes held out.

    python bench/bench_open_set.py [--data DIR] [--epochs 3] [--seeds 0,1]
        [--size 128] [--presize 160] [--bs 64] [--far 300] [--no-multi-label]

Per seed: two of the ten classes, drawn with that seed, are held out. resnet18 is trained
from scratch (`imageclf train`, one-cycle at 3e-3) on the other eight, once with softmax
and once with independent sigmoids (--multi-label). Then, with imageclf's own Predictor
and openset module (what calibrate and evaluate run):

- known: the eight classes' validation images;
- near-OOD: the held-out classes' validation images;
- far-OOD: the demo's generated shapes, and uniform and Gaussian noise images (--far of
  each);
- knn's bank and mahalanobis's class means come from the eight classes' training images,
  as `calibrate` builds them (bank at most 10,000 rows, fp16).

Reports every score's AUROC and FPR@95TPR per seed and their medians. Writes
bench/results/open_set.json and regenerates docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import imagenette, machine, run, save
from imageclf import openset
from imageclf.config import DataSource
from imageclf.data.sources import list_images, resolve
from imageclf.demo import make_shapes_dataset
from imageclf.evaluate import run_images
from imageclf.openset import OpenSetStats
from imageclf.predict import Predictor
from report import render

KS = (1, 5, 10, 50)


def far_sets(root: Path, n: int, seed: int) -> dict[str, Path]:
    """Generated shapes, uniform noise and Gaussian noise images, `n` of each."""
    shapes = make_shapes_dataset(root / "shapes-src", n_train=0, n_valid=n // 4 + 1, seed=seed)
    rng = np.random.default_rng(seed)
    out = {"shapes": shapes / "valid"}
    for kind in ("uniform", "gaussian"):
        d = root / kind
        d.mkdir(parents=True)
        for i in range(n):
            h, w = (int(v) for v in rng.integers(120, 240, 2))
            if kind == "uniform":
                a = rng.integers(0, 256, (h, w, 3))
            else:
                a = rng.normal(rng.uniform(60, 200), rng.uniform(20, 70), (h, w, 3))
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(d / f"{i:04d}.jpg",
                                                                      quality=90)
        out[kind] = d
    return out


def split_classes(full: Path, root: Path, seed: int) -> tuple[Path, list[str], list[Path]]:
    """root/known with 8 classes (symlinks), the 2 held out, their validation images."""
    classes = sorted(p.name for p in (full / "train").iterdir() if p.is_dir())
    held = sorted(random.Random(seed).sample(classes, 2))
    known = root / "known"
    for split in ("train", "val"):
        (known / split).mkdir(parents=True)
        for c in classes:
            if c not in held:
                (known / split / c).symlink_to((full / split / c).resolve())
    near = [p for c in held for p in list_images(full / "val" / c)]
    return known, held, near


def scores(pred: Predictor, out, stats: OpenSetStats) -> dict[str, torch.Tensor]:
    """Every score of one set's outputs (knn at several k)."""
    got = openset.score_outputs([n for n in openset.scores_for(pred.multi_label)
                                 if n != "knn"], out, stats)
    for k in KS:
        got[f"knn@{k}"] = openset.score_outputs(["knn"], out, stats, k)["knn"]
    return got


def measure(model: Path, data: Path, near: list[Path], far: dict[str, Path], bs: int
            ) -> dict:
    """Every score's figures against near and far unknowns, for one trained model, with the
    statistics `calibrate` would build (bank and class means from the training images,
    the fused score standardised on the known validation images)."""
    pred = Predictor(model)
    items = resolve(DataSource(path=str(data), multi_label=pred.multi_label))
    train, valid = items.split_indices()
    t0 = time.perf_counter()
    seen = run_images(pred, [items.paths[i] for i in train], bs=bs, features=True)
    labels = torch.tensor([items.labels[train[i]][0] for i in seen.kept])
    order = torch.tensor([pred.classes.index(c) for c in items.classes])
    stats = OpenSetStats.fit(seen.outputs.features, order[labels], len(pred.classes))
    known_out = run_images(pred, [items.paths[i] for i in valid], bs=bs, features=True).outputs
    stats.fit_fusion(known_out.logits, known_out.features, pred.multi_label)
    known = scores(pred, known_out, stats)

    def of(paths: list[Path]) -> dict[str, torch.Tensor]:
        return scores(pred, run_images(pred, paths, bs=bs, features=True).outputs, stats)

    sets = {"near": of(near)}
    far_scores = {name: of(list_images(d)) for name, d in far.items()}
    sets["far"] = {n: torch.cat([s[n] for s in far_scores.values()]) for n in known}
    sets |= {f"far-{name}": s for name, s in far_scores.items()}
    return {"bank_rows": int(stats.bank.shape[0]), "n_known": len(known["energy"]),
            "n": {name: len(s["energy"]) for name, s in sets.items()},
            "scoring_seconds": round(time.perf_counter() - t0, 1),
            "figures": {name: openset.compare(known, s) for name, s in sets.items()}}


def imageclf(*args: str) -> str:
    return run([sys.executable, "-m", "imageclf", *args])


def summarise(runs: list[dict]) -> dict:
    """Medians over seeds: {kind: {set: {score: {auroc, fpr}}}}."""
    out: dict = {}
    for kind in sorted({r["kind"] for r in runs}):
        rs = [r for r in runs if r["kind"] == kind]
        out[kind] = {}
        for s in rs[0]["figures"]:
            out[kind][s] = {name: {m: round(statistics.median(r["figures"][s][name][m]
                                                              for r in rs), 4)
                                   for m in ("auroc", "fpr")}
                            for name in rs[0]["figures"][s]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--presize", type=int, default=160)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--lr", default="3e-3")
    ap.add_argument("--far", type=int, default=300, help="Images of each far-OOD kind.")
    ap.add_argument("--no-multi-label", action="store_true")
    ap.add_argument("--runs", help="Keep the trained runs here; a run already there is "
                    "scored again, not retrained.")
    a = ap.parse_args()
    full = imagenette(a.data)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        far = far_sets(Path(tmp) / "far", a.far, 0)
        cache = ["--cache-dir", f"{tmp}/cache"]  # decoded once, shared by every run
        for seed in (int(s) for s in a.seeds.split(",")):
            root = Path(tmp) / f"seed{seed}"
            data, held, near = split_classes(full, root, seed)
            kinds = ["softmax"] + ([] if a.no_multi_label else ["multi_label"])
            for kind in kinds:
                out = (Path(a.runs) if a.runs else root) / f"seed{seed}-{kind}"
                if not (out / "model").is_dir():
                    imageclf("train", str(data), "--arch", "resnet18", "--pretrained", "none",
                             "--size", str(a.size), "--presize", str(a.presize), "--bs",
                             str(a.bs), "--epochs", str(a.epochs), "--lr", a.lr, "--seed",
                             str(seed), *cache, "--out", str(out),
                             *(["--multi-label"] if kind == "multi_label" else []))
                m = json.loads((out / "metrics.json").read_text())
                row = {"seed": seed, "kind": kind, "held_out": held,
                       "valid_accuracy": m.get("valid_accuracy", m.get("accuracy_multi")),
                       "train_seconds": round(m["wall_seconds"], 1)}
                row |= measure(out / "model", data, near, far, a.bs)
                print(json.dumps({k: v for k, v in row.items() if k != "figures"}), flush=True)
                for s, f in row["figures"].items():
                    print(f"  {s}: " + ", ".join(f"{n} {v['auroc']:.3f}/{v['fpr']:.3f}"
                                                 for n, v in f.items()), flush=True)
                runs.append(row)
    result = {"machine": machine(), "settings": vars(a) | {"data": str(full), "ks": KS},
              "runs": runs, "summary": summarise(runs)}
    print(save("open_set", result))
    print(json.dumps(result["summary"], indent=1))
    render()


if __name__ == "__main__":
    main()
