"""Does "none of these" catch unknowns? Every open-set score `imageclf calibrate` offers,
on models trained with and without `--negatives`, against unknowns the negatives never
showed.

    python bench/bench_open_set.py [--data DIR] [--epochs 3] [--seeds 0,1] [--size 128]
        [--presize 160] [--bs 64] [--far 300] [--weights 0.5] [--ratio 0.5]
        [--finetune-seed 0] [--runs DIR]

Per seed, Imagenette's ten classes are dealt out with that seed:

- 6 **known** classes, trained on (their validation images are the known set);
- 2 **negative** classes: `train --negatives` (their train/ images; their val/ images are
  the held-out part that validation and `calibrate` read);
- 2 **unseen** classes, never shown to any model: their validation images are the near
  unknowns;
- **far** unknowns no model saw: the demo's drawn shapes, uniform and Gaussian noise, and
  generated textures (--far of each).

resnet18 is trained from scratch (`imageclf train`, timm's linear head, one-cycle at
--lr) for the same epochs without negatives and with them (each --weights value). Then,
with imageclf's own Predictor and openset module, every score is measured, with the
training statistics `calibrate` builds (bank, class means, ViM's subspace from the known
classes' training images; fused scores standardised on the known validation images). For
the models with negatives, `calibrate` itself is run as a user would (no --ood: the
held-out negatives), and its chosen rule is measured too.

With --finetune-seed, the same comparison once more as fine-tuning: a body pretrained by
the script on the 6 known classes (3 epochs), then `train --pretrained BODY` with and
without negatives.

Writes bench/results/open_set.json and regenerates docs/benchmarks.md.
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

from common import cpu_name, imagenette, machine, run, save
from imageclf.core.config import DataSource
from imageclf.data.negatives import negative_set
from imageclf.data.shapes import make_shapes_dataset
from imageclf.data.sources import list_images, resolve
from imageclf.jobs.evaluate import calibrate, run_images
from imageclf.model.classifier import linear_head
from imageclf.model.predict import Predictor
from imageclf.openset import scores as openset
from imageclf.openset.scores import OpenSetStats
from report import render

FAR_KINDS = ("shapes", "uniform", "gaussian", "textures")


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A generated texture: a sum of oriented sinusoids (stripes, waves, weaves) or a
    checkerboard, in two random colours, with a little noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if rng.random() < 0.25:
        cell = rng.integers(6, 30)
        t = ((yy // cell + xx // cell) % 2).astype(np.float64)
    else:
        t = np.zeros((h, w))
        for _ in range(int(rng.integers(1, 4))):
            a, f = rng.uniform(0, np.pi), rng.uniform(0.03, 0.4)
            t += np.sin(f * (xx * np.cos(a) + yy * np.sin(a)) + rng.uniform(0, 6.3))
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    img = c0 + t[..., None] * (c1 - c0) + rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def far_sets(root: Path, n: int, seed: int) -> dict[str, Path]:
    """Generated shapes, uniform noise, Gaussian noise and textures, `n` of each."""
    shapes = make_shapes_dataset(root / "shapes-src", n_train=0, n_valid=n // 4 + 1, seed=seed)
    rng = np.random.default_rng(seed)
    out = {"shapes": shapes / "valid"}
    for kind in FAR_KINDS[1:]:
        d = root / kind
        d.mkdir(parents=True)
        for i in range(n):
            h, w = (int(v) for v in rng.integers(120, 240, 2))
            if kind == "uniform":
                a = rng.integers(0, 256, (h, w, 3))
            elif kind == "gaussian":
                a = rng.normal(rng.uniform(60, 200), rng.uniform(20, 70), (h, w, 3))
            else:
                a = texture(rng, h, w)
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(d / f"{i:04d}.jpg",
                                                                      quality=90)
        out[kind] = d
    return out


def deal(full: Path, root: Path, seed: int) -> dict:
    """root/known (6 classes), root/negatives (2 classes, train/ and valid/), the 2 unseen
    classes' validation images; class folders as symlinks."""
    classes = sorted(p.name for p in (full / "train").iterdir() if p.is_dir())
    order = random.Random(seed).sample(classes, len(classes))
    known, neg, unseen = sorted(order[:6]), sorted(order[6:8]), sorted(order[8:])
    for split in ("train", "val"):
        for c in known + neg:
            d = root / "known" / split if c in known else root / "negatives" / (
                "train" if split == "train" else "valid")
            d.mkdir(parents=True, exist_ok=True)
            if not (d / c).exists():
                (d / c).symlink_to((full / split / c).resolve())
    near = [p for c in unseen for p in list_images(full / "val" / c)]
    return {"known": known, "negatives": neg, "unseen": unseen, "data": root / "known",
            "negatives_dir": root / "negatives", "near": near}


def measure(model: Path, data: Path, near: list[Path], far: dict[str, Path],
            negatives: Path, bs: int) -> dict:
    """Every score's figures against the held-out negatives, near and far unknowns, for one
    trained model, with the statistics `calibrate` would build."""
    pred = Predictor(model)
    items = resolve(DataSource(path=str(data), multi_label=pred.multi_label))
    train, valid = items.split_indices()
    t0 = time.perf_counter()
    seen = run_images(pred, [items.paths[i] for i in train], bs=bs, features=True)
    labels = torch.tensor([items.labels[train[i]][0] for i in seen.kept])
    order = torch.tensor([pred.classes.index(c) for c in items.classes])
    stats = OpenSetStats.fit(seen.outputs.features, order[labels], len(pred.classes),
                             head=linear_head(pred.model))
    known_out = run_images(pred, [items.paths[i] for i in valid], bs=bs, features=True).outputs
    stats.fit_fusion(known_out.logits, known_out.features, pred.multi_label)
    names = openset.scores_for(pred.multi_label, linear_head(pred.model) is not None)

    def of(out) -> dict[str, torch.Tensor]:
        return openset.score_outputs(names, out, stats)

    known = of(known_out)
    held = list(negative_set((str(negatives),)).valid)
    sets = {"negatives": of(run_images(pred, held, bs=bs, features=True).outputs),
            "near": of(run_images(pred, near, bs=bs, features=True).outputs)}
    far_scores = {name: of(run_images(pred, list_images(d), bs=bs, features=True).outputs)
                  for name, d in far.items()}
    sets["far"] = {n: torch.cat([s[n] for s in far_scores.values()]) for n in known}
    sets |= {f"far-{name}": s for name, s in far_scores.items()}
    return {"n_known": len(known["msp"]),
            "n": {name: len(s["msp"]) for name, s in sets.items()},
            "scoring_seconds": round(time.perf_counter() - t0, 1),
            "figures": {name: openset.compare(known, s) for name, s in sets.items()}}


def summarise(runs: list[dict]) -> dict:
    """Medians over seeds: {kind: {set: {score: {auroc, fpr}}}, plus accuracy and the
    chosen rule's figures}."""
    out: dict = {}
    for kind in sorted({r["kind"] for r in runs}):
        rs = [r for r in runs if r["kind"] == kind]
        sets = {s: {name: {m: round(statistics.median(r["figures"][s][name][m] for r in rs), 4)
                           for m in ("auroc", "fpr")}
                    for name in rs[0]["figures"][s]}
                for s in rs[0]["figures"]}
        out[kind] = {"sets": sets, "seeds": len(rs),
                     "valid_accuracy": round(statistics.mean(r["valid_accuracy"]
                                                             for r in rs), 4),
                     "train_seconds": round(statistics.median(r["train_seconds"]
                                                              for r in rs), 1)}
        chosen = [r["calibrated"] for r in rs if r.get("calibrated")]
        if chosen:
            out[kind]["calibrated"] = chosen
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
    ap.add_argument("--far", type=int, default=300, help="Images of each far kind.")
    ap.add_argument("--weights", default="0.5", help="--negatives-weight values, commas.")
    ap.add_argument("--ratio", type=float, default=0.5, help="--negatives-ratio.")
    ap.add_argument("--finetune-seed", type=int, default=None,
                    help="Also the fine-tuning comparison, on this seed's classes.")
    ap.add_argument("--runs", help="Keep the trained runs here; a run already there is "
                    "scored again, not retrained.")
    a = ap.parse_args()
    full = imagenette(a.data)
    weights = [float(w) for w in a.weights.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        # with --runs, the dealt classes, the far sets and the cache stay there too, so a
        # second invocation reuses the decoded images and the scored runs
        keep = Path(a.runs) if a.runs else Path(tmp)
        far = far_sets(keep / "far", a.far, 0) if not (keep / "far").is_dir() else {
            k: (keep / "far" / "shapes-src" / "valid" if k == "shapes" else keep / "far" / k)
            for k in FAR_KINDS}
        cache = ["--cache-dir", str(keep / "cache")]  # decoded once, shared by every run
        common = ["--size", str(a.size), "--presize", str(a.presize), "--bs", str(a.bs),
                  *cache]

        def one(split: dict, seed: int, kind: str, extra: list[str], epochs: int,
                weight: float | None) -> None:
            out = keep / f"seed{seed}-{kind}"
            scored = out / "bench_row.json"  # a run scored before (--runs): read again
            if scored.exists():
                runs.append(json.loads(scored.read_text()))
                return
            if not (out / "model").is_dir():
                neg = ["--negatives", str(split["negatives_dir"]), "--negatives-weight",
                       str(weight), "--negatives-ratio", str(a.ratio)] if weight else []
                run([sys.executable, "-m", "imageclf", "train", str(split["data"]), *common,
                     "--arch", "resnet18", "--head", "timm", "--epochs", str(epochs),
                     "--lr", a.lr, "--seed", str(seed), "--out", str(out), *extra, *neg])
            m = json.loads((out / "metrics.json").read_text())
            row = {"seed": seed, "kind": kind, "weight": weight,
                   "classes": {k: split[k] for k in ("known", "negatives", "unseen")},
                   "valid_accuracy": m["valid_accuracy"],
                   "train_seconds": round(m["wall_seconds"], 1),
                   "negatives_none": m.get("negatives_none")}
            row |= measure(out / "model", split["data"], split["near"], far,
                           split["negatives_dir"], a.bs)
            if weight:  # calibrate as a user would: no --ood, the held-out negatives
                c = calibrate(Predictor(out / "model"), split["data"])
                row["calibrated"] = {"score": c.score, "on_negatives": c.ood["scores"][
                    c.score], **{s: row["figures"][s][c.score] for s in ("near", "far")}}
            scored.write_text(json.dumps(row))
            print(json.dumps({k: v for k, v in row.items() if k != "figures"}), flush=True)
            for s, f in row["figures"].items():
                print(f"  {s}: " + ", ".join(f"{n} {v['auroc']:.3f}/{v['fpr']:.3f}"
                                             for n, v in f.items()), flush=True)
            runs.append(row)

        for seed in (int(s) for s in a.seeds.split(",")):
            split = deal(full, keep / "data" / f"seed{seed}", seed)
            scratch = ["--pretrained", "none"]
            one(split, seed, "scratch", scratch, a.epochs, None)
            for w in weights:
                one(split, seed, f"scratch+negatives@{w:g}", scratch, a.epochs, w)
            if seed == a.finetune_seed:
                body = keep / f"seed{seed}-body"
                if not (body / "model").is_dir():
                    run([sys.executable, "-m", "imageclf", "train", str(split["data"]),
                         *common, "--arch", "resnet18", "--head", "timm", "--pretrained",
                         "none", "--epochs", "3", "--lr", a.lr, "--seed", "100",
                         "--out", str(body)])
                tune = ["--pretrained", str(body / "model"), "--freeze-epochs", "1"]
                one(split, seed, "finetune", tune, a.epochs - 1, None)
                one(split, seed, f"finetune+negatives@{weights[0]:g}", tune, a.epochs - 1,
                    weights[0])
    result = {"machine": machine(), "settings": vars(a) | {"data": str(full)},
              "runs": runs, "summary": summarise(runs)}
    print(save("open_set", result))
    print(json.dumps(result["summary"], indent=1))
    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
OPEN_SET_COLUMNS = ("negatives", "near", "far", "far-shapes", "far-uniform", "far-gaussian",
                    "far-textures")


def _headline_of(s: dict) -> str:
    def fig(kind: str, split: str, name: str) -> str:
        return f"{100 * s[kind]['sets'][split][name]['auroc']:.1f}"

    neg = next((k for k in s if k.startswith("scratch+negatives")), None)
    out = (f"from scratch, msp near AUROC {fig('scratch', 'near', 'msp')}, far "
           f"{fig('scratch', 'far', 'msp')}")
    if neg:
        out += (f"; with negatives msp near {fig(neg, 'near', 'msp')}, far "
                f"{fig(neg, 'far', 'msp')}")
    return out


def _chosen(kind: dict) -> str:
    """calibrate's choices on the held-out negatives and the medians of their figures."""
    cs = kind.get("calibrated") or []
    if not cs:
        return ""
    names = ", ".join(c["score"] for c in cs)
    med = {s: {m: statistics.median(c[s][m] for c in cs) for m in ("auroc", "fpr")}
           for s in ("near", "far")}
    neg = statistics.median(c["on_negatives"]["auroc"] for c in cs)
    return (f"{names} | {100 * neg:.1f} | {100 * med['near']['auroc']:.1f} | "
            f"{100 * med['near']['fpr']:.1f} | {100 * med['far']['auroc']:.1f} | "
            f"{100 * med['far']['fpr']:.1f}")


def section(r: dict) -> str:
    m, st, runs = r["machine"], r["settings"], r["runs"]
    seeds = sorted({x["seed"] for x in runs})
    dealt = "; ".join(f"seed {x['seed']}: negatives {', '.join(x['classes']['negatives'])}, "
                      f"unseen {', '.join(x['classes']['unseen'])}" for x in runs
                      if x["kind"] == "scratch")
    n = runs[0]["n"]
    lines = [
        '## Open set: "none of these" with and without negatives', "",
        f"`bench/bench_open_set.py`: resnet18 (timm's linear head), {st['epochs']} epochs at"
        f" {st['size']} px (presize {st['presize']}, one-cycle at {st['lr']}, batch {st['bs']})"
        f" on 6 Imagenette classes; 2 more are the training negatives (`--negatives`, ratio"
        f" {st['ratio']:g}), their {n['negatives']} validation images held out; the last 2 are"
        f" never shown: their {n['near']} validation images are the near unknowns ({dealt})."
        f" Far unknowns no model saw: drawn shapes, uniform and Gaussian noise, generated"
        f" textures ({n['far']} images). Known: the 6 classes' {runs[0]['n_known']} validation"
        f" images. Seeds {', '.join(map(str, seeds))} (fine-tuning: seed"
        f" {st.get('finetune_seed')}, from a body pretrained here on the 6 known classes);"
        f" medians (AUROC, higher is better; FPR at 95% of known kept, lower is better)."
        f" Measured {m['date']} on {cpu_name(m)} ({m.get('isa', '')}, {m['cores']} cores),"
        f" commit {m['commit']}.", "",
        "| model | known accuracy (mean) | score | held-out negatives AUROC |"
        " near AUROC | near FPR95 | far AUROC | far FPR95 |",
        "|---|---:|---|---:|---:|---:|---:|---:|"]
    summary = r["summary"]
    for kind, k in summary.items():
        sets = k["sets"]
        for name in ("msp", "mahalanobis", "ash", "scale", "msp+mahalanobis", "msp+vim"):
            if name not in sets["near"]:
                continue
            lines.append(
                f"| {kind} | {100 * k['valid_accuracy']:.1f}% | {name} |"
                f" {100 * sets['negatives'][name]['auroc']:.1f} |"
                f" {100 * sets['near'][name]['auroc']:.1f} |"
                f" {100 * sets['near'][name]['fpr']:.1f} |"
                f" {100 * sets['far'][name]['auroc']:.1f} |"
                f" {100 * sets['far'][name]['fpr']:.1f} |")
        if _chosen(k):
            lines.append(f"| {kind} | | calibrate's pick: {_chosen(k)} |")
    lines.append("")
    for kind, k in summary.items():
        sets = k["sets"]
        cols = [c for c in OPEN_SET_COLUMNS if c in sets]
        lines += [f"**{kind}**: every score", "",
                  "| score | " + " | ".join(f"{c} AUROC | FPR95" for c in cols) + " |",
                  "|---|" + "---:|" * (2 * len(cols))]
        for name in sets["near"]:
            lines.append(f"| {name} | " + " | ".join(
                f"{100 * sets[c][name]['auroc']:.1f} | {100 * sets[c][name]['fpr']:.1f}"
                for c in cols) + " |")
        lines.append("")
    return "\n".join([*lines, "", ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    s = r.get("summary") or {}
    return _headline_of(s)


if __name__ == "__main__":
    main()
