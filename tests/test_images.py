"""Loading and resizing images: the scales follow the dtype, huge images are not resized whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deconvnet.data import ImageFolder
from deconvnet.images import load_rgb

from conftest import _photo, _small_net


def test_image_scales_follow_the_dtype():
    rng = np.random.default_rng(1)
    a8 = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    expected = np.asarray(load_rgb(a8))
    assert np.array_equal(np.asarray(load_rgb(torch.from_numpy(a8).permute(2, 0, 1))), expected)  # uint8 tensor: 0-255
    a16 = a8.astype(np.uint16) * 257  # the same picture in 16 bits
    assert np.array_equal(np.asarray(load_rgb(a16)), expected)
    assert np.array_equal(np.asarray(load_rgb(torch.from_numpy(a16.astype(np.int32)).to(torch.uint16).permute(2, 0,
                                                                                                              1))),
                                                                                                              expected)
    gray = a8[:, :, 0]
    for mode, data in (("I", gray.astype(np.int32)), ("F", gray.astype(np.float32)), ("F",
                                                                                      gray.astype(np.float32) / 255)):
        got = np.asarray(load_rgb(Image.fromarray(data, mode=mode)))[:, :, 0]
        assert np.abs(got.astype(int) - gray).max() <= 1, mode  # neither black nor white
    with pytest.raises(ValueError, match=r"float image must hold values in \[0, 1\].*divide 0-255 data by 255"):
        load_rgb(torch.from_numpy(a8).permute(2, 0, 1).float())
    with pytest.raises(ValueError, match="int64 has no implied scale"):
        load_rgb(a8.astype(np.int64))






# --- 10. a huge-aspect image --------------------------------------------------------------------------------------
def test_a_200000x1_png_is_not_resized_whole(tmp_path, monkeypatch):
    from deconvnet.images import resize_center_crop

    folder = tmp_path / "images"
    folder.mkdir()
    strip = np.zeros((1, 200000, 3), np.uint8)
    strip[0, :, 0] = np.arange(200000) % 251
    Image.fromarray(strip).save(folder / "strip.png")
    _photo(1, (300, 280)).save(folder / "photo.png")
    asked: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        asked.append(tuple(size))
        if size[0] * size[1] > 10**8:
            raise MemoryError(f"asked PIL for a {size[0]}x{size[1]} resize")
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    data = ImageFolder(folder, preprocessing=_small_net().preprocessing)
    x, i = data[data.paths.index(folder / "strip.png")]
    assert x is not None and x.shape == (3, 224, 224) and max(w * h for w, h in asked) <= 224 * 224 * 64
    # the window is the strip's centre, row 0 stretched over every row: the red channel is one row repeated
    red = data.rgb(data.paths.index(folder / "strip.png"))
    a = np.asarray(red)
    assert (a == a[:1]).all()
    centre = 200000 // 2  # the resized strip's centre crop covers about 0.875 source pixels around the middle
    assert abs(int(a[0, 112, 0]) - strip[0, centre, 0]) <= 2
    # an ordinary photo keeps the whole-resize path, byte for byte as before
    photo = _photo(1, (300, 280))
    full = photo.resize((256, int(256 * 300 / 280)), Image.BILINEAR)
    left, top = int(round((256 - 224) / 2)), int(round((full.height - 224) / 2))
    assert np.array_equal(np.asarray(resize_center_crop(photo, 256, 224)),
                          np.asarray(full.crop((left, top, left + 224, top + 224))))


def test_the_windowed_resize_is_the_whole_resize_within_rounding():
    from deconvnet.images import resize_center_crop

    rng = np.random.default_rng(3)
    img = Image.fromarray((rng.random((9, 4000, 3)) * 255).astype(np.uint8))  # 4000:9, resized: 7111x16 > 64 crops
    windowed = np.asarray(resize_center_crop(img, 16, 8)).astype(int)
    full = img.resize((int(16 * 4000 / 9), 16), Image.BILINEAR)
    left = int(round((full.width - 8) / 2))
    whole = np.asarray(full.crop((left, 4, left + 8, 12))).astype(int)
    assert np.abs(windowed - whole).max() <= 2
