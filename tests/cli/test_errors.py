"""The command line's errors: one line naming the value and the fix, exit status 2 (or the signal's), no traceback;
what it writes, and where."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deconvnet.cli import main
from deconvnet.data import ImageFolder, load_dataset
from deconvnet.preprocessing import TORCHVISION
from deconvnet.scan import Terminated

from conftest import photo_folder

FAST = ["--arch", "vgg11", "--weights", "random", "--crop", "32", "--resize", "32", "--layers", "conv2_1",
        "--features", "1", "--k", "2", "--quiet", "--only", "top9"]


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("deconvnet: error:") and "Traceback" not in err, err
    return lines[0]




def test_a_folder_named_demo_is_a_folder(tmp_path, monkeypatch, capsys):
    photo_folder(tmp_path / "demo", n=3)
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("demo", preprocessing=TORCHVISION, resize=32, crop=32)
    assert isinstance(ds, ImageFolder) and len(ds) == 3
    code, out, err = run(["figures", "--data", "demo", "--out", str(tmp_path / "out")] + FAST, capsys)
    assert code == 0, err
    assert "3 images from 'demo'" in out


@pytest.mark.slow
def test_cli_rescans_after_an_image_changed(tmp_path, capsys):
    root = photo_folder(tmp_path / "imgs")
    args = ["figures", "--data", str(root), "--out", str(tmp_path / "out")] + FAST
    assert run(args, capsys)[0] == 0
    Image.fromarray(np.full((40, 40, 3), 250, np.uint8)).save(root / "1.png")
    code, _, err = run(args, capsys)
    assert code == 0 and "changed since the scan" in err and "scanning again" in err


def test_cli_absurd_size_is_one_line(tmp_path, capsys):
    code, _, err = run(["project", "astronaut", "--weights", "random", "--size", "100000", "--out",
                        str(tmp_path / "x.png")], capsys)
    assert code == 2 and "needs about" in one_error_line(err)


@pytest.mark.parametrize("command", ["project", "figures"])
def test_output_location_problems_are_one_line(command, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "a_folder.png").mkdir()
    if command == "project":
        cases = [(tmp_path / "a_folder.png", "is a folder; give a file name"),
                 (a_file / "x.png", "is a file, not a folder"),
                 ("/proc/deconvnet_test/x.png", "cannot be written")]
        for out, message in cases:
            code, out_text, err = run(["project", "astronaut", "--weights", "random", "--size", "32", "--out",
                                       str(out)], capsys)
            assert code == 2 and message in one_error_line(err), (out, err)
    else:
        for out, message in [(a_file, "is a file, not a folder"), ("/proc/deconvnet_test", "cannot be written")]:
            code, out_text, err = run(["figures", "--out", str(out)] + FAST, capsys)
            assert code == 2 and message in one_error_line(err), (out, err)
            assert "data:" not in out_text  # refused before loading data or scanning


def test_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import deconvnet.plot as plot

    def full(fig, path, dpi=150):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(plot, "save_figure", full)
    code, _, err = run(["project", "astronaut", "--weights", "random", "--size", "32", "--out",
                        str(tmp_path / "x.png")], capsys)
    line = one_error_line(err)
    assert code == 2 and "No space left on device" in line and "x.png" in line


def test_cli_exit_status_of_sigterm(monkeypatch, tmp_path, capsys):
    import deconvnet.cli as cli

    def terminated(args):
        err = Terminated("terminated (SIGTERM)")
        err.saved = True
        raise err

    monkeypatch.setattr(cli, "cmd_figures", terminated)
    code, _, err = run(["figures", "--out", str(tmp_path)], capsys)
    assert code == 143 and "progress is saved" in err


def test_figures_that_cannot_be_made_exit_non_zero(tmp_path, capsys):
    root = photo_folder(tmp_path / "few", n=3)
    args = ["figures", "--data", str(root), "--out", str(tmp_path / "o1")] + FAST
    args[args.index("--k") + 1] = "9"
    code, _, err = run(args, capsys)
    assert code == 2 and "k=9 entries per channel cannot come from 3 images" in one_error_line(err)
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):  # headers fine, pixels truncated: found only while loading
        data = (root / f"{i}.png").read_bytes()
        (bad / f"{i}.png").write_bytes(data[: len(data) // 2])
    code, _, err = run(["figures", "--data", str(bad), "--out", str(tmp_path / "o2")] + FAST, capsys)
    assert code == 2 and "none of the 3 images could be decoded" in one_error_line(err)


def test_sidecars_are_named_after_their_figure(tmp_path, capsys):
    import hashlib

    out = tmp_path / "out"
    for fmt in ("png", "svg"):
        code, _, err = run(["figures", "--out", str(out), "--limit", "20", "--format", fmt] + FAST, capsys)
        assert code == 0, err
    for fmt in ("png", "svg"):
        figure = out / f"top2_vgg11_conv2_1.{fmt}"
        meta = json.loads((out / f"top2_vgg11_conv2_1.{fmt}.json").read_text())
        assert meta["figure"] == figure.name
        assert meta["figure_sha256"] == hashlib.sha256(figure.read_bytes()).hexdigest()


@pytest.mark.parametrize("args, message", [
    (["project", "astronaut", "--device", "meta"], "need a device that computes (cpu, cuda or mps), not meta"),
    (["figures", "--device", "meta"], "need a device that computes"),
])
def test_meta_device_is_one_line(args, message, tmp_path, capsys):
    args = args + (["--out", str(tmp_path / "x.png"), "--weights",
                    "random"] if args[0] == "project" else ["--out", str(tmp_path)])
    code, _, err = run(args, capsys)
    assert code == 2 and message in one_error_line(err)


def test_a_folder_given_as_image(tmp_path, capsys):
    code, _, err = run(["project", str(tmp_path), "--weights", "random", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "is a folder, not an image file" in one_error_line(err)


def test_repeated_layers_are_drawn_once(tmp_path, capsys):
    args = ["figures", "--out", str(tmp_path), "--limit", "20"] + FAST
    args[args.index("--layers") + 1] = "conv2_1,conv2_1"
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert out.count("wrote ") == 2  # one figure and its sidecar


@pytest.mark.slow
def test_resolution_figures_follow_format(tmp_path, capsys):
    code, out, err = run(["figures", "--weights", "random", "--only", "resolution", "--quick", "--quiet", "--format",
                          "svg",
                          "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.glob("*.svg")) and not list(tmp_path.glob("*.png"))


def test_sidecars_hold_no_absolute_paths(tmp_path, capsys):
    """Figures' sidecars travel between machines: weights and data are named, not located."""
    root = photo_folder(tmp_path / "imgs")
    code, _, err = run(["figures", "--data", str(root), "--out", str(tmp_path / "out")] + FAST, capsys)
    assert code == 0, err
    (sidecar,) = (tmp_path / "out").glob("*.json")
    text = sidecar.read_text()

    def strings(v):
        if isinstance(v, dict):
            for x in v.values():
                yield from strings(x)
        elif isinstance(v, list):
            for x in v:
                yield from strings(x)
        elif isinstance(v, str):
            yield v

    assert not [s for s in strings(json.loads(text)) if s.startswith("/")]
    assert str(tmp_path) not in text


def run_cli(args, limit_kb=16_000_000):
    """The command in a fresh process under an address-space limit (``ulimit -v``)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_kb * 1024, limit_kb * 1024))

    env = dict(os.environ, DECONVNET_OFFLINE="1", PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, "-m", "deconvnet", *args], capture_output=True, text=True, env=env,
                          preexec_fn=limit, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["layers", "--arch", "resnet18", "--size", "100000"],
    ["layers", "--arch", "vgg16", "--size", "30000"],
    ["figures", "--arch", "vgg11", "--weights", "random", "--resize", "30000", "--crop", "30000", "--only", "top9"],
    ["atlas", "--arch", "vgg11", "--weights", "random", "--resize", "30000", "--crop", "30000"],
])
def test_absurd_sizes_are_one_line_and_exit_2(args, tmp_path):
    if args[0] in ("figures", "atlas"):
        args = [*args, "--out", str(tmp_path / "out")]
    done = run_cli(args)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deconvnet: error: ") and "needs about" in lines[0], lines


# --- 12. boxes files of the wrong shape -----------------------------------------------------------------------------
_GOOD = [10, 10, 20, 20]


@pytest.mark.parametrize("second, names", [
    ([1, 2, 3, 4], "the entry of image 'b.png' is a list, not an object"),
    (None, "the entry of image 'b.png' is a NoneType, not an object"),
    ("nose", "the entry of image 'b.png' is a str, not an object"),
    ({"nose": [0, 0, int("9" * 400), 5]}, "'b.png' nose: a coordinate is larger than"),
    ({"nose": "10,10,20,20"}, "'b.png' nose: '10,10,20,20' is not a box"),
    ({"nose": None}, "'b.png' nose: None is not a box"),
    ({"nose": [[1, 2], 3, 4, 5]}, "'b.png' nose: [[1, 2], 3, 4, 5] is not a box"),
])
def test_a_boxes_file_of_the_wrong_shape_is_one_line(tmp_path, capsys, second, names):
    from deconvnet.analysis.correspondence import load_parts
    from deconvnet.cli import main

    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"images": {"a.png": {"nose": _GOOD}, "b.png": second}}))
    with pytest.raises(ValueError, match=names.replace("[", r"\[").replace("(", r"\(")) as err:
        load_parts(path)
    assert "\n" not in str(err.value) and "Hint:" in str(err.value) and len(str(err.value)) < 300
    code = main(["correspondence", "--boxes", str(path), "--out", str(tmp_path / "c.png")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and names in lines[0]


@pytest.mark.parametrize("args, message", [
    (["layers", "--size", "0"], "--size 0 must be a positive number of pixels"),
    (["project", "chelsea", "--size", "-1", "--out", "x.png"],
     "--size -1 must be 0 (keep) or a positive number of pixels"),
    (["synthesize", "--steps", "0", "--out", "s"], "--steps 0 must be at least 1"),
    (["synthesize", "--size", "4", "--out", "s"], "--size 4 must be at least 8"),
    (["correspondence", "--draws", "0"], "--draws 0 must be at least 1"),
    (["evolution", "--limit", "0"], "--limit 0 must be at least 1"),
])
def test_counts_below_their_least_are_one_line_naming_the_value(args, message, capsys):
    """The counts go through the package's one positive-integer check; the CLI words the message."""
    code, _, err = run(args, capsys)
    assert code == 2 and one_error_line(err) == f"deconvnet: error: {message}", err
