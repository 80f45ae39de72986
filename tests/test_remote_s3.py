"""s3:// shards read natively from moto's S3 server with signature checking on: the same samples as the local
files (credentials from AWS_* variables or from `storage_options`), brace patterns, prefix and glob listing
(1,200 keys, sorted), clear and quick errors for a wrong secret, a missing key and a missing bucket, and
resets, stalls and 503s from a proxy in front of the server survived sample for sample."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import botocore.exceptions
import pytest

import fastwds as wds
from conftest import clear_aws_env, wait_until
from fastwds import _core
from fastwds.errors import ShardError
from remote_servers import (
    FaultProxy,
    MotoS3,
    as_samples,
    assert_same_samples,
    read_samples,
    unique_bucket,
    write_dataset,
    write_shard,
)

FAULT_OPTIONS = {"read_timeout": 1, "max_retries": 5}

Dataset = tuple[str, list[str], list[str]]  # (bucket, local paths, s3 URLs)


@pytest.fixture(scope="module")
def dataset(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The 6-shard dataset (the last one .tar.gz) uploaded under s3://BUCKET/data/."""
    paths = write_dataset(tmp_path_factory.mktemp("s3-data"))
    bucket = unique_bucket("data")
    moto_s3.create_bucket(bucket)
    return bucket, paths, moto_s3.put_files(bucket, "data/", paths)


# ---------------------------------------------------------------------------------------------------------
# Fixture self-tests


def test_fixture_moto_refuses_wrong_secret(moto_s3: MotoS3, dataset: Dataset) -> None:
    """Signatures are checked: the test key reads, the same key id with a wrong secret gets 403
    SignatureDoesNotMatch, an unsigned request 403."""
    bucket = dataset[0]
    assert moto_s3.client().head_object(Bucket=bucket, Key="data/shard-000000.tar")["ContentLength"] > 0
    with pytest.raises(botocore.exceptions.ClientError) as info:
        moto_s3.client(secret="wrong-secret").get_object(Bucket=bucket, Key="data/shard-000000.tar")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(f"{moto_s3.endpoint}/{bucket}/data/shard-000000.tar")
    unsigned.value.close()
    assert unsigned.value.code == 403


def test_fixture_moto_ranges_if_match_and_pages(moto_s3: MotoS3, dataset: Dataset) -> None:
    """What the reader relies on: ranged GETs (206), If-Match (412 when the ETag differs), and listing
    pages of 1,000 keys."""
    bucket, paths, _ = dataset
    s3 = moto_s3.client()
    data = Path(paths[0]).read_bytes()
    got = s3.get_object(Bucket=bucket, Key="data/shard-000000.tar", Range="bytes=1000-")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206 and got["Body"].read() == data[1000:]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket=bucket, Key="data/shard-000000.tar", IfMatch='"0123"')
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert moto_s3.keys(bucket, "data/") == [f"data/{Path(p).name}" for p in paths]


def test_fixture_moto_through_proxy_keeps_signatures_valid(
    moto_s3: MotoS3, dataset: Dataset, proxy_factory: Callable[..., FaultProxy]
) -> None:
    """A client signing for the proxy's address reads through it (the proxy forwards bytes unchanged), and a
    cut response is a real error for it."""
    bucket, paths, _ = dataset
    proxy = proxy_factory(("127.0.0.1", moto_s3.port))
    s3 = moto_s3.client(endpoint=proxy.url)
    body = s3.get_object(Bucket=bucket, Key="data/shard-000001.tar")["Body"].read()
    assert body == Path(paths[1]).read_bytes()
    proxy.reset_after(100_000)
    with pytest.raises(Exception) as info:  # botocore's own error for a cut body
        s3.get_object(Bucket=bucket, Key="data/shard-000001.tar")["Body"].read()
    assert proxy.resets == 1, info.value


# ---------------------------------------------------------------------------------------------------------
# Reading


@pytest.mark.timeout(120)
def test_s3_env_reads_same_samples_as_local(aws_env: MotoS3, dataset: Dataset) -> None:
    """s3:// URLs with credentials and endpoint from AWS_* give the local files' samples in order."""
    _, paths, urls = dataset
    assert_same_samples(read_samples(urls), read_samples(paths))


@pytest.mark.timeout(120)
def test_s3_storage_options_read_without_env(
    moto_s3: MotoS3, dataset: Dataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no AWS_* variable set, `reader_options={"storage_options": ...}` alone reaches the server."""
    clear_aws_env(monkeypatch, tmp_path)
    _, paths, urls = dataset
    options = {"storage_options": moto_s3.storage_options()}
    assert_same_samples(read_samples(urls, reader_options=options), read_samples(paths))


def test_s3_profile_files_read_without_env(
    moto_s3: MotoS3, dataset: Dataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no key in the environment, the profile AWS_PROFILE names in the AWS CLI's files gives the key
    (credentials file), the region and the endpoint (config file, `[profile NAME]`); another profile's wrong
    key is not used."""
    clear_aws_env(monkeypatch, tmp_path)
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[default]\naws_access_key_id = WRONG\naws_secret_access_key = wrong\n\n"
        f"[dev]\naws_access_key_id = {moto_s3.access_key_id}\naws_secret_access_key = {moto_s3.secret_access_key}\n"
    )
    config = tmp_path / "config"
    config.write_text(f"[profile dev]\nregion = {moto_s3.region}\nendpoint_url = {moto_s3.endpoint}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "dev")
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    _, paths, urls = dataset
    assert_same_samples(read_samples(urls[:2]), read_samples(paths[:2]))
    monkeypatch.setenv("AWS_PROFILE", "default")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
    with pytest.raises(ShardError) as info:
        read_samples(urls[:1])
    assert info.value.kind == "open"


def test_s3_brace_pattern(aws_env: MotoS3, dataset: Dataset) -> None:
    """A brace pattern over s3:// names expands as for local paths."""
    bucket, paths, _ = dataset
    got = read_samples(f"s3://{bucket}/data/shard-{{000001..000003}}.tar")
    assert_same_samples(got, read_samples(paths[1:4]))


def test_s3_prefix_lists_every_shard_in_sorted_order(aws_env: MotoS3, dataset: Dataset) -> None:
    """`s3://BUCKET/data/` (a prefix ending in /) reads every shard under it (.tar and .tar.gz), sorted."""
    bucket, paths, _ = dataset
    assert_same_samples(read_samples(f"s3://{bucket}/data/"), read_samples(paths))


def test_s3_glob_selects_matching_shards(aws_env: MotoS3, dataset: Dataset) -> None:
    """`s3://BUCKET/data/shard-*.tar` reads the .tar shards only (not the .tar.gz), sorted."""
    bucket, paths, _ = dataset
    got = read_samples(f"s3://{bucket}/data/shard-*.tar")
    assert_same_samples(got, read_samples([p for p in paths if p.endswith(".tar")]))


def tiny_shard(key: str) -> bytes:
    """A one-sample tar: `key.txt` holding the key."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo(f"{key}.txt")
        info.size = len(key)
        tf.addfile(info, io.BytesIO(key.encode()))
    return out.getvalue()


@pytest.mark.timeout(300)
def test_s3_prefix_of_1200_keys_lists_completely_in_sorted_order(aws_env: MotoS3) -> None:
    """1,200 one-sample shards under a prefix (more than one listing page), named without zero padding so
    that sorted order is not numeric order: all 1,200 samples come, in the names' sorted order."""
    bucket = unique_bucket("many")
    aws_env.create_bucket(bucket)
    s3 = aws_env.client()
    names = [f"many/{i}.tar" for i in range(1200)]

    def put(name: str) -> None:
        s3.put_object(Bucket=bucket, Key=name, Body=tiny_shard("k" + name[5:-4]))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, names[::-1]))
    assert len(aws_env.keys(bucket, "many/")) == 1200
    got = read_samples(f"s3://{bucket}/many/")
    want = ["k" + name[5:-4] for name in sorted(names)]
    assert [k for k, _ in got] == want
    assert [f["txt"] for _, f in got] == [k.encode() for k in want]


# ---------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.timeout(60)
def test_s3_wrong_secret_is_open_error_at_once(
    aws_env: MotoS3, dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong secret is a ShardError of kind "open" naming the URL, within 10 s though 10 retries are
    allowed (a 403 is not retried)."""
    _, _, urls = dataset
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    start = time.monotonic()
    with pytest.raises(ShardError) as info:
        read_samples(urls[0], reader_options={"max_retries": 10})
    assert time.monotonic() - start < 10
    assert info.value.url == urls[0] and info.value.kind == "open"
    assert isinstance(info.value, OSError)


@pytest.mark.timeout(60)
def test_s3_wrong_secret_in_storage_options_is_open_error(
    moto_s3: MotoS3, dataset: Dataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same through explicit storage_options."""
    clear_aws_env(monkeypatch, tmp_path)
    _, _, urls = dataset
    options = {"storage_options": moto_s3.storage_options(secret="not-the-secret"), "max_retries": 10}
    start = time.monotonic()
    with pytest.raises(ShardError) as info:
        read_samples(urls[1], reader_options=options)
    assert time.monotonic() - start < 10
    assert info.value.url == urls[1] and info.value.kind == "open"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["key", "bucket"])
def test_s3_missing_key_or_bucket_is_open_error_at_once(aws_env: MotoS3, dataset: Dataset, what: str) -> None:
    """A missing key and a missing bucket are ShardErrors of kind "open" naming the URL, without retries;
    the samples of the shards before it come first."""
    bucket, paths, urls = dataset
    missing = (
        f"s3://{bucket}/data/no-such-shard.tar" if what == "key" else "s3://no-such-bucket-fastwds/x.tar"
    )
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


# ---------------------------------------------------------------------------------------------------------
# Faults between reader and server


@pytest.fixture
def proxied_env(
    aws_env: MotoS3, proxy_factory: Callable[..., FaultProxy], monkeypatch: pytest.MonkeyPatch
) -> FaultProxy:
    """A FaultProxy in front of moto, the reader's AWS_ENDPOINT_URL pointing at it."""
    proxy = proxy_factory(("127.0.0.1", aws_env.port))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    return proxy


@pytest.mark.timeout(120)
def test_s3_resumes_after_connection_resets(proxied_env: FaultProxy, dataset: Dataset) -> None:
    """Three responses cut by a TCP reset mid-body: every sample comes exactly once, in order."""
    _, paths, urls = dataset
    proxied_env.reset_after(300_000, times=3)
    got = read_samples(urls, reader_options=FAULT_OPTIONS)
    assert proxied_env.resets == 3
    assert_same_samples(got, read_samples(paths))


@pytest.mark.timeout(120)
def test_s3_retries_stalled_reads(proxied_env: FaultProxy, dataset: Dataset) -> None:
    """Two responses stall for 30 s mid-body; read_timeout=1 retries them: the epoch is whole and quick."""
    _, paths, urls = dataset
    proxied_env.stall(300_000, 30.0, times=2)
    start = time.monotonic()
    got = read_samples(urls, reader_options=FAULT_OPTIONS)
    elapsed = time.monotonic() - start
    assert proxied_env.stalls == 2
    assert_same_samples(got, read_samples(paths))
    assert elapsed < 20, elapsed


@pytest.mark.timeout(120)
def test_s3_retries_503(proxied_env: FaultProxy, dataset: Dataset) -> None:
    """Three 503 Service Unavailable answers are retried: the epoch is whole."""
    _, paths, urls = dataset
    proxied_env.fail_503(times=3)
    got = read_samples(urls, reader_options=FAULT_OPTIONS)
    assert proxied_env.served_503 == 3
    assert_same_samples(got, read_samples(paths))


@pytest.mark.timeout(60)
def test_s3_object_replaced_mid_read_is_an_error_not_a_splice(
    proxied_env: FaultProxy, aws_env: MotoS3, tmp_path: Path
) -> None:
    """The object is overwritten (same size and layout, other bytes) when the connection drops: the shard
    fails with a ShardError saying the object changed, after original samples only."""
    bucket = unique_bucket("replaced")
    aws_env.create_bucket(bucket)
    original_path = write_shard(tmp_path / "shard.tar", 0, 20)
    replacement = Path(write_shard(tmp_path / "replacement.tar", 0, 20, variant=1)).read_bytes()
    assert len(replacement) == Path(original_path).stat().st_size
    aws_env.put_files(bucket, "", [original_path])
    s3 = aws_env.client()

    def replace() -> None:
        s3.put_object(Bucket=bucket, Key="shard.tar", Body=replacement)

    proxied_env.reset_after(400_000, times=1, then=replace)
    url = f"s3://{bucket}/shard.tar"
    got = []
    with pytest.raises(ShardError) as info:
        for sample in wds.WebDataset(url, shardshuffle=False, reader_options=FAULT_OPTIONS):
            got.append(sample)
    assert proxied_env.resets == 1
    assert info.value.url == url and info.value.kind in ("io", "open")
    assert "changed" in str(info.value).lower()
    original = read_samples(original_path)
    assert len(got) < len(original)
    assert_same_samples(as_samples(got), original[: len(got)])
    with pytest.raises(botocore.exceptions.ClientError):  # make sure the object really was replaced
        s3.get_object(
            Bucket=bucket,
            Key="shard.tar",
            IfMatch=f'"{hashlib.md5(Path(original_path).read_bytes()).hexdigest()}"',
        )


def test_s3_shard_reader_reads_s3_urls(aws_env: MotoS3, dataset: Dataset) -> None:
    """The core's ShardReader takes s3:// URLs directly (no pipeline around it)."""
    _, paths, urls = dataset
    got = as_samples(_core.ShardReader(urls[:2]))
    assert_same_samples(got, read_samples(paths[:2]))


@pytest.mark.timeout(60)
def test_s3_abandoned_iterator_returns_at_once_while_stalled(
    proxied_env: FaultProxy, dataset: Dataset
) -> None:
    """One sample taken, then the response stalls for a minute (read_timeout 30 s): closing the iterator
    returns within 2 s, with no reader thread left and the stalled connection hung up."""
    _, _, urls = dataset
    proxied_env.stall(400_000, 60.0)
    it = iter(_core.ShardReader(urls[:1], threads=2, read_timeout=30))
    assert next(it)["__key__"] == "s000000"
    assert wait_until(proxied_env.stalling.is_set, 10)
    start = time.monotonic()
    it.close()
    assert time.monotonic() - start < 2
    assert it.threads_running == 0
    assert wait_until(lambda: proxied_env.client_closed >= 1, 2), "the stalled connection is still open"
    assert proxied_env.stalling.is_set()
