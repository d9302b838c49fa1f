"""The image parameterisation of Olah et al. (2017, "Feature Visualization", Distill; lucid and lucent):
a learned Fourier spectrum with a 1/f scaling, colours decorrelated by the square root of natural images'
colour correlation, and a sigmoid to [0, 1].

Optimising pixels directly lets the gradient's high frequencies win (the images become noise that excites the
unit); optimising a spectrum scaled by 1/f starts every frequency with the energy it has in natural images, and
decorrelated colours let a step change luminance and hue separately. See ``docs/how-to/synthesis.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: the square root (U sqrt(S) of the SVD) of ImageNet's RGB colour correlation, as lucid ships it
#: (``lucid/optvis/param/color.py``, ``color_correlation_svd_sqrt``): rows R, G, B
COLOR_CORRELATION_SVD_SQRT = ((0.26, 0.09, 0.02),
                              (0.27, 0.00, -0.05),
                              (0.27, -0.09, 0.03))
#: lucid's divisor of the irfft's output ("increasing this seems to reduce saturation")
FFT_MAGIC = 4.0
#: the standard deviation of the initial spectrum
INIT_SD = 0.01


def color_matrix(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The colour-decorrelation matrix: ``COLOR_CORRELATION_SVD_SQRT`` divided by its largest column norm."""
    m = torch.tensor(COLOR_CORRELATION_SVD_SQRT, dtype=torch.float64)
    m = m / m.norm(dim=0).max()
    return m.to(dtype=dtype, device=device)


def decorrelate_colors(t: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) decorrelated colour -> RGB (before the sigmoid): every pixel's 3-vector times the matrix."""
    m = color_matrix(t.dtype, t.device)
    return torch.einsum("ij,bjhw->bihw", m, t)


def rfft2d_freqs(h: int, w: int) -> torch.Tensor:
    """(h, w // 2 + 1) spatial frequencies (cycles per pixel) of ``torch.fft.rfft2``'s output for an h x w image.

    An odd width keeps one more column (cut off after the inverse transform), as lucid does.
    """
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[: w // 2 + (2 if w % 2 else 1)]
    return torch.sqrt(fx * fx + fy * fy)


def spectrum_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """The 1/f scaling of each frequency: ``1 / max(f, 1 / max(h, w)) ** decay_power`` (the constant term gets
    the scale of the lowest frequency)."""
    return 1.0 / torch.clamp(rfft2d_freqs(h, w), min=1.0 / max(h, w)) ** decay_power


@dataclass
class FourierImage:
    """A batch of images parameterised by their spectra (the learned tensor is ``spectrum``).

    ``images()`` is ``sigmoid(decorrelate(irfft2(scale * spectrum, ortho) / 4))`` (RGB in (0, 1)); with
    ``decorrelate=False`` the colour step is left out, with ``fft=False`` the learned tensor is the pixels
    (before the sigmoid) themselves.
    """

    spectrum: torch.Tensor
    size: tuple[int, int]
    decay_power: float = 1.0
    decorrelate: bool = True
    fft: bool = True

    @classmethod
    def random(cls, n: int, size: int | tuple[int, int], *, generators: list[torch.Generator], sd: float = INIT_SD,
               decay_power: float = 1.0, decorrelate: bool = True, fft: bool = True,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> FourierImage:
        """``n`` images, image ``i`` initialised from ``generators[i]`` (normal, standard deviation ``sd``), so
        that an image does not depend on which others share its batch."""
        h, w = (size, size) if isinstance(size, int) else size
        shape = (3, *rfft2d_freqs(h, w).shape, 2) if fft else (3, h, w)
        init = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) * sd for g in generators[:n]])
        return cls(init.to(dtype=dtype, device=device).requires_grad_(True), (h, w), decay_power, decorrelate, fft)

    def raw(self) -> torch.Tensor:
        """(B, 3, H, W) before the colour step and the sigmoid."""
        h, w = self.size
        if not self.fft:
            return self.spectrum
        scale = spectrum_scale(h, w, self.decay_power).to(self.spectrum)[None, None, :, :, None]
        spectrum = torch.view_as_complex((scale * self.spectrum).contiguous())
        return torch.fft.irfftn(spectrum, s=(h, w), dim=(-2, -1), norm="ortho")[..., :h, :w] / FFT_MAGIC

    def images(self) -> torch.Tensor:
        """(B, 3, H, W) RGB in (0, 1)."""
        t = self.raw()
        return torch.sigmoid(decorrelate_colors(t) if self.decorrelate else t)

    def describe(self) -> str:
        """The parameterisation in words (recorded beside every image)."""
        parts = []
        if self.fft:
            parts.append(f"Fourier spectrum scaled by 1/max(f, 1/{max(self.size)})^{self.decay_power:g}, "
                         f"initial sd {INIT_SD}")
        else:
            parts.append("pixels")
        if self.decorrelate:
            parts.append("ImageNet colour decorrelation (lucid's correlation square root)")
        parts.append("sigmoid to [0, 1]")
        return "; ".join(parts)

