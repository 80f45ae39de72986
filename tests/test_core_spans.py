"""Reading a span of a shard: a shard dict `{"url", "start", "end"}` yields exactly the samples whose first
headers lie in [start, end) (offsets in the uncompressed tar stream, as the shard index gives them), for a
plain local .tar (seeked), a .tar.gz (read and discarded up to start) and a remote .tar (a ranged GET)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from fastwds import _core
from remote_servers import RangeHTTPServer, write_shard


def first_headers(path: str) -> dict[str, int]:
    """The offset of each sample's first header in the uncompressed tar stream, by key."""
    offsets: dict[str, int] = {}
    with tarfile.open(path, "r:*") as tf:
        for info in tf:
            offsets.setdefault(info.name.split(".", 1)[0], info.offset)
    return offsets


def keys(shards: list[object]) -> list[str]:
    return [s["__key__"] for s in _core.ShardReader(shards)]


@pytest.mark.parametrize("name", ["shard.tar", "shard.tar.gz"])
def test_a_span_yields_exactly_its_samples(tmp_path: Path, name: str) -> None:
    path = write_shard(tmp_path / name, 0, 10)
    offsets = first_headers(path)
    names = sorted(offsets)
    url = str(path)
    assert keys([{"url": url, "start": offsets[names[3]], "end": offsets[names[7]]}]) == names[3:7]
    assert keys([{"url": url, "start": offsets[names[8]]}]) == names[8:]
    assert keys([{"url": url, "end": offsets[names[2]]}]) == names[:2]
    assert (
        keys([{"url": "file:" + url, "start": offsets[names[9]], "end": offsets[names[9]] + 1}]) == names[9:]
    )
    # Spans of one shard one after the other: every sample once, in order.
    cuts = [0, offsets[names[4]], offsets[names[5]], None]
    spans = [{"url": url, "start": a, "end": b} for a, b in zip(cuts, cuts[1:])]
    assert keys(spans) == names


def test_a_span_past_the_end_is_a_truncation_error(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "shard.tar.gz", 0, 2)
    with pytest.raises(_core.ShardError) as info:
        keys([{"url": path, "start": 10**9}])
    assert info.value.kind == "truncated" and info.value.url == path


def test_a_remote_span_is_fetched_with_a_ranged_request(tmp_path: Path, http_server: RangeHTTPServer) -> None:
    path = write_shard(Path(http_server.root) / "shard.tar", 0, 10)
    offsets = first_headers(path)
    names = sorted(offsets)
    url = f"{http_server.url}/shard.tar"
    assert keys([{"url": url, "start": offsets[names[6]], "end": offsets[names[8]]}]) == names[6:8]
    ranges = [headers.get("Range") for method, _, headers in http_server.requests if method == "GET"]
    assert ranges == [f"bytes={offsets[names[6]]}-"]
    # A span to the end of the shard ends where the shard does: no second request, no sample twice.
    http_server.requests.clear()
    assert keys([{"url": url, "start": offsets[names[3]]}]) == names[3:]
    ranges = [headers.get("Range") for method, _, headers in http_server.requests if method == "GET"]
    assert ranges == [f"bytes={offsets[names[3]]}-"]
