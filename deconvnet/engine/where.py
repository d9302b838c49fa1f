"""Where a model's forward is now: the path of the module running, for the engine's messages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ..models.lock import owns


class Where:
    """Where the forward is now, for messages: the path of the module running and the module itself."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.stack = model, []

    def name(self) -> str:
        return self.stack[-1][0] if self.stack else ""

    def module(self) -> nn.Module | None:
        return self.stack[-1][1] if self.stack else None

    def __call__(self) -> str:
        return f"module '{self.name()}'" if self.name() else f"the forward of {type(self.model).__name__} itself"


@contextmanager
def where_tracker(model: nn.Module, token: object) -> Iterator[Where]:
    """Hooks that keep the path of the module running now in the call of ``token``, for messages."""
    names = {m: n for n, m in model.named_modules()}
    where = Where(model)
    handles = []

    def pre(m, inputs):
        if owns(token):
            where.stack.append((names.get(m, type(m).__name__), m))

    def post(m, inputs, output):
        if where.stack and owns(token):
            where.stack.pop()

    try:
        for m in names:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        yield where
    finally:
        for h in handles:
            h.remove()
