"""Restoring resolution, against independent references: PyTorch's own shapes and convolutions, autograd,
hand-worked values, the FFT, and explicit loops."""

import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import deconvnet as dn
from deconvnet.resolution import (
    METHOD_KEYS,
    bilinear_kernel,
    bilinear_transposed_conv,
    checkerboard_energy,
    checkerboard_study,
    compare_restorations,
    conv_matrix,
    conv_matrix_example,
    conv_output_size,
    conv_transpose_output_size,
    deconvnet_stages,
    fit_restorer,
    make_figures,
    make_upsampler,
    max_pool_2x2,
    plot_conv_matrix,
    plot_restorations,
    plot_scores,
    random_crops,
    resize_conv,
    restore_fixed,
    unpool,
    write_table,
)
from deconvnet.resolution.figures import feature_maps, photo_tensor
from deconvnet.resolution.fit import _quadratic_mse

from conftest import images

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- size arithmetic -------------------------------------------------------------------------------------

def torch_conv_size(n, k, s, p, d):
    """PyTorch's answer: the output size, or None when it rejects the configuration."""
    try:
        return F.conv2d(torch.zeros(1, 1, n, n), torch.zeros(1, 1, k, k), stride=s, padding=p, dilation=d).shape[-1]
    except RuntimeError:
        return None


def torch_conv_transpose_size(n, k, s, p, d, op):
    try:
        return F.conv_transpose2d(torch.zeros(1, 1, n, n), torch.zeros(1, 1, k, k), stride=s, padding=p,
                                  output_padding=op, dilation=d).shape[-1]
    except RuntimeError:
        return None


@FAST
@given(n=st.integers(0, 30), k=st.integers(0, 8), s=st.integers(0, 5), p=st.integers(-1, 6), d=st.integers(0, 4))
def test_conv_output_size_agrees_with_pytorch_and_rejects_what_it_rejects(n, k, s, p, d):
    expected = torch_conv_size(n, k, s, p, d)
    if expected is None:
        with pytest.raises(ValueError):
            conv_output_size(n, k, s, p, d)
    else:
        assert conv_output_size(n, k, s, p, d) == expected


@FAST
@given(n=st.integers(0, 20), k=st.integers(0, 7), s=st.integers(0, 5), p=st.integers(-1, 6), d=st.integers(0, 4),
       op=st.integers(-1, 5))
def test_conv_transpose_output_size_agrees_with_pytorch_and_rejects_what_it_rejects(n, k, s, p, d, op):
    expected = torch_conv_transpose_size(n, k, s, p, d, op)
    if expected is None:
        with pytest.raises(ValueError):
            conv_transpose_output_size(n, k, s, p, d, op)
    else:
        assert conv_transpose_output_size(n, k, s, p, d, op) == expected


@FAST
@given(n=st.integers(1, 40), k=st.integers(1, 7), s=st.integers(1, 4), p=st.integers(0, 4), d=st.integers(1, 3))
def test_the_transpose_size_formula_undoes_the_convolution_size(n, k, s, p, d):
    assume(n + 2 * p >= d * (k - 1) + 1)
    m = conv_output_size(n, k, s, p, d)
    # one output_padding in [0, s) gives n back (the floor of the forward formula lost n's remainder);
    # the others give other sizes, or nothing (an empty output)
    back = []
    for op in range(s):
        try:
            back.append(conv_transpose_output_size(m, k, s, p, d, op))
        except ValueError:
            back.append(None)
    assert back.count(n) == 1 and back.index(n) == (n + 2 * p - d * (k - 1) - 1) % s


def test_size_formulas_hand_worked():
    assert conv_output_size(4, 3) == 2  # the 4x4 / 3x3 example
    assert conv_transpose_output_size(2, 3) == 4
    assert conv_output_size(224, 3, 1, 1) == 224  # VGG conv
    assert conv_output_size(224, 2, 2) == 112  # VGG pool
    assert conv_output_size(224, 11, 4, 2) == 55  # AlexNet conv1
    assert conv_transpose_output_size(112, 4, 2, 1) == 224  # FCN's 2x bilinear layer
    assert conv_transpose_output_size(112, 3, 2, 1, 1, 1) == 224


def test_size_formula_errors_name_the_rule():
    with pytest.raises(ValueError, match="Hint"):
        conv_output_size(4, 5)
    with pytest.raises(ValueError, match="output_padding=2 must be smaller"):
        conv_transpose_output_size(3, 3, 2, 0, 1, 2)
    with pytest.raises(TypeError):
        conv_output_size(4.0, 3)
    with pytest.raises(TypeError):
        conv_output_size(4, True)


def test_the_study_checks_its_integers_with_the_package_check():
    """Strides, sizes and counts go through deconvnet.checks.positive_int: one message, naming the value."""
    with pytest.raises(ValueError, match=r"^stride must be a positive integer, got 0\. Hint: PyTorch rejects stride=0"):
        conv_output_size(4, 3, 0)
    with pytest.raises(ValueError, match=r"^padding must be a non-negative integer, got -1\."):
        conv_output_size(4, 3, 1, -1)
    with pytest.raises(ValueError, match=r"^stride must be a positive integer, got 0\. Hint: the upsampling"):
        checkerboard_energy(torch.zeros(4, 4), stride=0)
    with pytest.raises(ValueError, match=r"^border must be a non-negative integer, got -1$"):
        checkerboard_energy(torch.zeros(4, 4), border=-1)
    with pytest.raises(ValueError, match=r"^size must be a positive integer, got 0\. Hint: 2 \* factor"):
        bilinear_kernel(0)
    with pytest.raises(ValueError, match=r"^groups must be a positive integer, got 0\. Hint: a divisor of the 6"):
        conv_matrix(torch.zeros(6, 1, 3, 3), (4, 4), groups=0)


# --- the convolution as a matrix ------------------------------------------------------------------------

def test_conv_matrix_of_the_4x4_3x3_example_is_the_hand_worked_matrix():
    k = torch.arange(1, 10, dtype=torch.float64).view(3, 3)
    expected = torch.tensor([
        [1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0, 0, 0, 0, 0],
        [0, 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0],
        [0, 0, 0, 0, 0, 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9],
    ], dtype=torch.float64)
    assert torch.equal(conv_matrix(k, (4, 4)), expected)


def test_conv_matrix_example_numbers():
    e = conv_matrix_example()
    # y[0, 0] = 1*3 + 2*0 + 3*1 + 4*1 + 5*4 + 6*2 + 7*0 + 8*2 + 9*5 = 103, and so on (worked by hand)
    assert torch.equal(e.y, torch.tensor([[103.0, 97.0], [77.0, 81.0]], dtype=torch.float64))
    assert e.matrix.shape == (4, 16) and e.matrix.T.shape == (16, 4)
    # C^T C x is the transposed convolution of the convolution, computed independently by PyTorch
    ref = F.conv_transpose2d(F.conv2d(e.x[None, None], e.kernel[None, None]), e.kernel[None, None])[0, 0]
    assert torch.allclose(e.back, ref, rtol=0, atol=1e-9)
    assert e.rank == 4
    assert e.relative_error > 1 and 0.1 < e.best_scaled_error < 1  # not x, at any scale
    # one output value goes back to the 9 pixels it was computed from, weighted by the kernel
    spread = torch.zeros(4, 4, dtype=torch.float64)
    spread[:3, :3] = e.kernel
    assert torch.equal(e.spread, spread)
    fan_out = [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]]
    assert torch.equal(e.fan_out, torch.tensor(fan_out, dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(
    c_in=st.integers(1, 3), c_out=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
    kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
    ph=st.integers(0, 2), pw=st.integers(0, 2), dh=st.integers(1, 2), dw=st.integers(1, 2), seed=st.integers(0, 10**6),
)
def test_conv_matrix_is_conv2d_and_its_transpose_is_conv_transpose2d(
    c_in, c_out, h, w, kh, kw, sh, sw, ph, pw, dh, dw, seed
):
    assume(h + 2 * ph >= dh * (kh - 1) + 1 and w + 2 * pw >= dw * (kw - 1) + 1)
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(c_out, c_in, kh, kw, generator=g, dtype=torch.float64)
    x = torch.randn(1, c_in, h, w, generator=g, dtype=torch.float64)
    c = conv_matrix(weight, (c_in, h, w), (sh, sw), (ph, pw), (dh, dw))
    y = F.conv2d(x, weight, stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw))
    assert c.shape == (y.numel(), x.numel())
    assert torch.allclose(c @ x.reshape(-1), y.reshape(-1), rtol=1e-12, atol=1e-12)
    r = torch.randn(y.shape, generator=g, dtype=torch.float64)
    out_pad = tuple(n - ((m - 1) * s - 2 * p + d * (k - 1) + 1) for n, m, k, s, p, d in
                    ((h, y.shape[-2], kh, sh, ph, dh), (w, y.shape[-1], kw, sw, pw, dw)))
    back = F.conv_transpose2d(r, weight, stride=(sh, sw), padding=(ph, pw), output_padding=out_pad, dilation=(dh, dw))
    assert torch.allclose(c.T @ r.reshape(-1), back.reshape(-1), rtol=1e-12, atol=1e-12)


def test_conv_matrix_errors():
    with pytest.raises(ValueError, match="Hint"):
        conv_matrix(torch.ones(2, 3, 3, 3), (2, 5, 5))  # 3 input channels, input has 2
    with pytest.raises(ValueError, match="conv_matrix is for small examples"):
        conv_matrix(torch.ones(64, 64, 3, 3), (64, 56, 56), padding=1)
    with pytest.raises(ValueError):
        conv_matrix(torch.ones(3, 3), (2, 2))  # kernel larger than the input


# --- unpooling, interpolation, the bilinear kernel ------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 2), c=st.integers(1, 3), h2=st.integers(1, 6), w2=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_unpooling_with_switches_is_the_gradient_of_max_pooling(b, c, h2, w2, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, 2 * h2, 2 * w2, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.randn(b, c, h2, w2, generator=g, dtype=torch.float64)
    pooled, switches = max_pool_2x2(x.detach())
    (grad,) = torch.autograd.grad((F.max_pool2d(x, 2, 2) * r).sum(), x)
    out = unpool(r, switches, (2 * h2, 2 * w2))
    assert torch.equal(out, grad)
    assert torch.equal(out, F.max_unpool2d(r, switches, 2, 2, output_size=(2 * h2, 2 * w2)))


def test_bilinear_kernel_is_fcns():
    f4 = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=torch.float64)
    assert torch.equal(bilinear_kernel(4), f4[:, None] * f4[None, :])
    f3 = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)
    assert torch.equal(bilinear_kernel(3), f3[:, None] * f3[None, :])
    with pytest.raises(ValueError, match="Hint"):
        bilinear_kernel(0)


def test_fixed_bilinear_transposed_conv_is_bilinear_interpolation_inside():
    x = images((2, 3, 9, 11), seed=3).double()
    ours = bilinear_transposed_conv(3).double()(x)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(ours[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], rtol=0, atol=1e-12)
    # at the border the zero padding takes a quarter of the weight away (FCN's layer does not renormalise)
    assert torch.allclose(ours[..., 0, 1:-1], 0.75 * ref[..., 0, 1:-1], atol=0.5 * float(x.abs().max()))
    assert not torch.allclose(ours[..., 0, :], ref[..., 0, :])


def test_resize_conv_starts_as_nearest():
    x = images((1, 4, 6, 8), seed=4)
    with torch.no_grad():
        assert torch.equal(resize_conv(4)(x), F.interpolate(x, scale_factor=2, mode="nearest"))


def test_odd_sizes_are_refused_with_a_hint():
    with pytest.raises(ValueError, match="Hint: crop to 6x8"):
        max_pool_2x2(torch.zeros(1, 1, 7, 9))
    with pytest.raises(ValueError, match="not a fixed method"):
        p, s = max_pool_2x2(torch.zeros(1, 1, 4, 4))
        restore_fixed("lanczos", p, s, (4, 4))


# --- training --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "make", [lambda c: bilinear_transposed_conv(c, bias=True), resize_conv], ids=["tconv", "resize_conv"]
)
def test_the_quadratic_is_the_layers_mse_with_its_gradient(make):
    """The exact quadratic fit_restorer trains on, against autograd through the real layer."""
    g = torch.Generator().manual_seed(7)
    layer = make(3).double()
    p = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64) * 4
    t = torch.randn(2, 3, 10, 12, generator=g, dtype=torch.float64) * 4 + 1
    q = _quadratic_mse(layer, p, t)
    conv = next(m for m in layer.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)))
    for _ in range(3):
        theta = torch.randn(q.theta0.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            conv.weight.copy_(theta[:, :-1].reshape(conv.weight.shape))
            conv.bias.copy_(theta[:, -1])
        loss_ref = F.mse_loss(layer(p / q.scale), t / q.scale)
        gw, gb = torch.autograd.grad(loss_ref, [conv.weight, conv.bias])
        loss, grad = q.loss_and_grad(theta)
        assert loss == pytest.approx(float(loss_ref.detach()), rel=1e-10)
        assert torch.allclose(grad, torch.cat([gw.reshape(3, -1), gb[:, None]], 1), rtol=1e-9, atol=1e-12)


def test_fit_restorer_history_is_the_layers_loss_before_and_after():
    x = torch.sigmoid(images((3, 3, 16, 16), seed=8))
    p, _ = max_pool_2x2(x)
    layer = bilinear_transposed_conv(3, bias=True)
    scale = float(x.double().pow(2).mean().sqrt())
    with torch.no_grad():
        before = float(F.mse_loss(layer(p).double(), x.double())) / scale**2
    history = fit_restorer(layer, p, x, steps=50)
    with torch.no_grad():
        after = float(F.mse_loss(layer(p).double(), x.double())) / scale**2  # the bias was rescaled back
    assert history[0] == pytest.approx(before, rel=1e-5)
    assert history[-1] == pytest.approx(after, rel=1e-4)
    assert after < 0.9 * before


# --- the comparison ---------------------------------------------------------------------------------------

def mse_of_unpooling_by_loops(x):
    """Unpooling keeps each window's maximum and zeroes the rest: its MSE is the mean of the squared
    non-maximal values, found here window by window."""
    a = x.double().numpy()
    total = 0.0
    for c in range(a.shape[0]):
        for i in range(0, a.shape[1], 2):
            for j in range(0, a.shape[2], 2):
                win = a[c, i : i + 2, j : j + 2].ravel()
                total += (win**2).sum() - win.max() ** 2
    return total / a.size


@pytest.fixture(scope="module")
def small_photo_comparison():
    x = photo_tensor("astronaut", 64)
    train = torch.stack([photo_tensor("chelsea", 64), photo_tensor("coffee", 64)])
    return x, compare_restorations(x, signal="astronaut", train=train, trained_on="chelsea, coffee", steps=200,
                                   peak=1.0)


def test_comparison_table_is_data_and_its_scores_are_right(small_photo_comparison):
    x, cmp_ = small_photo_comparison
    rows = cmp_.rows()
    assert [r["method"] for r in rows] == list(METHOD_KEYS)
    for r in rows:
        restored = cmp_.restorations[r["method"]].restored
        err = ((restored.double() - x.double()) ** 2).mean().item()
        assert r["mse"] == pytest.approx(err, rel=1e-9)
        assert r["psnr_db"] == pytest.approx(10 * math.log10(1 / err), rel=1e-9)
        pearson = np.corrcoef(restored.double().ravel(), x.double().ravel())[0, 1]
        assert r["correlation"] == pytest.approx(pearson, rel=1e-9)


def test_unpooling_puts_back_exactly_the_maxima(small_photo_comparison):
    x, cmp_ = small_photo_comparison
    r = cmp_.restorations["unpool"]
    c, h, w = x.shape
    flat, sw = r.restored.reshape(c, -1), cmp_.switches.reshape(c, -1)
    assert torch.equal(flat.gather(1, sw), x.reshape(c, -1).gather(1, sw))  # the maxima, exactly
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, sw, True)
    assert not flat[~mask].any()  # and zeros elsewhere
    assert torch.equal(flat.gather(1, sw), cmp_.pooled.reshape(c, -1))
    assert r.maxima_kept == 1.0
    assert r.mse == pytest.approx(mse_of_unpooling_by_loops(x), rel=1e-9)
    # the interpolations do not keep the maxima where they were (nearest copies them everywhere)
    assert cmp_.restorations["nearest"].maxima_kept == 1.0
    assert cmp_.restorations["bilinear"].maxima_kept < 0.5


def test_trained_layers_beat_their_fixed_initialisation_on_a_held_out_photo(small_photo_comparison):
    _, cmp_ = small_photo_comparison
    rs = cmp_.restorations
    assert rs["tconv_trained"].init == "tconv_bilinear" and rs["resize_conv_trained"].init == "nearest"
    assert rs["tconv_trained"].mse < rs["tconv_bilinear"].mse
    assert rs["resize_conv_trained"].mse < rs["nearest"].mse
    for key in ("tconv_trained", "resize_conv_trained"):
        assert rs[key].history[-1] < rs[key].history[0]


def test_comparison_on_random_vgg_feature_maps(vgg16):
    rgb = torch.sigmoid(images((1, 3, 32, 32), seed=9))
    fm = feature_maps(vgg16, rgb, "relu1_2")[0]
    cmp_ = compare_restorations(fm, signal="relu1_2", steps=150, weights=vgg16.describe())  # fit on itself
    rs = cmp_.restorations
    assert rs["unpool"].maxima_kept == 1.0
    assert rs["tconv_trained"].mse < rs["tconv_bilinear"].mse
    assert rs["resize_conv_trained"].mse < rs["nearest"].mse
    assert all(r["psnr_db"] is None for r in cmp_.rows())  # no peak for feature maps
    assert rs["unpool"].mse == pytest.approx(mse_of_unpooling_by_loops(fm), rel=1e-6)


def test_comparison_on_real_vgg_feature_maps_held_out(hed_vgg16):
    rgb = torch.stack([photo_tensor(n, 96) for n in ("astronaut", "chelsea", "coffee")])
    fm = feature_maps(hed_vgg16, rgb, "relu4_3")
    cmp_ = compare_restorations(fm[0], signal="relu4_3", train=fm[1:], steps=200, weights=hed_vgg16.describe())
    rs = cmp_.restorations
    assert rs["unpool"].maxima_kept == 1.0
    assert rs["tconv_trained"].mse < rs["tconv_bilinear"].mse
    assert rs["resize_conv_trained"].mse < rs["nearest"].mse


def test_write_table_round_trips(tmp_path, small_photo_comparison):
    _, cmp_ = small_photo_comparison
    csv_path, json_path = write_table(cmp_.rows(), tmp_path / "table")
    back = json.loads(json_path.read_text())
    assert back == json.loads(json.dumps(cmp_.rows()))
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 1 + len(METHOD_KEYS) and lines[0].startswith("signal,method,")


def test_random_crops_keep_the_pooling_grid():
    x = torch.arange(2 * 1 * 10 * 12, dtype=torch.float32).view(2, 1, 10, 12)
    crops = random_crops(x, 4, 5, seed=1)
    assert crops.shape == (10, 1, 4, 4)
    for k, crop in enumerate(crops):
        v = int(crop[0, 0, 0]) - (k // 5) * 120
        assert (v // 12) % 2 == 0 and (v % 12) % 2 == 0  # even offsets
        assert torch.equal(crop, x[k // 5, :, v // 12 : v // 12 + 4, v % 12 : v % 12 + 4])
    with pytest.raises(ValueError, match="Hint"):
        random_crops(x, 5, 1)


# --- checkerboard ----------------------------------------------------------------------------------------

def periodic_energy_by_fft(y, s):
    """The energy at the frequencies that are multiples of 1/s cycles per pixel, without the constant term,
    over the energy of everything but the constant term (per map, summed)."""
    a = y.double().numpy().reshape(-1, *y.shape[-2:])
    h, w = a.shape[-2:]
    f = np.abs(np.fft.fft2(a)) ** 2
    keep = np.zeros((h, w), dtype=bool)
    keep[:: h // s, :: w // s] = True
    keep[0, 0] = False
    ac = f.sum(axis=(1, 2)) - f[:, 0, 0]
    return float(f[:, keep].sum() / ac.sum())


@settings(max_examples=40, deadline=None)
@given(s=st.integers(2, 4), bh=st.integers(1, 6), bw=st.integers(1, 6), c=st.integers(1, 3), seed=st.integers(0, 10**6))
def test_checkerboard_energy_is_the_fft_energy_at_the_stride_frequencies(s, bh, bw, c, seed):
    y = torch.randn(c, s * bh, s * bw, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assume(float((y - y.mean(dim=(1, 2), keepdim=True)).abs().max()) > 1e-6)
    assert checkerboard_energy(y, s) == pytest.approx(periodic_energy_by_fft(y, s), rel=1e-9, abs=1e-12)


def test_checkerboard_energy_hand_values():
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    assert checkerboard_energy(((-1.0) ** (i + j)), 2) == pytest.approx(1.0)
    assert checkerboard_energy(torch.full((8, 8), 3.0), 2) == 0.0
    assert checkerboard_energy(torch.sin(i * 0.3) + torch.cos(j * 0.2), 2) < 0.05
    with pytest.raises(ValueError, match="Hint"):
        checkerboard_energy(torch.ones(6, 6), 2, border=3)


def test_uniform_overlap_patterns_on_a_constant_input():
    ones = torch.ones(1, 1, 8, 8)
    with torch.no_grad():
        k3 = make_upsampler("tconv_k3s2", 1)(ones)[0, 0][2:-2, 2:-2]
        k4 = make_upsampler("tconv_k4s2", 1)(ones)[0, 0][2:-2, 2:-2]
        rc = make_upsampler("resize_conv", 1)(ones)[0, 0][2:-2, 2:-2]
    # k=3, s=2, p=1: input i reaches outputs 2i - 1 + t, t = 0, 1, 2. An even output 2m is reached once
    # (t = 1), an odd one 2m + 1 twice (t = 0 from i = m + 1, t = 2 from i = m): per 2x2 block 1, 2, 2, 4
    # taps of weight 4/9, starting from an even row and column
    tile = torch.tensor([[4 / 9, 8 / 9], [8 / 9, 16 / 9]])
    assert torch.allclose(k3, tile.repeat(6, 6), atol=1e-6)
    assert torch.allclose(k4, torch.ones_like(k4), atol=1e-6)  # 4 taps of 1/4 everywhere
    assert torch.allclose(rc, torch.ones_like(rc), atol=1e-6)
    assert checkerboard_energy(k3, 2) == pytest.approx(1.0)
    assert checkerboard_energy(k4, 2) < 1e-10 and checkerboard_energy(rc, 2) < 1e-10
    with pytest.raises(ValueError, match="Hint"):
        make_upsampler("tconv_k5s3", 1)


def test_checkerboard_study_orders_the_designs():
    x = photo_tensor("astronaut", 64)
    study = checkerboard_study(x, signal="astronaut", train=photo_tensor("chelsea", 64)[None], steps=50, seeds=2)
    e = study.energy
    assert e("tconv_k3s2", "uniform") > 100 * max(e("tconv_k4s2", "uniform"), e("resize_conv", "uniform"))
    assert e("tconv_k3s2", "uniform") > 0.1
    assert study.rows[0]["design"] == "original" and study.rows[0]["energy"] < 1e-3
    inits = {(r["design"], r["init"]) for r in study.rows[1:]}
    designs, init_kinds = ("tconv_k3s2", "tconv_k4s2", "resize_conv"), ("uniform", "random", "trained")
    assert inits == {(d, i) for d in designs for i in init_kinds}


# --- the deconvnet's stages -------------------------------------------------------------------------------

def test_deconvnet_stages_unpool_sparsely_and_filter_densely(vgg16):
    x = images((1, 3, 64, 64), seed=11)
    trace = deconvnet_stages(vgg16, x, "pool2")
    labels = [s.label for s in trace.stages]
    assert labels == ["seed pool2", "unpool pool2", "conv2_2ᵀ", "conv2_1ᵀ", "unpool pool1", "conv1_2ᵀ", "conv1_1ᵀ"]
    # the last stage is the engine's projection of the same unit (the whole-map walk, as stages use)
    p = dn.Deconvnet(vgg16, crop=False).project(x, "pool2", trace.channel, trace.position)
    assert torch.allclose(trace.stages[-1].signal, p.projection[0], rtol=0, atol=1e-6 * float(p.projection.abs().max()))
    for k, s in enumerate(trace.stages):
        if s.kind == "unpool":
            c, h, w = s.signal.shape
            per_window = (s.signal != 0).reshape(c, h // 2, 2, w // 2, 2).sum(dim=(2, 4))
            assert per_window.max() <= 1  # at most one value per 2x2 window per channel: the switch
            assert s.nonzero <= 0.25
            assert trace.stages[k + 1].nonzero > s.nonzero  # the transposed convolution densifies
    top, left, bottom, right = trace.stages[-1].box
    assert top >= 0 and left >= 0 and bottom <= 64 and right <= 64 and bottom - top == 16  # pool2's field


# --- figures ----------------------------------------------------------------------------------------------

def test_plots_draw_on_the_axes_they_are_given(small_photo_comparison):
    _, cmp_ = small_photo_comparison
    fig, axes = plt.subplots(2, 9)
    assert plot_restorations(cmp_, axes) is fig
    assert all(len(ax.images) == 1 for ax in axes.flat)
    fig2, axes2 = plt.subplots(1, 2)
    assert plot_scores([cmp_, cmp_], axes2) is fig2
    assert [len(ax.patches) for ax in axes2] == [len(METHOD_KEYS)] * 2
    fig3 = plot_conv_matrix(conv_matrix_example())
    assert "matrix $C$" in fig3.get_suptitle()
    for f in (fig, fig2, fig3):
        plt.close(f)


@pytest.mark.slow
def test_make_figures_writes_every_figure_and_the_tables(tmp_path, vgg16):
    paths = make_figures(tmp_path, vgg16, quick=True)
    names = {p.name for p in paths}
    assert {"resolution_conv_matrix.png", "resolution_restore_photo.png", "resolution_scores.png",
            "resolution_checkerboard.png", "resolution_deconvnet_stages.png", "resolution_comparison.json",
            "resolution_comparison.csv", "resolution_checkerboard.json"} <= names
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((tmp_path / "resolution_comparison.json").read_text())
    assert len(rows) == 3 * len(METHOD_KEYS)
    assert {r["weights"] for r in rows if r["signal"].startswith("relu")} == {vgg16.describe()}
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_conv_matrix_of_a_grouped_convolution():
    from deconvnet.resolution.matrix import conv_matrix

    conv = torch.nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=2, bias=False).double()
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    c = conv_matrix(conv.weight.detach(), (4, 5, 5), 2, 1, groups=2)
    assert c.shape == (6 * 3 * 3, 4 * 25)
    torch.testing.assert_close(c @ x.flatten(), conv(x).flatten(), rtol=0, atol=1e-12)
    # output channel 0 reads only input channels 0 and 1
    assert c[:9, 50:].abs().max() == 0 and c[:9, :50].abs().max() > 0
    with pytest.raises(ValueError, match="groups=4 must be a positive integer dividing the 6 output channels"):
        conv_matrix(conv.weight.detach(), (4, 5, 5), groups=4)


def test_maxima_kept_is_robust_to_round_off():
    from deconvnet.resolution.restore import maxima_kept

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    pooled, switches = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
    exact = torch.nn.functional.max_unpool2d(pooled, switches, 2)
    assert maxima_kept(exact, pooled, switches) == 1.0
    wobble = exact * (1 + 1e-7 * torch.randn(exact.shape, generator=g))  # another thread count's round-off
    assert maxima_kept(wobble, pooled, switches) == 1.0
    assert maxima_kept(torch.zeros_like(exact), pooled, switches) < 0.1
