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

from common import RESULTS, cpu_name, imagenette, machine, run, save
from imageclf.core.config import DataSource
from imageclf.data.negatives import negative_set
from imageclf.data.sources import list_images, resolve
from imageclf.data.synthetic import HELD_OUT, write_held_out
from imageclf.jobs.evaluate import calibrate, run_images
from imageclf.model.classifier import linear_head
from imageclf.model.predict import Predictor
from imageclf.openset import scores as openset
from imageclf.openset.scores import OpenSetStats
from report import render


def noise_sets(root: Path, n: int, seed: int) -> None:
    """root/uniform and root/gaussian: `n` images of each (the noise family is trained on,
    so these are reported apart from the held-out families)."""
    rng = np.random.default_rng(seed)
    for kind in ("uniform", "gaussian"):
        d = root / kind
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = (int(v) for v in rng.integers(120, 240, 2))
            a = rng.integers(0, 256, (h, w, 3)) if kind == "uniform" else rng.normal(
                rng.uniform(60, 200), rng.uniform(20, 70), (h, w, 3))
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(d / f"{i:04d}.jpg",
                                                                      quality=90)


def deal(full: Path, root: Path, seed: int, n_known: int, per_class: int | None) -> dict:
    """root/known (`n_known` classes), root/negatives (2 classes, train/ and valid/), the
    unseen classes' validation images. With `per_class`, that many training images of each
    known and negative class (drawn with the seed), linked one by one; else whole class
    folders as symlinks."""
    classes = sorted(p.name for p in (full / "train").iterdir() if p.is_dir())
    order = random.Random(seed).sample(classes, len(classes))
    known, neg = sorted(order[:n_known]), sorted(order[n_known:n_known + 2])
    unseen = sorted(order[n_known + 2:])
    for split in ("train", "val"):
        for c in known + neg:
            d = root / "known" / split if c in known else root / "negatives" / (
                "train" if split == "train" else "valid")
            d.mkdir(parents=True, exist_ok=True)
            if (d / c).exists():
                continue
            if per_class is None or split == "val":
                (d / c).symlink_to((full / split / c).resolve())
                continue
            (d / c).mkdir()
            files = sorted(list_images(full / split / c))
            for f in random.Random(seed).sample(files, min(per_class, len(files))):
                (d / c / f.name).symlink_to(f.resolve())
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
    held_out = [n for n in far_scores if n in HELD_OUT]
    sets["far"] = {n: torch.cat([far_scores[f][n] for f in held_out]) for n in known}
    sets |= {f"far-{name}": s for name, s in far_scores.items()}
    return {"n_known": len(known["msp"]),
            "n": {name: len(s["msp"]) for name, s in sets.items()},
            "scoring_seconds": round(time.perf_counter() - t0, 1),
            "figures": {name: openset.compare(known, s) for name, s in sets.items()}}


def summarise(runs: list[dict]) -> dict:
    """Medians over seeds per (setting, variant): {sets: {set: {score: {auroc, fpr}}},
    accuracy, seconds per epoch, and calibrate's picks}."""
    out: dict = {}
    for key in dict.fromkeys(f"{r['setting']}/{r['kind']}" for r in runs):
        rs = [r for r in runs if f"{r['setting']}/{r['kind']}" == key]
        sets = {s: {name: {m: round(statistics.median(r["figures"][s][name][m] for r in rs), 4)
                           for m in ("auroc", "fpr")}
                    for name in rs[0]["figures"][s]}
                for s in rs[0]["figures"]}
        out[key] = {"sets": sets, "seeds": len(rs),
                    "timing_disturbed": any(r.get("timing_disturbed") for r in rs),
                    "valid_accuracy": round(statistics.median(r["valid_accuracy"]
                                                              for r in rs), 4),
                    "epoch_seconds": round(statistics.median(r["epoch_seconds"]
                                                             for r in rs), 2)}
        chosen = [r["calibrated"] for r in rs if r.get("calibrated")]
        if chosen:
            out[key]["calibrated"] = chosen
    return out


SETTINGS = {  # classes known, training images per class, size, presize, epochs
    "small": {"known": 4, "per_class": 200, "size": 64, "presize": 80, "epochs": 5},
    "128px": {"known": 6, "per_class": None, "size": 128, "presize": 160, "epochs": 3},
}


def variant_args(variant: str, negatives_dir: Path) -> list[str]:
    """`none`, or NEGATIVES-LOSS-wWEIGHT-rRATIO where NEGATIVES is synthetic, user or
    user+synthetic (synthetic[FAMILIES] for some families: synthetic[fractal,noise])."""
    if variant == "none":
        return ["--no-synthetic"]
    neg, loss, w, r = variant.split("-")
    args = ["--negatives-loss", loss, "--negatives-weight", w[1:], "--negatives-ratio", r[1:],
            "--no-synthetic"]
    for part in neg.split("+"):
        if part == "user":
            args += ["--negatives", str(negatives_dir)]
        else:
            args += ["--negatives", part.replace("[", ":").replace("]", "")]
    return args


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--setting", default="small", choices=tuple(SETTINGS))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--lr", default="3e-3")
    ap.add_argument("--far", type=int, default=200, help="Images of each far family.")
    ap.add_argument("--variants", default="none,synthetic-oe-w0.5-r0.5",
                    help="Commas: none, or NEGATIVES-LOSS-wWEIGHT-rRATIO (variant_args).")
    ap.add_argument("--runs", help="Keep the trained runs here; a run already there is "
                    "scored again only with --rescore, never retrained.")
    ap.add_argument("--rescore", action="store_true")
    ap.add_argument("--disturbed", default="",
                    help="Variants (commas) whose runs were timed beside other work: their "
                    "seconds are shown as such, not as a cost.")
    ap.add_argument("--merge", action="store_true",
                    help="Keep the rows of bench/results/open_set.json that this run did not "
                    "measure (other settings, other variants).")
    a = ap.parse_args()
    st = SETTINGS[a.setting]
    full = imagenette(a.data)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        keep = Path(a.runs) if a.runs else Path(tmp)
        far_root = keep / "far"
        if not (far_root / "complete").exists():  # held-out families, and noise (trained on)
            write_held_out(far_root, a.far, seed=1000)
            noise_sets(far_root, a.far // 2, 0)
            (far_root / "complete").touch()
        far = {f: far_root / f for f in (*HELD_OUT, "uniform", "gaussian")}
        cache = ["--cache-dir", str(keep / "cache")]  # decoded once, shared by every run
        common = ["--size", str(st["size"]), "--presize", str(st["presize"]), "--bs",
                  str(a.bs), *cache]

        def one(split: dict, seed: int, variant: str) -> None:
            out = keep / f"{a.setting}-seed{seed}-{variant}"
            scored = out / "bench_row.json"  # a run scored before (--runs): read again
            if scored.exists() and not a.rescore:
                runs.append(json.loads(scored.read_text()))
                return
            if not (out / "model").is_dir():
                run([sys.executable, "-m", "imageclf", "train", str(split["data"]), *common,
                     "--arch", "resnet18", "--head", "timm", "--pretrained", "none",
                     "--epochs", str(st["epochs"]), "--lr", a.lr, "--seed", str(seed),
                     "--out", str(out), *variant_args(variant, split["negatives_dir"])])
            m = json.loads((out / "metrics.json").read_text())
            epochs = [e["seconds"] for e in m.get("history", [])
                      if "seconds" in e]
            row = {"setting": a.setting, "seed": seed, "kind": variant,
                   "classes": {k: split[k] for k in ("known", "negatives", "unseen")},
                   "valid_accuracy": m["valid_accuracy"],
                   "train_seconds": round(m["wall_seconds"], 1),
                   "epoch_seconds": round(statistics.median(epochs), 2) if epochs else
                   round(m["wall_seconds"] / st["epochs"], 2),
                   "negatives_none": m.get("negatives_none")}
            row |= measure(out / "model", split["data"], split["near"], far,
                           split["negatives_dir"], a.bs)
            # calibrate as a user would: no --ood; the held-out negatives when trained with
            # them, and the held-out synthetic families beside them
            c = calibrate(Predictor(out / "model"), split["data"])
            row["calibrated"] = {"score": c.score, **{
                s: row["figures"][s][c.score] for s in ("near", "far", "negatives")},
                "seen": c.ood}
            scored.write_text(json.dumps(row))
            print(json.dumps({k: v for k, v in row.items() if k not in ("figures", "classes")}),
                  flush=True)
            for s, f in row["figures"].items():
                print(f"  {s}: " + ", ".join(f"{n} {v['auroc']:.3f}/{v['fpr']:.3f}"
                                             for n, v in f.items()), flush=True)
            runs.append(row)

        disturbed = set(filter(None, a.disturbed.split(",")))
        for seed in (int(s) for s in a.seeds.split(",")):
            split = deal(full, keep / "data" / f"{a.setting}-seed{seed}", seed, st["known"],
                         st["per_class"])
            for variant in a.variants.split(","):
                one(split, seed, variant)
                runs[-1]["timing_disturbed"] = variant in disturbed or runs[-1].get(
                    "timing_disturbed", False)
    old = json.loads((RESULTS / "open_set.json").read_text()) if a.merge and (
        RESULTS / "open_set.json").exists() else {"runs": []}
    done = {(r["setting"], r["seed"], r["kind"]) for r in runs}
    runs = [r for r in old["runs"] if "setting" in r and
            (r["setting"], r["seed"], r["kind"]) not in done] + runs
    settings = (old.get("settings") or {}) | {a.setting: vars(a) | st | {"data": str(full)}}
    result = {"machine": machine(), "settings": settings, "runs": runs,
              "summary": summarise(runs)}
    print(save("open_set", result))
    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
SCORES = ("msp", "energy", "max_logit", "scale", "msp+mahalanobis")


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _pick(k: dict) -> str:
    """calibrate's picks (no --ood) and the medians of their figures."""
    cs = k.get("calibrated") or []
    if not cs:
        return ""
    med = {s: {m: statistics.median(c[s][m] for c in cs) for m in ("auroc", "fpr")}
           for s in ("near", "far")}
    return (f"{', '.join(dict.fromkeys(c['score'] for c in cs))} | {_pct(med['near']['auroc'])}"
            f" | {_pct(med['far']['auroc'])} | {_pct(med['far']['fpr'])}")


def section(r: dict) -> str:
    m, runs, summary = r["machine"], r["runs"], r["summary"]
    lines = ['## Open set: synthetic negatives, losses, and "none of these" near and far', "",
             "`bench/bench_open_set.py`: resnet18 (timm's linear head) from scratch, "
             "one-cycle. Per seed, Imagenette's classes are dealt into known classes, 2 "
             "classes of user negatives (`--negatives`; their validation images held out) and"
             " the rest, never shown: their validation images are the **near** unknowns. "
             "**far**: drawn images of families no training run draws (`shapes`, `textures`, "
             "`lines`, data/synthetic.py's HELD_OUT; drawn with another seed than calibrate's)"
             "; `noise` (uniform and Gaussian) is a trained family and is shown apart. "
             "Variants: `none` (today's training), or NEGATIVES-LOSS-wWEIGHT-rRATIO. Medians "
             "over the seeds; AUROC (higher is better), FPR at 95% of known kept (lower is "
             f"better); seconds per epoch (training and validation). Measured {m['date']} on "
             f"{cpu_name(m)} ({m.get('isa', '')}, {m['cores']} cores), commit {m['commit']}.",
             ""]
    for setting in dict.fromkeys(key.split("/")[0] for key in summary):
        st = r["settings"].get(setting, {})
        rs = [x for x in runs if x["setting"] == setting]
        seeds = sorted({x["seed"] for x in rs})
        base = summary.get(f"{setting}/none")
        lines += [f"### {setting}: {st.get('known')} known classes, "
                  f"{st.get('per_class') or 'all'} training images each, {st.get('size')} px "
                  f"(presize {st.get('presize')}), {st.get('epochs')} epochs; seeds "
                  f"{', '.join(map(str, seeds))}; {rs[0]['n_known']} known validation images,"
                  f" {rs[0]['n']['near']} near, {rs[0]['n']['far']} far", "",
                  "| variant | known acc. | s/epoch (× none) | score | near AUROC | "
                  "far AUROC | far FPR95 | shapes | textures | lines | noise (trained) |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for key, k in summary.items():
            if not key.startswith(setting + "/"):
                continue
            sets = k["sets"]
            ratio = f" ({k['epoch_seconds'] / base['epoch_seconds']:.2f}×)" if base else ""
            if k.get("timing_disturbed"):
                ratio = " (timed beside other work: not a cost)"
            first = True
            for name in SCORES:
                if name not in sets["near"]:
                    continue
                head = (f"| {key.split('/', 1)[1]} | {_pct(k['valid_accuracy'])}% | "
                        f"{k['epoch_seconds']:.1f}{ratio} |") if first else "| | | |"
                noise = statistics.mean(sets[f"far-{n}"][name]["auroc"]
                                        for n in ("uniform", "gaussian"))
                lines.append(f"{head} {name} | {_pct(sets['near'][name]['auroc'])} | "
                             f"{_pct(sets['far'][name]['auroc'])} | "
                             f"{_pct(sets['far'][name]['fpr'])} | " + " | ".join(
                                 _pct(sets[f"far-{f}"][name]["auroc"])
                                 for f in ("shapes", "textures", "lines")) +
                             f" | {_pct(noise)} |")
                first = False
            if _pick(k):
                lines.append(f"| | | | calibrate's pick: {_pick(k)} | | | | |")
        lines.append("")
    return "\n".join([*lines, "", ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    s = r.get("summary") or {}
    base = next((k for k in s if k.endswith("/none")), None)
    best = [k for k in s if k.endswith(DEFAULT_VARIANT) and k.startswith(
        base.split("/")[0] if base else "")]
    if not base or not best:
        return ""
    b, d = s[base], s[best[0]]
    cal = d.get("calibrated") or []
    far = statistics.median(c["far"]["auroc"] for c in cal) if cal else float("nan")
    near = statistics.median(c["near"]["auroc"] for c in cal) if cal else float("nan")
    return (f"{base.split('/')[0]}: today's default far AUROC "
            f"{_pct(b['sets']['far']['scale']['auroc'])}, with synthetic negatives "
            f"{_pct(far)} (near {_pct(near)} against msp's "
            f"{_pct(b['sets']['near']['msp']['auroc'])})")


DEFAULT_VARIANT = "/synthetic-energy-w0.05-r0.25"


if __name__ == "__main__":
    main()
