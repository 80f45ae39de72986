"""Shard indexes of remote shards: `fastwds index` reads s3:// shards and writes each index beside its shard in
the bucket; readers find them (len(), exact epochs), and an index whose shard was replaced since (another
ETag or size, asked with a HEAD request) is ignored with a StaleIndexWarning, on S3 (moto, signatures
checked), GCS (the emulator) and plain HTTP."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import fastwds as wds
from conftest import clear_aws_env
from fastwds import _core, shardindex
from fastwds.cli import main
from fastwds.shardindex import StaleIndexWarning, build_index, load_index, sample_count
from remote_servers import (
    GcsEmulator,
    MotoS3,
    RangeHTTPServer,
    content_etag,
    unique_bucket,
    write_shard,
)

PER_SHARD = 20


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[GcsEmulator]:
    with GcsEmulator() as server:
        yield server


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def local_entries(path: str) -> tuple[list[str], list[int], int]:
    index = build_index(path)
    return index.keys, index.offsets, index.count


def test_fastwds_index_writes_indexes_into_the_bucket_and_readers_use_them(
    aws_env: MotoS3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    paths = [
        write_shard(tmp_path / "data" / f"shard-{i:06d}.tar", i * PER_SHARD, PER_SHARD) for i in range(3)
    ]
    bucket = unique_bucket("index")
    aws_env.create_bucket(bucket)
    urls = aws_env.put_files(bucket, "data/", paths)
    pattern = f"s3://{bucket}/data/shard-{{000000..000002}}.tar"

    # Without indexes the length is unknown.
    with pytest.raises(TypeError, match="fastwds index"):
        len(wds.WebDataset(pattern, shardshuffle=False))

    code, out, err = run_cli(capsys, "index", pattern, "--jobs", "2")
    assert code == 0, err
    assert out.splitlines()[:2] == ["shards   3 (3 indexed, 0 up to date)", f"samples  {3 * PER_SHARD}"]
    s3 = aws_env.client()
    for url, path in zip(urls, paths):
        key = url.split("/", 3)[3]
        stored = s3.get_object(Bucket=bucket, Key=key + shardindex.SUFFIX)["Body"].read()
        index = shardindex.decode_index(stored, url)
        # The same entries as the local file's index; the object's size and ETag recorded.
        assert (index.keys, index.offsets, index.count) == local_entries(path)
        head = s3.head_object(Bucket=bucket, Key=key)
        assert index.size == head["ContentLength"] and index.validator == head["ETag"]
        assert load_index(url) == index

    dataset = wds.WebDataset(pattern, shardshuffle=False)
    assert len(dataset) == 3 * PER_SHARD == len(list(dataset))

    # Run again: every index is up to date.
    code, out, _ = run_cli(capsys, "index", pattern)
    assert code == 0 and out.startswith("shards   3 (0 indexed, 3 up to date)")


def test_a_replaced_s3_shard_makes_its_index_stale(
    aws_env: MotoS3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = unique_bucket("stale")
    aws_env.create_bucket(bucket)
    first = write_shard(tmp_path / "a.tar", 0, PER_SHARD)
    (url,) = aws_env.put_files(bucket, "", [first])
    code, _, err = run_cli(capsys, "index", url)
    assert code == 0, err
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sample_count(url) == PER_SHARD

    # The same size, other bytes: only the ETag tells.
    replaced = write_shard(tmp_path / "b.tar", 0, PER_SHARD, variant=1)
    assert os.path.getsize(replaced) == os.path.getsize(first)
    old_etag = aws_env.client().head_object(Bucket=bucket, Key="a.tar")["ETag"]
    aws_env.client().put_object(Bucket=bucket, Key="a.tar", Body=Path(replaced).read_bytes())
    new_etag = aws_env.client().head_object(Bucket=bucket, Key="a.tar")["ETag"]
    with pytest.warns(
        StaleIndexWarning, match=rf"a\.tar: ignoring its stale index .*ETag {old_etag} -> {new_etag}"
    ):
        assert load_index(url) is None
    with pytest.warns(StaleIndexWarning), pytest.raises(TypeError, match="no usable shard index"):
        len(wds.WebDataset(url, shardshuffle=False))

    # Another size too.
    longer = write_shard(tmp_path / "c.tar", 0, PER_SHARD + 3)
    aws_env.client().put_object(Bucket=bucket, Key="a.tar", Body=Path(longer).read_bytes())
    with pytest.warns(
        StaleIndexWarning, match=rf"size {os.path.getsize(first):,} -> {os.path.getsize(longer):,}"
    ):
        assert sample_count(url) is None

    # `fastwds index` rebuilds a stale index (and the warning is not shown there).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, out, err = run_cli(capsys, "index", url)
        assert code == 0, err
        assert out.startswith("shards   1 (1 indexed, 0 up to date)")
        assert sample_count(url) == PER_SHARD + 3


def test_an_index_with_output_dir_stays_local_for_a_bucket_shard(
    aws_env: MotoS3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = unique_bucket("outdir")
    aws_env.create_bucket(bucket)
    (url,) = aws_env.put_files(bucket, "", [write_shard(tmp_path / "a.tar", 0, PER_SHARD)])
    (tmp_path / "idx").mkdir()
    code, _, err = run_cli(capsys, "index", url, "--output-dir", str(tmp_path / "idx"))
    assert code == 0, err
    assert os.listdir(tmp_path / "idx") == ["a.tar" + shardindex.SUFFIX]
    listed = aws_env.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["a.tar"]
    assert sample_count(url, index_dir=str(tmp_path / "idx")) == PER_SHARD


def test_a_replaced_gcs_shard_makes_its_index_stale(
    gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in gcs_emulator.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    bucket = unique_bucket("stale")
    gcs_emulator.create_bucket(bucket)
    first = write_shard(tmp_path / "a.tar", 0, PER_SHARD)
    (url,) = gcs_emulator.put_files(bucket, "", [first])
    index = build_index(url)
    size, etag = _core.stat_object(url)
    assert (index.size, index.validator) == (size, etag) == (os.path.getsize(first), etag)
    assert (index.keys, index.offsets, index.count) == local_entries(first)
    buffer = io.BytesIO()
    shardindex.write_index(buffer, index)
    gcs_emulator.upload(bucket, "a.tar" + shardindex.SUFFIX, buffer.getvalue())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_index(url) == index

    gcs_emulator.upload(
        bucket, "a.tar", Path(write_shard(tmp_path / "b.tar", 0, PER_SHARD, variant=1)).read_bytes()
    )
    with pytest.warns(StaleIndexWarning, match=r"ETag"):
        assert load_index(url) is None


def test_a_replaced_http_shard_makes_its_index_stale(http_server: RangeHTTPServer) -> None:
    root = http_server.root
    first = write_shard(root / "a.tar", 0, PER_SHARD)
    url = f"{http_server.url}/a.tar"
    index = build_index(url)
    data = Path(first).read_bytes()
    assert (index.size, index.validator) == (len(data), content_etag(data))
    assert (index.keys, index.offsets, index.count) == local_entries(first)
    shardindex.write_index(str(root / ("a.tar" + shardindex.SUFFIX)), index)  # served beside the shard
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_index(url) == index
        assert len(wds.WebDataset(url, shardshuffle=False)) == PER_SHARD
    assert any(method == "HEAD" and path == "/a.tar" for method, path, _ in http_server.requests)

    write_shard(root / "a.tar", 0, PER_SHARD, variant=1)  # same size, other bytes: another ETag
    with pytest.warns(StaleIndexWarning, match=r"ETag"):
        assert load_index(url) is None
    write_shard(root / "a.tar", 0, PER_SHARD - 5)
    with pytest.warns(StaleIndexWarning, match=r"size"):
        assert sample_count(url) is None


def test_an_index_uploaded_with_its_shard_is_checked_by_size(
    aws_env: MotoS3, http_server: RangeHTTPServer, tmp_path: Path
) -> None:
    """An index written beside a local shard holds the file's mtime, not an object's ETag: uploaded with its
    shard (to a bucket, to a web server), it is used, checked by the shard's size, and not taken for stale."""
    local = tmp_path / "a.tar"
    with wds.TarWriter(str(local)) as sink:
        for i in range(PER_SHARD):
            sink.write({"__key__": f"k{i:03d}", "txt": f"sample {i}"})
    sidecar = str(local) + shardindex.SUFFIX
    bucket = unique_bucket("upload")
    aws_env.create_bucket(bucket)
    (url, _) = aws_env.put_files(bucket, "", [str(local), sidecar])
    served = f"{http_server.url}/a.tar"
    for name in ("a.tar", "a.tar" + shardindex.SUFFIX):
        (http_server.root / name).write_bytes((tmp_path / name).read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for shard in (url, served):
            index = load_index(shard)
            assert index is not None and index.validator.isdigit()  # the local file's mtime
            assert len(wds.WebDataset(shard, shardshuffle=False)) == PER_SHARD
    # Another size is still told.
    with wds.TarWriter(str(http_server.root / "a.tar"), index=False) as sink:
        sink.write({"__key__": "other", "txt": "x"})
    with pytest.warns(StaleIndexWarning, match="size"):
        assert load_index(served) is None


def test_an_unreachable_shard_leaves_its_index_unchecked(http_server: RangeHTTPServer) -> None:
    """A HEAD that fails says nothing about the shard: the index is used; reading the shard reports the
    failure."""
    root = http_server.root
    write_shard(root / "a.tar", 0, PER_SHARD)
    url = f"{http_server.url}/a.tar"
    shardindex.write_index(str(root / ("a.tar" + shardindex.SUFFIX)), build_index(url))
    os.unlink(root / "a.tar")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sample_count(url) == PER_SHARD
    with pytest.raises(OSError, match="404"):
        list(wds.WebDataset(url, shardshuffle=False))


def test_indexes_in_a_bucket_are_read_with_the_storage_options(
    moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Credentials only in `reader_options={"storage_options": ...}` (none in the environment) reach the
    indexes too: len(), balanced epochs and a resume that reads from an index's offsets."""
    clear_aws_env(monkeypatch, tmp_path)
    (tmp_path / "d").mkdir()
    with wds.ShardWriter(str(tmp_path / "d" / "s-%02d.tar"), maxcount=7, verbose=0) as sink:
        for i in range(30):
            sink.write({"__key__": f"k{i:03d}", "txt": f"sample {i}"})
    files = sorted(str(p) for p in (tmp_path / "d").iterdir())
    bucket = unique_bucket("options")
    moto_s3.create_bucket(bucket)
    moto_s3.put_files(bucket, "", files)
    pattern = f"s3://{bucket}/s-{{00..04}}.tar"
    options = {"storage_options": moto_s3.storage_options()}
    url = f"s3://{bucket}/s-00.tar"
    assert load_index(url) is None  # no credentials: no index can be read
    assert load_index(url, storage_options=options["storage_options"]) is not None
    keys = [f"k{i:03d}" for i in range(30)]

    def make(**kw: object) -> wds.WebDataset:
        return wds.WebDataset(pattern, shardshuffle=False, reader_options=options, **kw)  # type: ignore[arg-type]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(make()) == 30
        assert [s["__key__"] for s in make(balanced="drop")] == keys
        full = [k for (k,) in make().shuffle(10, seed=1).to_tuple("__key__")]
        first = make().shuffle(10, seed=1).to_tuple("__key__")
        it = iter(first)
        before = [next(it)[0] for _ in range(12)]
        state = first.state_dict()
        restored = make().shuffle(10, seed=1).to_tuple("__key__")
        restored.load_state_dict(state)
        assert before + [k for (k,) in restored] == full
