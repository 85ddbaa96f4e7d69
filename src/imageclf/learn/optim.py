"""The optimiser: timm's factory (adamw, ranger, sgd), with one (decay, no-decay) pair of
param groups per layer group."""

from __future__ import annotations

import torch

from imageclf.core.config import OPTIMIZERS, OptimConfig
from imageclf.core.errors import ConfigError
from imageclf.model.classifier import norm_params


def make_optimizer(name: str, groups: list[dict], device: torch.device,
                   mom: float | None = None) -> torch.optim.Optimizer:
    """adamw (fastai's betas and eps; PyTorch's fused kernel where the device has it),
    ranger (timm's lookahead_radamw: RAdam with decoupled decay inside Lookahead k=6,
    alpha 0.5, fastai's ranger betas (0.95, 0.99) and eps 1e-6) or sgd (Nesterov, momentum
    0.9), all through timm's optimiser factory. `mom` replaces beta1 (SGD's momentum)."""
    from timm.optim import create_optimizer_v2

    def held(default: float) -> float:
        return default if mom is None else mom

    if name == "adamw":
        fused = device.type in ("cpu", "cuda")  # one pass over all parameters
        return create_optimizer_v2(groups, "adamw", lr=1e-3, betas=(held(0.9), 0.99),
                                   eps=1e-5, fused=fused)
    if name == "ranger":
        return create_optimizer_v2(groups, "lookahead_radamw", lr=1e-3,
                                   betas=(held(0.95), 0.99), eps=1e-6)
    if name == "sgd":
        return create_optimizer_v2(groups, "sgd", lr=1e-3, momentum=held(0.9),
                                   nesterov=True)
    raise ConfigError(f"--opt must be one of {', '.join(OPTIMIZERS)}; got {name!r}")


def optimizer_for(model: torch.nn.Module, groups: list[list[torch.nn.Parameter]],
                  optim: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimiser `optim` names over `groups` (the model's layer groups), with no weight
    decay on normalisation weights and biases."""
    norms = norm_params(model)
    out = []
    for i, params in enumerate(groups):
        decay = [p for p in params if id(p) not in norms and p.ndim > 1]
        no_decay = [p for p in params if id(p) in norms or p.ndim <= 1]
        out.append({"params": decay, "weight_decay": optim.wd, "layer": i})
        out.append({"params": no_decay, "weight_decay": 0.0, "layer": i})
    return make_optimizer(optim.opt, out, device, optim.mom)
