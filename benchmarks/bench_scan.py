"""Scan throughput against a plain forward pass over the same batches, measured side by side.

    .venv/bin/python benchmarks/bench_scan.py [--arch vgg16] [--weights hed] [--n 96] [--batch 16]

Prints images/s of (a) a plain ``net.model(x)`` forward over preloaded batches, (b) ``scan_top_k`` over
the same preloaded tensors (all five default layers), alternating (a) and (b) for ``--repeats`` rounds,
and the overhead (b)/(a) - 1. The aim is at most 10%. Data loading is excluded from both.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch.utils.data import Dataset

import deconvnet as dn
from deconvnet.data import demo_collection
from deconvnet.engine import default_layers
from deconvnet.scan import scan_top_k


class Preloaded(Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vgg16")
    ap.add_argument("--weights", default="hed")
    ap.add_argument("--n", type=int, default=96, help="images")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = dn.load_model(args.arch, args.weights, device=args.device)
    ds = demo_collection(preprocessing=net.preprocessing, size=args.size, n=args.n)
    x = torch.stack([ds[i][0] for i in range(len(ds))]).to(args.device)
    layers = default_layers(net)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def plain() -> float:
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(x), args.batch):
                net.model(x[s : s + args.batch])
        sync()
        return time.perf_counter() - t

    def scan() -> float:
        sync()
        t = time.perf_counter()
        scan_top_k(net, Preloaded(x), layers, k=9, batch_size=args.batch, progress=False)
        sync()
        return time.perf_counter() - t

    plain()  # warm-up
    a, b = [], []
    for _ in range(args.repeats):
        a.append(plain())
        b.append(scan())
    ta, tb = statistics.median(a), statistics.median(b)
    print(f"{net.describe()}")
    print(f"device {args.device}, threads {torch.get_num_threads()}, {len(x)} images {args.size}x{args.size}, batch "
          f"{args.batch}, layers {','.join(layers)}")
    print(f"plain forward   {len(x) / ta:8.2f} img/s  (median of {args.repeats}: {ta:.2f}s)")
    print(f"scan_top_k      {len(x) / tb:8.2f} img/s  (median of {args.repeats}: {tb:.2f}s)")
    print(f"scan overhead   {100 * (tb / ta - 1):+.1f}%  (aim: at most +10%)")


if __name__ == "__main__":
    main()
