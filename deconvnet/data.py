"""Image collections for scans over many inputs (Figure 2): a folder of files, or the offline demo set.

Both collections are ``torch.utils.data.Dataset`` objects whose items are ``(x, i)``: ``x`` the
(3, crop, crop) float32 model input (the net's ``Preprocessing`` applied to RGB in [0, 1]) and ``i`` the
item's index. ``rgb(i)`` gives the same item as a display PIL image (after resize and crop), from which
receptive-field patches are cut, ``label(i)`` a short name for captions, and ``group(i)`` the source an
item comes from (the file; for the demo collection, the photograph its crop was cut from): a scan keeps
at most one entry per group and channel, so that one feature's top 9 come from 9 different sources.

A folder may hold files that cannot be read. They never stop a scan:

* at construction, every file's header is opened (cheap: no pixel decoding, about 3 s per 50,000 JPEGs
  on a warm disk; under torchrun each rank opens its share and the ranks' findings are merged); files that
  PIL cannot identify are left out of ``paths`` and counted in one ``UnreadableImagesWarning``;
* files whose header is fine but whose pixels cannot be decoded (truncated, corrupt) are found when they
  are loaded: ``__getitem__`` then returns ``(None, i)``, and ``collate`` drops those items, reporting
  their indices in ``Batch.skipped``. ``batches`` wraps a ``DataLoader`` with ``collate`` and, when the
  iteration ends, records these files in the dataset and counts them in one warning.

Typical use::

    ds = load_dataset("/data/imagenet/val", preprocessing=net.preprocessing)   # or None for the demo
    for x, index in batches(ds, batch_size=64, num_workers=4):
        ...                                  # x: (B, 3, 224, 224), index: (B,) int64
    patch_source = ds.rgb(int(index[0]))     # PIL image, 224 x 224

or, with a ``DataLoader`` of one's own::

    loader = DataLoader(ds, batch_size=64, num_workers=4, collate_fn=collate)
    for batch in loader:                     # batch.x, batch.index, batch.skipped
        if len(batch.index) == 0:            # every item of this batch was unreadable
            continue
        ...
"""

from __future__ import annotations

import hashlib
import operator
import os
import warnings
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from . import distributed
from .constants import DEFAULT_SIZE
from .images import BUNDLED_PHOTOS, ImageReadError, bundled_photo, pil_to_tensor01, read_image, resize_center_crop
from .items import _NAMED, Items, UnreadableImagesWarning
from .items import Batch as Batch  # re-exported: the data module's public names stay where they were
from .items import Collection as Collection
from .items import batches as batches
from .items import collate as collate
from .preprocessing import Preprocessing

#: File name endings read by ``ImageFolder`` (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Errors that mean "this file is not a readable image" (as opposed to a bug in our code). PIL raises
# DecompressionBombError, which is not an OSError, for absurdly large images.
_READ_ERRORS = (ImageReadError, UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)

def _check_preprocessing(preprocessing: Any) -> None:
    if not callable(getattr(preprocessing, "forward", None)):
        raise TypeError(
            f"preprocessing must be a deconvnet Preprocessing, got {type(preprocessing).__name__}. "
            "Hint: pass net.preprocessing"
        )


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive number of pixels, got {value!r}")
    return value


def _to_input(img: Image.Image, preprocessing: Preprocessing) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 model input."""
    return preprocessing.forward(pil_to_tensor01(img).unsqueeze(0))[0].contiguous()


def _header_error(path: Path) -> str | None:
    """Why ``path`` is not an image file, reading only its header; None when it looks fine."""
    try:
        with Image.open(path) as im:
            w, h = im.size
        if w < 1 or h < 1:
            return f"empty image ({w}x{h})"
        return None
    except _READ_ERRORS as err:
        return f"{type(err).__name__}: {err}"


def _find_images(root: Path) -> list[Path]:
    """All files under ``root`` with an accepted extension, in a deterministic order.

    Follows symbolic links to folders (ImageNet copies are often assembled from links) but visits each
    real folder once, so that a link cycle cannot loop forever.
    """
    found: list[Path] = []
    seen: set[str] = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        found.extend(Path(folder) / f for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


class ImageFolder(Dataset):
    """All image files under a folder, as model inputs with the ImageNet evaluation geometry.

    Files are found recursively (extensions in ``IMAGE_EXTENSIONS``, any case) and sorted by their path
    relative to ``root``, so indices are the same on every run and machine. Each image is read as RGB
    (EXIF orientation applied; grayscale, palette, RGBA and 16-bit converted by
    ``deconvnet.images.to_rgb_pil``), its shorter side resized to ``resize``, center-cropped to
    ``crop`` x ``crop`` and mapped to model input by ``preprocessing``. See the module docstring for
    what happens to unreadable files.

    Args:
        root: the folder.
        preprocessing: the net's ``Preprocessing`` (``net.preprocessing``).
        resize: shorter side after resizing, in pixels (ImageNet practice: 256).
        crop: side of the center crop (ImageNet practice: 224); at most ``resize``.
        progress: show a progress bar while checking the files; None: only for 5,000 files or more.

    Attributes:
        root: the folder, as given.
        paths: the image files (absolute or relative as ``root`` is), index ``i`` is ``paths[i]``.
        skipped: unreadable files and why, as ``{path: reason}``: those left out at construction, and
            those found undecodable while loading (these stay in ``paths``, so indices do not move).
        n_found: how many files with an accepted extension were found.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``root`` is not a folder, holds no readable image, or ``crop``/``resize`` are invalid.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        preprocessing: Preprocessing,
        resize: int = 256,
        crop: int = DEFAULT_SIZE,
        progress: bool | None = None,
    ) -> None:
        _check_preprocessing(preprocessing)
        self.resize = _check_size("resize", resize)
        self.crop = _check_size("crop", crop)
        if crop > resize:
            raise ValueError(f"crop {crop} is larger than resize {resize}. Hint: use crop <= resize (e.g. 224, 256)")
        self.preprocessing = preprocessing
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"image folder '{self.root}' does not exist. Hint: check the path")
        if not self.root.is_dir():
            raise ValueError(f"'{self.root}' is a file, not a folder. Hint: give the folder that holds the images")

        candidates = _find_images(self.root)
        self.n_found = len(candidates)
        # what identifies the files' contents cheaply: a scan of the same paths after an image was
        # overwritten must not be taken for a finished one
        digest = hashlib.sha256()
        for path in candidates:
            st = path.stat()
            digest.update(f"{path.relative_to(self.root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        self.files_digest = digest.hexdigest()[:16]
        self.skipped: dict[Path, str] = {}
        show = len(candidates) >= 5000 if progress is None else progress
        # under torchrun each rank opens only its share of the headers; the ranks' findings are merged, so
        # every rank leaves out the same files
        mine = distributed.shard(range(len(candidates)))
        bad = {i: r for i in tqdm(mine, desc="checking images", unit="file", disable=not show)
               if (r := _header_error(candidates[i])) is not None}
        for part in distributed.all_gather(bad):
            bad.update(part)
        self.paths: list[Path] = [p for i, p in enumerate(candidates) if i not in bad]
        self.skipped = {candidates[i]: bad[i] for i in sorted(bad)}

        if not self.paths:
            exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
            what = f"{self.n_found} files could not be read" if self.n_found else "no files"
            raise ValueError(
                f"no readable images under '{self.root}' ({what} with extension {exts}). "
                "Hint: point to the folder that holds the images (subfolders are searched)"
            )
        if self.skipped:
            self._warn(list(self.skipped), f"of {self.n_found} image files under '{self.root}' are unreadable")

    def _warn(self, paths: list[Path], what: str) -> None:
        named = "; ".join(f"{self._rel(p)} ({self.skipped[p]})" for p in paths[:_NAMED])
        more = f"; and {len(paths) - _NAMED} more" if len(paths) > _NAMED else ""
        warnings.warn(f"skipped {len(paths)} {what}: {named}{more}", UnreadableImagesWarning, stacklevel=3)

    def _rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def __len__(self) -> int:
        return len(self.paths)

    def _path(self, i: int) -> tuple[int, Path]:
        i = operator.index(i)
        n = len(self.paths)
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for {n} images")
        return i % n, self.paths[i]

    def rgb(self, i: int) -> Image.Image:
        """Image ``i`` as a display RGB PIL image, resized and cropped exactly like the model input.

        Raises:
            ImageReadError: the file cannot be decoded.
        """
        _, path = self._path(i)
        return resize_center_crop(read_image(path), self.resize, self.crop)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int]:
        """``(x, i)``: the (3, crop, crop) float32 model input, or ``(None, i)`` if the file is unreadable."""
        i, path = self._path(i)
        try:
            img = resize_center_crop(read_image(path), self.resize, self.crop)
        except _READ_ERRORS:
            return None, i
        return _to_input(img, self.preprocessing), i

    def label(self, i: int) -> str:
        """The path of image ``i`` relative to ``root``, for captions."""
        return self._rel(self._path(i)[1])

    def group(self, i: int) -> str:
        """The source of image ``i``: its file (relative to ``root``); every file is its own group."""
        return self.label(i)

    def note_unreadable(self, indices: Sequence[int]) -> None:
        """Record images found undecodable while loading, and count the new ones in one warning."""
        new: list[Path] = []
        for i in indices:
            path = self._path(i)[1]
            if path not in self.skipped:
                try:
                    read_image(path)
                    reason = "could not be read while loading"
                except _READ_ERRORS as err:
                    reason = str(err)
                self.skipped[path] = reason
                new.append(path)
        if new:
            self._warn(new, f"of {len(self.paths)} images under '{self.root}' that failed to decode while loading")

    def describe(self) -> dict[str, Any]:
        """Provenance: where the images came from and how they were prepared (JSON-serialisable)."""
        return {
            "kind": "folder",
            "root": self.root.resolve().name,  # not the absolute path: sidecars travel between machines
            "n_found": self.n_found,
            "n_images": self.n_found - len(self.skipped),
            "n_skipped": len(self.skipped),
            "skipped": [self._rel(p) for p in list(self.skipped)[:_NAMED]],
            "files": self.files_digest,  # paths, sizes and modification times of all files found
            "extensions": list(IMAGE_EXTENSIONS),
            "resize": self.resize,
            "crop": self.crop,
            "preprocessing": getattr(self.preprocessing, "name", repr(self.preprocessing)),
        }


#: Square windows cut from each demo photograph: (side as a fraction of the photo's shorter side,
#: horizontal position, vertical position), positions as fractions of the free room (0: left/top,
#: 1: right/bottom). Every window is also used mirrored left-right.
DEMO_WINDOWS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.5, 0.5),
    (0.75, 0.0, 0.0),
    (0.75, 1.0, 0.0),
    (0.75, 0.0, 1.0),
    (0.75, 1.0, 1.0),
    (0.75, 0.5, 0.5),
    (0.5, 0.0, 0.0),
    (0.5, 1.0, 0.0),
    (0.5, 0.0, 1.0),
    (0.5, 1.0, 1.0),
    (0.5, 0.5, 0.5),
)


class DemoCollection(Dataset):
    """The offline demo collection: crops and mirror images of the photographs installed packages ship.

    Item ``i`` is window ``DEMO_WINDOWS[(i // P) % W]`` of photograph ``BUNDLED_PHOTOS[i % P]``
    (P photos, W windows), mirrored left-right when ``i >= P * W``, resized to ``size`` x ``size``.
    The order runs over the photographs first, so the first ``n`` items cover every photograph once
    ``n >= P``. Each photograph is loaded once per process, on first use. Build with ``demo_collection``.
    """

    def __init__(self, *, preprocessing: Preprocessing, size: int = DEFAULT_SIZE, n: int | None = None) -> None:
        _check_preprocessing(preprocessing)
        self.size = _check_size("size", size)
        self.preprocessing = preprocessing
        self.photos: tuple[str, ...] = tuple(BUNDLED_PHOTOS)
        total = 2 * len(DEMO_WINDOWS) * len(self.photos)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total):
            raise ValueError(f"n must be between 1 and {total} (the demo collection's size), got {n!r}")
        self.n = total if n is None else n
        self._cache: dict[str, Image.Image] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes load the photographs themselves rather than receive them pickled.
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def __len__(self) -> int:
        return self.n

    def _index(self, i: int) -> int:
        i = operator.index(i)
        if not -self.n <= i < self.n:
            raise IndexError(f"demo index {i} out of range for {self.n} images")
        return i % self.n

    def view(self, i: int) -> tuple[str, tuple[float, float, float], bool]:
        """``(photo name, window, mirrored)`` of item ``i``."""
        i = self._index(i)
        p, w = len(self.photos), len(DEMO_WINDOWS)
        return self.photos[i % p], DEMO_WINDOWS[(i // p) % w], i >= p * w

    def _photo(self, name: str) -> Image.Image:
        if name not in self._cache:
            self._cache[name] = bundled_photo(name)
        return self._cache[name]

    def rgb(self, i: int) -> Image.Image:
        """Item ``i`` as a display RGB PIL image, ``size`` x ``size``."""
        name, (scale, fx, fy), mirrored = self.view(i)
        photo = self._photo(name)
        w, h = photo.size
        side = max(1, round(scale * min(w, h)))
        left, top = round(fx * (w - side)), round(fy * (h - side))
        # crop, then resize the crop alone (as torchvision's resized_crop), so no pixel outside the window
        img = photo.crop((left, top, left + side, top + side)).resize((self.size, self.size), Image.BILINEAR)
        return img.transpose(Image.FLIP_LEFT_RIGHT) if mirrored else img

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """``(x, i)``: the (3, size, size) float32 model input of item ``i``."""
        i = self._index(i)
        return _to_input(self.rgb(i), self.preprocessing), i

    def label(self, i: int) -> str:
        """A short name of item ``i`` for captions, e.g. ``"astronaut 0.75@(0,0) mirrored"``."""
        name, (scale, fx, fy), mirrored = self.view(i)
        return f"{name} {scale:g}@({fx:g},{fy:g})" + (" mirrored" if mirrored else "")

    def group(self, i: int) -> str:
        """The scene item ``i`` was cut from: a scan keeps at most one crop of it per feature.

        The two photographs of scikit-image's stereo pair show one scene, so they are one group.
        """
        name = self.view(i)[0]
        return "motorcycle" if name.startswith("motorcycle_") else name

    def describe(self) -> dict[str, Any]:
        """Provenance: photographs, windows and size (JSON-serialisable)."""
        import skimage

        return {
            "kind": "demo",
            "source": f"photographs bundled with scikit-image {skimage.__version__} and matplotlib",
            "photos": list(self.photos),
            "windows": [list(w) for w in DEMO_WINDOWS],
            "mirrored": True,
            "n_images": self.n,
            "n_skipped": 0,
            "size": self.size,
            "preprocessing": getattr(self.preprocessing, "name", repr(self.preprocessing)),
        }


def demo_collection(*, preprocessing: Preprocessing, size: int = DEFAULT_SIZE, n: int | None = None) -> DemoCollection:
    """The offline demo collection (374 inputs): 17 bundled photographs, cropped and mirrored.

    Args:
        preprocessing: the net's ``Preprocessing`` (``net.preprocessing``).
        size: side of each square input, in pixels.
        n: keep only the first ``n`` items (quick runs); None: all of them.

    Returns:
        A ``DemoCollection``; see its docstring for which crop item ``i`` is.
    """
    return DemoCollection(preprocessing=preprocessing, size=size, n=n)


def load_dataset(
    spec: str | os.PathLike | None, *, preprocessing: Preprocessing, resize: int = 256, crop: int = DEFAULT_SIZE
) -> ImageFolder | DemoCollection:
    """The collection a scan runs over.

    Args:
        spec: ``None`` for the offline demo collection; otherwise a folder of images (a folder named
            ``demo`` is a folder like any other).
        preprocessing: the net's ``Preprocessing`` (``net.preprocessing``).
        resize: shorter side after resizing (folders only; demo images are made at ``crop`` directly).
        crop: side of the square model input.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: not a folder, or no readable images in it.
    """
    if spec is None:
        return demo_collection(preprocessing=preprocessing, size=crop)
    if not Path(spec).exists():
        raise FileNotFoundError(f"image folder '{spec}' does not exist. Hint: give a folder of images, or none "
                                "for the offline demo collection")
    return ImageFolder(spec, preprocessing=preprocessing, resize=resize, crop=crop)


class Head(Dataset):
    """The first ``n`` items of a collection, with its ``rgb``, ``label`` and ``describe``."""

    def __init__(self, dataset: Dataset, n: int) -> None:
        if n < 1:
            raise ValueError(f"a collection needs at least 1 item, got n={n}")
        self.dataset, self.n = dataset, min(n, len(dataset))

    def __len__(self) -> int:
        return self.n

    def _check(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} is out of range for {self.n} items")
        return i

    def __getitem__(self, i: int):
        return self.dataset[self._check(i)]

    def rgb(self, i: int) -> Image.Image:
        return self.dataset.rgb(self._check(i))

    def label(self, i: int) -> str:
        return self.dataset.label(self._check(i))

    def group(self, i: int) -> Hashable:
        return Items(self.dataset).group(self._check(i))

    def note_unreadable(self, indices: Sequence[int]) -> None:
        Items(self.dataset).note_unreadable(indices)

    def describe(self) -> dict[str, Any]:
        return dict(self.dataset.describe(), limit=self.n)
