"""Image collections: real files of every kind written with PIL (or by hand), checked pixel by pixel.

References are independent of ``deconvnet.images``: numpy rotations for EXIF orientation, hand-computed
ImageNet normalisation, torchvision's own evaluation transform, a hand-written 16-bit PNG encoder, and
``skimage.data`` read directly for the demo collection.
"""

import io
import json
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from deconvnet.data import (
    DEMO_WINDOWS,
    DemoCollection,
    Head,
    ImageFolder,
    Items,
    UnreadableImagesWarning,
    batches,
    collate,
    demo_collection,
    load_dataset,
)
from deconvnet.images import BUNDLED_PHOTOS, ImageReadError
from deconvnet.preprocessing import CAFFE, TORCHVISION

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])

# Four clearly different colours for the quadrants of an asymmetric test image.
RED, GREEN, BLUE, YELLOW = (230, 20, 20), (20, 200, 20), (20, 20, 230), (240, 230, 20)


def quadrants(w: int, h: int) -> np.ndarray:
    """An HxWx3 uint8 image: red top-left, green top-right, blue bottom-left, yellow bottom-right."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = RED
    a[: h // 2, w // 2 :] = GREEN
    a[h // 2 :, : w // 2] = BLUE
    a[h // 2 :, w // 2 :] = YELLOW
    return a


def model_input(rgb255: np.ndarray) -> torch.Tensor:
    """torchvision's normalisation by hand: HxWx3 0-255 -> (3, H, W)."""
    x = (np.asarray(rgb255, np.float64) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(2, 0, 1))


def png16_rgb(path, a: np.ndarray) -> None:
    """Write an HxWx3 uint16 array as a 16-bit RGB PNG, by hand (PIL cannot write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[r].astype(">u2").tobytes() for r in range(h))  # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def folder(tmp_path, files: dict) -> Path:
    """Write ``{relative name: PIL image | bytes}`` under tmp_path/imgs."""
    root = tmp_path / "imgs"
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            content.save(p)
    return root


def jpeg_bytes(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def open_folder(root, **kw) -> ImageFolder:
    kw.setdefault("preprocessing", TORCHVISION)
    return ImageFolder(root, **kw)


def item(ds, name: str) -> int:
    return [p.name for p in ds.paths].index(name)


# --- a mixed folder ------------------------------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path):
    """Every supported kind of file, nested folders, an uppercase extension, junk and two corrupt files."""
    rng = np.random.default_rng(0)
    pal = Image.new("P", (32, 32))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))  # index 0 red, 1 blue
    pal.putdata([0] * (32 * 16) + [1] * (32 * 16))  # top half red, bottom half blue
    pal_t = Image.new("P", (32, 32))
    pal_t.putpalette([10, 20, 30, 0, 200, 0] + [0] * (256 * 3 - 6))
    pal_t.putdata([0] * 512 + [1] * 512)
    pal_t.info["transparency"] = 0  # index 0 fully transparent -> composited on white
    good_jpeg = jpeg_bytes(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    files = {
        "a/rgb.jpg": Image.fromarray(np.full((40, 60, 3), (200, 100, 50), np.uint8)),
        "a/b/gray.png": Image.fromarray(np.full((32, 32), 77, np.uint8)),
        "a/b/c/red_rgba.png": Image.fromarray(np.full((32, 32, 4), (255, 0, 0, 255), np.uint8)),
        "palette.png": pal,
        "palette_t.png": pal_t,
        "UPPER.PNG": Image.fromarray(np.full((32, 32, 3), 10, np.uint8)),
        "picture.bmp": Image.fromarray(np.full((32, 32, 3), 40, np.uint8)),
        "picture.tiff": Image.fromarray(np.full((32, 32, 3), 60, np.uint8)),
        "picture.webp": Image.fromarray(np.full((32, 32, 3), 128, np.uint8)),
        "z/truncated.jpg": good_jpeg[: len(good_jpeg) // 2],  # header fine, pixels missing
        "z/noise.png": rng.integers(0, 256, 1000, dtype=np.uint8).tobytes(),  # not an image at all
        "notes.txt": b"not an image",
        "image.gif": Image.fromarray(np.zeros((8, 8), np.uint8)),  # not an accepted extension
    }
    return folder(tmp_path, files)


def test_finds_images_recursively_sorted_case_insensitive_and_skips_bad_headers(mixed):
    with pytest.warns(UnreadableImagesWarning, match=r"skipped 1 of 11 image files") as rec:
        ds = open_folder(mixed, resize=32, crop=32)
    assert len(rec) == 1 and "noise.png" in str(rec[0].message)
    rel = [p.relative_to(mixed).as_posix() for p in ds.paths]
    # 10 files with an accepted extension in total plus noise.png; .txt and .gif never considered
    assert rel == sorted(rel) and len(ds) == 10
    assert {"UPPER.PNG", "red_rgba.png", "truncated.jpg", "picture.webp"} <= {p.name for p in ds.paths}
    assert not any(p.suffix in (".txt", ".gif") for p in ds.paths)
    assert [p.name for p in ds.skipped] == ["noise.png"]
    d = ds.describe()
    json.dumps(d)  # provenance must be serialisable
    assert (d["n_found"], d["n_images"], d["n_skipped"], d["resize"], d["crop"]) == (11, 10, 1, 32, 32)
    assert d["root"] == mixed.resolve().name and d["skipped"] == ["z/noise.png"]  # no absolute path


def test_pixel_values_of_every_kind(mixed):
    with pytest.warns(UnreadableImagesWarning):
        ds = open_folder(mixed, resize=32, crop=32)

    def rgb(name):
        return np.asarray(ds.rgb(item(ds, name)), np.int64)

    # pure red, alpha 255 -> exactly the normalised red, at every pixel
    x, i = ds[item(ds, "red_rgba.png")]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and i == item(ds, "red_rgba.png")
    red = torch.tensor([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225])
    torch.testing.assert_close(x, red.view(3, 1, 1).expand(3, 32, 32), atol=1e-6, rtol=0)
    # grayscale: the same value in each channel
    assert (rgb("gray.png") == 77).all()
    # palette: top red, bottom blue (resize 32 -> 32 is the identity)
    p = rgb("palette.png")
    assert (p[:16] == (255, 0, 0)).all() and (p[16:] == (0, 0, 255)).all()
    # palette with a transparent index: composited on white
    p = rgb("palette_t.png")
    assert (p[:16] == 255).all() and (p[16:] == (0, 200, 0)).all()
    # bmp, tiff, webp (lossy: within a couple of levels), uppercase extension
    assert (rgb("picture.bmp") == 40).all() and (rgb("picture.tiff") == 60).all()
    assert np.abs(rgb("picture.webp") - 128).max() <= 2 and (rgb("UPPER.PNG") == 10).all()
    # jpeg of a flat colour (40x60 -> resize shorter side 32 -> 32x48 -> center crop 32x32)
    assert np.abs(rgb("rgb.jpg") - (200, 100, 50)).max() <= 3
    # the model input is the normalised display image
    k = item(ds, "rgb.jpg")
    torch.testing.assert_close(ds[k][0].double(), model_input(np.asarray(ds.rgb(k))), atol=1e-5, rtol=0)


def test_caffe_preprocessing_is_bgr_0_255_mean_subtracted(tmp_path):
    root = folder(tmp_path, {"c.png": Image.fromarray(np.full((8, 8, 3), (10, 20, 30), np.uint8))})
    x, _ = ImageFolder(root, preprocessing=CAFFE, resize=8, crop=8)[0]
    expected = torch.tensor([30 - 103.939, 20 - 116.779, 10 - 123.68])
    torch.testing.assert_close(x, expected.view(3, 1, 1).expand(3, 8, 8), atol=1e-4, rtol=0)


@pytest.mark.parametrize("orientation, numpy_rotation", [(6, 1), (8, -1), (3, 2)])
def test_exif_orientation_is_applied(tmp_path, orientation, numpy_rotation):
    """Store the image rotated the other way with the EXIF tag that undoes it; the display image returns.

    Orientation 6 means "rotate 90 degrees clockwise to display", so the stored pixels are the display
    image rotated 90 degrees counter-clockwise (np.rot90 k=1); 8 is the converse, 3 is 180 degrees.
    """
    display = quadrants(48, 48)
    stored = np.ascontiguousarray(np.rot90(display, k=numpy_rotation))
    exif = Image.Exif()
    exif[0x0112] = orientation
    root = folder(tmp_path, {"turned.jpg": jpeg_bytes(stored, exif=exif.tobytes())})
    ds = open_folder(root, resize=48, crop=48)
    got = np.asarray(ds.rgb(0), np.int64)
    for (r, c), colour in {(12, 12): RED, (12, 36): GREEN, (36, 12): BLUE, (36, 36): YELLOW}.items():
        assert np.abs(got[r - 4 : r + 4, c - 4 : c + 4] - colour).max() <= 12, (r, c, got[r, c])
    torch.testing.assert_close(ds[0][0].double(), model_input(got), atol=1e-5, rtol=0)


def test_exif_orientation_swaps_width_and_height(tmp_path):
    """A 64 wide x 32 high display image stored as 32 x 64 with orientation 6: the crop is of the display."""
    display = quadrants(64, 32)
    exif = Image.Exif()
    exif[0x0112] = 6
    root = folder(tmp_path, {"wide.jpg": jpeg_bytes(np.ascontiguousarray(np.rot90(display)), exif=exif.tobytes())})
    got = np.asarray(open_folder(root, resize=32, crop=32).rgb(0), np.int64)
    # the centre 32 columns of the display: left half red over blue, right half green over yellow
    for (r, c), colour in {(6, 6): RED, (6, 26): GREEN, (26, 6): BLUE, (26, 26): YELLOW}.items():
        assert np.abs(got[r - 3 : r + 3, c - 3 : c + 3] - colour).max() <= 12, (r, c, got[r, c])


def test_sixteen_bit_grayscale_full_range(tmp_path):
    a = np.array([[0, 65535], [32896, 257 * 200]], np.uint16).repeat(8, 0).repeat(8, 1)
    root = folder(tmp_path, {"g16.png": Image.fromarray(a)})
    got = np.asarray(open_folder(root, resize=16, crop=16).rgb(0), np.int64)
    expected = np.array([[0, 255], [128, 200]]).repeat(8, 0).repeat(8, 1)
    assert (got == expected[:, :, None]).all()


def test_sixteen_bit_grayscale_keeps_its_brightness(tmp_path):
    # A dark 16-bit photograph (values up to a quarter of full scale) must stay dark.
    a = np.array([[0, 16384], [8192, 4096]], np.uint16).repeat(8, 0).repeat(8, 1)
    root = folder(tmp_path, {"dark16.png": Image.fromarray(a)})
    got = np.asarray(open_folder(root, resize=16, crop=16).rgb(0), np.int64)
    expected = np.round(np.array([[0, 16384], [8192, 4096]]) / 257.0).repeat(8, 0).repeat(8, 1)
    assert np.abs(got - expected[:, :, None]).max() <= 1


def test_sixteen_bit_rgb_png(tmp_path):
    a = np.zeros((16, 16, 3), np.uint16)
    a[:8] = (65535, 32896, 0)
    a[8:] = (257 * 10, 257 * 250, 65535)
    png16_rgb(tmp_path / "c16.png", a)
    ds = open_folder(tmp_path, resize=16, crop=16)
    got = np.asarray(ds.rgb(0), np.int64)
    assert np.abs(got[:8] - (255, 128, 0)).max() <= 1 and np.abs(got[8:] - (10, 250, 255)).max() <= 1


def test_geometry_matches_torchvision_evaluation_transform(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (256, 512, 3), dtype=np.uint8)  # 512 wide, 256 high
    root = folder(tmp_path, {"wide.png": Image.fromarray(a)})
    ds = open_folder(root, resize=128, crop=112)
    tv = transforms.Compose(
        [
            transforms.Resize(128, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(112),
            transforms.ToTensor(),
            transforms.Normalize(MEAN.tolist(), STD.tolist()),
        ]
    )
    expected = tv(Image.fromarray(a))
    x, _ = ds[0]
    assert x.shape == (3, 112, 112)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)


# --- unreadable files and data loaders -----------------------------------------------------------------


def test_truncated_file_is_none_and_rgb_raises(mixed):
    with pytest.warns(UnreadableImagesWarning):
        ds = open_folder(mixed, resize=32, crop=32)
    k = item(ds, "truncated.jpg")
    assert ds[k] == (None, k)
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        ds.rgb(k)


def test_collate_drops_unreadable_items():
    x = torch.ones(3, 4, 4)
    b = collate([(x, 0), (None, 1), (2 * x, 2)])
    assert b.skipped == [1] and b.index.tolist() == [0, 2] and b.index.dtype == torch.long
    torch.testing.assert_close(b.x, torch.stack([x, 2 * x]))
    b = collate([(None, 5), (None, 6)])
    assert b.x.numel() == 0 and b.index.numel() == 0 and b.skipped == [5, 6]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_data_loader_gets_through_a_corrupt_file(mixed, num_workers):
    with pytest.warns(UnreadableImagesWarning):
        ds = open_folder(mixed, resize=32, crop=32)
    bad = item(ds, "truncated.jpg")
    seen, xs = [], []
    with pytest.warns(UnreadableImagesWarning, match=r"skipped 1 of 10 images .* failed to decode") as rec:
        for x, index in batches(ds, batch_size=3, num_workers=num_workers):
            seen += index.tolist()
            xs.append(x)
    assert len([w for w in rec if w.category is UnreadableImagesWarning]) == 1
    assert "truncated.jpg" in str(rec[-1].message)
    assert seen == [i for i in range(len(ds)) if i != bad]
    # what the workers computed is what the dataset gives in this process
    torch.testing.assert_close(torch.cat(xs), torch.stack([ds[i][0] for i in seen]))
    # recorded for provenance; a second pass does not warn again
    assert ds.describe()["n_skipped"] == 2 and ds.describe()["n_images"] == 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sum(len(i) for _, i in batches(ds, batch_size=4)) == 9


def test_plain_data_loader_with_collate_and_workers(mixed):
    with pytest.warns(UnreadableImagesWarning):
        ds = open_folder(mixed, resize=32, crop=32)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    out = list(loader)
    assert [s for b in out for s in b.skipped] == [item(ds, "truncated.jpg")]
    assert sum(len(b.index) for b in out) == len(ds) - 1


def test_dataset_pickles_for_spawned_workers(mixed):
    with pytest.warns(UnreadableImagesWarning):
        ds = open_folder(mixed, resize=32, crop=32)
    copy = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(copy[0][0], ds[0][0])


# --- errors --------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        open_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(str(tmp_path / "nowhere"), preprocessing=TORCHVISION)


def test_folder_without_images(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"no readable images under .*jpg, jpeg, png, bmp, tif, tiff, webp"):
        open_folder(tmp_path)


def test_folder_with_only_corrupt_images(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"1 files could not be read"):
        open_folder(tmp_path)


def test_file_instead_of_folder_and_bad_sizes(tmp_path):
    f = tmp_path / "one.png"
    Image.new("RGB", (4, 4)).save(f)
    with pytest.raises(ValueError, match="not a folder"):
        open_folder(f)
    with pytest.raises(ValueError, match="crop 300 is larger than resize 256"):
        open_folder(tmp_path, crop=300)
    with pytest.raises(ValueError, match="positive"):
        open_folder(tmp_path, resize=0)
    with pytest.raises(TypeError, match="net.preprocessing"):
        ImageFolder(tmp_path, preprocessing="torchvision")


def test_tiny_image_is_upscaled(tmp_path):
    root = folder(tmp_path, {"tiny.png": Image.fromarray(np.full((2, 3, 3), 90, np.uint8))})
    x, _ = open_folder(root)[0]
    torch.testing.assert_close(x.double(), model_input(np.full((224, 224, 3), 90)), atol=1e-5, rtol=0)


# --- demo collection -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo64():
    return demo_collection(preprocessing=TORCHVISION, size=64)


def test_demo_size_and_coverage(demo64):
    assert len(demo_collection(preprocessing=TORCHVISION)) == len(demo64) == 2 * len(DEMO_WINDOWS) * len(BUNDLED_PHOTOS)
    assert len(BUNDLED_PHOTOS) >= 17 and 350 <= len(demo64) <= 450
    assert {demo64.view(i)[0] for i in range(len(BUNDLED_PHOTOS))} == set(BUNDLED_PHOTOS)
    d = demo64.describe()
    json.dumps(d)
    assert d["n_images"] == len(demo64) and d["size"] == 64 and d["kind"] == "demo"


def test_demo_items_against_skimage_directly():
    ds = demo_collection(preprocessing=TORCHVISION, size=64)
    p = len(BUNDLED_PHOTOS)
    astro = list(BUNDLED_PHOTOS).index("astronaut")
    a = skimage.data.astronaut()  # 512 x 512 RGB
    # item 0 of astronaut: the whole photograph (scale 1, centred)
    whole = np.asarray(Image.fromarray(a).resize((64, 64), Image.BILINEAR))
    assert ds.view(astro) == ("astronaut", (1.0, 0.5, 0.5), False)
    torch.testing.assert_close(ds[astro][0].double(), model_input(whole), atol=1e-5, rtol=0)
    # window 6: half-size top-left corner
    k = 6 * p + astro
    assert ds.view(k) == ("astronaut", (0.5, 0.0, 0.0), False)
    corner = np.asarray(Image.fromarray(a[:256, :256]).resize((64, 64), Image.BILINEAR))
    torch.testing.assert_close(ds[k][0].double(), model_input(corner), atol=1e-5, rtol=0)
    # the mirrored half of the collection
    m = len(DEMO_WINDOWS) * p + k
    assert ds.view(m) == ("astronaut", (0.5, 0.0, 0.0), True)
    torch.testing.assert_close(ds[m][0], ds[k][0].flip(-1))
    assert np.array_equal(np.asarray(ds.rgb(m)), corner[:, ::-1])
    # motorcycle_left comes from stereo_motorcycle()
    left = skimage.data.stereo_motorcycle()[0]
    i = list(BUNDLED_PHOTOS).index("motorcycle_left")
    h, w = left.shape[:2]  # 500 x 741: the centred 500 x 500 square
    lo = round(0.5 * (w - h))
    centre = np.asarray(Image.fromarray(left[:, lo : lo + h]).resize((64, 64), Image.BILINEAR))
    torch.testing.assert_close(ds[i][0].double(), model_input(centre), atol=1e-5, rtol=0)


def test_groups_are_the_source_photographs_and_files(demo64, tmp_path):
    # every crop and mirror image of a photograph is in the photograph's group, and only those
    for i in (0, 7, len(BUNDLED_PHOTOS) + 3, len(demo64) - 1):
        assert demo64.group(i) == demo64.view(i)[0].removesuffix("_left").removesuffix("_right")
    # the stereo pair is one scene
    scenes = {name.removesuffix("_left").removesuffix("_right") for name in BUNDLED_PHOTOS}
    assert sorted({demo64.group(i) for i in range(len(demo64))}) == sorted(scenes) \
        and len(scenes) == len(BUNDLED_PHOTOS) - 1
    assert sum(demo64.group(i) == "grace_hopper" for i in range(len(demo64))) == 2 * len(DEMO_WINDOWS)
    root = folder(tmp_path, {"a/x.png": Image.new("RGB", (8, 8)), "b.png": Image.new("RGB", (8, 8))})
    f = open_folder(root)
    assert [f.group(i) for i in range(len(f))] == ["a/x.png", "b.png"]
    assert [Head(demo64, 3).group(i) for i in range(3)] == [demo64.group(i) for i in range(3)]


def test_items_read_what_a_dataset_offers_and_one_default_for_the_rest(demo64, tmp_path):
    class Bare(torch.utils.data.Dataset):  # len and items only
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(3, 8, 8), i

    bare = Items(Bare())
    assert not any(bare.offers(name) for name in ("label", "group", "describe", "paths", "root", "note_unreadable",
                                                   "preprocessing", "view"))
    assert (bare.label(2), bare.group(2), bare.source(2), bare.view(2)) == ("2", 2, "2", None)
    assert bare.describe() == {"kind": "Bare", "n_images": 3}
    assert bare.paths is None and bare.root is None and bare.preprocessing is None
    bare.note_unreadable([1])  # nothing to record it in: nothing happens
    demo = Items(demo64)
    assert demo.label(5) == demo64.label(5) and demo.group(5) == demo64.group(5) == demo.source(5)
    assert demo.view(5) == demo64.view(5) and demo.describe() == demo64.describe()
    assert demo.preprocessing is demo64.preprocessing and demo.paths is None
    root = folder(tmp_path, {"a/x.png": Image.new("RGB", (8, 8))})
    f = Items(open_folder(root))
    assert f.paths == f.dataset.paths and f.root == f.dataset.root and f.source(0) == "a/x.png"
    assert Items(Head(Bare(), 2)).group(1) == 1  # a head of a dataset without groups: each item its own
    with pytest.raises(ValueError, match="'lable' is not a member of deconvnet.data.Collection"):
        bare.offers("lable")


def test_matplotlib_photograph_is_bundled():
    from matplotlib import cbook

    from deconvnet.images import bundled_photo

    img = bundled_photo("grace_hopper")
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        ref = np.asarray(Image.open(f.name).convert("RGB"))
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), ref)


def test_demo_is_deterministic_and_its_images_differ(demo64):
    other = demo_collection(preprocessing=TORCHVISION, size=64)
    x = torch.stack([demo64[i][0] for i in range(len(demo64))])
    y = torch.stack([other[i][0] for i in range(len(other))])
    assert torch.equal(x, y)
    rgb = TORCHVISION.inverse(x).flatten(1)
    diff = torch.cdist(rgb, rgb, p=1) / rgb.shape[1]  # mean absolute difference, RGB in [0, 1]
    diff.fill_diagonal_(float("inf"))
    assert diff.min() > 0.02, f"two demo images are nearly identical (mean |diff| {diff.min():.4f})"
    # the indices returned are the positions
    assert [demo64[i][1] for i in (0, 5, len(demo64) - 1)] == [0, 5, len(demo64) - 1]


def test_demo_full_size_and_n(demo64):
    ds = demo_collection(preprocessing=TORCHVISION, n=20)
    assert len(ds) == 20
    x, i = ds[19]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and i == 19
    assert np.asarray(ds.rgb(19)).shape == (224, 224, 3)
    with pytest.raises(IndexError):
        ds[20]
    with pytest.raises(ValueError, match=f"between 1 and {2 * len(DEMO_WINDOWS) * len(BUNDLED_PHOTOS)}"):
        demo_collection(preprocessing=TORCHVISION, n=1000)
    # pickled copies (spawned workers) load their own photographs and agree
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._cache == {} and torch.equal(copy[3][0], ds[3][0])
    assert [b.tolist() for _, b in batches(demo64, batch_size=100)][2][:2] == [200, 201]


def test_load_dataset_dispatch(tmp_path):
    assert isinstance(load_dataset(None, preprocessing=TORCHVISION), DemoCollection)
    d = load_dataset(None, preprocessing=TORCHVISION, crop=96)
    assert isinstance(d, DemoCollection) and d.size == 96
    with pytest.raises(FileNotFoundError, match="image folder 'demo' does not exist"):  # a name is a folder
        load_dataset("demo", preprocessing=TORCHVISION)
    Image.new("RGB", (300, 200), (1, 2, 3)).save(tmp_path / "x.jpg")
    f = load_dataset(tmp_path, preprocessing=TORCHVISION, resize=160, crop=128)
    assert isinstance(f, ImageFolder) and f[0][0].shape == (3, 128, 128) and f.label(0) == "x.jpg"
