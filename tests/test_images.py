from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageclf.data.images import (
    UnreadableImage,
    load_presized,
    open_rgb,
    presize_image,
    square_crop,
    verify_file,
)

from .helpers import add_bad_files, solid


def _rgb_at(im: Image.Image, xy) -> np.ndarray:
    return np.asarray(im.convert("RGB"))[xy[1], xy[0]].astype(int)


def test_unreadable_kinds_are_reported_not_raised(tmp_path: Path):
    expected = add_bad_files(tmp_path)
    for name, fragment in expected.items():
        reason = verify_file(tmp_path / name)
        if reason is None:  # header looked fine (truncated data): the decode reports it
            with pytest.raises(UnreadableImage) as e:
                load_presized(tmp_path / name, 32)
            reason = str(e.value)
        assert fragment in reason, (name, reason)


def test_grayscale_cmyk_palette_become_rgb(tmp_path: Path):
    Image.new("L", (20, 20), 77).save(tmp_path / "g.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # red in CMYK
    Image.new("RGB", (20, 20), (10, 200, 30)).convert("P").save(tmp_path / "p.gif")
    assert list(_rgb_at(open_rgb(tmp_path / "g.png"), (5, 5))) == [77, 77, 77]
    r, g, b = _rgb_at(open_rgb(tmp_path / "c.jpg"), (5, 5))
    assert r > 200 and g < 40 and b < 40
    r, g, b = _rgb_at(open_rgb(tmp_path / "p.gif"), (5, 5))
    assert g > 150 and r < 60 and b < 80
    assert open_rgb(tmp_path / "g.png").mode == "RGB"


def test_transparency_is_composited_on_white_not_black(tmp_path: Path):
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 10, 20))
    rgba.save(tmp_path / "a.png")
    Image.new("LA", (20, 20), (0, 0)).save(tmp_path / "la.png")
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0])
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    im = open_rgb(tmp_path / "a.png")
    assert list(_rgb_at(im, (15, 5))) == [255, 255, 255]
    assert list(_rgb_at(im, (5, 5))) == [0, 0, 255]
    assert list(_rgb_at(open_rgb(tmp_path / "la.png"), (5, 5))) == [255, 255, 255]
    assert list(_rgb_at(open_rgb(tmp_path / "pt.png"), (5, 5))) == [255, 255, 255]


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path):
    a = np.full((16, 16), 32768, np.uint16)  # mid grey in 16 bits
    Image.fromarray(a).save(tmp_path / "h.png")
    r, g, b = _rgb_at(open_rgb(tmp_path / "h.png"), (3, 3))
    assert abs(r - 128) <= 1 and r == g == b


@pytest.mark.parametrize("fmt,ext", [("WEBP", "webp"), ("TIFF", "tif"), ("BMP", "bmp"),
                                     ("PNG", "jpg")])
def test_other_formats_and_misnamed_files(tmp_path: Path, fmt: str, ext: str):
    solid((200, 30, 30), (30, 20)).save(tmp_path / f"x.{ext}", format=fmt)
    assert verify_file(tmp_path / f"x.{ext}") is None
    r, g, b = _rgb_at(open_rgb(tmp_path / f"x.{ext}"), (10, 10))
    assert r > 150 and g < 80 and b < 80


def test_animated_gif_uses_first_frame(tmp_path: Path):
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    r, g, b = _rgb_at(open_rgb(tmp_path / "anim.gif"), (5, 5))
    assert r > 200 and b < 50


def test_exif_rotated_jpeg_is_upright(tmp_path: Path):
    upright = Image.new("RGB", (40, 20), (220, 0, 0))  # wide: red top half, blue bottom
    upright.paste((0, 0, 220), (0, 10, 40, 20))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways saves it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    stored.save(tmp_path / "r.jpg", exif=exif, quality=95)
    im = open_rgb(tmp_path / "r.jpg")
    assert im.size == (40, 20)
    assert _rgb_at(im, (20, 3))[0] > 150 and _rgb_at(im, (20, 16))[2] > 150


def test_tiny_image_is_upscaled(tmp_path: Path):
    solid((0, 200, 0), (3, 2)).save(tmp_path / "t.png")
    p = load_presized(tmp_path / "t.png", 32)
    assert p.array.shape[:2] == (3, 32) and p.array.dtype == np.uint8


def test_large_jpeg_is_decoded_at_reduced_size(tmp_path: Path):
    solid((100, 100, 100), (2000, 1600)).save(tmp_path / "big.jpg", quality=70)
    im = open_rgb(tmp_path / "big.jpg", min_short_side=150)
    assert min(im.size) >= 150 and im.size[0] <= 500  # decoded at 1/4 or 1/8, not 2000 wide


def test_presize_methods_shapes_and_orientation():
    portrait = Image.new("RGB", (60, 120), (0, 0, 0))
    portrait.paste((255, 255, 255), (0, 0, 60, 60))  # white top half
    crop = presize_image(portrait, 30, "crop")
    assert crop.transposed and crop.array.shape == (3, 30, 38)  # long side kept up to 1.25x
    sq = square_crop(crop)
    assert sq.shape == (3, 30, 30)
    top = square_crop(crop, offset=0)
    assert top[:, 2, 15].min() > 200 and top[:, 27, 15].max() < 60  # upright: white on top
    assert presize_image(portrait, 30, "squish").array.shape == (3, 30, 30)
    pad = presize_image(portrait, 30, "pad").array
    assert pad.shape == (3, 30, 30) and pad[:, 15, 0].max() == 0  # black side padding


def test_a_presized_portrait_comes_back_upright(tmp_path: Path):
    Image.new("RGB", (40, 64), (10, 200, 30)).save(tmp_path / "portrait.png")
    pre = load_presized(tmp_path / "portrait.png", 32)
    assert pre.transposed and pre.array.shape[1] == 32
    hwc = pre.hwc()
    assert hwc.shape[1] == 32 and hwc.shape[0] > hwc.shape[1] and hwc.shape[2] == 3
    assert tuple(hwc[hwc.shape[0] // 2, 16]) == (10, 200, 30)
