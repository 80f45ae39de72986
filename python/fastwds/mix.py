"""Datasets that mix samples from several datasets: in turn (`RoundRobin`) or at random (`RandomMix`)."""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .pytorch import LazyIterableDataset

__all__ = ["round_robin_shortest", "round_robin_longest", "RoundRobin", "random_samples", "RandomMix"]


def round_robin_shortest(*sources: Iterator[Any]) -> Iterator[Any]:
    """Yield one sample from each source in turn; stop as soon as one source is exhausted."""
    if not sources:
        return
    while True:
        for source in sources:
            try:
                sample = next(source)
            except StopIteration:
                return
            yield sample


def round_robin_longest(*sources: Iterator[Any]) -> Iterator[Any]:
    """Yield one sample from each source in turn, dropping exhausted sources, until all are exhausted."""
    active = list(sources)
    i = 0
    while active:
        i %= len(active)
        try:
            sample = next(active[i])
        except StopIteration:
            # The next source slides into position i, so it is asked next.
            del active[i]
            continue
        i += 1
        yield sample


class RoundRobin(LazyIterableDataset):
    """Iterate several datasets in turn, one sample from each.

    With `longest=False` the iteration ends when the first dataset is exhausted; with `longest=True` exhausted
    datasets drop out and it ends when all are. An instance is a torch IterableDataset when torch is installed
    (torch is imported when the first one is created, not when this module is).
    """

    def __init__(self, datasets: Sequence[Iterable[Any]], longest: bool = False) -> None:
        self.datasets = datasets
        self.longest = longest

    def __iter__(self) -> Iterator[Any]:
        """Start a fresh pass over all datasets."""
        sources = [iter(d) for d in self.datasets]
        if self.longest:
            return round_robin_longest(*sources)
        return round_robin_shortest(*sources)


def _cumulative(probs: list[float]) -> list[float]:
    # Computed with numpy exactly as webdataset does, so that the same random() draw picks the same source.
    total = np.sum(probs)
    if total == 0:
        # Only zero-weight sources are left: webdataset's 0/0 (with a RuntimeWarning) makes every pick the
        # first of them; an all-infinite list does the same without the warning.
        return [float("inf")] * len(probs)
    return (np.array(probs) / total).cumsum().tolist()


def random_samples(
    sources: list[Iterator[Any]], probs: Sequence[float] | None = None, longest: bool = False
) -> Iterator[Any]:
    """Yield samples from sources picked at random with weights `probs` (equal weights when None).

    Each pick draws one `random.random()` from the global `random` generator, so `random.seed(s)` makes the
    sequence reproducible and identical to webdataset's. With `longest=False` it stops when the picked source
    is exhausted; with `longest=True` that source drops out and the rest go on until all are exhausted
    (sources of weight zero are drained in order once only they are left, as webdataset does).
    """
    sources = list(sources)
    probs = [1] * len(sources) if probs is None else list(probs)
    draw = random.random
    cum = _cumulative(probs) if sources else []
    while sources:
        # bisect_left over the same cumulative values is numpy.searchsorted(cum, r); the clamp covers a last
        # cumulative value rounded just below 1.0, where webdataset raises IndexError.
        i = min(bisect.bisect_left(cum, draw()), len(sources) - 1)
        try:
            sample = next(sources[i])
        except StopIteration:
            if not longest:
                return
            del sources[i]
            del probs[i]
            cum = _cumulative(probs) if sources else []
            continue
        yield sample


class RandomMix(LazyIterableDataset):
    """Iterate several datasets, taking each sample from a dataset picked at random with weights `probs`.

    See `random_samples` for the draws and the meaning of `longest`. An instance is a torch IterableDataset
    when torch is installed (torch is imported when the first one is created, not when this module is).
    """

    def __init__(
        self,
        datasets: Sequence[Iterable[Any]],
        probs: Sequence[float] | None = None,
        longest: bool = False,
    ) -> None:
        self.datasets = datasets
        self.probs = probs
        self.longest = longest

    def __iter__(self) -> Iterator[Any]:
        """Start a fresh pass over all datasets."""
        sources = [iter(d) for d in self.datasets]
        return random_samples(sources, self.probs, longest=self.longest)


def __getattr__(name: str) -> Any:
    # webdataset.mix exposes torch's IterableDataset (its base class); resolved late so no torch at import.
    if name == "IterableDataset":
        from . import pytorch

        return pytorch.IterableDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
