"""The command line: the README's main job, and one-line errors with exit status 2."""

import subprocess
import sys

import matplotlib.pyplot as plt
import pytest
from PIL import Image

import deconvnet as dn
from deconvnet.cli import main

from conftest import images, requires_hed


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_project_writes_a_figure(tmp_path, capsys):
    out = tmp_path / "sub" / "fig.png"
    code, stdout, _ = run(["project", "chelsea", "--weights", "random", "--layer", "relu4_3", "--size", "96", "--out", str(out)], capsys)
    assert code == 0
    im = Image.open(out)
    assert im.size[0] > 600 and im.size[1] > 300
    assert "random" in stdout and str(out) in stdout
    assert not list(out.parent.glob(".fig.*"))  # no temporary file left behind


@requires_hed
def test_project_command_on_offline_defaults(tmp_path):
    """The project command with weights auto, offline, in a subprocess, as a user runs it."""
    out = tmp_path / "astronaut.png"
    r = subprocess.run(
        [sys.executable, "-m", "deconvnet", "project", "astronaut", "--layer", "conv5_3", "--channel", "max", "--out", str(out)],
        capture_output=True, text=True, env={"DECONVNET_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "hed" in r.stdout and "offline HED" in r.stderr
    assert Image.open(out).size[0] > 600


@pytest.mark.parametrize(
    "args, message",
    [
        (["project", "astronaut", "--layer", "conv9_9"], "unknown layer 'conv9_9'"),
        (["project", "astronaut", "--channel", "4096"], "channel 4096 is out of range"),
        (["project", "astronaut", "--channel", "x"], "'x' is not a channel number or max"),
        (["project", "astronaut", "--position", "100,100"], "position (100, 100) is outside"),
        (["project", "astronaut", "--position", "1"], "'1' is not max, all or ROW,COL"),
        (["project", "nosuchphoto"], "neither a file nor a bundled photograph"),
        (["project", "/nonexistent/cat.jpg"], "image file not found: '/nonexistent/cat.jpg'"),
        (["project", "astronaut", "--arch", "resnet50"], "invalid choice: 'resnet50'"),
        (["project", "astronaut", "--weights", "/nonexistent/w.pth"], "weights file not found: '/nonexistent/w.pth'"),
        (["project", "astronaut", "--colour", "red"], "unrecognized arguments: --colour red"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(args, message, tmp_path, capsys):
    if "--out" not in args:
        args = args + ["--out", str(tmp_path / "x.png")]
    if "--weights" not in args:
        args = args + ["--weights", "random"]
    code, _, err = run(args, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("deconvnet: error:") and message in lines[0], err
    assert "Traceback" not in err


def test_bad_output_suffix(tmp_path, capsys):
    code, _, err = run(["project", "astronaut", "--weights", "random", "--out", str(tmp_path / "x.jpg")], capsys)
    assert code == 2 and "must end in .png, .pdf or .svg" in err


def test_show_draws_on_given_axes(vgg16):
    x = images((2, 3, 64, 64))
    p = dn.Deconvnet(vgg16).project(x, "conv4_1", 3)
    fig, axes = plt.subplots(1, 3)
    assert dn.show(p, index=1, axes=axes[1:]) is fig
    assert len(axes[1].images) == 1 and len(axes[2].images) == 1 and not axes[0].images
    shown = axes[2].images[0].get_array()
    ref = p.projection_rgb()[1].permute(1, 2, 0).double().numpy()
    assert abs(shown - (0.5 + ref / (2 * abs(ref).max()))).max() < 1e-12  # symmetric: zero is gray, max|v| at 0 or 1
    assert "conv4_1 channel 3" in axes[2].get_title()
    plt.close(fig)
    fig = dn.show(p)
    assert len(fig.axes) == 2 and "random" in fig._supxlabel.get_text()
    plt.close(fig)


def test_figures_script_other_kinds(tmp_path, capsys):
    """--only wires the resolution study and the analyses into the script (quick settings)."""
    code = main(["figures", "--weights", "random", "--only", "resolution,filters,occlusion", "--quick", "--quiet",
                 "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    for name in ("resolution_comparison.csv", "resolution_checkerboard.png", "filters.png", "occlusion.png", "occlusion.json"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    assert oct((tmp_path / "filters.png").stat().st_mode & 0o777) != "0o600"  # ordinary permissions
    assert "timings:" in out
