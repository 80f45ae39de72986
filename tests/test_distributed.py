"""Multi-node: two processes on 127.0.0.1 with torch.distributed (gloo) split the shards between them."""

from __future__ import annotations

import multiprocessing
import os
import socket
import traceback

import pytest
from torch.utils.data import DataLoader

import fastwds as wds


def key_of(sample):
    return sample["__key__"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_main(rank: int, port: int, urls: list[str], queue: multiprocessing.Queue) -> None:
    """One node: join the group, read its share alone and through 2 DataLoader workers, report back."""
    try:
        # Misleading environment: an initialised torch.distributed takes precedence over RANK/WORLD_SIZE.
        os.environ["RANK"] = "0"
        os.environ["WORLD_SIZE"] = "1"
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        try:
            ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node).map(key_of)
            alone = list(ds)
            loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
            with_workers = list(loader)
            try:
                list(wds.WebDataset(urls, shardshuffle=False))
                single = "no error"
            except ValueError as exn:
                single = str(exn)
            everyone: list[list[str] | None] = [None, None]
            dist.all_gather_object(everyone, alone)
        finally:
            dist.destroy_process_group()
        queue.put((rank, alone, with_workers, single, everyone))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc(), None, None))


@pytest.mark.timeout(120)
def test_two_nodes_read_disjoint_halves(shard_factory):
    urls = shard_factory(nshards=8, per_shard=2)
    all_keys = [f"sample{i:06d}" for i in range(16)]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=node_main, args=(rank, port, urls, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    try:
        results = sorted(queue.get(timeout=100) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    for rank, alone, detail, *_ in results:
        assert alone != "error", f"node {rank} failed:\n{detail}"
    (_, alone0, workers0, single0, everyone0), (_, alone1, workers1, _, _) = results
    # Node r reads shards r, r + 2, ... in order.
    assert alone0 == [k for i in (0, 2, 4, 6) for k in all_keys[2 * i : 2 * i + 2]]
    assert alone1 == [k for i in (1, 3, 5, 7) for k in all_keys[2 * i : 2 * i + 2]]
    assert sorted(alone0 + alone1) == all_keys
    assert everyone0 == [alone0, alone1]
    # Inside each node, DataLoader workers split the node's shards again: each sample once overall.
    assert sorted(workers0) == sorted(alone0) and sorted(workers1) == sorted(alone1)
    assert "nodesplitter" in single0
