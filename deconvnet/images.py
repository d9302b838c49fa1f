"""Reading images: files, PIL images, arrays and the photographs installed packages ship, all to RGB."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

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
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: full range is 0..65535
        a = np.asarray(img, dtype=np.float64) / 65535.0
        img = Image.fromarray((np.clip(a, 0, 1) * 255.0 + 0.5).astype(np.uint8), mode="L")
    elif img.mode == "F":  # float images: taken as [0, 1]
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((np.clip(a, 0, 1) * 255.0 + 0.5).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def read_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Open an image file as RGB.

    Raises:
        ImageReadError: the file is missing, not an image, or truncated/corrupt.
    """
    path = Path(path)
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
    """An HxW or HxWx{1,3,4} array (uint8, or float in [0, 1]) as an RGB PIL image."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"expected an HxW or HxWx3 image array, got shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all():
                raise ValueError("image array contains NaN or infinite values")
            a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        elif a.dtype == np.uint16:
            return to_rgb_pil(Image.fromarray(a))
        else:
            a = np.clip(a, 0, 255).astype(np.uint8)
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
        return array_to_pil(image.detach().cpu().permute(1, 2, 0).double().numpy())
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


def resize_center_crop(img: Image.Image, resize: int | None, crop: int | None) -> Image.Image:
    """ImageNet evaluation geometry: resize the shorter side to ``resize``, then center-crop ``crop``."""
    if resize is not None:  # as torchvision's Resize(int): the long side is truncated
        w, h = img.size
        if w <= h:
            size = (resize, int(resize * h / w))
        else:
            size = (int(resize * w / h), resize)
        img = img.resize(size, Image.BILINEAR)
    if crop is not None:  # as torchvision's CenterCrop: offsets rounded
        w, h = img.size
        if crop > min(w, h):
            raise ValueError(f"crop {crop} is larger than the image ({w}x{h}); resize first or crop smaller")
        left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
        img = img.crop((left, top, left + crop, top + crop))
    return img


def pil_to_tensor01(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 tensor in [0, 1]."""
    a = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)
