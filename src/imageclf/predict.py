"""Prediction from a model/ folder: the validation decode, presize and centre resize, batched.

Imports no training code (no learner, optimiser or loaders): a deployed model needs only
this module, the model folder and its dependencies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imageclf.data.augment import AugParams, BatchAugment, flip_matrix, zoom_matrix
from imageclf.data.images import UnreadableImage, load_centre_square
from imageclf.errors import ConfigError
from imageclf.export import load_model
from imageclf.hardware import resolve_precision

NONE_LABEL = "none"


@dataclass
class Prediction:
    """One image's answer: top-k (label, probability), the decided label(s), or an error."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # the decision; ["none"] when nothing fits
    probs: list[float] = field(default_factory=list)
    error: str | None = None
    none_rule: str | None = None  # how `none` is decided for this model (None: never)
    none_score: float | None = None  # the value the rule compares...
    none_threshold: float | None = None  # ...with this: below it, `none`

    def to_dict(self) -> dict:
        """The JSON object of `predict --json` (and of `serve`'s answers)."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        out = {"path": self.path, "labels": self.labels,
               "top": [{"label": k, "prob": round(p, 6)} for k, p in self.top],
               "none_rule": self.none_rule}
        if self.none_rule is not None:
            out |= {"none_score": round(self.none_score, 6),
                    "none_threshold": round(self.none_threshold, 6)}
        return out


def tta_params(n: int, zoom: float = 1.1) -> list[AugParams]:
    """Views averaged by test-time augmentation: centre, flipped, zoomed in, zoomed+flipped."""
    ones, zeros = torch.ones(n), torch.zeros(n)
    flip = torch.ones(n, dtype=torch.bool)
    z = torch.full((n,), zoom)
    mats = [torch.eye(3).expand(n, 3, 3).clone(), flip_matrix(flip),
            zoom_matrix(z, zeros, zeros), flip_matrix(flip) @ zoom_matrix(z, zeros, zeros)]
    return [AugParams(m, ones, zeros) for m in mats]


class Predictor:
    """A trained model ready for new images: `predict(paths)` → list of Prediction.

    The "none of these" rule comes from model.json: `min_confidence` (softmax models: below
    it the answer is `none`) or per-class `thresholds` (multi-label models: `none` when no
    class passes its threshold). `min_confidence` given here overrides the stored one.
    """

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu",
                 precision: str = "auto", min_confidence: float | None = None,
                 threads: int | None = None) -> None:
        self.folder = Path(folder)
        model, meta = load_model(self.folder)
        self.meta = meta
        self.device = torch.device(device)
        # auto: bf16 where the CPU (AMX/AVX512-BF16) or GPU runs it natively, else fp32
        self.precision = resolve_precision(precision, self.device, training=False)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.classes: list[str] = list(meta.classes)
        self.size, self.presize = meta.size, meta.presize
        self.method = meta.resize_method
        self.multi_label = meta.multi_label
        self.augment = BatchAugment(self.size, mean=meta.mean, std=meta.std)
        th = meta.thresholds
        self.thresholds = torch.tensor(th if th else [0.5] * len(self.classes))
        if min_confidence is not None and not 0 <= min_confidence <= 1:
            raise ConfigError(f"--min-confidence must be between 0 and 1; got {min_confidence}")
        self.min_confidence = (min_confidence if min_confidence is not None
                               else meta.min_confidence)
        self.threads = threads or min(4, os.cpu_count() or 1)

    @property
    def none_rule(self) -> str | None:
        """How this model answers "none of these": multi_label_thresholds, min_confidence or
        None (it always picks a class)."""
        if self.multi_label:
            return "multi_label_thresholds"
        return "min_confidence" if self.min_confidence else None

    # --- images → tensors ------------------------------------------------------------
    def load(self, path: str | Path | bytes) -> torch.Tensor:
        """(3, P, P) uint8: the validation decode + presize + centre square of a file (or of
        an image's bytes)."""
        return torch.from_numpy(load_centre_square(path, self.presize, self.method))

    def _load_many(self, paths: Sequence[str | Path]) -> list[torch.Tensor | str]:
        def one(path: str | Path) -> torch.Tensor | str:
            try:
                return self.load(path)
            except UnreadableImage as e:
                return str(e)
            except OSError as e:
                return f"cannot read: {e.strerror or e}"
        if len(paths) == 1:
            return [one(paths[0])]
        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(one, paths))

    def inputs(self, x: torch.Tensor, tta: bool = False) -> list[torch.Tensor]:
        """uint8 (B, 3, P, P) → normalised model inputs, one per view."""
        x = x.to(self.device, non_blocking=True)
        if not tta:
            return [self.augment(x, train=False)]
        return [self.augment.apply(x, p, clamp=False) for p in tta_params(x.shape[0])]

    @torch.inference_mode()
    def logits(self, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Model outputs (B, C) float32 for a uint8 batch; TTA averages probabilities, so
        with `tta` this returns log-probabilities (softmax) or logits of the mean sigmoid."""
        views = self.inputs(x, tta)
        outs = []
        for v in views:
            with self.precision.autocast():
                outs.append(self.model(v).float())
        if len(outs) == 1:
            return outs[0].cpu()
        if self.multi_label:
            p = torch.stack([o.sigmoid() for o in outs]).mean(0).clamp(1e-7, 1 - 1e-7)
            return torch.logit(p).cpu()
        return torch.stack([o.softmax(1) for o in outs]).mean(0).clamp_min(1e-12).log().cpu()

    def probs_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid per class (multi-label) or softmax over classes."""
        return logits.sigmoid() if self.multi_label else logits.softmax(1)

    # --- decisions ---------------------------------------------------------------------
    def decide(self, probs: torch.Tensor) -> list[list[str]]:
        """Labels per image after the "none of these" rule."""
        out = []
        for p in probs:
            if self.multi_label:
                hit = [self.classes[i] for i in torch.nonzero(p >= self.thresholds).flatten()]
                out.append(hit or [NONE_LABEL])
            else:
                i = int(p.argmax())
                low = self.min_confidence is not None and float(p[i]) < self.min_confidence
                out.append([NONE_LABEL] if low else [self.classes[i]])
        return out

    def batches(self, paths: Sequence[str | Path], bs: int = 32
                ) -> Iterator[tuple[list[str], torch.Tensor | None, list[str | None]]]:
        """(paths, uint8 batch of the readable ones or None, error per path) per chunk."""
        for s in range(0, len(paths), bs):
            chunk = [str(p) for p in paths[s:s + bs]]
            loaded = self._load_many(chunk)
            errors = [v if isinstance(v, str) else None for v in loaded]
            good = [v for v in loaded if not isinstance(v, str)]
            yield chunk, (torch.stack(good) if good else None), errors

    def none_score(self, p: torch.Tensor) -> tuple[float, float] | None:
        """(score, threshold) of the "none of these" rule for one image's probabilities:
        the top softmax probability against min_confidence, or (multi-label) the class that
        comes closest to passing its threshold, its probability against that threshold.
        None when the model always answers a class."""
        if self.multi_label:
            i = int((p - self.thresholds).argmax())
            return float(p[i]), float(self.thresholds[i])
        if self.min_confidence:
            return float(p.max()), float(self.min_confidence)
        return None

    def answer(self, path: str, p: torch.Tensor, top_k: int = 3) -> Prediction:
        """One image's Prediction from its probabilities (C,)."""
        k = max(1, min(top_k, len(self.classes)))
        vals, idx = p.topk(k)
        score = self.none_score(p)
        return Prediction(path, [(self.classes[int(i)], float(v))
                                 for v, i in zip(vals, idx, strict=True)],
                          self.decide(p[None])[0], p.tolist(), none_rule=self.none_rule,
                          none_score=score[0] if score else None,
                          none_threshold=score[1] if score else None)

    def predict(self, paths: Sequence[str | Path] | str | Path, top_k: int = 3,
                bs: int = 32, tta: bool = False) -> list[Prediction]:
        """Predictions for image files; unreadable files get `error`, never an exception."""
        if isinstance(paths, str | Path):
            paths = [paths]
        results: list[Prediction] = []
        for chunk, x, errors in self.batches(paths, bs):
            probs = self.probs_from_logits(self.logits(x, tta)) if x is not None else None
            j = 0
            for path, e in zip(chunk, errors, strict=True):
                if e is not None:
                    results.append(Prediction(path, error=e))
                    continue
                results.append(self.answer(path, probs[j], top_k))
                j += 1
        return results
