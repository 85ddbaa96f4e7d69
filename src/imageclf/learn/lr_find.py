"""The learning-rate finder's results: suggestions from a sweep's curve (pure functions),
the sweep's record (lr_find.json), and the rate a run chose. The sweep itself is
Learner.lr_find."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imageclf.core.records import Record
from imageclf.core.schema import doc

if TYPE_CHECKING:
    from matplotlib.figure import Figure



def smooth(losses: Sequence[float], beta: float = 0.98) -> list[float]:
    """Exponential moving average of raw losses, debiased (as fastai's Recorder)."""
    avg, out = 0.0, []
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def should_stop(smoothed: float, best: float, factor: float = 4.0) -> bool:
    """The sweep stops when the smoothed loss blows up beyond `factor` × the best, or NaN."""
    return not math.isfinite(smoothed) or smoothed > factor * best


def minimum(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """A tenth of the rate at the lowest loss."""
    return float(lrs[int(np.argmin(losses))]) / 10


def steep(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The rate where the loss falls fastest against log(lr), inside the descent: as
    fastai's, the first tenth of the sweep is left out (its smoothed loss is mostly noise:
    the average has seen few steps), the slope is taken over a window of points rather than
    between neighbours, and only points before the lowest loss are candidates."""
    n = len(losses)
    if n < 3:
        return float(lrs[0])
    loss, llr = np.asarray(losses, float), np.log(np.asarray(lrs, float))
    w = max(1, n // 20)  # half-width of the slope's window
    lo, hi = max(w, n // 10), min(int(np.argmin(loss)), n - 1 - w)
    if hi <= lo:  # no descent after the noisy start: the plain steepest point
        return float(lrs[int(np.argmin(np.gradient(loss, llr)))])
    idx = np.arange(lo, hi + 1)
    slope = (loss[idx + w] - loss[idx - w]) / (llr[idx + w] - llr[idx - w])
    return float(lrs[int(idx[np.argmin(slope)])])


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's default: in the longest run of decreasing loss, the point half-way through
    its middle third (start + 1/3 + 1/6 of its length)."""
    n = len(losses)
    if n < 3:
        return float(lrs[0])
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end, max_start = i, i - lds[i]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[min(max(idx, 0), n - 1)])


def slide(lrs: Sequence[float], losses: Sequence[float], lr_diff: int = 15,
          thresh: float = 0.005, adjust_value: float = 1.0) -> float:
    """fastai's `slide`: walk left from the end until the log-loss slope flattens."""
    lg = np.log(np.maximum(np.asarray(losses, float), 1e-12))
    llr = np.log(np.asarray(lrs, float))
    if len(lg) <= lr_diff + 1:
        return minimum(lrs, losses)
    grads = (lg[1:] - lg[:-1]) / (llr[1:] - llr[:-1])
    r_idx, l_idx = -1, -1 - lr_diff
    local_min_lr = lrs[l_idx]
    while l_idx >= -len(grads) and abs(grads[r_idx] - grads[l_idx]) > thresh:
        local_min_lr = lrs[l_idx]
        r_idx -= 1
        l_idx -= 1
    return float(local_min_lr) * adjust_value


SUGGESTIONS = {"valley": valley, "slide": slide, "minimum": minimum, "steep": steep}


def suggest(lrs: Sequence[float], losses: Sequence[float]) -> dict[str, float]:
    """All four suggestions for one sweep."""
    return {name: fn(lrs, losses) for name, fn in SUGGESTIONS.items()}


def resolve_rule(rule: str, suggestions: dict[str, float], pretrained: bool) -> str:
    """The suggestion a `--lr` rule trains at. auto: valley when fine-tuning pretrained
    weights; from scratch minimum, where valley is too cautious (bench/bench_lr_rules.py:
    resnet18 on Imagenette, 52.0% vs 44.9% valid), unless minimum lies below valley: then the
    sweep's lowest loss came before its longest descent (noise on a flat start, as on a few
    dozen images) and valley is the sounder rate."""
    if rule != "auto":
        return rule
    if pretrained or suggestions["minimum"] < suggestions["valley"]:
        return "valley"
    return "minimum"


@dataclass(frozen=True)
class LRChoice:
    """The rate a run trains at and where it came from: a number given (`rule` None) or
    one of lr_find's suggestions. Checkpoints carry it, so a resumed run reports it."""

    lr: float
    rule: str | None = None
    suggestions: dict[str, float] | None = None  # lr_find's, when it ran

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {"lr": self.lr, "rule": self.rule, "suggestions": self.suggestions}

    @classmethod
    def from_dict(cls, d: dict) -> LRChoice:
        """Rebuild from `to_dict`'s output."""
        return cls(float(d["lr"]), d.get("rule"), d.get("suggestions"))


@dataclass
class LRFindResult(Record):
    """lr_find.json: a finder sweep's rates, smoothed losses, and the four suggestions."""

    lrs: list[float] = doc("the rate of each optimiser step")
    losses: list[float] = doc("the smoothed training loss at each step")
    suggestions: dict[str, float] = doc("valley, slide, minimum and steep (lr-find.md)")
    images_per_step: int = doc("images each full step saw (the last of an epoch may be short)",
                               0)

    def plot(self, path: str | Path | None = None) -> Figure:
        """The loss against the rate with the suggestions marked (saved when given a
        path; a notebook shows the Figure inline)."""
        from imageclf.core.plots import plot_lr_find

        return plot_lr_find(self.lrs, self.losses, self.suggestions, path)


def sweep_result(lrs: Sequence[float], losses: Sequence[float],
                 step_images: Sequence[int]) -> LRFindResult:
    """What a finished sweep found: its curve (the rate and smoothed loss of each step) and
    the suggestions. The last points are the blow-up that stopped it: not candidates."""
    n = len(losses)
    lrs, losses = list(lrs[:n]), list(losses)
    keep = max(3, n - 1) if n > 5 else n
    return LRFindResult(lrs, losses, suggest(lrs[:keep], losses[:keep]),
                        max(step_images, default=0))
