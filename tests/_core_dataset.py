"""A torch IterableDataset over `fastwds._core.ShardReader`, in a module of its own so that DataLoader
workers started by spawn can import it (tests/ is not a package)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch.utils.data

from fastwds import _core


class WorkerShards:
    """The shards of the current DataLoader worker (all of them outside a worker), chosen when iterated."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)

    def __iter__(self) -> Iterator[str]:
        info = torch.utils.data.get_worker_info()
        if info is None:
            return iter(self.urls)
        return iter(self.urls[info.id :: info.num_workers])


class CoreShardsDataset(torch.utils.data.IterableDataset):
    """Samples of `urls` read by one ShardReader, which workers receive pickled (spawn) or inherit (fork)."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__()
        self.reader = _core.ShardReader(WorkerShards(urls), threads=2)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample in self.reader:
            yield {**sample, "pid": os.getpid()}
