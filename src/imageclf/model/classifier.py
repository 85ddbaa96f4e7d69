"""Backbone + new head, pretrained weights, parameter groups, freeze/unfreeze."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from imageclf.core.errors import ConfigError
from imageclf.core.modelmeta import HEADS
from imageclf.model.archs import fastai_init  # importing it registers imageclf's nets in timm

log = logging.getLogger(__name__)


class ConcatPool(nn.Module):
    """Average and max pooling side by side: (B, C, H, W) → (B, 2C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)


def make_head(n_features: int, n_classes: int, kind: str = "concat", hidden: int = 512,
              dropout: float = 0.5) -> nn.Sequential:
    """fastai's head (concat pool, BN, dropout, linear, ReLU, BN, dropout, linear) or timm's
    plain one (average pool, linear); linear weights kaiming-initialised."""
    if kind == "timm":
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(n_features,
                                                                             n_classes))
    elif kind == "concat":
        head = nn.Sequential(
            ConcatPool(), nn.BatchNorm1d(2 * n_features), nn.Dropout(dropout / 2),
            nn.Linear(2 * n_features, hidden, bias=False), nn.ReLU(inplace=True),
            nn.BatchNorm1d(hidden), nn.Dropout(dropout), nn.Linear(hidden, n_classes, bias=False))
    else:
        raise ConfigError(f"--head must be one of {', '.join(HEADS)}; got {kind!r}")
    fastai_init(head)
    return head


class Classifier(nn.Module):
    """`body` (a timm backbone without its classifier) followed by `head`; `arch` and
    `head_kind` name them, so the model can be exported (and rebuilt) as it is."""

    def __init__(self, body: nn.Module, head: nn.Module, arch: str = "",
                 head_kind: str = "concat") -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.arch, self.head_kind = arch, head_kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) → (B, n_classes)
        return self.head(self.body(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The body's unpooled feature map (B, D, h, w), as timm's `forward_features`."""
        return self.body(x)

    def logits_and_pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled features): the features are the body's average-pooled output
        (B, D), in float32, what the open-set scores knn and mahalanobis compare."""
        fmap = self.body(x)
        return self.head(fmap), fmap.float().mean((2, 3))


def linear_head(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight (C, D), bias (C,)) of a model whose logits are one linear layer on the
    average-pooled features (timm's head), what vim, ash and scale read; None for the
    concat head."""
    head = getattr(model, "head", None)
    if getattr(model, "head_kind", None) != "timm" or not isinstance(head, nn.Sequential):
        return None
    lin = head[-1]
    if not isinstance(lin, nn.Linear) or lin.bias is None:
        return None
    return lin.weight, lin.bias


def check_arch(arch: str) -> None:
    """Raise a ConfigError naming close architecture names when timm does not know `arch`."""
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ConfigError(f"--arch {arch!r} is not a timm architecture{hint}")


def _create(arch: str, use_hub: bool) -> nn.Module:
    """timm's model without classifier or pooling. Residual blocks start with their last
    norm at gamma 1, as torchvision's resnets do (fastai's XResNet starts it at zero, as
    xse_resnext_mini_fastai does whatever it is passed), not timm's zero: measured on Imagenette
    (resnet18 from scratch, 2 epochs one-cycle), timm's zero-init reached 55% where this
    reached 62%. Architectures without that option are created as timm defines them."""
    try:
        return timm.create_model(arch, pretrained=use_hub, num_classes=0, global_pool="",
                                 zero_init_last=False)
    except TypeError:
        return timm.create_model(arch, pretrained=use_hub, num_classes=0, global_pool="")


def create_body(arch: str, pretrained: str = "none") -> nn.Module:
    """A timm backbone returning feature maps, with weights from hub|none|PATH."""
    check_arch(arch)
    from imageclf.core.hubnet import hub_endpoint, hub_reachable

    use_hub = pretrained == "hub"
    if use_hub and not hub_reachable():
        raise ConfigError(
            f"--pretrained hub: the model hub ({hub_endpoint()}) cannot be reached. Point at a "
            "local weights file (--pretrained weights.safetensors or .pth), an earlier run's "
            "model/ folder, or train from scratch with --pretrained none")
    body = _create(arch, use_hub)
    if pretrained not in ("hub", "none"):
        load_body_weights(body, Path(pretrained))
    return body


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise ConfigError(f"--pretrained {path}: no such file or folder")
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.exists():
            raise ConfigError(f"--pretrained {path}: a folder must be an imageclf model/ folder "
                              "with model.safetensors")
        state = load_file(weights)
        return {k[len("body."):]: v for k, v in state.items() if k.startswith("body.")}
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:  # tensors only: a pickle that would run code is refused
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable weights file the same way
        raise ConfigError(f"--pretrained {path}: cannot read weights ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]})") from e
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"--pretrained {path}: expected a state dict of tensors")
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "model.", "body."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_body_weights(body: nn.Module, path: Path) -> None:
    """Load a timm/torchvision-style state dict (or an imageclf model/ folder) into `body`;
    the old classifier's weights are dropped, every other key must fit."""
    state = _read_state(path)
    own = body.state_dict()
    used = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in used and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in used.items()
             if v.shape != own[k].shape]
    if missing or wrong or not used:
        detail = (f"missing keys {missing[:5]}" if missing else "") + (
            f" wrong shapes {wrong[:5]}" if wrong else "")
        raise ConfigError(f"--pretrained {path} does not fit this architecture: "
                          f"{detail.strip() or 'no matching keys'}")
    body.load_state_dict(used, strict=False)
    log.info("loaded %d tensors from %s", len(used), path)


def create_model(arch: str, n_classes: int, pretrained: str = "none",
                 head: str = "concat") -> Classifier:
    """Backbone `arch` with weights from hub|none|PATH and a new head for n_classes."""
    body = create_body(arch, pretrained)
    return Classifier(body, make_head(body.num_features, n_classes, head), arch, head)


def param_groups(model: Classifier) -> list[list[nn.Parameter]]:
    """[stem + early stages, late stages, head], from timm's own `group_matcher`."""
    body = model.body
    try:
        from timm.models import group_parameters

        groups = group_parameters(body, body.group_matcher(coarse=True))
        names = [list(v) for _, v in sorted(groups.items())]
    except (AttributeError, NotImplementedError, TypeError):
        names = [[n for n, _ in body.named_parameters()]]
    flat = [n for g in names for n in g]
    params = dict(body.named_parameters())
    if len(names) >= 2:
        cut = max(1, len(names) // 2)
        early = [n for g in names[:cut] for n in g]
        late = [n for g in names[cut:] for n in g]
    else:  # no structure: split the parameter list in two
        early, late = flat[: len(flat) // 2], flat[len(flat) // 2:]
    return [[params[n] for n in early], [params[n] for n in late], list(model.head.parameters())]


def norm_params(model: nn.Module) -> set[int]:
    """ids of every normalisation-layer parameter."""
    out: set[int] = set()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm):
            out.update(id(p) for p in m.parameters(recurse=False))
    return out


def freeze(model: Classifier) -> None:
    """Train only the head, plus every BatchNorm/norm layer of the body (fastai's train_bn)."""
    keep = norm_params(model.body)
    for p in model.body.parameters():
        p.requires_grad_(id(p) in keep)
    for p in model.head.parameters():
        p.requires_grad_(True)


def unfreeze(model: nn.Module) -> None:
    """Train every parameter."""
    for p in model.parameters():
        p.requires_grad_(True)
