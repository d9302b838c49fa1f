"""One hook helper: run a forward with hooks on some modules, keep their first outputs, stop after the last.

Every part of the toolkit that needs a layer's output from the model's own forward (the chain's record, the
graph engine's forward and probe, ``Net.output_shapes``, the receptive-field measurement, the analyses'
scores) goes through ``capture``: the hooks exist only inside the call (removed in ``finally``, also when
the forward raised), a module called twice is seen at its first call, and the forward stops with one
exception, ``StopForward``, once every module has given its output.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from torch import nn

from .lock import owns

#: what ``keep`` returns for an output it does not take: the module's later calls are looked at too
SKIP = object()


class StopForward(Exception):
    """Raised by the hook of the last module to give its output: nothing later in the forward is needed."""


def capture(
    modules: Mapping[Hashable, nn.Module],
    run: Callable[[], object],
    *,
    keep: Callable[[list[Hashable], nn.Module, tuple, Any], Any] | None = None,
    replace: Callable[[Any], Any] | None = None,
    stop_after_last: bool = True,
    token: object | None = None,
) -> dict[Hashable, Any]:
    """Run ``run()`` (a forward of the model holding ``modules``) with a forward hook on each module, and
    return key -> what was kept of that module's first output.

    Args:
        modules: key -> module; keys sharing one module share its output (one hook each module).
        run: the forward to run; its result is not used.
        keep: called as ``keep(keys, module, inputs, output)`` at a module's first call; its result is kept
            for every key of the module (``SKIP``: nothing kept, the next call is looked at). Default: the
            output itself.
        replace: called as ``replace(output)`` after keeping, when the forward goes on: what it returns
            (not None) flows on instead of the output (a copy, so later in-place operations leave the kept
            output alone).
        stop_after_last: stop the forward (``StopForward``) once every module has given its output.
        token: the caller's ``models.lock.own_call`` token: calls of another thread's forward are ignored.

    Returns:
        key -> kept value, for the modules the forward reached (in the order they gave their outputs).
    """
    by_module: dict[int, tuple[nn.Module, list[Hashable]]] = {}
    for key, m in modules.items():
        by_module.setdefault(id(m), (m, []))[1].append(key)
    kept: dict[Hashable, Any] = {}
    done: set[int] = set()

    def make_hook(ident: int, keys: list[Hashable]) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
            if ident in done or (token is not None and not owns(token)):
                return None  # a later call (the target is the first), or another thread's forward
            value = output if keep is None else keep(keys, module, inputs, output)
            if value is SKIP:
                return None
            done.add(ident)
            for key in keys:
                kept[key] = value
            if stop_after_last and len(done) == len(by_module):
                raise StopForward
            return None if replace is None else replace(output)

        return hook

    handles = []
    try:
        for ident, (m, keys) in by_module.items():
            handles.append(m.register_forward_hook(make_hook(ident, keys)))
        run()
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return kept
