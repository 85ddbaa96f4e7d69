"""The model/ folder: model.safetensors + model.json. Data, never pickle."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import PIL
import timm
import torch
from safetensors.torch import load_file, save_file

from imageclf.config import ConfigError

FORMAT_VERSION = 1


def atomic_write(path: Path, write) -> None:
    """Write through `write(tmp_path)`, fsync, then rename over `path`: never half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would create it, not mkstemp's 0600
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
    atomic_write(folder / "model.safetensors", lambda p: save_file(state, p))
    info = {"format_version": FORMAT_VERSION, "weights": "model.safetensors",
            "versions": {"torch": torch.__version__, "timm": timm.__version__,
                         "pillow": PIL.__version__}} | meta
    text = json.dumps(info, indent=2) + "\n"
    atomic_write(folder / "model.json", lambda p: Path(p).write_text(text))
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
    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ConfigError(f"{path}: missing keys {missing}")
    problems = []
    if not (isinstance(meta["classes"], list) and meta["classes"]
            and all(isinstance(c, str) for c in meta["classes"])):
        problems.append("'classes' must be a non-empty list of names")
    for key in ("size", "presize"):
        if not (isinstance(meta[key], int) and meta[key] > 0):
            problems.append(f"'{key}' must be a positive integer")
    for key in ("mean", "std"):
        if not (isinstance(meta[key], list) and len(meta[key]) == 3):
            problems.append(f"'{key}' must be a list of 3 numbers")
    n = len(meta["classes"]) if isinstance(meta["classes"], list) else 0
    for key in ("thresholds",):
        v = meta.get(key)
        if v is not None and not (isinstance(v, list) and len(v) == n):
            problems.append(f"'{key}' must be null or a list of {n} numbers")
    mc = meta.get("min_confidence")
    if mc is not None and not (isinstance(mc, int | float) and 0 <= mc <= 1):
        problems.append("'min_confidence' must be null or a number in [0, 1]")
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return meta


def weights_path(folder: Path, meta: dict) -> Path:
    """The weights file named in model.json; it must be a .safetensors file inside the folder."""
    name = meta.get("weights", "model.safetensors")
    root = folder.resolve()
    target = (folder / str(name)).resolve()
    if not target.is_relative_to(root) or target.suffix != ".safetensors":
        raise ConfigError(f"{folder / 'model.json'}: 'weights' must name a .safetensors file "
                          f"inside {folder}; got {name!r}")
    return target


def load_model(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a model/ folder (no pickle) and its metadata."""
    from imageclf.models import create_model

    folder = Path(folder)
    meta = read_meta(folder)
    model = create_model(meta["arch"], len(meta["classes"]), "none", meta["head"])
    weights = weights_path(folder, meta)
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


class _WithNormalisation(torch.nn.Module):
    """float RGB in [0, 1] (B, 3, S, S) → class probabilities, normalisation inside."""

    def __init__(self, model: torch.nn.Module, mean: list[float], std: list[float],
                 multi_label: bool) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.multi_label = multi_label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model((x - self.mean) / self.std)
        return out.sigmoid() if self.multi_label else out.softmax(1)


def export_onnx(folder: str | Path, out: str | Path | None = None, opset: int = 18) -> Path:
    """ONNX of a model/ folder: input `image` float32 RGB in [0, 1] (batch, 3, size, size),
    dynamic batch; output `probs`; classes, size and presize in the metadata."""
    import onnx

    model, meta = load_model(folder)
    out = Path(out) if out else Path(folder) / "model.onnx"
    wrapped = _WithNormalisation(model, meta["mean"], meta["std"],
                                 bool(meta.get("multi_label"))).eval()
    size = int(meta["size"])
    dummy = torch.rand(2, 3, size, size)
    tmp = out.with_name(out.name + ".tmp")
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own progress chatter
            program = torch.onnx.export(wrapped, (dummy,), input_names=["image"],
                                        output_names=["probs"], opset_version=opset,
                                        dynamo=True, dynamic_shapes=({0: batch},),
                                        verbose=False)
        program.save(str(tmp))
        proto = onnx.load(str(tmp))
        for key, value in (("classes", json.dumps(meta["classes"])), ("size", str(size)),
                           ("presize", str(meta["presize"])),
                           ("resize_method", meta["resize_method"]),
                           ("input", "float32 RGB in [0, 1], normalisation inside"),
                           ("output", "sigmoid per class" if meta.get("multi_label")
                            else "softmax over classes")):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        atomic_write(out, lambda p: onnx.save(proto, p))
    finally:
        tmp.unlink(missing_ok=True)
    return out
