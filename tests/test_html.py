"""HTML: one escaping rule for every page."""

from __future__ import annotations

from conftest import HOSTILE


def test_escape_is_the_one_rule():
    from deconvnet.html import escape

    assert escape(HOSTILE) == "&lt;img src=x onerror=alert(document.domain)&gt;.png"
    assert escape("a \"b\" & 'c'") == "a &quot;b&quot; &amp; &#x27;c&#x27;"
    assert escape(3) == "3"
