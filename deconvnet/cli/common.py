"""What every command shares: the one-line usage error, argument types, output checks, loading a model and
a dataset from the command's options."""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..checks import positive_int

#: ``deconvnet.models.ARCH_NAMES`` (the families with the paper's layer names), written out so that ``--help``
#: and argument errors need no torch (tests/cli/test_cli.py checks the two agree)
ARCH_NAMES = ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "alexnet")


FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # what matplotlib writes (JPEG through Pillow)


class UsageError(Exception):
    """A bad command-line value; printed as one line, exit status 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` names each option's default; nothing where there is none (None, a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:  # the subcommands' --help show their defaults too
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, not usage + message
        raise UsageError(f"{message} (see {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse's, with a "did you mean" for each unknown option (``--layers`` to ``project``: ``--layer``)."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            import difflib

            parser: argparse.ArgumentParser = self
            for action in self._actions:  # the command's own parser knows its options
                if (isinstance(action, argparse._SubParsersAction)
                        and getattr(parsed, action.dest, None) in action.choices):
                    parser = action.choices[getattr(parsed, action.dest)]
            options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
            hints = []
            for extra in extras:
                near = difflib.get_close_matches(extra.split("=", 1)[0], options, n=1) if extra.startswith("--") else []
                if near:
                    hints.append(f"{extra}: did you mean {near[0]}?")
            parser.error(f"unrecognized arguments: {' '.join(extras)}" + (f" ({'; '.join(hints)})" if hints else ""))
        return parsed


def program_name() -> str:
    """How the user ran the command: ``deconvnet`` (the installed script) or ``python -m deconvnet``."""
    import os

    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m deconvnet" if name in ("", "__main__.py", "-c") or name.endswith(".py") else name


ARCH_HELP = (f"{', '.join(ARCH_NAMES)} (the paper's layer names), timm:NAME (any timm model), any torchvision "
             "classifier (resnet50, "
             "googlenet, densenet121, ...: layers are module paths such as layer3.1.conv2), or your own model by "
             "import path, module.path:ClassName (a class or a function returning an nn.Module, imported from the "
             "working directory; see --arch-kwargs, --weights FILE and --preprocessing)")

USER_WEIGHTS_HELP = ("auto, imagenet, mri or hed (vgg16, offline), random, or a state_dict path (the only file "
                     "source of a model given by import path)")


def _is_import_path(text: str) -> bool:
    return ":" in text and text.split(":", 1)[0] not in ("timm",)  # the full check is deconvnet.models.user's


def _arch(text: str) -> str:
    """``--arch`` at parse time: the names known without torch pass, others are checked by ``check_arch``
    once the arguments are read (so that ``--help`` and other argument errors need no torch)."""
    return text


def check_arch(text: str) -> str:
    """``text`` is a known arch, a torchvision classifier or an import path; else one line naming the fix."""
    if text in ARCH_NAMES or _is_import_path(text):
        if ":" in text:
            from ..models.user import is_import_path

            if not is_import_path(text):
                raise UsageError(f"--arch '{text}' is not an import path. Hint: module.path:ClassName, e.g. "
                                 "mypkg.models:TinyResNet")
        return text
    import torchvision.models as tvm

    if text in tvm.list_models(module=tvm):
        return text
    if text.startswith("timm:"):
        from ..models.timm import load_timm

        try:
            load_timm(text, "bad", seed=0, wrap=None)
        except ValueError as err:
            if "unknown timm model" in str(err):
                raise UsageError(f"--arch: {err}") from None
        return text
    import difflib

    near = difflib.get_close_matches(text, [*ARCH_NAMES, *tvm.list_models(module=tvm)], n=4)
    raise UsageError(f"--arch: unknown arch '{text}'" + (f"; did you mean {', '.join(near)}?" if near else
                     "; use vgg16, alexnet or a torchvision classifier name") +
                     " Your own model: --arch module.path:ClassName (imported from the working directory) with "
                     "--weights FILE")


#: the help texts several commands share, written once
DEVICE_HELP = "auto (CUDA when available, else cpu), cpu, cuda, cuda:1, ..."
EXTEND_HELP = ("project with the declared rules (ReLU-like activations as ReLU, gates and normaliser divisors held "
               "constant; docs/explanation/declared-rules.md)")
SCALINGS = ("percentile", "symmetric", "minmax")  # deconvnet.plot's display scalings


def add_model_options(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """The model every projecting command loads: ``--arch``, ``--weights``, ``--arch-kwargs``,
    ``--preprocessing``, ``--extend`` and ``--seed`` (whose help says what else it seeds)."""
    parser.add_argument("--arch", default="vgg16", type=_arch, metavar="ARCH", help=ARCH_HELP)
    parser.add_argument("--weights", default="auto", help=USER_WEIGHTS_HELP)
    add_user_model_options(parser)
    parser.add_argument("--extend", action="store_true", help=EXTEND_HELP)
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def add_user_model_options(parser: argparse.ArgumentParser) -> None:
    """``--arch-kwargs`` and ``--preprocessing``, for a model given by import path."""
    parser.add_argument("--arch-kwargs", default=None, metavar="JSON", help="keyword arguments for the class or "
                        "function of an --arch given by import path, as a JSON object, e.g. '{\"width\": 32}'")
    parser.add_argument("--preprocessing", default=None, metavar="NAME", help="the input convention of an --arch "
                        "given by import path: torchvision (default: ImageNet mean/std), caffe, mri, grayscale, or "
                        "ORDER:MEANS:STDS for inputs in [0, 1], e.g. RGB:0.5,0.5,0.5:0.25,0.25,0.25")


def _position(text: str):
    if text in ("max", "all"):
        return text
    try:
        row, col = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not max, all or ROW,COL (e.g. 10,11)") from None
    return (row, col)


def _channel(text: str):
    if text == "max":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a channel number or max") from None


def _features(text: str):
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of channels or all") from None


def _load_data(args: argparse.Namespace, net):
    """The dataset of ``--data`` (default: the offline demo collection), cut to ``--limit``; and its name."""
    from ..data import Head, load_dataset

    data = None if args.data is None else str(Path(args.data).expanduser())
    dataset = load_dataset(data, preprocessing=net.preprocessing, resize=args.resize, crop=args.crop)
    if args.limit is not None and args.limit < len(dataset):
        dataset = Head(dataset, args.limit)
    return dataset, ("the offline demo collection" if data is None else f"'{data}'")


def check_output_file(path: Path) -> None:
    """Before any work: ``path`` can be written as a file (its folder exists or can be made, and is writable)."""
    if path.is_dir():
        raise UsageError(f"--out '{path}' is a folder; give a file name, e.g. {path / 'figure.png'}")
    check_output_folder(path.parent, "the folder of --out")


def check_output_folder(folder: Path, what: str = "--out") -> None:
    """Before any work: ``folder`` exists or can be made, and a file can be written in it.

    Stale temporary files of writes that a kill interrupted are removed (``deconvnet.io``).
    """
    from ..io import remove_stale_temporaries

    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what} '{folder}' is a file, not a folder. Hint: give a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UsageError(f"{what} '{folder}' cannot be written: {err.strerror or err}. "
                         "Hint: choose a folder you can write to") from None
    remove_stale_temporaries(folder)


def _check_device(text: str) -> None:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device '{text}' is not a device. Hint: cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {text}: projections need a device that computes (cpu, cuda or mps), not "
                         f"{device.type}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {text}: MPS is not available here. Hint: --device cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text}: CUDA is not available here. Hint: --device cpu")


def _load_net(args: argparse.Namespace):
    from ..models import load_model, load_user_model

    args.device = resolve_device(args.device)
    _check_device(args.device)
    user = _is_import_path(args.arch)
    kwargs, preprocessing = getattr(args, "arch_kwargs", None), getattr(args, "preprocessing", None)
    if not user and (kwargs or preprocessing):
        raise UsageError(f"--{'arch-kwargs' if kwargs else 'preprocessing'} is for a model given by import path; "
                         f"{args.arch} brings its own. Hint: --arch module.path:ClassName, or leave it out")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if user:
            from ..models.user import parse_kwargs

            net = load_user_model(args.arch, args.weights, kwargs=parse_kwargs(kwargs), preprocessing=preprocessing,
                                  seed=args.seed, device=args.device)
        else:
            net = load_model(args.arch, args.weights, seed=args.seed, device=args.device)
    net.extend = bool(getattr(args, "extend", False))
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    return net


def resolve_device(text: str) -> str:
    """``auto``: CUDA when it is available, else the CPU; any other name as given (``_check_device`` checks it)."""
    if text != "auto":
        return text
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_user_layers(arch: str, layers: Sequence[str], arch_kwargs: str | None) -> None:
    """A model given by import path: its layer names (module paths), from the model built on the meta device
    where its code allows (else the names are checked once it is loaded)."""
    import torch

    from ..models import wrap
    from ..models.user import build_user_model, parse_kwargs

    kwargs = parse_kwargs(arch_kwargs)
    try:
        with torch.device("meta"):
            model, _ = build_user_model(arch, None, kwargs=kwargs)
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as err:
        if isinstance(err, ValueError) and ("import" in str(err) or "attribute" in str(err)):
            raise UsageError(f"--arch: {err}") from None
        return  # its code does what meta tensors cannot: checked once loaded
    net = wrap(model, name=arch)
    _resolve_all(net, layers)


def _resolve_all(net, layers: Sequence[str]) -> None:
    """Every layer names one of ``net``'s modules, else the first wrong one as a usage error (with its hint)."""
    for layer in layers:
        try:
            net.resolve(layer)
        except ValueError as err:
            raise UsageError(str(err)) from None


def check_layer_names(arch: str, layers: Sequence[str], channel: int | str | None = None,
                      arch_kwargs: str | None = None) -> None:
    """Before any weights load: every layer is one of ``arch``'s paper names, and ``channel`` fits the first.

    The names come from the family's table applied to the torchvision builder run on the meta device (no
    weights, no memory: milliseconds). The classifier's names pass here; weights without a classifier
    refuse them once loaded.
    """
    import torch
    from torch import nn

    from ..models import alexnet as alexnet_table
    from ..models import vgg as vgg_table

    if arch.startswith("timm:"):  # module paths, checked once the model is built
        return
    if _is_import_path(arch):
        return _check_user_layers(arch, layers, arch_kwargs)
    if arch not in ARCH_NAMES:  # any torchvision classifier: module paths, from the model built on meta
        import torchvision.models as tvm

        from ..models import wrap

        with torch.device("meta"):
            model = tvm.get_model_builder(arch)(weights=None)
        net = wrap(model, name=arch)
        _resolve_all(net, layers)
        return
    table = vgg_table if arch in vgg_table.ARCHS else alexnet_table
    with torch.device("meta"):
        model = table.ARCHS[arch][0](weights=None)
    names = {**table.feature_names(model.features), **vgg_table.classifier_names(model.classifier)}
    for layer in layers:
        if layer not in names:
            raise UsageError(f"unknown layer '{layer}' for {arch}. Hint: valid layers are {', '.join(names)}")
    if not layers or not isinstance(channel, int) or isinstance(channel, bool):
        return
    stack = [(f"features.{i}", m) for i, m in enumerate(model.features)] + \
            [(f"classifier.{i}", m) for i, m in enumerate(model.classifier)]
    count = 3
    for qualname, m in stack:  # channels of a layer: those of the last conv or linear at or below it
        if isinstance(m, nn.Conv2d):
            count = m.out_channels
        elif isinstance(m, nn.Linear):
            count = m.out_features
        if qualname == names[layers[0]]:
            break
    if not 0 <= channel < count:
        raise UsageError(f"channel {channel} is out of range for layer '{layers[0]}' of {arch}, which has {count} "
                         f"channels. Hint: use 0..{count - 1} or 'max'")


def check_count(name: str, value: int, least: int, wanted: str | None = None) -> None:
    """``value`` is an integer of at least ``least`` (``deconvnet.checks.positive_int``); else one usage error
    naming the option, its value and what it must be (``wanted``, default "at least LEAST")."""
    try:
        positive_int(name, value, minimum=least)
    except ValueError:
        raise UsageError(f"{name} {value} must be {wanted or f'at least {least}'}") from None


def check_counts(*limits: tuple[str, int, int]) -> None:
    """Each ``(option, value, least)``: a value below its least is one usage error naming both."""
    for name, value, least in limits:
        check_count(name, value, least)


def check_data_options(args: argparse.Namespace) -> None:
    """The data options every command that reads a collection shares: ``--limit`` and ``--data``."""
    if args.limit is not None:
        check_count("--limit", args.limit, 1)
    check_data_folder(args.data)


def check_data_folder(data: str | None) -> None:
    """Before the weights load: ``--data`` is a folder that holds at least one image file."""
    if data is None:
        return
    folder = Path(data).expanduser()
    if not folder.is_dir():
        raise UsageError(f"--data '{data}' is not a folder. Hint: give a folder of images, or leave --data out "
                         "for the offline demo collection")
    from ..data import IMAGE_EXTENSIONS, _find_images

    if not _find_images(folder):
        raise UsageError(f"--data '{data}' holds no images (none of {', '.join(IMAGE_EXTENSIONS)}, in any subfolder). "
                         "Hint: the folder of your images, or leave --data out for the offline demo collection")
