"""Property tests: on random tar shards, the Rust core yields exactly what webdataset 1.0.2 yields."""

from __future__ import annotations

import gc
import io
import itertools
import string
import tarfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import pytest
import webdataset
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from fastwds import _core

ALPHABET = string.ascii_letters + string.digits + "./_-"
FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}

# Names built to group: a few keys (some under directories) times a few extensions, in any order.
keys = st.sampled_from(["a", "b", "dir/a", "./x", "d.e/f", "UP", "k" * 110])
extensions = st.sampled_from(["jpg", "JPG", "json", "txt", "input.png", "a.b", "cls", "Cls"])
grouped_name = st.builds(lambda k, e: f"{k}.{e}", keys, extensions)
random_name = st.text(alphabet=ALPHABET, min_size=1, max_size=130)
member = st.tuples(st.one_of(grouped_name, grouped_name, random_name), st.integers(0, 1100))
shard = st.lists(member, max_size=14)

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
_serial = itertools.count()


def payload(tag: int, size: int) -> bytes:
    unit = f"{tag};".encode()
    return (unit * (size // len(unit) + 1))[:size]


def write_shard(path: Path, members: list[tuple[str, int]], fmt: str, gz: bool) -> bool:
    """Writes the members with tarfile; False when the format cannot hold a name (ustar, > 255 bytes)."""
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=FORMATS[fmt]) as tar:
            for i, (name, size) in enumerate(members):
                info = tarfile.TarInfo(name)
                info.size = size
                tar.addfile(info, io.BytesIO(payload(i, size)))
    except ValueError:
        return False
    path.write_bytes(buf.getvalue())
    return True


def collect(samples: Iterable[dict]) -> tuple[list[dict], BaseException | None]:
    """The items an iterator yields before it ends or raises, and what it raised."""
    out: list[dict] = []
    try:
        for s in samples:
            out.append({k: v for k, v in s.items() if k != "__local_path__"})
    except Exception as exn:
        return out, exn
    return out, None


def reference(urls: list[str]) -> tuple[list[dict], BaseException | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            return collect(webdataset.WebDataset(urls, shardshuffle=False, empty_check=False))
        finally:
            gc.collect()


def reference_members(urls: list[str]) -> list[dict]:
    streams = [open(u, "rb") for u in urls]
    try:
        sources = [{"url": u, "stream": s} for u, s in zip(urls, streams)]
        return list(webdataset.tariterators.tar_file_expander(sources, eof_value=None))
    finally:
        for s in streams:
            s.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("props")


@SETTINGS
@given(
    shards=st.lists(shard, min_size=1, max_size=2),
    fmt=st.sampled_from(sorted(FORMATS)),
    gz=st.booleans(),
    threads=st.integers(1, 3),
)
def test_random_shards_match_webdataset(
    workdir: Path, shards: list[list[tuple[str, int]]], fmt: str, gz: bool, threads: int
) -> None:
    urls = []
    for members in shards:
        path = workdir / f"p{next(_serial)}.{'tgz' if gz else 'tar'}"
        assume(write_shard(path, members, fmt, gz))
        urls.append(str(path))
    try:
        want, want_error = reference(urls)
        got, got_error = collect(_core.ShardReader(urls, threads=threads))
        # A repeated field is a ValueError in both, after the same samples; nothing else may fail.
        event(f"reference raised {type(want_error).__name__}; {min(len(want), 5)}+ samples")
        # The same class as the reference's, or a subclass that adds the URL, member and offset.
        assert isinstance(got_error, type(want_error)), (got_error, want_error)
        assert want_error is None or isinstance(want_error, ValueError)
        assert got == want
        assert all(type(s["__key__"]) is str for s in got)
        assert list(_core.ShardReader(urls, members=True, threads=threads)) == reference_members(urls)
    finally:
        for u in urls:
            Path(u).unlink()


@settings(max_examples=300, deadline=None)
@given(name=st.text(alphabet=ALPHABET, max_size=40))
def test_split_key_matches_base_plus_ext(name: str) -> None:
    key, field = webdataset.tariterators.base_plus_ext(name)
    assert _core.split_key(name) == (None if key is None else (key, field))


@settings(max_examples=100, deadline=None)
@given(name=st.text(alphabet=st.characters(exclude_characters="\n", exclude_categories=("Cs",)), max_size=30))
def test_split_key_on_any_text_without_newlines(name: str) -> None:
    key, field = webdataset.tariterators.base_plus_ext(name)
    assert _core.split_key(name) == (None if key is None else (key, field))


def test_shard_boundary_ends_a_sample(workdir: Path) -> None:
    """The same key at the end of one shard and the start of the next makes two samples, as in the reference."""
    urls = []
    for i, members in enumerate([[("a.txt", 1), ("k.txt", 2)], [("k.cls", 3), ("z.txt", 1)]]):
        path = workdir / f"boundary{i}.tar"
        assert write_shard(path, members, "pax", False)
        urls.append(str(path))
    want, error = reference(urls)
    assert error is None and [s["__key__"] for s in want] == ["a", "k", "k", "z"]
    assert collect(_core.ShardReader(urls)) == (want, None)
