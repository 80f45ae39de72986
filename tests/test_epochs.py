"""Shard spans, `len()` from shard indexes, and exact balanced epochs (`WebDataset(balanced="pad" | "drop")`),
with ranks and DataLoader workers simulated by the RANK/WORLD_SIZE/WORKER/NUM_WORKERS environment variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import fastwds as wds
from fastwds import _core, epochs, shardindex
from fastwds.pipeline import DataPipeline
from fastwds.reader import ShardSamples

ENV = ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS", "WDS_SEED")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def write_shards(directory: Path, sizes: list[int], suffix: str = ".tar", prefix: str = "s") -> list[str]:
    """Shards with `sizes[i]` samples each, written by TarWriter (which writes their indexes); keys
    `{prefix}{shard}-{i}`, a `txt` whose length varies, so offsets are not regular."""
    directory.mkdir(parents=True, exist_ok=True)
    urls = []
    for s, n in enumerate(sizes):
        path = str(directory / f"shard-{s:03d}{suffix}")
        with wds.TarWriter(path) as sink:
            for i in range(n):
                sink.write(
                    {"__key__": f"{prefix}{s}-{i}", "txt": "x" * ((i * 397 + s * 31) % 1500), "cls": i}
                )
        urls.append(path)
    return urls


def keys_of(shard_sizes: list[int], prefix: str = "s") -> list[str]:
    return [f"{prefix}{s}-{i}" for s, n in enumerate(shard_sizes) for i in range(n)]


def set_rank(monkeypatch, rank: int, world: int, worker: int = 0, workers: int = 1) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("WORKER", str(worker))
    monkeypatch.setenv("NUM_WORKERS", str(workers))


################################################################
# spans
################################################################


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_spans_read_exactly_their_samples(tmp_path, suffix):
    (url,) = write_shards(tmp_path, [7], suffix)
    index = shardindex.load_index(url)
    assert index is not None and index.count == 7
    bounds = [*index.offsets, index.end]
    for i in range(7):
        for j in range(i + 1, 8):
            span = {"url": url, "start": bounds[i], "end": bounds[j]}
            got = [s["__key__"] for s in _core.ShardReader([span])]
            assert got == [f"s0-{k}" for k in range(i, j)], (i, j)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_spans_through_the_pipeline(tmp_path, suffix):
    urls = write_shards(tmp_path, [5, 4], suffix)
    a, b = (shardindex.load_index(u) for u in urls)
    assert a is not None and b is not None
    spans = [
        {"url": urls[0], "start": a.offsets[3]},  # to the end of the shard
        {"url": urls[1], "start": b.offsets[1], "end": b.offsets[3]},
        {"url": urls[0], "end": a.offsets[1]},  # from the start
    ]
    samples = list(DataPipeline(lambda: iter(spans), ShardSamples()))
    assert [s["__key__"] for s in samples] == ["s0-3", "s0-4", "s1-1", "s1-2", "s0-0"]
    assert [s["cls"] for s in samples] == [b"3", b"4", b"1", b"2", b"0"]
    assert samples[2]["__url__"] == urls[1]


################################################################
# the arithmetic
################################################################


def simulate(counts, mode, world, workers, epoch=0, shuffle=False, seed=0):
    """{(rank, worker): [(shard, sample, pad), ...]} for one epoch."""
    order = epochs.shard_order(len(counts), shuffle, seed, epoch)
    out = {}
    for rank in range(world):
        for worker in range(workers):
            pieces = epochs.epoch_pieces(counts, order, mode, rank, world, worker, workers)
            out[rank, worker] = [(p.shard, i, p.pad) for p in pieces for i in range(p.first, p.stop)]
    return out


CASES = [
    ([5], 1, 1),
    ([5], 2, 1),
    ([5], 2, 3),
    ([3, 40, 7, 12, 3, 25, 9], 2, 2),
    ([3, 40, 7, 12, 3, 25, 9], 3, 4),
    ([3, 40, 7, 12, 3, 25, 9], 8, 3),
    ([1, 1], 5, 2),  # fewer samples than ranks: padding wraps around more than once
    ([0, 4, 0, 3], 2, 2),  # empty shards
    ([10] * 6, 4, 1),
    ([2, 3], 1, 7),  # more workers than samples
]


@pytest.mark.parametrize("counts,world,workers", CASES)
@pytest.mark.parametrize("shuffle", [False, True])
def test_pad_reads_every_sample_once_and_pads_the_rest(counts, world, workers, shuffle):
    total = sum(counts)
    got = simulate(counts, "pad", world, workers, epoch=3, shuffle=shuffle)
    length = -(-total // world)
    for rank in range(world):
        assert sum(len(got[rank, w]) for w in range(workers)) == length
        for w in range(workers):
            # The same worker sizes on every rank (so the same number of batches), as even as possible.
            assert len(got[rank, w]) == len(got[0, w])
            assert abs(len(got[rank, w]) - len(got[rank, 0])) <= 1
            # Padding comes last in a worker's part.
            pads = [p for _, _, p in got[rank, w]]
            assert pads == sorted(pads)
    real = [(s, i) for part in got.values() for s, i, pad in part if not pad]
    assert sorted(real) == sorted((s, i) for s, n in enumerate(counts) for i in range(n))
    assert sum(pad for part in got.values() for _, _, pad in part) == world * length - total


@pytest.mark.parametrize("counts,world,workers", CASES)
def test_drop_reads_each_sample_at_most_once(counts, world, workers):
    total = sum(counts)
    got = simulate(counts, "drop", world, workers, epoch=1, shuffle=True)
    length = total // world
    read = [(s, i) for part in got.values() for s, i, pad in part]
    assert not any(pad for part in got.values() for _, _, pad in part)
    assert len(read) == len(set(read)) == world * length
    assert total - len(read) < world
    for rank in range(world):
        assert [len(got[rank, w]) for w in range(workers)] == [len(got[0, w]) for w in range(workers)]


def test_ranks_take_contiguous_ranges_of_one_order():
    counts = [3, 40, 7, 12, 3, 25, 9]
    order = epochs.shard_order(len(counts), True, "abc", 5)
    assert order == epochs.shard_order(len(counts), True, "abc", 5)
    assert order != epochs.shard_order(len(counts), True, "abc", 6)
    assert epochs.shard_order(4, False, "abc", 6) == [0, 1, 2, 3]
    sequence = [(s, i) for s in order for i in range(counts[s])]
    got = simulate(counts, "pad", 3, 2, epoch=5, shuffle=True, seed="abc")
    flat = [(s, i) for r in range(3) for w in range(2) for s, i, _ in got[r, w]]
    assert flat == (sequence + sequence)[: len(flat)]


def test_worker_range_and_rank_length():
    assert [epochs.worker_range(10, 4, w) for w in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert [epochs.worker_range(1, 3, w) for w in range(3)] == [(0, 1), (1, 1), (1, 1)]
    assert epochs.rank_length(99, 4, "pad") == 25
    assert epochs.rank_length(99, 4, "drop") == 24
    assert epochs.rank_length(0, 4, "pad") == 0
    with pytest.raises(ValueError, match="balanced"):
        epochs.rank_length(9, 2, "even")


################################################################
# WebDataset(balanced=...)
################################################################

SIZES = [3, 40, 7, 12, 3, 25, 9]


@pytest.fixture
def urls(tmp_path):
    return write_shards(tmp_path / "data", SIZES)


def read_all(monkeypatch, urls, mode, world, workers, epoch=None, **kw):
    """{(rank, worker): [(key, pad), ...]} over simulated ranks and workers."""
    kw.setdefault("shardshuffle", False)
    out = {}
    for rank in range(world):
        for worker in range(workers):
            set_rank(monkeypatch, rank, world, worker, workers)
            ds = wds.WebDataset(urls, balanced=mode, **kw)
            if epoch is not None:
                ds.set_epoch(epoch)
            out[rank, worker] = [(s["__key__"], s["__pad__"]) for s in ds]
    return out


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 1), (2, 2), (3, 4), (4, 3)])
def test_balanced_pad(monkeypatch, urls, world, workers):
    got = read_all(monkeypatch, urls, "pad", world, workers, shardshuffle=100, seed=7)
    total = sum(SIZES)
    length = -(-total // world)
    for rank in range(world):
        assert [len(got[rank, w]) for w in range(workers)] == [len(got[0, w]) for w in range(workers)]
        assert sum(len(got[rank, w]) for w in range(workers)) == length
    real = [k for part in got.values() for k, pad in part if not pad]
    assert sorted(real) == sorted(keys_of(SIZES))
    pads = [k for part in got.values() for k, pad in part if pad]
    assert len(pads) == world * length - total
    # The padding repeats the start of the epoch's order.
    flat = [k for r in range(world) for w in range(workers) for k, _ in got[r, w]]
    assert pads == flat[: len(pads)]


@pytest.mark.parametrize("world,workers", [(2, 2), (3, 1), (4, 3)])
def test_balanced_drop(monkeypatch, urls, world, workers):
    got = read_all(monkeypatch, urls, "drop", world, workers, shardshuffle=100, seed=7)
    read = [k for part in got.values() for k, pad in part]
    assert not any(pad for part in got.values() for _, pad in part)
    assert len(read) == len(set(read)) == world * (sum(SIZES) // world)
    assert sum(SIZES) - len(read) < world
    for rank in range(world):
        assert [len(got[rank, w]) for w in range(workers)] == [len(got[0, w]) for w in range(workers)]


def test_balanced_order_is_the_same_on_every_rank_and_changes_with_the_epoch(monkeypatch, urls):
    def sequence(epoch, seed=3):
        got = read_all(monkeypatch, urls, "pad", 2, 2, epoch=epoch, shardshuffle=10, seed=seed)
        return [k for r in range(2) for w in range(2) for k, pad in got[r, w] if not pad]

    first = sequence(0)
    assert first == sequence(0)
    assert sorted(first) == sorted(keys_of(SIZES))
    assert sequence(1) != first
    assert sequence(0, seed=4) != first
    # Without shardshuffle: the shards as given.
    got = read_all(monkeypatch, urls, "drop", 1, 1, epoch=5)
    assert [k for k, _ in got[0, 0]] == keys_of(SIZES)


def test_balanced_epochs_advance_per_pass_and_with_set_epoch(monkeypatch, urls):
    set_rank(monkeypatch, 0, 1)
    ds = wds.WebDataset(urls, balanced="pad", shardshuffle=5, seed=1)
    one = [s["__key__"] for s in ds]
    two = [s["__key__"] for s in ds]
    assert one != two and sorted(one) == sorted(two)
    assert [s["__key__"] for s in ds.set_epoch(1)] == two
    assert [s["__key__"] for s in ds.set_epoch(0)] == one
    # Without a seed (and without WDS_SEED) every rank must still agree: a fixed seed.
    a = [s["__key__"] for s in wds.WebDataset(urls, balanced="pad", shardshuffle=5)]
    b = [s["__key__"] for s in wds.WebDataset(urls, balanced="pad", shardshuffle=5)]
    assert a == b


def test_balanced_with_decode_keeps_native_decoding_and_pad(monkeypatch, urls):
    set_rank(monkeypatch, 1, 2)
    ds = wds.WebDataset(urls, balanced="pad", shardshuffle=False).decode("rgb8")
    assert isinstance(ds.pipeline[-2], epochs.BalancedSamples)
    assert ds.pipeline[-2].decodes_images
    samples = list(ds)
    assert all(isinstance(s["__pad__"], bool) for s in samples)
    assert samples[0]["cls"] == int(samples[0]["__key__"].split("-")[1])
    tuples = list(
        wds.WebDataset(urls, balanced="pad", shardshuffle=False).decode().to_tuple("__key__", "__pad__")
    )
    assert [k for k, _ in tuples] == [s["__key__"] for s in samples]


def test_balanced_mixed_compression(monkeypatch, tmp_path):
    urls = write_shards(tmp_path / "a", [4, 6], ".tar.gz", prefix="g") + write_shards(
        tmp_path / "b", [5], prefix="p"
    )
    got = read_all(monkeypatch, urls, "pad", 3, 2)
    real = [k for part in got.values() for k, pad in part if not pad]
    assert sorted(real) == sorted(keys_of([4, 6], "g") + keys_of([5], "p"))


def test_balanced_needs_indexes(monkeypatch, urls):
    os.unlink(urls[2] + shardindex.SUFFIX)
    with pytest.raises(wds.MissingIndexError, match="fastwds index") as caught:
        wds.WebDataset(urls, balanced="drop", shardshuffle=False)
    assert urls[2] in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_balanced_refuses_what_it_cannot_do(urls):
    with pytest.raises(ValueError, match="balanced"):
        wds.WebDataset(urls, balanced="even", shardshuffle=False)
    with pytest.raises(ValueError, match="resampled"):
        wds.WebDataset(urls, balanced="pad", resampled=True)
    with pytest.raises(ValueError, match="select_files"):
        wds.WebDataset(urls, balanced="pad", shardshuffle=False, select_files=lambda n: True)
    with pytest.raises(ValueError, match="ordered"):
        wds.WebDataset(urls, balanced="pad", shardshuffle=False, reader_options={"ordered": False})


def test_balanced_brace_pattern_and_directory(monkeypatch, urls):
    directory = os.path.dirname(urls[0])
    pattern = os.path.join(directory, "shard-{000..006}.tar")
    by_pattern = [s["__key__"] for s in wds.WebDataset(pattern, balanced="drop", shardshuffle=False)]
    by_directory = [
        s["__key__"] for s in wds.WebDataset(directory + "/", balanced="drop", shardshuffle=False)
    ]
    assert by_pattern == by_directory == keys_of(SIZES)


################################################################
# len()
################################################################


def test_len_from_indexes(monkeypatch, urls):
    total = sum(SIZES)
    ds = wds.WebDataset(urls, shardshuffle=False)
    assert len(ds) == total
    assert len(ds.decode().to_tuple("txt", "cls").shuffle(10)) == total
    assert len(ds.decode_images("rgb8")) == total
    # The node split, not the worker split.
    set_rank(monkeypatch, 1, 2, worker=1, workers=3)
    split = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node)
    assert len(split) == sum(SIZES[1::2])
    assert len(wds.WebDataset(urls, balanced="pad", shardshuffle=False)) == -(-total // 2)
    assert len(wds.WebDataset(urls, balanced="drop", shardshuffle=False)) == total // 2


def test_len_by_pattern(urls):
    pattern = os.path.join(os.path.dirname(urls[0]), "shard-{000..006}.tar")
    assert len(wds.WebDataset(pattern, shardshuffle=False)) == sum(SIZES)
    assert len(wds.WebDataset(os.path.dirname(urls[0]) + "/", shardshuffle=False)) == sum(SIZES)


def test_len_unknown(urls):
    def unknown(ds, match="unknown"):
        with pytest.raises(TypeError, match=match):
            len(ds)
        assert ds  # truth does not need the length

    ds = wds.WebDataset(urls, shardshuffle=False)
    unknown(ds.batched(4))
    unknown(ds.map(lambda s: s))
    unknown(ds.select(lambda s: True))
    unknown(ds.decode(handler=wds.warn_and_continue))
    unknown(wds.WebDataset(urls, shardshuffle=False).with_epoch(10))
    unknown(wds.WebDataset(urls, shardshuffle=False).repeat(2))
    unknown(wds.WebDataset(urls, resampled=True, shardshuffle=False))
    unknown(wds.WebDataset(urls, shardshuffle=False, select_files=lambda n: True))
    unknown(wds.WebDataset(urls, shardshuffle=False, nodesplitter=lambda src: src), "nodesplitter")
    # with_length takes precedence.
    assert len(ds.batched(4).with_length(3, silent=True)) == 3
    assert (
        len(
            wds.WebDataset(urls, resampled=True, shardshuffle=False)
            .with_epoch(10)
            .with_length(10, silent=True)
        )
        == 10
    )


def test_len_with_missing_or_stale_index(urls):
    os.unlink(urls[3] + shardindex.SUFFIX)
    ds = wds.WebDataset(urls, shardshuffle=False)
    with pytest.raises(TypeError, match="fastwds index") as caught:
        len(ds)
    assert urls[3] in str(caught.value)
    # list() asks for a length hint; an unknown length does not stop it.
    assert len(list(ds)) == sum(SIZES)
    wds.TarWriter(urls[3]).close()  # rewritten (empty, with a fresh index)
    assert len(wds.WebDataset(urls, shardshuffle=False)) == sum(SIZES) - SIZES[3]
    st = os.stat(urls[1])
    os.utime(urls[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.warns(shardindex.StaleIndexWarning), pytest.raises(TypeError, match="fastwds index"):
        len(wds.WebDataset(urls, shardshuffle=False))


def test_len_of_a_dataloader(urls):
    import torch

    ds = wds.WebDataset(urls, shardshuffle=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)
    assert len(loader) == -(-sum(SIZES) // 4)


def test_balanced_over_http_reads_indexes_and_ranges(monkeypatch, tmp_path):
    from remote_servers import RangeHTTPServer

    root = tmp_path / "www"
    paths = write_shards(root, [6, 9, 4])
    with RangeHTTPServer(root) as server:
        urls = [f"{server.url}/{Path(p).name}" for p in paths]
        assert len(wds.WebDataset(urls, shardshuffle=False)) == 19
        got = read_all(monkeypatch, urls, "pad", 2, 2)
        ranges = [
            h.get("Range") for method, path, h in server.requests if method == "GET" and path.endswith(".tar")
        ]
    real = [k for part in got.values() for k, pad in part if not pad]
    assert sorted(real) == sorted(keys_of([6, 9, 4]))
    assert [len(part) for part in got.values()] == [5, 5, 5, 5]
    # Spans that start inside a shard are fetched from their first byte on.
    assert any(r is not None and not r.startswith("bytes=0-") for r in ranges), ranges
