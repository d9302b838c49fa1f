"""Scale-out: scan throughput with 1 and 2 processes (torchrun, gloo, one thread each), and how long
listing and fingerprinting a folder of 100,000 files takes.

    .venv/bin/python benchmarks/bench_distributed.py [--n 1000] [--size 64] [--arch vgg11] [--files 100000]

1. ``--n`` distinct images of ``--size`` px are written (PNG) into a temporary folder; the same
   ``scan_top_k`` over that ``ImageFolder`` (decoding and resizing included, ``--workers`` per process)
   runs under ``torchrun --nproc_per_node=P`` for P = 1 and 2, with ``OMP_NUM_THREADS=1``. Each rank
   times its scan (the dataset already listed, the model loaded) up to the merged result; images/s is
   ``n`` over the slowest rank's time. Scaling efficiency: (images/s at 2) / (2 x images/s at 1); the aim
   on a machine with 2 free cores is at least 0.8. Both runs must give the same top-k (checked).
2. ``--files`` small image files are written into another folder; printed: the time to list them
   (``deconvnet.data._find_images``), to fingerprint them (paths, sizes, modification times: what a
   checkpoint is checked against), and to build the ``ImageFolder`` (which also opens every header).
   The aim for listing and fingerprinting: under 10 s.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's deconvnet, as the ranks (PYTHONPATH) import it

RANK_SCRIPT = """
import json, os, sys, time, warnings
import torch, torch.distributed as dist
import deconvnet as dn
from deconvnet.data import ImageFolder
from deconvnet.scan import scan_top_k

dist.init_process_group("gloo")
folder, arch, layers, batch, workers, out = sys.argv[1:7]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    net = dn.load_model(arch, "random", seed=0)
data = ImageFolder(folder, preprocessing=net.preprocessing, resize=int(sys.argv[7]), crop=int(sys.argv[7]))
dist.barrier()
t = time.perf_counter()
topk = scan_top_k(net, data, layers.split(","), k=9, batch_size=int(batch), num_workers=int(workers), progress=False)
elapsed = time.perf_counter() - t
times = [None] * dist.get_world_size()
dist.all_gather_object(times, elapsed)
if dist.get_rank() == 0:
    torch.save({"times": times, "threads": torch.get_num_threads(), "values": topk.values, "images": topk.images,
                "positions": topk.positions}, out)
dist.destroy_process_group()
"""


def write_images(folder: Path, n: int, size: int) -> None:
    g = np.random.default_rng(0)
    base = g.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    for i in range(n):
        noise = g.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
        a = ((base.astype(np.int16) + noise) // 2).astype(np.uint8)
        sub = folder / f"class{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).resize((size, size), Image.BILINEAR).save(sub / f"{i:06d}.png")


def run_scan(folder: Path, nproc: int, args, out: Path) -> dict:
    import torch

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), DECONVNET_OFFLINE="1")
    script = out.with_suffix(".py")
    script.write_text(RANK_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script),
           str(folder), args.arch, args.layers, str(args.batch), str(args.workers), str(out), str(args.size)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"torchrun with {nproc} processes failed:\n{r.stderr[-3000:]}")
    return torch.load(out)


def bench_files(n: int, tmp: Path) -> None:
    from deconvnet.data import ImageFolder, _find_images
    from deconvnet.preprocessing import TORCHVISION

    folder = tmp / "many"
    buf = tmp / "one.png"
    Image.new("RGB", (8, 8), (90, 120, 30)).save(buf)
    data = buf.read_bytes()
    t = time.perf_counter()
    for i in range(n):
        sub = folder / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        (sub / f"{i:07d}.png").write_bytes(data)
    print(f"wrote {n} files in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    paths = _find_images(folder)
    t_list = time.perf_counter() - t
    t = time.perf_counter()
    digest = hashlib.sha256()
    for path in paths:
        st = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    t_print = time.perf_counter() - t
    t = time.perf_counter()
    ds = ImageFolder(folder, preprocessing=TORCHVISION, resize=8, crop=8, progress=False)
    t_folder = time.perf_counter() - t
    assert len(paths) == len(ds) == n and ds.files_digest == digest.hexdigest()[:16]
    print(f"{n} files: listing {t_list:.2f} s, fingerprinting (stat of each) {t_print:.2f} s, "
          f"together {t_list + t_print:.2f} s (aim: under 10 s); "
          f"ImageFolder (also opens every header) {t_folder:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--arch", default="vgg11")
    ap.add_argument("--layers", default="conv2_1,conv3_1,conv4_1")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--files", type=int, default=100_000)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}  ({os.cpu_count()} CPUs)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    try:
        folder = tmp / "images"
        t = time.perf_counter()
        write_images(folder, args.n, args.size)
        print(f"wrote {args.n} images of {args.size} px in {time.perf_counter() - t:.1f} s")
        rates, results = {}, {}
        for nproc in (1, 2):
            r = run_scan(folder, nproc, args, tmp / f"scan{nproc}.pt")
            slowest = max(r["times"])
            rates[nproc], results[nproc] = args.n / slowest, r
            print(f"{nproc} process(es), {r['threads']} thread each: {args.n} images ({args.arch} {args.layers}, "
                  f"batch {args.batch}, {args.workers} workers) in {slowest:.1f} s = {rates[nproc]:.1f} images/s "
                  f"(ranks: {', '.join(f'{x:.1f} s' for x in r['times'])})  load {os.getloadavg()[0]:.2f}")
        same = all(torch_equal(results[1][key], results[2][key]) for key in ("values", "images", "positions"))
        print(f"same top-k with 1 and 2 processes: {same}")
        print(f"scaling efficiency at 2 processes: {rates[2] / (2 * rates[1]):.2f} (aim: at least 0.8)")
        if args.files:
            bench_files(args.files, tmp)
        print(f"load average after: {os.getloadavg()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def torch_equal(a: dict, b: dict) -> bool:
    import torch

    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


if __name__ == "__main__":
    main()
