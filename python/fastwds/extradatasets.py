"""Small datasets and wrappers: a mock dataset, repetition, and fixed epoch lengths."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from . import utils
from .pytorch import LazyIterableDataset
from .utils import PipelineStage

__all__ = ["MockDataset", "repeatedly", "with_epoch", "with_length"]


class MockDataset(LazyIterableDataset):
    """A dataset yielding the same `sample` `length` times (for tests and benchmarks)."""

    def __init__(self, sample: Any, length: int) -> None:
        self.sample = sample
        self.length = length

    def __iter__(self) -> Iterator[Any]:
        """Yield the sample `length` times."""
        for _ in range(self.length):
            yield self.sample


class repeatedly(LazyIterableDataset, PipelineStage):
    """Iterate `source` repeatedly: up to `nepochs` passes and `nbatches` items (None: no limit).

    (webdataset's class forgets `nepochs` and fails when invoked; this one works.)
    """

    def __init__(
        self,
        source: Iterable[Any],
        nepochs: int | None = None,
        nbatches: int | None = None,
        length: int | None = None,
    ) -> None:
        self.source = source
        self.length = length
        self.nepochs = nepochs
        self.nbatches = nbatches

    def invoke(self, source: Iterable[Any]) -> Iterator[Any]:
        """Return an iterator repeating `source`."""
        return utils.repeatedly(source, nepochs=self.nepochs, nbatches=self.nbatches)

    def run(self, source: Iterable[Any]) -> Iterator[Any]:
        """As a pipeline stage: repeat the previous stage's samples."""
        return self.invoke(source)

    def __iter__(self) -> Iterator[Any]:
        """Repeat the dataset given at construction."""
        return self.invoke(self.source)


class with_epoch(LazyIterableDataset):
    """Impose epochs of exactly `length` samples on `dataset`: each epoch iterates it afresh and restarts
    it whenever it ends early (an empty dataset ends the epoch)."""

    def __init__(self, dataset: Iterable[Any], length: int) -> None:
        super().__init__()
        self.dataset = dataset
        self.length = length
        self.source: Iterator[Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the running iterator."""
        result = dict(self.__dict__)
        result["source"] = None
        return result

    def invoke(self, dataset: Iterable[Any]) -> Iterator[Any]:
        """Yield `length` samples of `dataset`, restarting it whenever it ends."""
        if self.source is None:
            self.source = iter(dataset)
        for _ in range(self.length):
            try:
                sample = next(self.source)
            except StopIteration:
                self.source = iter(dataset)
                try:
                    sample = next(self.source)
                except StopIteration:
                    return
            yield sample
        self.source = None

    def __iter__(self) -> Iterator[Any]:
        """One epoch of `length` samples of the dataset given at construction."""
        return self.invoke(self.dataset)


class with_length(LazyIterableDataset, PipelineStage):
    """`dataset` with a `__len__` returning `length` (the samples are unchanged)."""

    def __init__(self, dataset: Iterable[Any], length: int) -> None:
        super().__init__()
        self.dataset = dataset
        self.length = length

    def invoke(self, dataset: Iterable[Any]) -> Iterator[Any]:
        """Return an iterator over `dataset`."""
        return iter(dataset)

    def run(self, dataset: Iterable[Any]) -> Iterator[Any]:
        """As a pipeline stage: pass the previous stage's samples through."""
        return self.invoke(dataset)

    def __iter__(self) -> Iterator[Any]:
        """Iterate the dataset given at construction."""
        return iter(self.dataset)

    def __len__(self) -> int:
        """Return the stated length."""
        return self.length
