"""Exact, balanced epochs across ranks: `WebDataset(urls, balanced="pad" | "drop")`.

In this mode every rank yields the same number of samples per epoch, every DataLoader worker of a rank the
same number as the worker with its id on every other rank (so every rank yields the same number of batches),
and no sample is read twice in an epoch except the marked padding. Each epoch:

1. The shards are ordered, the same way on every rank: as given, or (with `shardshuffle`) shuffled by a
   generator seeded with the dataset's seed and the epoch.
2. Their samples, counted by the shard indexes (`fastwds.shardindex`; `fastwds index URLS` builds missing
   ones), are concatenated in that order into one sequence of N samples.
3. The sequence is cut into `world_size` contiguous ranges of equal length L: with `"drop"` L = N //
   world_size and the last N % world_size samples are not read; with `"pad"` L = ceil(N / world_size) and the
   positions past N wrap around to the start of the sequence, samples read again with `__pad__` set to True
   (every other sample has `__pad__` False) so that evaluation can mask them.
4. The rank's range is cut into contiguous parts for its DataLoader workers, as evenly as possible (the
   first `L % num_workers` workers take one sample more).
5. A worker reads its part as spans of shards (`{"url", "start", "end"}`: from a sample's first header to the
   next sample's, from the index's offsets), so a part may start and end inside a shard.

`BalancedShards` is the pipeline's source stage that yields those spans; `BalancedSamples`, the tar stage,
reads them in order and sets `__pad__` by counting: each span says how many samples it holds and whether
they are padding, and the reader yields the spans' samples span after span.
"""

from __future__ import annotations

import os
import random
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from . import shardindex
from .reader import ShardSamples, local_path
from .utils import PipelineStage, pytorch_worker_info

__all__ = [
    "BALANCED_MODES",
    "BalancedSamples",
    "BalancedShards",
    "MissingIndexError",
    "Piece",
    "epoch_pieces",
    "rank_length",
    "shard_order",
    "worker_range",
]

BALANCED_MODES = ("pad", "drop")
"""The values of `WebDataset(balanced=...)` besides None."""


class MissingIndexError(ValueError):
    """A shard has no usable index (none beside it, or a stale one), which balanced epochs and `len()` need."""


class Piece(NamedTuple):
    """A run of consecutive samples of one shard in a worker's part of an epoch: samples `first` up to (not
    including) `stop` of the shard at position `shard` of the URL list; `pad` when they are padding."""

    shard: int
    first: int
    stop: int
    pad: bool


def _check_mode(mode: str) -> None:
    if mode not in BALANCED_MODES:
        raise ValueError(f"balanced={mode!r}: use one of {', '.join(map(repr, BALANCED_MODES))} or None")


def rank_length(total: int, world_size: int, mode: str) -> int:
    """The number of samples each rank yields per epoch when the epoch has `total` samples: ceil(total /
    world_size) for `"pad"`, total // world_size for `"drop"`."""
    _check_mode(mode)
    if world_size < 1:
        raise ValueError(f"world_size {world_size} must be at least 1")
    if mode == "pad":
        return -(-total // world_size)
    return total // world_size


def worker_range(length: int, num_workers: int, worker: int) -> tuple[int, int]:
    """The part [lo, hi) of a rank's `length` samples that DataLoader worker `worker` of `num_workers` reads:
    contiguous, the first `length % num_workers` workers one sample more than the others."""
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} is not one of {num_workers} workers")
    base, extra = divmod(length, num_workers)
    lo = worker * base + min(worker, extra)
    return lo, lo + base + (worker < extra)


def shard_order(nshards: int, shuffle: bool, seed: Any, epoch: int) -> list[int]:
    """The positions of the shards in the URL list, in the order epoch `epoch` reads them: as listed, or
    shuffled by a generator seeded with `seed` and `epoch` (the same on every rank and in every process)."""
    order = list(range(nshards))
    if shuffle:
        random.Random(f"{seed}/balanced/{epoch}").shuffle(order)
    return order


def epoch_pieces(
    counts: Sequence[int],
    order: Sequence[int],
    mode: str,
    rank: int,
    world_size: int,
    worker: int = 0,
    num_workers: int = 1,
) -> list[Piece]:
    """The pieces of shards a worker reads in an epoch, in reading order (see the module's description).

    `counts[i]` is the sample count of shard i and `order` the epoch's shard order (a permutation of
    positions in `counts`)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not one of {world_size} ranks")
    total = sum(counts[k] for k in order)
    length = rank_length(total, world_size, mode)
    lo, hi = worker_range(length, num_workers, worker)
    start, stop = rank * length + lo, rank * length + hi
    pieces: list[Piece] = []
    if start >= stop:
        return pieces
    # Walk the order (around again for the padding) from the shard holding position `start`.
    ends = []
    running = 0
    for k in order:
        running += counts[k]
        ends.append(running)
    position = start
    while position < stop:
        lap, within = divmod(position, total)
        # The first shard in the order whose samples reach past `within`.
        i = _bisect_right(ends, within)
        shard_start = ends[i] - counts[order[i]]
        first = within - shard_start
        take = min(counts[order[i]] - first, stop - position)
        pieces.append(Piece(order[i], first, first + take, lap > 0))
        position += take
    return pieces


def _bisect_right(ends: list[int], value: int) -> int:
    lo, hi = 0, len(ends)
    while lo < hi:
        mid = (lo + hi) // 2
        if ends[mid] <= value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _distributed() -> bool:
    """Whether torch.distributed is initialised in this process."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def _missing(url: str) -> MissingIndexError:
    return MissingIndexError(
        f"{url}: no usable shard index (none at {url}{shardindex.SUFFIX}, or a stale one); exact epochs "
        "and len() count samples from indexes: build them with `fastwds index URLS`"
    )


def sample_counts(
    urls: Sequence[str], index_dir: str | None = None, storage_options: dict[str, Any] | None = None
) -> list[int]:
    """The sample count of each shard from its index. Raises `MissingIndexError` naming the first shard
    without a usable one (missing or stale)."""

    def count(url: str) -> int | None:
        return shardindex.sample_count(url, index_dir=index_dir, storage_options=storage_options)

    if len(urls) > 8 and any(local_path(u) is None for u in urls):
        # Remote indexes: fetched a few at a time.
        with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
            counts = list(pool.map(count, urls))
    else:
        counts = [count(u) for u in urls]
    for url, n in zip(urls, counts):
        if n is None:
            raise _missing(url)
    return [n for n in counts if n is not None]


class BalancedShards(PipelineStage):
    """The source stage of a balanced `WebDataset`: each pass (an epoch) yields this worker's spans of shards,
    `{"url", "start", "end", "samples", "pad"}` (see the module's description).

    `mode` is `"pad"` or `"drop"`; with `shuffle` the shard order of epoch e comes from `seed` and e. Rank and
    world size come from `torch.distributed` (else the `RANK`/`WORLD_SIZE` environment variables), the worker
    from the DataLoader (`fastwds.utils.pytorch_worker_info`); a worker started by spawn, where
    torch.distributed is not initialised, takes the rank and world size of the process that sent it the
    dataset. The sample counts are read from the shards'
    indexes once, on first use (`counts()`); a shard without a usable index raises `MissingIndexError`.
    `epoch` is the last pass's epoch (-1 before the first); `WebDataset.set_epoch` sets it.
    """

    def __init__(
        self,
        urls: Iterable[str],
        mode: str,
        *,
        shuffle: bool = False,
        seed: Any = 0,
        index_dir: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        _check_mode(mode)
        self.urls = [os.fspath(u) for u in urls]
        if not self.urls:
            raise ValueError("the shard list is empty")
        self.mode = mode
        self.shuffle = shuffle
        self.seed = seed
        self.index_dir = index_dir
        self.storage_options = storage_options  # for indexes in s3:// and gs:// buckets
        self.epoch = -1
        self._counts: list[int] | None = None

    def __repr__(self) -> str:
        return (
            f"<balanced_shards ({len(self.urls)} shards,) {{'mode': {self.mode!r}, 'shuffle': {self.shuffle}, "
            f"'seed': {self.seed!r}, 'epoch': {self.epoch}}}>"
        )

    def counts(self) -> list[int]:
        """The sample count of each shard, from the indexes (read on the first call)."""
        if self._counts is None:
            self._counts = sample_counts(self.urls, self.index_dir, self.storage_options)
        return self._counts

    def total(self) -> int:
        """The number of samples in an epoch before it is cut between ranks."""
        return sum(self.counts())

    def rank_length(self, world_size: int | None = None) -> int:
        """The number of samples each rank yields per epoch (for the world size of this process by default)."""
        if world_size is None:
            world_size = pytorch_worker_info()[1]
        return rank_length(self.total(), world_size, self.mode)

    def pieces(
        self, epoch: int, rank: int, world_size: int, worker: int = 0, num_workers: int = 1
    ) -> list[Piece]:
        """The pieces of shards that worker `worker` of `num_workers` on rank `rank` reads in epoch `epoch`."""
        counts = self.counts()
        order = shard_order(len(counts), self.shuffle, self.seed, epoch)
        return epoch_pieces(counts, order, self.mode, rank, world_size, worker, num_workers)

    def __getstate__(self) -> dict[str, Any]:
        # Sent to a DataLoader worker started by spawn or forkserver, where torch.distributed is not
        # initialised: the worker takes the rank and world size this process has.
        state = self.__dict__.copy()
        state["_ranks"] = pytorch_worker_info()[:2]
        return state

    def run(self) -> Iterator[dict[str, Any]]:
        """Start the next epoch and yield this worker's spans."""
        self.epoch += 1
        rank, world_size, worker, num_workers = pytorch_worker_info()
        ranks = self.__dict__.get("_ranks")
        if ranks is not None and not _distributed():
            rank, world_size = ranks
        return self.spans(self.pieces(self.epoch, rank, world_size, worker, num_workers))

    def spans(self, pieces: Iterable[Piece]) -> Iterator[dict[str, Any]]:
        """The span dicts of `pieces`, loading each shard's index as it is reached."""
        counts = self.counts()
        for piece in pieces:
            url = self.urls[piece.shard]
            index = shardindex.load_index(url, index_dir=self.index_dir, storage_options=self.storage_options)
            if index is None:
                raise _missing(url)
            if index.count != counts[piece.shard]:
                raise MissingIndexError(
                    f"{url}: its index now counts {index.count} samples, not {counts[piece.shard]}: the "
                    "shard changed during training"
                )
            end = index.offsets[piece.stop] if piece.stop < index.count else index.end
            yield {
                "url": url,
                "start": index.offsets[piece.first],
                "end": end,
                "samples": piece.stop - piece.first,
                "pad": piece.pad,
            }


class BalancedSamples(ShardSamples):
    """The tar stage of a balanced `WebDataset`: `ShardSamples` reading the spans of `BalancedShards` in order
    and setting each sample's `__pad__` (True for padding, else False).

    The reader yields the samples of the spans span after span, so the n-th sample belongs to the span whose
    counts reach past n; a sample from another shard than the current span's (the span's shard failed and
    `handler` skipped the rest) moves on to the next span of its shard.
    """

    def __call__(self, src: Iterable[Any], _track: Any = None) -> Iterator[dict[str, Any]]:
        """Return the samples of the spans in `src`, with `__pad__` (`_track` as for `ShardSamples`)."""
        plan: deque[tuple[str, int, bool]] = deque()
        # Samples of a shuffle buffer read again when resuming come first, with their `__pad__` set.
        reread = len(_track.reread) if _track is not None else 0

        def noted(spans: Iterable[Any]) -> Iterator[Any]:
            for span in spans:
                plan.append((span["url"], span.get("samples", -1), bool(span.get("pad", False))))
                yield span

        url: str | None = None
        left = 0
        pad = False
        for sample in super().__call__(noted(src), _track):
            if reread:
                reread -= 1
                yield sample
                continue
            sample_url = sample.get("__url__")
            while left == 0 or sample_url != url:
                url, left, pad = plan.popleft()
            left -= 1
            sample["__pad__"] = pad
            yield sample
