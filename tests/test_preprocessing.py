"""Preprocessing: grayscale models and their refusals, one default size everywhere."""

import pytest
import torch

import deconvnet as dn

from conftest import small_convnet


def test_grayscale_preprocessing_and_refusals():
    gray = dn.wrap(small_convnet(1).float())
    assert gray.preprocessing.channels == 1 and "grayscale" in gray.provenance["source"]
    x = gray.preprocess("astronaut")  # the default size, as the CLI's: 224
    rgb = dn.wrap(small_convnet(3).float()).preprocess("astronaut")  # torchvision mean/std
    assert x.shape == (1, 1, 224, 224) and rgb.shape == (1, 3, 224, 224)
    rgb01 = rgb * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3,
                                                                                                                  1, 1)
    luma = (rgb01 * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(x, luma, atol=1e-5, rtol=0)
    assert gray.deprocess(x).shape == (1, 3, 224, 224)
    four = dn.wrap(small_convnet(4).float())
    with pytest.raises(ValueError,
                       match=r"takes 4-channel inputs.*Hint: build the \(B, 4, H, W\) input tensor yourself"):
        four.preprocess("astronaut")
    with pytest.raises(ValueError, match=r"expected an input of shape \(B, 1, H, W\), got \(1, 3, 16, 16\)"):
        dn.Deconvnet(gray).project(torch.zeros(1, 3, 16, 16), "0")


def test_one_default_size_everywhere(vgg16):
    resnet = dn.load_model("resnet18", "random")
    assert resnet.preprocess("chelsea").shape == vgg16.preprocess("chelsea").shape == (1, 3, 224, 224)
    assert vgg16.preprocess("chelsea", size=None).shape == (1, 3, 300, 451)  # None keeps the photograph
