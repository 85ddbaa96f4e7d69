"""Pure schedule functions: training progress in [0, 1] → value."""

from __future__ import annotations

import math


def cos_anneal(start: float, end: float, pct: float) -> float:
    """Cosine from `start` (pct=0) to `end` (pct=1)."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))


def combined_cos(pct_start: float, start: float, middle: float, end: float,
                 pct: float) -> float:
    """Cosine start → middle over the first `pct_start` of training, then middle → end."""
    if pct < pct_start:
        return cos_anneal(start, middle, pct / pct_start) if pct_start > 0 else middle
    rest = 1 - pct_start
    return cos_anneal(middle, end, (pct - pct_start) / rest) if rest > 0 else end


def one_cycle_lr(pct: float, lr_max: float, div: float = 25.0, div_final: float = 1e5,
                 pct_start: float = 0.25) -> float:
    """fastai's one-cycle learning rate: lr_max/div → lr_max → lr_max/div_final."""
    return combined_cos(pct_start, lr_max / div, lr_max, lr_max / div_final, pct)


def one_cycle_mom(pct: float, moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
                  pct_start: float = 0.25) -> float:
    """The inverse cycle of momentum (Adam's beta1): high → low while lr rises → high."""
    return combined_cos(pct_start, moms[0], moms[1], moms[2], pct)


def exp_sweep(i: int, n: int, start: float = 1e-7, end: float = 10.0) -> float:
    """Exponentially growing rate for the lr finder: start at i=0, end at i=n-1."""
    return start * (end / start) ** (i / max(n - 1, 1))
