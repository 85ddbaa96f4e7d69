"""Do BatchNorm statistics matter after a size change? Re-estimates a trained model's
BatchNorm running statistics at a side and compares validation accuracy before and after.

    python bench/bench_bn_recal.py MODEL_DIR [--data DIR] [--sizes 128,144,160] [--batches 100]

For each side: accuracy as exported (running statistics from training), then with the
statistics recomputed as an exact average over --batches augmented training batches at that
side (no weights change). A progressive-resizing model whose last stage ran at the final
side should gain nothing there; a gain at a larger test side says how much of the
test-resolution effect is the statistics (FixRes). Writes bench/results/bn_recal.json.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from common import cpu_name, imagenette, machine, save
from imageclf import DataConfig, DataLoaders, ModelMeta, Predictor
from imageclf.jobs.evaluate import evaluate


def recalibrate(model: torch.nn.Module, batches, n: int) -> torch.nn.Module:
    """A copy of `model` whose BatchNorm running stats are the exact mean over n batches."""
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(batches):
            if i == n:
                break
            model(x.contiguous(memory_format=torch.channels_last))
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data")
    ap.add_argument("--sizes", default="")
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--name", default="bn_recal")
    a = ap.parse_args()
    data = imagenette(a.data)
    meta = ModelMeta.read(a.model)
    sizes = [int(s) for s in a.sizes.split(",") if s] or [meta.size]
    rows = []
    for size in sizes:
        pred = Predictor(a.model, precision="fp32", size=size)
        before = evaluate(pred, data, bs=64).summary()["accuracy"]
        cfg = DataConfig.build(path=str(data), size=size, presize=meta.presize, bs=64, seed=0)
        dls = DataLoaders.from_config(cfg, mean=meta.mean, std=meta.std)
        dls.train.set_epoch(0)
        pred.model = recalibrate(pred.model, dls.train, a.batches)
        after = evaluate(pred, data, bs=64).summary()["accuracy"]
        rows.append({"size": size, "accuracy": before, "recalibrated_accuracy": after})
        print(rows[-1], flush=True)
    print(save(a.name, {"machine": machine(), "settings": vars(a) | {
        "data": str(data), "train_size": meta.train_size, "model_size": meta.size},
        "rows": rows}))


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    m, st = r["machine"], r["settings"]
    lines = [
        "## BatchNorm statistics after a size change", "",
        f"`bench/bench_bn_recal.py` on `{Path(st['model']).name}` (last trained at"
        f" {st['train_size']} px, exported for {st['model_size']} px): validation accuracy"
        f" with the running statistics from training, and with them recomputed as an exact"
        f" average over {st['batches']} augmented training batches at the same side (weights"
        f" unchanged). fp32. Measured {m['date']} on {cpu_name(m)} ({m['cores']} cores),"
        f" commit {m['commit']}.", "",
        "| side | accuracy | recomputed statistics | difference |", "|---:|---:|---:|---:|"]
    for x in r["rows"]:
        d = x["recalibrated_accuracy"] - x["accuracy"]
        lines.append(f"| {x['size']} | {100 * x['accuracy']:.1f}% |"
                     f" {100 * x['recalibrated_accuracy']:.1f}% | {100 * d:+.1f} points |")
    return "\n".join([*lines, "", ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    return "recomputed BatchNorm statistics: " + ", ".join(
        f"{x['size']} px {100 * (x['recalibrated_accuracy'] - x['accuracy']):+.1f}"
        " points" for x in r["rows"])


if __name__ == "__main__":
    main()
