"""One cache of finished dataset scans, shared by the notebooks, the figure script and the atlas.

A scan is found again by what fixes its result, whoever asks for it: the model's weights (a digest of the
tensors themselves, so a model changed in place is another model), its module tree (every module's type
and constructor arguments: ``module_tree``, so surgery with the same weights is another model), its
dtype, the dataset as it describes itself (images, transform, size), the preprocessing's values (not only
its name), the contents of the dataset's files (``files_digest``: a file edited in place with its size and
modification time kept is another dataset), the number of items and their groups, the per-group limit,
and the layer. Each layer of a scan is an entry of its own, and an entry of k entries per channel also
serves any smaller k (the top-k' is the first k' of the top-k: ``deconvnet.scan`` keeps its order exact).
So a notebook that scans ``conv3_3`` finds what the figure script scanned for ``conv1_2 ... conv5_3``.

Where: ``$DECONVNET_CACHE`` when set, else ``$XDG_CACHE_HOME/deconvnet``, else ``~/.cache/deconvnet``;
scans lie under ``scans/`` there, with the checkpoints of scans under way and ``files.json`` (the digests
of files already read, by their full stat). Every file is written atomically (``deconvnet.io``); deleting
the folder only costs the time to scan again. A folder that cannot be written is refused before any work
(``ScanCache.check``); a write that fails later is a ``CacheWriteWarning``, and the result is returned.
See docs/explanation/scan-cache.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checks import fingerprint

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$DECONVNET_CACHE``, else ``$XDG_CACHE_HOME/deconvnet``, else ``~/.cache/deconvnet``."""
    if os.environ.get("DECONVNET_CACHE"):
        return Path(os.environ["DECONVNET_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "deconvnet"


def scan_cache_dir(cache: bool | str | os.PathLike | None) -> Path | None:
    """Where scans are cached: None for ``False``/``None``; ``default_cache_dir()/scans`` for ``True``; a
    folder given as a path is used as it is."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return default_cache_dir() / "scans"
    if isinstance(cache, (str, os.PathLike)):
        return Path(cache).expanduser()
    raise TypeError(f"cache must be True, False or a folder, got {type(cache).__name__}")


def weights_digest(model: nn.Module) -> str:
    """A digest of every parameter and buffer of ``model`` (names, dtypes, shapes and bytes).

    About a second for VGG16 with its classifier (528 MB) on one CPU core: little beside a scan.
    """
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def module_tree(model: nn.Module) -> str:
    """A digest of ``model``'s module tree: every module's name, type (module and qualified class name) and
    ``extra_repr()`` (the constructor arguments torch prints: kernel, stride, padding, ...).

    The weights' digest cannot see surgery that keeps the ``state_dict``: a max-pool swapped for an average
    pool, a conv's stride changed. This digest does, in microseconds.
    """
    h = hashlib.blake2b(digest_size=16)
    for name, m in model.named_modules():
        t = type(m)
        h.update(f"{name}|{t.__module__}.{t.__qualname__}|{m.extra_repr()}\n".encode())
    return h.hexdigest()


def preprocessing_values(preprocessing: Any) -> Any:
    """What a preprocessing does, as JSON-able values: every field of a dataclass (``Preprocessing``: order,
    scale, mean, std, name), else its ``repr``. Two preprocessings of one name but another mean differ."""
    if dataclasses.is_dataclass(preprocessing) and not isinstance(preprocessing, type):
        return json.loads(json.dumps(dataclasses.asdict(preprocessing), default=str))
    return repr(preprocessing)


class CacheWriteWarning(UserWarning):
    """A file of the scan cache could not be written; the result is returned all the same."""


def _stat_key(st: os.stat_result) -> list[int]:
    # what changes whenever a file's bytes can have changed: size and mtime can be set back, but the inode
    # change time (ctime) cannot be set by a user, and another folder has other inodes
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def files_digest(paths: Sequence[os.PathLike | str], root: os.PathLike | str,
                 memo: os.PathLike | str | None = None) -> str:
    """A digest of the files' names (relative to ``root``) and contents: what the stat cannot tell.

    Every file is read once (blake2b, about the speed of reading it); with ``memo`` (a JSON file), a
    file whose stat (device, inode, size, modification and change times) is what it was when it was read
    is not read again, so a rerun costs one ``stat`` per file. A memo that cannot be written is skipped.
    """
    root = Path(root)
    seen: dict[str, Any] = {}
    if memo is not None:
        try:
            seen = json.loads(Path(memo).read_text())
            seen = seen if isinstance(seen, dict) else {}
        except (OSError, ValueError):
            seen = {}
    h = hashlib.blake2b(digest_size=16)
    changed = False
    for p in paths:
        p = Path(p)
        full = str(p.resolve())
        key = _stat_key(p.stat())
        got = seen.get(full)
        if not (isinstance(got, list) and len(got) == 2 and got[0] == key):
            got = [key, _file_digest(p)]
            seen[full], changed = got, True
        h.update(f"{p.relative_to(root).as_posix()}\0{got[1]}\n".encode())
    if memo is not None and changed:
        try:
            from .io import write_json

            write_json(seen, memo)
        except OSError:
            pass  # the memo only saves reading the files again
    return h.hexdigest()


class ScanCache:
    """The finished scans in one folder, one file per layer: ``topk-<key>.pt`` (a ``TopK`` of that layer).

    ``identity`` is what fixes a scan's result except its layers and k (``deconvnet.scan`` makes it); an
    entry's key is the identity and the layer.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def check(self) -> None:
        """Before any work: the folder is (or can be made) a folder this process can write in.

        Raises:
            ValueError: it is a file, or it cannot be created or written (one line, with the way out).
        """
        hint = "Hint: cache=False (--no-cache on the command line), or $DECONVNET_CACHE=<a writable folder>"
        for folder in (self.folder, *self.folder.parents):
            if folder.exists() and not folder.is_dir():
                raise ValueError(f"the scan cache '{self.folder}' cannot be made: '{folder}' is a file, not a folder. "
                                 f"{hint}")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".write-test-"):
                pass
        except OSError as err:
            raise ValueError(f"the scan cache '{self.folder}' cannot be written ({err.strerror or err}). "
                             f"{hint}") from None

    @property
    def files_memo(self) -> Path:
        """The digests of the files already read (``files_digest``'s memo)."""
        return self.folder / "files.json"

    def store(self, save: Any, path: Path) -> bool:
        """``save(path)``; a write that fails is a ``CacheWriteWarning`` (the result is not lost), False."""
        try:
            save(path)
            return True
        except OSError as err:
            warnings.warn(f"the scan cache could not store '{path.name}' in '{self.folder}' ({err.strerror or err}): "
                          "the scan is returned, not cached", CacheWriteWarning, stacklevel=3)
            return False

    def entry(self, identity: dict, layer: str) -> Path:
        """The file of one layer's scan."""
        return self.folder / f"topk-{fingerprint([CACHE_FORMAT, identity, layer], 24)}.pt"

    def checkpoint(self, identity: dict, layers: list[str], k: int) -> Path:
        """The checkpoint of a scan of ``layers`` under way (removed once its layers are stored)."""
        return self.folder / f"partial-{fingerprint([CACHE_FORMAT, identity, layers, k], 24)}.pt"
