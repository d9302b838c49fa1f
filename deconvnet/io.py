"""Atomic writes: results appear whole or not at all (a temporary file beside the target, then rename)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    The file gets the permissions an ordinary ``open`` would give (``mkstemp`` makes it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name: a later run can tell a kill's leftover from another writer's file
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}.", suffix=f"{path.suffix}.tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_TEMPORARY = re.compile(r"^\..*\.(\d+)\.[A-Za-z0-9_]{8}[^/]*\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that writes interrupted by a kill left in ``folder`` (not recursive).

    Only files named by ``atomic_path`` whose writing process is gone are removed: a run writing into
    the same folder at the same time keeps its own. Returns the files removed.
    """
    removed = []
    for f in Path(folder).glob(".*.tmp"):
        m = _TEMPORARY.match(f.name)
        if m and not _alive(int(m.group(1))):
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass
    return removed


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically (non-JSON values via ``str``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=str))
    return Path(path)


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save``, atomically; the same object gives the same bytes (reproducible sha256s).

    Saved through an open file: ``torch.save`` given a path names the records inside its zip archive after
    the file, and the temporary file's name is random (given a file object, it names them ``archive``).
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
