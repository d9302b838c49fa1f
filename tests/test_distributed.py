"""Scale-out on torch.distributed: 2 CPU processes (gloo, under torchrun) give what one process gives.

Every multi-process run is a subprocess of ``python -m torch.distributed.run --standalone`` on the CPU; the
one-process references run as subprocesses too, with the same one thread per process (``OMP_NUM_THREADS=1``,
what torchrun gives each of its processes), so that the forwards are bitwise alike.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deconvnet as dn
from deconvnet import distributed
from deconvnet.atlas.stats import ExactSum
from deconvnet.data import demo_collection
from deconvnet.scan import StaleScanWarning, scan_top_k

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", DECONVNET_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


def run(args: list[str], nproc: int | None, cwd: Path, timeout: int = 300,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``args`` (a script and its arguments, or ``-m deconvnet ...``) in ``nproc`` processes under torchrun,
    or in one plain process (``nproc=None``), with ``env`` added to the environment."""
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run([sys.executable, *launcher, *args], cwd=cwd, env=dict(_env(), **(env or {})),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """24 small distinct images, two of them identical (ties broken by the lower index), in subfolders."""
    root = tmp_path_factory.mktemp("images")
    g = np.random.default_rng(7)
    for i in range(24):
        a = g.integers(0, 256, (40, 52, 3), dtype=np.uint8)
        if i == 17:
            a = np.asarray(Image.open(root / "a" / "img02.png"))
        (root / "ab"[i % 2]).mkdir(exist_ok=True)
        Image.fromarray(a).save(root / "ab"[i % 2] / f"img{i:02d}.png")
    return root


def tree(out: Path) -> dict[str, bytes]:
    """Every file of an output folder but scans/ (working data) and the records of the run itself: the
    scan date, how many processes built it (the provenance, which must differ), and whether the scan was
    stored in the shared scan cache (one process only: under torchrun the ranks scan)."""
    files = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if not p.is_file() or rel.parts[0] == "scans":
            continue
        content = p.read_bytes()
        if p.suffix == ".html":
            content = re.sub(rb'<time datetime="[^"]*">[^<]*</time>', b"<time></time>", content)
            content = re.sub(rb"<dt>Built by</dt>\s*<dd>[^<]*</dd>", b"", content)
        if p.suffix == ".json":
            meta = json.loads(content)
            for d in (meta, meta.get("provenance", {})):
                for key in ("date", "processes", "backend", "built_by", "cache"):
                    d.pop(key, None)
            content = json.dumps(meta, sort_keys=True).encode()
        files[rel.as_posix()] = content
    return files


# --- the pieces, in one process -------------------------------------------------------------------------

def test_one_process_is_rank_0_of_1():
    assert distributed.world() == (0, 1) and distributed.is_main() and distributed.backend() is None
    assert distributed.shard(range(10)) == range(10)
    assert distributed.all_gather({"a": 1}) == [{"a": 1}]
    assert distributed.on_main(lambda x: x + 1, 1) == 2
    assert distributed.rank_path("s/scan.pt") == Path("s/scan.pt")


def test_exact_sums_do_not_depend_on_the_order():
    """Against Python's exactly rounded ``math.fsum``, in any order and split in any shares."""
    import math

    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 4, generator=g, dtype=torch.float64) * torch.tensor([1e-30, 1.0, 1e12, 1e200],
                                                                             dtype=torch.float64)
    x[5] = x[6].neg()  # cancellation
    whole = ExactSum.zeros(4)
    ExactSum.add(whole, x)
    parts = [ExactSum.zeros(4) for _ in range(3)]
    perm = torch.randperm(300, generator=g)
    for n, rows in enumerate(perm.chunk(3)):
        ExactSum.add(parts[n], x[rows])
    merged = ExactSum.merge(ExactSum.merge(parts[2], parts[0]), parts[1])
    expected = torch.tensor([math.fsum(x[:, c].tolist()) for c in range(4)], dtype=torch.float64)
    assert torch.equal(ExactSum.value(whole), expected) and torch.equal(ExactSum.value(merged), expected)


def test_another_number_of_processes_starts_over_in_one_line(tmp_path):
    net = dn.load_vgg("vgg11", "random", seed=3)
    data = demo_collection(preprocessing=net.preprocessing, size=32, n=6)
    ckpt = tmp_path / "scan.pt"
    (tmp_path / "scan.rank1-of-2.pt").write_bytes(b"from a run of 2 processes")
    with pytest.warns(StaleScanWarning) as caught:
        topk = scan_top_k(net, data, ["conv2_1"], k=3, checkpoint=ckpt, progress=False)
    (message,) = [str(w.message) for w in caught]
    assert "\n" not in message and "2 process(es)" in message and "this run has 1" in message \
        and "starts over" in message
    assert ckpt.is_file() and topk.provenance["processes"] == 1 and topk.provenance["backend"] is None


# --- 2 processes against 1 ------------------------------------------------------------------------------

#: counts every PIL.Image.open of the process it runs in (the header checks and the image reads)
COUNT_OPENS = r"""
opens = []
_open = PIL.Image.open
def counted(fp, *a, **k):
    opens.append(str(fp))
    return _open(fp, *a, **k)
PIL.Image.open = counted
"""

#: the killed-rank test's atlas: built last by ``RUNS_SCRIPT`` (in one process the reference, in 2 ranks the
#: killed run) and by ``KILL_SCRIPT`` (the resumed run)
DYING_ATLAS = r"""
import os, signal
from pathlib import Path
import deconvnet as dn
from deconvnet.atlas import build_atlas
from deconvnet.data import ImageFolder

class Dying(ImageFolder):
    '''Rank 1 is killed (SIGKILL: nothing of its own is saved then) at its 7th image, on the first run only.'''
    reads = 0
    def __init__(self, marker, *a, **k):
        super().__init__(*a, **k)
        self.marker = Path(marker)
    def __getitem__(self, i):
        if os.environ.get("RANK") == "1":
            Dying.reads += 1
            if Dying.reads == 7 and not self.marker.exists():
                self.marker.write_text("killed")
                os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(i)

def dying_atlas(out, marker, folder, net=None):
    net = net or dn.load_vgg("vgg11", "random", seed=3)
    data = Dying(marker, folder, preprocessing=net.preprocessing, resize=40, crop=40)
    build_atlas(net, data, ["conv2_1"], out, features=4, k=4, batch_size=2, image_format="png", progress=False,
                cache=False)  # scanned, not found in a cache the reference run filled: the kill lands in the scan
"""

#: The checks of the Python API, in one script that runs once in one process and once in 2 ranks (the
#: ``runs`` fixture; each launch costs seconds): the header checks first (the opens counted are theirs
#: alone), the scan and statistics, in 2 ranks three scans whose ranks disagree, one after the other in the
#: same process group; one file of results per rank (ranks' stdout interleaves). Last the killed-rank test's
#: atlas: one process builds its reference, and in 2 ranks rank 1 dies in its scan, ending the launch.
RUNS_SCRIPT = r"""
import os, sys, warnings
import PIL.Image
""" + COUNT_OPENS + DYING_ATLAS + r"""
import torch, torch.distributed as dist
import deconvnet as dn
from deconvnet.atlas import channel_stats
from deconvnet.data import ImageFolder, demo_collection
from deconvnet.scan import scan_top_k

out, headers, folder, atlas, *agree_folders = sys.argv[1:]
if "RANK" in os.environ:
    dist.init_process_group("gloo")  # the few lines a script of one's own adds
rank = dist.get_rank() if dist.is_initialized() else 0
said = {}

net = dn.load_vgg("vgg11", "random", seed=3)  # loaded once (seconds): every part below but one uses it
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ds = ImageFolder(headers, preprocessing=net.preprocessing)
said["headers"] = {"opens": len(opens), "paths": [str(p) for p in ds.paths],
                   "skipped": {str(k): v for k, v in ds.skipped.items()}, "warned": [str(w.message) for w in caught]}

data = demo_collection(preprocessing=net.preprocessing, size=40, n=34)  # 17 photos: groups span the ranks
api = {}
for per_group in (1, 2, None):
    topk = scan_top_k(net, data, ["conv2_1", "conv3_1"], k=6, per_group=per_group, batch_size=4, progress=False)
    api[str(per_group)] = (topk.values, topk.images, topk.positions, topk.provenance["processes"])
stats = channel_stats(net, data, {"conv3_1": topk.values["conv3_1"][:, 0]}, bins=8, batch_size=4, progress=False)
api["stats"] = dict(stats["conv3_1"].__dict__)
said["api"] = api

if dist.is_initialized():
    said["disagree"] = {}
    for case in ("weights", "layers", "data"):
        other = dn.load_vgg("vgg11", "random", seed=4) if case == "weights" and rank == 1 else net
        layers = ["conv2_1"] if rank == 0 or case != "layers" else ["conv3_1"]
        data = ImageFolder(agree_folders[rank if case == "data" else 0], preprocessing=net.preprocessing, resize=32,
                           crop=32)
        try:
            scan_top_k(other, data, layers, k=2, batch_size=2, progress=False, cache=False)
            said["disagree"][case] = "no error"
        except ValueError as err:
            said["disagree"][case] = str(err)
    ranks = [None, None]
    dist.all_gather_object(ranks, rank)  # the group is still usable after the refusals
    said["group"] = ranks
torch.save(said, f"{out}.{rank}")
dying_atlas(atlas, atlas + ".killed", folder, net)
if dist.is_initialized():
    dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def runs(folder, tmp_path_factory) -> dict:
    """``RUNS_SCRIPT`` in one process and in 2 ranks: each rank's results (``one``: [rank 0's], ``two``: [rank
    0's, rank 1's]), the folder whose headers it checks, the one-process atlas (``ref``), and the killed
    launch of 2 ranks (``killed``) with its atlas folder (``atlas``)."""
    tmp = tmp_path_factory.mktemp("runs")
    headers = tmp / "images"
    g = np.random.default_rng(3)
    for i in range(40):
        (headers / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(headers / "ab"[i % 2] / f"img{i:02d}.png")
    (headers / "a" / "broken.jpg").write_bytes(b"not an image")  # refused by its header, on whichever rank checks it
    # folders whose files have the same names, sizes and times but other bytes
    g = np.random.default_rng(5)
    agree_folders = [tmp / "a" / "imgs", tmp / "b" / "imgs"]
    for root in agree_folders:
        root.mkdir(parents=True)
        for i in range(4):
            path = root / f"img{i}.bmp"  # BMP: the same size in bytes whatever the pixels
            Image.fromarray(g.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(path)
            os.utime(path, (1_700_000_000, 1_700_000_000))
    script = tmp / "runs.py"
    script.write_text(RUNS_SCRIPT)
    env = {"DECONVNET_CACHE": str(tmp / "cache")}  # set up before conftest gives each test a cache of its own
    said, done = {}, {}
    for name, nproc, atlas in (("one", None, "ref"), ("two", 2, "atlas")):
        done[name] = run([str(script), str(tmp / name), str(headers), str(folder), str(tmp / atlas),
                          *map(str, agree_folders)], nproc, tmp, env=env)
        results = [Path(f"{tmp / name}.{r}") for r in range(nproc or 1)]
        assert all(path.is_file() for path in results), done[name].stderr[-3000:]
        said[name] = [torch.load(path) for path in results]
    assert done["one"].returncode == 0, done["one"].stderr[-3000:]  # the 2 ranks' launch ends killed
    return dict(said, headers=headers, ref=tmp / "ref", killed=done["two"], atlas=tmp / "atlas")


@pytest.mark.slow
def test_scan_and_statistics_in_two_processes_equal_one(runs):
    """scan_top_k and channel_stats inside a process group: the same values, images, positions and ties
    (per-group limits whose groups span the ranks), and the same statistics bit for bit."""
    a, b = runs["one"][0]["api"], runs["two"][0]["api"]
    for per_group in ("1", "2", "None"):
        (va, ia, pa, na), (vb, ib, pb, nb) = a[per_group], b[per_group]
        assert (na, nb) == (1, 2)
        for layer in va:
            assert torch.equal(va[layer], vb[layer]) and torch.equal(ia[layer], ib[layer]), (per_group, layer)
            assert torch.equal(pa[layer], pb[layer]), (per_group, layer)
    for key, value in a["stats"].items():
        other = b["stats"][key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key


@pytest.mark.slow  # reads the runs fixture's torchrun launch
def test_ranks_that_disagree_are_refused_before_any_work_naming_what_differs(runs):
    """Ranks with other weights, other layers, or other folders whose files have the same names, sizes and
    times but other bytes: one line on every rank, naming what differs (was: merged without a word, or a raw
    KeyError). The three scans run one after the other in one launch (``RUNS_SCRIPT``), and the process group
    is still usable after them."""
    for case, part in (("weights", "the weights"), ("layers", "the layers"), ("data", "the data")):
        said = [runs["two"][r]["disagree"][case] for r in (0, 1)]
        assert said[0] == said[1], said  # every rank refuses alike
        assert "\n" not in said[0] and "disagree before the scan" in said[0] and f"{part}" in said[0], said[0]
        assert "on rank 1" in said[0] and "Hint:" in said[0]
    assert [runs["two"][r]["group"] for r in (0, 1)] == [[0, 1], [0, 1]]


@pytest.mark.slow  # reads the runs fixture's torchrun launch
def test_two_ranks_open_the_headers_once_in_all(runs):
    root, (one,), two = runs["headers"], runs["one"], runs["two"]
    one, two = one["headers"], [r["headers"] for r in two]
    assert len(two) == 2 and one["opens"] == 41
    assert sum(r["opens"] for r in two) <= 1.1 * one["opens"]  # each rank its share (20 and 21 here)
    for r in two:  # the same files kept and left out, and the same warning, on every rank
        assert r["paths"] == one["paths"] and len(r["paths"]) == 40
        assert r["skipped"] == one["skipped"] and list(r["skipped"]) == [str(root / "a" / "broken.jpg")]
        assert r["warned"] == one["warned"]


COUNT_CLI = r"""
import json, os, sys
import PIL.Image
""" + COUNT_OPENS + r"""

from deconvnet.cli import main
try:
    main(sys.argv[2:])
finally:  # one file per rank: ranks' stdout interleaves
    open(f"{sys.argv[1]}.{os.environ.get('RANK', '0')}", "w").write(json.dumps(len(opens)))
"""


@pytest.mark.slow
def test_figures_then_atlas_commands_in_two_processes_equal_one_opening_the_images_once_in_all(folder, tmp_path):
    """figures, then atlas on the same folder (the atlas finds the figures' scan in the scan cache), in one
    process and in 2 ranks, each count with a cache of its own (the ranks scan): the same figures and atlas,
    their provenance naming the 2 processes, and 2 ranks open the images at most 1.1 times what one process
    opens, in each command (was 1.3 times for the atlas: under torchrun the cache was not read, so the ranks
    scanned again). That each rank keeps its own scan checkpoint is asserted in the killed-rank test (this
    atlas scans nothing)."""
    script = tmp_path / "count_cli.py"
    script.write_text(COUNT_CLI)
    common = ["--arch", "vgg11", "--weights", "random", "--data", str(folder), "--resize", "40", "--crop", "40", "--k",
              "4", "--batch-size", "5", "--quiet"]
    opened = {}
    for name, nproc in (("one", None), ("two", 2)):
        env = {"DECONVNET_CACHE": str(tmp_path / name / "cache")}
        for command, extra in (("figures", ["--only", "top9", "--layers", "conv2_1,conv3_1", "--features", "3"]),
                               ("atlas", ["--layers", "conv3_1", "--features", "5", "--format", "png"])):
            out = tmp_path / name / command
            proc = run([str(script), str(out), command, *extra, *common, "--out", str(out)], nproc, tmp_path, env=env)
            assert proc.returncode == 0, proc.stderr[-3000:]
            opened[name, command] = sum(json.loads(Path(f"{out}.{r}").read_text()) for r in range(nproc or 1))
            if command == "atlas":
                assert proc.stdout.count("open ") == 1  # rank 0 alone reports
    for command in ("figures", "atlas"):
        assert opened["two", command] <= 1.1 * opened["one", command], opened
        one, two = tree(tmp_path / "one" / command), tree(tmp_path / "two" / command)
        assert sorted(one) == sorted(two) and len(one) > 3
        assert [name for name in one if one[name] != two[name]] == []
    sidecar = json.loads((tmp_path / "two" / "figures" / "top4_vgg11_conv3_1.png.json").read_text())
    assert sidecar["provenance"]["processes"] == 2 and sidecar["provenance"]["backend"] == "gloo"
    assert json.loads((tmp_path / "two" / "atlas" / "atlas.json").read_text())["built_by"] == {"processes": 2,
                                                                                               "backend": "gloo"}
    assert "2 process(es), torch.distributed gloo" in (tmp_path / "two" / "atlas" / "index.html").read_text()


KILL_SCRIPT = DYING_ATLAS + r"""
import sys
import torch.distributed as dist

if "RANK" in os.environ:
    dist.init_process_group("gloo")
dying_atlas(*sys.argv[1:4])
if dist.is_initialized():
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_killed_rank_resumes_to_the_same_atlas(folder, runs, tmp_path):
    """Rank 1 killed in the scan: torchrun stops rank 0 (SIGTERM), the rerun resumes from both ranks'
    checkpoints and builds the atlas one process builds. The killed launch and the one-process reference are
    those of ``RUNS_SCRIPT`` (the ``runs`` fixture), whose last part is this atlas. Each rank keeps its own
    scan checkpoint (was asserted by the figures and atlas test)."""
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    first, out = runs["killed"], runs["atlas"]
    marker = Path(f"{out}.killed")
    assert first.returncode != 0 and marker.is_file()
    # a SIGKILL saves nothing of rank 1's share; rank 0 saved its own (at the end of its share, or on
    # torchrun's SIGTERM), and no page was written
    assert list((out / "scans").glob("scan-*.rank0-of-2.pt"))
    assert not (out / "index.html").exists()
    second = run([str(script), str(out), str(marker), str(folder)], 2, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(list((out / "scans").glob("scan-*.rank*-of-2.pt"))) == 2  # each rank kept its own
    one, two = tree(runs["ref"]), tree(out)
    assert sorted(one) == sorted(two) and [name for name in one if one[name] != two[name]] == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU scan runs where one is")
def test_scan_on_cuda_equals_the_cpu():
    """The scan and the cropped walk on the GPU: the same images and positions as on the CPU (values to
    float32 round-off: other kernels)."""
    cpu = dn.load_vgg("vgg11", "random", seed=3)
    gpu = dn.load_vgg("vgg11", "random", seed=3, device="cuda")
    data = demo_collection(preprocessing=cpu.preprocessing, size=64, n=20)
    a = scan_top_k(cpu, data, ["conv3_1"], k=4, progress=False)
    b = scan_top_k(gpu, data, ["conv3_1"], k=4, progress=False)
    assert torch.allclose(a.values["conv3_1"], b.values["conv3_1"], rtol=1e-4, atol=1e-5)
    same = (a.images["conv3_1"] == b.images["conv3_1"]).float().mean()
    assert same > 0.95  # near-ties may swap under other kernels' round-off
    x = torch.stack([data[i][0] for i in range(4)])
    wa = dn.Deconvnet(cpu).project_units(x, "conv3_1", torch.arange(4), torch.tensor([0, 1, 2, 3]),
                                         torch.tensor([[3, 3]] * 4))
    wb = dn.Deconvnet(gpu).project_units(x, "conv3_1", torch.arange(4), torch.tensor([0, 1, 2, 3]),
                                         torch.tensor([[3, 3]] * 4))
    assert torch.allclose(wa.windows, wb.windows.cpu(), rtol=1e-3, atol=1e-5)
