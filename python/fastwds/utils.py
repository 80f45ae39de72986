"""Small helpers shared by the pipeline modules; the public names are those of `webdataset.utils`."""

from __future__ import annotations

import fnmatch
import functools
import glob
import hashlib
import importlib
import itertools
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import braceexpand
import numpy as np

T = TypeVar("T")

__all__ = [
    "enforce_security",
    "glob_with_braces",
    "fnmatch_with_braces",
    "make_seed",
    "is_iterable",
    "PipelineStage",
    "identity",
    "safe_eval",
    "lookup_sym",
    "repeatedly0",
    "guess_batchsize",
    "repeatedly",
    "pytorch_worker_info",
    "pytorch_worker_seed",
    "deprecated",
    "ObsoleteException",
    "obsolete",
    "compute_sample_weights",
    "iterable_dataset_base",
]

# Set WDS_SECURE=1 to refuse decoders and URL schemes that can run code (pickle, pipe:, ...).
enforce_security = bool(int(os.environ.get("WDS_SECURE", "0")))


def glob_with_braces(pattern: str) -> list[str]:
    """Return the paths matching a glob pattern that may also contain `{a,b}` / `{000..009}` braces."""
    return [path for pat in braceexpand.braceexpand(pattern) for path in glob.glob(pat)]


def fnmatch_with_braces(filename: str, pattern: str) -> bool:
    """Tell whether `filename` matches an fnmatch pattern that may also contain braces."""
    return any(fnmatch.fnmatch(filename, pat) for pat in braceexpand.braceexpand(pattern))


def _stable_hash(arg: Any) -> int:
    # hash() of str/bytes changes from process to process (PYTHONHASHSEED); a seed derived from it would differ
    # between DataLoader workers started with spawn and between runs, so those get a content hash instead.
    if isinstance(arg, str):
        arg = arg.encode("utf-8")
    if isinstance(arg, (bytes, bytearray)):
        return int.from_bytes(hashlib.blake2b(arg, digest_size=8).digest(), "little")
    return hash(arg)


def make_seed(*args: Any) -> int:
    """Combine the arguments into a non-negative 31-bit seed.

    Integers (and other values with a process-independent `hash`) give the same seed as webdataset; strings and
    bytes are hashed by content, so the seed is the same in every process (webdataset's changes per process).
    """
    seed = 0
    for arg in args:
        seed = (seed * 31 + _stable_hash(arg)) & 0x7FFFFFFF
    return seed


def is_iterable(obj: Any) -> bool:
    """Tell whether `obj` is iterable, not counting `str` and `bytes`."""
    if isinstance(obj, (str, bytes)):
        return False
    return isinstance(obj, (list, Iterable, Iterator))


class PipelineStage:
    """Base class of stages that a `DataPipeline` calls through their `run(source)` method.

    Subclasses implement `run(self, source)` returning an iterator (and optionally `invoke`).
    """

    def invoke(self, *args: Any, **kw: Any) -> Any:
        """Run the stage; subclasses that are invoked directly implement this."""
        raise NotImplementedError

    def run(self, *args: Any, **kw: Any) -> Any:
        """Run the stage on its source; subclasses implement this."""
        raise NotImplementedError


def identity(x: T) -> T:
    """Return `x` unchanged."""
    return x


def safe_eval(s: str, expr: str = "{}") -> Any:
    """Evaluate `expr.format(s)` after checking that `s` is a plain identifier or number.

    Raises ValueError when `s` has characters other than letters, digits and `_`.
    """
    if re.sub("[^A-Za-z0-9_]", "", s) != s:
        raise ValueError(f"safe_eval: illegal characters in: '{s}'")
    return eval(expr.format(s))


def lookup_sym(sym: str, modules: list[str]) -> Any:
    """Return the first attribute named `sym` found in `modules` (names, relative ones to fastwds), else None."""
    for mname in modules:
        module = importlib.import_module(mname, package="fastwds")
        result = getattr(module, sym, None)
        if result is not None:
            return result
    return None


def repeatedly0(loader: Iterable[T], nepochs: int = sys.maxsize, nbatches: int = sys.maxsize) -> Iterator[T]:
    """Iterate `loader` `nepochs` times, taking at most `nbatches` items from each pass."""
    for _ in range(nepochs):
        yield from itertools.islice(loader, nbatches)


def guess_batchsize(batch: tuple | list) -> int:
    """Return the batch size of a collated batch: the length of its first element."""
    return len(batch[0])


def repeatedly(
    source: Iterable[T],
    nepochs: int | None = None,
    nbatches: int | None = None,
    nsamples: int | None = None,
    batchsize: Callable[..., int] = guess_batchsize,
) -> Iterator[T]:
    """Iterate `source` again and again until `nepochs` passes, `nbatches` items or `nsamples` samples.

    `nsamples` counts `batchsize(item)` per item (the batch size of collated batches by default). Unlike
    webdataset, a `batchsize` function given here is actually used.
    """
    epoch = 0
    count = 0
    total = 0
    while True:
        for sample in source:
            yield sample
            count += 1
            if nbatches is not None and count >= nbatches:
                return
            if nsamples is not None:
                total += batchsize(sample)
                if total >= nsamples:
                    return
        epoch += 1
        if nepochs is not None and epoch >= nepochs:
            return


def pytorch_worker_info(group: Any = None) -> tuple[int, int, int, int]:
    """Return `(rank, world_size, worker, num_workers)` of the calling process.

    rank/world_size come from `torch.distributed` when it is initialised (for `group`, default the world
    group), else from the `RANK` and `WORLD_SIZE` environment variables, else (0, 1). worker/num_workers come
    from `torch.utils.data.get_worker_info()` inside a DataLoader worker, else from the `WORKER` and
    `NUM_WORKERS` environment variables, else (0, 1). torch is never imported just to ask: if it has not been
    imported, it cannot be initialised or running a DataLoader worker.
    """
    rank, world_size, worker, num_workers = 0, 1, 0, 1
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        group = group or dist.group.WORLD
        rank = dist.get_rank(group=group)
        world_size = dist.get_world_size(group=group)
    elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
    tud = sys.modules.get("torch.utils.data")
    info = tud.get_worker_info() if tud is not None else None
    if info is not None:
        worker = info.id
        num_workers = info.num_workers
    elif "WORKER" in os.environ and "NUM_WORKERS" in os.environ:
        worker = int(os.environ["WORKER"])
        num_workers = int(os.environ["NUM_WORKERS"])
    return rank, world_size, worker, num_workers


def pytorch_worker_seed(group: Any = None) -> int:
    """Return a seed distinct for each (rank, worker) pair: `rank * 1000 + worker`, as webdataset."""
    rank, _, worker, _ = pytorch_worker_info(group=group)
    return rank * 1000 + worker


def deprecated(arg: Callable[..., Any] | str | None = None) -> Callable[..., Any]:
    """Mark a function deprecated: calling it issues a `DeprecationWarning`.

    Usable bare (`@deprecated`) or with a reason (`@deprecated("use g")`).
    """
    reason = None if callable(arg) else arg

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def new_func(*args: Any, **kwargs: Any) -> Any:
            msg = f"Call to deprecated function {func.__name__}."
            if reason is not None:
                msg += " Reason: " + reason
            warnings.warn(msg, category=DeprecationWarning, stacklevel=2)
            return func(*args, **kwargs)

        return new_func

    return decorator(arg) if callable(arg) else decorator


class ObsoleteException(Exception):
    """Raised when an obsolete function is called without `ALLOW_OBSOLETE=1` in the environment."""


def obsolete(func: Callable[..., Any] | None = None, *, reason: str | None = None) -> Callable[..., Any]:
    """Mark a function obsolete: calling it raises `ObsoleteException` unless `ALLOW_OBSOLETE=1` is set."""
    if func is None:
        return functools.partial(obsolete, reason=reason)

    @functools.wraps(func)
    def new_func(*args: Any, **kwargs: Any) -> Any:
        if not int(os.environ.get("ALLOW_OBSOLETE", "0")):
            msg = f"Call to obsolete function {func.__name__}. Set env ALLOW_OBSOLETE=1 to permit."
            if reason is not None:
                msg += " Reason: " + reason
            raise ObsoleteException(msg)
        return func(*args, **kwargs)

    return new_func


def compute_sample_weights(n_w_pairs: list[tuple[float, float]]) -> np.ndarray:
    """Turn `(count, weight)` pairs into relative sampling weights `count * weight / max(count * weight)`."""
    ns = np.array([p[0] for p in n_w_pairs])
    ws = np.array([p[1] for p in n_w_pairs])
    weighted = ns * ws
    return weighted / np.amax(weighted)


@functools.cache
def iterable_dataset_base() -> type:
    """Return the base class for fastwds datasets: `torch.utils.data.IterableDataset`, or `object` without torch.

    With torch installed, datasets are real IterableDatasets (a DataLoader accepts them as such); without it
    they are plain iterables. Calling this imports torch when it is installed, so call it where a class is
    defined, not at `import fastwds` for modules that do not define datasets.
    """
    try:
        from torch.utils.data import IterableDataset
    except (ImportError, OSError):
        # OSError: a torch wheel whose shared libraries cannot be loaded is as good as no torch here.
        return object
    return IterableDataset
