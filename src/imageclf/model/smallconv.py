"""Training convolutions on small feature maps faster on the CPU.

oneDNN's weight-gradient kernel is slow when the output map is tiny: resnet18's last stage at
64 px sees 2x2 maps, and on a 2-core Xeon with AMX its 512->512 3x3 weight gradient takes
32 ms in bf16 where the same sum written as one matrix product (unfold, then
grad_out^T @ columns) takes 6 ms. In bf16, up to 16 output positions the matrix product
wins; above, the native kernel does. So a training forward on the CPU
routes such convolutions through `SmallMapConv`, whose forward and input gradient are
PyTorch's own and whose weight gradient is the matrix product. In fp32 that pays only on
AVX2 CPUs without AVX-512, on maps of 4 positions or fewer. Everything else -- GPU,
evaluation, larger maps, grouped convolutions -- is PyTorch's plain `Conv2d`.

`IMAGECLF_CONV_GRAD=native` turns it off (the benchmark's ablation).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from imageclf.core.hardware import cpu_avx2_only

# Most output positions (oh * ow) for which the matrix product beats oneDNN's weight
# gradient, by compute dtype. In fp32 with AVX-512 the two tied at every size measured, so
# fp32 keeps the native kernel there; with AVX2 only (measured on 2 cores capped at AVX2),
# 2x2 maps are 1.3-3.8x faster as the product (512 channels, batch 64: 9 ms against 34),
# and from 4x4 on the native kernel wins. Figures: docs/recipes.md, "Small feature maps".
MAX_POSITIONS = {torch.bfloat16: 16}
MAX_POSITIONS_FP32_AVX2 = 4


def max_positions(dtype: torch.dtype) -> int:
    """The small-map limit for a CPU training step computing in `dtype`."""
    if dtype == torch.float32:
        return MAX_POSITIONS_FP32_AVX2 if cpu_avx2_only() else 0
    return MAX_POSITIONS.get(dtype, 0)


def enabled() -> bool:
    return os.environ.get("IMAGECLF_CONV_GRAD", "auto") != "native"


class SmallMapConv(torch.autograd.Function):
    """conv2d (groups=1) whose weight gradient is one matrix product over unfolded input."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):  # noqa: D401
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, has_bias = ctx.conf
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, list(stride), list(padding), list(dilation), False,
                [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            oc, _, kh, kw = weight.shape
            cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
            cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (N*L, C*kh*kw)
            g = grad.permute(0, 2, 3, 1).reshape(-1, oc)  # (N*L, OC), same position order
            grad_w = (g.t() @ cols).view(weight.shape)
            grad_w = grad_w.contiguous(memory_format=torch.channels_last) \
                if weight.is_contiguous(memory_format=torch.channels_last) else grad_w
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


def _out_positions(conv: nn.Conv2d, x: torch.Tensor) -> int:
    n = 1
    for i, side in enumerate(x.shape[-2:]):
        k = conv.dilation[i] * (conv.kernel_size[i] - 1) + 1
        n *= (side + 2 * conv.padding[i] - k) // conv.stride[i] + 1
    return n


class TrainConv2d(nn.Conv2d):
    """nn.Conv2d that takes the small-map path in CPU training steps; the same parameters,
    state_dict and evaluation as its parent."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.device.type == "cpu" and torch.is_grad_enabled()
                and self.weight.requires_grad):
            return super().forward(x)
        dtype = (torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                 else x.dtype)
        if _out_positions(self, x) > max_positions(dtype):
            return super().forward(x)
        # what autocast does for conv2d: inputs, weight and bias in the lower precision
        w = self.weight.to(dtype)
        b = self.bias.to(dtype) if self.bias is not None else None
        with torch.autocast("cpu", enabled=False):
            return SmallMapConv.apply(x.to(dtype), w, b, self.stride, self.padding,
                                      self.dilation)


def use_for_training(model: nn.Module) -> int:
    """Route `model`'s plain zero-padded, ungrouped Conv2d layers through TrainConv2d, in
    place (parameters and state_dict keys unchanged); returns how many. Off with
    IMAGECLF_CONV_GRAD=native."""
    if not enabled():
        return 0
    n = 0
    for m in model.modules():
        if (type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"
                and not isinstance(m.padding, str)):
            m.__class__ = TrainConv2d
            n += 1
    return n
