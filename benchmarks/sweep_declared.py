"""Every torchvision classifier on the meta device: projected exactly, with declared rules, or refused (by what).

Runs the graph engine's allow-list (one forward on the meta device: no weights, no memory) with and
without ``extend=True``. Usage: ``python benchmarks/sweep_declared.py``.
"""

from __future__ import annotations

import collections
import warnings

import torch
import torchvision.models as tvm

from deconvnet.engine import graph
from deconvnet.engine.mode import DeconvMode


def probe(model: torch.nn.Module, extend: bool) -> dict[str, int]:
    graph.check_modules(model, extend=extend)
    mode = DeconvMode(lambda: type(model).__name__, extend=extend)
    x = torch.zeros(1, 3, 299, 299, device="meta")
    mode.mark(x)
    with torch.no_grad(), mode:
        model(x)
    return mode.counts


def build_on_meta(arch: str) -> torch.nn.Module:
    """The model on the meta device; a builder that computes on tensors (RegNet's widths) gets its
    parameters moved to meta one by one as they are made."""
    try:
        with torch.device("meta"):
            return tvm.get_model_builder(arch)(weights=None).eval()
    except NotImplementedError:
        pass
    register = torch.nn.Module.register_parameter

    def to_meta(self, name, param):
        register(self, name, None if param is None else torch.nn.Parameter(param.to("meta"), param.requires_grad))

    torch.nn.Module.register_parameter = to_meta
    try:
        return tvm.get_model_builder(arch)(weights=None).eval().to("meta")
    finally:
        torch.nn.Module.register_parameter = register


def main() -> None:
    counts = collections.Counter()
    refused: dict[str, str] = {}
    for arch in tvm.list_models(module=tvm):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_on_meta(arch)
        try:
            probe(model, extend=False)
            counts["exact"] += 1
            continue
        except graph.UnsupportedLayerError:
            pass
        try:
            used = probe(model, extend=True)
            counts["declared"] += 1
            print(f"{arch}: declared {dict(used)}")
        except graph.UnsupportedLayerError as err:
            counts["refused"] += 1
            refused[arch] = str(err).split(":")[0]
    for arch, why in refused.items():
        print(f"{arch}: refused, {why}")
    print(f"{sum(counts.values())} torchvision classifiers: {counts['exact']} projected exactly, "
          f"{counts['declared']} with declared rules, {counts['refused']} refused")


if __name__ == "__main__":
    main()
