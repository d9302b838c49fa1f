"""Checks and digests every part of the package shares: one positive-integer check, one fingerprint.

Both import nothing of the package, so ``models/``, the engine and every consumer may use them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def positive_int(name: str, value: Any, *, minimum: int = 1, hint: str | None = None, allow_none: bool = False) -> Any:
    """``value`` when it is an integer (not a bool) of at least ``minimum``; else one ``ValueError`` naming it.

    Args:
        name: what the value is, as the user typed it (``"k"``, ``"--features"``, ``"max_batch"``).
        value: the value to check; an integral NumPy or tensor scalar passes, as an ``int``.
        minimum: the least value allowed (1: positive; 0: non-negative).
        hint: the fix, appended as "Hint: ..." (default: none).
        allow_none: ``None`` passes unchanged (an option's "no limit").

    Returns:
        ``int(value)`` (``None`` when ``allow_none`` and it is ``None``).
    """
    if value is None and allow_none:
        return None
    whole = not isinstance(value, bool) and hasattr(value, "__index__")
    if not whole or int(value.__index__()) < minimum:
        what = "a positive integer" if minimum == 1 else (
            "a non-negative integer" if minimum == 0 else f"an integer of at least {minimum}")
        tail = f". Hint: {hint}" if hint else ""
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be {what}{none}, got {value!r}{tail}")
    return int(value.__index__())


def fingerprint(obj: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the sha256 of ``obj`` as canonical JSON (sorted keys; values JSON
    cannot hold written as ``str``): the key of caches, checkpoints and atlas jobs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def digest_bytes(data: bytes, length: int = 64) -> str:
    """The first ``length`` hex digits of the sha256 of raw bytes (a tensor's ``numpy().tobytes()``)."""
    return hashlib.sha256(data).hexdigest()[:length]
