"""Exclusive use of a model for one call: a lock per model, and eval mode for the duration; hooks that act
only for the call that registered them.

Everything that runs a model with hooks on its modules (the engine's recorded forward, ``Net.output_shapes``,
the measured receptive fields) takes ``exclusive`` first: hooks live on the modules, so two such calls at once
(two threads, two ``Deconvnet`` objects on one model) would see each other's hooks and stop signals. A plain
forward of the same model in another thread takes no lock and runs the modules too: each hook first asks
``owns(token)`` with the token of its call (``own_call``, a ``contextvars`` value: per thread and per call),
and does nothing for anyone else's forward.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from contextlib import contextmanager
from typing import Iterator

from torch import nn

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_CALL: "contextvars.ContextVar[object | None]" = contextvars.ContextVar("deconvnet_call", default=None)


@contextmanager
def own_call() -> Iterator[object]:
    """A token for the hooks of one call: ``owns(token)`` is true inside this block, in this thread only."""
    token = object()
    reset = _CALL.set(token)
    try:
        yield token
    finally:
        _CALL.reset(reset)


def owns(token: object) -> bool:
    """Whether the code running now is the call that holds ``token`` (a hook's first question)."""
    return _CALL.get() is token


@contextmanager
def exclusive(model: nn.Module) -> Iterator[None]:
    """Exclusive use of ``model``, in eval mode.

    Inside, every module is in eval mode (BatchNorm uses its running statistics and is not updated, Dropout
    is off: the deconvnet mirrors the trained network), and the modes are restored on the way out, also
    after an error. The lock is re-entrant: a call that holds it may call another that takes it.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(model, threading.RLock())
    with lock:
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            yield
        finally:
            for m, training in modes:
                m.training = training
