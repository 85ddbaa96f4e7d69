import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from imageclf.core.config import AugConfig
from imageclf.data.augment import (
    AugParams,
    BatchAugment,
    apply_matrix,
    crop_matrix,
    flip_matrix,
    homography,
    identity_params,
    output_points,
    rotate_matrix,
    sample_params,
    sampling_grid,
    source_scale,
    square_to_quad,
    warp_corners,
    warp_matrix,
    zoom_matrix,
)


class CountCalls(TorchFunctionMode):
    """Counts calls of chosen torch functions while active."""

    def __init__(self, *funcs):
        super().__init__()
        self.funcs = funcs
        self.counts = {f: 0 for f in funcs}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.counts:
            self.counts[func] += 1
        return func(*args, **(kwargs or {}))


def _pts(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, n, 2, generator=g) * 2 - 1


def test_rotate_quarter_turn_maps_x_axis_to_y_axis():
    m = rotate_matrix(torch.tensor([90.0]))
    out = apply_matrix(m, torch.tensor([[[1.0, 0.0]]]))
    assert torch.allclose(out, torch.tensor([[[0.0, 1.0]]]), atol=1e-6)


def test_flip_zoom_crop_by_hand():
    p = torch.tensor([[[0.5, -0.25]]])
    assert torch.allclose(apply_matrix(flip_matrix(torch.tensor([True])), p),
                          torch.tensor([[[-0.5, -0.25]]]))
    z = zoom_matrix(torch.tensor([2.0]), torch.tensor([0.1]), torch.tensor([-0.2]))
    assert torch.allclose(apply_matrix(z, p), torch.tensor([[[0.35, -0.325]]]))
    c = crop_matrix(torch.tensor([0.5]), torch.tensor([0.25]), torch.tensor([0.3]),
                    torch.tensor([0.0]))
    assert torch.allclose(apply_matrix(c, p), torch.tensor([[[0.55, -0.0625]]]))


def test_closed_form_warp_equals_linear_solve_and_moves_corners():
    g = torch.Generator().manual_seed(0)
    mx, my = torch.rand(16, generator=g) * 0.4 - 0.2, torch.rand(16, generator=g) * 0.4 - 0.2
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]).expand(16, 4, 2)
    dst = warp_corners(mx, my)
    solved = homography(corners, dst)
    closed = warp_matrix(mx, my)
    closed = closed / closed[:, 2:3, 2:3]
    assert torch.allclose(closed, solved, atol=1e-5)
    assert torch.allclose(apply_matrix(closed, corners), dst, atol=1e-5)
    unit = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]).expand(16, 4, 2)
    assert torch.allclose(apply_matrix(square_to_quad(dst), unit), dst, atol=1e-5)


def test_composed_grid_equals_sequential_coordinate_maps():
    """One grid applies crop, warp, zoom, rotation and flip: the same points as mapping the
    output coordinates through each transform in turn."""
    b, size = 8, 24
    g = torch.Generator().manual_seed(3)
    u = lambda lo, hi: torch.rand(b, generator=g) * (hi - lo) + lo  # noqa: E731
    flip, rot = torch.rand(b, generator=g) < 0.5, u(-10, 10)
    zs, zx, zy = u(1.0, 1.1), u(-0.05, 0.05), u(-0.05, 0.05)
    wx, wy = u(-0.2, 0.2), u(-0.2, 0.2)
    cw, ch, cx, cy = u(0.8, 1.0), u(0.8, 1.0), u(-0.1, 0.1), u(-0.1, 0.1)
    composed = (flip_matrix(flip) @ rotate_matrix(rot) @ zoom_matrix(zs, zx, zy)
                @ warp_matrix(wx, wy) @ crop_matrix(cw, ch, cx, cy))
    pts = output_points(size)[:, :2].expand(b, -1, -1)
    seq = apply_matrix(crop_matrix(cw, ch, cx, cy), pts)
    seq = apply_matrix(warp_matrix(wx, wy), seq)
    seq = apply_matrix(zoom_matrix(zs, zx, zy), seq)
    seq = apply_matrix(rotate_matrix(rot), seq)
    seq = apply_matrix(flip_matrix(flip), seq)
    grid = sampling_grid(composed, size)
    assert torch.allclose(grid.view(b, -1, 2), seq, atol=1e-5)


def test_one_resample_matches_two_resamples_on_a_smooth_image():
    """Resampling once with the composed grid ≈ resampling twice with the two grids."""
    b, p = 2, 64
    yy, xx = torch.meshgrid(torch.linspace(0, 1, p), torch.linspace(0, 1, p), indexing="ij")
    img = torch.stack([torch.sin(3 * xx) * 100 + 120, yy * 200, (xx + yy) * 100], 0)
    img = img.expand(b, 3, p, p).contiguous()
    a = rotate_matrix(torch.tensor([7.0, -5.0])) @ zoom_matrix(
        torch.tensor([1.05, 1.1]), torch.tensor([0.02, 0.0]), torch.tensor([0.0, -0.03]))
    c = crop_matrix(torch.tensor([0.8, 0.9]), torch.tensor([0.85, 0.9]),
                    torch.tensor([0.05, -0.05]), torch.tensor([0.0, 0.05]))
    kw = dict(mode="bilinear", padding_mode="reflection", align_corners=False)
    once = F.grid_sample(img, sampling_grid(a @ c, 32), **kw)
    twice = F.grid_sample(F.grid_sample(img, sampling_grid(a, p), **kw), sampling_grid(c, 32), **kw)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    assert (once[inner] - twice[inner]).abs().mean() < 1.5  # on a 0..255 scale


def _batch(b=4, p=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, p, p), dtype=torch.uint8, generator=g)


def test_exactly_one_grid_sample_per_batch_train_and_valid():
    aug = BatchAugment(32)
    x = _batch()
    for train in (True, False):
        with CountCalls(F.grid_sample, F.interpolate, F.affine_grid) as counter:
            out = aug(x, train=train, generator=torch.Generator().manual_seed(0))
        assert counter.counts[F.grid_sample] == 1
        assert counter.counts[F.interpolate] == 0
        assert counter.counts[F.affine_grid] == 0
        assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_validation_is_deterministic_and_identity_at_same_size():
    aug = BatchAugment(40, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x = _batch()
    a, b = aug(x, train=False), aug(x, train=False)
    assert torch.equal(a, b)
    # identity transform at the same size samples pixel centres exactly
    assert torch.allclose(a * 255, x.float(), atol=1e-3)


def test_training_draws_differ_and_replay_with_the_same_generator():
    aug = BatchAugment(32)
    x = _batch()
    a = aug(x, generator=torch.Generator().manual_seed(5))
    b = aug(x, generator=torch.Generator().manual_seed(5))
    c = aug(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_lighting_keeps_pixels_in_range():
    aug = BatchAugment(32, AugConfig(max_lighting=0.9, p_lighting=1.0))
    out = aug.denormalize(aug(torch.full((4, 3, 40, 40), 250, dtype=torch.uint8),
                              generator=torch.Generator().manual_seed(0)))
    raw = out * 1.0
    assert raw.min() >= 0 and raw.max() <= 1
    assert not torch.allclose(raw, torch.full_like(raw, 250 / 255), atol=0.02)  # it did change


def test_big_shrink_is_prefiltered_against_aliasing():
    """A 1-pixel checkerboard shrunk 3x comes out near grey, not black and white."""
    p, s = 96, 32
    board = ((torch.arange(p).view(-1, 1) + torch.arange(p).view(1, -1)) % 2 * 255)
    x = board.to(torch.uint8).expand(2, 3, p, p).contiguous()
    aug = BatchAugment(s, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    out = aug(x, train=False) * 255
    assert source_scale(identity_params(2).matrix).tolist() == [1.0, 1.0]
    assert (out - 127.5).abs().max() < 15  # a 3x3 box over the board: 4/9 or 5/9 white
    # without the prefilter, bilinear sampling of the same grid aliases badly
    raw = F.grid_sample(x.float(), sampling_grid(identity_params(2).matrix, s),
                        align_corners=False)
    assert (raw - 127.5).abs().max() > 120  # pure black or white samples


@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_params_stay_within_fastai_defaults(seed):
    aug = AugConfig()
    p = sample_params(256, aug, torch.Generator().manual_seed(seed))
    scale = source_scale(p.matrix)
    # crop keeps between min_scale and all of the area, zoom shrinks it at most 1.1x, the
    # perspective warp stretches the centre by at most about its magnitude
    assert scale.max() <= 1.0 + 1.5 * aug.max_warp
    assert scale.min() >= math.sqrt(aug.min_scale) / aug.max_zoom * 0.75
    assert ((p.contrast >= 0.8 - 1e-6) & (p.contrast <= 1.25 + 1e-6)).all()
    assert (p.brightness.abs() <= 0.1 + 1e-6).all()
    assert 0.3 < (p.matrix[:, 0, 0] < 0).float().mean() < 0.7  # about half flipped


def test_params_travel_packed_and_come_back_unchanged():
    """On a GPU the draws go over in one pinned copy (AugParams.to): the packing loses
    nothing, and an augmentation from unpacked draws is the same image."""
    p = sample_params(4, AugConfig(), torch.Generator().manual_seed(3))
    q = AugParams.unpack(p.packed().clone())
    assert torch.equal(q.matrix, p.matrix) and torch.equal(q.contrast, p.contrast)
    assert torch.equal(q.brightness, p.brightness)
    assert p.to(torch.device("cpu")) is p  # already there: no copy
    aug, x = BatchAugment(24), _batch()
    assert torch.equal(aug.apply(x, p), aug.apply(x, q))


@pytest.mark.parametrize("f", [2, 3, 4, 11])
def test_box_shrink_equals_avg_pool_bit_for_bit(f: int):
    from imageclf.data.augment import box_shrink

    g = torch.Generator().manual_seed(f)
    x = torch.randint(0, 256, (2, 3, 4 * f * 3, 4 * f * 3), dtype=torch.uint8, generator=g)
    for t in (x, x.contiguous(memory_format=torch.channels_last), x.flip(-1)):
        assert torch.equal(box_shrink(t, f), F.avg_pool2d(t.float(), f))
    x[:] = 255  # the largest sums stay exact
    assert torch.equal(box_shrink(x, f), torch.full_like(box_shrink(x, f), 255.0))
