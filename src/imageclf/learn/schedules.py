"""Pure schedule functions: training progress in [0, 1] → value."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from imageclf.core.config import ONE_CYCLE_MOMS


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


def one_cycle_mom(pct: float, moms: tuple[float, float, float] = ONE_CYCLE_MOMS,
                  pct_start: float = 0.25) -> float:
    """The inverse cycle of momentum (Adam's beta1): high → low while lr rises → high."""
    return combined_cos(pct_start, moms[0], moms[1], moms[2], pct)


def flat_cos_lr(pct: float, lr_max: float, div_final: float = 1e5,
                pct_start: float = 0.75) -> float:
    """fastai's fit_flat_cos: lr_max held for the first `pct_start` of training, then a
    cosine down to lr_max/div_final."""
    return combined_cos(pct_start, lr_max, lr_max, lr_max / div_final, pct)


def exp_sweep(i: int, n: int, start: float = 1e-7, end: float = 10.0) -> float:
    """Exponentially growing rate for the lr finder: start at i=0, end at i=n-1."""
    return start * (end / start) ** (i / max(n - 1, 1))


@dataclass
class Phase:
    """One stretch of a training recipe: epochs at one-cycle (or constant) rates, with the
    body frozen (True), unfrozen (False) or left as it is (None). Serialisable: a checkpoint
    stores the plan so that a resumed run follows the same schedule."""

    epochs: int
    lr_max: list[float]
    pct_start: float = 0.25
    div: float = 25.0
    div_final: float = 1e5
    frozen: bool | None = None
    constant: bool = False
    shape: str = "one_cycle"  # or "flat_cos": flat, then cosine from pct_start, no warm-up


def fine_tune_plan(epochs: int, base_lr: float, n_groups: int, freeze_epochs: int = 1,
                   lr_mult: float = 100.0, pct_start: float = 0.3, div: float = 5.0
                   ) -> list[Phase]:
    """fastai's fine_tune as phases."""
    plan = []
    if freeze_epochs > 0:
        plan.append(Phase(freeze_epochs, spread_lrs(base_lr, n_groups), 0.99, frozen=True))
    base_lr /= 2
    plan.append(Phase(epochs, spread_lrs((base_lr / lr_mult, base_lr), n_groups), pct_start,
                      div, frozen=False))
    return plan


FLAT_PCT = 0.72  # the Imagenette records' fit_fc start_pct


def shaped(plan: list[Phase], shape: str) -> list[Phase]:
    """`plan` with every scheduled phase in `shape`: flat_cos holds the rate for FLAT_PCT of
    each phase (a frozen head-only phase keeps its own, longer, flat stretch)."""
    if shape == "one_cycle":
        return plan
    return [p if p.constant else replace(
        p, shape=shape, pct_start=p.pct_start if p.frozen else FLAT_PCT) for p in plan]


def spread_lrs(lr: float | Sequence[float], n: int) -> list[float]:
    """One rate for every group, or (low, high) spread log-evenly from first to last group."""
    if isinstance(lr, int | float):
        return [float(lr)] * n
    lo, hi = float(lr[0]), float(lr[-1])
    return [float(v) for v in np.geomspace(lo, hi, n)]
