"""Reading images: files, PIL images, arrays and the photographs installed packages ship, all to RGB."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

#: Photographs shipped inside installed packages' wheels (no download), usable wherever an image path is:
#: name -> the package that ships it. The Figure 2 demo collection is made of them.
BUNDLED_PHOTOS = {
    "astronaut": "scikit-image",
    "chelsea": "scikit-image",
    "coffee": "scikit-image",
    "rocket": "scikit-image",
    "motorcycle_left": "scikit-image",
    "motorcycle_right": "scikit-image",
    "hubble_deep_field": "scikit-image",
    "immunohistochemistry": "scikit-image",
    "retina": "scikit-image",
    "camera": "scikit-image",
    "brick": "scikit-image",
    "grass": "scikit-image",
    "gravel": "scikit-image",
    "coins": "scikit-image",
    "moon": "scikit-image",
    "page": "scikit-image",
    "grace_hopper": "matplotlib",
}


class ImageReadError(ValueError):
    """An image could not be read; the message names the file and why."""


def to_rgb_pil(img: Image.Image) -> Image.Image:
    """Return ``img`` as 8-bit RGB, honouring EXIF orientation.

    Handles grayscale (L, 1, I;16, I, F), palette (P, with or without transparency), RGBA/LA (composited
    on white) and CMYK.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L"):  # 16-bit grayscale: full range is 0..65535
        a = np.asarray(img, dtype=np.float64) / 65535.0
        img = Image.fromarray((np.clip(a, 0, 1) * 255.0 + 0.5).astype(np.uint8), mode="L")
    elif img.mode in ("I", "F"):  # 32-bit integer or float: the range says which scale was meant
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((np.clip(a / _full_scale(a), 0, 1) * 255.0 + 0.5).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def _full_scale(a: np.ndarray) -> float:
    """The white level of a 32-bit integer or float image: 1, 255 or 65535, whichever its maximum fits.

    PIL stores 8-bit data converted to mode I or F, 16-bit data in mode I, and true floats in [0, 1] in
    mode F, with nothing that says which: the values do.
    """
    top = float(np.nanmax(a)) if a.size else 0.0
    return 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB.

    Raises:
        ImageReadError: the file is missing, not an image, or truncated/corrupt.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageReadError(f"'{path}' is a folder, not an image file. Hint: give one image file "
                             "(a folder of images is for the figures command's --data)")
    if not path.is_file():
        raise ImageReadError(f"image file not found: '{path}'")
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb_pil(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageReadError(f"cannot read image '{path}': {err}. Hint: is it a complete JPEG/PNG file?") from err


def bundled_photo(name: str) -> Image.Image:
    """One of the photographs that installed packages ship (``BUNDLED_PHOTOS``) as an RGB PIL image."""
    if name not in BUNDLED_PHOTOS:
        raise ImageReadError(f"unknown bundled photograph '{name}'. Hint: use one of {', '.join(BUNDLED_PHOTOS)}")
    if BUNDLED_PHOTOS[name] == "matplotlib":
        from matplotlib import cbook

        with cbook.get_sample_data(f"{name}.jpg") as f:  # an open file (matplotlib >= 3.8)
            return read_image(f.name)
    import skimage.data

    if name.startswith("motorcycle_"):  # skimage ships the stereo pair as one function
        return array_to_pil(skimage.data.stereo_motorcycle()[0 if name.endswith("left") else 1])
    return array_to_pil(getattr(skimage.data, name)())


def array_to_pil(a: np.ndarray) -> Image.Image:
    """An HxW or HxWx{1,3,4} array as an RGB PIL image, scaled by its dtype.

    uint8 is 0..255, uint16 is 0..65535, floats are [0, 1] (a float array that goes above 1 is refused:
    it is probably 0..255). Other dtypes (signed integers, bool) are refused, since no scale is implied.
    """
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"expected an HxW or HxWx3 image array, got shape {a.shape}")
    if a.dtype == np.uint16:
        a = (a.astype(np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError("image array contains NaN or infinite values")
        if a.size and (a.max() > 1.0 + 1e-6 or a.min() < -1e-6):
            raise ValueError(f"a float image must hold values in [0, 1]; this one spans [{a.min():.4g}, "
                             f"{a.max():.4g}]. "
                             "Hint: divide 0-255 data by 255, or pass it as uint8")
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"an image array of dtype {a.dtype} has no implied scale. Hint: pass uint8 (0-255), "
                         "uint16 (0-65535) or floats in [0, 1]")
    return to_rgb_pil(Image.fromarray(a))


def load_rgb(image: ImageLike) -> Image.Image:
    """Any supported image-like value as an RGB PIL image.

    Args:
        image: a file path, the name of a bundled photograph (``"astronaut"``, ``BUNDLED_PHOTOS``), a PIL image,
            an HxWx3 array (uint8, or float in [0, 1]) or a (3, H, W) tensor in [0, 1].
    """
    if isinstance(image, Image.Image):
        return to_rgb_pil(image)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) RGB tensor in [0, 1], got shape {tuple(image.shape)}")
        a = image.detach().cpu().permute(1, 2, 0)  # the dtype sets the scale, as for arrays
        if a.is_floating_point():
            return array_to_pil(a.double().numpy())
        if a.dtype == torch.uint16:
            return array_to_pil(a.to(torch.int32).numpy().astype(np.uint16))
        return array_to_pil(a.numpy())
    if isinstance(image, np.ndarray):
        return array_to_pil(image)
    if isinstance(image, (str, os.PathLike)):
        s = os.fspath(image)
        if not os.path.exists(s) and s in BUNDLED_PHOTOS:
            return bundled_photo(s)
        if not os.path.exists(s) and os.sep not in s and "." not in s:
            raise ImageReadError(
                f"image '{s}' is neither a file nor a bundled photograph. "
                f"Hint: give a path, or one of {', '.join(BUNDLED_PHOTOS)}"
            )
        return read_image(s)
    raise TypeError(f"cannot read an image from {type(image).__name__}; pass a path, PIL image or HxWx3 array")


def resized_size(wh: tuple[int, int], resize: int | None) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``resize``, as torchvision's Resize(int)."""
    if resize is None:
        return wh
    w, h = wh
    return (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)


#: a resized image of more pixels than this many crops' worth is never made: the crop's window is resampled
#: from the original alone (a 200000x1 strip would otherwise be resized to 51,200,000x256 pixels, 39 GB)
LARGE_RESIZE_CROPS = 64


def resize_center_crop(img: Image.Image, resize: int | None, crop: int | None) -> Image.Image:
    """ImageNet evaluation geometry: resize the shorter side to ``resize``, then center-crop ``crop``.

    Resize and crop follow torchvision's ``Resize(int)`` (the long side truncated) and ``CenterCrop``
    (offsets rounded). An image of extreme aspect, whose resized copy would exceed ``LARGE_RESIZE_CROPS``
    crops, is not resized whole: the crop's window alone is resampled from the original (PIL's ``box``: the
    same sampling positions and filter, the values within a level or two of the whole resize's rounding).

    Raises:
        ImageReadError: ``crop`` is larger than the resized image, or (without a crop) the resized image
            would be too large to make.
    """
    if resize is not None:
        nw, nh = resized_size(img.size, resize)
        if crop is not None and nw * nh > LARGE_RESIZE_CROPS * max(crop, 1) ** 2 and crop <= min(nw, nh):
            left, top = int(round((nw - crop) / 2.0)), int(round((nh - crop) / 2.0))
            sx, sy = img.width / nw, img.height / nh
            return img.resize((crop, crop), Image.BILINEAR,
                              box=(left * sx, top * sy, (left + crop) * sx, (top + crop) * sy))
        if crop is None and nw * nh > LARGE_RESIZE_CROPS * resize**2:
            raise ImageReadError(f"an image of {img.width}x{img.height} resized to a shorter side of {resize} would be "
                                 f"{nw}x{nh} pixels. Hint: crop it first, or give a crop size")
        img = img.resize((nw, nh), Image.BILINEAR)
    if crop is not None:
        w, h = img.size
        if crop > min(w, h):
            raise ImageReadError(f"crop {crop} is larger than the image ({w}x{h}); resize first or crop smaller")
        left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
        img = img.crop((left, top, left + crop, top + crop))
    return img


def pil_to_tensor01(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 tensor in [0, 1]."""
    a = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)
