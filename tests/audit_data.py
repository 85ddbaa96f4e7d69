"""A small labelled data set with planted faults, for the audit's and the review's tests:
colour classes whose images each carry their own smooth pattern (so that no two differ only
by noise), three red images filed as blue, a validation image copied into train (resized,
re-encoded, mirrored), an exact copy within train, and a checkerboard in a class folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
           "yellow": (220, 210, 30)}
FLIPPED = {f"train/blue/flip_{i}.jpg": "red" for i in range(3)}
LEAK = ("train/green/copy_of_valid.jpg", "valid/green/green_0.jpg")
COPY = ("train/yellow/again.png", "train/yellow/yellow_1.jpg")
STRAY = "train/red/stray.png"


def picture(colour: str, seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.normal(0, 40, (6, 6)).astype(np.float32)
    pattern = np.array(Image.fromarray(small).resize((size, size), Image.BICUBIC))[..., None]
    a = np.array(COLOURS[colour], np.float32) + pattern + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def make_audit_dataset(root: Path, n_train: int = 20, n_valid: int = 6) -> Path:
    seed = 1000
    for split, n in (("train", n_train), ("valid", n_valid)):
        for c in COLOURS:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed += 1
                picture(c, seed).save(d / f"{c}_{i}.jpg", quality=90)
    for i, key in enumerate(FLIPPED):
        picture("red", 50_000 + i).save(root / key, quality=90)
    with Image.open(root / LEAK[1]) as v:
        v.resize((40, 40)).transpose(Image.FLIP_LEFT_RIGHT).save(root / LEAK[0], quality=60)
    with Image.open(root / COPY[1]) as v:
        v.save(root / COPY[0])
    a = (np.indices((64, 64)).sum(0) // 8 % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([a] * 3, -1)).save(root / STRAY)
    return root


def random_body(folder: Path) -> Path:
    """A model/ folder of resnet18 with seeded random weights over the colour classes: its
    pooled features still tell the colours apart, and it needs no training."""
    import torch

    from imageclf.core.modelmeta import ModelMeta
    from imageclf.model.classifier import create_model
    from imageclf.model.export import save_model

    torch.manual_seed(0)
    return save_model(create_model("resnet18", 4, "none", "timm"), folder, ModelMeta(
        arch="resnet18", head="timm", classes=tuple(sorted(COLOURS)), size=32, presize=48,
        resize_method="crop", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        loss="cross_entropy"))
