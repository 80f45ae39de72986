"""The Rust core reading shards over HTTP from a server the test starts on 127.0.0.1."""

from __future__ import annotations

import gc
import gzip
import http.server
import threading
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import webdataset

from fastwds import _core


class ShardHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the shard directory, plus `/status/CODE` (an error response), `/redirect/NAME` (302 to `/NAME`), `/cut/NAME` (sends half of the
    body a Content-Length promises, then closes) and `/eof/NAME` (no Content-Length; closes after half)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean

    def do_GET(self) -> None:
        if self.path.startswith("/status/"):
            self.send_error(int(self.path.removeprefix("/status/")))
            return
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", "/" + self.path.removeprefix("/redirect/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        for prefix, promise_whole in (("/cut/", True), ("/eof/", False)):
            if self.path.startswith(prefix):
                data = (Path(self.directory) / self.path.removeprefix(prefix)).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-tar")
                if promise_whole:
                    self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data[: self.server.cut_at(data)])
                self.wfile.flush()
                self.close_connection = True
                return
        super().do_GET()


class QuietServer(http.server.ThreadingHTTPServer):
    """A threading server whose `/cut/` and `/eof/` responses stop where `cut_at` says."""

    daemon_threads = True

    def cut_at(self, data: bytes) -> int:
        return len(data) // 2

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading mid-body is expected here


def write_shard(path: Path, n: int, tag: str) -> Path:
    """A shard written by webdataset's TarWriter."""
    with webdataset.TarWriter(str(path)) as sink:
        for i in range(n):
            sink.write(
                {"__key__": f"{tag}{i:04d}", "txt": f"{tag} {i}".encode() * (i + 1), "cls": str(i).encode()}
            )
    return path


def reference(urls: list[str]) -> list[dict]:
    """What webdataset yields for local shards, without the `__local_path__` key."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            samples = list(webdataset.WebDataset(urls, shardshuffle=False, empty_check=False))
        finally:
            gc.collect()
    return [{k: v for k, v in s.items() if k != "__local_path__"} for s in samples]


def without_url(samples: list[dict]) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "__url__"} for s in samples]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server on 127.0.0.1 serving a directory with `a.tar` (40 samples), `b.tar` (25) and `b.tgz`."""
    root = tmp_path_factory.mktemp("http")
    write_shard(root / "a.tar", 40, "a")
    write_shard(root / "b.tar", 25, "b")
    (root / "b.tgz").write_bytes(gzip.compress((root / "b.tar").read_bytes()))
    server = QuietServer(("127.0.0.1", 0), partial(ShardHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_shards_match_local(served: tuple[str, Path]) -> None:
    base, root = served
    local = reference([str(root / "a.tar"), str(root / "b.tar")])
    urls = [f"{base}/a.tar", f"{base}/b.tgz"]
    got = list(_core.ShardReader(urls, threads=2))
    assert without_url(got) == without_url(local)
    assert [s["__url__"] for s in got] == [urls[0]] * 40 + [urls[1]] * 25
    unordered = list(_core.ShardReader(urls, threads=2, ordered=False))
    assert sorted(map(repr, without_url(unordered))) == sorted(map(repr, without_url(local)))


def test_http_404_names_the_url_and_status(served: tuple[str, Path]) -> None:
    base, root = served
    url = f"{base}/missing.tar"
    with pytest.raises(_core.ShardError) as info:
        list(_core.ShardReader([f"{base}/a.tar", url]))
    assert url in str(info.value) and "404" in str(info.value)
    assert info.value.url == url


def test_http_server_error_names_the_url_and_status(served: tuple[str, Path]) -> None:
    base, _ = served
    url = f"{base}/status/503"
    with pytest.raises(_core.ShardError) as info:
        list(_core.ShardReader([url]))
    assert url in str(info.value) and "503" in str(info.value)


def test_http_404_with_handler_goes_on(served: tuple[str, Path]) -> None:
    base, root = served
    seen: list[BaseException] = []
    got = list(
        _core.ShardReader([f"{base}/missing.tar", f"{base}/b.tar"], handler=lambda e: seen.append(e) or True)
    )
    assert without_url(got) == without_url(reference([str(root / "b.tar")]))
    assert len(seen) == 1 and "404" in str(seen[0])


def test_http_redirect_is_followed(served: tuple[str, Path]) -> None:
    base, root = served
    got = list(_core.ShardReader([f"{base}/redirect/b.tar"]))
    assert without_url(got) == without_url(reference([str(root / "b.tar")]))
    assert {s["__url__"] for s in got} == {f"{base}/redirect/b.tar"}


@pytest.mark.parametrize("route", ["cut", "eof"], ids=["short-body", "closed-without-length"])
@pytest.mark.parametrize("name", ["a.tar", "b.tgz"])
def test_connection_closed_mid_body_raises(served: tuple[str, Path], route: str, name: str) -> None:
    """Whether or not the server promised a length, a cut body is an error, never a short epoch."""
    base, root = served
    url = f"{base}/{route}/{name}"
    intact = without_url(reference([str(root / name.replace(".tgz", ".tar"))]))
    delivered: list[dict] = []
    with pytest.raises(_core.ShardError) as info:
        for sample in _core.ShardReader([url]):
            delivered.append(sample)
    assert url in str(info.value) and info.value.url == url
    assert 0 < len(delivered) < len(intact)
    assert without_url(delivered) == intact[: len(delivered)]
