"""Receptive fields computed from the module stack (not a hand table).

The recurrence, from the input (r = 1, j = 1, P = 0), for a layer of kernel k, stride s, padding p and
dilation d (effective kernel d(k-1)+1): ``r_out = r + (k_eff - 1) j``, ``j_out = j s``, ``P_out = P + p j``.
Unit i of a layer covers input pixels ``[i j - P, i j - P + r - 1]`` along each axis.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..constants import DEFAULT_SIZE
from ..models import Net
from ..models.lock import exclusive
from .geometry import traced_field
from .measure import measure_boxes


@dataclass(frozen=True)
class ReceptiveField:
    """Per axis (rows, cols): size r, jump j (input pixels between neighbouring units), padding P."""

    size: tuple[int, int]
    jump: tuple[int, int]
    padding: tuple[int, int]

    def box(self, row: int, col: int, image_hw: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        """Input pixel box ``(top, left, bottom, right)`` of unit (row, col), bottom/right exclusive.

        With ``image_hw`` the box is clipped to the image.
        """
        top = row * self.jump[0] - self.padding[0]
        left = col * self.jump[1] - self.padding[1]
        bottom, right = top + self.size[0], left + self.size[1]
        if image_hw is not None:
            top, left = max(top, 0), max(left, 0)
            bottom, right = min(bottom, image_hw[0]), min(right, image_hw[1])
        return top, left, bottom, right


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def receptive_field(net: Net, layer: str, hw: tuple[int, int] | None = None) -> ReceptiveField:
    """The receptive field of a unit of ``layer`` (paper name), from the conv/pool modules below it.

    For a graph (ResNet, GoogLeNet, ...), where paths of different lengths meet, the field comes from the
    geometry of the ops its forward calls (``graph_receptive_field``), cached on the net.

    Args:
        hw: the input size, for a graph whose layer is reached through an adaptive pool (its windows depend
            on the input's size); without it such a layer is refused.

    Raises:
        ValueError: unknown layer, or a layer above the spatial part (fc layers see the whole image), or (graphs)
            a layer reached through upsampling, or through an adaptive pool without ``hw``.
    """
    if not net.is_chain:
        return graph_receptive_field(net, layer, hw)
    depth = net.depth(layer)
    r, j, p = [1, 1], [1, 1], [0, 0]
    for _, m in net.stack[: depth + 1]:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
            d = _pair(getattr(m, "dilation", 1))
            pad = m.padding
            if isinstance(pad, str):
                pad = (0, 0) if pad == "valid" else tuple(dd * (kk - 1) // 2 for dd, kk in zip(d, k, strict=True))
            pad = _pair(pad)
            for a in range(2):
                k_eff = d[a] * (k[a] - 1) + 1
                r[a] += (k_eff - 1) * j[a]
                p[a] += pad[a] * j[a]
                j[a] *= s[a]
        elif isinstance(m, (nn.Linear, nn.AdaptiveAvgPool2d, nn.Flatten)):
            raise ValueError(f"layer '{layer}' is past the spatial layers of {net.arch}: its units see the whole image")
    return ReceptiveField(tuple(r), tuple(j), tuple(p))


def graph_receptive_field(net: Net, layer: str, hw: tuple[int, int] | None = None) -> ReceptiveField:
    """The receptive field of a graph's layer from one traced forward (``engine.geometry``): the kernel,
    stride, padding and dilation of every conv and pool on every path to the layer, at the input size ``hw``
    (default: the size the net's shapes are probed at, 224 px). Exact; a forward of one zero image, stopped
    at the layer. Where the trace meets an op whose geometry it does not follow (a flip, a spatial slice),
    the field is measured (``measured_receptive_field``).

    Raises:
        ValueError: not a spatial layer; a layer reached through upsampling, or through an adaptive pool whose
            windows differ in size (at this input) or, without ``hw``, whatever their size.
    """
    name = net.resolve(layer)
    key = ("geometry", name, None if hw is None else tuple(int(v) for v in hw))
    if key in net._receptive:
        return net._receptive[key]
    if not net.is_spatial(name):
        raise ValueError(f"layer '{layer}' has no spatial map: its units see the whole image")
    size = key[2] or tuple(net._probe_hw or (DEFAULT_SIZE, DEFAULT_SIZE))
    field, _ = traced_field(net, net.layers[name], size)
    hint = ("Hint: windowed projections (Figure 2, the atlas, boxes) take the layers below it; whole-image "
            "projections (project, project_many) are exact")
    if isinstance(field, str) and "upsamples" in field or isinstance(field, str) and "more than one size" in field:
        raise ValueError(f"layer '{layer}' has no receptive field: {field}. {hint}")
    if isinstance(field, str):
        rf = measured_receptive_field(net, layer)
    else:
        if field[2] and hw is None:
            raise ValueError(f"the receptive field of layer '{layer}' depends on the input's size ({field[2]}): "
                             f"pass the input size, receptive_field(net, layer, hw). {hint}")
        rf = ReceptiveField(*(tuple(axis[i] for axis in field[:2]) for i in range(3)))
    net._receptive[key] = rf
    return rf


def measured_receptive_field(net: Net, layer: str, max_side: int = 2048) -> ReceptiveField:
    """The receptive field of a graph's layer, measured on its autograd graph.

    With every ReLU passing everything and every max-pool averaging its window (``engine.graph``), the
    support of a unit's gradient is the set of pixels that can reach it. The unit at the map's centre and
    its diagonal neighbour are measured (one backward for both) along each axis on a strip 128 px across
    whose length doubles (from 256 px) until the field no longer touches its ends, up to ``max_side``; the
    size, the jump between neighbours and the padding follow. Cached on the net per layer: the geometry
    of convolutions and pools does not depend on the input's size.

    Raises:
        ValueError: not a spatial layer, or a field wider than ``max_side`` px.
    """
    name = net.resolve(layer)
    if name in net._receptive:
        return net._receptive[name]
    if not net.is_spatial(name):
        raise ValueError(f"layer '{layer}' has no spatial map: its units see the whole image")
    module = net.layers[name]
    side = 256
    while True:
        # the field along the rows does not depend on the width (kernels and windows are rectangles), so
        # each axis is measured on a strip, long along it and 128 px across: cheaper than a square
        across = min(side, 128)
        with exclusive(net.model) as model:
            (rbox, rnxt), (h, _) = measure_boxes(model, module, (side, across), channels=net.in_channels or 3,
                                                 device=net.device, dtype=net.dtype)
            (cbox, cnxt), (_, w) = measure_boxes(model, module, (across, side), channels=net.in_channels or 3,
                                                 device=net.device, dtype=net.dtype)
        if min(h, w) < 2:  # adaptive pooling: one unit whatever the input, which sees all of it
            raise ValueError(f"layer '{layer}' has a 1x1 map: its unit sees the whole image")
        unit = ((h - 1) // 2, (w - 1) // 2)
        box = (rbox[0], cbox[1], rbox[2], cbox[3])
        nxt = (rnxt[0], cnxt[1], rnxt[2], cnxt[3])
        inside = box[0] > 0 and box[1] > 0 and box[2] < side and box[3] < side and nxt[2] < side and nxt[3] < side
        if inside:
            break
        if side >= max_side:
            raise ValueError(f"the receptive field of '{layer}' is wider than {max_side} px")
        side *= 2
    size = (box[2] - box[0], box[3] - box[1])
    jump = (nxt[0] - box[0], nxt[1] - box[1])
    padding = (unit[0] * jump[0] - box[0], unit[1] * jump[1] - box[1])
    rf = ReceptiveField(size, jump, padding)
    net._receptive[name] = rf
    return rf
