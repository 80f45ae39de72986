"""fastwds.gopen: local files, file: URLs, pipes and their exit statuses, http via curl, schemes, rewriting."""

import functools
import http.server
import importlib
import pathlib
import shutil
import sys
import threading

import pytest

# `fastwds.gopen` is also the name of the function the package exports, so fetch the module itself.
g = importlib.import_module("fastwds.gopen")


def test_local_paths_and_file_urls(tmp_path):
    path = tmp_path / "a.bin"
    with g.gopen(str(path), "wb") as stream:
        stream.write(b"hello")
    with g.gopen(str(path)) as stream:
        assert stream.read() == b"hello"
    with g.gopen("file:" + str(path)) as stream:
        assert stream.read() == b"hello"
    with g.gopen("file://" + str(path)) as stream:
        assert stream.read() == b"hello"
    with g.gopen(pathlib.Path(path)) as stream:
        assert stream.read() == b"hello"
    with g.reader(str(path)) as stream:
        assert stream.read() == b"hello"


def test_dash_is_stdin_and_stdout():
    assert g.gopen("-", "rb") is sys.stdin.buffer
    assert g.gopen("-", "wb") is sys.stdout.buffer


def test_bad_mode_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        g.gopen(str(tmp_path / "x"), "r")


def test_pipe_write_then_read(tmp_path):
    target = tmp_path / "out.bin"
    with g.gopen(f"pipe:cat > {target}", "wb") as stream:
        assert isinstance(stream, g.Pipe)
        stream.write(b"abc" * 100000)
    assert target.read_bytes() == b"abc" * 100000
    with g.gopen(f"pipe:cat {target}", "rb") as stream:
        assert stream.read() == b"abc" * 100000


def test_pipe_read_failure_names_command_and_status():
    stream = g.gopen("pipe:echo partial; exit 3", "rb")
    with pytest.raises(OSError, match=r"'echo partial; exit 3'.*status 3"):
        while stream.read(10):
            pass
        stream.close()


def test_pipe_write_failure_raises_on_close(tmp_path):
    stream = g.gopen(f"pipe:cat > {tmp_path}/missing-dir/x.tar", "wb")
    with pytest.raises(OSError, match=r"missing-dir/x.tar'.*status [12]"):
        stream.write(b"data")
        stream.close()
    assert stream.status not in (0, None)


def test_pipe_closed_early_by_reader_is_not_an_error():
    stream = g.gopen("pipe:yes", "rb")
    assert stream.read(10) == b"y\ny\ny\ny\ny\n"
    stream.close()
    assert stream.closed


def test_pipe_ignored_statuses_and_set_options():
    stream = g.gopen("pipe:exit 141", "rb")
    assert stream.read() == b""
    stream.close()
    stream = g.gopen("pipe:exit 5", "rb")
    assert g.set_options(stream, ignore_status=[0, 5], timeout=30)
    assert stream.read() == b""
    stream.close()
    assert not g.set_options(object(), timeout=1)


def test_registered_scheme_is_dispatched(monkeypatch, tmp_path):
    calls = []

    def opener(url, mode, bufsize, **kw):
        calls.append((url, mode, kw))
        return open(tmp_path / "y", mode)

    monkeypatch.setitem(g.gopen_schemes, "myscheme", opener)
    with g.gopen("myscheme://bucket/y", "wb", extra=1) as stream:
        stream.write(b"z")
    assert calls == [("myscheme://bucket/y", "wb", {"extra": 1})]
    with pytest.raises(ValueError, match="no gopen handler"):
        g.gopen("nosuchscheme://x")


def test_reference_scheme_names_are_present():
    for scheme in ["__default__", "pipe", "http", "https", "ais", "sftp", "ftps", "scp", "gs", "htgs", "hf"]:
        assert scheme in g.gopen_schemes


def test_rewrite_url(monkeypatch, tmp_path):
    assert g.rewrite_url("http://old/x") == "http://old/x"
    monkeypatch.setenv("GOPEN_REWRITE", "http://old/=http://new/;s3://=pipe:cat ")
    assert g.rewrite_url("http://old/x.tar") == "http://new/x.tar"
    assert g.rewrite_url("s3://b/x.tar") == "pipe:cat b/x.tar"
    assert g.rewrite_url("gs://b/x.tar") == "gs://b/x.tar"
    (tmp_path / "real.bin").write_bytes(b"rewritten")
    monkeypatch.setenv("GOPEN_REWRITE", f"virtual:={tmp_path}/")
    with g.gopen("virtual:real.bin") as stream:
        assert stream.read() == b"rewritten"


@pytest.fixture
def http_root(tmp_path):
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_http_is_read_natively(http_root):
    """gopen reads http(s) through the core (no curl process); a missing file is a ShardError (an OSError)
    naming the URL, raised when it is opened."""
    root, base = http_root
    (root / "shard.tar").write_bytes(b"x" * 50000)
    with g.gopen(f"{base}/shard.tar") as stream:
        assert stream.read(10) == b"x" * 10
        assert stream.read() == b"x" * 49990
        assert stream.read() == b""
    assert stream.closed
    with pytest.raises(OSError, match="status 404") as info:
        g.gopen(f"{base}/missing.tar")
    assert info.value.url == f"{base}/missing.tar" and info.value.kind == "open"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_http_through_curl(http_root):
    """The reference's curl opener stays available as gopen_curl."""
    root, base = http_root
    (root / "shard.tar").write_bytes(b"x" * 50000)
    with g.gopen_curl(f"{base}/shard.tar") as stream:
        assert stream.read() == b"x" * 50000
    stream = g.gopen_curl(f"{base}/missing.tar")
    with pytest.raises(OSError, match="status 22"):
        stream.read()
        stream.close()


def test_writing_to_a_command_that_failed_reports_its_status():
    stream = g.gopen("pipe:exit 4", "wb")
    stream.proc.wait()
    with pytest.raises(OSError, match="'exit 4'.*status 4"):
        for _ in range(100):
            stream.write(b"x" * 65536)
        stream.close()
