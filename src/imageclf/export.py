"""The model/ folder: model.safetensors + model.json. Data, never pickle."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import PIL
import timm
import torch
from safetensors.torch import load_file, save_file

from imageclf.config import ConfigError

FORMAT_VERSION = 1


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model(model: torch.nn.Module, folder: str | Path, meta: dict) -> Path:
    """Write folder/model.safetensors and folder/model.json (arch, classes, size, ...)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(folder / "model.safetensors", lambda p: save_file(state, p))
    info = {"format_version": FORMAT_VERSION, "weights": "model.safetensors",
            "versions": {"torch": torch.__version__, "timm": timm.__version__,
                         "pillow": PIL.__version__}} | meta
    text = json.dumps(info, indent=2) + "\n"
    _atomic_write(folder / "model.json", lambda p: Path(p).write_text(text))
    return folder


REQUIRED = ("arch", "classes", "size", "presize", "resize_method", "mean", "std", "loss",
            "head")


def read_meta(folder: str | Path) -> dict:
    """model.json, checked: the keys a model needs are there."""
    path = Path(folder) / "model.json"
    try:
        meta = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror}); is {folder} a model/ folder?"
                          ) from e
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ConfigError(f"{path}: missing keys {missing}")
    return meta


def load_model(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a model/ folder (no pickle) and its metadata."""
    from imageclf.models import create_model

    folder = Path(folder)
    meta = read_meta(folder)
    model = create_model(meta["arch"], len(meta["classes"]), "none", meta["head"])
    weights = folder / "model.safetensors"
    try:
        state = load_file(weights)
    except Exception as e:  # noqa: BLE001 - any damage to the file reads the same to a user
        raise ConfigError(f"{weights}: not a readable safetensors file ({e})") from e
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"{weights} does not match {meta['arch']} with "
                          f"{len(meta['classes'])} classes: {str(e)[:300]}") from e
    model.eval()
    return model, meta
