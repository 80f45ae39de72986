"""The reader's exceptions as code written for webdataset meets them: they pickle with their attributes across
DataLoader workers (fork and spawn) and `multiprocessing.Pool` workers, a damaged shard is a
`tarfile.ReadError`, a user callback's exception arrives as itself, and a handler that continues goes on
inside the shard after a dropped member, as the reference does."""

from __future__ import annotations

import io
import multiprocessing
import pickle
import tarfile
from pathlib import Path

import pytest
import webdataset

import fastwds
from conftest import reference, write_shards


def truncated_shard(tmp_path: Path) -> str:
    """A shard cut inside its third member's data."""
    (url,) = write_shards(tmp_path, nshards=1, per_shard=5)
    data = Path(url).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: 2 * 1536 * 3 + 1536 + 100])
    return str(cut)


def read_all(url: str) -> list[str]:
    """Reads a shard (a module-level function, so spawn and Pool workers can run it)."""
    return [s["__key__"] for s in fastwds.WebDataset(url, shardshuffle=False)]


def shard_error_of(url: str) -> fastwds.ShardError:
    with pytest.raises(fastwds.ShardError) as info:
        read_all(url)
    return info.value


def assert_same_error(got: BaseException, want: fastwds.ShardError) -> None:
    assert type(got) is fastwds.ShardError
    assert (got.url, got.member, got.offset, got.kind) == (want.url, want.member, want.offset, want.kind)
    assert str(got) == str(want)


def test_shard_error_pickles_with_its_attributes(tmp_path: Path) -> None:
    err = shard_error_of(truncated_shard(tmp_path))
    assert err.kind == "truncated" and err.url.endswith("cut.tar") and err.member and err.offset
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        assert_same_error(pickle.loads(pickle.dumps(err, protocol)), err)


def test_a_damaged_shard_is_a_tarfile_read_error_and_an_os_error(tmp_path: Path) -> None:
    url = truncated_shard(tmp_path)
    caught = None
    try:
        read_all(url)
    except tarfile.ReadError as e:  # how code written for webdataset catches a bad shard
        caught = e
    assert isinstance(caught, OSError) and isinstance(caught, fastwds.ShardError)

    # The reference raises tarfile.ReadError for this cut too.
    def reference_error() -> str:
        try:
            list(webdataset.WebDataset(url, shardshuffle=False))
        except Exception as e:
            return type(e).__name__ if isinstance(e, tarfile.ReadError) else repr(e)
        return "no error"

    assert reference(reference_error) == "ReadError"


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_error_in_a_pool_worker_reaches_the_parent_whole(tmp_path: Path, context: str) -> None:
    url = truncated_shard(tmp_path)
    want = shard_error_of(url)
    with multiprocessing.get_context(context).Pool(1) as pool:
        with pytest.raises(fastwds.ShardError) as info:
            pool.apply(read_all, (url,))
    assert_same_error(info.value, want)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_error_in_a_dataloader_worker_reaches_the_parent_whole(tmp_path: Path, context: str) -> None:
    from torch.utils.data import DataLoader

    url = truncated_shard(tmp_path)
    want = shard_error_of(url)
    dataset = fastwds.WebDataset(url, shardshuffle=False)
    loader = DataLoader(dataset, batch_size=None, num_workers=1, multiprocessing_context=context)
    with pytest.raises(fastwds.ShardError) as info:
        list(loader)
    # DataLoader re-raises a worker's exception as the same type built from its traceback's text; the
    # attributes are taken back from that text.
    got = info.value
    assert (got.url, got.member, got.offset, got.kind) == (want.url, want.member, want.offset, want.kind)
    assert str(want) in str(got)


def duplicate_shard(tmp_path: Path) -> str:
    """The issue's shard: member b.txt twice."""
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tf:
        for name, data in [("a.txt", b"1"), ("b.txt", b"2"), ("b.txt", b"3"), ("c.txt", b"4")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def keys_and_text(samples: list[dict]) -> list[tuple[str, bytes]]:
    return [(s["__key__"], s["txt"]) for s in samples]


def test_a_continuing_handler_goes_on_inside_the_shard_after_a_repeated_member(tmp_path: Path) -> None:
    url = duplicate_shard(tmp_path)
    seen: list[BaseException] = []

    def handler(e: BaseException) -> bool:
        seen.append(e.with_traceback(None))  # its frames would keep the reference's shard open
        return True

    want = reference(lambda: list(webdataset.WebDataset(url, handler=handler, shardshuffle=False)))
    assert keys_and_text(want) == [("a", b"1"), ("b", b"2"), ("c", b"4")]
    seen.clear()
    got = list(fastwds.WebDataset(url, handler=handler, shardshuffle=False))
    assert keys_and_text(got) == keys_and_text(want)
    assert len(seen) == 1 and isinstance(seen[0], ValueError)
    assert isinstance(seen[0], fastwds.DuplicateFieldError) and seen[0].member == "b.txt"
    # The same through the stage functions.
    pipeline = fastwds.DataPipeline(fastwds.SimpleShardList(url), fastwds.tarfile_to_samples(handler=handler))
    assert keys_and_text(list(pipeline)) == keys_and_text(want)
    # Without a handler it raises, as the reference does.
    with pytest.raises(ValueError, match="twice"):
        list(fastwds.WebDataset(url, shardshuffle=False))


class Refused(Exception):
    """A user's own exception type."""


def test_a_callback_exception_reaches_the_caller_as_itself(tmp_path: Path) -> None:
    (url,) = write_shards(tmp_path, nshards=1, per_shard=4)

    def select(name: str) -> bool:
        if name.startswith("sample000002"):
            raise Refused(f"no {name}")
        return True

    reader = fastwds.ShardReader([url], select_files=select)
    with pytest.raises(Refused) as info:
        list(reader)
    notes = getattr(info.value, "__notes__", [])
    assert any(url in n and "sample000002" in n for n in notes), notes
    # A continuing handler gets the user's exception and the shard goes on without the refused members.
    seen: list[BaseException] = []
    got = list(fastwds.ShardReader([url], select_files=select, handler=lambda e: seen.append(e) or True))
    assert [s["__key__"] for s in got] == ["sample000000", "sample000001", "sample000003"]
    assert seen and all(isinstance(e, Refused) for e in seen)
    # The reference also hands the callback's own exception to the handler and reads on.
    seen_ref: list[BaseException] = []
    ref = reference(
        lambda: list(
            webdataset.DataPipeline(
                webdataset.SimpleShardList(url),
                webdataset.tarfile_to_samples(
                    handler=lambda e: seen_ref.append(e.with_traceback(None)) or True, select_files=select
                ),
            )
        )
    )
    assert [s["__key__"] for s in ref] == [s["__key__"] for s in got]
    assert len(seen_ref) == len(seen) and all(isinstance(e, Refused) for e in seen_ref)
