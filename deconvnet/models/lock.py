"""Exclusive use of a model for one call, on an eval-mode view of it that leaves the user's modules alone;
hooks that act only for the call that registered them.

Everything that runs a model with hooks on its modules (the engine's recorded forward, ``Net.output_shapes``,
the measured receptive fields) takes ``exclusive`` first: hooks live on the modules, so two such calls at once
(two threads, two ``Deconvnet`` objects on one model) would see each other's hooks and stop signals. A plain
forward of the same model in another thread takes no lock and runs the modules too: each hook first asks
``owns(token)`` with the token of its call (``own_call``, a ``contextvars`` value: per thread and per call),
and does nothing for anyone else's forward.

The call runs ``eval_view(model)``, not the model: a shallow copy of the module tree whose modules are in eval
mode and hold the parameters detached (the same storage, no gradient), while the hooks' dictionaries are the
modules' own (a hook on a module fires for its view). The user's modules keep their ``training`` flags and
their parameters' ``requires_grad`` throughout, so a second user of the model (a thread that trains it) is
not disturbed; see the docs page "Exact or refused" for this design.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_CALL: contextvars.ContextVar[object | None] = contextvars.ContextVar("deconvnet_call", default=None)


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


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock of ``model``: held by every call that has hooks on its modules."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.RLock())


def eval_view(model: nn.Module) -> nn.Module:
    """A view of ``model`` in eval mode that shares its weights and hooks and changes nothing of it.

    Each module is copied shallowly (its class and attributes), with its own ``training = False``, its own
    dictionaries of children (their views), of buffers (the same tensors) and of parameters (the same
    tensors detached: no gradient flows into the weights). The hook dictionaries are shared, so a forward
    hook registered on a module of ``model`` fires when its view runs (with the view as ``module``). A
    module that appears twice in the tree has one view. A view's view is itself.
    """
    if "_deconvnet_original" in model.__dict__:  # a view already
        return model
    views: dict[int, nn.Module] = {}

    def view(m: nn.Module) -> nn.Module:
        if id(m) in views:
            return views[id(m)]
        v = type(m).__new__(type(m))
        views[id(m)] = v
        v.__dict__.update(m.__dict__)
        v.__dict__["training"] = False
        v.__dict__["_parameters"] = {n: None if p is None else p.detach() for n, p in m._parameters.items()}
        v.__dict__["_buffers"] = dict(m._buffers)
        v.__dict__["_modules"] = {n: None if c is None else view(c) for n, c in m._modules.items()}
        v.__dict__["_deconvnet_original"] = m
        return v

    return view(model)


def original(module: nn.Module) -> nn.Module:
    """The user's module of a view (``eval_view``), or the module itself."""
    return module.__dict__.get("_deconvnet_original", module)


@contextmanager
def exclusive(model: nn.Module) -> Iterator[nn.Module]:
    """Exclusive use of ``model``: yields its eval-mode view (``eval_view``), the module to run.

    Inside, the view's modules are in eval mode (BatchNorm uses its running statistics and is not updated,
    Dropout is off: the deconvnet mirrors the trained network) and its parameters need no gradient; the
    user's model is not changed at all (its modes and flags stay as they are, also for another thread
    training it meanwhile). The lock is re-entrant: a call that holds it may call another that takes it.
    """
    with model_lock(model):
        yield eval_view(model)
