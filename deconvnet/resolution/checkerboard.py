"""Checkerboard artifacts of transposed convolutions (Odena, Dumoulin & Olah 2016), measured.

A stride-``s`` transposed convolution with kernel size ``k`` adds ``k`` taps per input, ``s`` apart: when
``k`` is not divisible by ``s`` the output positions receive unequal numbers of taps (for k=3, s=2 in 2D:
1, 2, 2 and 4, repeating every 2 pixels), so even a constant input comes out as a checkerboard. A
kernel size divisible by the stride overlaps evenly; resizing then convolving cannot overlap unevenly.

The measure (``checkerboard_energy``): the fraction of a map's non-constant energy that lies in its
stride-periodic pattern. The stride-periodic pattern of a map is the ``s`` x ``s`` tile of its phase
means (the mean of every ``s``-th pixel, for each of the ``s^2`` phases), tiled over the map; its
energy equals the map's Fourier energy at the frequencies that are multiples of ``1/s`` cycles per
pixel, less the constant term (tested against the FFT). It is 1 for a pure checkerboard and near 0 for
a natural photograph (its own value is reported as the baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..checks import positive_int
from ..plot import PRINT_WIDTH, TEXT_PT, TICK_PT, footer, title
from .fit import fit_restorer
from .metrics import psnr
from .restorers import max_pool_2x2


@dataclass(frozen=True)
class Design:
    """An upsampling layer design for the checkerboard comparison.

    Attributes:
        key: short name; label: display name; kernel_size, stride: of the layer that overlaps.
    """

    key: str
    label: str
    kernel_size: int
    stride: int


DESIGNS = (
    Design("tconv_k3s2", "transposed conv k=3, s=2\n(3 not divisible by 2)", 3, 2),
    Design("tconv_k4s2", "transposed conv k=4, s=2\n(4 divisible by 2)", 4, 2),
    Design("resize_conv", "nearest resize x2,\nthen conv k=3, s=1", 3, 1),
)
DESIGN_KEYS = tuple(d.key for d in DESIGNS)
INITS = ("uniform", "random", "trained")


def checkerboard_energy(y: torch.Tensor, stride: int = 2, border: int = 0) -> float:
    """Fraction of the non-constant energy of ``y`` in its stride-periodic pattern (see module docstring).

    Args:
        y: (H, W), (C, H, W) or (B, C, H, W); every map is measured about its own mean, and the energies
            of all maps are summed before the ratio.
        stride: the period in pixels (the upsampling layer's stride).
        border: pixels cut from each side first (zero padding makes borders differ); the rest is then cut
            to a multiple of ``stride`` from the bottom/right.

    Returns:
        A number in [0, 1]; 0 when ``y`` is constant.
    """
    stride = positive_int("stride", stride, hint="the upsampling layer's stride, e.g. 2")
    border = positive_int("border", border, minimum=0)
    t = y.detach().double()
    if t.dim() < 2:
        raise ValueError(f"y must be (H, W), (C, H, W) or (B, C, H, W), got {tuple(y.shape)}")
    t = t.reshape(-1, *t.shape[-2:])
    if border:
        t = t[:, border:-border, border:-border]
    h, w = (t.shape[-2] // stride) * stride, (t.shape[-1] // stride) * stride
    if h == 0 or w == 0:
        raise ValueError(f"nothing left of {tuple(y.shape[-2:])} after a border of {border} and stride {stride}. "
                         "Hint: a smaller border")
    t = t[:, :h, :w]
    t = t - t.mean(dim=(1, 2), keepdim=True)
    total = float(t.pow(2).sum())
    if total == 0:
        return 0.0
    phases = t.reshape(t.shape[0], h // stride, stride, w // stride, stride).mean(dim=(1, 3))
    periodic = float(phases.pow(2).sum()) * (h // stride) * (w // stride)
    return periodic / total


def make_upsampler(design: str, channels: int, init: str = "uniform", *, seed: int = 0) -> nn.Module:
    """A depthwise 2x upsampling layer of one of ``DESIGNS``, with a bias initialised to zero.

    Args:
        design: ``"tconv_k3s2"``, ``"tconv_k4s2"`` or ``"resize_conv"``; each maps h x w to 2h x 2w.
        channels: number of channels (one kernel each).
        init: ``"uniform"`` (all taps equal, the average gain 1: the pure overlap pattern) or
            ``"random"`` (PyTorch's default initialisation, seeded).
        seed: seed of the random initialisation.
    """
    if design == "tconv_k3s2":
        layer = nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1, groups=channels)
        conv, taps_per_output = layer, 9 / 4
    elif design == "tconv_k4s2":
        layer = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, groups=channels)
        conv, taps_per_output = layer, 16 / 4
    elif design == "resize_conv":
        conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        layer, taps_per_output = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv), 9
    else:
        raise ValueError(f"unknown design '{design}'. Hint: one of {', '.join(DESIGN_KEYS)}")
    with torch.no_grad():
        if init == "uniform":
            conv.weight.fill_(1.0 / taps_per_output)
        elif init == "random":
            g = torch.Generator().manual_seed(seed)
            bound = 1.0 / np.sqrt(conv.weight[0].numel())  # the scale of PyTorch's default init
            conv.weight.copy_((torch.rand(conv.weight.shape, generator=g) * 2 - 1) * bound)
        else:
            raise ValueError(f"unknown init '{init}'. Hint: 'uniform' or 'random'")
        conv.bias.zero_()
    return layer


@dataclass
class CheckerboardStudy:
    """The checkerboard measure for each design and initialisation.

    Attributes:
        rows: the table: dicts with design, label, init, energy (mean over seeds for ``random``, with
            energy_sd, energy_min, energy_max), psnr_db, seeds; the first row is the original signal's own energy
            (the baseline).
        constant: design key -> (H, W) output of the uniform layer on a constant input (the overlap
            pattern itself).
        outputs: (design key, init) -> (C, H, W) the restored signal (``random``: the first seed).
        original: (C, H, W) the signal.
        signal, trained_on, steps, border: what was measured and how (the stride is 2).
    """

    rows: list[dict]
    constant: dict[str, torch.Tensor]
    outputs: dict[tuple[str, str], torch.Tensor]
    original: torch.Tensor
    signal: str
    trained_on: str
    steps: int
    border: int = 4

    def energy(self, design: str, init: str) -> float:
        """The table's energy for one design and initialisation."""
        for r in self.rows:
            if r["design"] == design and r["init"] == init:
                return r["energy"]
        raise ValueError(f"no row for design '{design}', init '{init}'. Hint: designs {DESIGN_KEYS}, inits {INITS}")


def checkerboard_study(
    original: torch.Tensor,
    *,
    signal: str,
    train: torch.Tensor | None = None,
    trained_on: str | None = None,
    steps: int = 300,
    lr: float = 0.02,
    seeds: int = 8,
    border: int = 4,
    constant_size: int = 16,
) -> CheckerboardStudy:
    """Upsample the 2x2 max-pooled ``original`` with each design, uniform / random / trained, and measure.

    Args:
        original: (C, H, W) a photograph in [0, 1] (PSNR is computed with peak 1).
        signal: its name for the table.
        train: (N, C, h, w) signals to train on (None: ``original`` itself). Training starts from the
            first random initialisation, as a layer of a network would.
        trained_on: a description of ``train``.
        steps, lr: training (``fit_restorer``).
        seeds: number of random initialisations averaged.
        border: pixels left out at each side when measuring.
        constant_size: side of the constant input whose uniform-layer outputs show the overlap pattern.

    Returns:
        A ``CheckerboardStudy``.
    """
    seeds = positive_int("seeds", seeds)
    x = original.detach().unsqueeze(0) if original.dim() == 3 else original.detach()
    pooled, _ = max_pool_2x2(x)
    t = x if train is None else train.detach().to(x)
    trained_on = trained_on or ("the evaluated signal itself" if train is None else f"{t.shape[0]} signals")
    t_pooled, _ = max_pool_2x2(t)
    c = x.shape[1]
    rows = [{"design": "original", "label": f"{signal} itself (baseline)", "init": None,
             "energy": checkerboard_energy(x, 2, border), "energy_sd": None, "psnr_db": None, "seeds": None}]
    constant, outputs = {}, {}
    ones = torch.ones(1, 1, constant_size, constant_size, dtype=x.dtype)
    for d in DESIGNS:
        with torch.no_grad():
            constant[d.key] = make_upsampler(d.key, 1, "uniform").to(x)(ones)[0, 0]
            out = make_upsampler(d.key, c, "uniform").to(x)(pooled)
        outputs[(d.key, "uniform")] = out[0]
        rows.append({"design": d.key, "label": d.label.replace("\n", " "), "init": "uniform",
                     "energy": checkerboard_energy(out, 2, border), "energy_sd": None,
                     "psnr_db": psnr(out, x), "seeds": None})
        energies, psnrs = [], []
        for s in range(seeds):
            with torch.no_grad():
                out = make_upsampler(d.key, c, "random", seed=s).to(x)(pooled)
            if s == 0:
                outputs[(d.key, "random")] = out[0]
            energies.append(checkerboard_energy(out, 2, border))
            psnrs.append(psnr(out, x))
        rows.append({"design": d.key, "label": d.label.replace("\n", " "), "init": "random",
                     "energy": float(np.mean(energies)), "energy_sd": float(np.std(energies)),
                     "energy_min": float(np.min(energies)), "energy_max": float(np.max(energies)),
                     "psnr_db": float(np.mean(psnrs)), "seeds": seeds})
        layer = make_upsampler(d.key, c, "random", seed=0).to(x)
        fit_restorer(layer, t_pooled, t, steps=steps, lr=lr)
        with torch.no_grad():
            out = layer(pooled)
        outputs[(d.key, "trained")] = out[0]
        rows.append({"design": d.key, "label": d.label.replace("\n", " "), "init": "trained",
                     "energy": checkerboard_energy(out, 2, border), "energy_sd": None,
                     "psnr_db": psnr(out, x), "seeds": None})
    for r in rows:
        r.update(signal=signal, trained_on=trained_on if r["init"] == "trained" else None,
                 steps=steps if r["init"] == "trained" else None)
    return CheckerboardStudy(rows=rows, constant=constant, outputs=outputs, original=x[0], signal=signal,
                             trained_on=trained_on, steps=steps, border=border)


def _row_of(study: CheckerboardStudy, design: str, init: str) -> dict:
    return next(r for r in study.rows if r["design"] == design and r["init"] == init)


def _plot_energy_bars(ax, study: CheckerboardStudy) -> None:
    """The measure as a bar chart: each design's energy per initialisation, the original's as a line."""
    width = 0.26
    colors = {"uniform": "0.6", "random": "tab:orange", "trained": "tab:blue"}
    floor = 1e-7
    for k, init in enumerate(INITS):
        rs = [_row_of(study, d.key, init) for d in DESIGNS]
        ys = np.arange(len(DESIGNS)) + (k - 1) * width
        vals = [max(r["energy"], floor) for r in rs]
        label = f"random init (mean of {rs[0]['seeds']} seeds; line: range)" if init == "random" else (
            "uniform kernel" if init == "uniform" else f"trained from random init ({study.steps} steps)")
        ax.barh(ys, vals, width, color=colors[init], label=label)
        if init == "random":
            lo = [v - max(r["energy_min"], floor) for v, r in zip(vals, rs, strict=True)]
            hi = [max(r["energy_max"], floor) - v for v, r in zip(vals, rs, strict=True)]
            ax.errorbar(vals, ys, xerr=[lo, hi], fmt="none", ecolor="k", lw=0.8, capsize=2)
        for y, r in zip(ys, rs, strict=True):
            right = max(r["energy"], r.get("energy_max") or 0, floor)  # right of the bar and its range line
            ax.text(right * 1.4, y, f"{r['energy']:.2g}", va="center", fontsize=TICK_PT)
    ax.axvline(max(study.rows[0]["energy"], floor), color="k", ls="--", lw=0.8,
               label=f"the original photograph ({study.rows[0]['energy']:.2g})")
    ax.set_xscale("log")
    ax.set_xlim(floor, 10)
    ax.set_yticks(np.arange(len(DESIGNS)))
    ax.set_yticklabels([d.label for d in DESIGNS], fontsize=TICK_PT)
    ax.tick_params(labelsize=TICK_PT)
    ax.invert_yaxis()
    ax.set_xlabel("checkerboard energy: share of the non-constant energy in the stride-2\nperiodic pattern "
                  f"({study.border} px border left out; log scale)", fontsize=TEXT_PT)
    ax.legend(fontsize=TICK_PT, loc="upper center", bbox_to_anchor=(0.35, -0.3), ncol=2, frameon=False,
              borderaxespad=0, labelspacing=0.25, handlelength=1.2, columnspacing=1.0)
    ax.set_title(f"the measure on {study.signal} after 2x2 max-pooling", fontsize=TEXT_PT)


def plot_checkerboard(study: CheckerboardStudy, axes=None, *, zoom: int = 32):
    """Draw the overlap patterns, the uniform and the trained layers on the signal (zoomed), and the measure.

    Args:
        study: from ``checkerboard_study``.
        axes: a (3, 4) array of matplotlib axes: row 0 the uniform layers on a constant input, row 1 the
            uniform layers on the signal, row 2 the trained layers on the signal (one column per design);
            ``axes[0, 3]`` the original, ``axes[1, 3]`` the bar chart (``axes[2, 3]`` unused). None
            creates a figure.
        zoom: side in pixels of the zoomed window (at the signal's centre).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        # printed at a page's width: the 3x3 images above, the original beside the measure below
        fig = plt.figure(figsize=(PRINT_WIDTH, 9.8), layout="constrained")
        top_fig, bottom_fig = fig.subfigures(2, 1, height_ratios=[6.4, 3.3], hspace=0.01)
        axes = np.empty((3, 4), dtype=object)
        axes[:, :3] = top_fig.subplots(3, 3)
        axes[0, 3], axes[1, 3] = bottom_fig.subplots(1, 2, width_ratios=[1, 2.9])
    else:
        axes = np.asarray(axes, dtype=object)
        fig = axes[0, 0].figure
    h, w = study.original.shape[-2:]
    zoom = min(zoom, h, w)
    top, left = (h - zoom) // 2, (w - zoom) // 2
    box = (slice(top, top + zoom), slice(left, left + zoom))

    def rgb(t: torch.Tensor) -> np.ndarray:
        return t.double().clamp(0, 1).permute(1, 2, 0).numpy()[box]

    vmax = max(float(p.max()) for p in study.constant.values())
    for col, d in enumerate(DESIGNS):
        pattern = study.constant[d.key].numpy()
        inner = pattern[2:-2, 2:-2]
        ax = axes[0, col]
        ax.imshow(pattern, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        e_const = checkerboard_energy(study.constant[d.key], 2, 2)
        values = f"{inner.min():.3g}" if np.ptp(inner) == 0 else f"{inner.min():.3g} to {inner.max():.3g}"
        ax.set_title(f"{d.label}\ninterior {values}\nenergy {e_const:.2f}", fontsize=TEXT_PT)
        for r, init in ((1, "uniform"), (2, "trained")):
            row = _row_of(study, d.key, init)
            axes[r, col].imshow(rgb(study.outputs[(d.key, init)]), interpolation="nearest")
            axes[r, col].set_title(f"energy {row['energy']:.2g}, PSNR {row['psnr_db']:.1f} dB", fontsize=TEXT_PT)
        for r in range(3):
            axes[r, col].set_xticks([])
            axes[r, col].set_yticks([])
    axes[0, 0].set_ylabel(f"constant input,\nuniform kernel (gray\nscale 0 to {vmax:.2f})", fontsize=TEXT_PT)
    axes[1, 0].set_ylabel(f"{study.signal}, uniform\nkernel ({zoom}x{zoom} centre)", fontsize=TEXT_PT)
    axes[2, 0].set_ylabel(f"{study.signal}, trained from\nrandom init, {study.steps} steps", fontsize=TEXT_PT)
    ax = axes[0, 3]
    ax.imshow(rgb(study.original), interpolation="nearest")
    ax.set_title(f"original {study.signal},\nsame window: energy\n{study.rows[0]['energy']:.2g} (baseline)",
                 fontsize=TEXT_PT)
    ax.set_xticks([])
    ax.set_yticks([])
    _plot_energy_bars(axes[1, 3], study)
    title(fig, "Checkerboard artifacts: the uneven overlap of a transposed convolution whose kernel size is not "
               "divisible by its stride")
    footer(fig, f"No network weights: depthwise layers; trained on {study.trained_on} "
                f"(MSE, Adam, {study.steps} steps).")
    return fig
