"""Architectures imageclf registers in timm: configurations of timm's own ByobNet, so that
`--arch` names them like any timm model and export/predict rebuild them the same way."""

from __future__ import annotations

import timm
import torch
from timm.layers import create_aa, make_divisible
from timm.models import register_model
from timm.models.byobnet import (
    BasicBlock as ByobBasicBlock,
)
from timm.models.byobnet import (
    ByoBlockCfg,
    ByobNet,
    ByoModelCfg,
    LayerFn,
    num_groups,
    register_block,
)
from timm.models.resnet import BasicBlock, ResNet
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class GroupsFirstBlock(ByobBasicBlock):
    """timm's ByobNet basic block (kxk + kxk) with its groups on the first convolution,
    as fastai's XResNet places them: a grouped widening convolution (with the stride),
    then a dense one back to the stage's width. timm's own puts them on the second."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1,
                 dilation: tuple[int, int] = (1, 1), group_size: int | None = None,
                 bottle_ratio: float = 1.0, layers: LayerFn | None = None,
                 drop_block=None, **kwargs) -> None:
        super().__init__(in_chs, out_chs, kernel_size, stride, dilation, group_size,
                         bottle_ratio, layers=layers, drop_block=drop_block, **kwargs)
        layers = layers or LayerFn()
        dd = {k: kwargs[k] for k in ("device", "dtype") if k in kwargs}
        mid_chs = make_divisible(out_chs * bottle_ratio)
        groups = num_groups(group_size, mid_chs)
        self.conv1_kxk = layers.conv_norm_act(in_chs, mid_chs, kernel_size, stride=stride,
                                              dilation=dilation[0], groups=groups, **dd)
        self.conv2_kxk = layers.conv_norm_act(mid_chs, out_chs, kernel_size,
                                              dilation=dilation[1], drop_layer=drop_block,
                                              apply_act=False, **dd)


register_block("basic_groups_first", GroupsFirstBlock)


def mini_cfg(act: str = "silu", widths: tuple[int, ...] = (64, 128, 256, 512),
             depths: tuple[int, ...] = (1, 1, 1, 1), groups: int = 64,
             expansion: float = 4.0, se_ratio: float = 1 / 8,
             stem: int | tuple[int, ...] | None = None, se_act: str | None = None,
             groups_first: bool = False) -> ByoModelCfg:
    """The Imagenette leaderboard's "mini net" (pete88b's XSE-ResNeXt: layers [1,1,1,1],
    expansion 1, groups 64, SE reduction 8, average-pool shortcut, deep stem) as a timm
    ByobNet: residual blocks of two 3x3 convolutions whose middle is `expansion` times
    wider than the stage and cut into `groups` groups, squeeze-excitation on the block's
    output, a 3x3 x3 stem with max-pool. timm puts the groups on the block's second
    convolution where fastai puts them on the first: at a downsampling block the dense
    convolution then reads the stage's input, half as wide, so this net has 6.9 M weights
    against fastai's 12.9 M (`groups_first` builds fastai's).
    `stem` sets the stem's three widths (timm's deep stem: all three at the first stage's),
    `se_act` the squeeze-excitation's activation (timm's: ReLU), `groups_first` puts
    the groups on the first convolution as fastai does (`GroupsFirstBlock`)."""
    kind = "basic_groups_first" if groups_first else "basic"
    blocks = tuple(
        ByoBlockCfg(type=kind, d=d, c=c, s=1 if i == 0 else 2,
                    gs=int(c * expansion) // groups, br=expansion)
        for i, (c, d) in enumerate(zip(widths, depths, strict=True)))
    attn = {"rd_ratio": se_ratio} | ({"act_layer": se_act} if se_act else {})
    return ByoModelCfg(blocks=blocks, stem_chs=stem or widths[0], stem_type="deep",
                       stem_pool="maxpool", downsample="avg", act_layer=act,
                       attn_layer="se", attn_kwargs=attn)


def fastai_init(model: nn.Module) -> nn.Module:
    """fastai's init_cnn: He-normal on fan-in for every convolution and linear weight
    (timm's ByobNet draws on fan-out), biases zero; norms untouched."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _own(pretrained: bool, kwargs: dict) -> dict:
    """timm's create_model arguments for a net with no hub weights."""
    if pretrained:
        raise ValueError("imageclf's own architectures have no hub weights: train from "
                         "scratch (--pretrained none) or point --pretrained at a run")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return kwargs


def _byob(cfg: ByoModelCfg, pretrained: bool, **kwargs) -> ByobNet:
    return ByobNet(cfg, **_own(pretrained, kwargs))


@register_model
def xse_resnext_mini(pretrained: bool = False, **kwargs) -> ByobNet:
    """The leaderboard's mini net with SiLU: on 2 AMX cores bf16 it trains at 38 img/s at
    128 px against Mish's 29 (docs/recipes.md)."""
    return _byob(mini_cfg("silu"), pretrained, **kwargs)


@register_model
def xse_resnext_mini_mish(pretrained: bool = False, **kwargs) -> ByobNet:
    """The leaderboard's mini net as it was, with Mish."""
    return _byob(mini_cfg("mish"), pretrained, **kwargs)


def _fastai_built(groups_first: bool, pretrained: bool, kwargs: dict,
                  act: str = "silu") -> ByobNet:
    """The mini net with fastai's stem (32-32-64), SE activation and init, and each block's
    last norm at zero whatever the caller asks; `groups_first` as `mini_cfg`, `act` the
    activation everywhere, the squeeze-excitation's included."""
    kwargs["zero_init_last"] = True
    cfg = mini_cfg(act, stem=(32, 32, 64), se_act=act, groups_first=groups_first)
    return fastai_init(_byob(cfg, pretrained, **kwargs))


@register_model
def xse_resnext_mini_fastai(pretrained: bool = False, **kwargs) -> ByobNet:
    """The mini net built and initialised as fastai's XResNet built it, but for the
    groups' place (timm's, on the second convolution; `xse_resnext_mini_xresnet` has
    fastai's): stem 32-32-64, squeeze-excitation with the net's activation, He fan-in
    init, and each block's last norm starting at zero (fastai's BatchZero), whatever the
    caller asks."""
    return _fastai_built(False, pretrained, kwargs)


@register_model
def xse_resnext_mini_xresnet(pretrained: bool = False, **kwargs) -> ByobNet:
    """The mini net exactly as fastai's XResNet builds it: `xse_resnext_mini_fastai` with
    each block's groups on its first convolution (`GroupsFirstBlock`). At a downsampling
    block the dense second convolution then reads the 4x-wide middle rather than the
    stage's input, so the net has 12.9 M weights where timm's placement has 6.9 M
    (fastai's own build: 12.94 M weights, 733 M multiply-adds at 128 px)."""
    return _fastai_built(True, pretrained, kwargs)


@register_model
def xse_resnext_mini_xresnet_mish(pretrained: bool = False, **kwargs) -> ByobNet:
    """`xse_resnext_mini_xresnet` with the record's Mish for SiLU, in the squeeze-excitation
    too: the record's net as it was. On the leaderboard setting 85.0% over 2 seeds against
    SiLU's 84.7%, inside the seeds' spread, at 1.25x SiLU's bare training step
    (docs/recipes.md), so the recipe keeps SiLU."""
    return _fastai_built(True, pretrained, kwargs, act="mish")


@register_model
def xse_resnext_mini_xresnet_blur(pretrained: bool = False, **kwargs) -> ByobNet:
    """`xse_resnext_mini_xresnet` with an anti-aliased stem ("MaxBlurPool", which later
    Imagewoof records used): the stem's stride-2 max-pool becomes a stride-1 max-pool and
    timm's 3x3 binomial blur-pool with the stride, as timm's ResNet does with `aa_layer`.
    The same weights; the blur adds 0.6 M multiply-adds to the 733 M at 128 px, and the
    max-pool reads four times the positions. On the leaderboard setting it gained nothing
    (84.7% against 85.2% on seed 0, docs/recipes.md), so the recipe keeps the plain pool."""
    model = _fastai_built(True, pretrained, kwargs)
    chs = model.stem.conv3.conv.out_channels
    model.stem.pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                    create_aa("blur", channels=chs, stride=2))
    return model


class SimpleSelfAttention(nn.Module):
    """fastai's SimpleSelfAttention (the `sa` of its XResNet, which later Imagewoof records
    turned on): o = gamma * (x x^T) (W x) + x over the map's positions, W a 1x1 convolution
    under spectral normalisation, gamma a learnt scalar starting at zero, so the block
    starts as the identity. Global at the cost of three C x C x HW products per image (the
    Gram matrix, the 1x1 convolution and their product)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        conv = nn.Conv1d(channels, channels, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight)
        self.conv = spectral_norm(conv)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # B, C, HW
        gram = torch.bmm(flat, flat.transpose(1, 2))  # B, C, C
        out = self.gamma * torch.bmm(gram, self.conv(flat)) + flat
        return out.view_as(x)


@register_model
def xse_resnext_mini_xresnet_sa(pretrained: bool = False, **kwargs) -> ByobNet:
    """`xse_resnext_mini_xresnet` with fastai's self-attention where fastai's XResNet puts
    it with `sa=True`: after the squeeze-excitation of the first stage's last block (64
    channels on a 32x32 map at 128 px). 4,097 weights and 12.6 M multiply-adds more at
    128 px (1.7% of 733 M), yet a bare bf16 training step takes 1.13x as long on CPU. On
    the leaderboard setting it gained nothing (84.4% against 85.2% on seed 0,
    docs/recipes.md), so the recipe leaves it off."""
    model = _fastai_built(True, pretrained, kwargs)
    block = model.stages[0][-1]
    block.attn_last = nn.Sequential(block.attn_last,
                                    SimpleSelfAttention(block.conv2_kxk.conv.out_channels))
    return model


@register_model
def resnet10t_narrow(pretrained: bool = False, **kwargs) -> ResNet:
    """timm's resnet10t (tiered deep stem, one basic block per stage, average-pool
    shortcut) at half its widths, 32-64-128-256: 1.2 M parameters, for small images and
    the first run on any CPU (the demo). On 2 cores capped at AVX2, fp32, 48 px, batch 32
    it trains at 3-3.6x resnet10t's images per second and 5.8x resnet18's (docs/recipes.md)."""
    return ResNet(BasicBlock, (1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=16,
                  stem_type="deep_tiered", avg_down=True, **_own(pretrained, kwargs))


NAMES = ("xse_resnext_mini", "xse_resnext_mini_mish", "xse_resnext_mini_fastai",
         "xse_resnext_mini_xresnet", "xse_resnext_mini_xresnet_mish",
         "xse_resnext_mini_xresnet_blur",
         "xse_resnext_mini_xresnet_sa", "resnet10t_narrow")
assert all(timm.is_model(n) for n in NAMES)
