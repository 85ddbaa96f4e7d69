"""Mixup and CutMix on a batch, on its device, after the one grid_sample (no resample).

Each image is mixed with another of the batch (a permutation): mixup blends whole images,
CutMix pastes a box. Targets become the same blend of the two images' targets: soft class
probabilities for softmax models, blended multi-hot vectors for multi-label ones, so the
loss (cross-entropy with label smoothing, or BCE) reads them as they are. The draws come
from the (seed, epoch, batch) generator, so a resumed epoch mixes exactly as the first run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def soft_targets(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B,) class indices → (B, C) one-hot float; (B, C) targets unchanged (as float)."""
    return F.one_hot(y.long(), n_classes).float() if y.dim() == 1 else y.float()


def cut_box(lam: float, h: int, w: int, g: torch.Generator) -> tuple[int, int, int, int]:
    """A box of about (1 - lam) of the image, centred at a random point, clipped to it:
    (y0, y1, x0, x1)."""
    r = math.sqrt(1.0 - lam)
    ch, cw = int(h * r), int(w * r)
    cy = int(torch.randint(h, (1,), generator=g))
    cx = int(torch.randint(w, (1,), generator=g))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
    return y0, y1, x0, x1


def mix_batch(x: torch.Tensor, y: torch.Tensor, n_classes: int, mixup: float, cutmix: float,
              g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(mixed images, mixed soft targets, "mixup" or "cutmix") for one batch; with both
    alphas > 0 each batch takes one of the two at random."""
    use_cut = cutmix > 0 and (mixup <= 0 or bool(torch.rand(1, generator=g) < 0.5))
    alpha = cutmix if use_cut else mixup
    lam = _beta(alpha, g)
    perm = torch.randperm(x.shape[0], generator=g).to(x.device)
    t = soft_targets(y, n_classes)
    if use_cut:
        h, w = x.shape[-2:]
        y0, y1, x0, x1 = cut_box(lam, h, w, g)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the pasted share, exactly
    else:
        x = x * lam + x[perm] * (1.0 - lam)
    return x, t * lam + t[perm] * (1.0 - lam), "cutmix" if use_cut else "mixup"


def _beta(alpha: float, g: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw from `g` (two Gamma draws through the generator)."""
    a = torch._standard_gamma(torch.full((2,), float(alpha)), generator=g)  # noqa: SLF001
    return float(a[0] / a.sum())
