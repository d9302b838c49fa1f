"""Per-target cost of exact point-target projections, ours against Captum, measured side by side.

    .venv/bin/python benchmarks/bench_project.py [--targets 64] [--captum-targets 8] [--device cpu|cuda]
        [--sections chain,graph,fields] [--graph-targets 32] [--no-measure]

For point targets (random units of random channels, one image 224x224) at relu3_3, relu4_3 and relu5_3
of VGG16, it times in one run:
  - ours, receptive-field-cropped, all targets in batches (one forward for the image),
  - ours, uncropped (the whole maps), batched the same way,
  - a loop over Captum's NeuronDeconvolution (one forward and backward per target),
and prints per-target times and the ratios. It also prints the achieved FLOP rate of our deconv pass
against that of a plain forward pass, and the memory of the switches of one image, compact vs int64.
Projections are checked equal across the three before timing.

The graph section does the same for ResNet-50 (layer2, layer3, layer4) through its autograd graph: our
``project_many`` (one forward, one backward per target) against the Captum loop, per target.

The chain section also prints the share of a cropped projection call (its forward included) spent
unpooling, and the ``fields`` section the time to a graph layer's first box (its receptive field, on a fresh
net: ResNet-18 layer4, DenseNet-121 denseblock3) in units of one plain 224-px forward.
Every section prints the load average first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from functools import partial

import torch
import torch.nn.functional as F

import deconvnet as dn
import deconvnet.engine.cropped as cropped
import deconvnet.engine.steps as steps
from deconvnet.engine import record


def timed(fn, repeats: int, sync) -> float:
    out = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def captum_loop(net: dn.Net, module: torch.nn.Module, x: torch.Tensor, targets) -> None:
    """Captum's NeuronDeconvolution, one call per target (its only way)."""
    from captum.attr import NeuronDeconvolution

    for t in targets:
        NeuronDeconvolution(net.model, module).attribute(x.clone(), neuron_selector=(t.channel, *t.position))


class FlopCounter:
    """Counts multiply-adds x2 of conv2d (forward hooks) and conv_transpose2d (patched) calls."""

    def __init__(self) -> None:
        self.flops = 0

    def __enter__(self):
        self._orig = F.conv_transpose2d

        def counted(r, weight, *args, **kwargs):
            self.flops += 2 * r.numel() * (weight.shape[1]) * weight.shape[2] * weight.shape[3]
            return self._orig(r, weight, *args, **kwargs)

        F.conv_transpose2d = counted
        return self

    def __exit__(self, *exc):
        F.conv_transpose2d = self._orig


def forward_flops(net, x, layer) -> int:
    total = 0

    def hook(m, inp, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    handles = [m.register_forward_hook(hook)
               for _, m in net.stack[: net.depth(layer) + 1] if isinstance(m, torch.nn.Conv2d)]
    try:
        record(net, x, [layer])
    finally:
        for h in handles:
            h.remove()
    return total


class UnpoolTimer:
    """Times the unpooling steps of both walks (patched), seconds in all."""

    NAMES = ("_unpool_window", "unpool_full", "unpool_scatter_add")

    def __init__(self, sync) -> None:
        self.seconds, self.sync = 0.0, sync

    def __enter__(self):
        # each name where the walks look it up: the cropped walk's module and the steps' module
        self._orig = {(m, n): getattr(m, n) for m in (cropped, steps) for n in self.NAMES if hasattr(m, n)}
        for (m, n), f in self._orig.items():
            def timed_call(*a, _f=f, **k):
                self.sync()
                t = time.perf_counter()
                out = _f(*a, **k)
                self.sync()
                self.seconds += time.perf_counter() - t
                return out
            setattr(m, n, timed_call)
        return self

    def __exit__(self, *exc):
        for (m, n), f in self._orig.items():
            setattr(m, n, f)


def load() -> str:
    return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def fields_section(args, sync) -> None:
    """The time to a graph layer's first box (its receptive field on a fresh net), in plain 224-px forwards."""
    from deconvnet.engine.receptive import measured_receptive_field

    print(f"\ntime to a graph layer's first box (receptive field, fresh net), {load()}")
    print(f"{'layer':32} {'plain fwd':>10} {'first box':>10} {'in fwds':>8}   {'measured':>9} {'in fwds':>8}  equal")
    for arch, layer in (("resnet18", "layer4"), ("densenet121", "features.denseblock3")):
        net = dn.load_model(arch, "random", seed=0, device=args.device)
        x = torch.zeros(1, 3, 224, 224, device=args.device)
        with torch.no_grad():
            t_fwd = timed(partial(net.model, x), args.repeats, sync)
        sync()
        t = time.perf_counter()
        rf = dn.Deconvnet(net).receptive_field(layer)
        t_box = time.perf_counter() - t
        t = time.perf_counter()
        measured = measured_receptive_field(net, layer) if args.measure else None
        t_meas = time.perf_counter() - t
        meas = f"{t_meas:8.2f}s {t_meas / t_fwd:8.1f}" if measured else f"{'-':>9} {'-':>8}"
        print(f"{arch + ' ' + layer:32} {t_fwd * 1e3:7.0f} ms {t_box * 1e3:7.0f} ms {t_box / t_fwd:8.2f}   {meas}  "
              f"{'-' if measured is None else rf == measured}  {rf}")


def graph_section(args, sync) -> None:
    """ResNet-50 through its autograd graph: our batched targets (one forward, a backward each) vs a Captum loop."""
    from captum.attr import NeuronDeconvolution

    net = dn.load_model("resnet50", "random", seed=0, device=args.device)  # speed does not depend on the weights
    deconv = dn.Deconvnet(net)
    x = net.preprocess("astronaut", size=224, crop=224)
    g = torch.Generator().manual_seed(1)
    print(f"\n{load()}")
    print(f"ResNet-50 (random weights; speed only), graph engine, image 224x224, {args.graph_targets} targets per "
          "layer "
          f"(Captum: {args.captum_targets}), median of {args.repeats}")
    rows = []
    for layer in ("layer2", "layer3", "layer4"):
        shape = net.output_shapes()[layer]
        c, h, w = shape[1], shape[2], shape[3]
        chans = torch.randint(0, c, (args.graph_targets,), generator=g)
        units = torch.stack([torch.randint(0, h, (args.graph_targets,), generator=g),
                             torch.randint(0, w, (args.graph_targets,), generator=g)], 1)
        targets = [dn.Target(layer, int(ch), tuple(u.tolist())) for ch, u in zip(chans, units, strict=True)]
        module = net.layers[layer]
        ours = deconv.project_many(x, targets)
        for p, t in zip(ours[:3], targets, strict=False):  # equal before timed (the first three)
            ref = NeuronDeconvolution(net.model, module).attribute(x.clone(), neuron_selector=(t.channel, *t.position))
            ref = ref.detach() * p.activation[0]
            assert (p.projection - ref).abs().max() <= 1e-4 * ref.abs().max().clamp(min=1e-30)
        t_ours = timed(partial(deconv.project_many, x, targets), args.repeats, sync)
        t_captum = timed(partial(captum_loop, net, module, x, targets[: args.captum_targets]), args.repeats, sync)
        rows.append((layer, t_ours / args.graph_targets, t_captum / args.captum_targets))
    print(f"{'layer':8} {'ours batched':>13} {'Captum loop':>12}   {'vs Captum':>9}")
    for layer, ours, captum in rows:
        print(f"{layer:8} {ours * 1e3:10.1f} ms {captum * 1e3:9.1f} ms   {captum / ours:8.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="chain,graph,fields",
                    help="chain (VGG16, cropped walk), graph (ResNet-50), fields (time to a graph layer's first box)")
    ap.add_argument("--no-measure", dest="measure", action="store_false",
                    help="fields: skip the measured receptive field (the reference the first box must equal; slow)")
    ap.add_argument("--graph-targets", type=int, default=32, help="point targets per ResNet-50 layer for ours")
    ap.add_argument("--weights", default="mri")
    ap.add_argument("--layers", default="relu3_3,relu4_3,relu5_3")
    ap.add_argument("--targets", type=int, default=64, help="point targets per layer for ours")
    ap.add_argument("--captum-targets", type=int, default=8, help="point targets per layer for the Captum loop")
    ap.add_argument("--batch", type=int, default=64, help="projections per deconv pass (ours)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sections = args.sections.split(",")
    if "chain" in sections:
        chain_section(args, sync)
    if "graph" in sections:
        graph_section(args, sync)
    if "fields" in sections:
        fields_section(args, sync)


def chain_section(args, sync) -> None:
    """VGG16 through the chain walk: cropped and whole-map projections vs a Captum loop."""
    from captum.attr import NeuronDeconvolution

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = dn.load_vgg("vgg16", args.weights, device=args.device)
    x = net.preprocess("astronaut", size=224, crop=224)
    g = torch.Generator().manual_seed(0)
    print(net.describe())
    print(load())
    print(f"device {args.device}, threads {torch.get_num_threads()}, image 224x224, {args.targets} targets per layer "
          f"(Captum: {args.captum_targets}), batch {args.batch}, median of {args.repeats}")
    rows = []
    warnings.filterwarnings("ignore")
    for layer in args.layers.split(","):
        rec = record(net, x, [layer])
        c, h, w = rec.activations[layer].shape[1:]
        chans = torch.randint(0, c, (args.targets,), generator=g)
        units = torch.stack([torch.randint(0, h, (args.targets,), generator=g),
                             torch.randint(0, w, (args.targets,), generator=g)], 1)
        targets = [dn.Target(layer, int(ch), tuple(u.tolist())) for ch, u in zip(chans, units, strict=True)]
        cropped = dn.Deconvnet(net, crop=True, max_batch=args.batch)
        full = dn.Deconvnet(net, crop=False, max_batch=args.batch)
        # equality first: ours cropped = ours full = Captum x activation
        pc = cropped.project_many(x, targets[: args.captum_targets])
        pf = full.project_many(x, targets[: args.captum_targets])
        for a, b, t in zip(pc, pf, targets, strict=False):  # strict=False: the first captum_targets are checked
            nd = NeuronDeconvolution(net.model, net.layers[layer])
            ref = nd.attribute(x.clone(), neuron_selector=(t.channel, *t.position)).detach() * a.activation[0]
            scale = ref.abs().max().clamp(min=1e-30)
            assert (a.projection - b.projection).abs().max() <= 1e-4 * scale
            if a.activation[0] > 0:
                assert (a.projection - ref).abs().max() <= 1e-4 * scale
        t_fwd = timed(partial(record, net, x, [layer]), args.repeats, sync)
        t_crop = timed(partial(cropped.project_many, x, targets), args.repeats, sync)
        t_full = timed(partial(full.project_many, x, targets), args.repeats, sync)
        t_captum = timed(partial(captum_loop, net, net.layers[layer], x, targets[: args.captum_targets]), args.repeats,
                         sync)
        with FlopCounter() as fc:
            cropped.project_many(x, targets)
        with UnpoolTimer(sync) as ut:
            t = time.perf_counter()
            cropped.project_many(x, targets)
            t_call = time.perf_counter() - t
        # of the whole call (forward included): a difference with the separately timed forward can come out
        # near zero or negative on busy cores
        unpool_share = ut.seconds / t_call
        f_fwd = forward_flops(net, x, layer)
        rate_fwd = f_fwd / t_fwd
        rate_deconv = fc.flops / max(t_crop - t_fwd, 1e-9)
        per = {"cropped": t_crop / args.targets, "full": t_full / args.targets,
               "captum": t_captum / args.captum_targets}
        rows.append((layer, per, rate_deconv / 1e9, rate_fwd / 1e9, unpool_share))
    print(load())
    print(f"{'layer':8} {'ours cropped':>13} {'ours full':>10} {'Captum':>9}   {'vs Captum':>9} {'full/crop':>9}   "
          f"{'unpool share':>12}   {'deconv GFLOP/s':>14} {'forward GFLOP/s':>15}")
    for layer, per, rd, rf, share in rows:
        print(f"{layer:8} {per['cropped'] * 1e3:10.1f} ms {per['full'] * 1e3:7.1f} ms {per['captum'] * 1e3:6.0f} ms"
              f"   {per['captum'] / per['cropped']:8.1f}x {per['full'] / per['cropped']:8.1f}x   {share:11.1%}   "
              f"{rd:14.1f} {rf:15.1f}")
    rec = record(net, x, ["pool5"])
    compact = sum(s.nbytes for s in rec.switches.values())
    int64 = sum(s.offsets.numel() * 8 for s in rec.switches.values())
    print(f"\nswitches of one 224x224 image (pool1..pool5): compact {compact / 2**20:.2f} MiB, int64 "
          f"{int64 / 2**20:.2f} MiB "
          f"({compact / int64:.3f} of int64)")


if __name__ == "__main__":
    main()
