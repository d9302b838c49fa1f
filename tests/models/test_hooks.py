"""The one hook helper: first outputs kept, the forward stopped after the last, no hook left behind."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deconvnet.models.hooks import SKIP, StopForward, capture
from deconvnet.models.lock import own_call


class _Counted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + 1


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_capture_keeps_first_outputs_and_stops_after_the_last():
    relu = nn.ReLU()
    tail = _Counted()
    model = nn.Sequential(nn.Identity(), relu, nn.Identity(), relu, tail)  # relu called twice
    x = torch.tensor([[-1.0, 2.0]])
    kept = capture({"a": model[0], "r": relu, "again": relu}, lambda: model(x))
    assert torch.equal(kept["a"], x) and torch.equal(kept["r"], torch.relu(x)) and kept["again"] is kept["r"]
    assert tail.calls == 0  # stopped after the last module (the first call of relu)
    assert _hooks(model) == 0
    capture({"r": relu}, lambda: model(x), stop_after_last=False)
    assert tail.calls == 1


def test_keep_skip_and_replace():
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    seen = []

    def keep(keys, module, inputs, output):
        seen.append(keys)
        return SKIP if len(seen) == 1 else output.sum()

    kept = capture({"id": model[0]}, lambda: (model(torch.ones(1, 2)), model(torch.full((1, 2), 2.0))), keep=keep,
                   stop_after_last=False)
    assert float(kept["id"]) == 4.0 and seen == [["id"], ["id"]]  # the SKIPped first call left it open
    out = []
    capture({"id": model[0]}, lambda: out.append(model(-torch.ones(1, 2))), replace=lambda o: -o,
            stop_after_last=False)
    assert torch.equal(out[0], torch.ones(1, 2))  # the replaced output flowed on


def test_no_hook_survives_an_error_and_other_forwards_are_not_seen():
    model = nn.Sequential(nn.Identity(), nn.ReLU())

    def broken():
        model(torch.ones(1, 2))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        capture({"id": model[0]}, broken, stop_after_last=False)
    assert _hooks(model) == 0
    with own_call() as token:
        pass
    assert capture({"id": model[0]}, lambda: model(torch.ones(1, 2)), token=token) == {}  # not this call's token
    assert issubclass(StopForward, Exception)
