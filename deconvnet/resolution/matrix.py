"""The convolution as a matrix, and what its transpose does.

A convolution is linear, so for a fixed input size it is a matrix ``C`` with ``C vec(x) = vec(conv2d(x))``
(``vec`` flattens a (C, H, W) array row-major, as ``reshape(-1)`` does). The transposed convolution is
``C^T``: ``C^T vec(y) = vec(conv_transpose2d(y))``. It restores the *size* of ``x``, not its values:
``C^T C`` has the rank of ``C`` (4 for the 4x4 input and 3x3 kernel below, out of 16), and each output
value goes back to as many input positions as the kernel has taps ("one value to many").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..checks import positive_int
from ..plot import PRINT_WIDTH, TEXT_PT, TICK_PT, footer, title
from .sizes import conv_output_size

IntPair = int | tuple[int, int]

#: Largest dense matrix ``conv_matrix`` builds: it is for small examples and tests.
MAX_MATRIX_ENTRIES = 50_000_000


def _pair(name: str, v: IntPair) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(a, int) and not isinstance(a, bool) for a in v):
        return (int(v[0]), int(v[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")


def conv_matrix(
    weight: torch.Tensor,
    input_shape: Sequence[int],
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> torch.Tensor:
    """The dense matrix ``C`` of a convolution: ``C @ x.reshape(-1) == conv2d(x).reshape(-1)``.

    Built from the index arithmetic of the definition (``y[o, i, j] = sum_{c,u,v} w[o, c, u, v]
    x[c, i s - p + u d, j s - p + v d]``, zero outside the input), not by calling ``conv2d``, so that it
    can serve as a reference for it. Its transpose is the transposed convolution.

    Args:
        weight: (C_out, C_in / groups, kH, kW) as ``Conv2d.weight``, or (kH, kW) for one channel in and out.
        input_shape: (H, W), or (C_in, H, W).
        stride, padding, dilation: ints or (rows, cols) pairs, as for ``torch.nn.functional.conv2d``.
        groups: as ``Conv2d.groups``: output channel ``o`` reads only the input channels of its group.

    Returns:
        (C_out * H_out * W_out, C_in * H * W) tensor with ``weight``'s dtype and device. For a 4x4 input,
        a 3x3 kernel, no padding and stride 1 it is 4 x 16.

    Raises:
        ValueError: shapes that do not fit, a configuration PyTorch rejects, or a matrix too large to
            hold densely.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() not in (2, 4):
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a (C_out, C_in, kH, kW) or (kH, kW) tensor, got {got}. Hint: conv.weight")
    w = weight if weight.dim() == 4 else weight[None, None]
    c_out, c_in_group, kh, kw = w.shape
    groups = positive_int("groups", groups, hint=f"a divisor of the {c_out} output channels")
    if c_out % groups:
        raise ValueError(f"groups={groups!r} must be a positive integer dividing the {c_out} output channels")
    c_in = c_in_group * groups
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        shape = (c_in,) + shape
    if len(shape) != 3 or shape[0] != c_in:
        raise ValueError(
            f"input_shape {tuple(input_shape)} does not fit a weight with {c_in} input channels. "
            f"Hint: pass (H, W) or ({c_in}, H, W)"
        )
    c, h, wd = shape
    (sh, sw), (ph, pw), (dh, dw) = _pair("stride", stride), _pair("padding", padding), _pair("dilation", dilation)
    ho = conv_output_size(h, kh, sh, ph, dh)
    wo = conv_output_size(wd, kw, sw, pw, dw)
    rows_n, cols_n = c_out * ho * wo, c * h * wd
    if rows_n * cols_n > MAX_MATRIX_ENTRIES:
        raise ValueError(
            f"the matrix would be {rows_n} x {cols_n}. Hint: conv_matrix is for small examples; "
            "use conv2d / conv_transpose2d for real sizes"
        )
    dev = w.device
    o, i, j, ci, u, v = torch.meshgrid(
        *(torch.arange(n, device=dev) for n in (c_out, ho, wo, c_in_group, kh, kw)), indexing="ij"
    )
    r = i * sh - ph + u * dh  # input row read by output (i, j) through tap (u, v)
    q = j * sw - pw + v * dw
    inside = (r >= 0) & (r < h) & (q >= 0) & (q < wd)
    out_index = (o * ho + i) * wo + j
    channel = (o // (c_out // groups)) * c_in_group + ci  # the input channel of tap ci in o's group
    in_index = (channel * h + r) * wd + q
    mat = torch.zeros(rows_n, cols_n, dtype=w.dtype, device=dev)
    mat.index_put_((out_index[inside], in_index[inside]), w[o, ci, u, v][inside], accumulate=True)
    return mat


@dataclass
class ConvMatrixExample:
    """The 4x4 input / 3x3 kernel example, worked through.

    Attributes:
        kernel: (3, 3) the kernel.
        x: (4, 4) the input.
        matrix: (4, 16) ``C``.
        y: (2, 2) ``conv2d(x)``, i.e. ``C vec(x)`` reshaped.
        back: (4, 4) ``C^T C vec(x)`` reshaped: the transposed convolution of ``y``.
        relative_error: ``||C^T C x - x|| / ||x||``.
        best_scaled_error: the same after the best scalar rescaling of ``C^T C x`` (so that the error
            is not just the kernel's gain).
        rank: rank of ``C^T C`` (16 x 16).
        unit: (row, col) of the output unit whose one-hot goes through ``C^T``.
        spread: (4, 4) ``C^T e_unit``: one output value sent back to every input it was computed from.
        fan_out: (4, 4) how many outputs each input pixel feeds (nonzeros per column of ``C``).
    """

    kernel: torch.Tensor
    x: torch.Tensor
    matrix: torch.Tensor
    y: torch.Tensor
    back: torch.Tensor
    relative_error: float
    best_scaled_error: float
    rank: int
    unit: tuple[int, int]
    spread: torch.Tensor
    fan_out: torch.Tensor


def conv_matrix_example(
    kernel: torch.Tensor | None = None, x: torch.Tensor | None = None, unit: tuple[int, int] = (0, 0)
) -> ConvMatrixExample:
    """Work the 4x4 input / 3x3 kernel example (no padding, stride 1) through ``C`` and ``C^T``.

    Args:
        kernel: (3, 3); default the integers 1..9 row by row, so that ``C`` reads easily.
        x: (4, 4); default a fixed pattern of small integers.
        unit: the output unit (row, col) whose one-hot is sent back through ``C^T``.

    Returns:
        A ``ConvMatrixExample``.
    """
    k = torch.arange(1, 10, dtype=torch.float64).view(3, 3) if kernel is None else kernel.double()
    if k.shape != (3, 3):
        raise ValueError(f"kernel must be 3x3, got {tuple(k.shape)}. Hint: the example is a 3x3 kernel over 4x4")
    default_x = [[3, 0, 1, 2], [1, 4, 2, 0], [0, 2, 5, 1], [2, 1, 0, 3]]
    xx = torch.tensor(default_x, dtype=torch.float64) if x is None else x.double()
    if xx.shape != (4, 4):
        raise ValueError(f"x must be 4x4, got {tuple(xx.shape)}")
    if not (0 <= unit[0] < 2 and 0 <= unit[1] < 2):
        raise ValueError(f"unit {unit} is outside the 2x2 output. Hint: (0, 0) .. (1, 1)")
    c = conv_matrix(k, (4, 4))
    v = xx.reshape(-1)
    y = c @ v
    back = c.T @ y
    err = float((back - v).norm() / v.norm())
    alpha = float(back @ v / (back @ back))  # least-squares scale
    best = float((alpha * back - v).norm() / v.norm())
    one_hot = torch.zeros(4, dtype=torch.float64)
    one_hot[unit[0] * 2 + unit[1]] = 1.0
    return ConvMatrixExample(
        kernel=k,
        x=xx,
        matrix=c,
        y=y.view(2, 2),
        back=back.view(4, 4),
        relative_error=err,
        best_scaled_error=best,
        rank=int(torch.linalg.matrix_rank(c.T @ c)),
        unit=tuple(unit),
        spread=(c.T @ one_hot).view(4, 4),
        fan_out=(c != 0).sum(0).view(4, 4).to(torch.float64),
    )


def _heatmap(ax, a: torch.Tensor, title: str, *, cmap: str = "Blues", fmt: str = "{:g}", labels: bool = True,
             fontsize: float = TEXT_PT, tick_every: int = 1) -> None:
    arr = a.detach().cpu().double().numpy()
    lim = float(abs(arr).max()) or 1.0
    ax.imshow(arr, cmap=cmap, vmin=-lim if cmap in ("RdBu_r", "coolwarm") else 0, vmax=lim, interpolation="nearest")
    if labels:
        for (r, c), val in np.ndenumerate(arr):
            strong = abs(val) > 0.6 * lim
            ax.text(c, r, fmt.format(val), ha="center", va="center", fontsize=fontsize,
                    color="white" if strong else "black")
    ax.set_title(title, fontsize=TEXT_PT)
    ax.set_xticks(range(0, arr.shape[1], tick_every))
    ax.set_yticks(range(0, arr.shape[0], tick_every))
    ax.tick_params(labelsize=TICK_PT, length=0, pad=1.5)


#: keys of the axes ``plot_conv_matrix`` draws on
CONV_MATRIX_PANELS = ("x", "kernel", "C", "y", "back", "spread", "fan_out", "CtC")


def plot_conv_matrix(example: ConvMatrixExample, axes: Mapping[str, object] | None = None):
    """Draw the worked example: x, the kernel, C, y = Cx, C^T C x, C^T of a one-hot, fan-out, C^T C.

    Args:
        example: from ``conv_matrix_example``.
        axes: a mapping from the names in ``CONV_MATRIX_PANELS`` to matplotlib axes; None creates a figure.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        # printed at a page's width: the small panels four to a row, C (4x16) on a row of its own
        fig = plt.figure(figsize=(PRINT_WIDTH, 7.6), layout="constrained")
        axes = fig.subplot_mosaic(
            [["x", "kernel", "y", "spread"], ["C", "C", "C", "C"], ["back", "fan_out", "CtC", "."]],
            height_ratios=[1, 1.05, 1],
        )
    missing = [k for k in CONV_MATRIX_PANELS if k not in axes]
    if missing:
        raise ValueError(f"axes lacks panels {missing}. Hint: give axes for all of {', '.join(CONV_MATRIX_PANELS)}")
    fig = axes["x"].figure
    e = example
    _heatmap(axes["x"], e.x, "input x (4x4)")
    _heatmap(axes["kernel"], e.kernel, "kernel w (3x3)", cmap="Greens")
    _heatmap(axes["C"], e.matrix, "$C$ (4x16): row = output unit, column = input pixel", cmap="Greens")
    axes["C"].set_xlabel("input pixel index (row-major)", fontsize=TEXT_PT)
    axes["C"].set_ylabel("output unit", fontsize=TEXT_PT)
    _heatmap(axes["y"], e.y, r"$y = C\,\mathrm{vec}(x)$," "\nshown 2x2", cmap="Oranges")
    _heatmap(axes["back"], e.back, rf"$C^\top C\,\mathrm{{vec}}(x) \neq x$:" "\n"
             f"relative error {e.relative_error:.3g}\n"
             f"({e.best_scaled_error:.2f} at the best scale)", cmap="Purples", fontsize=TICK_PT)
    _heatmap(axes["spread"], e.spread, rf"$C^\top$ of a one-hot" "\n" f"at output {e.unit}: one\nvalue to "
             f"{int((e.spread != 0).sum())} pixels", cmap="Greens")
    _heatmap(axes["fan_out"], e.fan_out, "outputs fed by each\npixel (nonzeros per\ncolumn of $C$)", cmap="Greys",
             fmt="{:.0f}")
    ctc = e.matrix.T @ e.matrix
    _heatmap(axes["CtC"], ctc, rf"$C^\top C$ (16x16): rank" "\n" f"{e.rank} of 16, not the identity", cmap="Purples",
             labels=False, tick_every=5)
    axes["CtC"].set_xlabel("input pixel index", fontsize=TEXT_PT)
    title(fig, "A 3x3 convolution over a 4x4 input (no padding, stride 1) as a matrix $C$; the transposed "
               r"convolution is $C^\top$: it restores the size (16), not the values")
    footer(fig, "No network weights: a fixed integer kernel. conv_matrix is checked against "
                "torch.nn.functional.conv2d / conv_transpose2d in the tests.")
    return fig
