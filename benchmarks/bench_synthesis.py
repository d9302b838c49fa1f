"""Seconds per channel of feature visualisation (``deconvnet.synthesize``) on the CPU, and how a batch of
channels scales: VGG16 conv4_3 at 128 px (lucid's size).

The cost of a step does not depend on the step, so the benchmark times ``--steps`` steps (default 16) and
reports the per-step cost times 256 (the figure script's setting) and 512 (lucid's, the atlas default), and
what an atlas of every channel of the layer would cost. Run it with the load average beside the numbers::

    python benchmarks/bench_synthesis.py            # random weights (the cost does not depend on them)
    python benchmarks/bench_synthesis.py --images out/   # also write conv3_3, conv4_3 (offline weights) and
                                                         # ResNet-50 layer2 (random) images to look at
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import deconvnet as dn


def per_step(net, layer: str, batch: int, steps: int, size: int) -> float:
    t = time.perf_counter()
    dn.synthesize(net, layer, list(range(batch)), steps=steps, size=size, progress=False)
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--images", default=None, help="a folder: write images to look at (256 steps each)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    net = dn.load_vgg("vgg16", "random", seed=0)
    dn.synthesize(net, "conv4_3", [0], steps=2, size=args.size, progress=False)  # warm-up
    for b in (int(v) for v in args.batches.split(",")):
        s = per_step(net, "conv4_3", b, args.steps, args.size)
        each = s / b
        print(f"vgg16 conv4_3 {args.size} px, batch {b}: {s:.3f} s/step, {each:.3f} s/step/channel -> "
              f"256 steps {256 * each:.0f} s/channel, 512 steps {512 * each:.0f} s/channel; all 512 channels at 512 "
              f"steps: {512 * 512 * each / 3600:.1f} h")
    print(f"load average after: {os.getloadavg()}")
    if args.images:
        from deconvnet.synthesis.files import write_synthesis

        mri = dn.load_vgg("vgg16", "mri")
        for layer in ("conv3_3", "conv4_3"):
            s = dn.synthesize(mri, layer, [0, 1, 2, 3], steps=256, size=args.size, progress=False)
            write_synthesis(s, args.images, arch="vgg16-mri")
        r = dn.load_model("resnet50", "random", seed=0)
        s = dn.synthesize(r, "layer2", [0, 1, 2, 3], steps=256, size=args.size, progress=False)
        write_synthesis(s, args.images, arch="resnet50-random")
        print(f"images in {args.images}")


if __name__ == "__main__":
    main()
