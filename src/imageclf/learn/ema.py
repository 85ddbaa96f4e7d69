"""An exponential moving average of a model's weights (`train --ema DECAY`): validated,
checkpointed and exported instead of the raw weights when on."""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """ema ← d·ema + (1 − d)·weights after each optimiser step, with the warm-up timm and
    the speed records use, d_t = min(decay, (1 + t) / (10 + t)), so the first steps are not
    dominated by the random initialisation. Buffers (BatchNorm statistics) are copied, not
    averaged. Every process of a DDP job holds the same weights, so the same average."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def rate(self) -> float:
        """The decay of the next update."""
        t = self.updates
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.rate()
        ema = [p for p in self.module.parameters()]
        new = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema, new, 1.0 - d)
        for b, src in zip(self.module.buffers(), model.buffers(), strict=True):
            b.copy_(src)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights and buffers, and the update count (for a resume)."""
        out = {k: v.detach() for k, v in self.module.state_dict().items()}
        out["__updates__"] = torch.tensor(self.updates)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.updates = int(state.pop("__updates__", 0))
        self.module.load_state_dict(state)
