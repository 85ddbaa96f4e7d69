"""Does `imageclf audit` find what is wrong with a data set? Imagenette with planted faults:

- 10% of the training labels flipped, at random (`random`) or between fixed pairs of
  classes (`pairs`: tench/springer, cassette player/gas pump, chain saw/garbage truck,
  church/parachute, French horn/golf ball), at each --seeds;
- 200 near duplicates of validation images put into train under the same class (JPEG q60,
  0.6x resize, 8% crop, every other one mirrored);
- 50 images of other kinds (the demo's drawings of no shape: noise, textures, gradients)
  put into class folders.

    python bench/bench_audit.py [--data DIR] [--seeds 0,1] [--modes random,pairs]
        [--folds 3] [--retrain] [--dup-scale 100000] [--fastai]

Per audit: precision and recall of the flipped labels among those flagged; the same
number of the top losses of the model the audit trained on the noisy labels (the ranking
fastai's ImageClassifierCleaner shows; with --fastai, fastai's own learner's top losses);
planted pairs found as leaks (recall, precision over every leak flagged); strays among the
100 flagged least like any class; wall and peak memory of the whole process. --folds K
adds the thorough path on the first seed's random flips; --retrain trains on the noisy,
the fixed (flagged labels excluded or relabelled as suggested) and the clean labels with
the same recipe. --dup-scale N times the duplicate search alone on N descriptors.
Writes bench/results/audit.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import imagenette, machine, measured, run, save, subset

PAIRS = [("n01440764", "n02102040"), ("n02979186", "n03425413"), ("n03000684", "n03417042"),
         ("n03028079", "n03888257"), ("n03394916", "n03445777")]
RECIPE = ["--size", "64", "--presize", "112", "--epochs", "2", "--lr", "3e-3",
          "--pretrained", "none"]


def build(data: Path, out: Path, mode: str, seed: int, share: float = 0.1, dups: int = 200,
          strays: int = 50) -> dict:
    """out/train, out/val of links to `data`'s images, with the faults planted; the truth."""
    from imageclf.data.shapes import draw_negative

    rng = random.Random(seed)
    classes = sorted(p.name for p in (data / "train").iterdir())
    partner = {a: b for a, b in PAIRS} | {b: a for a, b in PAIRS}
    train = [(p, p.parent.name) for c in classes for p in sorted((data / "train" / c).iterdir())]
    flip = set(rng.sample(range(len(train)), round(share * len(train))))
    truth: dict = {"flipped": {}, "leaks": {}, "strays": [], "clean": {}}
    for split in ("train", "val"):
        for c in classes:
            (out / split / c).mkdir(parents=True)
    for i, (p, c) in enumerate(train):
        new = c
        if i in flip:
            new = partner[c] if mode == "pairs" else rng.choice([k for k in classes if k != c])
        key = f"train/{new}/{p.name}"
        (out / key).symlink_to(p.resolve())
        truth["clean"][key] = c
        if new != c:
            truth["flipped"][key] = c
    for c in classes:
        for p in sorted((data / "val" / c).iterdir()):
            (out / "val" / c / p.name).symlink_to(p.resolve())
    vals = sorted(p for c in classes for p in (data / "val" / c).iterdir())
    for k, p in enumerate(rng.sample(vals, dups)):
        with Image.open(p) as im:
            im = im.convert("RGB")
            w, h = im.size
            dx, dy = round(0.04 * w), round(0.04 * h)  # 8% of each side cropped in all
            im = im.crop((dx, dy, w - dx, h - dy))
            im = im.resize((round(0.6 * im.width), round(0.6 * im.height)), Image.BILINEAR)
            if k % 2:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            key = f"train/{p.parent.name}/dup_{k}.jpg"
            im.save(out / key, quality=60)
        truth["leaks"][key] = f"val/{p.parent.name}/{p.name}"
        truth["clean"][key] = p.parent.name
    nrng = np.random.default_rng(seed + 100)
    for k in range(strays):
        c = rng.choice(classes)
        key = f"train/{c}/stray_{k}.jpg"
        draw_negative(nrng, (224, 224)).convert("RGB").save(out / key, quality=90)
        truth["strays"].append(key)
    return truth


def read_issues(audit: Path) -> list[dict]:
    """issues.csv's rows, as JSON objects."""
    from imageclf.data.audit_files import read_issues as read

    return [r.to_json() for r in read(audit)]


def top_losses(model: Path, data: Path, keys: list[str], given: dict[str, str]) -> list[str]:
    """`keys` ranked by the loss of `model` against their given label (the ranking
    ImageClassifierCleaner shows), highest first."""
    import torch

    from imageclf.jobs.evaluate import run_images
    from imageclf.model.predict import Predictor

    pred = Predictor(model)
    seen = run_images(pred, [data / k for k in keys], bs=128)
    idx = torch.tensor([pred.classes.index(given[keys[i]]) for i in seen.kept])
    loss = torch.nn.functional.cross_entropy(seen.outputs.logits, idx, reduction="none")
    return [keys[seen.kept[i]] for i in loss.argsort(descending=True).tolist()]


def score_audit(rows: list[dict], truth: dict, noisy: Path | None, data: Path) -> dict:
    flagged = [r["image"] for r in rows if r["kind"] == "label"]
    flagged_train = [k for k in flagged if k.startswith("train/")]
    hits = sum(k in truth["flipped"] for k in flagged_train)
    n_flip = len(truth["flipped"])
    out = {"flipped": n_flip, "flagged_labels": len(flagged),
           "flagged_train_labels": len(flagged_train),
           "label_precision": round(hits / max(1, len(flagged_train)), 3),
           "label_recall": round(hits / n_flip, 3)}
    relabel_ok = sum(truth["flipped"].get(r["image"]) == r["suggested"] for r in rows
                     if r["kind"] == "label" and r["image"] in truth["flipped"])
    out["suggestion_right"] = round(relabel_ok / max(1, hits), 3)
    if noisy is not None:
        keys = sorted(truth["clean"])
        given = {k: k.split("/")[1] for k in keys}
        ranked = top_losses(noisy, data, keys, given)[:len(flagged_train)]
        th = sum(k in truth["flipped"] for k in ranked)
        out["top_losses_precision"] = round(th / max(1, len(ranked)), 3)
        out["top_losses_recall"] = round(th / n_flip, 3)
    leaks = [r for r in rows if r["kind"] in ("leak", "duplicate")]
    found = {r["image"] for r in leaks if truth["leaks"].get(r["image"]) == r["duplicate_of"]}
    leak_rows = [r for r in rows if r["kind"] == "leak"]
    out |= {"planted_leaks": len(truth["leaks"]), "leaks_found": len(found),
            "leak_recall": round(len(found) / len(truth["leaks"]), 3),
            "leaks_flagged": len(leak_rows),
            "leak_precision": round(sum(r["image"] in truth["leaks"] for r in leak_rows)
                                    / max(1, len(leak_rows)), 3),
            "other_duplicates": [(r["image"], r["duplicate_of"], r["note"]) for r in leaks
                                 if r["image"] not in truth["leaks"]][:30]}
    strays = [r["image"] for r in sorted((r for r in rows if r["kind"] == "stray"),
                                         key=lambda r: -float(r["score"]))][:100]
    out["stray_recall_top100"] = round(sum(k in truth["strays"] for k in strays)
                                       / len(truth["strays"]), 3)
    return out


TRAIN_WALL: list[float] = []  # whole-process seconds of each training run


def train_acc(data: str, extra: list[str], out: Path, seed: int) -> float:
    t0 = time.perf_counter()
    run([sys.executable, "-m", "imageclf", "train", data, *RECIPE, "--seed", str(seed),
         "--out", str(out), *extra])
    TRAIN_WALL.append(round(time.perf_counter() - t0, 1))
    return json.loads((out / "metrics.json").read_text())["valid_accuracy"]


def fixes_from(rows: list[dict], path: Path, relabel: bool) -> Path:
    """A fixes.csv: every flagged training label relabelled as suggested (or excluded), and
    every leak and stray excluded."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "decision", "label", "given", "decided"])
        for r in rows:
            if not r["image"].startswith("train/"):
                continue
            if r["kind"] == "label":
                w.writerow([r["image"], "relabel" if relabel else "exclude",
                            r["suggested"] if relabel else "", r["given"], ""])
            elif r["kind"] in ("leak", "stray"):
                w.writerow([r["image"], "exclude", "", r["given"], ""])
    return path


def clean_csv(truth: dict, data: Path, path: Path) -> Path:
    """The noisy folder's images with their true labels, planted faults left out."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label", "is_valid"])
        for k, c in sorted(truth["clean"].items()):
            if k not in truth["leaks"]:
                w.writerow([str(data / k), c, "false"])
        for p in sorted((data / "val").rglob("*")):
            if p.is_file() or p.is_symlink():
                w.writerow([str(p), p.parent.name, "true"])
    return path


def dup_scale(n: int, data: Path) -> dict:
    """The duplicate search alone on n descriptors: Imagenette's own, then the same with
    small noise added until there are n (the neighbour search's cost, not decoding's)."""
    import torch

    from imageclf.data.duplicates import descriptors, find_duplicates
    from imageclf.data.images import load_centre_square

    files = sorted(data.rglob("*.JPEG"))[:2000] or sorted(data.rglob("*.jpg"))[:2000]
    x = torch.stack([torch.from_numpy(load_centre_square(p, 112)) for p in files])
    base = descriptors(x)
    rng = np.random.default_rng(0)
    reps = -(-n // len(base))
    d = np.concatenate([base + rng.normal(0, 0.3, base.shape).astype(np.float32)
                        for _ in range(reps)])[:n]
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    import resource

    t0 = time.perf_counter()
    pairs = find_duplicates(d, [str(i) for i in range(n)])
    return {"descriptors": n, "seconds": round(time.perf_counter() - t0, 1),
            "pairs": len(pairs),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def transfer_rows(data: Path, seeds: list[int], result: dict, env: dict) -> None:
    """The fast path with a pretrained body, as a user with hub weights would run it: a body
    trained on Imagenette's first five classes (clean labels, 5 epochs), then `audit --model
    BODY` on the other five with the faults planted. Top losses: the same body fine-tuned on
    the noisy labels (`train --pretrained BODY`, the learner ImageClassifierCleaner reads)."""
    classes = sorted(p.name for p in (data / "train").iterdir())
    with tempfile.TemporaryDirectory(prefix="bench-audit-transfer-") as tmp:
        pre, fine = Path(tmp) / "pre", Path(tmp) / "fine"
        for split in ("train", "val"):
            for i, c in enumerate(classes):
                dst = (pre if i < 5 else fine) / split
                dst.mkdir(parents=True, exist_ok=True)
                (dst / c).symlink_to((data / split / c).resolve())
        t0 = time.perf_counter()
        run([sys.executable, "-m", "imageclf", "train", str(pre), *RECIPE[:4], "--epochs", "5",
             "--lr", "3e-3",
             "--pretrained", "none", "--out", f"{tmp}/body"], env)
        body_s = round(time.perf_counter() - t0, 1)
        body_acc = json.loads(Path(f"{tmp}/body/metrics.json").read_text())["valid_accuracy"]
        for seed in seeds:
            noisy = Path(tmp) / f"data-{seed}"
            truth = build(fine, noisy, "random", seed)
            out = Path(tmp) / f"audit-{seed}"
            m = measured([sys.executable, "-m", "imageclf", "audit", str(noisy), "-o", str(out),
                          "--model", f"{tmp}/body/model", "--seed", str(seed), "--json"], env)
            rows = read_issues(out)
            r = score_audit(rows, truth, None, noisy)
            acc = train_acc(str(noisy), ["--pretrained", f"{tmp}/body/model",
                                         "--freeze-epochs", "1"], Path(tmp) / f"ft-{seed}", seed)
            r |= score_audit(rows, truth, Path(tmp) / f"ft-{seed}" / "model", noisy)
            r |= {"args": "--model BODY (5 other classes, 5 epochs)", "seconds": m["seconds"],
                  "peak_mb": m["peak_mb"], "body_seconds": body_s, "body_accuracy": body_acc,
                  "noisy_accuracy": acc, "train_seconds": TRAIN_WALL[-1]}
            key = f"transfer-seed{seed}"
            result["audits"][key] = r
            print(key, {k: v for k, v in r.items() if k != "other_duplicates"}, flush=True)
            save("audit", result)


def fastai_row(data: Path, mode: str, seed: int, result: dict) -> None:
    """fastai's ImageClassifierCleaner ranking at the audit's number flagged."""
    from common import fastai_python

    key = f"{mode}-seed{seed}-fast"
    row = result["audits"][key]
    with tempfile.TemporaryDirectory(prefix="bench-audit-fastai-") as tmp:
        noisy = Path(tmp) / "data"
        truth = build(data, noisy, mode, seed)
        t0 = time.perf_counter()
        out = run([str(fastai_python()), str(Path(__file__).parent / "fastai_top_losses.py"),
                   str(noisy), "64", "112", "64", "2", "3e-3"])
        r = json.loads(out.strip().splitlines()[-1])
    n = row["flagged_train_labels"]
    hits = sum(k in truth["flipped"] for k in r["ranked"][:n])
    row |= {"fastai_top_losses_precision": round(hits / max(1, n), 3),
            "fastai_top_losses_recall": round(hits / len(truth["flipped"]), 3),
            "fastai_accuracy": round(r["valid_accuracy"], 4),
            "fastai_seconds": round(time.perf_counter() - t0, 1)}
    print(key, "fastai:", {k: v for k, v in row.items() if k.startswith("fastai")}, flush=True)
    save("audit", result)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def section(r: dict) -> str:
    from common import cpu_name

    m = r["machine"]
    lines = [
        "## Data health: the audit on Imagenette with planted faults",
        "",
        "`bench/bench_audit.py`: Imagenette (9,469 train, 3,925 valid) with 10% of the training "
        "labels flipped (`random`: to any other class; `pairs`: within five fixed pairs of "
        "classes), 200 near copies of validation images put into train (JPEG q60, 0.6x, 8% "
        "crop, every other one mirrored) and 50 drawn images of no class put into class "
        "folders. `fast`: the default audit, which trains resnet18 on the noisy labels with "
        "the fastest recipe (64 px, 2 epochs) and cross-validates a linear head on its "
        "features; `folds3`: three models, each judging the fold it did not see. Top losses: "
        "the same number of training images ranked by the loss of a model trained on the "
        "noisy labels with the same recipe (the ranking fastai's ImageClassifierCleaner "
        "shows); fastai: fastai's own learner (resnet18, 64 px, 2 epochs) ranked by "
        "`get_preds(ds_idx=0, with_loss=True)`, as the cleaner does. Wall and peak memory "
        f"(PSS of the process tree) of the whole audit. Measured {m['date']} on "
        f"{cpu_name(m)} ({m['cores']} cores), commit {m['commit']}.",
        "",
        "`transfer`: the fast path given a body (`--model`) trained for 5 epochs on the five "
        "other classes, auditing the five others (one training: fine-tuning that body on "
        "the noisy labels). Flagged, precision and recall count training images.",
        "",
        "| audit | flagged | precision | recall | suggestion right | top losses precision | "
        "fastai precision | leaks found | leak precision | strays in top 100 | wall | "
        "one training | peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, a in r.get("audits", {}).items():
        lines.append(
            f"| {key} | {a['flagged_train_labels']} | {_pct(a['label_precision'])} | "
            f"{_pct(a['label_recall'])} | {_pct(a['suggestion_right'])} | "
            f"{_pct(a.get('top_losses_precision'))} | "
            f"{_pct(a.get('fastai_top_losses_precision'))} | "
            f"{a['leaks_found']}/{a['planted_leaks']} | {_pct(a['leak_precision'])} | "
            f"{_pct(a['stray_recall_top100'])} | {a['seconds']:.0f} s | "
            f"{a.get('train_seconds', '-')} s | {a['peak_mb']} MB |")
    retrain = [(k, a) for k, a in r.get("audits", {}).items() if "clean_accuracy" in a]
    if retrain:
        lines += ["", "Training on the fixes (same recipe and seed; valid accuracy):", "",
                  "| set | noisy | flagged excluded | flagged relabelled as suggested | clean |"
                  " gap recovered (excluded / relabelled) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for k, a in retrain:
            lines.append(
                f"| {k} | {100 * a['noisy_accuracy']:.1f}% | "
                f"{100 * a['fixed_exclude_accuracy']:.1f}% | "
                f"{100 * a['fixed_relabel_accuracy']:.1f}% | {100 * a['clean_accuracy']:.1f}% "
                f"| {_pct(a['gap_recovered_exclude'])} / {_pct(a['gap_recovered_relabel'])} |")
    if "dup_scale" in r:
        d = r["dup_scale"]
        lines += ["", f"The duplicate search alone on {d['descriptors']:,} descriptors "
                  "(Imagenette's, repeated with noise added): "
                  f"{d['seconds']:.0f} s, peak RSS {d['peak_rss_mb']} MB."]
    return "\n".join(lines) + "\n"


def headline(r: dict) -> str:
    a = r["audits"].get("random-seed0-fast")
    if a is None:
        return "-"
    return (f"10% random flips: precision {_pct(a['label_precision'])}, recall "
            f"{_pct(a['label_recall'])} (top losses {_pct(a.get('top_losses_precision'))}); "
            f"leaks {a['leaks_found']}/{a['planted_leaks']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--modes", default="random,pairs")
    ap.add_argument("--folds", type=int, default=0)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--variants", nargs="*", default=[],
                    help="More audits of the first seed's random flips: NAME='ARGS'.")
    ap.add_argument("--dup-scale", type=int, default=0)
    ap.add_argument("--only-scale", action="store_true")
    ap.add_argument("--per-class", type=int, default=0, help="A smaller Imagenette (smoke).")
    ap.add_argument("--transfer", action="store_true",
                    help="Only the pretrained-body rows (transfer_rows), kept beside the rest.")
    ap.add_argument("--fastai-only", action="store_true",
                    help="fastai's own top-loss ranking on the same planted sets (the same "
                    "seeds give the same flips), compared with the audits already in "
                    "bench/results/audit.json at their number flagged.")
    a = ap.parse_args()
    data = imagenette(a.data)
    if a.per_class:
        data = subset(data, a.per_class)
    prev = Path(__file__).parent / "results" / "audit.json"
    result = json.loads(prev.read_text()) if prev.exists() else {}
    result["machine"] = machine()
    result.setdefault("audits", {})
    if a.dup_scale:
        result["dup_scale"] = dup_scale(a.dup_scale, data)
        print("dup scale:", result["dup_scale"], flush=True)
        save("audit", result)
    if a.only_scale:
        return
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.transfer:
        transfer_rows(data, seeds, result, {**os.environ, "IMAGECLF_CACHE_DIR":
                                            tempfile.mkdtemp(prefix="audit-cache-")})
        return
    if a.fastai_only:
        for mode in a.modes.split(","):
            for seed in seeds:
                fastai_row(data, mode, seed, result)
        return
    env = {**os.environ, "IMAGECLF_CACHE_DIR": tempfile.mkdtemp(prefix="audit-cache-")}
    for mode in a.modes.split(","):
        for seed in seeds:
            with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
                noisy = Path(tmp) / "data"
                truth = build(data, noisy, mode, seed)
                runs = [("fast", [])]
                if mode == "random" and seed == seeds[0]:
                    if a.folds:
                        runs.append((f"folds{a.folds}", ["--folds", str(a.folds)]))
                    runs += [(v.split("=", 1)[0], v.split("=", 1)[1].split())
                             for v in a.variants]
                for name, extra in runs:
                    out = Path(tmp) / f"audit-{name}"
                    m = measured([sys.executable, "-m", "imageclf", "audit", str(noisy), "-o",
                                  str(out), *RECIPE, "--seed", str(seed), "--json", *extra],
                                 env)
                    r0 = {"args": " ".join(extra)}
                    summary = json.loads(m["stdout"][m["stdout"].index("{"):])
                    rows = read_issues(out)
                    r = score_audit(rows, truth, None, noisy)
                    r |= r0 | {"seconds": m["seconds"], "peak_mb": m["peak_mb"],
                          "counts": summary["counts"], "features": summary["features"]}
                    if name == "fast":
                        acc_noisy = train_acc(str(noisy), [], Path(tmp) / "noisy", seed)
                        model = Path(tmp) / "noisy" / "model"
                        r |= score_audit(rows, truth, model, noisy) | {
                            "noisy_accuracy": acc_noisy, "train_seconds": TRAIN_WALL[-1]}
                        if a.retrain and mode == "random" and seed == seeds[0]:
                            for how in ("exclude", "relabel"):
                                fx = fixes_from(rows, Path(tmp) / f"fixes-{how}.csv",
                                                how == "relabel")
                                r[f"fixed_{how}_accuracy"] = train_acc(
                                    str(noisy), ["--fixes", str(fx)], Path(tmp) / how, seed)
                            r["clean_accuracy"] = train_acc(
                                str(noisy), ["--csv", str(clean_csv(truth, noisy, Path(tmp) /
                                                                    "clean.csv"))],
                                Path(tmp) / "clean", seed)
                            gap = r["clean_accuracy"] - acc_noisy
                            for how in ("exclude", "relabel"):
                                r[f"gap_recovered_{how}"] = round(
                                    (r[f"fixed_{how}_accuracy"] - acc_noisy) / gap, 3) \
                                    if gap > 0 else None
                    key = f"{mode}-seed{seed}-{name}"
                    result["audits"][key] = r
                    print(key, {k: v for k, v in r.items() if k != "other_duplicates"},
                          flush=True)
                    save("audit", result)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
