"""Duplicate images: the same pixels after presize (a hash), and near duplicates (the photo
re-encoded, resized, slightly cropped or mirrored) found as nearest neighbours of a small
perceptual descriptor: the low frequencies of each colour channel (the DCT behind pHash),
whitened by the data set's own covariance and compared by cosine similarity. Neighbours
come from scikit-learn, so that 100k images take seconds rather than an O(N²) loop. The same
descriptor says how unlike the rest of the set an image is (strays)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

GRID = 32  # colours are averaged down to GRID x GRID before the DCT
LOW = 8  # the LOW x LOW lowest frequencies of each colour channel are kept
DIM = 3 * LOW * LOW
# two images are near duplicates when the cosine similarity of their whitened descriptors is
# at least NEAR and MARGIN above the similarity of either's TYPICAL-th nearest image: on
# Imagenette with 200 planted copies, 195 found at 14 other pairs (analysed for
# bench_audit.py; NEAR 0.80 alone: 189 at 11, 0.75 alone: 196 at 26)
NEAR = 0.75
MARGIN = 0.25
TYPICAL = 5
WHITEN_EPS = 1e-3  # eigenvalues below this share of the largest are lifted to it


@dataclass(frozen=True)
class Pair:
    """Two images that look like copies of one another (indices into the scanned list)."""

    a: int
    b: int
    similarity: float  # cosine similarity of the whitened descriptors (1.0: same pixels)
    exact: bool  # the same pixels after presize
    mirrored: bool  # the closest match is the left-right mirror image


def pixel_hashes(x: torch.Tensor) -> list[str]:
    """One hash per image of a uint8 batch (B, 3, P, P): equal pixels, equal hash."""
    a = x.contiguous().cpu().numpy()
    return [hashlib.blake2b(a[i].tobytes(), digest_size=16).hexdigest()
            for i in range(a.shape[0])]


def _dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix (n, n)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(torch.pi * (2 * i + 1) * k / (2 * n)) * (2 / n) ** 0.5
    m[0] /= 2 ** 0.5
    return m.float()


_DCT = _dct_matrix(GRID)[:LOW]  # (LOW, GRID): only the rows of the frequencies kept


def descriptors(x: torch.Tensor) -> np.ndarray:
    """(B, DIM) float32: the LOW x LOW lowest DCT frequencies of each colour channel of a
    uint8 batch (B, 3, P, P), the DC terms (mean colours) included."""
    small = F.adaptive_avg_pool2d(x.float(), GRID)  # (B, 3, GRID, GRID): area averages
    coef = _DCT @ small @ _DCT.T  # (B, 3, LOW, LOW): rows vertical, columns horizontal
    return coef.reshape(coef.shape[0], -1).numpy().astype(np.float32)


# a left-right mirror flips the sign of the odd horizontal frequencies
_MIRROR = np.tile(np.array([(-1.0) ** (j % LOW) for j in range(LOW * LOW)],
                           dtype=np.float32), 3)
_AC = np.tile(np.arange(LOW * LOW) != 0, 3)  # every term but the channels' DC


def mirrored(desc: np.ndarray) -> np.ndarray:
    """The descriptors of the images mirrored left-right (exact, no decode needed)."""
    return desc * _MIRROR


def whitened(desc: np.ndarray, eps: float = WHITEN_EPS) -> np.ndarray:
    """Unit-length near-duplicate descriptors: the AC terms, ZCA-whitened by the covariance
    of the set itself and of its mirror images. Whitening weighs down what most photos
    share (sky above, ground below), so that only a copy stays close; fitted on the mirror
    images too, it commutes with `mirrored`. The covariance is Ledoit-Wolf's (shrunk toward
    a multiple of the identity as far as the set is small), its eigenvalues lifted by `eps`
    of the largest."""
    from sklearn.covariance import LedoitWolf

    a = desc[:, _AC].astype(np.float64)
    both = np.concatenate([a, a * _MIRROR[_AC]])
    cov = LedoitWolf().fit(both)
    w, v = np.linalg.eigh(cov.covariance_)
    w = np.maximum(w, 0)
    out = (a - cov.location_) @ (v @ np.diag(1 / np.sqrt(w + eps * w.max() + 1e-12)) @ v.T)
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
            ).astype(np.float32)


def unlike_the_rest(desc: np.ndarray) -> np.ndarray:
    """(N,) how unlike the set an image's colours and layout are: the Mahalanobis distance
    (squared) of its standardised descriptor from the set's mean, under a Ledoit-Wolf
    covariance (on Imagenette, 24 of 50 drawn images of no class were among the 100
    highest; the features of a model trained for 2 epochs found none: bench_audit.py)."""
    from sklearn.covariance import LedoitWolf

    d = desc.astype(np.float64)
    z = (d - d.mean(0)) / (d.std(0) + 1e-9)
    return LedoitWolf().fit(z).mahalanobis(z)


def find_duplicates(desc: np.ndarray, hashes: list[str], threshold: float = NEAR,
                    margin: float = MARGIN, k: int = TYPICAL) -> list[Pair]:
    """Every pair of images that are the same pixels, or whose whitened descriptors (or one's
    mirror image's) have a cosine similarity of at least `threshold` and stand out by
    `margin` from what is usual near both images: the similarity of each one's `k`-th
    nearest image. Each pair once, a < b."""
    from sklearn.neighbors import NearestNeighbors

    found: dict[tuple[int, int], Pair] = {}
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        j = first.setdefault(h, i)
        if j != i:
            found[(j, i)] = Pair(j, i, 1.0, True, False)
    n = len(desc)
    if n < 2:
        return list(found.values())
    w = whitened(desc)
    nn = NearestNeighbors(n_neighbors=min(k + 1, n), metric="euclidean").fit(w)
    usual = np.full(n, -1.0)
    for flip, queries in ((False, w), (True, w * _MIRROR[_AC])):
        dist, idx = nn.kneighbors(queries)
        sim = 1.0 - dist.astype(np.float64) ** 2 / 2  # unit vectors: |a-b|² = 2 - 2 cos
        if not flip and n > k:
            usual = sim[:, -1]  # the k-th nearest other image (the first is itself)
        rows, cols = np.nonzero(sim >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            j = int(idx[r, c])
            if j == r:
                continue
            key = (min(r, j), max(r, j))
            s = float(sim[r, c])
            old = found.get(key)
            if old is None or (not old.exact and s > old.similarity):
                found[key] = Pair(key[0], key[1], min(s, 1.0), False, flip)
    return sorted((p for p in found.values()
                   if p.exact or p.similarity - max(usual[p.a], usual[p.b]) >= margin),
                  key=lambda p: (p.a, p.b))
