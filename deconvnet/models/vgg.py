"""The VGG family table: torchvision builders, weights, and the paper's layer names."""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

#: arch -> (torchvision builder, torchvision weights enum)
ARCHS = {
    "vgg11": (tvm.vgg11, tvm.VGG11_Weights.IMAGENET1K_V1),
    "vgg13": (tvm.vgg13, tvm.VGG13_Weights.IMAGENET1K_V1),
    "vgg16": (tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1),
    "vgg19": (tvm.vgg19, tvm.VGG19_Weights.IMAGENET1K_V1),
    "vgg11_bn": (tvm.vgg11_bn, tvm.VGG11_BN_Weights.IMAGENET1K_V1),
    "vgg13_bn": (tvm.vgg13_bn, tvm.VGG13_BN_Weights.IMAGENET1K_V1),
    "vgg16_bn": (tvm.vgg16_bn, tvm.VGG16_BN_Weights.IMAGENET1K_V1),
    "vgg19_bn": (tvm.vgg19_bn, tvm.VGG19_BN_Weights.IMAGENET1K_V1),
}

#: arch -> its offline weight sources (``deconvnet.models.weights.OFFLINE``), the offline default first
OFFLINE = {"vgg16": ("mri", "hed")}


def feature_names(features: nn.Sequential) -> dict[str, str]:
    """Map the paper's names (conv3_2, bn3_2, relu3_2, pool3) to ``features.N``: blocks end at each pool."""
    names, block, index = {}, 1, 0
    for i, m in enumerate(features):
        if isinstance(m, nn.Conv2d):
            index += 1
            names[f"conv{block}_{index}"] = f"features.{i}"
        elif isinstance(m, nn.BatchNorm2d):
            names[f"bn{block}_{index}"] = f"features.{i}"
        elif isinstance(m, nn.ReLU):
            names[f"relu{block}_{index}"] = f"features.{i}"
        elif isinstance(m, nn.MaxPool2d):
            names[f"pool{block}"] = f"features.{i}"
            block, index = block + 1, 0
    return names


def classifier_names(classifier: nn.Sequential) -> dict[str, str]:
    """fc6, relu6, fc7, relu7, fc8 -> ``classifier.N`` (the same scheme serves AlexNet)."""
    names, fc = {}, 5
    for i, m in enumerate(classifier):
        if isinstance(m, nn.Linear):
            fc += 1
            names[f"fc{fc}"] = f"classifier.{i}"
        elif isinstance(m, nn.ReLU):
            names[f"relu{fc}"] = f"classifier.{i}"
    return names
