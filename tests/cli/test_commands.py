"""The commands a user meets first: --version, --help, layers, argument errors before the model loads,
project's formats, warnings, the device."""

from __future__ import annotations

import re
import time
import warnings

import pytest
import torch
from PIL import Image

import deconvnet as dn
from deconvnet import cli
from deconvnet.cli import main


def test_layers_command_marks_the_default_layers(capsys):
    assert main(["layers", "--arch", "resnet18", "--size", "64"]) == 0
    out = capsys.readouterr().out
    marked = [line.split()[0] for line in out.splitlines() if line.rstrip().endswith("*")]
    assert marked == ["layer1", "layer2", "layer3", "layer4"], out


def test_atlas_command_on_a_graph(tmp_path, capsys):
    out = tmp_path / "atlas"
    code = main(["atlas", "--arch", "resnet18", "--weights", "random", "--layers", "layer2", "--features", "2",
                 "--k", "3", "--limit", "6", "--crop", "64", "--resize", "64", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "layer2 (2 channels)" in captured.out
    assert len(list((out / "layer2").glob("*.html"))) == 2


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# hand-worked from the recurrence in docs/explanation/deconvnet.md ("Receptive fields": r, j, P),
# and the map sizes of a 224 input
VGG16_224 = {"conv1_2": ("64", "224x224", 5, 1, 2), "pool1": ("64", "112x112", 6, 2, 2), "conv2_2": ("128", "112x112",
                                                                                                     14, 2, 6),
             "pool2": ("128", "56x56", 16, 4, 6), "conv3_3": ("256", "56x56", 40, 4, 18), "pool3": ("256", "28x28", 44,
                                                                                                    8, 18),
             "relu4_3": ("512", "28x28", 92, 8, 42), "pool4": ("512", "14x14", 100, 16, 42),
             "conv5_3": ("512", "14x14", 196, 16, 90), "pool5": ("512", "7x7", 212, 32, 90)}


ALEXNET_224 = {"conv1": ("64", "55x55", 11, 4, 2), "pool1": ("64", "27x27", 19, 8, 2), "conv2": ("192", "27x27", 51, 8,
                                                                                                 18),
               "pool2": ("192", "13x13", 67, 16, 18), "conv5": ("256", "13x13", 163, 16, 66), "pool5": ("256", "6x6",
                                                                                                        195, 32, 66)}


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"deconvnet {dn.__version__}"


def test_help_shows_the_defaults(capsys):
    for command, expected in [("project", ["(default: conv5_3)", "(default: max)", "(default: auto)",
                                           "(default: 224)"]),
                              ("figures", ["(default: 9)", "(default: figures)", "(default: auto)",
                                           "(default: random)"]),
                              ("layers", ["(default: vgg16)", "(default: 224)"])]:
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for words in expected:
            assert words in text, (command, words)
        assert "(default: None)" not in text and "(default: False)" not in text


@pytest.mark.parametrize("arch, want", [("vgg16", VGG16_224), ("alexnet", ALEXNET_224)])
def test_layers_lists_channels_map_sizes_and_receptive_fields(arch, want, capsys, request):
    code, out, err = run(["layers", "--arch", arch, "--size", "224"], capsys)
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:-1]}
    assert out.splitlines()[-1].startswith("default: * marks")
    assert list(rows) == list(request.getfixturevalue(arch).layers)  # the conftest's models
    for layer, (channels, size, r, j, p) in want.items():
        assert rows[layer][2:8] == [channels, size, str(r), "px", str(j), str(p)], rows[layer]
    defaults = [layer for layer, row in rows.items() if row[-1] == "*"]
    assert defaults == (["conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"] if arch == "vgg16"
                        else ["conv1", "conv2", "conv3", "conv4", "conv5"])
    assert rows["fc8"][2:] == ["1000", "-", "whole", "image", "-", "-"]


def test_layers_for_another_size_and_a_too_small_one(capsys):
    code, out, _ = run(["layers", "--arch", "vgg11", "--size", "100"], capsys)
    assert code == 0 and re.search(r"^pool5\s+features\.20\s+512\s+3x3\s", out, re.M)
    code, _, err = run(["layers", "--size", "16"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "too small" in err


@pytest.mark.parametrize("args, message", [
    (["project", "astronaut", "--layer", "conv9_9"],
     "unknown layer 'conv9_9' for vgg16. Hint: valid layers are conv1_1,"),
    (["project", "astronaut", "--arch", "alexnet", "--layer", "conv5_3"], "unknown layer 'conv5_3' for alexnet"),
    (["project", "astronaut", "--layer", "conv3_3", "--channel", "256"],
     "channel 256 is out of range for layer 'conv3_3'"),
    (["project", "astronaut", "--layer", "fc8", "--channel", "1000"], "which has 1000 channels"),
    (["project", "/nonexistent/cat.jpg"], "image file not found: '/nonexistent/cat.jpg'"),
    (["project", "nosuchphoto"], "neither a file nor a bundled photograph"),
    (["figures", "--layers", "conv3_3,conv9_9"], "unknown layer 'conv9_9'"),
])
def test_wrong_arguments_fail_before_the_model_loads(args, message, tmp_path, capsys, monkeypatch):
    """No weights are read (the loader refuses to be called) and the answer comes at once."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "_load_net", refuse)
    args = args + ["--weights", "imagenet", "--out", str(tmp_path / ("x.png" if args[0] == "project" else "figs"))]
    start = time.perf_counter()
    code, _, err = run(args, capsys)
    elapsed = time.perf_counter() - start
    assert code == 2 and err.count("\n") == 1 and err.startswith("deconvnet: error:") and message in err, err
    assert elapsed < 1.0, f"{elapsed:.2f} s"


def test_project_writes_jpeg(tmp_path, capsys):
    out = tmp_path / "unit.jpg"
    code, stdout, err = run(["project", "chelsea", "--weights", "random", "--layer", "relu3_3", "--size", "64",
                             "--out", str(out)], capsys)
    assert code == 0, err
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.size[0] > 600
    code, _, err = run(["project", "chelsea", "--out", str(tmp_path / "unit.gif")], capsys)
    assert code == 2 and "must end in .png, .jpg, .jpeg, .pdf, .svg" in err


def test_warnings_are_one_line_without_source_while_the_command_runs(capsys, monkeypatch):
    def warn(args):
        warnings.warn("first line\n   second line", UserWarning, stacklevel=1)

    before = warnings.showwarning
    monkeypatch.setattr(cli, "cmd_layers", warn)
    code, _, err = run(["layers"], capsys)
    assert code == 0
    assert err == "warning: first line second line\n"  # no file name, line number or source line
    assert warnings.showwarning is before  # set for the command only, not at import


def test_device_auto_takes_cuda_when_there_is_one(monkeypatch):

    parser = cli.build_parser()
    for command in (["project", "x", "--out", "x.png"], ["figures"]):
        assert parser.parse_args(command).device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.resolve_device("auto") == "cuda" and cli.resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.resolve_device("auto") == "cpu" and cli.resolve_device("cuda:1") == "cuda:1"
