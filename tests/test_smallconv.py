"""The small-map convolution gives PyTorch's gradients, and is used only where it should."""

import copy

import pytest
import torch
from torch import nn

from imageclf.model.smallconv import SmallMapConv, TrainConv2d, use_for_training


@pytest.mark.parametrize("stride,padding,bias,side", [(1, 1, False, 2), (2, 1, True, 4),
                                                      (2, 0, False, 4), (1, 1, True, 3)])
def test_gradients_match_pytorch_in_fp32(stride, padding, bias, side):
    torch.manual_seed(0)
    # small enough for gradcheck's one forward per element (8->16 channels, batch 5: 7 s)
    ref = nn.Conv2d(3, 4, 3 if padding else 1, stride, padding, bias=bias).double()
    x = torch.randn(2, 3, side, side, dtype=torch.float64, requires_grad=True)
    # gradcheck: the backward is the exact derivative of the forward
    assert torch.autograd.gradcheck(
        lambda x, w, *b: SmallMapConv.apply(x, w, b[0] if b else None, ref.stride,
                                            ref.padding, ref.dilation),
        (x, ref.weight, *([ref.bias] if bias else [])))


def test_train_conv_matches_autocast_conv_in_bf16():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 1, 1,
                                                                          bias=False))
    ours = copy.deepcopy(ref)
    assert use_for_training(ours) == 2
    x = torch.randn(16, 32, 8, 8)  # 4x4 outputs: 16 positions, the small-map path
    grads = []
    for m in (ref, ours):
        m.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        assert out.dtype == torch.bfloat16
        out.float().square().mean().backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads, strict=True):
        assert a.dtype == b.dtype == torch.float32
        # both sum bf16 products in fp32; only the order differs
        assert torch.allclose(a, b, rtol=2e-2, atol=2e-2 * a.abs().max().item())


def test_small_map_path_only_where_it_pays(monkeypatch):
    calls = []
    orig = SmallMapConv.apply
    monkeypatch.setattr(SmallMapConv, "apply", lambda *a: calls.append(1) or orig(*a))
    conv = nn.Conv2d(4, 4, 3, 1, 1)
    use_for_training(conv)
    assert type(conv) is TrainConv2d
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(torch.randn(2, 4, 4, 4)).sum().backward()  # 16 positions, bf16: used
        assert len(calls) == 1
        conv(torch.randn(2, 4, 5, 5)).sum().backward()  # 25 positions: native
        conv.eval()
        conv(torch.randn(2, 4, 4, 4))  # evaluation: native
    conv.train()
    conv(torch.randn(2, 4, 4, 4)).sum().backward()  # fp32, 16 positions: native
    assert len(calls) == 1
    import imageclf.model.smallconv as S

    monkeypatch.setattr(S, "cpu_avx2_only", lambda: False)
    conv(torch.randn(2, 4, 2, 2)).sum().backward()  # fp32, AVX-512 (or not x86): native, even 2x2
    assert len(calls) == 1
    monkeypatch.setattr(S, "cpu_avx2_only", lambda: True)
    conv(torch.randn(2, 4, 2, 2)).sum().backward()  # fp32, AVX2 only, 4 positions: used
    assert len(calls) == 2
    conv(torch.randn(2, 4, 3, 3)).sum().backward()  # 9 positions: native
    assert len(calls) == 2


def test_state_dict_unchanged_and_switch_off(monkeypatch):
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, groups=2))
    keys = list(m.state_dict())
    assert use_for_training(m) == 1  # grouped convolutions keep PyTorch's own
    assert list(m.state_dict()) == keys
    monkeypatch.setenv("IMAGECLF_CONV_GRAD", "native")
    assert use_for_training(nn.Conv2d(3, 4, 3)) == 0
