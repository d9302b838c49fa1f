"""What a dataset may offer the scan, the figures, the atlas and the explorer, read through one adapter
(``Items``), and the loading of its items in batches (``collate``, ``batches``) that skips unreadable images.

``deconvnet.data`` re-exports every name here; its collections (``ImageFolder``, the demo collection) offer
all of it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from .preprocessing import Preprocessing

# How many unreadable files a warning or ``describe()`` names; the count is always complete.
_NAMED = 5


class UnreadableImagesWarning(UserWarning):
    """Some image files could not be read and were skipped; the message gives the count and examples."""


class Batch(NamedTuple):
    """What ``collate`` returns.

    Attributes:
        x: (B, 3, H, W) model inputs of the readable items; an empty tensor when none was readable.
        index: (B,) int64 dataset indices of the rows of ``x``.
        skipped: dataset indices of the items of this batch that could not be read.
    """

    x: torch.Tensor
    index: torch.Tensor
    skipped: list[int]


class Collection(Protocol):
    """What a dataset of ``(x, i)`` items may offer besides ``len`` and indexing: the collections of this
    module offer most of it, a dataset of one's own any part. Every consumer (the scan, Figure 2, the atlas,
    the explorer) reads it through ``Items``, which gives the one default for whatever a dataset lacks.

    Attributes:
        root: the folder the items' files lie under (with ``paths``: the scan cache digests their contents).
        paths: the items' files, ``paths[i]`` for item ``i``.
        preprocessing: the ``Preprocessing`` that made the model inputs (its values are part of a scan's key).
    """

    root: os.PathLike | str
    paths: Sequence[os.PathLike | str]
    preprocessing: Preprocessing

    def label(self, i: int) -> str:
        """A short name of item ``i`` for captions."""

    def group(self, i: int) -> Hashable:
        """The source item ``i`` comes from (a file, a photograph): a scan keeps ``per_group`` of each."""

    def describe(self) -> dict[str, Any]:
        """Provenance, JSON-serialisable: what identifies the collection (a scan without it is not cached)."""

    def note_unreadable(self, indices: Sequence[int]) -> None:
        """Record items found undecodable while loading (and say so)."""

    def view(self, i: int) -> tuple[str, tuple[float, float, float], bool]:
        """``(photo, window, mirrored)`` of a crop of the demo collection."""


#: The members of ``Collection`` a dataset may lack.
_OPTIONAL = ("root", "paths", "preprocessing", "label", "group", "describe", "note_unreadable", "view")


class Items:
    """A dataset as every consumer reads it: what it offers of ``Collection``, else the one default.

    Args:
        dataset: any dataset of ``(x, i)`` items.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def offers(self, name: str) -> bool:
        """Whether the dataset has ``Collection`` member ``name`` (not None)."""
        if name not in _OPTIONAL:
            raise ValueError(f"'{name}' is not a member of deconvnet.data.Collection: {', '.join(_OPTIONAL)}")
        return getattr(self.dataset, name, None) is not None

    def __len__(self) -> int:
        return len(self.dataset)

    def label(self, i: int) -> str:
        """``dataset.label(i)``, else the index as text."""
        return self.dataset.label(i) if self.offers("label") else str(i)

    def group(self, i: int) -> Hashable:
        """``dataset.group(i)``, else the index: every item its own group."""
        return self.dataset.group(i) if self.offers("group") else i

    def source(self, i: int) -> str:
        """Where item ``i`` comes from, for a caption: its group as text, else its label."""
        return str(self.dataset.group(i)) if self.offers("group") else self.label(i)

    def describe(self) -> dict[str, Any]:
        """``dataset.describe()``, else its kind (the class name) and size."""
        if self.offers("describe"):
            return self.dataset.describe()
        return {"kind": type(self.dataset).__name__, "n_images": len(self.dataset)}

    @property
    def root(self) -> Any:
        """``dataset.root``, else None."""
        return getattr(self.dataset, "root", None)

    @property
    def paths(self) -> Any:
        """``dataset.paths``, else None."""
        return getattr(self.dataset, "paths", None)

    @property
    def preprocessing(self) -> Any:
        """``dataset.preprocessing``, else None."""
        return getattr(self.dataset, "preprocessing", None)

    def note_unreadable(self, indices: Sequence[int]) -> None:
        """``dataset.note_unreadable(indices)``; nothing where the dataset keeps no such record."""
        if self.offers("note_unreadable"):
            self.dataset.note_unreadable(indices)

    def view(self, i: int) -> tuple[str, tuple[float, float, float], bool] | None:
        """``dataset.view(i)``, else None."""
        return self.dataset.view(i) if self.offers("view") else None


def collate(items: Sequence[tuple[torch.Tensor | None, int]]) -> Batch:
    """``collate_fn`` for a ``DataLoader`` over an ``ImageFolder`` or the demo collection.

    Drops the items whose image could not be read (``x is None``) instead of failing, and reports their
    indices. It is a module-level function, so it pickles into worker processes under any start method.

    Args:
        items: ``(x, i)`` pairs as returned by the datasets' ``__getitem__``.

    Returns:
        A ``Batch`` of the readable items, with the indices of the others in ``skipped``.
    """
    good = [(x, int(i)) for x, i in items if x is not None]
    skipped = [int(i) for x, i in items if x is None]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
    x = torch.stack([x for x, _ in good])
    index = torch.tensor([i for _, i in good], dtype=torch.long)
    return Batch(x, index, skipped)


def batches(
    dataset: Dataset, *, batch_size: int = 32, num_workers: int = 0, **loader_kwargs: Any
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate over a collection in order, as ``(x, index)`` batches, skipping unreadable images.

    When the iteration ends (or is abandoned), the images that could not be decoded are recorded in the
    dataset (``ImageFolder.skipped``, hence ``describe()``) and counted in one ``UnreadableImagesWarning``.

    Args:
        dataset: an ``ImageFolder``, the demo collection, or any dataset of ``(x, i)`` items.
        batch_size: images per batch (the last batch and batches with unreadable images are smaller).
        num_workers: ``DataLoader`` worker processes (0: load in this process).
        **loader_kwargs: passed on to ``torch.utils.data.DataLoader`` (e.g. ``pin_memory=True``);
            ``shuffle``, ``sampler`` and ``collate_fn`` are not accepted, since the order is the dataset's.

    Yields:
        ``(x, index)``: (B, 3, H, W) model inputs and their (B,) int64 dataset indices; B >= 1.
    """
    for key in ("shuffle", "sampler", "batch_sampler", "collate_fn"):
        if key in loader_kwargs:
            raise ValueError(f"batches() does not take '{key}'. Hint: build a DataLoader with collate_fn=collate")
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate, **loader_kwargs
    )
    skipped: list[int] = []
    try:
        for batch in loader:
            skipped.extend(batch.skipped)
            if len(batch.index):
                yield batch.x, batch.index
    finally:
        if skipped:
            if Items(dataset).offers("note_unreadable"):
                Items(dataset).note_unreadable(skipped)
            else:
                warnings.warn(
                    f"skipped {len(skipped)} unreadable images (indices {skipped[:_NAMED]})",
                    UnreadableImagesWarning,
                    stacklevel=2,
                )
