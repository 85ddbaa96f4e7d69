"""Duplicate images: the same pixels after presize (a hash), and near duplicates (the photo
re-encoded, resized, slightly cropped or mirrored) found as nearest neighbours of a small
perceptual descriptor: the low frequencies of the image's grey levels (the DCT behind
pHash), compared by cosine similarity. Neighbours come from scikit-learn, so that 100k
images take seconds rather than an O(N²) loop."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

GRID = 32  # grey levels are averaged down to GRID x GRID before the DCT
LOW = 8  # the LOW x LOW lowest frequencies are kept, the DC term left out
DIM = LOW * LOW - 1
NEAR = 0.90  # cosine similarity from which two images are near duplicates (bench_audit.py)


@dataclass(frozen=True)
class Pair:
    """Two images that look like copies of one another (indices into the scanned list)."""

    a: int
    b: int
    similarity: float  # cosine similarity of the descriptors (1.0: the same pixels)
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
    """(B, DIM) float32, unit length: the low-frequency DCT of each image's grey levels,
    from a uint8 batch (B, 3, P, P)."""
    grey = x.float().mean(1, keepdim=True)  # (B, 1, P, P)
    small = F.adaptive_avg_pool2d(grey, GRID)[:, 0]  # (B, GRID, GRID): area averages
    coef = _DCT @ small @ _DCT.T  # (B, LOW, LOW): rows vertical, columns horizontal freq
    flat = coef.reshape(coef.shape[0], -1)[:, 1:]  # the DC term (brightness) left out
    return F.normalize(flat, dim=1).numpy().astype(np.float32)


# a left-right mirror flips the sign of the odd horizontal frequencies
_MIRROR = np.array([(-1.0) ** (j % LOW) for j in range(LOW * LOW)][1:], dtype=np.float32)


def mirrored(desc: np.ndarray) -> np.ndarray:
    """The descriptors of the images mirrored left-right (exact, no decode needed)."""
    return desc * _MIRROR


def find_duplicates(desc: np.ndarray, hashes: list[str], threshold: float = NEAR,
                    k: int = 4) -> list[Pair]:
    """Every pair of images that are the same pixels, or whose descriptors (or one's mirror
    image's) have a cosine similarity of at least `threshold` among each image's `k`
    nearest neighbours. Each pair once, a < b."""
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
    nn = NearestNeighbors(n_neighbors=min(k + 1, n), metric="euclidean").fit(desc)
    for flip, queries in ((False, desc), (True, mirrored(desc))):
        dist, idx = nn.kneighbors(queries)
        sim = 1.0 - dist.astype(np.float64) ** 2 / 2  # unit vectors: |a-b|² = 2 - 2 cos
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
    return sorted(found.values(), key=lambda p: (p.a, p.b))
