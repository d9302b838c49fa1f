"""Per-target time of ``Deconvnet(extend=True)`` on convnext_tiny against a loop over Captum's
``NeuronDeconvolution`` (which gives GELU and LayerNorm their plain gradients without a word), one run.

Usage: ``python benchmarks/bench_declared.py [--targets 8] [--size 160]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import deconvnet as dn
from deconvnet.engine import Target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--layer", default="features.5")
    args = ap.parse_args()
    from captum.attr import NeuronDeconvolution

    net = dn.load_model("convnext_tiny", "random")
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    deconv = dn.Deconvnet(net, extend=True)
    deconv.project(x, args.layer, 0)  # the model's check, once
    targets = [Target(args.layer, c, "max") for c in range(args.targets)]
    t = time.perf_counter()
    ps = deconv.project_many(x, targets)
    ours = (time.perf_counter() - t) / len(targets)
    layer = net.model.get_submodule(args.layer)
    nd = NeuronDeconvolution(net.model, layer)
    t = time.perf_counter()
    for p in ps:
        r, c = (int(v) for v in p.position[0])
        nd.attribute(x, neuron_selector=(int(p.channel[0]), r, c))
    captum = (time.perf_counter() - t) / len(targets)
    print(f"convnext_tiny {args.size}px {args.layer}, {len(targets)} targets: extend=True {ours * 1e3:.0f} ms/target, "
          f"Captum NeuronDeconvolution loop {captum * 1e3:.0f} ms/target, ratio {captum / ours:.2f}x; "
          f"declared {ps[0].declared}")


if __name__ == "__main__":
    main()
