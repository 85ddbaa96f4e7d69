"""A model folder in timm's layout: config.json and timm-named weights that
`timm.create_model("local-dir:DIR", pretrained=True)` (and the Hub's `hf-hub:`) load.

The folder stays an imageclf model folder too (model.json, open_set.safetensors), so
`predict`, `serve` and `evaluate` read it, and `load_model` maps the weights back.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from torch import nn

from imageclf.core.errors import ConfigError
from imageclf.core.fileio import atomic_write, write_json
from imageclf.core.modelmeta import ModelMeta
from imageclf.model.classifier import Classifier
from imageclf.model.folder import load_model

# imageclf's resize methods as timm's eval crop modes (create_transform's crop_mode)
CROP_MODES = {"crop": "center", "squish": "squash", "pad": "border"}
TIMM_HEAD = ("head.2.weight", "head.2.bias")  # make_head("timm"): pool, flatten, linear


def _classifier_name(model: nn.Module) -> str:
    """The module path of a timm model's classifier (`fc` for a ResNet, `head.fc` for
    others)."""
    clf = model.get_classifier()
    for name, m in model.named_modules():
        if m is clf:
            return name
    raise ConfigError(f"timm's {type(model).__name__} names no classifier module")


def timm_state(model: Classifier, full: nn.Module) -> dict[str, torch.Tensor]:
    """imageclf's state (body.*, head.2.*) renamed to timm's own keys for `full`, the
    same architecture created by timm with its classifier."""
    if model.head_kind != "timm":
        raise ConfigError(
            f"this model has the {model.head_kind!r} head (concat pooling, BatchNorm and a "
            "512-unit hidden layer), which timm's classifiers cannot express; train it with "
            "--head timm to export it for timm (ONNX and imageclf read it as it is)")
    clf = _classifier_name(full)
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("body."):
            out[k[len("body."):]] = v
        elif k in TIMM_HEAD:
            out[f"{clf}.{k.rsplit('.', 1)[1]}"] = v
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def pretrained_cfg(meta: ModelMeta, full: nn.Module) -> dict:
    """timm's pretrained_cfg for this model: the input size, normalisation and the eval
    resize that come closest to imageclf's presize → centre resize."""
    own = full.pretrained_cfg
    return {
        "input_size": [3, meta.size, meta.size],
        "interpolation": "bilinear",  # Pillow's antialiased bilinear, as the presize
        "crop_pct": 1.0,  # the whole square (crop/squish) or the whole image (pad) is kept
        "crop_mode": CROP_MODES[meta.resize_method],
        "mean": [round(v, 6) for v in meta.mean],
        "std": [round(v, 6) for v in meta.std],
        "num_classes": meta.n_classes,
        "first_conv": own.get("first_conv"),
        "classifier": _classifier_name(full),
        "fixed_input_size": bool(own.get("fixed_input_size", False)),
    }


def _check_same_logits(model: Classifier, full: nn.Module, size: int) -> None:
    """timm's model with the renamed weights must compute imageclf's logits."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, theirs = model.eval()(x), full.eval()(x)
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4):
        diff = (ours - theirs).abs().max().item() if ours.shape == theirs.shape else "shape"
        raise ConfigError(f"timm's {model.arch} computes other logits from these weights "
                          f"(largest difference {diff}): its own head is not the plain "
                          "pool + linear one; this architecture cannot be exported for timm")


def export_timm(folder: str | Path, out: str | Path) -> Path:
    """Write `out`: config.json and model.safetensors in timm's layout, checked to give the
    same logits in timm, beside model.json (and open_set.safetensors) for imageclf."""
    folder, out = Path(folder), Path(out)
    if out.resolve() == folder.resolve():
        raise ConfigError(f"-o {out}: choose a folder other than the model's own")
    model, meta = load_model(folder)
    full = timm.create_model(meta.arch, pretrained=False, num_classes=meta.n_classes)
    state = timm_state(model, full)
    try:
        full.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"timm's {meta.arch} with its classifier does not take this model's "
                          f"weights ({str(e).splitlines()[0][:200]}); this architecture "
                          "cannot be exported for timm") from e
    _check_same_logits(model, full, meta.size)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "model.safetensors", lambda p: save_file(state, p,
                                                                metadata={"format": "pt"}))
    write_json(out / "config.json", {
        "architecture": meta.arch,
        "num_classes": meta.n_classes,
        "num_features": int(full.num_features),
        "global_pool": "avg",
        "label_names": list(meta.classes),
        "pretrained_cfg": pretrained_cfg(meta, full),
    })
    rule = meta.open_set
    if rule is not None and rule.file and (folder / rule.file).is_file():
        shutil.copyfile(folder / rule.file, out / rule.file)  # the feature scores' statistics
    dataclasses.replace(meta, weights="model.safetensors").write(out)
    return out
