"""--decode device: JPEGs decoded and presized on the training device (the CPU here, nvJPEG
where a CUDA GPU is visible) give the cache the same slots as the Pillow path."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from imageclf.core.config import DataConfig
from imageclf.core.errors import ConfigError
from imageclf.data.cache import PresizeCache
from imageclf.data.dataloaders import DataLoaders
from imageclf.data.device_decode import exif_upright, jpeg_complete, read_jpeg

from .helpers import add_bad_files, make_folder_dataset


def _picture(w: int, h: int) -> Image.Image:
    """Smooth gradients with a bright block in one corner: orientation errors show."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1),
                  (x + y) * 127 // max(w + h - 2, 1)], -1).astype(np.uint8)
    a[: h // 4, : w // 4] = 255
    return Image.fromarray(a, "RGB")


def _with_orientation(im: Image.Image, orientation: int, path: Path) -> Path:
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, quality=95, exif=exif.tobytes())
    return path


def _jpeg(im: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, "JPEG", **kw)
    return b.getvalue()


def test_a_jpeg_cut_short_never_reaches_the_device_decoder(tmp_path: Path):
    """nvJPEG decodes a truncated JPEG without an error (seen on an H200: the test below
    then failed); every cut of a file must be found before it gets there."""
    whole = {"baseline": _jpeg(_picture(64, 48), quality=95),
             "progressive": _jpeg(_picture(64, 48), quality=95, progressive=True),
             "gray": _jpeg(_picture(64, 48).convert("L"))}
    # an APP1 segment holding a whole small JPEG, as an EXIF thumbnail does: its own start
    # of scan and end of image come before the main image's
    thumb = _jpeg(_picture(16, 12))
    app1 = b"Exif\0\0" + thumb
    main = whole["baseline"]
    whole["thumbnail"] = (main[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
                          + main[2:])
    whole["trailing bytes"] = main + b"\0" * 100
    for name, data in whole.items():
        assert jpeg_complete(data), name
        for cut in [*range(3, len(data) - 1, 7), len(data) - 2, len(data) - 1]:
            if name == "trailing bytes" and cut >= len(main):
                continue
            assert not jpeg_complete(data[:cut]), (name, cut, len(data))
    (tmp_path / "whole.jpg").write_bytes(main)
    (tmp_path / "cut.jpg").write_bytes(main[: len(main) * 3 // 4])
    assert read_jpeg(tmp_path / "whole.jpg") is not None
    assert read_jpeg(tmp_path / "cut.jpg") is None


def test_exif_orientations_match_pillow():
    a = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    for o in range(1, 9):
        im = Image.fromarray(a)
        exif = im.getexif()
        exif[0x0112] = o
        im.info["exif"] = exif.tobytes()
        ref = np.asarray(ImageOps.exif_transpose(im))
        got = exif_upright(torch.from_numpy(a).permute(2, 0, 1), o).permute(1, 2, 0).numpy()
        assert got.shape == ref.shape and np.array_equal(got, ref), o


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU (nvJPEG)"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["crop", "squish", "pad"])
def test_device_decode_fills_the_cache_like_pillow(tmp_path: Path, method: str, device: str):
    d = tmp_path / "imgs"
    d.mkdir()
    files = [
        _picture(64, 48).save(d / "landscape.jpg", quality=95) or d / "landscape.jpg",
        _picture(40, 70).save(d / "portrait.jpg", quality=95) or d / "portrait.jpg",
        _picture(150, 40).save(d / "panorama.jpg", quality=95) or d / "panorama.jpg",
        _picture(50, 50).convert("L").save(d / "gray.jpg") or d / "gray.jpg",
        _picture(60, 40).convert("CMYK").save(d / "cmyk.jpg") or d / "cmyk.jpg",
        _picture(60, 40).save(d / "image.png") or d / "image.png",
        _picture(60, 40).save(d / "png_named.jpg", format="PNG") or d / "png_named.jpg",
        *[_with_orientation(_picture(56, 40), o, d / f"exif{o}.jpg") for o in (3, 6, 7, 8)],
    ]
    bad = add_bad_files(d / "bad")
    files += sorted((d / "bad").iterdir())
    assert read_jpeg(d / "cmyk.jpg") is None and read_jpeg(d / "image.png") is None
    assert read_jpeg(d / "exif6.jpg")[1] == 6
    caches = {}
    for how, dev in (("pil", None), ("device", torch.device(device))):
        c = PresizeCache(files, 32, method, tmp_path / how, decode_device=dev)
        c.build()
        c.wait()
        caches[how] = c
    pil, devc = caches["pil"], caches["device"]
    assert np.array_equal(pil.ok, devc.ok)
    assert pil.unreadable() == devc.unreadable()
    assert len(devc.unreadable()) == len(bad)
    assert np.array_equal(pil.lengths, devc.lengths)
    assert np.array_equal(pil.transposed, devc.transposed)
    for i in np.flatnonzero(pil.ok):
        n = pil.lengths[i]
        a = torch.from_numpy(pil.data[i][:, :, :n].astype(np.float32))
        b = torch.from_numpy(devc.data[i][:, :, :n].astype(np.float32))
        # same geometry and filter; the JPEG decoders and the centre crop's sub-pixel start
        # (Pillow resizes a fractional box) differ a little, at edges most
        assert (a - b).abs().mean() < 3, files[i].name
        coarse = (F.adaptive_avg_pool2d(a, 4) - F.adaptive_avg_pool2d(b, 4)).abs().max()
        assert coarse < 12, (files[i].name, coarse)  # same picture, same way up


def test_device_decode_through_the_loader(tmp_path: Path):
    data = make_folder_dataset(tmp_path / "data", n_train=4, n_valid=2)
    cfg = DataConfig.build(path=str(data), size=24, presize=32, bs=4, decode="device")
    dls = DataLoaders.from_config(cfg)
    assert dls.train.cache.decode_device == torch.device("cpu")
    xs = [x for x, _ in dls.train]
    assert sum(len(x) for x in xs) == 12 and dls.train.cache.stats.decoded == 12
    with pytest.raises(ConfigError, match="--decode"):
        DataConfig.build(path=str(data), decode="gpu")
