"""`pack --quality auto`: the JPEG setting of a store chosen by a quality target. The
smallest setting (quality, chroma subsampling) whose median PSNR on a sample of the data,
against the presized images themselves, reaches `--psnr`: the size of a store depends on
the data (high-detail photos take twice the bytes of Imagenette at one quality), its
quality should not."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imageclf.core.commands import PackSettings
from imageclf.data.images import UnreadableImage, load_presized
from imageclf.data.refs import ImageRef
from imageclf.data.store import decode_hwc, encode_jpeg

QUALITIES = (50, 60, 70, 75, 80, 85, 90, 93, 95, 97)
SUBSAMPLINGS = (2, 0)  # 4:2:0, 4:4:4 (PIL's codes)
SAMPLE = 128  # images measured, spread evenly over the (shuffled) data set


@dataclass(frozen=True)
class JpegChoice:
    """The setting chosen, and what it measured on the sample."""

    quality: int
    subsampling: int
    psnr_median: float
    psnr_p10: float
    bytes_mean: float
    reached: bool  # the target was met (else: the best PSNR of every setting tried)
    sample: int = 0  # images measured

    def record(self, target: float) -> dict[str, float]:
        """What the store's manifest keeps of it."""
        return {"target": target, "median": round(self.psnr_median, 2),
                "p10": round(self.psnr_p10, 2), "sample": self.sample}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of two uint8 images of one shape (inf: identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def _sample(paths: Sequence[ImageRef], s: PackSettings, n: int) -> list[np.ndarray]:
    """Up to `n` readable images, presized as the store keeps them: (H, W, 3) uint8."""
    step = max(1, len(paths) // n)
    out = []
    for p in (paths[i] for i in range(0, len(paths), step)[:n]):
        try:
            pre = load_presized(p, s.presize, s.method)
        except UnreadableImage:
            continue
        out.append(np.ascontiguousarray(pre.hwc()))
    return out


def choose(paths: Sequence[ImageRef], s: PackSettings, n: int = SAMPLE) -> JpegChoice:
    """The setting with the fewest bytes whose median PSNR reaches `s.psnr` (none does: the
    setting with the best median)."""
    images = _sample(paths, s, n)
    if not images:  # nothing readable to measure: pack refuses such data itself
        return JpegChoice(90, 0, float("nan"), float("nan"), float("nan"), False)
    tried = []
    for sub in SUBSAMPLINGS:
        for q in QUALITIES:
            sizes, scores = [], []
            for hwc in images:
                data = encode_jpeg(hwc, q, sub)
                sizes.append(len(data))
                scores.append(psnr(hwc, decode_hwc(data)))
            med = float(np.median(scores))
            tried.append(JpegChoice(q, sub, med, float(np.percentile(scores, 10)),
                                    float(np.mean(sizes)), med >= s.psnr, len(images)))
    good = [c for c in tried if c.reached]
    if good:
        return min(good, key=lambda c: c.bytes_mean)
    return max(tried, key=lambda c: (c.psnr_median, -c.bytes_mean))


def resolve(paths: Sequence[ImageRef], s: PackSettings) -> tuple[PackSettings, JpegChoice | None]:
    """The settings with `--quality auto` replaced by the chosen setting (as given when
    the quality is a number), and the choice."""
    if s.quality != "auto":
        return s, None
    c = choose(paths, s)
    if not c.sample:  # no readable image to measure: pack's default, nothing to report
        return dataclasses.replace(s, quality=90, subsampling=0), None
    return dataclasses.replace(s, quality=c.quality, subsampling=c.subsampling), c
