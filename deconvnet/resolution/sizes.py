"""Size arithmetic of convolution and transposed convolution, with PyTorch's own validation rules.

Along one axis, for input size ``n``, kernel ``k``, stride ``s``, padding ``p`` and dilation ``d``, the
dilated kernel spans ``d(k - 1) + 1`` inputs, and:

- ``Conv2d`` (and ``MaxPool2d``) slides that span over the padded input ``n + 2p`` in steps of ``s``, so
  ``out = floor((n + 2p - d(k - 1) - 1) / s) + 1``. (``MaxPool2d(ceil_mode=True)`` rounds up instead and
  drops a last window that would start in the right padding; the functions here model ``Conv2d``.)
- ``ConvTranspose2d`` runs that map backwards: each of the ``n`` inputs is spread ``s`` apart, the span is
  laid over each, and ``p`` is trimmed from either side, so
  ``out = (n - 1) s - 2p + d(k - 1) + output_padding + 1``. A stride-``s`` convolution maps up to ``s``
  input sizes to the same output size; ``output_padding`` picks one of them.

A configuration that PyTorch rejects raises ``ValueError`` here, with the rule that it breaks:
non-positive sizes, kernels, strides or dilations; negative padding; a padded input smaller than the
dilated kernel; an ``output_padding`` not smaller than the stride or the dilation; an empty output.
"""

from __future__ import annotations

from ..checks import positive_int


def _check_int(name: str, value: int, minimum: int) -> None:
    """A Python ``int`` (else ``TypeError``, as PyTorch's size arguments) of at least ``minimum`` (else the
    package's one ``ValueError``, ``deconvnet.checks.positive_int``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    positive_int(name, value, minimum=minimum, hint=f"PyTorch rejects {name}={value}")


def conv_output_size(
    in_size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """Output size of a convolution along one axis.

    Args:
        in_size: input size ``n`` (at least 1).
        kernel_size: kernel size ``k`` (at least 1).
        stride: stride ``s`` (at least 1).
        padding: zero padding ``p`` on each side (at least 0).
        dilation: dilation ``d`` (at least 1); the dilated kernel spans ``d(k - 1) + 1`` inputs.

    Returns:
        ``floor((n + 2p - d(k - 1) - 1) / s) + 1``, the size ``torch.nn.Conv2d`` produces.

    Raises:
        TypeError: an argument is not an int.
        ValueError: a configuration PyTorch rejects, e.g. a dilated kernel larger than the padded input.

    Example:
        >>> conv_output_size(4, 3)  # a 3x3 kernel over a 4x4 input gives 2x2
        2
    """
    _check_int("in_size", in_size, 1)
    _check_int("kernel_size", kernel_size, 1)
    _check_int("stride", stride, 1)
    _check_int("padding", padding, 0)
    _check_int("dilation", dilation, 1)
    span = dilation * (kernel_size - 1) + 1
    if in_size + 2 * padding < span:
        raise ValueError(
            f"the dilated kernel spans {span} inputs (k={kernel_size}, d={dilation}) but the padded input has "
            f"only {in_size + 2 * padding} (n={in_size}, p={padding}). Hint: a smaller kernel or dilation, "
            "more padding, or a larger input"
        )
    return (in_size + 2 * padding - span) // stride + 1


def conv_transpose_output_size(
    in_size: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    output_padding: int = 0,
) -> int:
    """Output size of a transposed convolution along one axis.

    Args:
        in_size: input size ``n`` (at least 1).
        kernel_size: kernel size ``k`` (at least 1).
        stride: stride ``s`` (at least 1).
        padding: the padding ``p`` of the convolution this one transposes (at least 0).
        dilation: dilation ``d`` (at least 1).
        output_padding: extra rows added on one side (at least 0, and smaller than the stride or the
            dilation): it picks one of the ``s`` input sizes that a stride-``s`` convolution maps to ``n``.

    Returns:
        ``(n - 1)s - 2p + d(k - 1) + output_padding + 1``, the size ``torch.nn.ConvTranspose2d`` produces.

    Raises:
        TypeError: an argument is not an int.
        ValueError: a configuration PyTorch rejects (bad output padding, an empty or negative output).

    Example:
        >>> conv_transpose_output_size(2, 3)  # the transpose of the 4x4 -> 2x2 convolution: back to 4
        4
    """
    _check_int("in_size", in_size, 1)
    _check_int("kernel_size", kernel_size, 1)
    _check_int("stride", stride, 1)
    _check_int("padding", padding, 0)
    _check_int("dilation", dilation, 1)
    _check_int("output_padding", output_padding, 0)
    if output_padding >= stride and output_padding >= dilation:
        raise ValueError(
            f"output_padding={output_padding} must be smaller than either the stride ({stride}) or the "
            f"dilation ({dilation}). Hint: output_padding only chooses among the {stride} input sizes a "
            f"stride-{stride} convolution maps to the same output; use 0..{max(stride, dilation) - 1}"
        )
    out = (in_size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1
    if out < 1:
        raise ValueError(
            f"the output size would be {out} (n={in_size}, k={kernel_size}, s={stride}, p={padding}, "
            f"d={dilation}, output_padding={output_padding}). Hint: the padding {padding} removes more than "
            "the transposed convolution produces; use less padding"
        )
    return out
