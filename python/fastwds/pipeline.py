"""`DataPipeline`: a dataset made of a source followed by stages, each a function from iterator to iterator."""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Iterator
from itertools import islice
from typing import Any, TypeVar

from .pytorch import LazyIterableDataset
from .utils import PipelineStage

__all__ = ["DataPipeline", "add_length_method"]

# A pipeline's own class, which is the class of the copies its methods return.
_Pipeline = TypeVar("_Pipeline", bound="DataPipeline")


def add_length_method(obj: Any) -> Any:
    """Give `obj` (a fastwds dataset) a `__len__` returning `obj.size`; returns `obj`."""
    obj._set_sized()
    return obj


def _is_dataset_or_loader(f: Any) -> bool:
    if isinstance(f, LazyIterableDataset):
        return True
    # torch cannot have made a dataset or loader unless it was imported.
    tud = sys.modules.get("torch.utils.data")
    return tud is not None and isinstance(f, (tud.IterableDataset, tud.DataLoader))


class DataPipeline(LazyIterableDataset, PipelineStage):
    """A pipeline: a source (a dataset, a DataLoader, a list or a function returning an iterator) followed by
    stages (functions from iterator to iterator, or `PipelineStage`s), iterated afresh for each epoch.

    Positional arguments are the stages in order; `None` is skipped and a list is spliced in.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.pipeline: list[Any] = []
        self.length = -1
        self.repetitions = 1
        self.nsamples = -1
        for arg in args:
            if arg is None:
                continue
            if isinstance(arg, list):
                self.pipeline.extend(arg)
            else:
                self.pipeline.append(arg)

    def close(self) -> None:
        """Close every stage that has a `close` method and drop the stages."""
        for step in self.pipeline:
            if hasattr(step, "close"):
                step.close()
        del self.pipeline

    def invoke(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one stage: iterate a source (no arguments), or call a stage on the previous stage's iterator.

        Raises ValueError when `f` is none of: a dataset, a DataLoader, a list, a `PipelineStage`, a callable.
        """
        if not args and not kwargs and _is_dataset_or_loader(f):
            return iter(f)
        if isinstance(f, PipelineStage):
            return f.run(*args, **kwargs)
        if isinstance(f, list):
            return iter(f)
        if callable(f):
            return f(*args, **kwargs)
        if not args and not kwargs and hasattr(f, "__iter__"):
            return iter(f)
        raise ValueError(f"{f}: not a valid pipeline stage")

    def iterator1(self) -> Iterator[Any]:
        """Return an iterator over one pass of the pipeline."""
        source = self.invoke(self.pipeline[0])
        for step in self.pipeline[1:]:
            source = self.invoke(step, source)
        return source

    def iterator(self) -> Iterator[Any]:
        """Iterate the pipeline `self.repetitions` times; stops early when a pass yields nothing."""
        for _ in range(self.repetitions):
            count = 0
            for sample in self.iterator1():
                yield sample
                count += 1
            if count == 0:
                # An empty dataset would otherwise loop forever.
                break

    def __iter__(self) -> Iterator[Any]:
        """Iterate one epoch: one pass, or the repetitions and sample limit set by `repeat`/`with_epoch`."""
        if self.repetitions != 1:
            if self.nsamples > 0:
                return islice(self.iterator(), self.nsamples)
            return self.iterator()
        # One pass: the stages' iterator itself, without a generator layer per sample.
        return iter(self.iterator1())

    def stage(self, i: int) -> Any:
        """Return stage `i`."""
        return self.pipeline[i]

    def append(self, f: Any) -> None:
        """Append a stage to this pipeline (in place)."""
        self.pipeline.append(f)

    def compose(self: _Pipeline, *args: Any) -> _Pipeline:
        """Return a copy of this pipeline with the stages `args` appended; this one is unchanged."""
        result = copy.copy(self)
        result.pipeline = copy.copy(result.pipeline)
        for arg in args:
            result.append(arg)
        return result

    def with_last_stage(self: _Pipeline, stage: Any) -> _Pipeline:
        """Return a copy of this pipeline whose last stage is `stage` instead; this one is unchanged."""
        result = copy.copy(self)
        result.pipeline = [*result.pipeline[:-1], stage]
        return result

    def with_length(self: _Pipeline, n: int, silent: bool = False) -> _Pipeline:
        """Give the pipeline a `__len__` returning `n` (for trainers that want one); returns self.

        This does not change how many samples an epoch has. Warns (UserWarning) unless `silent`.
        """
        if not silent:
            warnings.warn(
                ".with_length() only sets the value of __len__ for compatibility "
                + "with some training environments. It does not change the number of "
                + "samples in an epoch.",
                stacklevel=2,
            )
        self.size = n
        return add_length_method(self)

    def with_epoch(self: _Pipeline, nsamples: int = -1, nbatches: int = -1) -> _Pipeline:
        """Make each epoch exactly `max(nsamples, nbatches)` items, restarting the source as often as needed;
        returns self. For endless (resampled) sources this is how an epoch gets an end."""
        self.repetitions = sys.maxsize
        self.nsamples = max(nsamples, nbatches)
        return self

    def repeat(self: _Pipeline, nepochs: int = -1, nbatches: int = -1) -> _Pipeline:
        """Make each epoch `nepochs` passes over the source (endless when `nepochs <= 0`), cut at `nbatches`
        items when that is positive; returns self."""
        if nepochs > 0:
            self.repetitions = nepochs
            self.nsamples = nbatches
        else:
            self.repetitions = sys.maxsize
            self.nsamples = nbatches
        return self
