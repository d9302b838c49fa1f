"""Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7).

A square of zero in the model's input space (the preprocessing's mean colour; black where the preprocessing
subtracts no mean) is slid over the image;
for every position of the occluder this records

(b) the summed activation of the layer-5 feature map that is strongest on the unoccluded image,
(d) the probability of the correct (given) or top class, and
(e) the most probable label,

and (c) is the deconv projection of that feature map's strongest unit on the unoccluded image.

"Strongest" is measured as the *response to the image*: per map, the largest rise of a unit above its value
on a blank input (the occluder's fill everywhere, i.e. the image wholly occluded). The raw maximum can pick
a map that its bias keeps high everywhere: with the offline MRI weights, relu5_3 map 155 reads about 9.5 at
every unit of a blank input and 10 on a photograph, is the raw maximum on every photograph, and changes by
under 1% under any occluder. The raw rule is ``channel="max"``. Panels (d)
and (e) need a classifier; without one they are left out and the caption says so. Where a classifier exists,
Captum's ``Occlusion`` gives the per-pixel version of (d) (the drop in probability averaged over the
windows covering a pixel); with the stride equal to the size it is exactly (d) expanded to pixels, which
the tests check. Occluder positions are those of Captum: top-left corners at 0, stride, 2 stride, ... while
the square fits inside the image. The paper gives neither size nor stride; both are options here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..checks import positive_int
from ..engine import Deconvnet, Projection, check_input
from ..models import Net
from ..plot import image_array, scale_for_display
from ._util import (
    PRINT_WIDTH,
    TEXT_PT,
    TICK_PT,
    blank,
    class_names,
    classifier_line,
    fill_rgb,
    fill_words,
    footer,
    forward_capture,
    label,
    last_relu,
    output_layer,
    renamed_show_progress,
    text_height,
    title,
    wrap_to_width,
)
from ._util import progress as progress_bar


def occluder_positions(hw: Sequence[int], size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Top rows and left columns of the occluder: 0, stride, ... while the square fits in the image."""
    h, w = int(hw[0]), int(hw[1])
    if not 1 <= size <= min(h, w):
        raise ValueError(f"occluder size {size} does not fit a {h}x{w} image. Hint: 1 <= size <= {min(h, w)}")
    stride = positive_int("occluder stride", stride)
    return np.arange(0, h - size + 1, stride), np.arange(0, w - size + 1, stride)


def occlude(x: torch.Tensor, top: int, left: int, size: int, fill: float = 0.0) -> torch.Tensor:
    """A copy of (B, 3, H, W) with the square [top, top + size) x [left, left + size) set to ``fill``."""
    out = x.clone()
    out[..., top : top + size, left : left + size] = fill
    return out


def default_occluder(side: int) -> tuple[int, int]:
    """Size about a fifth of the image side, stride half the size."""
    size = max(1, int(round(side / 5)))
    return size, max(1, size // 2)


@dataclass
class OcclusionResult:
    """The occlusion maps of a batch of images (grid: occluder positions, rows x cols).

    Attributes:
        layer: the layer whose strongest map is followed; channel: (B,) that map.
        channel_rule: how the map was chosen (``"response"``, ``"max"`` or ``"given"``).
        size, stride, tops, lefts: the occluder and its positions.
        activation: (B, rows, cols) summed activation of the map per occluder position.
        activation_clean: (B,) the same without occluder.
        activation_blank: (B,) the same on a blank input (the fill everywhere: the image wholly occluded).
        projection: the deconv projection of the map's strongest unit on the unoccluded image.
        probability: (B, rows, cols) probability of ``classes``; None without a classifier.
        probability_clean: (B,) without occluder; None without a classifier.
        top_label: (B, rows, cols) the most probable class per position; None without a classifier.
        classes, class_source, class_labels: the class followed (``"true"`` or ``"top"``) and its name.
        captum: (B, H, W) Captum ``Occlusion`` attribution of the probability (None if not computed).
        input, weights, classifier, names: as elsewhere.
    """

    layer: str
    channel: torch.Tensor
    channel_rule: str
    size: int
    stride: int
    tops: np.ndarray
    lefts: np.ndarray
    activation: np.ndarray
    activation_clean: np.ndarray
    activation_blank: np.ndarray
    projection: Projection
    probability: np.ndarray | None
    probability_clean: np.ndarray | None
    top_label: np.ndarray | None
    classes: list[int] | None
    class_source: str | None
    class_labels: list[str] | None
    captum: np.ndarray | None
    input: torch.Tensor
    weights: str
    classifier: str
    names: list[str]

    def summary(self) -> dict:
        """JSON-ready numbers: the maps and what they follow."""
        out = {"layer": self.layer, "channel": self.channel.tolist(), "channel_rule": self.channel_rule,
               "size": self.size, "stride": self.stride,
               "tops": self.tops.tolist(), "lefts": self.lefts.tolist(), "names": self.names,
               "activation": self.activation.tolist(), "activation_clean": self.activation_clean.tolist(),
               "activation_blank": self.activation_blank.tolist(),
               "change_percent": [[float(v) for v in (c.min(), c.max())] for c in self.change()],
               "classifier": self.classifier, "weights": self.weights}
        if self.probability is not None:
            out.update(classes=self.classes, class_source=self.class_source, class_labels=self.class_labels,
                       probability=self.probability.tolist(), probability_clean=self.probability_clean.tolist(),
                       top_label=self.top_label.tolist())
        return out

    def change(self) -> np.ndarray:
        """(B, rows, cols): the change of the map's summed activation per occluder position, in percent of
        the unoccluded value (what panel (b) shows)."""
        clean = np.abs(self.activation_clean)
        clean = np.where(clean > 0, clean, 1.0)[:, None, None]
        return 100 * (self.activation - self.activation_clean[:, None, None]) / clean


def strongest_response(net: Net, x: torch.Tensor, layer: str, fill: float = 0.0) -> torch.Tensor:
    """Per image, the map of ``layer`` with the strongest response to the image: (B,) channel indices.

    A map's response is the largest rise of one of its units above that unit's value on a blank input
    (``fill`` everywhere, the occluder's colour): what the image drives, not what a large bias gives every
    input. Ties go to the lower channel.
    """
    acts, _ = forward_capture(net, torch.cat([x, torch.full_like(x[:1], fill)]), [layer])
    a = acts[layer].double()
    rise = (a[:-1] - a[-1:]).flatten(2).amax(2)
    return rise.argmax(1)


@renamed_show_progress
def occlusion_maps(
    net: Net,
    x: torch.Tensor,
    *,
    layer: str | None = None,
    size: int | None = None,
    stride: int | None = None,
    channel: int | str = "response",
    true_classes: Sequence[int] | None = None,
    captum: bool = True,
    names: Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> OcclusionResult:
    """Slide a square occluder over the images and record the paper's maps (see the module docstring).

    Args:
        net: the model.
        x: (B, 3, H, W) model input.
        layer: the layer whose strongest map is followed (default: the last ReLU of the conv part,
            ``relu5_3`` / ``relu5``, the paper's layer 5).
        size, stride: the occluder (default ``default_occluder``).
        channel: the map to follow: ``"response"`` (per image, the map with the strongest response to the
            unoccluded image: ``strongest_response``), ``"max"`` (per image, the map holding the layer's
            largest activation, bias included) or an index.
        true_classes: the correct class per image; None follows the top class of the unoccluded image.
        captum: also compute Captum's per-pixel ``Occlusion`` of the probability (needs a classifier).
        names: a name per image.
        batch_size: occluded images per forward pass.
        progress: a tqdm bar over the forward passes.

    Returns:
        An ``OcclusionResult``.
    """
    x = check_input(x, net)
    b = x.shape[0]
    layer = layer if layer is not None else last_relu(net)
    net.check_layer(layer)
    if not net.is_spatial(layer):
        raise ValueError(f"layer '{layer}' has no spatial map. Hint: a conv, relu or pool layer such as "
                         f"{last_relu(net)}")
    d_size, d_stride = default_occluder(min(x.shape[-2:]))
    size = size if size is not None else d_size
    stride = stride if stride is not None else d_stride
    tops, lefts = occluder_positions(x.shape[-2:], size, stride)
    if true_classes is not None and len(true_classes) != b:
        raise ValueError(f"{len(true_classes)} true classes for {b} images. Hint: one class index per image")
    with_probs = output_layer(net) is not None

    if isinstance(channel, str) and channel not in ("response", "max"):
        raise ValueError(f"unknown channel rule '{channel}'. Hint: 'response', 'max' or a channel index")
    rule = channel if isinstance(channel, str) else "given"
    if channel == "response":
        channel = strongest_response(net, x, layer)
    proj = Deconvnet(net).project(x, layer, channel, "max")
    ch = proj.channel
    bi = torch.arange(b, device=x.device)
    clean, logits = forward_capture(net, x, [layer], logits=with_probs)
    activation_clean = clean[layer][bi, ch].flatten(1).sum(1).double().cpu().numpy()
    empty, _ = forward_capture(net, torch.zeros_like(x[:1]), [layer])
    activation_blank = empty[layer][0, ch].flatten(1).sum(1).double().cpu().numpy()
    classes = probs_clean = None
    if with_probs:
        classes = list(true_classes) if true_classes is not None else logits.argmax(1).tolist()
        probs_clean = torch.softmax(logits.double(), 1)[bi, torch.tensor(classes)].cpu().numpy()
    cls = torch.tensor(classes, device=x.device) if with_probs else None

    grid = [(i, j) for i in range(len(tops)) for j in range(len(lefts))]
    activation = np.zeros((b, len(tops), len(lefts)))
    probability = np.zeros((b, len(tops), len(lefts))) if with_probs else None
    top_label = np.zeros((b, len(tops), len(lefts)), dtype=np.int64) if with_probs else None
    per_pass = max(1, batch_size // b)
    chunks = [grid[s : s + per_pass] for s in range(0, len(grid), per_pass)]
    for chunk in progress_bar(chunks, enabled=progress, desc="occlusion"):
        xs = torch.cat([occlude(x, int(tops[i]), int(lefts[j]), size) for i, j in chunk])
        feats, out = forward_capture(net, xs, [layer], logits=with_probs)
        a = feats[layer]
        if with_probs:
            p = torch.softmax(out.double(), 1)
        for k, (i, j) in enumerate(chunk):
            rows = slice(k * b, (k + 1) * b)
            activation[:, i, j] = a[rows][bi, ch].flatten(1).sum(1).double().cpu().numpy()
            if with_probs:
                probability[:, i, j] = p[rows][bi, cls].cpu().numpy()
                top_label[:, i, j] = p[rows].argmax(1).cpu().numpy()

    captum_map = None
    if captum and with_probs:
        captum_map = captum_occlusion(net, x, classes, size, stride, batch_size=batch_size)
    labels = [label(net, c) for c in classes] if with_probs else None
    source = None if not with_probs else ("true" if true_classes is not None else "top")
    return OcclusionResult(layer, ch.cpu(), rule, size, stride, tops, lefts, activation, activation_clean,
                           activation_blank, proj, probability, probs_clean, top_label, classes, source, labels,
                           captum_map, x,
                           net.describe(), classifier_line(net),
                           list(names) if names is not None else [f"image {i}" for i in range(b)])


def captum_occlusion(net: Net, x: torch.Tensor, classes: Sequence[int], size: int, stride: int, *,
                     batch_size: int = 16) -> np.ndarray:
    """Captum's ``Occlusion`` of the class probability: (B, H, W), the probability drop averaged over the
    occluder windows covering each pixel (zero where no window reaches)."""
    from captum.attr import Occlusion

    if output_layer(net) is None:
        raise ValueError(f"{net.describe()} has no classifier. Hint: occlusion of a class needs weights with a "
                         "classifier")

    def prob(inp: torch.Tensor) -> torch.Tensor:
        return torch.softmax(net.model(inp), 1)

    with torch.no_grad():
        attr = Occlusion(prob).attribute(
            x.detach().clone(), sliding_window_shapes=(3, size, size), strides=(3, stride, stride),
            baselines=0.0, target=list(classes), perturbations_per_eval=max(1, batch_size // x.shape[0]),
        )
    return attr[:, 0].double().cpu().numpy()


def _extent(result: OcclusionResult) -> tuple[float, float, float, float]:
    """imshow extent that puts grid cell (i, j) at the occluder's centre, in input pixels."""
    half = result.size / 2
    s = result.stride
    return (result.lefts[0] + half - s / 2, result.lefts[-1] + half + s / 2,
            result.tops[-1] + half + s / 2, result.tops[0] + half - s / 2)


def _caption(result: OcclusionResult, net: Net, with_probs: bool) -> str:
    """The figure's footer: the occluder, what (b) follows, what the colours mean, the weights."""
    n_pos = f"{len(result.tops)}x{len(result.lefts)}"
    classes = (f"(d), (e): the {result.class_source} class of the unoccluded image; {result.classifier}."
               if with_probs else
               f"The class panels of Fig. 7 (P(class), most probable label) are left out: {result.classifier}.")
    chosen = {"response": "the map with the strongest response to the image (the largest rise of a unit above its "
                          "value on a blank input)",
              "max": "the map holding the layer's largest activation", "given": "the map given"}[result.channel_rule]
    return (f"Occluder: {result.size} px square of {fill_words(net)}, shown in (a) at one position; stride "
            f"{result.stride} px, {n_pos} positions. (b) follows, per image, {chosen}. "
            f"{'(b) and (d)' if with_probs else '(b)'}: the value with the occluder "
            f"at each position, drawn at its centre; (b) red: occluding raises the map's summed activation, "
            f"blue: lowers it. (c): the map's strongest unit on the unoccluded image, projected down by the deconvnet "
            f"(zero = gray). "
            f"{classes}\n{result.weights}")


def plot_occlusion(result: OcclusionResult, net: Net, *, axes=None, scaling: str = "percentile", max_labels: int = 5,
                   show_captum: bool = False):
    """The paper's Figure 7, one row per image: (a) input with the occluder, (b) summed activation of the
    followed map, (c) its projection and, where a classifier exists, (d) P(class) and (e) the most probable
    label. (b) is drawn as the change from the unoccluded value, in percent (a diverging map centred on
    zero shows where occluding lowers or raises the activation, and how much).

    Without a classifier (d) and (e) are left out (no placeholder panels) and the caption says so once.
    Captum's per-pixel ``Occlusion`` of the probability is a smoothed (d), drawn only with ``show_captum``.

    Args:
        result: from ``occlusion_maps``.
        net: the model (for display of the inputs and class names).
        axes: a (images, panels) array of axes; None creates a figure 7 inches wide.
        scaling: display scaling of the projection.
        max_labels: labels named in (e); the rest are "other".
        show_captum: add Captum's Occlusion as a last column (needs ``result.captum``).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    b = result.input.shape[0]
    with_probs = result.probability is not None
    captum = show_captum and result.captum is not None
    ncols = 3 + 2 * with_probs + captum
    caption = _caption(result, net, with_probs)
    if axes is None:
        # three panels fill a 7-inch row at about 2 inches; five or six share it at about 1.2 inches and
        # (e) needs room below for its legend
        legend_rows = (max(min(len(np.unique(t)), max_labels) + (len(np.unique(t)) > max_labels)
                           for t in result.top_label) if with_probs else 0)
        # the rows, then the title and the wrapped caption (of as many lines as it takes)
        foot = text_height(wrap_to_width(caption, PRINT_WIDTH - 0.2, TICK_PT), TICK_PT)
        height = (2.35 if ncols == 3 else 1.45 + 0.14 * legend_rows) * b + 0.45 + foot
        fig, axes = plt.subplots(b, ncols, figsize=(PRINT_WIDTH, height), squeeze=False, layout="constrained")
    else:
        axes = np.asarray(axes).reshape(b, ncols)
        fig = axes[0, 0].figure
    ext = _extent(result)
    changes = result.change()
    names = class_names(net)
    fs = TEXT_PT if ncols == 3 else TICK_PT
    for r in range(b):
        img = image_array(net.deprocess(result.input[r : r + 1])[0])
        ax = axes[r, 0]
        ax.imshow(img)
        mid_t, mid_l = result.tops[len(result.tops) // 2], result.lefts[len(result.lefts) // 2]
        ax.add_patch(Rectangle((mid_l - 0.5, mid_t - 0.5), result.size, result.size, fc=fill_rgb(net), ec="w", lw=0.8))
        ax.set_title(f"(a) {result.names[r]}", fontsize=fs)
        blank(ax)

        # a diverging scale centred on zero that spans the observed change: the colorbar reads in percent
        change = changes[r]
        top = float(np.abs(change).max()) or 1.0
        _heat(fig, axes[r, 1], change, ext, img.shape, "RdBu_r", -top, top)
        axes[r, 1].set_title(f"(b) {result.layer} map {int(result.channel[r])}: sum,\n"
                             f"% change (unoccluded {result.activation_clean[r]:.4g})", fontsize=fs)

        ax = axes[r, 2]
        p = result.projection
        ax.imshow(scale_for_display(net.preprocessing.to_rgb_order(p.projection[r : r + 1])[0], scaling))
        row, col = (int(v) for v in p.position[r])
        ax.set_title(f"(c) projection of map {int(p.channel[r])}\nunit ({row}, {col})", fontsize=fs)
        blank(ax)
        if not with_probs:
            continue

        _heat(fig, axes[r, 3], result.probability[r], ext, img.shape, "magma", vmin=0)
        axes[r, 3].set_title(f"(d) P({result.class_labels[r][:14]})\n(unoccluded {result.probability_clean[r]:.3g})",
                             fontsize=fs)

        _label_panel(axes[r, 4], result.top_label[r], ext, img.shape, names, max_labels, fs)

        if captum:
            ax = axes[r, 5]
            m = np.abs(result.captum[r]).max() or 1.0
            im = ax.imshow(result.captum[r], cmap="RdBu_r", vmin=-m, vmax=m)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=TICK_PT, pad=1)
            ax.set_title("Captum Occlusion\n(red: occluding hurts)", fontsize=fs)
            blank(ax)
    title(fig, "Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7): a square occluder slides over the image")
    footer(fig, caption)
    return fig


def _heat(fig, ax, values, ext, shape, cmap, vmin=None, vmax=None) -> None:
    """A heat map over the image's extent (``shape``: the image's) with its colorbar, as panels (b) and (d)."""
    im = ax.imshow(values, extent=ext, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(shape[0] - 0.5, -0.5)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cb.ax.tick_params(labelsize=TICK_PT, pad=1)
    cb.ax.yaxis.get_offset_text().set_fontsize(TICK_PT)
    blank(ax)


def _label_panel(ax, lab, ext, shape, names, max_labels: int, fs: float) -> None:
    """Panel (e): the most probable label at each occluder position, the ``max_labels`` most frequent named
    in a legend below, the rest "other"."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    uniq, counts = np.unique(lab, return_counts=True)
    order = uniq[np.argsort(-counts)]
    shown = list(order[:max_labels])
    index = np.array([shown.index(v) if v in shown else len(shown) for v in lab.ravel()]).reshape(lab.shape)
    cmap = plt.get_cmap("tab10", len(shown) + 1)
    ax.imshow(index, extent=ext, cmap=cmap, vmin=-0.5, vmax=len(shown) + 0.5, interpolation="nearest")
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(shape[0] - 0.5, -0.5)
    patches = [Patch(color=cmap(k), label=(names[v] if names else f"class {v}")[:18]) for k, v in enumerate(shown)]
    if len(order) > len(shown):
        patches.append(Patch(color=cmap(len(shown)), label="other"))
    ax.legend(handles=patches, fontsize=TICK_PT, loc="upper left", bbox_to_anchor=(-0.05, -0.02), frameon=False,
              handlelength=0.8, handletextpad=0.4, borderpad=0, labelspacing=0.2)
    ax.set_title("(e) most probable\nlabel", fontsize=fs)
    blank(ax)
