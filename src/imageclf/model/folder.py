"""Reading a model folder: model.json, its weights (under imageclf's key names or timm's), the
model rebuilt from them. No pickle, and no training code."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from imageclf.core.errors import DamagedFileError
from imageclf.core.modelmeta import ModelMeta


def weights_path(folder: Path, meta: ModelMeta) -> Path:
    """The weights file named in model.json; it must be a .safetensors file inside the folder."""
    root = folder.resolve()
    target = (folder / meta.weights).resolve()
    if not target.is_relative_to(root) or target.suffix != ".safetensors":
        raise DamagedFileError(f"{folder / 'model.json'}: field 'weights': expected a "
                               f".safetensors file inside {folder}, got {meta.weights!r}")
    return target


def load_model(folder: str | Path) -> tuple[torch.nn.Module, ModelMeta]:
    """Rebuild the model of a model/ folder (no pickle) and its metadata."""
    from imageclf.model.classifier import create_model

    folder = Path(folder)
    meta = ModelMeta.read(folder)
    model = create_model(meta.arch, meta.n_classes, "none", meta.head)
    weights = weights_path(folder, meta)
    try:
        state = load_file(weights)
    except Exception as e:  # noqa: BLE001 - any damage to the file reads the same to a user
        raise DamagedFileError(f"{weights}: not a readable safetensors file ({e})") from e
    if is_timm_layout(state):  # a folder `export --timm` wrote: timm's own key names
        state = from_timm_state(state, folder)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise DamagedFileError(f"{weights} does not match {meta.arch} with {meta.n_classes} "
                               f"classes: {str(e)[:300]}") from e
    model.eval()
    return model, meta


def from_timm_state(state: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    """The inverse of `timm_state`: timm-named weights back to imageclf's keys (body.*,
    head.2.*), by the classifier's name that folder/config.json records."""
    path = folder / "config.json"
    try:
        clf = json.loads(path.read_text())["pretrained_cfg"]["classifier"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedFileError(f"{path}: timm-named weights need the classifier's name in "
                               f"pretrained_cfg.classifier ({type(e).__name__}: {e})") from e
    names = {f"{clf}.{p}": f"head.2.{p}" for p in ("weight", "bias")}
    return {names.get(k, f"body.{k}"): v for k, v in state.items()}


def is_timm_layout(state: dict[str, torch.Tensor]) -> bool:
    """Whether a weights file holds timm's keys rather than imageclf's body.* ones."""
    return not any(k.startswith("body.") for k in state)
