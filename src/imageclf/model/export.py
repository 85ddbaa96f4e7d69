"""The model/ folder: model.safetensors + model.json. Data, never pickle."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import PIL
import timm
import torch
from safetensors.torch import save_file

from imageclf.core.fileio import atomic_write
from imageclf.core.modelmeta import ModelMeta, NegativesInfo
from imageclf.model.folder import load_model

if TYPE_CHECKING:
    from imageclf.learn.learner import Learner


def save_model(model: torch.nn.Module, folder: str | Path, meta: ModelMeta) -> Path:
    """Write folder/model.safetensors and folder/model.json (`meta`, with the versions of
    torch, timm and Pillow that wrote it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / meta.weights, lambda p: save_file(state, p))
    versions = {"torch": torch.__version__, "timm": timm.__version__, "pillow": PIL.__version__}
    dataclasses.replace(meta, versions=versions).write(folder)
    return folder


def learner_meta(learn: Learner) -> ModelMeta:
    """The model.json of a Learner's model: its architecture and head (recorded by the
    model builder), its data's classes, sizes and normalisation, its loss."""
    cfg, ml = learn.dls.cfg, learn.multi_label
    n = len(learn.dls.classes)
    return ModelMeta(arch=learn.model.arch, head=learn.model.head_kind,
                     classes=tuple(learn.dls.classes), size=learn.dls.valid.augment.size,
                     train_size=cfg.size, ema=learn.ema is not None, presize=cfg.presize,
                     resize_method=cfg.resize_method,
                     mean=tuple(learn.dls.valid.augment.mean.tolist()),
                     std=tuple(learn.dls.valid.augment.std.tolist()),
                     loss="bce_multi_label" if ml else "cross_entropy", multi_label=ml,
                     thresholds=(0.5,) * n if ml else None, negatives=_negatives(learn))


def _negatives(learn: Learner) -> NegativesInfo | None:
    """What the model was shown of no class (None without --negatives)."""
    neg, cfg = getattr(learn.dls, "negatives", None), learn.dls.cfg
    if neg is None:
        return None
    ml = learn.dls.multi_label
    return NegativesInfo(tuple(str(Path(s).absolute()) if s in neg.files else s
                               for s in neg.sources),
                         cfg.source.valid_pct, cfg.seed, len(neg.train), len(neg.valid),
                         learn.reg.weight_of_negatives(ml),
                         cfg.ratio_of_negatives(bool(neg.files)),
                         "bce" if ml else learn.reg.negatives_loss)


def export_learner(learn: Learner, folder: str | Path) -> Path:
    """Save a Learner's model as a model/ folder (its weights' moving average with --ema)."""
    return save_model(learn.eval_model, folder, learner_meta(learn))


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
    wrapped = _WithNormalisation(model, list(meta.mean), list(meta.std), meta.multi_label).eval()
    size = meta.size
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
        for key, value in (("classes", json.dumps(list(meta.classes))), ("size", str(size)),
                           ("presize", str(meta.presize)),
                           ("resize_method", meta.resize_method),
                           ("input", "float32 RGB in [0, 1], normalisation inside"),
                           ("output", "sigmoid per class" if meta.multi_label
                            else "softmax over classes")):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        atomic_write(out, lambda p: onnx.save(proto, p))
    finally:
        tmp.unlink(missing_ok=True)
    return out
