"""Prediction from a model/ folder: the validation decode, presize and centre resize, batched.

Imports no training code (no learner, optimiser or loaders): a deployed model needs only
this module, the model folder and its dependencies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imageclf.core.errors import ConfigError
from imageclf.core.hardware import decoding_pool, resolve_precision
from imageclf.data.augment import AugParams, BatchAugment, flip_matrix, zoom_matrix
from imageclf.data.images import UnreadableImage, load_centre_square
from imageclf.model.folder import load_model
from imageclf.openset.rule import NONE_LABEL, NoneRule

__all__ = ["NONE_LABEL", "Outputs", "Prediction", "Predictor", "to_probs"]


def to_probs(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Sigmoid per class (multi-label) or softmax over classes."""
    return logits.sigmoid() if multi_label else logits.softmax(1)


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


@dataclass
class Outputs:
    """A batch through the model: `logits` (what the probabilities come from; with TTA the
    log of the views' mean probability), `raw` (the views' mean raw logits, what max_logit
    and energy read) and pooled `features` (mean over views) when asked for."""

    logits: torch.Tensor
    raw: torch.Tensor
    features: torch.Tensor | None = None

    @classmethod
    def cat(cls, parts: Sequence[Outputs]) -> Outputs:
        feats = [p.features for p in parts]
        return cls(torch.cat([p.logits for p in parts]), torch.cat([p.raw for p in parts]),
                   torch.cat(feats) if all(f is not None for f in feats) else None)


class Predictor:
    """A trained model ready for new images: `predict(paths)` → list of Prediction.

    "None of these" is `self.rule` (none_rule.NoneRule.of_model): the open-set score and
    threshold `calibrate` stored, or an older model's `min_confidence`, or for multi-label
    models no class passing its threshold. `min_confidence` given here replaces the stored
    rule with msp at that threshold.
    """

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu",
                 precision: str = "auto", min_confidence: float | None = None,
                 threads: int | None = None, size: int | None = None) -> None:
        self.folder = Path(folder)
        model, meta = load_model(self.folder)
        self.meta = meta
        self.device = torch.device(device)
        # auto: bf16 where the CPU (AMX/AVX512-BF16) or GPU runs it natively, else fp32
        self.precision = resolve_precision(precision, self.device, training=False)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.classes: list[str] = list(meta.classes)
        # the size it predicts at: model.json's (its validation size), or the one asked for
        self.size, self.presize = size or meta.size, meta.presize
        if not 8 <= self.size <= self.presize:
            raise ConfigError(f"--size must be between 8 and the model's presize "
                              f"({self.presize}); got {self.size}")
        self.method = meta.resize_method
        self.multi_label = meta.multi_label
        self.augment = BatchAugment(self.size, mean=meta.mean, std=meta.std)
        self.rule = NoneRule.of_model(meta, self.folder, min_confidence)  # "none of these"
        self.threads = threads or min(4, os.cpu_count() or 1)

    # --- images → tensors ------------------------------------------------------------
    def load(self, path: str | Path | bytes) -> torch.Tensor:
        """(3, P, P) uint8: the validation decode + presize + centre square of a file (or of
        an image's bytes)."""
        return torch.from_numpy(load_centre_square(path, self.presize, self.method))

    def load_or_reason(self, path: str | Path) -> torch.Tensor | str:
        """`load`, or why the image cannot be read (never an exception for a bad file)."""
        try:
            return self.load(path)
        except UnreadableImage as e:
            return str(e)
        except OSError as e:
            return f"cannot read: {e.strerror or e}"

    def load_on_device(self, paths: Sequence[str]) -> list[torch.Tensor | str]:
        """`load_or_reason` of each path, the JPEG files decoded together on the model's
        device (nvJPEG on a GPU; torchvision's decoder on a CPU, where Pillow's draft mode
        is faster) and presized there with the CPU path's geometry and filter. Anything else,
        and any file the device refuses, goes through `load_or_reason`."""
        from imageclf.data.device_decode import (
            decode_jpegs,
            exif_upright,
            presize_tensor,
            read_jpeg,
        )
        from imageclf.data.images import square_crop

        found = [read_jpeg(p) for p in paths]
        jpegs = [(k, r) for k, r in enumerate(found) if r is not None]
        decoded = decode_jpegs([d for _, (d, _) in jpegs], self.device) if jpegs else []
        out: list[torch.Tensor | str | None] = [None] * len(paths)
        for (k, (_, orientation)), x in zip(jpegs, decoded, strict=True):
            if x is not None:
                pre = presize_tensor(exif_upright(x, orientation), self.presize, self.method)
                out[k] = torch.from_numpy(np.ascontiguousarray(square_crop(pre)))
        return [self.load_or_reason(p) if o is None else o for p, o in zip(paths, out,
                                                                            strict=True)]

    def _load_many(self, paths: Sequence[str | Path]) -> list[torch.Tensor | str]:
        if len(paths) == 1:
            return [self.load_or_reason(paths[0])]
        # single-threaded torch in the decoders: the model's thread keeps the cores
        with decoding_pool(self.threads) as pool:
            return list(pool.map(self.load_or_reason, paths))

    def inputs(self, x: torch.Tensor, tta: bool = False) -> list[torch.Tensor]:
        """uint8 (B, 3, P, P) → normalised model inputs, one per view."""
        x = x.to(self.device, non_blocking=True)
        if not tta:
            return [self.augment(x, train=False)]
        return [self.augment.apply(x, p, clamp=False) for p in tta_params(x.shape[0])]

    @torch.inference_mode()
    def outputs(self, x: torch.Tensor, tta: bool = False, features: bool = False) -> Outputs:
        """One pass of a uint8 batch through the model (every TTA view), on the CPU."""
        outs, feats = [], []
        for v in self.inputs(x, tta):
            with self.precision.autocast():
                if features:
                    out, f = self.model.logits_and_pooled(v)
                    feats.append(f.float())
                else:
                    out = self.model(v)
            outs.append(out.float())
        raw = torch.stack(outs).mean(0)
        feat = torch.stack(feats).mean(0).cpu() if features else None
        if len(outs) == 1:
            logits = raw
        elif self.multi_label:  # TTA averages probabilities
            p = torch.stack([o.sigmoid() for o in outs]).mean(0).clamp(1e-7, 1 - 1e-7)
            logits = torch.logit(p)
        else:
            logits = torch.stack([o.softmax(1) for o in outs]).mean(0).clamp_min(1e-12).log()
        return Outputs(logits.cpu(), raw.cpu(), feat)

    def judge(self, x: torch.Tensor, tta: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities (B, C), the none rule's score per image or None): the one path
        from a batch to what `answer` needs, for predict, evaluate and serve."""
        return self.verdict(self.outputs(x, tta, features=self.rule.needs_features))

    def verdict(self, out: Outputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities, the none rule's scores) of a pass's outputs (`judge`'s second
        half, for a pass that also wants the features)."""
        return to_probs(out.logits, self.multi_label), self.rule.scores(out)

    def batches(self, paths: Sequence[str | Path], bs: int = 32
                ) -> Iterator[tuple[list[str], torch.Tensor | None, list[str | None]]]:
        """(paths, uint8 batch of the readable ones or None, error per path) per chunk."""
        for s in range(0, len(paths), bs):
            chunk = [str(p) for p in paths[s:s + bs]]
            loaded = self._load_many(chunk)
            errors = [v if isinstance(v, str) else None for v in loaded]
            good = [v for v in loaded if not isinstance(v, str)]
            yield chunk, (torch.stack(good) if good else None), errors

    def answer(self, path: str, p: torch.Tensor, score: float | None = None,
               top_k: int = 3) -> Prediction:
        """One image's Prediction from its probabilities (C,) and its open-set score."""
        k = max(1, min(top_k, len(self.classes)))
        vals, idx = p.topk(k)
        scores = torch.tensor([score]) if score is not None else None
        shown = self.rule.shown(p, score)
        return Prediction(path, [(self.classes[int(i)], float(v))
                                 for v, i in zip(vals, idx, strict=True)],
                          self.rule.decide(p[None], scores, self.classes)[0], p.tolist(),
                          none_rule=self.rule.name,
                          none_score=shown[0] if shown else None,
                          none_threshold=shown[1] if shown else None)

    def predict(self, paths: Sequence[str | Path] | str | Path, top_k: int = 3,
                bs: int = 32, tta: bool = False) -> list[Prediction]:
        """Predictions for image files; unreadable files get `error`, never an exception."""
        if isinstance(paths, str | Path):
            paths = [paths]
        results: list[Prediction] = []
        for chunk, x, errors in self.batches(paths, bs):
            probs, scores = self.judge(x, tta) if x is not None else (None, None)
            j = 0
            for path, e in zip(chunk, errors, strict=True):
                if e is not None:
                    results.append(Prediction(path, error=e))
                    continue
                results.append(self.answer(path, probs[j],
                                           None if scores is None else float(scores[j]), top_k))
                j += 1
        return results
