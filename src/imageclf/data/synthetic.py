"""Synthetic negatives: images of no class, made on the fly by procedures (`train --negatives
synthetic`), and the families kept back from training that `calibrate` and the bench measure
far-OOD on.

Training families, drawn at the presize as (3, P, P) uint8, beside the known images of each
training batch and through the same one-grid_sample augmentation:

- `fractal`: an iterated function system (2-4 random contractive affine maps) run as a
  chaos game, its point density in two colours;
- `noise`: noise at several scales: spectral 1/f^β noise (β from 0.5 to 3: clouds to grain)
  or a sum of 1-3 octaves of blocky value noise, in colour or grey;
- `fields`: flat colours, linear and radial gradients, with a little noise;
- `shuffle`: one of the batch's own known images cut into a 3×3 to 8×8 grid whose tiles are
  permuted (and each turned a multiple of 90°): its colours and textures without its
  object.

Every image is a pure function of (seed, epoch, its global slot in the epoch), so a resumed
epoch replays it and every process of a job draws its own share of one global sequence.

Held-out families (never trained on): `shapes` (drawn shapes, data/shapes.py),
`textures` (stripes, waves, weaves and checkerboards), `lines` (line drawings: dark
strokes, curves and outlines on a light ground). `write_held_out` writes them as image
files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from imageclf.core.errors import ConfigError

SYNTHETIC = "synthetic"  # the --negatives value that turns them on
FAMILIES = ("fractal", "noise", "fields", "shuffle")
HELD_OUT = ("shapes", "textures", "lines")


def parse(source: str) -> tuple[str, ...] | None:
    """The families a --negatives value asks for: `synthetic` (all of FAMILIES) or
    `synthetic:fractal,noise`; None when the value names files, not families."""
    if source != SYNTHETIC and not source.startswith(SYNTHETIC + ":"):
        return None
    if source == SYNTHETIC:
        return FAMILIES
    names = tuple(n.strip() for n in source.split(":", 1)[1].split(",") if n.strip())
    bad = [n for n in names if n not in FAMILIES]
    if bad or not names:
        raise ConfigError(f"--negatives {source}: unknown synthetic families {bad or '(none)'}"
                          f"; choose from {', '.join(FAMILIES)}")
    return names


def image_generator(seed: int, epoch: int, slot: int) -> torch.Generator:
    """The generator of one synthetic image: (seed, epoch, its global slot)."""
    return torch.Generator().manual_seed(
        (((seed * 1_000_003 + epoch) * 1_000_033 + slot) * 13 + 11) % (2**63))


def _u(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=g)


def _colour(g: torch.Generator) -> torch.Tensor:
    return _u(g, 3, 1, 1)


def fractal(p: int, g: torch.Generator) -> torch.Tensor:
    """(3, p, p) float in [0, 1]: the point density of a random IFS's chaos game."""
    n_maps = int(torch.randint(2, 5, (1,), generator=g))
    a = _u(g, n_maps, 2, 2) * 2 - 1
    norm = torch.linalg.matrix_norm(a, ord=2).clamp_min(1e-6)
    a = a * (_u(g, n_maps) * 0.5 + 0.4).div(norm).view(-1, 1, 1)  # contractive: 0.4-0.9
    b = _u(g, n_maps, 2) * 2 - 1
    walkers, steps, burn = 512, 48, 8
    x = _u(g, walkers, 2) * 2 - 1
    pts = []
    for s in range(steps):
        k = torch.randint(n_maps, (walkers,), generator=g)
        x = torch.einsum("nij,nj->ni", a[k], x) + b[k]
        if s >= burn:
            pts.append(x)
    xy = torch.cat(pts)
    lo, hi = xy.min(0).values, xy.max(0).values
    xy = (xy - lo) / (hi - lo).clamp_min(1e-6) * 0.9 + 0.05
    ij = (xy * (p - 1)).long().clamp(0, p - 1)
    density = torch.bincount(ij[:, 1] * p + ij[:, 0], minlength=p * p).float().view(1, 1, p, p)
    # strokes 1 to 4 pixels wide at 64 px, so the figure survives the resize to --size
    width = 2 * int(float(_u(g, 1)) * 2 * max(1, p // 64)) + 1
    if width > 1:
        density = F.max_pool2d(density, width, 1, width // 2)
    d = density.log1p()
    d = (d / d.max().clamp_min(1e-6)).view(1, p, p)
    if _u(g, 1) < 0.5:  # ink on paper: a dark figure on a light ground
        c0, c1 = _colour(g) * 0.2 + 0.8, _colour(g) * 0.3
    else:
        c0, c1 = _colour(g), _colour(g)
    return c0 + (c1 - c0) * d.clamp(0, 1) ** 0.5


def noise(p: int, g: torch.Generator) -> torch.Tensor:
    """(3, p, p) float in [0, 1]: spectral 1/f^β noise or octaves of value noise."""
    channels = 3 if _u(g, 1) < 0.6 else 1
    if _u(g, 1) < 0.5:
        beta = float(_u(g, 1)) * 2.5 + 0.5
        fy = torch.fft.fftfreq(p).view(-1, 1)
        fx = torch.fft.rfftfreq(p).view(1, -1)
        f = (fy ** 2 + fx ** 2).sqrt().clamp_min(1.0 / p)
        spec = torch.complex(torch.randn((channels, p, p // 2 + 1), generator=g),
                             torch.randn((channels, p, p // 2 + 1), generator=g)) / f ** beta
        x = torch.fft.irfft2(spec, s=(p, p))
    else:
        x = torch.zeros(channels, p, p)
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            cells = int(2 ** (float(_u(g, 1)) * math.log2(p / 2) + 1))
            mode = "nearest" if _u(g, 1) < 0.5 else "bilinear"
            o = F.interpolate(_u(g, 1, channels, cells, cells), size=(p, p), mode=mode)
            x += float(_u(g, 1)) * o[0]
    x = x - x.mean((1, 2), keepdim=True)
    x = x / x.std((1, 2), keepdim=True).clamp_min(1e-6)
    mean, spread = _colour(g) * 0.6 + 0.2, _u(g, 1) * 0.25 + 0.05
    return (mean + spread * x).expand(3, p, p)


def fields(p: int, g: torch.Generator) -> torch.Tensor:
    """(3, p, p) float in [0, 1]: a flat colour, a linear or a radial gradient."""
    c0, c1 = _colour(g), _colour(g)
    kind = int(torch.randint(3, (1,), generator=g))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, p), torch.linspace(-1, 1, p), indexing="ij")
    if kind == 0:
        t = torch.zeros(p, p)
    elif kind == 1:
        angle = float(_u(g, 1)) * 2 * math.pi
        t = (xx * math.cos(angle) + yy * math.sin(angle) + 1.5) / 3
    else:
        cx, cy = (_u(g, 2) * 1.6 - 0.8).tolist()
        t = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt() / 2.5
    img = c0 + (c1 - c0) * t.clamp(0, 1)
    return img + torch.randn((3, p, p), generator=g) * float(_u(g, 1)) * 0.03


def shuffle(image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(3, p, p) uint8 → the same image's tiles (a 3×3 to 8×8 grid) permuted, each turned a
    multiple of 90°; a border that the grid does not divide keeps its pixels."""
    p = image.shape[-1]
    n = int(torch.randint(3, 9, (1,), generator=g))
    t = p // n
    out = image.clone()
    tiles = image[:, :n * t, :n * t].reshape(3, n, t, n, t).permute(1, 3, 0, 2, 4)
    tiles = tiles.reshape(n * n, 3, t, t)[torch.randperm(n * n, generator=g)]
    turns = torch.randint(4, (n * n,), generator=g).tolist()
    tiles = torch.stack([torch.rot90(tile, k, (1, 2)) for tile, k in zip(tiles, turns,
                                                                         strict=True)])
    out[:, :n * t, :n * t] = tiles.reshape(n, n, 3, t, t).permute(2, 0, 3, 1, 4).reshape(
        3, n * t, n * t)
    return out


DRAW = {"fractal": fractal, "noise": noise, "fields": fields}


def draw(family: str, p: int, g: torch.Generator, known: torch.Tensor | None = None
         ) -> torch.Tensor:
    """One (3, p, p) uint8 image of `family`; `shuffle` cuts up `known` (3, p, p), and
    draws `noise` without one."""
    if family == "shuffle":
        if known is not None:
            return shuffle(known, g)
        family = "noise"
    return (DRAW[family](p, g).clamp(0, 1) * 255).round().to(torch.uint8)


def slot_family(families: Sequence[str], slot: int) -> str:
    """Which family a global slot draws: the families in turn."""
    return families[slot % len(families)]


def draw_batch(families: Sequence[str], slots: Sequence[int], p: int, seed: int, epoch: int,
               known: torch.Tensor | None, out: np.ndarray) -> None:
    """Fill out (k, 3, p, p) uint8 with the images of global `slots` of the epoch. The j-th
    cuts up known image j (mod the batch's known images): with N processes, rank r's j-th
    slot is the job's slot r + N·j, whose image is the job's known image r + N·j (mod its
    batch), rank r's own j-th, so every rank draws what one process would."""
    for j, slot in enumerate(slots):
        g = image_generator(seed, epoch, slot)
        source = known[j % len(known)] if known is not None and len(known) else None
        out[j] = draw(slot_family(families, slot), p, g, source).numpy()


# --- held-out families: never trained on; `calibrate` and the bench measure far-OOD there ---
def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A generated texture: a sum of oriented sinusoids (stripes, waves, weaves) or a
    checkerboard, in two random colours, with a little noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if rng.random() < 0.25:
        cell = rng.integers(6, 30)
        t = ((yy // cell + xx // cell) % 2).astype(np.float64)
    else:
        t = np.zeros((h, w))
        for _ in range(int(rng.integers(1, 4))):
            a, f = rng.uniform(0, np.pi), rng.uniform(0.03, 0.4)
            t += np.sin(f * (xx * np.cos(a) + yy * np.sin(a)) + rng.uniform(0, 6.3))
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    img = c0 + t[..., None] * (c1 - c0) + rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def line_drawing(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Dark strokes on a light ground: polylines, arcs, outlined circles and boxes."""
    paper = tuple(int(v) for v in rng.integers(215, 256, 3))
    im = Image.new("RGB", (w, h), paper)
    d = ImageDraw.Draw(im)
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    for _ in range(int(rng.integers(3, 12))):
        width = int(rng.integers(1, 4))
        kind = int(rng.integers(0, 3))
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.05, 0.35) * min(w, h)
        box = [x0 - r, y0 - r, x0 + r, y0 + r]
        if kind == 0:
            pts = [(x0, y0)] + [tuple(rng.uniform([0, 0], [w, h])) for _ in
                                range(int(rng.integers(1, 6)))]
            d.line(pts, fill=ink, width=width, joint="curve")
        elif kind == 1:
            a = rng.uniform(0, 360)
            d.arc(box, a, a + rng.uniform(60, 330), fill=ink, width=width)
        elif rng.random() < 0.5:
            d.ellipse(box, outline=ink, width=width)
        else:
            d.rectangle(box, outline=ink, width=width)
    return im


def held_out_image(family: str, rng: np.random.Generator) -> Image.Image:
    """One image of a held-out family, of a random size."""
    from imageclf.data.shapes import SHAPES, draw_shape

    h, w = (int(v) for v in rng.integers(120, 240, 2))
    if family == "shapes":
        return draw_shape(SHAPES[int(rng.integers(len(SHAPES)))], rng, (w, h))
    if family == "textures":
        return Image.fromarray(texture(rng, h, w))
    if family == "lines":
        return line_drawing(rng, h, w)
    raise ValueError(family)


def write_held_out(folder: str | Path, n: int, seed: int,
                   families: Sequence[str] = HELD_OUT, suffix: str = "png"
                   ) -> dict[str, list[Path]]:
    """`n` images of each held-out family as PNG (or JPEG q95: `suffix="jpg"`, 20× faster
    to write) files in folder/<family>/, the same files for the same seed."""
    out = {}
    for k, family in enumerate(families):
        rng = np.random.default_rng([seed, k])
        d = Path(folder) / family
        d.mkdir(parents=True, exist_ok=True)
        out[family] = []
        for i in range(n):
            path = d / f"{family}_{i:04d}.{suffix}"
            held_out_image(family, rng).save(path, quality=95)
            out[family].append(path)
    return out
