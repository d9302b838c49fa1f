"""Which offline weights show what a network learned? Each source measured on the same photographs.

    .venv/bin/python benchmarks/bench_offline_weights.py [--size 224] [--channels 6]

For each weight source (the offline ones, and seeded random weights as the floor) and each of
relu3_3, relu4_3, relu5_3 of VGG16, on each photograph: the layer's strongest unit location, and there
the ``--channels`` strongest channels, each projected alone. It prints per source and layer
(``deconvnet.analysis.quality``):

- anisotropy: median over projections; 1 is isotropic, a stripe texture of the weights is large;
- high-frequency share: median share of the energy above 1/4 cycle per pixel;
- distinctness: mean over photographs of 1 - the mean cosine similarity between the channels'
  projections at one location (0: every channel draws the same picture);
- alive: the share of ReLU units above zero at the layer (a net that is nearly silent on photographs
  shows little).

The offline default of ``weights="auto"`` is the source this table favours (README, "Weights").
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import deconvnet as dn
from deconvnet.analysis.quality import anisotropy, distinctness, high_frequency_share
from deconvnet.engine import record

PHOTOS = ("astronaut", "chelsea", "coffee", "grace_hopper", "rocket", "motorcycle_left")
LAYERS = ("relu3_3", "relu4_3", "relu5_3")


def measure(net: dn.Net, photos, size: int, n_channels: int) -> dict[str, dict[str, float]]:
    deconv = dn.Deconvnet(net)
    rows: dict[str, dict[str, list[float]]] = {
        layer: {"aniso": [], "hf": [], "dist": [], "alive": []} for layer in LAYERS}
    for photo in photos:
        x = net.preprocess(photo, size=size, crop=size)
        acts = record(net, x, list(LAYERS), switches=False).activations
        for layer in LAYERS:
            a = acts[layer][0]  # (C, h, w)
            rows[layer]["alive"].append(float((a > 0).double().mean()))
            flat = int(a.amax(0).flatten().argmax())
            row, col = divmod(flat, a.shape[-1])
            channels = a[:, row, col].argsort(descending=True)[:n_channels].tolist()
            targets = [dn.Target(layer, c, (row, col)) for c in channels]
            projections = [p.projection[0] for p in deconv.project_many(x, targets)]
            rows[layer]["aniso"] += [anisotropy(p) for p in projections]
            rows[layer]["hf"] += [high_frequency_share(p) for p in projections]
            rows[layer]["dist"].append(distinctness(projections))
    return {
        layer: {
            "anisotropy": statistics.median(r["aniso"]),
            "high_freq": statistics.median(r["hf"]),
            "distinct": statistics.fmean(r["dist"]),
            "alive": statistics.fmean(r["alive"]),
        }
        for layer, r in rows.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=6, help="strongest channels projected per photograph and layer")
    parser.add_argument("--photos", default=",".join(PHOTOS), help="comma-separated bundled photographs or files")
    args = parser.parse_args()
    photos = [p for p in args.photos.split(",") if p]
    torch.set_grad_enabled(False)
    sources = [*dn.models.weights.OFFLINE, "random"]
    results = {}
    for source in sources:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = dn.load_vgg("vgg16", source, seed=0)
        results[source] = measure(net, photos, args.size, args.channels)
        print(f"{source}: {net.describe()}  ({time.perf_counter() - t:.0f} s)")
    print(f"\nVGG16, {len(photos)} photographs ({', '.join(photos)}) at {args.size} px, "
          f"{args.channels} strongest channels at each layer's strongest location")
    print("\n| weights | layer | anisotropy (median; 1 = isotropic) | high-freq. share | distinctness | ReLUs alive |")
    print("|---|---|---|---|---|---|")
    for source, per_layer in results.items():
        for layer, m in per_layer.items():
            print(f"| {source} | {layer} | {m['anisotropy']:.2f} | {m['high_freq']:.2f} | {m['distinct']:.2f} | "
                  f"{m['alive']:.2f} |")


if __name__ == "__main__":
    main()
