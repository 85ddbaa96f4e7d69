"""JPEG decode and presize on the training device (nvJPEG on a GPU), for the cold epoch.

`--decode device`: the cache's first build reads each JPEG's bytes on the CPU, checks its
header with Pillow (size limit, EXIF orientation; nothing is decoded there), decodes a
chunk of files at once with torchvision's `decode_jpeg` on the device, and presizes there
with the same geometry and antialiased bilinear filter as the CPU path; the uint8 slots
then come back to the cache. Anything else (PNG, GIF, CMYK JPEGs, files the device decoder
refuses) goes through the Pillow path, which also gives the reason a file is unusable.
On a CPU device the same code runs with torchvision's CPU decoder (that is what the tests
exercise); it has no JPEG draft mode, so on a CPU the default Pillow path is faster.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from imageclf.data.images import (
    MAX_PIXELS,
    Presized,
    crop_geometry,
    precheck,
    presize_into,
    to_slot,
)

JPEG_MAGIC = b"\xff\xd8\xff"
EXIF_ORIENTATION = 0x0112


def read_jpeg(path: str | Path) -> tuple[torch.Tensor, int] | None:
    """(the file's bytes as a 1-D uint8 tensor, its EXIF orientation) for a whole baseline
    RGB or grayscale JPEG within the pixel limit; None for anything the device should not
    decode."""
    if precheck(path) is not None:
        return None
    try:
        data = Path(path).read_bytes()
        if not data.startswith(JPEG_MAGIC) or not jpeg_complete(data):
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # header only: nothing decoded here
                if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                    return None
                if im.width * im.height > MAX_PIXELS:
                    return None
                orientation = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - any doubt: the Pillow path decides and says why
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation


def jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG's bytes hold its whole image: its marker segments walked from the start
    to the first start of scan (APPn segments, an EXIF thumbnail inside one included, are
    skipped by their lengths), then an end-of-image marker after it. Coded scan data cannot
    hold FF D9 (its FF bytes are stuffed), so a file cut short inside its scans has none.
    nvJPEG decodes such a file without complaint, the missing rows grey; Pillow refuses it
    and says so, so a file that fails here goes the Pillow way."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
            continue
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: the image's end must follow
            return data.find(b"\xff\xd9", end) != -1
        i = end
    return False


def exif_upright(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """(3, H, W) as decoded → upright, as Pillow's ImageOps.exif_transpose would turn it."""
    hw = (-2, -1)
    ops = {
        2: lambda t: t.flip(-1),  # mirrored
        3: lambda t: t.flip(hw),  # 180°
        4: lambda t: t.flip(-2),  # mirrored vertically
        5: lambda t: t.transpose(-2, -1),  # mirrored along the main diagonal
        6: lambda t: torch.rot90(t, -1, hw),  # 90° clockwise
        7: lambda t: t.transpose(-2, -1).flip(hw),  # mirrored along the other diagonal
        8: lambda t: torch.rot90(t, 1, hw),  # 90° counter-clockwise
    }
    op = ops.get(orientation)
    return op(x) if op is not None else x


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(1, 3, H, W) float → (1, 3, h, w), antialiased bilinear (the CPU path's filter)."""
    if x.shape[-2:] == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


def presize_tensor(x: torch.Tensor, presize: int, method: str = "crop") -> Presized:
    """ONE resize of an upright (3, H, W) uint8 image on its device → a cache slot on the
    CPU; the same geometry as `images.presize_image`."""
    _, h, w = x.shape
    f = x.unsqueeze(0).float()
    if method == "squish":
        out = _resize(f, presize, presize)
    elif method == "pad":
        scale = presize / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        out = f.new_zeros((1, 3, presize, presize))
        top, left = (presize - nh) // 2, (presize - nw) // 2
        out[..., top:top + nh, left:left + nw] = _resize(f, nh, nw)
    elif method == "crop":
        _, nw, nh, limit = crop_geometry(w, h, presize)
        out = _resize(f, nh, nw)
        if nw > limit:  # keep the centre of the long side, as the CPU path does
            left = (nw - limit) // 2
            out = out[..., left:left + limit]
        elif nh > limit:
            top = (nh - limit) // 2
            out = out[..., top:top + limit, :]
    else:
        raise ValueError(f"unknown resize method {method!r}")
    a = out[0].round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()  # (3, H', W')
    return to_slot(a) if method == "crop" else Presized(np.ascontiguousarray(a), False)


def decode_jpegs(datas: list[torch.Tensor], device: torch.device
                 ) -> list[torch.Tensor | None]:
    """Decode JPEG bytes on the device, all at once (nvJPEG batches them); a file the
    decoder refuses becomes None."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec;
        # decode_jpeg(device="cuda") is still the maintained nvJPEG entry point there.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one bad file fails the whole call: find it
            out: list[torch.Tensor | None] = []
            for d in datas:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


def decode_chunk(paths: list[tuple[int, Path]], presize: int, method: str,
                 device: torch.device, out: np.ndarray
                 ) -> list[tuple[int, bool, int, bool, str]]:
    """Presize files into their slots of `out` (N, 3, P, L); return their cache entries
    (index, ok, used length, transposed, reason). JPEGs are decoded on `device`."""
    found = [(i, read_jpeg(p)) for i, p in paths]
    jpegs = [(i, r) for i, r in found if r is not None]
    decoded = decode_jpegs([data for _, (data, _) in jpegs], device) if jpegs else []
    slots = {i: presize_tensor(exif_upright(x, orientation), presize, method)
             for (i, (_, orientation)), x in zip(jpegs, decoded, strict=True) if x is not None}
    # not a JPEG for the device, or refused by it (no slot): Pillow decides
    return [presize_into(out, i, path, presize, method, slots.get(i)) for i, path in paths]
