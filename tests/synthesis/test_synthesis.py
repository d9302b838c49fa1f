"""Feature visualisation by optimisation (deconvnet.synthesis): the parameterisation against its formulas, the
optimisation against the dataset's strongest activations, determinism, errors, the command."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import deconvnet as dn
from deconvnet.data import demo_collection
from deconvnet.synthesis import COLOR_CORRELATION_SVD_SQRT, FourierImage, color_matrix, decorrelate_colors, optimise
from deconvnet.synthesis.param import FFT_MAGIC, rfft2d_freqs, spectrum_scale

from conftest import no_forward_hooks, requires_mri

# --- the parameterisation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("h,w", [(8, 8), (6, 9)])
def test_frequencies_and_scale_are_the_formula(h, w):
    f = rfft2d_freqs(h, w).numpy()
    cols = w // 2 + (2 if w % 2 else 1)
    assert f.shape == (h, cols)
    for ky in range(h):
        for kx in range(cols):
            fy = (ky if ky < (h + 1) // 2 else ky - h) / h
            fx = (kx if kx < (w + 1) // 2 else kx - w) / w
            assert f[ky, kx] == pytest.approx(math.hypot(fx, fy), abs=1e-12)
            assert spectrum_scale(h, w)[ky, kx].item() == pytest.approx(1 / max(math.hypot(fx, fy), 1 / max(h, w)))


@pytest.mark.parametrize("h,w,ky,kx", [(8, 8, 1, 2), (8, 8, 3, 1), (6, 10, 5, 3), (8, 8, 0, 0)])
def test_fourier_image_is_the_inverse_fft_of_a_known_spectrum(h, w, ky, kx):
    """One frequency (a + ib at (ky, kx), its Hermitian twin implied): the image is a cosine, written out."""
    a, b = 0.7, -0.3
    spec = torch.zeros(1, 3, *rfft2d_freqs(h, w).shape, 2, dtype=torch.float64)
    spec[0, 1, ky, kx] = torch.tensor([a, b], dtype=torch.float64)
    img = FourierImage(spec, (h, w), decorrelate=False).raw()[0].numpy()
    s = spectrum_scale(h, w)[ky, kx].item()
    y, x = np.mgrid[0:h, 0:w]
    theta = 2 * np.pi * (ky * y / h + kx * x / w)
    if kx == 0 and ky == 0:
        expected = np.full((h, w), s * a / math.sqrt(h * w))  # the constant term: real part only
    else:  # the term and its conjugate twin: 2 Re((a + ib) e^{i theta}) / sqrt(hw)
        expected = s * 2 * (a * np.cos(theta) - b * np.sin(theta)) / math.sqrt(h * w)
    np.testing.assert_allclose(img[1], expected / FFT_MAGIC, atol=1e-12)
    assert np.abs(img[0]).max() == 0 and np.abs(img[2]).max() == 0


def test_colour_matrix_square_root_squared_is_a_natural_colour_correlation():
    m = torch.tensor(COLOR_CORRELATION_SVD_SQRT, dtype=torch.float64)
    cov = m @ m.T  # the matrix is a square root (U sqrt(S)) of the colour covariance
    assert torch.allclose(cov, cov.T) and bool((torch.linalg.eigvalsh(cov) > 0).all())
    corr = cov / torch.sqrt(torch.outer(cov.diag(), cov.diag()))
    # R, G, B strongly correlated, as in photographs; neighbouring bands (R-G, G-B) more than R-B
    assert corr[0, 1] > 0.9 and corr[1, 2] > 0.9 and 0.75 < corr[0, 2] < min(corr[0, 1], corr[1, 2])
    n = color_matrix(torch.float64)
    assert n.norm(dim=0).max().item() == pytest.approx(1.0, abs=1e-15)
    assert torch.allclose(n * m.norm(dim=0).max(), m)
    # decorrelated white noise has the covariance of the normalised square root squared
    z = torch.randn(1, 3, 400, 500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rgb = decorrelate_colors(z).flatten(2)[0]
    assert torch.allclose(torch.cov(rgb), n @ n.T, atol=3e-3)


def test_decorrelation_is_the_matrix_at_every_pixel():
    t = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = decorrelate_colors(t)
    n = color_matrix(torch.float64).numpy()
    for b in range(2):
        for i in range(4):
            for j in range(5):
                np.testing.assert_allclose(out[b, :, i, j].numpy(), n @ t[b, :, i, j].numpy(), atol=1e-14)
    img = FourierImage(torch.zeros(1, 3, 8, 5, 2), (8, 8)).images()
    assert torch.allclose(img, torch.full_like(img, 0.5))  # a zero spectrum is mid-gray: the sigmoid of 0


# --- the optimisation --------------------------------------------------------------------------------------

def dataset_strongest(net, layer, size, n=34):
    """Per channel: the strongest unit and the strongest channel mean over the first n demo images (brute force)."""
    data = demo_collection(preprocessing=net.preprocessing, size=size, n=n)
    x = torch.stack([data[i][0] for i in range(len(data))])
    act = dn.Deconvnet(net).record(x, [layer], switches=False).activations[layer]
    return act.amax((0, 2, 3)), act.mean((2, 3)).amax(0)


@pytest.mark.parametrize("arch,layer,channels", [("vgg16", "conv3_3", [3, 40]), ("resnet18", "layer2", [5, 77])])
def test_synthesis_exceeds_the_demo_collection_random_weights(arch, layer, channels):
    net = dn.load_model(arch, "random", seed=0)
    peak, mean = dataset_strongest(net, layer, 48)
    s = dn.synthesize(net, layer, channels, steps=100, size=48, progress=False)
    assert s.images.shape == (2, 3, 48, 48) and s.images.min() >= 0 and s.images.max() <= 1
    for i, c in enumerate(channels):
        assert s.peaks[i] > peak[c], (c, float(s.peaks[i]), float(peak[c]))  # like the scan's top activation
        if arch == "vgg16":  # the channel mean too; ResNet's channel 77 reaches 0.67 in 100 steps, the best image 0.85
            assert s.activations[i] > mean[c], (c, float(s.activations[i]), float(mean[c]))
    assert (s.curve[:, -5:].mean(1) > s.curve[:, :5].mean(1)).all()  # the ascent climbs
    assert no_forward_hooks(net)


@requires_mri
def test_synthesis_exceeds_the_demo_collection_offline_weights(mri_vgg16):
    peak, mean = dataset_strongest(mri_vgg16, "conv3_3", 48)
    channels = [int(c) for c in peak.argsort(descending=True)[:2]]  # the two most active channels on photographs
    s = dn.synthesize(mri_vgg16, "conv3_3", channels, steps=100, size=48, progress=False)
    for i, c in enumerate(channels):
        assert s.peaks[i] > peak[c] and s.activations[i] > mean[c], (c, s.peaks[i], peak[c], s.activations[i], mean[c])
    assert "mri" in s.weights


def test_same_seed_same_image_and_another_seed_another(vgg16):
    a = dn.synthesize(vgg16, "conv2_2", [1, 7], steps=6, size=32, seed=3, progress=False)
    b = dn.synthesize(vgg16, "features.7", [1, 7], steps=6, size=32, seed=3, progress=False)  # a module path too
    c = dn.synthesize(vgg16, "conv2_2", [1, 7], steps=6, size=32, seed=4, progress=False)
    assert b.layer == "conv2_2" and torch.equal(a.images, b.images) and torch.equal(a.activations, b.activations)
    assert (a.images - c.images).abs().max() > 0.05
    # a channel's starting image is its own, whatever else shares its batch
    one = dn.synthesize(vgg16, "conv2_2", [7], steps=0, size=32, seed=3, progress=False)
    two = dn.synthesize(vgg16, "conv2_2", [1, 7], steps=0, size=32, seed=3, progress=False)
    assert torch.equal(one.images[0], two.images[1])


def test_channel_out_of_range_is_one_line(vgg16):
    with pytest.raises(ValueError, match=r"channel 128 is out of range for layer 'conv2_2' of vgg16, which has 128 "
                                         r"channels\. Hint: use 0\.\.127") as err:
        dn.synthesize(vgg16, "conv2_2", [0, 128], steps=1, size=16, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown layer 'conv9_9'"):
        dn.synthesize(vgg16, "conv9_9", 0, steps=1, progress=False)
    with pytest.raises(ValueError, match="objective 'max'"):
        dn.synthesize(vgg16, "conv2_2", 0, steps=1, objective="max", progress=False)
    assert no_forward_hooks(vgg16)


def test_interrupt_returns_what_was_reached(vgg16, monkeypatch):
    calls = {"n": 0}
    real = optimise.layer_output

    def interrupting(net, x, layer):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(net, x, layer)

    monkeypatch.setattr(optimise, "layer_output", interrupting)
    s = dn.synthesize(vgg16, "conv1_2", [0, 2], steps=50, size=16, progress=False)
    assert s.interrupted and s.settings["steps_done"] == 3 and s.curve.shape == (2, 3)
    assert "3 of 50 steps (interrupted)" in s.recipe()
    assert no_forward_hooks(vgg16) and all(p.requires_grad for p in vgg16.model.parameters())


def test_unit_objective_and_a_classifier_output(vgg16):
    s = dn.synthesize(vgg16, "conv1_2", [0], steps=3, size=16, objective="unit", progress=False)
    x = vgg16.preprocessing.forward(s.images.to(vgg16.dtype))
    act = dn.Deconvnet(vgg16).record(x, ["conv1_2"]).activations["conv1_2"]
    assert s.activations[0].item() == pytest.approx(act[0, 0, 8, 8].item(), rel=1e-5)  # the centre unit, measured
    assert s.peaks[0].item() == pytest.approx(act[0, 0].max().item(), rel=1e-5)
    f = dn.synthesize(vgg16, "fc8", [9], steps=2, size=32, progress=False)
    assert f.activations.shape == (1,) and f.activations[0] == f.peaks[0]


# --- the command -----------------------------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "deconvnet", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_cli_writes_images_and_sidecar(tmp_path, vgg16):
    r = run_cli("synthesize", "--arch", "vgg16", "--weights", "random", "--layer", "conv2_2", "--channels", "0,4-5",
                "--steps", "3", "--size", "24", "--batch", "2", "--out", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "synthesis_vgg16_conv2_2.json").read_text())
    assert [m["channel"] for m in meta["images"]] == [0, 4, 5]
    assert meta["settings"]["steps"] == 3 and meta["settings"]["size"] == 24 and meta["settings"]["lr"] == 0.05
    assert meta["provenance"]["weights"] == "random" and "random" in meta["weights"] and "Olah" in meta["recipe"]
    from PIL import Image

    for m in meta["images"]:
        im = Image.open(tmp_path / m["image"])
        assert im.size == (24, 24)
        # the sidecar's activation is the image's own: the PNG through the model gives it back (8-bit round-off)
        net = vgg16  # dn.load_vgg("vgg16", "random", seed=0), built once per session
        x = net.preprocess(im, size=None)
        act = dn.Deconvnet(net).record(x, ["conv2_2"]).activations["conv2_2"][0, m["channel"]]
        assert act.mean().item() == pytest.approx(m["activation"], rel=0.05, abs=1e-3)


@pytest.mark.slow
def test_cli_bad_channel_is_one_line(tmp_path):
    r = run_cli("synthesize", "--weights", "random", "--layer", "conv2_2", "--channels", "128", "--steps", "1",
                "--out", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "channel 128 is out of range" in r.stderr
    r = run_cli("synthesize", "--weights", "random", "--channels", "a-b", "--out", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a list of channels" in r.stderr


# --- the atlas and the explorer ------------------------------------------------------------------------------

def test_atlas_pages_show_the_synthesised_image_kept_across_rebuilds(tmp_path, monkeypatch):
    from deconvnet.atlas import build_atlas
    from deconvnet.atlas import synthesis as atlas_synthesis

    net = dn.load_vgg("vgg11", "random", seed=3)
    data = demo_collection(preprocessing=net.preprocessing, size=64, n=6)
    settings = {"steps": 4, "size": 32}
    out = tmp_path / "site"
    build_atlas(net, data, ["conv3_1"], out, features=[1, 5], k=2, progress=False, synthesize=settings)
    ref = dn.synthesize(net, "conv3_1", [1, 5], steps=4, size=32, progress=False)
    for i, c in enumerate([1, 5]):
        rec = json.loads((out / "conv3_1" / "synth" / f"{c}.json").read_text())
        assert rec["peak"] == pytest.approx(float(ref.peaks[i]), rel=1e-5) and rec["settings"]["steps"] == 4
        page = (out / "conv3_1" / f"{c}.html").read_text()
        assert 'id="synthesis"' in page and f'src="synth/{c}.png"' in page and f'data-peak="{rec["peak"]}"' in page
        assert "Olah et al. 2017" in page and "random" in page  # the recipe and the weights on the page
        channels = json.loads((out / "conv3_1" / "channels.json").read_text())["channels"]
        assert next(r for r in channels if r["channel"] == c)["synthesis"]["peak"] == rec["peak"]

    def refuse(*args, **kwargs):
        raise AssertionError("a rebuild synthesised again")

    monkeypatch.setattr(atlas_synthesis, "synthesize", refuse)
    build_atlas(net, data, ["conv3_1"], out, features=[1, 5], k=2, progress=False, synthesize=settings)
    assert 'id="synthesis"' in (out / "conv3_1" / "1.html").read_text()
    assert no_forward_hooks(net)


def test_explorer_shows_what_the_unit_wants(vgg16):
    pytest.importorskip("ipywidgets")
    app = dn.explore(vgg16, "chelsea", size=64, layer="conv2_2", background=False, wants={"steps": 3, "size": 24})
    got = app.wants
    ref = dn.synthesize(vgg16, "conv2_2", [app.channel], steps=3, size=24, progress=False)
    assert got.channels == [app.channel] and torch.equal(got.images, ref.images)
    assert "wants" in app._w["wants_title"].value and app._w["wants"].layout.display is None
    app2 = dn.explore(vgg16, "chelsea", size=64, layer="conv2_2", wants={"steps": 3, "size": 24})  # in the background
    app2.select(channel=4)
    assert app2.wants.channels == [4]
    app2.wants_worker.wait((app2.layer, 4), 60)
    assert "channel 4 wants" in app2._w["wants_title"].value
    assert no_forward_hooks(vgg16)


def test_the_command_line_knows_the_objectives_and_recipes_without_torch():
    from deconvnet.cli import synthesis as cli_synthesis
    from deconvnet.synthesis import OBJECTIVES, RECIPES

    assert tuple(OBJECTIVES) == cli_synthesis.OBJECTIVES
    assert tuple(RECIPES) == cli_synthesis.RECIPES
