"""One signal max-pooled 2x2 and restored with every method, scored: ``compare_restorations``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fit import fit_restorer
from .metrics import correlation, maxima_kept, mse, psnr
from .restorers import METHODS, _as_batch, bilinear_transposed_conv, max_pool_2x2, resize_conv, restore_fixed


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
        raise ValueError(f"crop size {size} must be even and at most {min(h, w)}. "
                         f"Hint: e.g. {min(h, w) - min(h, w) % 2}")
    g = torch.Generator().manual_seed(seed)
    tops = torch.randint(0, (h - size) // 2 + 1, (x.shape[0], count), generator=g) * 2
    lefts = torch.randint(0, (w - size) // 2 + 1, (x.shape[0], count), generator=g) * 2
    return torch.stack([x[i, :, top : top + size, left : left + size] for i in range(x.shape[0])
                        for top, left in zip(tops[i].tolist(), lefts[i].tolist(), strict=True)])
