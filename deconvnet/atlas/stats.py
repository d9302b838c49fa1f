"""Per-channel activation statistics over a dataset: the histograms of the atlas's channel pages.

The scan (``deconvnet.scan``) keeps only each channel's top k; a histogram needs every activation. A
histogram with fixed bins needs their range before the data is seen, and the scan supplies it: its top-1
value is the channel's maximum over the dataset. So the statistics are a second pass over the dataset,
after the scan, reducing each map inside the forward (as the scan does: no copies of large maps).

Binning (documented, so that a reader can recompute it): with ``top`` the channel's maximum and ``bins``
bins, a positive value ``v`` falls in bin ``min(floor(v / top * bins), bins - 1)`` (float64), i.e. bin
``i`` covers ``(i top / bins, (i + 1) top / bins]`` up to rounding; values ``<= 0`` are counted apart.
A channel whose maximum is not positive gets ``top = 1`` (all of its values are counted as ``<= 0``).

Sums that do not depend on the order: ``sum`` and ``sum_sq`` add each image's float64 sums exactly (in
integers, ``ExactSum``) and round once at the end. So the result is the same whatever the batches, the
interruptions or the number of processes: under torch.distributed each rank passes over its share
(``deconvnet.distributed.batch_shard``) and the ranks' counts and sums add up to the one-process result, bit for bit.

The loop, its checkpoint (resumed, refused naming what changed, saved on Ctrl-C and SIGTERM) and the shares
are the one resumable pass of ``deconvnet.passes``, the scan's; the statistics are its reducer
(``HistogramReducer``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from .. import distributed
from ..checks import digest_bytes, fingerprint, positive_int
from ..io import torch_save
from ..models import Net
from ..passes import Checkpoint, run_pass

STATS_FORMAT = 1
CHECKPOINT_FORMAT = 2  # 2: exact sums (1 summed floats batch by batch)


class ExactSum:
    """Exact sums of float64 values per channel, in int64 limbs: the order of the additions does not matter.

    A finite float64 ``x`` is ``M * 2**(e - 53)`` with an integer ``|M| < 2**53`` (``torch.frexp``); ``M`` is
    added, in three 24-bit pieces, to 32-bit limbs of one fixed-point number per channel whose lowest bit
    is ``2**-OFFSET`` (below the smallest subnormal). Each limb takes at most ``2**32`` per addition, so
    ``2**31`` additions per limb cannot overflow int64. ``value()`` rounds the exact sum once (Python's
    integer division is correctly rounded). Non-finite values are summed apart (inf and NaN propagate
    whatever the order).
    """

    OFFSET = 1126  # 1074 (smallest subnormal) + 52: every finite float64 is an integer times 2**-OFFSET
    LIMBS = 70  # 70 * 32 bits > OFFSET + 1024 + room for the carries

    @staticmethod
    def zeros(channels: int) -> dict[str, torch.Tensor]:
        return {"limbs": torch.zeros(channels, ExactSum.LIMBS, dtype=torch.long),
                "nonfinite": torch.zeros(channels, dtype=torch.float64)}

    @staticmethod
    def add(acc: dict[str, torch.Tensor], x: torch.Tensor) -> None:
        """Add every row of ``x`` (n, C) float64 to the channels' sums, in place."""
        x = x.detach().to("cpu", torch.float64)
        finite = torch.isfinite(x)
        acc["nonfinite"] += torch.where(finite, torch.zeros_like(x), x).sum(0)
        x = torch.where(finite, x, torch.zeros_like(x))
        mantissa, exponent = torch.frexp(x)
        m = (mantissa * 2.0**53).long()  # exact: |mantissa| < 1, 53 bits
        sign, m = m.sign(), m.abs()
        bit = exponent.long() - 53 + ExactSum.OFFSET  # position of m's lowest bit
        c = x.shape[1]
        rows = torch.arange(c).expand_as(m) * ExactSum.LIMBS
        flat = acc["limbs"].view(-1)
        for piece in range(3):
            part = (m >> (24 * piece)) & 0xFFFFFF
            at = bit + 24 * piece
            shifted = part << (at % 32)  # < 2**55
            limb = at // 32
            flat.index_add_(0, (rows + limb).flatten(), (sign * (shifted & 0xFFFFFFFF)).flatten())
            flat.index_add_(0, (rows + limb + 1).flatten(), (sign * (shifted >> 32)).flatten())

    @staticmethod
    def merge(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"limbs": a["limbs"] + b["limbs"], "nonfinite": a["nonfinite"] + b["nonfinite"]}

    @staticmethod
    def value(acc: dict[str, torch.Tensor]) -> torch.Tensor:
        """(C,) float64: each channel's exact sum, correctly rounded."""
        out = []
        for limbs, bad in zip(acc["limbs"].tolist(), acc["nonfinite"].tolist(), strict=True):
            total = sum(v << (32 * j) for j, v in enumerate(limbs))
            try:
                exact = total / (1 << ExactSum.OFFSET)
            except OverflowError:
                exact = float("inf") if total > 0 else float("-inf")
            out.append(exact + bad)
        return torch.tensor(out, dtype=torch.float64)


@dataclass
class ChannelStats:
    """Activation statistics of every channel of one layer over a dataset.

    Attributes:
        layer: the layer (paper name).
        bins: histogram bins over ``(0, top]``.
        top: (C,) float64 upper end of each channel's bins (its maximum over the dataset; 1 if not positive).
        units: (C, bins) int64 histogram of every unit's activation (all positions of all images).
        units_nonpos: (C,) int64 units with activation ``<= 0``.
        n_units: units per channel (images x map height x map width).
        image_max: (C, bins) int64 histogram of each image's strongest unit.
        image_nonpos: (C,) int64 images whose strongest unit is ``<= 0``.
        n_images: images counted.
        sum, sum_sq: (C,) float64 sums of all activations and of their squares (mean, standard deviation).
        min: (C,) float64 the smallest activation.
    """

    layer: str
    bins: int
    top: torch.Tensor
    units: torch.Tensor
    units_nonpos: torch.Tensor
    n_units: int
    image_max: torch.Tensor
    image_nonpos: torch.Tensor
    n_images: int
    sum: torch.Tensor
    sum_sq: torch.Tensor
    min: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """(C,) mean activation over all units."""
        return self.sum / max(self.n_units, 1)

    @property
    def std(self) -> torch.Tensor:
        """(C,) standard deviation of the activations over all units (population)."""
        return (self.sum_sq / max(self.n_units, 1) - self.mean**2).clamp(min=0).sqrt()

    def edges(self, channel: int) -> list[float]:
        """The ``bins + 1`` bin edges of one channel, ``0 ... top``."""
        top = float(self.top[channel])
        return [top * i / self.bins for i in range(self.bins + 1)]

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically."""
        torch_save({"format": STATS_FORMAT, **self.__dict__}, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ChannelStats:
        """Load saved statistics.

        Raises:
            ValueError: missing, unreadable or not statistics of this format.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"cannot read channel statistics '{path}' ({type(err).__name__}). Hint: delete it and "
                             "rerun") from err
        if not isinstance(state, dict) or state.pop("format", None) != STATS_FORMAT:
            raise ValueError(f"'{path}' is not deconvnet channel statistics (format {STATS_FORMAT}). "
                             "Hint: delete it and rerun")
        return cls(**state)


def bin_index(v: torch.Tensor, top: torch.Tensor, bins: int) -> torch.Tensor:
    """Bins of positive float64 values ``v`` (..., C, n) for per-channel maxima ``top`` (C,); see the module."""
    return (v / top[:, None] * bins).floor_().clamp_(0, bins - 1).long()


def _histogram(v: torch.Tensor, top: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel of float64 ``v`` (..., C, n): counts (C, bins) of the positive values, and the count <= 0."""
    c = v.shape[-2]
    # values <= 0 go to an extra bin ``bins``: one bincount, no boolean indexing (which is slow)
    idx = torch.where(v > 0, bin_index(v, top, bins), bins)
    idx += torch.arange(c, device=v.device)[:, None] * (bins + 1)
    counts = torch.bincount(idx.flatten(), minlength=c * (bins + 1)).view(c, bins + 1)
    return counts[:, :bins], counts[:, bins]


#: most float64 values converted at once (bounds the memory of the reduction: 8 bytes each)
_CHUNK = 1 << 22


def _reduce(t: torch.Tensor, top: torch.Tensor, bins: int) -> dict[str, torch.Tensor]:
    """One batch's statistics of a (B, C, h, w) map, a few images at a time (float64 copies stay small)."""
    b, c = t.shape[:2]
    out = {
        "units": torch.zeros(c, bins, dtype=torch.long), "units_nonpos": torch.zeros(c, dtype=torch.long),
        "sum": ExactSum.zeros(c), "sum_sq": ExactSum.zeros(c),
        "min": torch.full((c,), float("inf"), dtype=torch.float64),
    }
    top = top.to(t.device)
    step = max(1, _CHUNK // max(t[0].numel(), 1))
    maxima = []
    for s in range(0, b, step):
        v = t[s : s + step].flatten(2).double()  # (b', C, hw)
        counts, nonpos = _histogram(v, top, bins)
        out["units"] += counts.cpu()
        out["units_nonpos"] += nonpos.cpu()
        # each image's own sums (the same whatever batch it is in), added exactly
        ExactSum.add(out["sum"], v.sum(2))
        ExactSum.add(out["sum_sq"], v.square().sum(2))
        out["min"] = torch.minimum(out["min"], v.amin((0, 2)).cpu())
        maxima.append(v.amax(2))
    counts, nonpos = _histogram(torch.cat(maxima).T, top, bins)
    out["image_max"], out["image_nonpos"] = counts.cpu(), nonpos.cpu()
    out["hw"] = torch.tensor(t.shape[-2:])
    return out


def _add(old: dict | None, part: dict | None) -> dict | None:
    """Two partial statistics of one layer added (either may be None: no image yet)."""
    if old is None or part is None:
        return part if old is None else old
    return {
        "units": old["units"] + part["units"], "units_nonpos": old["units_nonpos"] + part["units_nonpos"],
        "sum": ExactSum.merge(old["sum"], part["sum"]), "sum_sq": ExactSum.merge(old["sum_sq"], part["sum_sq"]),
        "min": torch.minimum(old["min"], part["min"]),
        "image_max": old["image_max"] + part["image_max"], "image_nonpos": old["image_nonpos"] + part["image_nonpos"],
        "hw": part["hw"],
    }


class HistogramReducer:
    """The statistics as a ``passes.Reducer``: per layer, the partial statistics of the items so far
    (None before the first readable one), added exactly whatever the batches and the ranks."""

    what, doing = "statistics", "counting"

    def __init__(self, tops: dict[str, torch.Tensor], bins: int) -> None:
        self.tops, self.bins = tops, bins

    def empty(self) -> dict[str, Any]:
        return {layer: None for layer in self.tops}

    def reduce(self, layer: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return _reduce(t, self.tops[layer], self.bins)

    def add(self, state: dict[str, Any], parts: dict[str, Any], index: torch.Tensor) -> dict[str, Any]:
        return {layer: _add(state[layer], parts[layer]) for layer in self.tops}

    def malformed(self, state: Any) -> str | None:
        if not isinstance(state, dict) or set(state) != set(self.tops):
            return f"the state does not hold the layers {', '.join(self.tops)}"
        if not all(part is None or isinstance(part, dict) for part in state.values()):
            return "a layer's statistics are not a dict"
        return None

    def merge(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        merged = self.empty()
        for part in states:
            merged = {layer: _add(merged[layer], part[layer]) for layer in self.tops}
        return merged


def channel_stats(
    net: Net,
    dataset: Dataset,
    tops: dict[str, torch.Tensor],
    *,
    bins: int = 32,
    batch_size: int = 16,
    num_workers: int = 0,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 20,
    progress: bool = True,
) -> dict[str, ChannelStats]:
    """Histograms and moments of every channel of some layers over ``dataset``: one forward per batch.

    Args:
        net: the model.
        dataset: items ``(x, index)`` as for ``scan_top_k``.
        tops: layer -> (C,) each channel's maximum over the dataset (``TopK.values[layer][:, 0]``): the
            upper end of its bins. Values that are not positive are replaced by 1.
        bins: histogram bins over ``(0, top]``.
        batch_size, num_workers: of the ``DataLoader``.
        checkpoint: file written atomically every ``checkpoint_every`` batches and on an interrupt; a
            rerun with the same arguments resumes from it, to the same result. Under torch.distributed,
            one per rank (``deconvnet.distributed.rank_path``).
        progress: show a tqdm progress bar.

    Returns:
        layer -> ``ChannelStats``; under torch.distributed every rank passes over its share and returns
        the merged statistics, equal to one process's.
    """
    layers = list(tops)
    bins = positive_int("bins", bins)
    checkpoint_every = positive_int("checkpoint_every", checkpoint_every, hint="batches between checkpoints, e.g. 20")
    tops = _checked_tops(net, tops)
    # the batch size is part of it: a resumed pass then sums the same batches in the same order (bitwise)
    rank, world = distributed.world()
    args = {
        "format": CHECKPOINT_FORMAT, "shard": None if world == 1 else [rank, world],
        "model": net.provenance, "layers": layers, "bins": bins, "n": len(dataset), "batch_size": batch_size,
        "tops": {layer: digest_bytes(t.numpy().tobytes()) for layer, t in tops.items()},
    }
    passed = run_pass(net, dataset, layers, HistogramReducer(tops, bins),
                      Checkpoint(checkpoint, fingerprint(args), args, checkpoint_every),
                      batch_size=batch_size, num_workers=num_workers, progress=progress)
    return {layer: _finish(layer, passed.state[layer], net.channels[layer], tops[layer], bins, passed.n_images)
            for layer in layers}


def _checked_tops(net: Net, tops: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tops`` in float64 with the values that are not positive replaced by 1; one value per channel or refused."""
    tops = {layer: torch.where(t.double() > 0, t.double(), torch.ones_like(t.double())) for layer, t in tops.items()}
    for layer, t in tops.items():
        if t.shape != (net.channels[layer],):
            raise ValueError(f"tops['{layer}'] must hold one value per channel ({net.channels[layer]}), "
                             f"got {tuple(t.shape)}")
    return tops


def _finish(layer: str, s: dict[str, Any] | None, c: int, top: torch.Tensor, bins: int, n_images: int) -> ChannelStats:
    """One layer's merged state as ``ChannelStats`` (``s`` is None when no image could be read)."""
    if s is None:  # no readable image at all
        s = {"units": torch.zeros(c, bins, dtype=torch.long), "units_nonpos": torch.zeros(c, dtype=torch.long),
             "sum": ExactSum.zeros(c), "sum_sq": ExactSum.zeros(c),
             "min": torch.full((c,), float("inf"), dtype=torch.float64),
             "image_max": torch.zeros(c, bins, dtype=torch.long), "image_nonpos": torch.zeros(c, dtype=torch.long),
             "hw": torch.tensor([0, 0])}
    h, w = (int(v) for v in s["hw"])
    return ChannelStats(
        layer=layer, bins=bins, top=top, units=s["units"], units_nonpos=s["units_nonpos"],
        n_units=n_images * h * w, image_max=s["image_max"], image_nonpos=s["image_nonpos"], n_images=n_images,
        sum=ExactSum.value(s["sum"]), sum_sq=ExactSum.value(s["sum_sq"]), min=s["min"],
    )
