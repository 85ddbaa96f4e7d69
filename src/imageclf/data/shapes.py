"""A small labelled image set drawn on the fly: shapes in varied colours, sizes and poses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "star", "triangle")


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(math.cos(angle + k * math.pi / 2 + math.pi / 4),
                math.sin(angle + k * math.pi / 2 + math.pi / 4)) for k in range(4)]
    elif kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3))
               for k in range(3)]
    else:  # star: 5 points, inner radius 0.45
        pts = [((1.0 if k % 2 == 0 else 0.45) * math.cos(angle + k * math.pi / 5),
                (1.0 if k % 2 == 0 else 0.45) * math.sin(angle + k * math.pi / 5))
               for k in range(10)]
    return [(cx + r * x, cy + r * y) for x, y in pts]


def draw_shape(kind: str, rng: np.random.Generator, size: tuple[int, int] = (160, 128)
               ) -> Image.Image:
    """One image of `kind` on a random background with random colour, size and rotation."""
    w, h = size
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    im = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(0, 4))):  # clutter lines
        d.line([tuple(rng.uniform(0, w, 2)), tuple(rng.uniform(0, h, 2))],
               fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=2)
    fg = np.array(bg) + rng.choice([-1, 1], 3) * rng.integers(90, 160, 3)
    fg = tuple(int(v) for v in np.clip(fg, 0, 255))
    side = min(w, h)
    r = rng.uniform(0.22, 0.36) * side
    # centred enough that the square crops of presizing and augmentation keep the shape
    room = (side / 2 - r) * 0.6
    cx, cy = w / 2 + rng.uniform(-room, room), h / 2 + rng.uniform(-room, room)
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    else:
        d.polygon(_polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=fg)
    im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))
    noise = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(im) + noise, 0, 255).astype(np.uint8))


def _smooth_noise(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """(h, w, 3) float colour noise at a random coarseness: texture, not a shape."""
    cells = int(rng.integers(2, 24))
    coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC),
                      dtype=np.float64)


def draw_negative(rng: np.random.Generator, size: tuple[int, int] = (160, 128)
                  ) -> Image.Image:
    """One image of none of the shapes, of one of four kinds: a background with only its
    clutter lines, colour texture, a crowd of small blobs and strokes, or a blend of
    texture and crowd (what photographs look like to a shapes model: texture and parts)."""
    w, h = size
    kind = int(rng.integers(0, 4))
    if kind == 1:
        im = Image.fromarray(np.clip(_smooth_noise(rng, w, h), 0, 255).astype(np.uint8))
    else:
        bg = tuple(int(v) for v in rng.integers(0, 256, 3))
        im = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(im)
    n_lines = int(rng.integers(1, 5)) if kind == 0 else int(rng.integers(0, 3))
    for _ in range(n_lines):
        d.line([tuple(rng.uniform(0, w, 2)), tuple(rng.uniform(0, h, 2))],
               fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=2)
    if kind >= 2:
        for _ in range(int(rng.integers(8, 30))):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            rx, ry = rng.uniform(2, 0.12 * min(w, h), 2)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                d.ellipse([x - rx, y - ry, x + rx, y + ry], fill=fill)
            else:
                d.line([(x, y), (x + rng.uniform(-3, 3) * rx, y + rng.uniform(-3, 3) * ry)],
                       fill=fill, width=int(rng.integers(1, 5)))
    arr = np.asarray(im, dtype=np.float64)
    if kind == 3:
        a = rng.uniform(0.3, 0.7)
        arr = a * arr + (1 - a) * _smooth_noise(rng, w, h)
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))
    noise = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(im) + noise, 0, 255).astype(np.uint8))


def make_negatives(root: str | Path, n_train: int = 120, n_valid: int = 40, seed: int = 1
                   ) -> Path:
    """root/train/ and root/valid/ of images of none of the shapes (`draw_negative`), as
    `train --negatives root` reads them."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("valid", n_valid)):
        folder = root / split
        if n:
            folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            size = (int(rng.integers(96, 200)), int(rng.integers(96, 200)))
            draw_negative(rng, size).save(folder / f"none_{i:03d}.jpg",
                                          quality=int(rng.integers(70, 96)))
    return root


def make_shapes_dataset(root: str | Path, n_train: int = 60, n_valid: int = 20, seed: int = 0,
                        shapes: tuple[str, ...] = SHAPES) -> Path:
    """root/train/<shape>/ and root/valid/<shape>/ of real JPEG and PNG files."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("valid", n_valid)):
        for kind in shapes:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                size = (int(rng.integers(96, 200)), int(rng.integers(96, 200)))
                im = draw_shape(kind, rng, size)
                if i % 4 == 3:
                    im.save(folder / f"{kind}_{i:03d}.png")
                else:
                    im.save(folder / f"{kind}_{i:03d}.jpg", quality=int(rng.integers(70, 96)))
    return root
