"""Helpers the tests share: small generated images, the CLI run in-process, a run's metrics.

No test reads the network or anything outside its tmp folder."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# The net the tests train unless they test one: resnet10t's layout at half width (1.2 M
# parameters). resnet18's 11 M made each checkpoint with its optimiser state 134 MB, and the
# tests that checkpoint every step or train in several processes spent their time on that.
ARCH = "resnet10t_narrow"

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
           "yellow": (220, 210, 30), "cyan": (30, 200, 210), "magenta": (210, 30, 200)}


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (48, 40),
          seed: int = 0) -> Image.Image:
    """A colour image with a little noise, so JPEG has something to encode."""
    rng = np.random.default_rng(seed)
    a = np.empty((size[1], size[0], 3), np.int16)
    a[:] = colour
    a += rng.integers(-12, 12, a.shape, dtype=np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def make_folder_dataset(root: Path, n_train: int = 6, n_valid: int = 3,
                        classes: tuple[str, ...] = ("blue", "green", "red"),
                        size: tuple[int, int] = (48, 40)) -> Path:
    """root/train/<cls>/*.jpg and root/valid/<cls>/*.jpg of noisy solid colours."""
    for split, n in (("train", n_train), ("valid", n_valid)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                solid(COLOURS[c], size, seed=i).save(d / f"{c}_{i}.jpg", quality=90)
    return root


def add_bad_files(folder: Path) -> dict[str, str]:
    """Every unreadable kind, in `folder`; returns {file name: expected reason fragment}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    good = folder / "_whole.jpg"
    solid((200, 10, 10), (64, 64)).save(good, quality=95)
    data = good.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    good.unlink()
    (folder / "text.jpg").write_text("this is not an image\n" * 10)
    (folder / "garbled.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (folder / "dir.jpg").mkdir()
    os.symlink(folder / "nowhere.jpg", folder / "dangling.jpg")
    Image.new("1", (9500, 9500)).save(folder / "bomb.png")  # 90 MP, a few KB on disk
    return {"empty.jpg": "empty", "truncated.jpg": "truncated", "text.jpg": "not an image",
            "garbled.png": "", "dir.jpg": "directory", "dangling.jpg": "dangling",
            "bomb.png": "decompression bomb"}


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """`imageclf ARGS` through the console script's own main(), in this process: the same
    parsing, error handling and exit codes, without a new interpreter importing torch each
    time. (The entry point as a separate process has its own tests.)"""
    from imageclf import cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    argv, sys.argv = sys.argv, ["imageclf", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return CliResult(code, out.getvalue(), err.getvalue())


def final_metrics(run: Path) -> dict:
    """A finished run's metrics and history, without the timings."""
    m = json.loads((run / "metrics.json").read_text())
    return {k: m[k] for k in ("valid_loss", "valid_accuracy", "train_loss", "epochs")} | {
        "rows": [{k: v for k, v in r.items() if k not in ("seconds", "img_per_s")}
                 for r in m["history"]]}


def find(path: str | Path, seed: int = 0, evaluate: bool = False, **source: object):
    """The Items of a data set: its DataSource (path and `source` fields) resolved."""
    from imageclf.core.config import DataSource
    from imageclf.data.sources import resolve

    return resolve(DataSource(path=str(path), **source), seed, evaluate)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str | None:
    """Debian's chromium, for the browser tests (.ci/run installs it), or None."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")
