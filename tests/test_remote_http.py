"""http(s):// and hf:// shards read natively: the same samples as the local files, resumed after dropped
connections, retried after stalls and 503s, a replaced object refused instead of spliced, an abandoned
iterator returning at once, and hf:// URLs resolved under HF_ENDPOINT with HF_TOKEN. The servers
(tests/remote_servers.py) are checked first by the fixture self-tests."""

from __future__ import annotations

import gc
import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

import fastwds as wds
from conftest import wait_until
from fastwds import _core
from fastwds.errors import ShardError
from remote_servers import (
    FaultProxy,
    RangeHTTPServer,
    as_samples,
    assert_same_samples,
    content_etag,
    read_samples,
    write_dataset,
    write_shard,
)

# Small limits, so that a stall costs about a second and a permanent error shows quickly.
FAULT_OPTIONS = {"read_timeout": 1, "max_retries": 5}


@pytest.fixture
def served(http_server: RangeHTTPServer) -> tuple[list[str], list[str]]:
    """(local paths, http URLs) of the 6-shard dataset written into the server's directory."""
    paths = write_dataset(http_server.root)
    return paths, [f"{http_server.url}/{Path(p).name}" for p in paths]


def proxied(urls: list[str], server: RangeHTTPServer, proxy: FaultProxy) -> list[str]:
    return [u.replace(server.url, proxy.url) for u in urls]


def raw_get(port: int, path: str, timeout: float = 10) -> socket.socket:
    """A socket that has sent `GET path` (Connection: close) to 127.0.0.1:port."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
    return sock


def read_all(sock: socket.socket) -> tuple[bytes, BaseException | None]:
    """Everything the socket delivers until EOF or an error (returned, not raised)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError as e:
        return data, e
    finally:
        sock.close()
    return data, None


def http_error(req: urllib.request.Request | str) -> int:
    """The status of a request that fails with an HTTP error (its response closed)."""
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req)
    info.value.close()
    return info.value.code


# ---------------------------------------------------------------------------------------------------------
# Fixture self-tests


def test_fixture_http_server_ranges_etag_if_match_head_and_404(http_server: RangeHTTPServer) -> None:
    """The server answers ranges (206, Content-Range; 416 past the end), a content ETag with If-Match (412
    when different), HEAD without a body, 404, and counts GETs per path."""
    data = bytes(range(256)) * 40
    (http_server.root / "f.bin").write_bytes(data)
    url = http_server.url + "/f.bin"
    with urllib.request.urlopen(url) as r:
        assert r.status == 200 and r.read() == data and r.headers["ETag"] == content_etag(data)
    req = urllib.request.Request(url, headers={"Range": "bytes=100-"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 206 and r.read() == data[100:]
        assert r.headers["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    req = urllib.request.Request(url, headers={"Range": "bytes=10-19", "If-Match": content_etag(data)})
    with urllib.request.urlopen(req) as r:
        assert r.status == 206 and r.read() == data[10:20]
    for headers, status in (({"If-Match": '"other"'}, 412), ({"Range": f"bytes={len(data)}-"}, 416)):
        assert http_error(urllib.request.Request(url, headers=headers)) == status
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as r:
        assert r.headers["Content-Length"] == str(len(data)) and r.read() == b""
    assert http_error(http_server.url + "/missing.tar") == 404
    assert http_server.gets["/f.bin"] == 5  # the HEAD is not a GET
    (http_server.root / "f.bin").write_bytes(data[::-1])
    with urllib.request.urlopen(url) as r:
        assert r.headers["ETag"] != content_etag(data)


def test_fixture_http_server_hf_layout_records_authorization(http_server: RangeHTTPServer) -> None:
    """`/datasets/ORG/NAME/resolve/REV/PATH` serves `hf_path(...)`, and the Authorization header is kept."""
    target = http_server.hf_path("org", "name", "main", "data/x.tar")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"payload")
    url = http_server.url + "/datasets/org/name/resolve/main/data/x.tar"
    req = urllib.request.Request(url, headers={"Authorization": "Bearer t0k"})
    with urllib.request.urlopen(req) as r:
        assert r.read() == b"payload"
    method, path, headers = http_server.requests[-1]
    assert (method, path, headers["Authorization"]) == (
        "GET",
        "/datasets/org/name/resolve/main/data/x.tar",
        "Bearer t0k",
    )
    assert http_error(http_server.url + "/datasets/org/name/resolve/v2/data/x.tar") == 404


def test_fixture_proxy_resets_after_n_bytes(
    http_server: RangeHTTPServer, proxy_factory: Callable[..., FaultProxy]
) -> None:
    """reset_after(n, times=2): the first two responses stop after exactly n bytes with a TCP reset (not a
    clean end); the third passes whole and unchanged."""
    data = bytes(range(256)) * 4000
    (http_server.root / "f.bin").write_bytes(data)
    proxy = proxy_factory(("127.0.0.1", http_server.port))
    proxy.reset_after(5000, times=2)
    for _ in range(2):
        got, error = read_all(raw_get(proxy.port, "/f.bin"))
        assert len(got) == 5000
        assert isinstance(error, ConnectionResetError)
    got, error = read_all(raw_get(proxy.port, "/f.bin"))
    assert error is None and got.endswith(b"\r\n\r\n" + data)
    assert proxy.resets == 2 and proxy.connections == 3


def test_fixture_proxy_answers_503_itself(
    http_server: RangeHTTPServer, proxy_factory: Callable[..., FaultProxy]
) -> None:
    """fail_503(times=2): two requests get 503 from the proxy (upstream sees none), the third goes through."""
    (http_server.root / "f.bin").write_bytes(b"abc")
    proxy = proxy_factory(("127.0.0.1", http_server.port))
    proxy.fail_503(times=2)
    for _ in range(2):
        assert http_error(proxy.url + "/f.bin") == 503
    assert http_server.gets["/f.bin"] == 0
    with urllib.request.urlopen(proxy.url + "/f.bin") as r:
        assert r.read() == b"abc"
    assert proxy.served_503 == 2 and http_server.gets["/f.bin"] == 1


def test_fixture_proxy_stalls_then_resumes_and_close_ends_everything(
    http_server: RangeHTTPServer, proxy_factory: Callable[..., FaultProxy]
) -> None:
    """stall(n, s): the body stops after n bytes for s seconds, then the rest arrives unchanged; a client
    hanging up is counted; close() ends the stall, every connection and every proxy thread at once."""
    data = bytes(range(256)) * 4000
    (http_server.root / "f.bin").write_bytes(data)
    proxy = proxy_factory(("127.0.0.1", http_server.port))
    proxy.stall(20_000, 1.0)
    start = time.monotonic()
    sock = raw_get(proxy.port, "/f.bin", timeout=0.5)
    received = b""
    with pytest.raises(TimeoutError):
        while True:
            received += sock.recv(65536)
    assert len(received) == 20_000 and proxy.stalling.is_set()
    sock.settimeout(10)
    rest, error = read_all(sock)
    assert error is None and (received + rest).endswith(data)
    assert time.monotonic() - start >= 1.0 and proxy.stalls == 1

    proxy.stall(20_000, 60.0)
    sock = raw_get(proxy.port, "/f.bin")
    assert wait_until(proxy.stalling.is_set, 5)
    sock.close()
    assert wait_until(lambda: proxy.client_closed == 1, 5)  # the first ended by the server, not the client
    start = time.monotonic()
    proxy.close()
    assert time.monotonic() - start < 2
    assert not [t for t in threading.enumerate() if t.name.startswith("FaultProxy")]


# ---------------------------------------------------------------------------------------------------------
# Reading


def test_http_reads_same_samples_as_local(served: tuple[list[str], list[str]]) -> None:
    """http:// shards (plain and .tar.gz) give the local files' samples, keys and bytes, in order."""
    paths, urls = served
    assert_same_samples(read_samples(urls), read_samples(paths))


def test_http_missing_file_is_open_error(http_server: RangeHTTPServer) -> None:
    """A 404 is a ShardError of kind "open" naming the URL (an OSError too)."""
    url = http_server.url + "/missing.tar"
    with pytest.raises(ShardError) as info:
        read_samples([url], reader_options=FAULT_OPTIONS)
    assert info.value.url == url and info.value.kind == "open"
    assert isinstance(info.value, OSError)


@pytest.mark.timeout(120)
def test_http_resumes_after_connection_resets(
    served: tuple[list[str], list[str]],
    http_server: RangeHTTPServer,
    proxy_factory: Callable[..., FaultProxy],
) -> None:
    """Three connections cut by a TCP reset mid-body: the epoch still yields every sample exactly once, in
    order, with the right bytes (each drop resumed with a ranged GET)."""
    paths, urls = served
    proxy = proxy_factory(("127.0.0.1", http_server.port))
    proxy.reset_after(300_000, times=3)
    got = read_samples(proxied(urls, http_server, proxy), reader_options=FAULT_OPTIONS)
    assert proxy.resets == 3
    assert_same_samples(got, read_samples(paths))
    ranged = [h.get("Range", "") for m, _, h in http_server.requests if m == "GET"]
    assert sum(r.startswith("bytes=") and not r.startswith("bytes=0-") for r in ranged) >= 3


@pytest.mark.timeout(120)
def test_http_retries_stalled_reads(
    served: tuple[list[str], list[str]],
    http_server: RangeHTTPServer,
    proxy_factory: Callable[..., FaultProxy],
) -> None:
    """Two responses stall for 30 s mid-body; with read_timeout=1 the reader gives up on them and resumes,
    so the epoch is whole and takes far less than the stalls."""
    paths, urls = served
    proxy = proxy_factory(("127.0.0.1", http_server.port))
    proxy.stall(300_000, 30.0, times=2)
    start = time.monotonic()
    got = read_samples(proxied(urls, http_server, proxy), reader_options=FAULT_OPTIONS)
    elapsed = time.monotonic() - start
    assert proxy.stalls == 2
    assert_same_samples(got, read_samples(paths))
    assert elapsed < 20, elapsed


@pytest.mark.timeout(120)
def test_http_retries_503(
    served: tuple[list[str], list[str]],
    http_server: RangeHTTPServer,
    proxy_factory: Callable[..., FaultProxy],
) -> None:
    """Three 503 answers are retried: the epoch is whole."""
    paths, urls = served
    proxy = proxy_factory(("127.0.0.1", http_server.port))
    proxy.fail_503(times=3)
    got = read_samples(proxied(urls, http_server, proxy), reader_options=FAULT_OPTIONS)
    assert proxy.served_503 == 3
    assert_same_samples(got, read_samples(paths))


@pytest.mark.timeout(60)
def test_http_object_replaced_mid_read_is_an_error_not_a_splice(
    http_server: RangeHTTPServer, proxy_factory: Callable[..., FaultProxy]
) -> None:
    """The file is replaced (same size and layout, other bytes) when the connection drops: the resumed
    request sees another ETag, and the shard fails with a ShardError saying the object changed. Every sample
    yielded before is the original's; none mixes old and new bytes."""
    shard = http_server.root / "shard.tar"
    write_shard(shard, 0, 20)
    original = read_samples([str(shard)])
    replacement = http_server.root / "replacement.tar"
    write_shard(replacement, 0, 20, variant=1)
    assert replacement.stat().st_size == shard.stat().st_size

    proxy = proxy_factory(("127.0.0.1", http_server.port))
    proxy.reset_after(400_000, times=1, then=lambda: replacement.replace(shard))
    url = f"{proxy.url}/shard.tar"
    got = []
    with pytest.raises(ShardError) as info:
        for sample in wds.WebDataset(url, shardshuffle=False, reader_options=FAULT_OPTIONS):
            got.append(sample)
    assert proxy.resets == 1
    assert info.value.url == url
    assert info.value.kind in ("io", "open")
    assert "changed" in str(info.value).lower()
    got_samples = as_samples(got)
    assert len(got_samples) < len(original)
    assert_same_samples(got_samples, original[: len(got_samples)])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["close", "del"])
def test_http_abandoned_iterator_returns_at_once_while_stalled(
    served: tuple[list[str], list[str]],
    http_server: RangeHTTPServer,
    proxy_factory: Callable[..., FaultProxy],
    how: str,
) -> None:
    """One sample taken, then the response stalls for a minute (read_timeout 30 s): closing or dropping the
    iterator returns within 2 s, its threads are gone and the stalled connection is hung up."""
    paths, urls = served
    proxy = proxy_factory(("127.0.0.1", http_server.port))
    proxy.stall(400_000, 60.0)
    it = iter(_core.ShardReader(proxied(urls[:1], http_server, proxy), threads=2, read_timeout=30))
    first = next(it)
    assert first["__key__"] == "s000000"
    assert wait_until(proxy.stalling.is_set, 10)
    start = time.monotonic()
    if how == "close":
        it.close()
        assert it.threads_running == 0
        with pytest.raises(StopIteration):
            next(it)
    del it, first
    gc.collect()
    assert time.monotonic() - start < 2
    assert wait_until(lambda: proxy.client_closed >= 1, 2), "the stalled connection is still open"
    assert proxy.stalling.is_set()  # it was hung up during the stall, not after it


# ---------------------------------------------------------------------------------------------------------
# hf://


@pytest.fixture
def hub(http_server: RangeHTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> RangeHTTPServer:
    """The server standing in for the Hub: HF_ENDPOINT points at it, HF_TOKEN=secret123, and org/name holds
    data/shard-000000.tar at revision main and a different data/shard-000000.tar at revision v2."""
    for rev, first in (("main", 0), ("v2", 100)):
        target = http_server.hf_path("org", "name", rev, "data/shard-000000.tar")
        target.parent.mkdir(parents=True)
        write_shard(target, first, 5)
    monkeypatch.setenv("HF_ENDPOINT", http_server.url)
    monkeypatch.setenv("HF_TOKEN", "secret123")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token file from the user's home
    monkeypatch.delenv("HF_TOKEN_PATH", raising=False)
    return http_server


def hub_gets(server: RangeHTTPServer, rev: str) -> list[http.client.HTTPMessage]:
    path = f"/datasets/org/name/resolve/{rev}/data/shard-000000.tar"
    return [h for m, p, h in server.requests if m == "GET" and p == path]


@pytest.mark.parametrize(
    "url",
    ["hf://datasets/org/name@main/data/shard-000000.tar", "hf://datasets/org/name/data/shard-000000.tar"],
)
def test_hf_url_reads_resolve_path_with_token(hub: RangeHTTPServer, url: str) -> None:
    """hf://datasets/ORG/NAME[@REV]/PATH reads {HF_ENDPOINT}/datasets/ORG/NAME/resolve/REV/PATH (REV main
    when absent), sending `Authorization: Bearer $HF_TOKEN`."""
    local = hub.hf_path("org", "name", "main", "data/shard-000000.tar")
    assert_same_samples(read_samples(url), read_samples(str(local)))
    gets = hub_gets(hub, "main")
    assert gets, hub.requests
    assert all(h.get("Authorization") == "Bearer secret123" for h in gets)


def test_hf_url_revision_selects_the_file(hub: RangeHTTPServer) -> None:
    """@v2 reads the file of revision v2, not main's."""
    got = read_samples("hf://datasets/org/name@v2/data/shard-000000.tar")
    assert [k for k, _ in got] == [f"s{n:06d}" for n in range(100, 105)]
    assert hub_gets(hub, "v2") and not hub_gets(hub, "main")


def test_hf_token_file_is_used_without_hf_token(
    hub: RangeHTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without HF_TOKEN, the token `huggingface-cli login` saved ($HF_HOME/token) is sent."""
    monkeypatch.delenv("HF_TOKEN")
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text("from-file-456\n")
    assert len(read_samples("hf://datasets/org/name/data/shard-000000.tar")) == 5
    gets = hub_gets(hub, "main")
    assert gets and all(h.get("Authorization") == "Bearer from-file-456" for h in gets)


def test_hf_url_without_token_sends_no_authorization(
    hub: RangeHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without HF_TOKEN (and no token file) the request carries no Authorization header."""
    monkeypatch.delenv("HF_TOKEN")
    got = read_samples("hf://datasets/org/name@main/data/shard-000000.tar")
    assert len(got) == 5
    assert hub_gets(hub, "main") and all("Authorization" not in h for h in hub_gets(hub, "main"))


def test_hf_missing_file_is_open_error(hub: RangeHTTPServer) -> None:
    """A path the Hub does not have is a ShardError of kind "open" naming the hf:// URL."""
    url = "hf://datasets/org/name@main/data/missing.tar"
    with pytest.raises(ShardError) as info:
        read_samples(url, reader_options=FAULT_OPTIONS)
    assert info.value.url == url and info.value.kind == "open"
