"""`cache_dir=` for remote shards: the next epoch reads the local copy (no new download), the first sample
does not wait for the whole shard, two processes reading at once download each shard once, a download
killed midway leaves no entry, and `cache_size` evicts least recently used shards. Downloads are counted
by the HTTP server (GETs per path); entries are checked byte for byte against the shards."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import fastwds as wds
from conftest import wait_until
from remote_servers import (
    FaultProxy,
    MotoS3,
    RangeHTTPServer,
    as_samples,
    assert_entries_intact,
    assert_same_samples,
    cache_entries,
    cached_shards,
    is_temp_name,
    read_samples,
    unique_bucket,
    write_dataset,
)


@pytest.fixture
def served(http_server: RangeHTTPServer) -> tuple[list[str], list[str]]:
    """(local paths, http URLs) of the 6-shard dataset written into the server's directory."""
    paths = write_dataset(http_server.root)
    return paths, [f"{http_server.url}/{Path(p).name}" for p in paths]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cache"
    d.mkdir()
    return d


def gets_of(server: RangeHTTPServer, paths: list[str]) -> list[int]:
    return [server.gets["/" + Path(p).name] for p in paths]


@pytest.mark.timeout(120)
def test_second_epoch_reads_the_cache(
    served: tuple[list[str], list[str]], http_server: RangeHTTPServer, cache_dir: Path
) -> None:
    """Epoch 1 downloads each shard once and leaves one intact entry per shard; epoch 2 gives the same
    samples without any request to the server."""
    paths, urls = served
    want = read_samples(paths)
    dataset = wds.WebDataset(urls, shardshuffle=False, cache_dir=str(cache_dir))
    assert_same_samples(read_samples_of(dataset), want)
    assert gets_of(http_server, paths) == [1] * len(paths)
    assert sorted(cached_shards(cache_dir, paths)) == sorted(paths)
    assert len(cache_entries(cache_dir)) == len(paths)
    requests = len(http_server.requests)
    assert_same_samples(read_samples_of(dataset), want)
    assert len(http_server.requests) == requests  # no GET, no HEAD
    # A new dataset object (another run) uses the same entries.
    assert_same_samples(read_samples(urls, cache_dir=str(cache_dir)), want)
    assert len(http_server.requests) == requests


def read_samples_of(dataset: wds.WebDataset) -> list[tuple[str, dict[str, bytes]]]:
    return as_samples(dataset)


@pytest.mark.timeout(60)
def test_first_sample_comes_while_the_shard_streams_into_the_cache(
    served: tuple[list[str], list[str]],
    http_server: RangeHTTPServer,
    proxy_factory: Callable[..., FaultProxy],
    cache_dir: Path,
) -> None:
    """The shard's response stalls for a minute after 400 KB: its first sample comes anyway (the cache is
    written while the shard streams, not downloaded whole first), and no entry exists for it, neither during
    the stall nor after the iterator is abandoned."""
    paths, urls = served
    proxy = proxy_factory(("127.0.0.1", http_server.port))
    proxy.stall(400_000, 60.0)
    url = urls[0].replace(http_server.url, proxy.url)
    dataset = wds.WebDataset(
        url, shardshuffle=False, cache_dir=str(cache_dir), reader_options={"read_timeout": 30}
    )
    it = iter(dataset)
    start = time.monotonic()
    first = next(it)
    assert time.monotonic() - start < 10
    assert first["__key__"] == "s000000"
    assert wait_until(proxy.stalling.is_set, 10)
    assert cached_shards(cache_dir, paths) == []
    # The download in progress is a temporary file (written in buffered blocks: maybe empty yet).
    partial = [p for p in cache_dir.rglob("*") if p.is_file() and is_temp_name(p.name)]
    assert partial, sorted(cache_dir.rglob("*"))
    it.close()
    del it
    assert wait_until(lambda: proxy.client_closed >= 1, 5)
    assert cached_shards(cache_dir, paths) == []


READER_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import fastwds as wds
    urls, cache_dir, options = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    print("READY", flush=True)
    sys.stdin.readline()  # "go": both processes start reading at the same moment
    for s in wds.WebDataset(urls, shardshuffle=False, cache_dir=cache_dir, reader_options=options):
        fields = {k: hashlib.sha1(v).hexdigest() for k, v in s.items() if not k.startswith("__")}
        print(json.dumps([s["__key__"], fields]), flush=True)
    print("DONE", flush=True)
    """
)


def digests(samples: list[tuple[str, dict[str, bytes]]]) -> list[list]:
    return [[k, {f: hashlib.sha1(v).hexdigest() for f, v in fields.items()}] for k, fields in samples]


def start_reader(urls: list[str], cache_dir: Path, **options: object) -> subprocess.Popen:
    options = {"read_timeout": 30, **options}
    proc = subprocess.Popen(
        [sys.executable, "-c", READER_SCRIPT, json.dumps(urls), str(cache_dir), json.dumps(options)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    return proc


@pytest.mark.timeout(120)
def test_two_processes_download_each_shard_once(
    served: tuple[list[str], list[str]], http_server: RangeHTTPServer, cache_dir: Path
) -> None:
    """Two processes read the same six shards through one cache directory at the same time (downloads
    slowed so that they overlap): each gets every sample right, and the server sends each shard once."""
    paths, urls = served
    http_server.chunk_delay = 0.04  # about 0.5 s per shard
    procs = [start_reader(urls, cache_dir) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=100)[0].splitlines() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    want = digests(read_samples(paths))
    for proc, lines in zip(procs, outputs):
        assert proc.returncode == 0 and lines[-1] == "DONE"
        assert [json.loads(line) for line in lines[:-1]] == want
    assert gets_of(http_server, paths) == [1] * len(paths)
    assert sorted(cached_shards(cache_dir, paths)) == sorted(paths)


@pytest.mark.timeout(120)
def test_killed_download_leaves_no_entry(
    served: tuple[list[str], list[str]],
    http_server: RangeHTTPServer,
    proxy_factory: Callable[..., FaultProxy],
    cache_dir: Path,
) -> None:
    """A process killed (SIGKILL) while the first shard is stalled mid-download leaves no entry for it (any
    entry there is a whole shard); a later reader, with the same directory, reads every sample right and
    leaves all six entries intact."""
    paths, urls = served
    proxy = proxy_factory(("127.0.0.1", http_server.port))
    proxy.stall(400_000, 60.0)
    proxied = [u.replace(http_server.url, proxy.url) for u in urls]
    # One shard in flight, so the stalled download is the first shard's (with read-ahead, another shard's
    # connection could reach the stall first while the first one completes, legitimately, into the cache).
    proc = start_reader(proxied, cache_dir, threads=1, prefetch=1)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())[0] == "s000000"
        assert wait_until(proxy.stalling.is_set, 10)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert paths[0] not in cached_shards(cache_dir, paths)  # also: every entry is a whole shard
    proxy.clear()
    assert_same_samples(read_samples(proxied, cache_dir=str(cache_dir)), read_samples(paths))
    assert sorted(cached_shards(cache_dir, paths)) == sorted(paths)


@pytest.mark.timeout(120)
def test_cache_size_evicts_least_recently_used_shards(
    served: tuple[list[str], list[str]], http_server: RangeHTTPServer, cache_dir: Path
) -> None:
    """With room for two and a half shards, the complete entries never exceed cache_size at any shard
    boundary, the last shard read stays cached, and the evicted shards are downloaded again next epoch."""
    paths, urls = served
    cache_size = int(2.5 * max(os.path.getsize(p) for p in paths))
    want = read_samples(paths)

    def entries_size() -> int:  # while a reader may be evicting
        total = 0
        for entry in assert_entries_intact(cache_dir, paths):
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat().st_size
        return total

    got, sizes, url = [], [], None
    for sample in wds.WebDataset(urls, shardshuffle=False, cache_dir=str(cache_dir), cache_size=cache_size):
        if sample["__url__"] != url:
            url = sample["__url__"]
            sizes.append(entries_size())
        got.append(sample)
    sizes.append(entries_size())
    assert_same_samples(as_samples(got), want)
    assert max(sizes) <= cache_size, sizes
    held = cached_shards(cache_dir, paths)
    assert 1 <= len(held) <= 2 and paths[-1] in held, held
    before = http_server.total_gets()
    assert_same_samples(read_samples(urls, cache_dir=str(cache_dir), cache_size=cache_size), want)
    assert http_server.total_gets() - before >= len(paths) - len(held)
    assert entries_size() <= cache_size


@pytest.mark.timeout(120)
def test_s3_cache_serves_next_epoch_after_objects_are_deleted(
    moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cache_dir: Path
) -> None:
    """s3:// shards are cached too: after the objects are deleted from the bucket, the next epoch still
    yields every sample, from the cache."""
    for name, value in moto_s3.env().items():
        monkeypatch.setenv(name, value)
    paths = write_dataset(tmp_path / "data", nshards=3)
    bucket = unique_bucket("cached")
    moto_s3.create_bucket(bucket)
    urls = moto_s3.put_files(bucket, "data/", paths)
    want = read_samples(paths)
    assert_same_samples(read_samples(urls, cache_dir=str(cache_dir)), want)
    s3 = moto_s3.client()
    for key in moto_s3.keys(bucket):
        s3.delete_object(Bucket=bucket, Key=key)
    assert moto_s3.keys(bucket) == []
    assert_same_samples(read_samples(urls, cache_dir=str(cache_dir)), want)


def test_cache_paths_stay_inside_the_cache_and_differ_per_url(tmp_path: Path) -> None:
    """A hostile URL cannot name a cache entry outside the cache directory (`..` segments are dropped, a
    custom name that leaves it is refused), and URLs that differ only in bucket, host or query get distinct
    entries (the reference's last-path-component names would share one)."""
    from fastwds.cache import CoreCache, cache_path_for

    assert cache_path_for("s3://bkt/a/../../etc/passwd") == "s3/bkt/a/etc/passwd"
    assert cache_path_for("http://h/../../x.tar") == "http/h/x.tar"
    names = {
        cache_path_for(u)
        for u in (
            "s3://a/x/0.tar",
            "s3://b/y/0.tar",
            "gs://a/x/0.tar",
            "http://h/0.tar?part=1",
            "http://h/0.tar?part=2",
            "pipe:curl -s http://h/0.tar",
        )
    }
    assert len(names) == 6 and not any(n.startswith("/") or ".." in n.split("/") for n in names)
    stage = CoreCache(str(tmp_path))
    (item,) = stage([{"url": "s3://bkt/a/../../../x.tar"}])
    assert Path(item["cache_path"]).resolve().is_relative_to(tmp_path.resolve())
    assert list(stage(["/local/shard.tar"])) == ["/local/shard.tar"]  # local shards are read in place
    escaping = CoreCache(str(tmp_path), url_to_name=lambda url: "../outside.tar")
    with pytest.raises(ValueError, match="leaves the cache directory"):
        list(escaping([{"url": "s3://bkt/x.tar"}]))
