"""The AlexNet family table (Zeiler & Fergus's own net is an AlexNet variant with overlapping pooling)."""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

ARCHS = {"alexnet": (tvm.alexnet, tvm.AlexNet_Weights.IMAGENET1K_V1)}


def feature_names(features: nn.Sequential) -> dict[str, str]:
    """conv1..conv5, relu1..relu5, and pool1, pool2, pool5 named after the conv they follow."""
    names, conv = {}, 0
    for i, m in enumerate(features):
        if isinstance(m, nn.Conv2d):
            conv += 1
            names[f"conv{conv}"] = f"features.{i}"
        elif isinstance(m, nn.ReLU):
            names[f"relu{conv}"] = f"features.{i}"
        elif isinstance(m, nn.MaxPool2d):
            names[f"pool{conv}"] = f"features.{i}"
    return names
