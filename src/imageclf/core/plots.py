"""Pictures: image grids, loss curves, the lr finder, confusion matrices.

Drawn on `matplotlib.figure.Figure` objects, never through pyplot: importing imageclf
changes no global matplotlib state (a notebook's backend and inline plots stay as they
are), and figures are freed with their last reference. Each function returns its Figure (a
notebook shows it inline) and saves it as a PNG when given a path."""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def show_inline() -> None:
    """In IPython / Jupyter, show a returned Figure as a PNG (what the inline backend does
    for pyplot figures), without importing pyplot or changing matplotlib's backend."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        shell.display_formatter.formatters["image/png"].for_type(Figure, _png)


def save(fig: Figure, path: str | Path | None) -> Figure:
    """Lay the figure out, and write it as a PNG when a path is given."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(Path(path), dpi=90)
    return fig


def image_grid(images: torch.Tensor, titles: Sequence[str], path: str | Path | None = None,
               ncols: int | None = None) -> Figure:
    """Save float RGB images (B, 3, H, W) in [0, 1] as a titled PNG grid."""
    n = images.shape[0]
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(2.2 * ncols, 2.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k].permute(1, 2, 0).float().cpu().numpy())
            ax.set_title(titles[k], fontsize=8)
    return save(fig, path)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float],
                 suggestions: dict[str, float], path: str | Path | None = None) -> Figure:
    """Smoothed loss against log learning rate, with each suggestion marked."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(lrs, losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    markers = {"valley": "o", "slide": "s", "minimum": "^", "steep": "v"}
    for name, lr in suggestions.items():
        i = min(range(len(lrs)), key=lambda k: abs(lrs[k] - lr))
        ax.plot(lr, losses[i], markers.get(name, "x"), label=f"{name}: {lr:.2e}", ms=8)
    ax.legend()
    return save(fig, path)


def plot_losses(batch_losses: Sequence[float], rows: Sequence[dict], batches_per_epoch: int,
                path: str | Path | None = None) -> Figure:
    """Training loss per batch and validation loss per epoch."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(range(1, len(batch_losses) + 1), batch_losses, label="train", alpha=0.8)
    if rows:
        xs = [batches_per_epoch * (i + 1) for i in range(len(rows))]
        ax.plot(xs, [r["valid_loss"] for r in rows], "o-", label="valid")
    ax.set_xlabel("batch")
    ax.set_ylabel("loss")
    ax.legend()
    return save(fig, path)


def plot_confusion_matrix(cm: torch.Tensor, classes: Sequence[str],
                          path: str | Path | None = None) -> Figure:
    """Rows = actual, columns = predicted; colours normalised per row (recall), counts written
    in the cells while they fit. Readable from 2 to 100+ classes: the figure grows with n."""
    n = len(classes)
    cmf = cm.float()
    norm = cmf / cmf.sum(1, keepdim=True).clamp_min(1)
    side = min(max(5.0, 0.32 * n + 2.5), 40.0)
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    font = max(4.0, min(10.0, 160 / max(n, 1)))
    ax.set_xticks(range(n), labels=list(classes), rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels=list(classes), fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if n <= 40:
        for i in range(n):
            for j in range(n):
                c = int(cm[i, j])
                if c:
                    ax.text(j, i, str(c), ha="center", va="center", fontsize=font * 0.9,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the actual class")
    return save(fig, path)


def plot_open_set(known: torch.Tensor, unknown: torch.Tensor, threshold: float | None,
                  score: str, path: str | Path | None = None, title: str = "") -> Figure:
    """Histograms of the known and unknown images' open-set scores, the threshold drawn."""
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    # a long tail (the distances of noise images) would squeeze the rest into one bin: the
    # range is the known images' and as much again below it, with anything beyond counted
    # in the end bins
    k_lo, k_hi = (float(v) for v in torch.quantile(known.float(),
                                                   torch.tensor([0.005, 1.0])))
    lo = min(k_lo, max(k_lo - (k_hi - k_lo), float(unknown.min())))
    hi = max(k_hi, float(torch.quantile(unknown.float(), 0.995)))
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    hi = hi if hi > lo else lo + 1e-6
    bins = torch.linspace(lo, hi, 41).tolist()
    ax.hist(known.float().clamp(lo, hi).numpy(), bins=bins, alpha=0.6, density=True,
            label=f"known classes ({len(known)})", color="tab:blue")
    ax.hist(unknown.float().clamp(lo, hi).numpy(), bins=bins, alpha=0.6, density=True,
            label=f"unknown ({len(unknown)})", color="tab:orange")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--",
                   label=f"threshold {threshold:.4g}")
    ax.set_xlabel(f"{score} (higher = more like a known class)")
    ax.set_ylabel("density")
    ax.set_title(title or f"open-set score: {score}")
    ax.legend(fontsize=8)
    return save(fig, path)


show_inline()
