"""Fast exact projections: the receptive-field-cropped walk and compact switches equal the plain ones."""

import pytest
import torch

import deconvnet as dn

from conftest import assert_exact, images


def spatial_layers(net):
    return [n for n in net.layers if net.depth(n) < len(net.features)]


@pytest.mark.slow
@pytest.mark.parametrize("arch, hw", [("vgg16", (99, 96)), ("vgg11_bn", (64, 70)), ("alexnet", (131, 127))])
def test_cropped_equals_full_at_every_layer(arch, hw, request):
    net = request.getfixturevalue(arch.replace("vgg16", "vgg16"))
    x = images((2, 3, *hw), seed=31)
    full, crop = dn.Deconvnet(net, crop=False), dn.Deconvnet(net, crop=True)
    for layer in spatial_layers(net):
        h, w = crop.record(x, [layer]).activations[layer].shape[-2:]
        # corners and the middle: windows that leave the image on every side, and ones that do not
        targets = [dn.Target(layer, "max", "max"), dn.Target(layer, 1, (0, 0)), dn.Target(layer, 2, (h - 1, w - 1)),
                   dn.Target(layer, 3, (h // 2, w // 3))]
        for a, c in zip(full.project_many(x, targets), crop.project_many(x, targets), strict=False):
            scale = a.projection.abs().max()
            assert torch.equal(a.position, c.position)
            assert (a.projection - c.projection).abs().max() <= 1e-5 * scale, (layer, a.target.position)


def test_cropped_batches_across_targets_and_chunks(vgg16):
    x = images((3, 3, 96, 96), seed=32)
    units = torch.tensor([[0, 1], [5, 5], [11, 2]])
    targets = [dn.Target("relu4_2", c, units) for c in range(5)] + [dn.Target("pool3", 7, (3, 4))]
    small = dn.Deconvnet(vgg16, crop=True, max_batch=4).project_many(x, targets)
    ref = dn.Deconvnet(vgg16, crop=False).project_many(x, targets)
    for a, b in zip(small, ref, strict=False):
        assert (a.projection - b.projection).abs().max() <= 1e-5 * b.projection.abs().max()
        if a.layer == "relu4_2":
            assert a.position.tolist() == units.tolist()


def test_windows_larger_than_the_image_are_cut_to_it(monkeypatch):
    """A deep unit of a small image: its window (134 px at conv5_2 of VGG11, on a 40 x 36 image) is cut to each
    map on the way down, so the walk computes no more than the whole-map walk, and still gives the whole
    window: the whole-map projection on the receptive-field box (float64)."""
    import deconvnet.engine.cropped as cropped
    from deconvnet.engine.cropped import crop

    net = dn.load_vgg("vgg11", "random", seed=4, dtype=torch.float64)
    x = images((2, 3, 40, 36), seed=35, dtype=torch.float64)
    d = dn.Deconvnet(net)
    h, w = d.record(x, ["conv5_2"]).activations["conv5_2"].shape[-2:]
    image, channel = torch.tensor([0, 1, 1]), torch.tensor([3, 0, 7])
    unit = torch.tensor([[0, 0], [h - 1, w - 1], [h // 2, 0]])
    areas = []
    conv_t = cropped.F.conv_transpose2d
    monkeypatch.setattr(cropped.F, "conv_transpose2d",
                        lambda r, *a: areas.append(r.shape[-2:].numel()) or conv_t(r, *a))
    done = d.project_units(x, "conv5_2", image, channel, unit)
    monkeypatch.undo()
    size = d.receptive_field("conv5_2").size
    assert tuple(done.windows.shape[-2:]) == tuple(size) and size[0] > 3 * x.shape[-2]
    whole = x.shape[-2:].numel()  # the largest map a whole-map walk feeds a transposed convolution
    assert max(areas) <= whole, (max(areas), whole)
    for k in range(len(unit)):
        seed = torch.zeros(1, *d.record(x, ["conv5_2"]).activations["conv5_2"].shape[1:], dtype=torch.float64)
        seed[0, channel[k], unit[k, 0], unit[k, 1]] = done.activations[k]
        full = d.project_seed(x[image[k] : image[k] + 1], "conv5_2", seed)
        want = crop(full, done.origins[k : k + 1], size)
        assert_exact(done.windows[k : k + 1], want, f"unit {unit[k].tolist()}")


def test_auto_crops_only_where_it_pays(vgg16):
    d = dn.Deconvnet(vgg16)
    assert d._engine.crops(dn.Target("conv3_3", 0, "max"), vgg16.depth("conv3_3"), (224, 224))
    assert not d._engine.crops(dn.Target("pool5", 0, "max"), vgg16.depth("pool5"), (64, 64))  # 212 px window
    assert not d._engine.crops(dn.Target("conv3_3", 0, "all"), vgg16.depth("conv3_3"), (224, 224))
    assert not d._engine.crops(dn.Target("fc6", 0, "max"), vgg16.depth("fc6"), (224, 224))
    assert not dn.Deconvnet(vgg16, unpool="max_unpool")._engine.crops(dn.Target("conv3_3", 0), vgg16.depth("conv3_3"),
                                                                      (224, 224))
    with pytest.raises(ValueError, match="crop 'yes' is not understood"):
        dn.Deconvnet(vgg16, crop="yes")


def test_cropped_equals_captum_on_real_sizes(vgg16):
    """The cropped path against the independent reference directly (224 px, auto mode crops here)."""
    from captum.attr import NeuronDeconvolution

    x = images((1, 3, 224, 224), seed=33)
    d = dn.Deconvnet(vgg16)
    assert d._engine.crops(dn.Target("relu4_3"), vgg16.depth("relu4_3"), (224, 224))
    p = d.project(x, "relu4_3", "max", (3, 25))
    c, (r, col) = int(p.channel[0]), p.position[0].tolist()
    ref = NeuronDeconvolution(vgg16.model, vgg16.layers["relu4_3"]).attribute(x.clone(), neuron_selector=(c, r, col))
    ref = ref.detach() * p.activation[0]
    assert p.projection.abs().max() > 0
    assert (p.projection - ref).abs().max() <= 1e-4 * ref.abs().max()


# --- compact switches ----------------------------------------------------------------------------------
