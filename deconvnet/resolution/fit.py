"""Training the two learnable restorers: full-batch Adam on an exact quadratic form of their mean squared error.

The layers are trained briefly on the mean squared error of restoring the originals of a training set,
which by default is the signal itself (then the score is what the layer can fit, an upper bound), and
better held-out signals (other photographs).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..checks import positive_int


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
        raise ValueError(f"the layer maps {tuple(p.shape)} to {tuple(resp.shape[1:])}, "
                         f"not to the targets' {tuple(t.shape)}")
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
    steps = positive_int("steps", steps, minimum=0)
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
