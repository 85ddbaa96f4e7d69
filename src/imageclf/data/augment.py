"""Batch augmentation: pure 3×3 matrix builders and the ONE-grid_sample batch transform.

Coordinates are grid_sample's normalised ones, x and y in [-1, 1]. Every matrix maps an
*output* point (homogeneous column vector) to the *source* point it samples, so composing
the transforms is a matrix product and the whole augmentation, random-resized crop to
`size` included, is one projective map per image: one grid, one resample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imageclf.core.config import AugConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _eye(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.eye(3, dtype=dtype).repeat(n, 1, 1)  # (B, 3, 3)


def flip_matrix(flip: torch.Tensor) -> torch.Tensor:
    """Horizontal flip where `flip` (B,) is true: x → -x."""
    m = _eye(flip.shape[0])
    m[:, 0, 0] = 1.0 - 2.0 * flip.float()
    return m


def rotate_matrix(degrees: torch.Tensor) -> torch.Tensor:
    """Rotation by `degrees` (B,) about the centre."""
    t = degrees.float() * (math.pi / 180.0)
    c, s = torch.cos(t), torch.sin(t)
    m = _eye(t.shape[0])
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def zoom_matrix(scale: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """Zoom in by `scale` >= 1 (B,) around the source point (cx, cy)."""
    m = _eye(scale.shape[0])
    m[:, 0, 0] = m[:, 1, 1] = 1.0 / scale.float()
    m[:, 0, 2], m[:, 1, 2] = cx.float(), cy.float()
    return m


def crop_matrix(half_w: torch.Tensor, half_h: torch.Tensor, cx: torch.Tensor,
                cy: torch.Tensor) -> torch.Tensor:
    """Crop the box centred at (cx, cy) with half extents (half_w, half_h), all (B,)."""
    m = _eye(half_w.shape[0])
    m[:, 0, 0], m[:, 1, 1] = half_w.float(), half_h.float()
    m[:, 0, 2], m[:, 1, 2] = cx.float(), cy.float()
    return m


def homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The projective maps taking 4 points `src` (B, 4, 2) to `dst` (B, 4, 2): (B, 3, 3)."""
    b = src.shape[0]
    x, y = src[..., 0].double(), src[..., 1].double()
    u, v = dst[..., 0].double(), dst[..., 1].double()
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)  # (B, 4, 8)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], 1)  # (B, 8, 8)
    rhs = torch.cat([u, v], 1).unsqueeze(-1)  # (B, 8, 1)
    h = torch.linalg.solve(a, rhs).squeeze(-1)  # (B, 8)
    return torch.cat([h, torch.ones(b, 1, dtype=h.dtype)], 1).view(b, 3, 3).float()


_CORNERS = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
# [0, 1]² → [-1, 1]²: the unit square of the closed-form square-to-quad map
_FROM_UNIT = torch.tensor([[2.0, 0.0, -1.0], [0.0, 2.0, -1.0], [0.0, 0.0, 1.0]])
_TO_UNIT = torch.tensor([[0.5, 0.0, 0.5], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])


def square_to_quad(quad: torch.Tensor) -> torch.Tensor:
    """Closed-form projective map of the unit square's corners (0,0), (1,0), (1,1), (0,1)
    onto `quad` (B, 4, 2) (Heckbert 1989): (B, 3, 3), no linear solve."""
    x, y = quad[..., 0], quad[..., 1]  # (B, 4)
    sx = x[:, 0] - x[:, 1] + x[:, 2] - x[:, 3]
    sy = y[:, 0] - y[:, 1] + y[:, 2] - y[:, 3]
    dx1, dx2 = x[:, 1] - x[:, 2], x[:, 3] - x[:, 2]
    dy1, dy2 = y[:, 1] - y[:, 2], y[:, 3] - y[:, 2]
    den = dx1 * dy2 - dx2 * dy1
    g = (sx * dy2 - dx2 * sy) / den
    h = (dx1 * sy - sx * dy1) / den
    row0 = torch.stack([x[:, 1] - x[:, 0] + g * x[:, 1], x[:, 3] - x[:, 0] + h * x[:, 3],
                        x[:, 0]], -1)
    row1 = torch.stack([y[:, 1] - y[:, 0] + g * y[:, 1], y[:, 3] - y[:, 0] + h * y[:, 3],
                        y[:, 0]], -1)
    row2 = torch.stack([g, h, torch.ones_like(g)], -1)
    return torch.stack([row0, row1, row2], 1)


def warp_corners(mx: torch.Tensor, my: torch.Tensor) -> torch.Tensor:
    """Where fastai's `Warp` moves the corners (-1,-1), (1,-1), (1,1), (-1,1): (B, 4, 2)."""
    b = mx.shape[0]
    mx, my = mx.view(b, 1).float(), my.view(b, 1).float()
    dx = torch.cat([-my, my, -my, my], 1)  # (B, 4): x moves with the y magnitude, as fastai
    dy = torch.cat([-mx, -mx, mx, mx], 1)
    src = _CORNERS.expand(b, 4, 2)
    return torch.stack([src[..., 0] + dx, src[..., 1] + dy], -1)


def warp_matrix(mx: torch.Tensor, my: torch.Tensor) -> torch.Tensor:
    """Perspective warp (fastai's `Warp`) with magnitudes mx, my (B,): output → source."""
    return square_to_quad(warp_corners(mx, my)) @ _TO_UNIT


def apply_matrix(m: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map points (B, N, 2) through projective matrices (B, 3, 3): (B, N, 2)."""
    ones = torch.ones(points.shape[:-1] + (1,), dtype=points.dtype, device=points.device)
    h = torch.cat([points, ones], -1) @ m.transpose(1, 2)
    return h[..., :2] / h[..., 2:3]


_POINTS: dict[tuple[int, str], torch.Tensor] = {}


def output_points(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Homogeneous pixel-centre coordinates of a size×size output (align_corners=False):
    (size*size, 3) rows (x, y, 1), cached per size and device."""
    key = (size, str(device))
    pts = _POINTS.get(key)
    if pts is None:
        t = (torch.arange(size, dtype=torch.float32, device=device) * 2 + 1) / size - 1
        yy, xx = torch.meshgrid(t, t, indexing="ij")
        pts = torch.stack([xx.reshape(-1), yy.reshape(-1), torch.ones_like(xx.reshape(-1))], -1)
        _POINTS[key] = pts
    return pts


def is_projective(m: torch.Tensor) -> bool:
    """Whether any of the maps m (B, 3, 3) has a perspective row (reads m: on a GPU tensor
    that waits for the device, so ask it of the host copy)."""
    return bool((m[:, 2, :2] != 0).any())


def sampling_grid(m: torch.Tensor, size: int, projective: bool | None = None) -> torch.Tensor:
    """The grid_sample grid (B, size, size, 2) of projective matrices m (B, 3, 3).
    `projective`: `is_projective(m)` when already known."""
    b = m.shape[0]
    pts = output_points(size, m.device).expand(b, -1, -1)  # (B, N, 3), no copy
    # bmm writes the grid contiguously: grid_sample is twice as slow on a strided grid
    grid = torch.bmm(pts, m[:, :2].transpose(1, 2))  # (B, N, 2)
    if is_projective(m) if projective is None else projective:  # divide by z
        grid = grid.div_(torch.bmm(pts, m[:, 2:].transpose(1, 2)))
    return grid.view(b, size, size, 2)


def source_scale(m: torch.Tensor) -> torch.Tensor:
    """Linear scale of each map at the output centre (B,): sqrt |det Jacobian|."""
    a = m[:, :2, :2] - m[:, :2, 2:3] * m[:, 2:3, :2]  # Jacobian at (0, 0), with z = 1 there
    return a.det().abs().sqrt()


@dataclass(frozen=True)
class AugParams:
    """The random draws of one batch: the composed matrix and the lighting factors."""

    matrix: torch.Tensor  # (B, 3, 3) output → source
    contrast: torch.Tensor  # (B,)
    brightness: torch.Tensor  # (B,)

    def to(self, dev: torch.device) -> AugParams:
        """The draws on `dev` in ONE host→device copy (pinned and non-blocking on a GPU):
        a plain `.to(dev)` of each tensor would wait for the device's queue every time."""
        if self.matrix.device == dev:
            return self
        packed = self.packed()
        if dev.type == "cuda":
            packed = packed.pin_memory()
        return AugParams.unpack(packed.to(dev, non_blocking=True))

    def packed(self) -> torch.Tensor:
        """(B, 11) float32 rows: the matrix's 9 entries, contrast, brightness."""
        b = self.matrix.shape[0]
        return torch.cat([self.matrix.reshape(b, 9).float(), self.contrast.view(b, 1).float(),
                          self.brightness.view(b, 1).float()], 1)

    @staticmethod
    def unpack(packed: torch.Tensor) -> AugParams:
        """The inverse of `packed` (views into it)."""
        return AugParams(packed[:, :9].view(-1, 3, 3), packed[:, 9], packed[:, 10])


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def _gate(n: int, p: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def sample_params(n: int, aug: AugConfig, generator: torch.Generator | None = None) -> AugParams:
    """Draw flip, rotate, zoom, warp, random-resized crop and lighting for n images."""
    g = generator
    flip = _gate(n, aug.flip_p, g)
    rot = _uniform(n, -aug.max_rotate, aug.max_rotate, g) * _gate(n, aug.p_affine, g)
    zoom = _uniform(n, 1.0, aug.max_zoom, g)
    zoom = torch.where(_gate(n, aug.p_affine, g), zoom, torch.ones(n))
    zx = (1 - 1 / zoom) * _uniform(n, -1.0, 1.0, g)
    zy = (1 - 1 / zoom) * _uniform(n, -1.0, 1.0, g)
    warp_on = _gate(n, aug.p_affine, g).float()
    wx = _uniform(n, -aug.max_warp, aug.max_warp, g) * warp_on
    wy = _uniform(n, -aug.max_warp, aug.max_warp, g) * warp_on
    area = _uniform(n, aug.min_scale, 1.0, g)
    log_r = _uniform(n, math.log(aug.ratio[0]), math.log(aug.ratio[1]), g)
    half_w = (area * log_r.exp()).sqrt().clamp(max=1.0)
    half_h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx = (1 - half_w) * _uniform(n, -1.0, 1.0, g)
    cy = (1 - half_h) * _uniform(n, -1.0, 1.0, g)
    m = (flip_matrix(flip) @ rotate_matrix(rot) @ zoom_matrix(zoom, zx, zy)
         @ warp_matrix(wx, wy) @ crop_matrix(half_w, half_h, cx, cy))
    light = _gate(n, aug.p_lighting, g)
    lmax = min(aug.max_lighting, 0.99)
    contrast = torch.exp(_uniform(n, math.log(1 - lmax), -math.log(1 - lmax), g))
    brightness = _uniform(n, -lmax / 2, lmax / 2, g)
    contrast = torch.where(light, contrast, torch.ones(n))
    brightness = torch.where(light, brightness, torch.zeros(n))
    return AugParams(m, contrast, brightness)


def identity_params(n: int) -> AugParams:
    """The validation transform: the whole image, no lighting change."""
    return AugParams(_eye(n), torch.ones(n), torch.zeros(n))


def box_shrink(x: torch.Tensor, f: int) -> torch.Tensor:
    """The mean of each f×f block of uint8 images (B, C, H, W), H and W multiples of f:
    (B, C, H/f, W/f) float32, equal to `avg_pool2d(x.float(), f)` bit for bit (the sums
    are exact integers in int16 for f <= 11), with a quarter of its memory traffic: the
    full-size image never exists as float."""
    rows = x[:, :, 0::f].to(torch.int16)  # (B, C, H/f, W)
    for i in range(1, f):
        rows += x[:, :, i::f]
    out = rows[..., 0::f].clone()  # (B, C, H/f, W/f)
    for j in range(1, f):
        out += rows[..., j::f]
    return out.float().div_(f * f)


class BatchAugment:
    """uint8 (B, 3, P, P) → normalised float (B, 3, size, size), ONE grid_sample per batch.

    Training draws random parameters; validation uses the identity and is deterministic.
    When every image in the batch is shrunk by 2× or more, the batch is first
    area-averaged by an integer factor so the bilinear resample does not alias.
    """

    def __init__(self, size: int, aug: AugConfig | None = None,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 channels_last: bool = True) -> None:
        self.size = size
        self.aug = aug or AugConfig()
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.channels_last = channels_last
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _stats(self, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std on `dev`, copied there once."""
        if dev not in self._on_device:
            self._on_device[dev] = (self.mean.to(dev), self.std.to(dev))
        return self._on_device[dev]

    def __call__(self, x: torch.Tensor, train: bool = True,
                 generator: torch.Generator | None = None,
                 params: AugParams | None = None) -> torch.Tensor:
        """Augment (train) or centre-resize (valid) a uint8 batch on its own device."""
        b = x.shape[0]
        if params is None:
            params = sample_params(b, self.aug, generator) if train else identity_params(b)
        return self.apply(x, params, clamp=train)

    def apply(self, x: torch.Tensor, params: AugParams, clamp: bool = True) -> torch.Tensor:
        """Resample x (B, 3, P, P) uint8 with `params` and normalise: (B, 3, S, S) float32."""
        dev, b = x.device, x.shape[0]
        on_dev = params.to(dev)
        shrink = float(source_scale(params.matrix).min()) * x.shape[-1] / self.size
        f = int(shrink) if shrink >= 2.0 else 1
        if f > 1 and x.shape[-1] % f == 0 and x.dtype == torch.uint8 and f <= 11:
            xf = box_shrink(x, f)  # (B, 3, P/f, P/f) float32
        else:
            xf = x.float()  # (B, 3, P, P) float32, values 0..255
            if f > 1:
                xf = (F.avg_pool2d(xf, f) if x.shape[-1] % f == 0
                      else F.adaptive_avg_pool2d(xf, x.shape[-1] // f))
        grid = sampling_grid(on_dev.matrix, self.size, is_projective(params.matrix))
        pad = self.aug.pad_mode
        out = F.grid_sample(xf, grid, mode="bilinear", padding_mode=pad, align_corners=False)
        # lighting and normalisation fused into one per-(image, channel) affine map
        mean, std = self._stats(dev)
        con = on_dev.contrast.view(b, 1)
        bri = on_dev.brightness.view(b, 1)
        scale = (con / (255.0 * std)).view(b, 3, 1, 1)
        shift = ((0.5 - 0.5 * con + bri - mean) / std).view(b, 3, 1, 1)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        res = torch.empty_like(out, memory_format=fmt)
        torch.addcmul(shift, out, scale, out=res)  # the layout change rides on this pass
        if clamp:  # keep lit pixels inside [0, 1] before normalisation
            for c in range(3):
                lo, hi = float(-self.mean[c] / self.std[c]), float((1 - self.mean[c]) / self.std[c])
                res[:, c].clamp_(lo, hi)
        return res

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised batch → float RGB in [0, 1], for pictures."""
        dev = x.device
        std, mean = self.std.to(dev).view(1, 3, 1, 1), self.mean.to(dev).view(1, 3, 1, 1)
        return (x.float() * std + mean).clamp(0, 1)
