"""fastwds readers and writers inside Dask tasks: a LocalCluster of two worker processes reads shards with
`ShardReader`/`WebDataset` and writes shards with `ShardWriter`; results equal a local run, readers pickle
into tasks, and repeated tasks leak no threads, file descriptors or child processes on the workers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle  # installed with dask[distributed], as psutil is
import distributed
import pytest

import fastwds
from conftest import reference, write_shards

# Task functions defined here must travel by value: the worker processes cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def client():
    """A Dask client on a local cluster of 2 worker processes with one thread each, closed after the module."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    )
    dask_client = distributed.Client(cluster)
    try:
        yield dask_client
    finally:
        dask_client.close()
        cluster.close()


def transform_shard(url: str, pattern: str) -> dict:
    """A conversion task: reads one shard with fastwds.WebDataset, upper-cases the text and adds a field,
    writes the result with ShardWriter (two samples per output shard); returns what it wrote."""
    written: list[str] = []
    dataset = fastwds.WebDataset(url, shardshuffle=False)
    with fastwds.ShardWriter(pattern, maxcount=2, post=written.append, verbose=0) as sink:
        for sample in dataset:
            sink.write(
                {
                    "__key__": sample["__key__"],
                    "txt": sample["txt"].upper(),
                    "cls": sample["cls"],
                    "pid.txt": str(os.getpid()),
                }
            )
    return {"written": written, "pid": os.getpid()}


def read_contents(paths: list[str]) -> list[dict]:
    """Samples of output shards as webdataset 1.0.2 reads them, without the worker pid field."""
    import webdataset

    def read():
        return [
            {k: v for k, v in s.items() if k not in ("__url__", "__local_path__", "pid.txt")}
            for s in webdataset.WebDataset(paths, shardshuffle=False)
        ]

    return reference(read)


def test_tasks_read_and_write_shards_like_a_local_run(client, tmp_path):
    inputs = write_shards(tmp_path / "in", nshards=4, per_shard=5)
    (tmp_path / "dask").mkdir()
    (tmp_path / "local").mkdir()
    patterns = [str(tmp_path / "dask" / f"{Path(u).stem}-%02d.tar") for u in inputs]
    futures = client.map(transform_shard, inputs, patterns, pure=False)
    results = client.gather(futures)
    local = [transform_shard(u, str(tmp_path / "local" / f"{Path(u).stem}-%02d.tar")) for u in inputs]

    # The work really ran in the worker processes, spread over both.
    assert {r["pid"] for r in results} <= set(client.run(os.getpid).values())
    assert os.getpid() not in {r["pid"] for r in results}
    assert len({r["pid"] for r in results}) == 2
    dask_files = [p for r in results for p in r["written"]]
    local_files = [p for r in local for p in r["written"]]
    assert [Path(p).name for p in dask_files] == [Path(p).name for p in local_files]
    assert len(dask_files) == 12  # 5 samples per input, 2 per output shard
    assert read_contents(dask_files) == read_contents(local_files)
    first = read_contents(dask_files[:1])[0]
    assert first == {"__key__": "sample000000", "txt": b"SAMPLE NUMBER 0", "cls": b"0"}


def test_shard_reader_pickles_into_a_task(client, tmp_path):
    inputs = write_shards(tmp_path, nshards=3, per_shard=4)
    reader = fastwds.ShardReader(inputs, threads=2, fields=["txt", "cls"])

    def read_keys(r):
        return [(s["__key__"], s["txt"], sorted(k for k in s if not k.startswith("__"))) for s in r]

    remote = client.submit(read_keys, reader, pure=False).result()
    assert remote == read_keys(reader)
    assert len(remote) == 12 and remote[0][2] == ["cls", "txt"]


def worker_resources() -> dict:
    """Threads, open file descriptors and child processes of the calling worker process."""
    import psutil

    return {
        "threads": len(os.listdir("/proc/self/task")),
        "fds": len(os.listdir("/proc/self/fd")),
        "children": len(psutil.Process().children(recursive=True)),
    }


def read_shard(url: str, stop_after: int | None) -> int:
    """Reads a shard with ShardReader (all of it, or abandons the iterator after `stop_after` samples)."""
    count = 0
    iterator = iter(fastwds.ShardReader([url], threads=2))
    for _ in iterator:
        count += 1
        if stop_after is not None and count >= stop_after:
            break
    del iterator
    return count


def test_repeated_tasks_leak_no_threads_handles_or_children(client, tmp_path):
    inputs = write_shards(tmp_path, nshards=2, per_shard=50)
    urls = [inputs[0], f"pipe:cat {inputs[1]}"]
    # Warm up: each worker imports fastwds and runs one task of each kind before the baseline is taken.
    client.gather(client.map(read_shard, urls * 2, [None, 3] * 2, pure=False))
    client.run(lambda: __import__("gc").collect())
    before = client.run(worker_resources)
    jobs = [(urls[i % 2], None if i % 3 else 5) for i in range(20)]
    counts = client.gather(client.map(read_shard, [u for u, _ in jobs], [s for _, s in jobs], pure=False))
    assert counts == [50 if stop is None else stop for _, stop in jobs]
    client.run(lambda: __import__("gc").collect())
    after = client.run(worker_resources)
    assert set(after) == set(before) and len(after) == 2
    for worker, resources in after.items():
        assert resources["threads"] <= before[worker]["threads"], (worker, before[worker], resources)
        assert resources["fds"] <= before[worker]["fds"], (worker, before[worker], resources)
        assert resources["children"] == 0, (worker, resources)


def read_all_keys(url: str) -> list[str]:
    """Reads every sample of a shard with WebDataset."""
    return [s["__key__"] for s in fastwds.WebDataset(url, shardshuffle=False)]


def test_a_shard_error_in_a_task_reaches_the_client_whole(client, tmp_path):
    (url,) = write_shards(tmp_path, nshards=1, per_shard=5)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(Path(url).read_bytes()[:5000])
    with pytest.raises(fastwds.ShardError) as local:
        read_all_keys(str(cut))
    with pytest.raises(fastwds.ShardError) as remote:
        client.submit(read_all_keys, str(cut), pure=False).result()
    want, got = local.value, remote.value
    assert (got.url, got.member, got.offset, got.kind) == (want.url, want.member, want.offset, "truncated")
    assert str(got) == str(want)
