"""Downsample by 2x2 max-pooling, then restore the resolution seven ways, and measure each.

===========================  ========================================================================
method                       what it is
===========================  ========================================================================
``unpool``                   the maxima go back to their switch positions, zeros elsewhere (the
                             deconvnet's unpooling: the exact transpose of max-pooling)
``nearest``                  "upsampling by copying": each value to its 2x2 block, no positions
``bilinear``, ``bicubic``    ``F.interpolate`` (``align_corners=False``)
``tconv_bilinear``           a stride-2 transposed convolution with FCN's fixed bilinear 4x4 kernel
``tconv_trained``            the same layer (plus a bias) trained from that bilinear initialisation
``resize_conv_trained``      nearest resize then a 3x3 convolution (Odena et al. 2016), trained from
                             the identity kernel, i.e. from ``nearest``
===========================  ========================================================================

The two trained layers are depthwise (one kernel per channel): the question is how to restore the
positions within a map, and channel mixing would let a layer borrow from other channels. They are
trained briefly by full-batch Adam on the mean squared error of restoring the originals of a training
set, which by default is the signal itself (then the score is what the layer can fit, an upper bound),
and better held-out signals (other photographs). Their fixed initialisations are rows of the same table
(``init``), so "training helps" is a comparison within the table.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.chain import unpool_scatter_add
from ..plot import PRINT_WIDTH, TEXT_PT, TICK_PT, footer, title, wrap_to_width


@dataclass(frozen=True)
class Method:
    """One way of restoring the resolution.

    Attributes:
        key: short name used in tables (``"tconv_trained"``).
        label: name shown in figures.
        init: for a trained layer, the key of the fixed method it starts from; else None.
    """

    key: str
    label: str
    init: str | None = None


METHODS = (
    Method("unpool", "unpooling (switches)"),
    Method("nearest", "nearest (copying)"),
    Method("bilinear", "bilinear"),
    Method("bicubic", "bicubic"),
    Method("tconv_bilinear", "transposed conv,\nfixed bilinear kernel"),
    Method("tconv_trained", "transposed conv,\ntrained", init="tconv_bilinear"),
    Method("resize_conv_trained", "resize-conv,\ntrained", init="nearest"),
)
METHOD_KEYS = tuple(m.key for m in METHODS)


# --- the pieces ----------------------------------------------------------------------------------------

def _as_batch(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating-point (C, H, W) or (B, C, H, W) tensor, got {got}")
    x = x if x.dim() == 4 else x.unsqueeze(0)
    h, w = x.shape[-2:]
    if h < 2 or w < 2 or h % 2 or w % 2:
        raise ValueError(
            f"{name} has an odd or too small size {h}x{w}: 2x2 max-pooling and a 2x restoration need even "
            f"sizes. Hint: crop to {h - h % 2}x{w - w % 2}, e.g. x[..., :{h - h % 2}, :{w - w % 2}]"
        )
    return x


def max_pool_2x2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 stride-2 max-pooling with its switches.

    Args:
        x: (B, C, H, W) with even H and W.

    Returns:
        (pooled (B, C, H/2, W/2), switches): the argmax of every window as an index into the flattened
        H*W map, as ``F.max_pool2d(..., return_indices=True)`` gives them.
    """
    x = _as_batch(x)
    return F.max_pool2d(x, 2, 2, return_indices=True)


def unpool(pooled: torch.Tensor, switches: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Put each pooled value back at its switch, zeros elsewhere: the transpose of max-pooling.

    For non-overlapping windows this equals the gradient of max-pooling (tested), and
    ``F.max_unpool2d``.
    """
    return unpool_scatter_add(pooled, switches, tuple(size))


def bilinear_kernel(size: int) -> torch.Tensor:
    """FCN's bilinear upsampling kernel (``upsample_filt`` of Long et al. 2015), (size, size) float64.

    For size 4 (the kernel of a stride-2 transposed convolution with padding 1) it is the outer product
    of [0.25, 0.75, 0.75, 0.25] with itself: in the interior the layer equals bilinear interpolation with
    ``align_corners=False``; at the border it fades towards zero (zero padding, no renormalisation).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}. Hint: 2 * factor - factor % 2, e.g. 4 for 2x")
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    f = 1 - (og - center).abs() / factor
    return f[:, None] * f[None, :]


def bilinear_transposed_conv(channels: int, *, bias: bool = False) -> nn.ConvTranspose2d:
    """A depthwise 2x transposed convolution (k=4, s=2, p=1) initialised with ``bilinear_kernel(4)``."""
    layer = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, groups=channels, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(4).to(layer.weight.dtype).expand_as(layer.weight))
        if bias:
            layer.bias.zero_()
    return layer


def resize_conv(channels: int, *, bias: bool = True) -> nn.Sequential:
    """Nearest 2x resize then a depthwise 3x3 convolution initialised to the identity (so = nearest)."""
    conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=bias)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = 1.0
        if bias:
            conv.bias.zero_()
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv)


def restore_fixed(method: str, pooled: torch.Tensor, switches: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Restore with one of the fixed methods (``unpool``, ``nearest``, ``bilinear``, ``bicubic``,
    ``tconv_bilinear``) to ``size`` (H, W)."""
    if method == "unpool":
        return unpool(pooled, switches, size)
    if method == "nearest":
        return F.interpolate(pooled, size=tuple(size), mode="nearest")
    if method in ("bilinear", "bicubic"):
        return F.interpolate(pooled, size=tuple(size), mode=method, align_corners=False)
    if method == "tconv_bilinear":
        with torch.no_grad():
            return bilinear_transposed_conv(pooled.shape[1]).to(pooled)(pooled)
    fixed = ("unpool", "nearest", "bilinear", "bicubic", "tconv_bilinear")
    raise ValueError(f"'{method}' is not a fixed method. Hint: one of {', '.join(fixed)}")


def _depthwise_conv(layer: nn.Module) -> nn.Conv2d | nn.ConvTranspose2d:
    """The one depthwise convolution holding all of ``layer``'s parameters (else ValueError)."""
    convs = [m for m in layer.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if len(convs) == 1:
        conv = convs[0]
        own = sum(p.numel() for p in conv.parameters())
        if conv.groups == conv.in_channels == conv.out_channels and own == sum(p.numel() for p in layer.parameters()):
            return conv
    raise ValueError(
        "fit_restorer trains layers whose only parameters are one depthwise Conv2d/ConvTranspose2d "
        "(groups == in_channels == out_channels) and whose other modules are linear, e.g. "
        "bilinear_transposed_conv(c, bias=True) or resize_conv(c)"
    )


def _tap_responses(layer: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """(K, N, C, H, W): the layer's output when every channel's kernel is one-hot at tap k, no bias.

    The layer is linear in its kernel, so its output is ``sum_k w[c, k] * responses[k] + bias[c]``.
    Computed in float64 on a copy in which the depthwise convolution is replaced by a one-channel one
    run over the channels as a batch (the same numbers; PyTorch's depthwise float64 path is slow);
    ``layer`` is not touched.
    """
    probe = copy.deepcopy(layer).double()
    conv = _depthwise_conv(probe)
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError("fit_restorer needs numeric zero padding. Hint: padding=1, padding_mode='zeros'")
    kw = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=False, dtype=torch.float64)
    if isinstance(conv, nn.ConvTranspose2d):
        single = nn.ConvTranspose2d(1, 1, conv.kernel_size, output_padding=conv.output_padding, **kw)
    else:
        single = nn.Conv2d(1, 1, conv.kernel_size, **kw)
    name = next(n for n, m in probe.named_modules() if m is conv)
    if name == "":
        probe = single
    else:
        parent, _, attr = name.rpartition(".")
        setattr(probe.get_submodule(parent) if parent else probe, attr, single)
    n, c, h, w = pooled.shape
    flat = pooled.double().reshape(n * c, 1, h, w)
    out = []
    with torch.no_grad():
        for k in range(single.weight.numel()):
            single.weight.zero_()
            single.weight.view(-1)[k] = 1.0
            r = probe(flat)
            out.append(r.reshape(n, c, *r.shape[-2:]))
    return torch.stack(out)


@dataclass
class _QuadraticMSE:
    """The mean squared error of a depthwise layer as an exact quadratic in its parameters.

    ``theta`` is (C, K) kernels (flattened) or (C, K + 1) with the bias, on data divided by ``scale``:
    ``loss(theta) = (sum_c theta_c^T G_c theta_c - 2 theta_c . r_c + |t|^2) / M``.
    """

    gram: torch.Tensor  # (C, K', K')
    cross: torch.Tensor  # (C, K')
    const: float
    count: int
    scale: float
    theta0: torch.Tensor  # (C, K') the layer's current parameters, bias divided by scale

    def loss_and_grad(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        g_theta = torch.bmm(self.gram, theta.unsqueeze(2)).squeeze(2)
        loss = (float((theta * g_theta).sum()) - 2 * float((theta * self.cross).sum()) + self.const) / self.count
        return loss, 2 * (g_theta - self.cross) / self.count


def _quadratic_mse(layer: nn.Module, pooled: torch.Tensor, original: torch.Tensor) -> _QuadraticMSE:
    conv = _depthwise_conv(layer)
    scale = float(original.detach().double().pow(2).mean().sqrt()) or 1.0
    p, t = pooled.detach().double() / scale, original.detach().double() / scale
    resp = _tap_responses(layer, p)  # (K, N, C, H, W)
    if resp.shape[1:] != t.shape:
        raise ValueError(f"the layer maps {tuple(p.shape)} to {tuple(resp.shape[1:])}, not to the targets' {tuple(t.shape)}")
    if conv.bias is not None:  # the bias is the weight of a constant response
        resp = torch.cat([resp, torch.ones_like(resp[:1])])
    c = t.shape[1]
    w0 = conv.weight.detach().double().reshape(c, -1)
    theta0 = torch.cat([w0, conv.bias.detach().double()[:, None] / scale], 1) if conv.bias is not None else w0
    return _QuadraticMSE(
        gram=torch.einsum("knchw,lnchw->ckl", resp, resp),
        cross=torch.einsum("knchw,nchw->ck", resp, t),
        const=float(t.pow(2).sum()),
        count=t.numel(),
        scale=scale,
        theta0=theta0,
    )


def fit_restorer(
    layer: nn.Module,
    pooled: torch.Tensor,
    original: torch.Tensor,
    *,
    steps: int,
    lr: float = 0.01,
) -> list[float]:
    """Train ``layer`` in place to map ``pooled`` to ``original``: full-batch Adam on the mean squared error.

    The layers trained here (one depthwise convolution or transposed convolution, after a fixed linear
    resize or none) are linear in their parameters, so the mean squared error is exactly a quadratic
    ``(theta^T G theta - 2 theta^T r + |t|^2) / M`` per channel, with ``G`` and ``r`` computed once from
    the layer's responses to one-hot kernels. Adam then runs on that quadratic and its exact gradient:
    the same trajectory as Adam on ``F.mse_loss(layer(pooled), original)`` (the tests check loss and
    gradient against autograd through the layer), at a cost per step independent of the data size. The
    data are divided by one scalar (the RMS of ``original``) during training, so one learning rate serves
    photographs in [0, 1] and feature maps in the hundreds; the bias is rescaled afterwards.

    Args:
        layer: maps (N, C, h, w) to (N, C, H, W): one depthwise Conv2d or ConvTranspose2d holding all the
            parameters, and otherwise parameter-free linear modules (e.g. ``nn.Upsample``).
        pooled: (N, C, h, w) inputs.
        original: (N, C, H, W) targets.
        steps: Adam steps (0: leave the layer as it is).
        lr: Adam learning rate.

    Returns:
        The training loss (MSE on the scaled data) before each step and after the last.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    q = _quadratic_mse(layer, pooled, original)
    theta = q.theta0.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    history = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors of a few thousand numbers: more threads only add overhead
    try:
        for _ in range(steps):
            loss, grad = q.loss_and_grad(theta.detach())
            theta.grad = grad
            opt.step()
            history.append(loss)
        history.append(q.loss_and_grad(theta.detach())[0])
    finally:
        torch.set_num_threads(threads)
    conv = _depthwise_conv(layer)
    with torch.no_grad():
        k = conv.weight[0].numel()
        conv.weight.copy_(theta[:, :k].reshape(conv.weight.shape).to(conv.weight.dtype))
        if conv.bias is not None:
            conv.bias.copy_((theta[:, k] * q.scale).to(conv.bias.dtype))
    return history


# --- metrics -------------------------------------------------------------------------------------------

def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared difference, in float64."""
    return float((a.double() - b.double()).pow(2).mean())


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak^2 / MSE)``; inf for identical inputs."""
    m = mse(a, b)
    return math.inf if m == 0 else 10 * math.log10(peak**2 / m)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of all entries (nan when either is constant)."""
    x, y = a.double().reshape(-1), b.double().reshape(-1)
    x, y = x - x.mean(), y - y.mean()
    den = float(x.norm() * y.norm())
    return float(x @ y) / den if den > 0 else math.nan


#: how close a restored value must be to its maximum to count as kept, relative to the largest maximum
MAXIMA_TOLERANCE = 1e-4


def maxima_kept(restored: torch.Tensor, pooled: torch.Tensor, switches: torch.Tensor) -> float:
    """Fraction of the pooled maxima found at their switch positions in ``restored``.

    "Found" is to within ``MAXIMA_TOLERANCE`` of the largest |maximum|: float32 round-off (which changes
    with the number of threads a convolution uses) must not decide the count, and unpooling, which puts
    the maxima back bit for bit, scores 1 either way.
    """
    n, c = pooled.shape[:2]
    at = restored.reshape(n, c, -1).gather(2, switches.reshape(n, c, -1))
    target = pooled.reshape(n, c, -1)
    tol = MAXIMA_TOLERANCE * float(target.abs().max()) if target.numel() else 0.0
    return float(((at - target).abs() <= tol).double().mean())


# --- the comparison -------------------------------------------------------------------------------------

@dataclass
class Restoration:
    """One method's restoration of one signal, and its scores.

    Attributes:
        method: the key (``METHOD_KEYS``); label: its display name; init: for a trained layer, the key of
            its fixed initialisation.
        restored: (C, H, W) the restored signal (not clamped: the scores are the method's own).
        mse: mean squared error to the original.
        psnr_db: PSNR in dB for signals with a known peak (photographs: 1), else None.
        correlation: Pearson correlation with the original.
        maxima_kept: fraction of the pooled maxima restored exactly at their switch positions.
        history: for a trained layer, its training loss per step.
    """

    method: str
    label: str
    init: str | None
    restored: torch.Tensor
    mse: float
    psnr_db: float | None
    correlation: float
    maxima_kept: float
    history: list[float] | None = None


@dataclass
class Comparison:
    """The seven restorations of one signal.

    Attributes:
        signal: what was pooled and restored (``"astronaut (RGB)"``, ``"relu2_2"``).
        original: (C, H, W); pooled: (C, H/2, W/2); switches: (C, H/2, W/2).
        restorations: method key -> ``Restoration``, in the order of ``METHODS``.
        trained_on: what the trained layers were fitted to.
        steps: training steps of the trained layers.
        weights: the network that made the signal (``Net.describe()``), or a note that none did.
    """

    signal: str
    original: torch.Tensor
    pooled: torch.Tensor
    switches: torch.Tensor
    restorations: dict[str, Restoration]
    trained_on: str
    steps: int
    weights: str

    def rows(self) -> list[dict]:
        """The table as data: one dict per method (signal, method, mse, psnr_db, correlation, ...)."""
        return [
            {
                "signal": self.signal,
                "method": r.method,
                "label": r.label.replace("\n", " "),
                "mse": r.mse,
                "psnr_db": r.psnr_db,
                "correlation": r.correlation,
                "maxima_kept": r.maxima_kept,
                "init": r.init,
                "trained_on": self.trained_on if r.init else None,
                "steps": self.steps if r.init else None,
                "weights": self.weights,
            }
            for r in self.restorations.values()
        ]


def compare_restorations(
    original: torch.Tensor,
    *,
    signal: str,
    train: torch.Tensor | None = None,
    trained_on: str | None = None,
    steps: int = 300,
    lr: float = 0.01,
    peak: float | None = None,
    weights: str = "no network: pixel space",
) -> Comparison:
    """Max-pool ``original`` 2x2 and restore it with each of ``METHODS``; score each restoration.

    Args:
        original: (C, H, W) or (1, C, H, W), H and W even: a photograph in [0, 1] or a feature map.
        signal: a name for it in tables and figures.
        train: (N, C, H, W) originals to train the two learnable layers on (None: ``original`` itself,
            so the trained scores are what the layer can fit rather than held-out scores).
        trained_on: a description of ``train`` for the table.
        steps, lr: training of the learnable layers (``fit_restorer``).
        peak: the signal's peak value for PSNR (1.0 for photographs in [0, 1]); None: no PSNR.
        weights: ``Net.describe()`` of the network that made the signal.

    Returns:
        A ``Comparison``; ``comparison.rows()`` is the table.
    """
    x = _as_batch(original, "original")
    if x.shape[0] != 1:
        raise ValueError(f"original must be one signal (C, H, W), got a batch of {x.shape[0]}. Hint: original[0]")
    if not torch.isfinite(x).all():
        raise ValueError("original contains NaN or infinite values")
    x = x.detach()
    if train is None:
        t, trained_on = x, trained_on or "the evaluated signal itself (fit, not held out)"
    else:
        t = _as_batch(train, "train").detach().to(x)
        if t.shape[1] != x.shape[1]:
            raise ValueError(f"train has {t.shape[1]} channels, original {x.shape[1]}. Hint: the same kind of signal")
        trained_on = trained_on or f"{t.shape[0]} training signal(s)"
    size = x.shape[-2:]
    pooled, switches = max_pool_2x2(x)
    t_pooled, _ = max_pool_2x2(t)
    c = x.shape[1]
    restored, histories = {}, {}
    for key in ("unpool", "nearest", "bilinear", "bicubic", "tconv_bilinear"):
        restored[key] = restore_fixed(key, pooled, switches, size)
    layers = {"tconv_trained": bilinear_transposed_conv(c, bias=True), "resize_conv_trained": resize_conv(c)}
    for key, layer in layers.items():
        layer = layer.to(x)
        histories[key] = fit_restorer(layer, t_pooled, t, steps=steps, lr=lr)
        with torch.no_grad():
            restored[key] = layer(pooled)
    results = {}
    for m in METHODS:
        r = restored[m.key].detach()
        results[m.key] = Restoration(
            method=m.key,
            label=m.label,
            init=m.init,
            restored=r[0],
            mse=mse(r, x),
            psnr_db=psnr(r, x, peak) if peak is not None else None,
            correlation=correlation(r, x),
            maxima_kept=maxima_kept(r, pooled, switches),
            history=histories.get(m.key),
        )
    return Comparison(
        signal=signal,
        original=x[0],
        pooled=pooled[0],
        switches=switches[0],
        restorations=results,
        trained_on=trained_on,
        steps=steps,
        weights=weights,
    )


def random_crops(x: torch.Tensor, size: int, count: int, *, seed: int = 0) -> torch.Tensor:
    """``count`` random ``size`` x ``size`` crops of every signal in ``x`` (N, C, H, W), at even offsets.

    The restoring layers are local (4x4 and 3x3 kernels), so training them on crops is training them on
    the signals, at a fraction of the cost. Even offsets keep the 2x2 pooling grid of the full signal.
    """
    x = _as_batch(x, "x")
    h, w = x.shape[-2:]
    if size % 2 or size < 2 or size > min(h, w):
        raise ValueError(f"crop size {size} must be even and at most {min(h, w)}. Hint: e.g. {min(h, w) - min(h, w) % 2}")
    g = torch.Generator().manual_seed(seed)
    tops = torch.randint(0, (h - size) // 2 + 1, (x.shape[0], count), generator=g) * 2
    lefts = torch.randint(0, (w - size) // 2 + 1, (x.shape[0], count), generator=g) * 2
    return torch.stack([x[i, :, t : t + size, l : l + size]
                        for i in range(x.shape[0]) for t, l in zip(tops[i].tolist(), lefts[i].tolist())])


def write_table(rows: Sequence[dict], path: str | Path) -> list[Path]:
    """Write table rows as ``path`` with suffix .csv and .json (atomically); return both paths."""
    from ..io import atomic_path

    path = Path(path)
    out = []
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    for suffix in (".csv", ".json"):
        target = path.with_suffix(suffix)
        with atomic_path(target) as tmp, open(tmp, "w", newline="") as f:
            if suffix == ".json":
                json.dump(clean, f, indent=1)
            else:
                keys = list(dict.fromkeys(k for r in clean for k in r))
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(clean)
        out.append(target)
    return out


def format_table(rows: Sequence[dict]) -> str:
    """The table as aligned text (for notebooks and logs)."""
    lines = [f"{'signal':<18} {'method':<20} {'MSE':>10} {'PSNR dB':>8} {'corr':>7} {'maxima kept':>11}"]
    for r in rows:
        ps = f"{r['psnr_db']:.2f}" if r.get("psnr_db") is not None else "-"
        lines.append(
            f"{r['signal'][:18]:<18} {r['method']:<20} {r['mse']:>10.4g} {ps:>8} {r['correlation']:>7.4f} "
            f"{r['maxima_kept']:>11.3f}"
        )
    return "\n".join(lines)


# --- figures -------------------------------------------------------------------------------------------

def _busiest_window(x: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` window with the most gradient energy (detail to zoom on)."""
    g = x.double()
    e = (g[:, 1:, :-1] - g[:, :-1, :-1]).pow(2) + (g[:, :-1, 1:] - g[:, :-1, :-1]).pow(2)
    s = F.avg_pool2d(e.sum(0)[None, None], size, stride=max(1, size // 4))[0, 0]
    i = int(s.argmax())
    step = max(1, size // 4)
    return (i // s.shape[1]) * step, (i % s.shape[1]) * step


def _display(t: torch.Tensor, channel: int | None) -> np.ndarray:
    if channel is None:
        return t.detach().double().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return t[channel].detach().double().cpu().numpy()


def plot_restorations(comparison: Comparison, axes=None, *, channel: int | None = None, zoom: int | None = None):
    """Draw the original, the pooled map and the seven restorations, full size and zoomed.

    Photographs (3 channels, ``psnr_db`` set) are shown in colour, clamped to [0, 1]; feature maps one
    channel at a time (default: the channel with the most energy), all panels on the original's colour
    scale.

    Args:
        comparison: from ``compare_restorations``.
        axes: a (2, 9) array of matplotlib axes; None creates a figure.
        channel: the feature-map channel to show (ignored for photographs).
        zoom: side of the zoomed window in pixels (default: a quarter of the height, at least 8).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    cmp_ = comparison
    rgb = cmp_.original.shape[0] == 3 and next(iter(cmp_.restorations.values())).psnr_db is not None
    if rgb:
        channel = None
    elif channel is None:
        channel = int(cmp_.original.double().pow(2).flatten(1).sum(1).argmax())
    heads = None
    if axes is None:
        # printed at a page's width: the nine panels as a 3x3 grid, each the whole map beside its zoomed window
        fig = plt.figure(figsize=(PRINT_WIDTH, 5.3), layout="constrained")
        subs = fig.subfigures(3, 3, wspace=0.02, hspace=0.01).ravel()
        pairs = [sub.subplots(1, 2, gridspec_kw={"wspace": 0.04}) for sub in subs]
        axes = np.array([[a for a, _ in pairs], [z for _, z in pairs]], dtype=object)
        heads = list(subs)
    else:
        fig = np.asarray(axes).flat[0].figure
    axes = np.asarray(axes)
    if axes.shape != (2, 9):
        raise ValueError(f"axes must be a 2 x 9 array, got {axes.shape}")
    h, w = cmp_.original.shape[-2:]
    zoom = zoom or max(8, (h // 7) // 2 * 2)
    top, left = _busiest_window(cmp_.original if rgb else cmp_.original[channel : channel + 1], zoom)
    top, left = top - top % 2, left - left % 2  # on the pooling grid, so the pooled panel zooms alike
    ref = cmp_.original if rgb else cmp_.original[channel]
    lims = (0.0, 1.0) if rgb else (float(ref.min()), float(ref.max()))
    kw = {} if rgb else {"cmap": "magma", "vmin": lims[0], "vmax": lims[1]}
    panels = [(f"original ({h}x{w})", cmp_.original, None), (f"max-pooled 2x2 ({h // 2}x{w // 2})", cmp_.pooled, None)]
    for r in cmp_.restorations.values():
        if r.psnr_db is not None:
            score = f"PSNR {r.psnr_db:.2f} dB, corr {r.correlation:.3f}"
        else:
            score = f"corr {r.correlation:.3f}, MSE {r.mse:.3g}"
        panels.append((f"({'abcdefg'[len(panels) - 2]}) {' '.join(r.label.split())}", r.restored, score))
    for col, (head, t, score) in enumerate(panels):
        img = _display(t, channel)
        scale = 2 if t.shape[-1] * 2 == w else 1  # the pooled map is half size: zoom on its half window
        ax_full, ax_zoom = axes[0, col], axes[1, col]
        ax_full.imshow(img, interpolation="nearest", **kw)
        ax_full.add_patch(patches.Rectangle((left / scale - 0.5, top / scale - 0.5), zoom / scale, zoom / scale,
                                            fill=False, edgecolor="cyan", linewidth=1))
        zt, zl, zs = top // scale, left // scale, zoom // scale
        ax_zoom.imshow(img[zt : zt + zs, zl : zl + zs], interpolation="nearest", **kw)
        if heads is not None:  # the title and the score span the pair
            heads[col].suptitle(head, fontsize=TEXT_PT)
            heads[col].supxlabel(score or " ", fontsize=TICK_PT)
        else:
            ax_full.set_title(head, fontsize=TEXT_PT)
            if score:
                ax_zoom.set_xlabel(score, fontsize=TICK_PT)
        for ax in (ax_full, ax_zoom):
            ax.set_xticks([])
            ax.set_yticks([])
    what = "" if rgb else f", channel {channel} of {cmp_.original.shape[0]}"
    title(fig, f"Restoring the resolution of {cmp_.signal}{what} after 2x2 max-pooling")
    footer(fig, f"Each panel: the whole map and, right, its cyan window ({zoom}x{zoom} px at row {top}, column "
                f"{left}) enlarged. Trained layers: {cmp_.steps} Adam steps, fitted on {cmp_.trained_on}; (f) starts "
                f"from (e), (g) from (b). Scores against the original, unclamped outputs.\n{cmp_.weights}")
    return fig


def plot_scores(comparisons: Sequence[Comparison], axes=None):
    """Bar charts of the table: PSNR for photographs, correlation for feature maps, one axis each.

    Args:
        comparisons: from ``compare_restorations``.
        axes: one matplotlib axis per comparison; None creates a figure.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    n = len(comparisons)
    if axes is None:
        # printed at a page's width: one row of bar charts, the method names once, on the left
        fig, axes = plt.subplots(1, n, figsize=(PRINT_WIDTH, 3.3), layout="constrained", squeeze=False,
                                 gridspec_kw={"width_ratios": [1.6] + [1] * (n - 1)})
        axes = axes[0]
    else:
        fig = np.asarray(axes).flat[0].figure
    axes = list(np.asarray(axes).flat)
    if len(axes) != n:
        raise ValueError(f"need {n} axes, got {len(axes)}")
    colors = {"unpool": "tab:red", "nearest": "tab:orange", "bilinear": "tab:blue", "bicubic": "tab:cyan",
              "tconv_bilinear": "tab:green", "tconv_trained": "darkgreen", "resize_conv_trained": "tab:purple"}
    for i, (ax, c) in enumerate(zip(axes, comparisons)):
        rs = list(c.restorations.values())
        use_psnr = all(r.psnr_db is not None for r in rs)
        vals = [r.psnr_db if use_psnr else r.correlation for r in rs]
        ys = np.arange(len(rs))[::-1]
        ax.barh(ys, vals, color=[colors.get(r.method, "gray") for r in rs])
        for y, v in zip(ys, vals):
            ax.text(v, y, f" {v:.1f}" if use_psnr else f" {v:.2f}", va="center", fontsize=TICK_PT)
        ax.set_yticks(ys)
        ax.set_yticklabels([f"({'abcdefg'[k]}) " + " ".join(r.label.split()) for k, r in enumerate(rs)]
                           if i == 0 else [f"({'abcdefg'[k]})" for k in range(len(rs))], fontsize=TICK_PT)
        ax.set_xlabel("PSNR (dB), higher\nis better" if use_psnr else "correlation with\nthe original", fontsize=TEXT_PT)
        lo = min(vals)
        ax.set_xlim(min(0, lo) if not use_psnr else max(0, lo - 3), max(vals) * 1.25 if use_psnr else 1.4)
        ax.set_title(wrap_to_width(c.signal, 1.3, TEXT_PT), fontsize=TEXT_PT)
        ax.tick_params(labelsize=TICK_PT)
    title(fig, "Restoring resolution after 2x2 max-pooling: scores")
    footer(fig, "\n".join(sorted({c.weights for c in comparisons})))
    return fig
