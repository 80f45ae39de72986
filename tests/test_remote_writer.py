"""TarWriter and ShardWriter writing s3:// directly (moto, signature checking on): the objects hold the same
bytes as the same samples written to local files, each with its index uploaded beside it (the same entries as
the local shard's, the object's ETag), large shards go up in several parts, a writer killed mid-shard leaves
no object under the shard's name, and a missing bucket is an error. (gs:// writing is not
tested: gcp-storage-emulator answers 501 to the XML multipart upload that object stores use.)"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

import fastwds as wds
from fastwds import shardindex
from remote_servers import (
    MotoS3,
    assert_same_samples,
    read_samples,
    unique_bucket,
)

MTIME = 1_700_000_000  # fixed member times, so local and remote outputs can be compared byte for byte


@pytest.fixture
def s3(aws_env: MotoS3) -> MotoS3:
    """moto reached through the AWS_* variables, and nothing of the user's AWS configuration."""
    return aws_env


@pytest.fixture
def bucket(s3: MotoS3) -> str:
    name = unique_bucket("out")
    s3.create_bucket(name)
    return name


def samples(n: int, big: int = 0) -> Iterator[dict[str, Any]]:
    """n samples of mixed field types (bytes, str, int, dict); with `big`, each has a .bin of that many
    pseudo-random bytes."""
    rng = random.Random(n)
    for i in range(n):
        sample: dict[str, Any] = {
            "__key__": f"w{i:05d}",
            "txt": f"caption {i}",
            "cls": i % 10,
            "json": {"i": i, "tags": ["a", "b"][: i % 3]},
            "raw": rng.randbytes(100 + i * 37),
        }
        if big:
            sample["bin"] = rng.randbytes(big)
        yield sample


def get_bytes(s3: MotoS3, bucket: str, key: str) -> bytes:
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def pending_uploads(s3: MotoS3, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def test_fixture_moto_multipart_object_appears_only_on_complete(s3: MotoS3, bucket: str) -> None:
    """What the writers rely on: a multipart upload's object is not listed until completed, and an aborted
    one never appears; the upload in progress is listed by list_multipart_uploads."""
    client = s3.client()
    upload = client.create_multipart_upload(Bucket=bucket, Key="mp.tar")["UploadId"]
    part = client.upload_part(
        Bucket=bucket, Key="mp.tar", UploadId=upload, PartNumber=1, Body=b"x" * 5_242_880
    )
    assert s3.keys(bucket) == [] and pending_uploads(s3, bucket) == ["mp.tar"]
    parts = {"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]}
    client.complete_multipart_upload(Bucket=bucket, Key="mp.tar", UploadId=upload, MultipartUpload=parts)
    assert s3.keys(bucket) == ["mp.tar"] and pending_uploads(s3, bucket) == []
    upload = client.create_multipart_upload(Bucket=bucket, Key="gone.tar")["UploadId"]
    client.upload_part(Bucket=bucket, Key="gone.tar", UploadId=upload, PartNumber=1, Body=b"y" * 100)
    client.abort_multipart_upload(Bucket=bucket, Key="gone.tar", UploadId=upload)
    assert s3.keys(bucket) == ["mp.tar"] and pending_uploads(s3, bucket) == []


@pytest.mark.timeout(120)
def test_s3_tarwriter_writes_the_same_bytes_as_locally(s3: MotoS3, bucket: str, tmp_path: Path) -> None:
    """TarWriter("s3://...") creates an object byte-identical to the local file TarWriter writes from the
    same samples, and reading it back gives those samples; its index goes up beside it (index=False: none)."""
    local = tmp_path / "out.tar"
    with wds.TarWriter(str(local), mtime=MTIME) as sink:
        for sample in samples(30):
            sink.write(sample)
    with wds.TarWriter(f"s3://{bucket}/dir/out.tar", mtime=MTIME) as sink:
        for sample in samples(30):
            sink.write(sample)
    assert s3.keys(bucket) == ["dir/out.tar", "dir/out.tar.wdsidx"]
    data = get_bytes(s3, bucket, "dir/out.tar")
    assert data == local.read_bytes()
    assert_same_samples(read_samples(f"s3://{bucket}/dir/out.tar"), read_samples(str(local)))
    assert_same_index(s3, bucket, "dir/out.tar", local)
    with wds.TarWriter(f"s3://{bucket}/plain/out.tar", mtime=MTIME, index=False) as sink:
        sink.write(next(samples(1)))
    assert s3.keys(bucket, "plain/") == ["plain/out.tar"]


def assert_same_index(s3: MotoS3, bucket: str, key: str, local: Path) -> None:
    """The index beside an object has the local shard's entries, the object's size and its ETag."""
    stored = shardindex.decode_index(get_bytes(s3, bucket, key + shardindex.SUFFIX), key)
    want = shardindex.load_index(str(local))
    assert want is not None
    assert (stored.keys, stored.offsets, stored.end) == (want.keys, want.offsets, want.end)
    head = s3.client().head_object(Bucket=bucket, Key=key)
    assert (stored.size, stored.validator) == (head["ContentLength"], head["ETag"])
    assert shardindex.load_index(f"s3://{bucket}/{key}") == stored


@pytest.mark.timeout(120)
def test_s3_shardwriter_writes_the_same_shards_as_locally(s3: MotoS3, bucket: str, tmp_path: Path) -> None:
    """ShardWriter("s3://.../out-%06d.tar", maxcount=7) with 20 samples makes the same three shards, byte
    for byte, as with a local pattern, each with its index (so the dataset has a length), and no upload is
    left pending."""
    with wds.ShardWriter(str(tmp_path / "out-%06d.tar"), maxcount=7, mtime=MTIME) as sink:
        for sample in samples(20):
            sink.write(sample)
    with wds.ShardWriter(f"s3://{bucket}/shards/out-%06d.tar", maxcount=7, mtime=MTIME) as sink:
        for sample in samples(20):
            sink.write(sample)
    names = [f"out-{i:06d}.tar" for i in range(3)]
    assert s3.keys(bucket, "shards/") == sorted(
        f"shards/{n}{x}" for n in names for x in ("", shardindex.SUFFIX)
    )
    for name in names:
        assert get_bytes(s3, bucket, f"shards/{name}") == (tmp_path / name).read_bytes(), name
        assert_same_index(s3, bucket, f"shards/{name}", tmp_path / name)
    assert pending_uploads(s3, bucket) == []
    assert len(wds.WebDataset(f"s3://{bucket}/shards/out-{{000000..000002}}.tar", shardshuffle=False)) == 20


@pytest.mark.timeout(180)
def test_s3_large_shard_goes_up_in_parts(s3: MotoS3, bucket: str, tmp_path: Path) -> None:
    """A 13 MB shard (more than two 5 MB parts) arrives whole and the same as locally."""
    local = tmp_path / "big.tar"
    with wds.TarWriter(str(local), mtime=MTIME) as sink:
        for sample in samples(12, big=1_000_000):
            sink.write(sample)
    with wds.TarWriter(f"s3://{bucket}/big.tar", mtime=MTIME) as sink:
        for sample in samples(12, big=1_000_000):
            sink.write(sample)
    assert local.stat().st_size > 12_000_000
    assert get_bytes(s3, bucket, "big.tar") == local.read_bytes()
    assert pending_uploads(s3, bucket) == []


WRITER_SCRIPT = textwrap.dedent(
    """
    import json, random, sys, time
    import fastwds as wds
    pattern, n, maxcount = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(0)
    if maxcount:
        sink = wds.ShardWriter(pattern, maxcount=maxcount)
    else:
        sink = wds.TarWriter(pattern)
    for i in range(n):
        sink.write({"__key__": f"k{i:04d}", "bin": rng.randbytes(1_000_000), "cls": i})
    print("WROTE", flush=True)
    time.sleep(600)  # killed here, before close
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("writer", ["TarWriter", "ShardWriter"])
def test_s3_writer_killed_mid_shard_leaves_no_object(
    s3: MotoS3, bucket: str, writer: str, tmp_path: Path
) -> None:
    """A writer process killed (SIGKILL) after writing 15 samples of 1 MB, before close: TarWriter leaves no
    object at all; ShardWriter (maxcount=10) leaves only the first, finished shard, whole, and nothing under
    the second shard's name."""
    if writer == "TarWriter":
        target, maxcount = f"s3://{bucket}/killed/out.tar", 0
    else:
        target, maxcount = f"s3://{bucket}/killed/out-%06d.tar", 10
    stderr = tmp_path / "writer.stderr"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, target, "15", str(maxcount)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, **s3.env()},
        )
    try:
        assert proc.stdout is not None
        lines = []
        while not lines or lines[-1] not in ("WROTE", ""):
            lines.append(proc.stdout.readline().strip())  # ShardWriter prints "# writing ..." lines
        assert lines[-1] == "WROTE", (lines, proc.wait(10), stderr.read_text()[-3000:])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    if writer == "TarWriter":
        assert s3.keys(bucket, "killed/") == []
    else:
        assert s3.keys(bucket, "killed/") == ["killed/out-000000.tar", "killed/out-000000.tar.wdsidx"]
        got = read_samples(f"s3://{bucket}/killed/out-000000.tar")
        assert [k for k, _ in got] == [f"k{i:04d}" for i in range(10)]
        assert [json.loads(f["cls"]) for _, f in got] == list(range(10))


@pytest.mark.timeout(60)
def test_s3_writer_to_missing_bucket_raises(s3: MotoS3) -> None:
    """Writing to a bucket that does not exist raises an OSError (at the latest on close), and nothing is
    created."""
    missing = unique_bucket("missing")
    with pytest.raises(OSError), wds.TarWriter(f"s3://{missing}/out.tar") as sink:
        for sample in samples(5):
            sink.write(sample)
    with pytest.raises(botocore.exceptions.ClientError):
        s3.client().head_bucket(Bucket=missing)


@pytest.mark.timeout(120)
def test_s3_abandoned_writer_leaves_no_object_and_no_upload(s3: MotoS3, bucket: str) -> None:
    """`abandon()` (and `gopen(url, "wb").abort()`) stops an upload: no object under the name, no pending
    multipart upload, even after several parts went up."""
    sink = wds.TarWriter(f"s3://{bucket}/abandoned.tar", mtime=MTIME)
    for sample in samples(12, big=1_000_000):
        sink.write(sample)
    sink.abandon()
    stream = wds.gopen(f"s3://{bucket}/raw.bin", "wb")
    stream.write(b"x" * 100)
    stream.abort()
    assert stream.closed
    assert s3.keys(bucket) == [] and pending_uploads(s3, bucket) == []
