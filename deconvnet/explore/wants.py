"""The explorer's "what this unit wants" panel: the image synthesised to excite the channel on show
(``deconvnet.synthesis``), computed on a background thread after the main view, kept per (layer, channel).

``WantsSource`` has the shape of ``tiles.TileSource`` (``note``, ``compute(layer, channel, stop, pause)``), so
the tiles' ``TileWorker`` runs it: one request at a time, the newest wins, the main view first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..models import Net
from ..synthesis import Synthesis, synthesize

#: the explorer's default: fewer steps than lucid's 512 (an answer in tens of seconds on a CPU, not minutes)
DEFAULT_SETTINGS = {"steps": 128, "size": 96, "seed": 0}

Wanted = Synthesis | str  # the image, or why there is none


class WantsSource:
    """Synthesises one channel's image with ``settings`` (``synthesize``'s keywords)."""

    def __init__(self, net: Net, settings: dict[str, Any] | None = None) -> None:
        self.net = net
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}

    def note(self, layer: str, channel: int) -> str | None:
        """Why ``(layer, channel)`` gets no image, or None."""
        if not self.net.is_spatial(layer) and self.net.channels.get(layer) is None:
            return f"{layer} has no channels to synthesise for."
        return None

    def compute(self, layer: str, channel: int, stop: Callable[[], bool] = lambda: False,
                pause: Callable[[], None] = lambda: None) -> Wanted | None:
        """The channel's synthesised image; None when ``stop()`` became true on the way (between steps,
        ``pause()`` waits while the main view is computed)."""
        def before_step() -> bool:
            pause()
            return stop()

        s = synthesize(self.net, layer, [channel], progress=False, before_step=before_step, **self.settings)
        return None if s.interrupted else s
