"""The command line: the README's main job, and one-line errors with exit status 2."""

import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

import deconvnet as dn
from deconvnet.cli import main

from conftest import images, requires_mri


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_project_writes_a_figure(tmp_path, capsys):
    out = tmp_path / "sub" / "fig.png"
    code, stdout, _ = run(["project", "chelsea", "--weights", "random", "--layer", "relu4_3", "--size", "96", "--out",
                           str(out)], capsys)
    assert code == 0
    im = Image.open(out)
    assert im.size[0] > 600 and im.size[1] > 300
    assert "random" in stdout and str(out) in stdout
    assert not list(out.parent.glob(".fig.*"))  # no temporary file left behind


@requires_mri
@pytest.mark.slow
def test_project_command_on_offline_defaults(tmp_path):
    """The project command with weights auto, offline, in a subprocess, as a user runs it: the unit is
    named in map units and pixels, and the figure is not a uniform gray panel."""
    import numpy as np

    out = tmp_path / "astronaut.png"
    r = subprocess.run(
        [sys.executable, "-m", "deconvnet", "project", "astronaut", "--layer", "conv3_3", "--channel", "5", "--out",
         str(out)],
        capture_output=True, text=True, env={"DECONVNET_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "weights: mri" in r.stdout and "offline weights 'mri'" in r.stderr
    assert "of the 56x56 map, receptive field rows" in r.stdout and "(40 px)" in r.stdout
    im = np.asarray(Image.open(out).convert("L"), dtype=float)
    assert im.shape[1] > 1200  # four panels: image, projection, and both zoomed to the receptive field
    # the zoomed projection (right quarter) has contrast: not the near-uniform gray of a faint display
    right = im[im.shape[0] // 5 : -im.shape[0] // 5, -im.shape[1] // 4 + 20 : -20]
    assert right.std() > 25  # measured: 31 (the old symmetric default: 17)


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
        (["project", "astronaut", "--arch", "resnet51"], "unknown arch 'resnet51'; did you mean resnet50"),
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
    code, _, err = run(["project", "astronaut", "--weights", "random", "--out", str(tmp_path / "x.gif")], capsys)
    assert code == 2 and "must end in .png, .jpg, .jpeg, .pdf, .svg" in err  # .jpg is accepted (issue 12)


def test_show_draws_on_given_axes(vgg16):
    import numpy as np

    x = images((2, 3, 64, 64))
    p = dn.Deconvnet(vgg16).project(x, "conv4_1", 3)
    fig, axes = plt.subplots(1, 3)
    assert dn.show(p, index=1, axes=axes[1:], scaling="symmetric") is fig  # two axes: no zoom panels
    assert len(axes[1].images) == 1 and len(axes[2].images) == 1 and not axes[0].images
    shown = axes[2].images[0].get_array()
    ref = p.projection_rgb()[1].permute(1, 2, 0).double().numpy()
    assert abs(shown - (0.5 + ref / (2 * abs(ref).max()))).max() < 1e-12  # symmetric: zero is gray, max|v| at 0 or 1
    assert "conv4_1 channel 3" in fig._suptitle.get_text() and "of the 8x8 map" in fig._suptitle.get_text()
    plt.close(fig)
    fig = dn.show(p)  # the default: the receptive field outlined, and zoomed
    assert len(fig.axes) == 4 and "random" in fig._supxlabel.get_text() and "percentile" in fig._supxlabel.get_text()
    top, left, bottom, right = p.box[0].tolist()
    for ax in fig.axes[:2]:
        (_rect_under, rect), = [ax.patches[:2]]
        assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (left - 0.5, top - 0.5,
                                                                                     right - left, bottom - top)
    zoomed = fig.axes[3].images[0].get_array()
    assert zoomed.shape[:2] == (bottom - top, right - left)
    whole = np.asarray(fig.axes[1].images[0].get_array())
    # one scale for the whole projection and its zoom: the zeros outside the box do not change it
    t0, l0 = max(top, 0), max(left, 0)
    inner = whole[t0 : min(bottom, 64), l0 : min(right, 64)]
    np.testing.assert_allclose(np.asarray(zoomed)[t0 - top : t0 - top + inner.shape[0],
                                                  l0 - left : l0 - left + inner.shape[1]], inner)
    plt.close(fig)
    q = dn.Deconvnet(vgg16).project(x, "conv4_1", 3, "all")  # a whole map has no single box: two panels
    fig = dn.show(q)
    assert q.box is None and len(fig.axes) == 2
    plt.close(fig)


def test_percentile_scaling_ignores_the_zeros_outside_the_support():
    import torch

    from deconvnet.plot import scale_for_display

    g = torch.Generator().manual_seed(0)
    small = torch.randn(3, 5, 5, generator=g)
    big = torch.zeros(3, 200, 200)
    big[:, 50:55, 60:65] = small
    # the 5x5 support is 0.06% of the image: a percentile over all pixels would be 0 and draw it gray
    np.testing.assert_allclose(scale_for_display(big)[50:55, 60:65], scale_for_display(small))
    a = np.abs(small.double().numpy()).ravel()
    m = np.percentile(a, 99)
    np.testing.assert_allclose(scale_for_display(small),
                               np.clip(0.5 + small.double().permute(1, 2, 0).numpy() / (2 * m), 0, 1))
    assert (scale_for_display(torch.zeros(3, 4, 4)) == 0.5).all()


def test_projection_box_is_the_receptive_field(vgg16):
    from deconvnet.engine import receptive_field

    x = images((2, 3, 96, 96), seed=3)
    deconv = dn.Deconvnet(vgg16)
    for layer, pos in (("relu3_3", "max"), ("pool4", (1, 2)), ("conv2_2", (0, 47))):
        p = deconv.project(x, layer, 7, pos)
        rf = receptive_field(vgg16, layer)
        assert p.box.tolist() == [list(rf.box(*rc)) for rc in p.position.tolist()]
        # the projection lies inside its box
        for b in range(2):
            top, left, bottom, right = p.box[b].tolist()
            outside = p.projection[b].abs().sum(0).clone()
            outside[max(top, 0) : bottom, max(left, 0) : right] = 0
            assert float(outside.abs().max()) == 0.0
    assert deconv.project(x, "fc7", 5).box is None and deconv.project(x, "relu3_3", 7, "all").box is None


@pytest.mark.slow
def test_figures_script_other_kinds(tmp_path, capsys):
    """--only wires the resolution study and the analyses into the script (quick settings)."""
    code = main(["figures", "--weights", "random", "--only", "resolution,filters,occlusion", "--quick", "--quiet",
                 "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    for name in ("resolution_comparison.csv", "resolution_checkerboard.png", "filters.png", "occlusion.png",
                 "occlusion.json"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    assert oct((tmp_path / "filters.png").stat().st_mode & 0o777) != "0o600"  # ordinary permissions
    assert "timings:" in out


def test_help_and_argument_errors_import_no_torch():
    """``--help`` and a mistyped option come back before torch, torchvision, captum or matplotlib are imported
    (benchmarks/bench_cli_startup.py times them against ``python -c "import torch"``)."""
    heavy = ("torch", "torchvision", "captum", "matplotlib")
    probe = ("import sys, runpy; sys.argv = ['deconvnet', *{args!r}]\n"
             "try:\n    runpy.run_module('deconvnet', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('LOADED', [m for m in {heavy!r} if m in sys.modules], 'CODE', code)")
    for args, code in ((["--help"], 0), (["figures", "--help"], 0), (["project", "x", "--layers", "a", "--out",
                                                                      "a.png"], 2)):
        r = subprocess.run([sys.executable, "-c", probe.format(args=args, heavy=heavy)], capture_output=True, text=True,
                           timeout=120)
        assert f"LOADED [] CODE {code}" in r.stdout, (args, r.stdout[-300:], r.stderr[-300:])
    r = subprocess.run([sys.executable, "-m", "deconvnet", "project", "x", "--layers", "a", "--out", "a.png"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "did you mean --layer?" in r.stderr and "usage: python -m deconvnet" not in r.stderr


def test_usage_names_the_program_as_it_was_run(monkeypatch):
    from deconvnet.cli import build_parser

    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/deconvnet", "--help"])
    assert build_parser().format_usage().startswith("usage: deconvnet ")
    monkeypatch.setattr(sys, "argv", ["/x/deconvnet/__main__.py", "--help"])
    assert build_parser().format_usage().startswith("usage: python -m deconvnet ")


def test_the_names_the_cli_knows_without_torch_are_the_packages():
    from deconvnet.cli import PHOTO_EXAMPLES, common
    from deconvnet.images import BUNDLED_PHOTOS
    from deconvnet.models import ARCH_NAMES

    assert common.ARCH_NAMES == ARCH_NAMES and set(PHOTO_EXAMPLES) <= set(BUNDLED_PHOTOS)


@pytest.mark.slow
def test_the_figure_script_writes_the_same_bytes_twice(tmp_path):
    """Two runs of the figure script on a small setting, each with a fresh cache (the demo CNN trained anew,
    the scans made anew): every figure and sidecar is byte-identical, so a rerun of the main job leaves a
    clone's figures/ unchanged."""
    import os

    outs, runs = [], []
    for run_ in ("one", "two"):  # the two runs at once (independent processes, caches and folders): half the wait
        out = tmp_path / run_
        env = dict(os.environ, DECONVNET_CACHE=str(tmp_path / f"cache-{run_}"))
        runs.append(subprocess.Popen([sys.executable, "-m", "deconvnet", "figures", "--arch", "vgg11", "--weights",
                                      "random", "--only", "top9,methods,evolution", "--quick", "--limit", "6",
                                      "--layers", "conv2_1", "--features", "2", "--k", "2", "--resize", "40", "--crop",
                                      "32", "--quiet", "--out", str(out)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        outs.append(out)
    try:
        done = [(r, r.communicate(timeout=900)[1]) for r in runs]
    finally:
        for r in runs:
            r.kill()  # a no-op on a process that ended
    for r, stderr in done:
        assert r.returncode == 0, stderr[-2000:]
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file() and "scans" not in p.parts)
    assert {f.suffix for f in files} >= {".png", ".json"} and len(files) >= 5
    differ = [str(f) for f in files if (outs[0] / f).read_bytes() != (outs[1] / f).read_bytes()]
    assert not differ, differ


def test_all_figures_are_every_kind_but_the_slow_synthesis():
    from deconvnet.cli import DEFAULT_KINDS, FIGURE_KINDS

    assert "synthesis" in FIGURE_KINDS and "synthesis" not in DEFAULT_KINDS
    assert set(DEFAULT_KINDS) == set(FIGURE_KINDS) - {"synthesis"}
