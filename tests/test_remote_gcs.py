"""gs:// shards read natively from gcp-storage-emulator (found through STORAGE_EMULATOR_HOST, anonymous):
the same samples as the local files, brace patterns, clear errors for a missing object or bucket, and
connection resets survived. The emulator cannot list through the XML API (501), so gs:// listing is not
tested here (S3 listing is, in test_remote_s3.py)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import fastwds as wds
from fastwds.errors import ShardError
from remote_servers import (
    FaultProxy,
    GcsEmulator,
    as_samples,
    assert_same_samples,
    read_samples,
    unique_bucket,
    write_dataset,
)

FAULT_OPTIONS = {"read_timeout": 1, "max_retries": 5}

Dataset = tuple[str, list[str], list[str]]  # (bucket, local paths, gs URLs)


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """The GCS emulator (its own process) for this file's tests."""
    with GcsEmulator() as server:
        yield server


@pytest.fixture(scope="module")
def dataset(gcs_emulator: GcsEmulator, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The 6-shard dataset (the last one .tar.gz) uploaded under gs://BUCKET/data/."""
    paths = write_dataset(tmp_path_factory.mktemp("gcs-data"))
    bucket = unique_bucket("data")
    gcs_emulator.create_bucket(bucket)
    return bucket, paths, gcs_emulator.put_files(bucket, "data/", paths)


@pytest.fixture
def gcs_env(gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> GcsEmulator:
    for name, value in gcs_emulator.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return gcs_emulator


def test_fixture_gcs_emulator_serves_objects_as_gcs_does(gcs_emulator: GcsEmulator, dataset: Dataset) -> None:
    """The emulator serves uploaded objects at /BUCKET/KEY (GCS's XML path) whole and by range, with an
    ETag and Last-Modified, answers HEAD and 404; its XML listing answers 501 (not testable here)."""
    bucket, paths, _ = dataset
    data = Path(paths[0]).read_bytes()
    assert gcs_emulator.download(bucket, "data/shard-000000.tar") == data
    url = f"{gcs_emulator.endpoint}/{bucket}/data/shard-000000.tar"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=5000-"})) as r:
        assert r.status == 206 and r.read() == data[5000:]
        assert r.headers["ETag"] and r.headers["Last-Modified"]
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as r:
        assert r.headers["Content-Length"] == str(len(data)) and r.read() == b""
    for missing in (f"/{bucket}/data/none.tar", "/no-such-bucket-fastwds/x.tar", f"/{bucket}?list-type=2"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(gcs_emulator.endpoint + missing)
        info.value.close()
        assert info.value.code == (501 if "list-type" in missing else 404)
    assert gcs_emulator.names(bucket, "data/") == [f"data/{Path(p).name}" for p in paths]


@pytest.mark.timeout(60)
def test_gcs_reads_same_samples_as_local(gcs_env: GcsEmulator, dataset: Dataset) -> None:
    """gs:// URLs (plain and .tar.gz) give the local files' samples in order."""
    _, paths, urls = dataset
    assert_same_samples(read_samples(urls), read_samples(paths))


def test_gcs_brace_pattern(gcs_env: GcsEmulator, dataset: Dataset) -> None:
    bucket, paths, _ = dataset
    got = read_samples(f"gs://{bucket}/data/shard-{{000002..000004}}.tar")
    assert_same_samples(got, read_samples(paths[2:5]))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["key", "bucket"])
def test_gcs_missing_object_or_bucket_is_open_error(
    gcs_env: GcsEmulator, dataset: Dataset, what: str
) -> None:
    """A missing object and a missing bucket are ShardErrors of kind "open" naming the URL, without
    retries, after the samples of the shard before."""
    bucket, paths, urls = dataset
    missing = f"gs://{bucket}/data/no-such.tar" if what == "key" else "gs://no-such-bucket-fastwds/x.tar"
    got = []
    start = time.monotonic()
    with pytest.raises(ShardError) as info:
        for sample in wds.WebDataset(
            [urls[0], missing], shardshuffle=False, reader_options={"max_retries": 10}
        ):
            got.append(sample)
    assert time.monotonic() - start < 10
    assert info.value.url == missing and info.value.kind == "open"
    assert_same_samples(as_samples(got), read_samples(paths[0]))


@pytest.mark.timeout(60)
def test_gcs_resumes_after_connection_resets(
    gcs_env: GcsEmulator,
    dataset: Dataset,
    proxy_factory: Callable[..., FaultProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two responses cut by a TCP reset mid-body (proxy in front of the emulator): the epoch is whole."""
    _, paths, urls = dataset
    proxy = proxy_factory(("127.0.0.1", gcs_env.port))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    proxy.reset_after(300_000, times=2)
    got = read_samples(urls, reader_options=FAULT_OPTIONS)
    assert proxy.resets == 2
    assert_same_samples(got, read_samples(paths))
