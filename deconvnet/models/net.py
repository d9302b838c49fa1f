"""``Net``: a model with what is specific to it (layer names, preprocessing, provenance), and what it is asked
about its layers (shapes, order, names) without the engine."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .. import images
from ..constants import DEFAULT_SIZE
from ..memory import check_memory
from ..preprocessing import Preprocessing
from .hooks import SKIP, capture
from .lock import exclusive, own_call

#: the module types a chain may consist of: the chain engine has a step down for each (``engine.chain``)
CHAIN_MODULES = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.BatchNorm2d, nn.Linear, nn.AdaptiveAvgPool2d,
                 nn.AvgPool2d, nn.Dropout, nn.Identity, nn.Flatten)


def _tree(model: nn.Module) -> tuple:
    """The module tree: (path, module) pairs. Model surgery (``model.fc = nn.Linear(512, 10)``) changes it."""
    return tuple((n, id(m)) for n, m in model.named_modules())


def _fake_if_large(hw: Sequence[int], area: int = 512 * 512) -> Any:
    """Fake tensors (shapes only, nothing allocated) for an input larger than ``area`` pixels; a plain
    forward below (faster, and exact for models that look at values)."""
    from contextlib import nullcontext

    if hw[0] * hw[1] <= area:
        return nullcontext()
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The original module of a ``torch.compile``d one (hooks and modes on the compiled wrapper go through
    dynamo; the original runs the same weights eagerly)."""
    while type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model


class Net:
    """A model and everything the toolkit needs to know about it: layer names, preprocessing, provenance.

    Two kinds: a *chain* (VGG, AlexNet, a user's ``nn.Sequential`` of supported modules), whose forward is
    its ``stack`` of modules in order and which the deconvnet walks down module by module (with the
    receptive-field-cropped fast path); and a *graph* (ResNet, GoogLeNet, DenseNet, any ``nn.Module``),
    projected through its own autograd graph (``deconvnet.engine.graph``). Build one with ``load_vgg``,
    ``load_alexnet``, ``load_model`` or ``wrap``.

    Attributes:
        arch: ``"vgg16"``, ``"alexnet"``, ``"resnet50"``, or the model's class name.
        model: the module whose forward is run.
        features: the spatial part of a chain (torchvision's ``features``), None for a graph.
        classifier: the classifier part of a VGG/AlexNet, or None (features-only weights, other models).
        stack: a chain's modules in forward order, ``(qualified name, module)``; None for a graph.
        layers: ordered mapping from layer names to modules: the paper's names (``conv5_3``) for VGG and
            AlexNet, module paths (``layer3.1.conv2``) for the others. Module paths work everywhere.
        preprocessing: how RGB images become model input, and back.
        categories: class names of the outputs, when the weights say (torchvision's ``meta``).
        provenance: arch, weight source, file and sha256 of the weights.
        extend: whether ``Deconvnet(net)`` takes the declared rules by default (``--extend``).
        declared: the declared rules the engine found the model's forward takes under ``extend``, with their
            counts (set by the engine's check); ``describe`` names them.
        stages: the default layers where the model's family names them (timm's ``feature_info``), else None.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        arch: str,
        names: Mapping[str, str] | None,
        preprocessing: Preprocessing,
        provenance: dict[str, Any],
        stack: list[tuple[str, nn.Module]] | None = None,
        features: nn.Sequential | None = None,
        classifier: nn.Sequential | None = None,
        categories: Sequence[str] | None = None,
    ) -> None:
        self.arch = arch
        self.model = model  # its mode is the caller's: each call runs an eval-mode view of it (``models.lock``)
        self.features = features
        self.classifier = classifier
        self.preprocessing = preprocessing
        self.categories = list(categories) if categories else None
        self.provenance = dict(provenance, arch=arch, preprocessing=preprocessing.name)
        if stack is None and features is not None:  # torchvision's VGG/AlexNet layout, given by its parts
            stack = [(f"features.{i}", m) for i, m in enumerate(features)]
            if classifier is not None:
                stack += [("avgpool", model.avgpool)] + [(f"classifier.{i}", m) for i, m in enumerate(classifier)]
        self.stack = stack
        self.paths: dict[str, nn.Module] = {n: m for n, m in model.named_modules() if n}
        if stack is not None:
            by_qualname = dict(stack)
            names = names or {q: q for q, _ in stack}
            self.layers: OrderedDict[str, nn.Module] = OrderedDict(
                (paper, by_qualname[q]) for paper, q in names.items() if q in by_qualname
            )
            self.qualnames: dict[str, str] = {p: q for p, q in names.items() if q in by_qualname}
        else:
            self.layers = OrderedDict(self.paths)
            self.qualnames = {n: n for n in self.paths}
        self._shapes: dict[tuple[int, int], dict[str, tuple[int, ...]]] = {}
        self._receptive: dict[tuple, Any] = {}
        self._probe_hw: tuple[int, int] | None = None  # the size shapes are probed at (``remember_shapes``)
        self._tree = _tree(model)
        self.extend = False
        self.declared: dict[str, int] = {}
        self.stages: list[str] | None = None

    @property
    def is_chain(self) -> bool:
        """Whether the forward is the ``stack`` in order (the explicit, croppable walk applies)."""
        return self.stack is not None

    # --- what consumers ask about the layers, whatever the kind of net ----------------------------------
    @property
    def can_show_stages(self) -> bool:
        """Whether the forward is the ``stack`` of modules in order, so that a projection can be walked down
        (and shown) module by module, with no autograd graph to keep (``Deconvnet.stages``, the resolution
        study); False for a graph."""
        return self.is_chain

    @property
    def tree(self) -> tuple:
        """The module tree the net last saw, ``(path, id(module))`` pairs: it changes with model surgery
        (``refresh``), so it keys what is checked or measured once per model."""
        return self._tree

    def reached_layers(self) -> list[str]:
        """The layers the forward reaches, in forward order (a chain's every layer; a graph's from one probe
        forward, ``output_shapes``)."""
        return list(self.layers) if self.is_chain else list(self.output_shapes())

    def pools(self) -> list[str]:
        """The pooling layers by the paper's names (``pool1`` ... ``pool5``), in forward order; empty for a
        net whose layers go by module paths (a graph)."""
        if not self.is_chain:
            return []
        return sorted((n for n in self.layers if n.startswith("pool")), key=self.depth)

    def feature_layers(self) -> list[str] | None:
        """The layers of the convolutional part (torchvision's ``features`` of a VGG or AlexNet), in forward
        order; None for a net without one (a graph, a chain given as one ``nn.Sequential``)."""
        if not self.is_chain or self.features is None:
            return None
        return sorted((n for n in self.layers if self.depth(n) < len(self.features)), key=self.depth)

    def first_conv(self) -> str:
        """The name of the first convolution (``nn.Conv2d``) in forward order.

        Raises:
            ValueError: the net has none.
        """
        convs = [name for name, m in self.layers.items() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"{self.arch} has no Conv2d layer")
        return convs[0] if self.is_chain else min(convs, key=self.order)

    def deepest_index(self, layers: Sequence[str]) -> int | None:
        """The stack index of the deepest of ``layers`` (what ``memory.check_memory`` counts up to); None for
        a graph, whose whole forward counts."""
        return max(self.depth(layer) for layer in layers) if self.is_chain else None

    @property
    def channels(self) -> dict[str, int]:
        """Layer name -> channels (or features) of its output."""
        if self.is_chain:
            return self._count_channels()
        return {name: shape[1] for name, shape in self.output_shapes().items() if len(shape) >= 2}

    def _count_channels(self) -> dict[str, int]:
        out, c, by_module = {}, 3, {id(m): p for p, m in self.layers.items()}
        for _, m in self.stack:
            if isinstance(m, nn.Conv2d):
                c = m.out_channels
            elif isinstance(m, nn.Linear):
                c = m.out_features
            if id(m) in by_module:
                out[by_module[id(m)]] = c
        return out

    @property
    def in_channels(self) -> int | None:
        """How many channels the model's input has: those of its first convolution (for a graph, the first
        one registered); None when it has none."""
        modules = (m for _, m in self.stack) if self.is_chain else self.model.modules()
        for m in modules:
            if isinstance(m, nn.modules.conv._ConvNd):
                return m.in_channels
        return None

    def remember_shapes(self, hw: tuple[int, int], shapes: dict[str, tuple[int, ...]]) -> None:
        """The engine's probe forward (under its mode) measured the layers' output shapes for an (H, W) input:
        ``output_shapes`` answers from them, and a model that 224 px does not go through (a fixed-size
        network, CIFAR's 32x32) is probed at this size from now on."""
        self._shapes[tuple(hw)] = shapes
        if self._probe_hw is None:
            self._probe_hw = tuple(hw)

    def output_shapes(self, hw: tuple[int, int] | None = None) -> dict[str, tuple[int, ...]]:
        """Layer name -> output shape (first call) for one (H, W) input, in the order the forward reaches
        the layers, from one plain forward of a zero image (cached per size).

        ``hw`` defaults to 224x224, or, for a model that input does not go through, the size of the first
        input the engine was given. Large inputs are run on fake tensors (``FakeTensorMode``): their shapes
        come out, nothing is allocated.

        Raises:
            ValueError: the forward fails for this size (the message says the size and why).
        """
        self.refresh()
        hw = tuple(int(v) for v in (hw if hw is not None else (self._probe_hw or (DEFAULT_SIZE, DEFAULT_SIZE))))
        if hw in self._shapes:
            return self._shapes[hw]
        names: dict[nn.Module, str] = {}
        for name, m in self.layers.items():
            names.setdefault(m, name)

        def keep(keys: list[str], m: nn.Module, inputs: tuple, output: Any) -> Any:
            return tuple(output.shape) if isinstance(output, torch.Tensor) else SKIP

        channels = self.in_channels or 3
        with exclusive(self.model) as model, own_call() as token:
            try:
                with torch.no_grad(), _fake_if_large(hw):
                    x = torch.zeros(1, channels, *hw, device=self.device, dtype=self.dtype)
                    kept = capture({name: m for m, name in names.items()}, lambda: model(x), keep=keep,
                                   stop_after_last=False, token=token)
            except (RuntimeError, ValueError, TypeError, AssertionError, NotImplementedError, IndexError) as err:
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                raise ValueError(f"a {hw[0]}x{hw[1]} input does not go through {self.arch}: {first}. Hint: give an "
                                 "input of the size the model takes") from err
        shapes: dict[str, tuple[int, ...]] = kept
        if len(self._shapes) >= 16:
            self._shapes.pop(next(iter(self._shapes)))
        self._shapes[hw] = shapes
        return shapes

    def order(self, layer: str | nn.Module) -> int:
        """Where a layer comes in the forward: its stack index for a chain, the order in which a graph's
        forward first reaches it (layers it never reaches come last). Sort layers with it."""
        name = self.resolve(layer)
        if self.is_chain:
            return self.depth(name)
        reached = list(self.output_shapes())
        return reached.index(name) if name in reached else len(reached) + list(self.layers).index(name)

    def is_spatial(self, layer: str | nn.Module) -> bool:
        """Whether a layer's output is a stack of maps (B, C, h, w), which scans and crops need."""
        name = self.resolve(layer)
        if self.is_chain and self.features is not None:
            return self.depth(name) < len(self.features)
        return len(self.output_shapes().get(name, ())) == 4

    def refresh(self) -> None:
        """Follow model surgery: after ``model.fc = nn.Linear(512, 10)`` the layers are the modules the model
        holds now, and the measured shapes and receptive fields are measured again."""
        tree = _tree(self.model)
        if tree == self._tree:
            return
        self._tree = tree
        self._shapes, self._receptive, self._probe_hw = {}, {}, None
        self.paths = {n: m for n, m in self.model.named_modules() if n}
        if not self.is_chain:
            self.layers = OrderedDict(self.paths)
            self.qualnames = {n: n for n in self.paths}
            return
        # a chain: the stack's modules looked up again by path (torchvision's VGG/AlexNet name them from the
        # full model, whose ``features`` may be the net's model)
        prefix = "features." if self.classifier is None and self.features is self.model else ""
        stack = []
        for q, _ in self.stack:
            module = self.paths.get(q[len(prefix):] if prefix and q.startswith(prefix) else q)
            if module is None:  # a module that is not there any more (the chain walk names one of no rule)
                raise ValueError(f"the module at '{q}' of {self.arch} was removed, and the chain walk follows its "
                                 "modules by path. Hint: wrap the changed model again, deconvnet.wrap(model)")
            stack.append((q, module))
        self.stack = stack
        by_qualname = dict(stack)
        self.layers = OrderedDict((p, by_qualname[q]) for p, q in self.qualnames.items())

    # --- devices ---------------------------------------------------------------------------------------
    def _first_tensor(self) -> torch.Tensor | None:
        t = next(iter(self.model.parameters()), None)
        return t if t is not None else next(iter(self.model.buffers()), None)

    @property
    def device(self) -> torch.device:
        t = self._first_tensor()
        return t.device if t is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        t = self._first_tensor()
        return t.dtype if t is not None and t.is_floating_point() else torch.get_default_dtype()

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Net:
        """Move the model (in place) and return self."""
        self.model.to(device=device, dtype=dtype)
        return self

    # --- names -----------------------------------------------------------------------------------------
    def resolve(self, layer: str | nn.Module) -> str:
        """The name a layer goes by in ``layers``, from that name, a module path or the module itself.

        Raises:
            ValueError: not a layer of this net; the message lists the valid names (or the nearest ones).
        """
        self.refresh()
        if isinstance(layer, nn.Module):
            for name, m in self.layers.items():
                if m is layer:
                    return name
            raise ValueError(f"the {type(layer).__name__} module given is not a layer of {self.arch}"
                             + ("" if self.is_chain else "") + ". Hint: pass one of net.model's modules or its path")
        if not isinstance(layer, str):
            raise TypeError(f"a layer is a name, a module path or a module, not {type(layer).__name__}")
        while layer.startswith("_orig_mod.") and layer not in self.layers:  # a path in a torch.compile'd model
            layer = layer[len("_orig_mod."):]
        if layer in self.layers:
            return layer
        if layer in self.paths:  # a module path of a chain with paper names ("features.28" -> "conv5_3")
            module = self.paths[layer]
            for name, m in self.layers.items():
                if m is module:
                    return name
        raise ValueError(f"unknown layer '{layer}' for {self.arch}. Hint: {self._valid_names(layer)}")

    def _valid_names(self, wrong: str) -> str:
        names = list(self.layers)
        if len(names) <= 60:
            return f"valid layers are {', '.join(names)}"
        import difflib

        near = difflib.get_close_matches(wrong, names, n=8, cutoff=0.5)
        return (f"the nearest are {', '.join(near)}; " if near else "") + f"net.layers lists all {len(names)}"

    def check_layer(self, layer: str | nn.Module) -> nn.Module:
        """The module of a layer name, module path or module; a wrong name raises ``ValueError``."""
        return self.layers[self.resolve(layer)]

    def depth(self, layer: str | nn.Module) -> int:
        """Index in ``stack`` of a layer's module (chains only)."""
        module = self.check_layer(layer)
        if not self.is_chain:
            raise ValueError(f"{self.arch} is a graph, not a chain of modules: its layers have no depth in a stack")
        return next(i for i, (_, m) in enumerate(self.stack) if m is module)

    # --- images ----------------------------------------------------------------------------------------
    def preprocess(self, image: images.ImageLike, size: int | None = DEFAULT_SIZE,
                   crop: int | None | str = "size") -> torch.Tensor:
        """An RGB image -> model input (1, C, H, W) on the model's device and dtype.

        The default is the command line's: the shorter side resized to 224 px and the centre 224x224 square
        cut out, for every model. A grayscale model (``Preprocessing`` of ``channel_order="L"``, what
        ``wrap`` gives a model whose first convolution takes one channel) gets the luma of the image.

        Args:
            image: path, bundled scikit-image photograph name, PIL image, HxWx3 array or (3, H, W) tensor.
            size: resize the shorter side to this many pixels (None: keep).
            crop: center-crop a ``crop`` x ``crop`` square; ``"size"`` (default): a square of side ``size``
                (none when ``size`` is None); None: no crop.

        Raises:
            ValueError: the model takes neither 1 nor 3 channels (build its input tensor yourself), a crop
                larger than the size.
            MemoryError: the resized image or the forward would not fit in memory (nothing is allocated).
        """
        if crop == "size":
            crop = size
        channels = self.in_channels
        if channels is not None and channels != self.preprocessing.channels:
            raise ValueError(f"{self.arch} takes {channels}-channel inputs, and its preprocessing "
                             f"({self.preprocessing.name}) makes {self.preprocessing.channels}. Hint: "
                             + ("wrap the model with a 1- or 3-channel Preprocessing" if channels in (1, 3) else
                                f"build the (B, {channels}, H, W) input tensor yourself"))
        pil = images.load_rgb(image)
        if crop is not None and size is not None and crop > size:
            raise ValueError(f"crop {crop} is larger than the resized shorter side {size}. Hint: crop <= size")
        # refuse a size whose resizing or forward pass cannot fit in memory before allocating either
        resized_w, resized_h = images.resized_size(pil.size, size)
        check_memory(self, 1, (resized_h, resized_w) if crop is None else (crop, crop))
        if 3 * resized_w * resized_h > 2**31:  # the resized RGB image alone would take over 2 GiB
            raise MemoryError(f"resizing the image to {resized_w}x{resized_h} px needs "
                              f"{3 * resized_w * resized_h / 2**30:.0f} GiB. Hint: use a smaller size (e.g. 224)")
        pil = images.resize_center_crop(pil, size, crop)
        x = images.pil_to_tensor01(pil).unsqueeze(0).to(device=self.device, dtype=self.dtype)
        return self.preprocessing.forward(x)

    def deprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (B, C, H, W) -> RGB in [0, 1] for display (grayscale: three equal channels)."""
        return self.preprocessing.inverse(x)

    def describe(self) -> str:
        """One line naming the model, the weights that made a figure (their file and sha256 when a file was
        read) and the input preprocessing."""
        p = self.provenance
        name = str(p.get("file") or "").replace("\\", "/").rsplit("/", 1)[-1]
        file = f", file {name}" if name and name not in str(p["source"]) else ""
        sha = f", sha256 {p['sha256'][:12]}" if p.get("sha256") else ""
        seed = f", seed {p['seed']}" if "seed" in p else ""
        line = f"{self.arch}, weights: {p['weights']} ({p['source']}{seed}{file}{sha}); input: {p['preprocessing']}"
        if self.declared:  # the engine's summary (``engine.rules.summary``), in the words every figure uses
            line += "; declared rules: " + ", ".join(f"{k} ({v})" for k, v in sorted(self.declared.items()))
        return line

    def __repr__(self) -> str:
        return f"Net({self.describe()}; {len(self.layers)} named layers)"
