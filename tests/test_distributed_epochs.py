"""Exact, balanced epochs on two real ranks: two processes on 127.0.0.1 with torch.distributed (gloo), each
reading `WebDataset(balanced=...)` through a DataLoader (batch size 4, 0 and 2 workers) and taking part in an
all-reduce at every step, so a rank with more batches than the other would make the collectives time out."""

from __future__ import annotations

import multiprocessing
import os
import socket
import traceback
from datetime import timedelta

import pytest

import fastwds as wds

SIZES = [3, 40, 7, 12, 3, 25, 9]  # 99 samples: "pad" adds one, "drop" leaves one out
BATCH = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_shards(directory: str) -> list[str]:
    urls = []
    for s, n in enumerate(SIZES):
        path = os.path.join(directory, f"train-{s:03d}.tar")
        with wds.TarWriter(path) as sink:  # writes the shard's index too
            for i in range(n):
                sink.write({"__key__": f"s{s}-{i:02d}", "txt": "x" * (i * 37 % 700), "cls": i})
        urls.append(path)
    return urls


def run_epoch(loader, dist, torch) -> tuple[list[tuple[str, bool]], int]:
    """Iterate the loader, all-reducing at every step; the (key, pad) pairs read and the number of steps."""
    seen: list[tuple[str, bool]] = []
    steps = 0
    for keys, pads in loader:
        assert len(keys) <= BATCH
        seen.extend(zip(keys, (bool(p) for p in pads)))
        # Each rank sends its step number: the maximum must be this rank's own step on both ranks.
        step = torch.tensor([steps], dtype=torch.int64)
        dist.all_reduce(step, op=dist.ReduceOp.MAX)
        assert int(step) == steps, f"the other rank is at step {int(step)}, this one at {steps}"
        steps += 1
    return seen, steps


def node_main(rank: int, port: int, urls: list[str], queue: multiprocessing.Queue) -> None:
    """One rank: read every (mode, num_workers) configuration for two epochs, report what it saw."""
    try:
        # Misleading environment: an initialised torch.distributed takes precedence over RANK/WORLD_SIZE.
        os.environ["RANK"] = "0"
        os.environ["WORLD_SIZE"] = "1"
        import torch
        import torch.distributed as dist
        from torch.utils.data import DataLoader

        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=2,
            timeout=timedelta(seconds=20),
        )
        results = {}
        try:
            for mode in ("pad", "drop"):
                ds = wds.WebDataset(urls, balanced=mode, shardshuffle=10, seed=11).to_tuple(
                    "__key__", "__pad__"
                )
                length = len(ds)
                for workers in (0, 2):
                    for epoch in (0, 1):
                        ds.set_epoch(epoch)
                        context = "fork" if workers else None
                        loader = DataLoader(
                            ds, batch_size=BATCH, num_workers=workers, multiprocessing_context=context
                        )
                        seen, steps = run_epoch(loader, dist, torch)
                        everyone: list = [None, None]
                        dist.all_gather_object(everyone, (seen, steps))
                        results[mode, workers, epoch] = (length, everyone)
            # Workers started by spawn (torch.distributed not initialised there) take the rank from the parent.
            ds = wds.WebDataset(urls, balanced="pad", shardshuffle=10, seed=11).to_tuple("__key__", "__pad__")
            loader = DataLoader(ds, batch_size=BATCH, num_workers=2, multiprocessing_context="spawn")
            seen, steps = run_epoch(loader, dist, torch)
            everyone = [None, None]
            dist.all_gather_object(everyone, (seen, steps))
            results["pad", "spawn", 0] = (len(ds), everyone)
            dist.barrier()
        finally:
            dist.destroy_process_group()
        queue.put((rank, results, None))
    except BaseException:
        queue.put((rank, None, traceback.format_exc()))


@pytest.mark.timeout(90)
def test_two_ranks_balanced_epochs(tmp_path):
    urls = write_shards(str(tmp_path))
    all_keys = sorted(f"s{s}-{i:02d}" for s, n in enumerate(SIZES) for i in range(n))
    total = len(all_keys)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=node_main, args=(rank, port, urls, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    try:
        reports = sorted((queue.get(timeout=80) for _ in procs), key=lambda r: r[0])
    finally:
        for p in procs:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
    for rank, _, error in reports:
        assert error is None, f"rank {rank} failed:\n{error}"
    (_, results0, _), (_, results1, _) = reports
    assert results0 == results1  # both ranks gathered the same
    orders = {}
    for (mode, workers, epoch), (length, (rank0, rank1)) in results0.items():
        (seen0, steps0), (seen1, steps1) = rank0, rank1
        assert steps0 == steps1 > 0, (mode, workers, epoch)
        assert len(seen0) == len(seen1) == length, (mode, workers, epoch)
        keys = [k for k, pad in seen0 + seen1 if not pad]
        if mode == "pad":
            assert length == -(-total // 2)
            assert sorted(keys) == all_keys, (workers, epoch)
            assert sum(pad for _, pad in seen0 + seen1) == 2 * length - total
        else:
            assert length == total // 2
            assert not any(pad for _, pad in seen0 + seen1)
            assert len(keys) == len(set(keys))
            assert 0 <= total - len(keys) <= 2 * BATCH - 1  # at most one batch per rank's worth left out
        # The epoch's order is the same with and without workers (split differently among them).
        orders.setdefault((mode, epoch), []).append(sorted(k for k, _ in seen0))
    assert len(orders["pad", 0]) == 3  # no workers, 2 forked workers, 2 spawned workers
    for (mode, epoch), (without, *with_workers) in orders.items():
        assert all(keys == without for keys in with_workers), (mode, epoch)
    # The shard order changes with the epoch.
    assert orders["pad", 0][0] != orders["pad", 1][0]
