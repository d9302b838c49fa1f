"""Text that reaches HTML: every string shown in an HTML widget or page is escaped here, in one place.

A file name, a weights file, a layer name or an error message can hold ``<``, ``>``, ``&`` or quotes
(``<img src=x onerror=...>.png`` is a valid file name); put raw into an ``ipywidgets.HTML`` widget or a
page, it runs as a script in the notebook's page, which can drive the kernel. So the explorer builds its
HTML from ``escape(value)`` of every value it did not write itself, and the atlas's Jinja2 templates are
autoescaped (``deconvnet.atlas.render.environment``: ``autoescape=True``, the same rule for every value).
"""

from __future__ import annotations

import html
from typing import Any

__all__ = ["escape"]


def escape(value: Any) -> str:
    """``str(value)`` with ``& < > " '`` replaced by HTML entities, safe inside text and quoted attributes.

    Args:
        value: anything; it is converted with ``str`` first (numbers, paths, exceptions).

    Returns:
        The escaped text.
    """
    return html.escape(str(value), quote=True)
