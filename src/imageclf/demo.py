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
