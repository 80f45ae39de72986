"""Real servers on 127.0.0.1 for the remote-storage tests (no mocks): an S3 endpoint (moto's server, with
signature checking on), a Google Cloud Storage emulator, a ranged HTTP server that also stands in for the
Hugging Face Hub, and a fault-injecting TCP proxy to put between a reader and any of them.

moto and the GCS emulator run in their own processes (a reader measured against them must not share their
interpreter lock); each binds port 0 and prints the port it got, so starting is race-free, and each exits
when its stdin closes, so even a killed test run leaves no server behind. The HTTP server and the proxy are
threads of the test process. Every `stop()`/`close()` is idempotent and called by the fixtures' finalizers.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.client
import http.server
import io
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

START_TIMEOUT = 15.0  # generous upper bound; a start takes well under 5 s on an idle machine

# --------------------------------------------------------------------------------------------------------
# Servers in their own process


# Runs in the child: exit as soon as the parent (which holds the other end of stdin) goes away.
_WATCHDOG = """
import os, sys, threading
def _watch():
    try:
        sys.stdin.buffer.read()
    finally:
        os._exit(0)
threading.Thread(target=_watch, daemon=True).start()
"""

_MOTO_MAIN = """
import logging
logging.getLogger("werkzeug").setLevel(logging.ERROR)
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
app = DomainDispatcherApplication(create_backend_app)
server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
print("PORT", server.port, flush=True)
server.serve_forever()
"""

# gcp-storage-emulator's own server is single-threaded and its XML GET (the path object stores read) sends
# neither ETag nor Last-Modified and has no HEAD. Real GCS sends both headers and answers HEAD, and
# object_store's GCS client requires them, so the child serves the emulator's handlers from a threading
# server, adds `ETag` (quoted hex md5, as GCS's XML API), `Last-Modified` and `x-goog-generation` to
# object downloads, answers HEAD as GET without the body, and decodes a percent-encoded bucket name in XML
# paths as GCS does. Everything else is the emulator's.
_GCS_MAIN = """
import email.utils, base64, datetime, functools, http.server, logging, urllib.parse
logging.disable(logging.CRITICAL)
from gcp_storage_emulator import server as gserver
from gcp_storage_emulator.handlers import objects
from gcp_storage_emulator.storage import Storage
import tempfile

storage = Storage(use_memory_fs=True, data_dir=tempfile.mkdtemp(prefix="gcs-emulator-"))
original = objects.download

def download(request, response, storage, *args, **kwargs):
    original(request, response, storage, *args, **kwargs)
    if response.status.value in (200, 206):
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["ETag"] = '"' + base64.b64decode(obj["md5Hash"]).hex() + '"'
        response["x-goog-generation"] = str(obj["generation"])
        updated = datetime.datetime.fromisoformat(obj["updated"].replace("Z", "+00:00"))
        response["Last-Modified"] = email.utils.format_datetime(updated, usegmt=True)

for _regex, handlers in gserver.HANDLERS:
    for method, fn in list(handlers.items()):
        if fn is original:
            handlers[method] = download

class Handler(gserver.RequestHandler):
    def parse_request(self):
        # GCS decodes a percent-encoded bucket name in XML paths (object_store encodes `-` and `.`); the
        # emulator's routes match the raw path. The object name is decoded by the emulator itself.
        ok = super().parse_request()
        path, sep, query = self.path.partition("?")
        parts = path.split("/")
        if ok and len(parts) > 1 and parts[1] not in ("storage", "upload", "download", "batch"):
            parts[1] = urllib.parse.unquote(parts[1])
            self.path = "/".join(parts) + sep + query
        return ok

    def do_HEAD(self):
        real = self.wfile
        class HeadersOnly:
            sent = False
            def write(self, data):
                if not self.sent:
                    self.sent = True
                    return real.write(data)
                return len(data)
            def flush(self):
                real.flush()
        self.wfile = HeadersOnly()
        try:
            gserver.Router(self).handle(gserver.GET)
        finally:
            self.wfile = real

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

httpd = Server(("127.0.0.1", 0), functools.partial(Handler, storage))
print("PORT", httpd.server_address[1], flush=True)
httpd.serve_forever()
"""


class _ServerProcess:
    """A server in a child process that prints `PORT <n>` once it listens; stderr goes to a log file."""

    def __init__(self, name: str, script: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self._log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        child_env = dict(os.environ)
        # The server is not a client: keep the reader's variables (set by tests with monkeypatch) out of it.
        for var in list(child_env):
            if var.startswith(("AWS_", "STORAGE_EMULATOR_HOST", "HF_")):
                del child_env[var]
        child_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG + script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=child_env,
        )
        try:
            self.port = self._read_port()
        except BaseException:
            self.stop()
            raise

    def _read_port(self) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(remaining, 0))
            if not ready:
                raise RuntimeError(f"{self.name} did not start within {START_TIMEOUT} s: {self.log()}")
            chunk = os.read(self.proc.stdout.fileno(), 1)
            if not chunk:
                raise RuntimeError(f"{self.name} exited at start ({self.proc.wait()}): {self.log()}")
            line += chunk
        words = line.split()
        assert words[0] == b"PORT", line
        return int(words[1])

    def log(self) -> str:
        """What the server wrote to stderr (its tail)."""
        return Path(self._log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)


def wait_for_http(url: str, timeout: float = START_TIMEOUT) -> None:
    """Waits until `url` answers any HTTP status."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------------------
# S3: moto


ADMIN_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


class MotoS3:
    """moto's S3 (and IAM) server in its own process on 127.0.0.1, with signature checking on.

    moto checks nothing while fewer than `INITIAL_NO_AUTH_ACTION_COUNT` actions were served; the first three
    (create an IAM user, an access key for it, an inline admin policy) use them up, after which every request
    must be signed with that key (SigV4 over the Host header the client sent, so a byte-forwarding proxy in
    between keeps signatures valid). An unknown key id is refused with 403 InvalidAccessKeyId, a wrong
    secret with 403 SignatureDoesNotMatch, an unsigned request with 403 AccessDenied.
    """

    region = "us-east-1"
    AUTH_ACTIONS = 3

    def __init__(self) -> None:
        self._server = _ServerProcess(
            "moto", _MOTO_MAIN, {"INITIAL_NO_AUTH_ACTION_COUNT": str(self.AUTH_ACTIONS), "MOTO_PORT": "0"}
        )
        self.port = self._server.port
        self.endpoint = f"http://127.0.0.1:{self.port}"
        wait_for_http(self.endpoint + "/moto-api/")
        iam = self._client("iam", "bootstrap", "bootstrap")
        iam.create_user(UserName="fastwds-test")
        key = iam.create_access_key(UserName="fastwds-test")["AccessKey"]
        iam.put_user_policy(UserName="fastwds-test", PolicyName="admin", PolicyDocument=ADMIN_POLICY)
        self.access_key_id: str = key["AccessKeyId"]
        self.secret_access_key: str = key["SecretAccessKey"]

    def _client(self, service: str, key_id: str, secret: str, endpoint: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            region_name=self.region,
            config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
        )

    def client(self, secret: str | None = None, endpoint: str | None = None) -> Any:
        """A boto3 S3 client signing with the test key (or with `secret` in its place), optionally through
        another `endpoint` (a proxy)."""
        return self._client("s3", self.access_key_id, secret or self.secret_access_key, endpoint)

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The environment a reader needs to reach this server (through `endpoint` if given)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def storage_options(self, endpoint: str | None = None, secret: str | None = None) -> dict[str, str]:
        """The same settings as `reader_options={"storage_options": ...}` takes them."""
        return {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": secret or self.secret_access_key,
            "aws_endpoint": endpoint or self.endpoint,
            "aws_region": self.region,
            "aws_allow_http": "true",
        }

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def put_files(self, bucket: str, prefix: str, paths: list[str]) -> list[str]:
        """Uploads local files as `prefix + basename`; returns their `s3://` URLs in order."""
        s3 = self.client()
        urls = []
        for path in paths:
            key = prefix + os.path.basename(path)
            s3.put_object(Bucket=bucket, Key=key, Body=Path(path).read_bytes())
            urls.append(f"s3://{bucket}/{key}")
        return urls

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under `prefix` (all pages)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def stop(self) -> None:
        self._server.stop()

    def log(self) -> str:
        return self._server.log()

    def __enter__(self) -> MotoS3:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------------
# GCS: gcp-storage-emulator


class GcsEmulator:
    """gcp-storage-emulator in its own process on 127.0.0.1 (in-memory storage), reached anonymously.

    Readers find it through `STORAGE_EMULATOR_HOST`. Its XML listing (`?list-type=2`) and XML multipart
    uploads (`POST ?uploads`) answer 501; single-request XML `PUT /BUCKET/KEY` uploads work.
    """

    def __init__(self) -> None:
        self._server = _ServerProcess("gcs-emulator", _GCS_MAIN)
        self.port = self._server.port
        self.endpoint = f"http://127.0.0.1:{self.port}"
        wait_for_http(self.endpoint + "/")

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def _request(self, method: str, path: str, data: bytes | None = None, ctype: str = "") -> bytes:
        req = urllib.request.Request(self.endpoint + path, data=data, method=method)
        if ctype:
            req.add_header("Content-Type", ctype)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read()

    def create_bucket(self, name: str) -> None:
        body = json.dumps({"name": name}).encode()
        self._request("POST", "/storage/v1/b?project=test", body, "application/json")

    def upload(self, bucket: str, key: str, data: bytes) -> None:
        """A JSON API media upload (what gsutil/the client libraries do for small objects)."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": key})
        self._request("POST", f"/upload/storage/v1/b/{bucket}/o?{query}", data, "application/octet-stream")

    def put_files(self, bucket: str, prefix: str, paths: list[str]) -> list[str]:
        urls = []
        for path in paths:
            key = prefix + os.path.basename(path)
            self.upload(bucket, key, Path(path).read_bytes())
            urls.append(f"gs://{bucket}/{key}")
        return urls

    def download(self, bucket: str, key: str) -> bytes:
        """The object's bytes through the XML path a reader uses (`GET /BUCKET/KEY`)."""
        return self._request("GET", f"/{bucket}/{urllib.parse.quote(key)}")

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        """Object names under `prefix`, listed through the JSON API (which the emulator does answer)."""
        query = urllib.parse.urlencode({"prefix": prefix})
        listing = json.loads(self._request("GET", f"/storage/v1/b/{bucket}/o?{query}"))
        return sorted(item["name"] for item in listing.get("items", []))

    def stop(self) -> None:
        self._server.stop()

    def log(self) -> str:
        return self._server.log()

    def __enter__(self) -> GcsEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------------
# HTTP with ranges, ETags and the Hugging Face resolve layout


def content_etag(data: bytes) -> str:
    """The strong ETag RangeHTTPServer sends for these bytes."""
    return '"' + hashlib.sha1(data).hexdigest() + '"'


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real object stores
    server: RangeHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _file(self, path: str) -> Path | None:
        parts = [urllib.parse.unquote(p) for p in path.split("/") if p]
        # /datasets/ORG/NAME/resolve/REV/PATH -> hf/ORG/NAME/REV/PATH (the Hub's file URL layout)
        if len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve":
            parts = ["hf", parts[1], parts[2], parts[4], *parts[5:]]
        if any(p in ("..", ".") for p in parts):
            return None
        candidate = self.server.root.joinpath(*parts) if parts else None
        return candidate if candidate is not None and candidate.is_file() else None

    def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            view = memoryview(body)
            for start in range(0, len(view), 65536):
                if self.server.chunk_delay:
                    time.sleep(self.server.chunk_delay)
                self.wfile.write(view[start : start + 65536])

    def _serve(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self.server.record(self.command, path, self.headers)
        file = self._file(path)
        if file is None:
            self._reply(404, {"Content-Length": "0"})
            return
        data = file.read_bytes()
        etag = content_etag(data)
        base = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Last-Modified": email.utils.formatdate(file.stat().st_mtime, usegmt=True),
            "Content-Type": "application/x-tar",
        }
        if_match = self.headers.get("If-Match")
        if (
            if_match is not None
            and if_match.strip() != "*"
            and etag not in [t.strip() for t in if_match.split(",")]
        ):
            self._reply(412, {"Content-Length": "0", "ETag": etag})
            return
        spec = self.headers.get("Range")
        if spec is None:
            self._reply(200, {**base, "Content-Length": str(len(data))}, data)
            return
        size = len(data)
        unit, _, ranges = spec.partition("=")
        first, _, last = ranges.strip().partition("-")
        try:
            if unit.strip() != "bytes" or "," in ranges:
                raise ValueError(spec)
            if first == "":  # suffix: the last N bytes
                start, end = max(size - int(last), 0), size - 1
            else:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
        except ValueError:
            self._reply(400, {"Content-Length": "0"})
            return
        if start >= size or end < start:
            self._reply(416, {"Content-Length": "0", "Content-Range": f"bytes */{size}"})
            return
        part = data[start : end + 1]
        headers = {**base, "Content-Length": str(len(part)), "Content-Range": f"bytes {start}-{end}/{size}"}
        self._reply(206, headers, part)

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()


class RangeHTTPServer(http.server.ThreadingHTTPServer):
    """Serves the files under `root` on 127.0.0.1 over HTTP/1.1 with keep-alive: `Range: bytes=N-`,
    `bytes=N-M` and `bytes=-N` (206 with Content-Range; 416 past the end), a strong `ETag` (quoted sha1 of
    the content, so replacing a file's bytes changes it), `If-Match` (412 when it differs), HEAD and 404.

    `GET /datasets/ORG/NAME/resolve/REV/PATH` serves `root/hf/ORG/NAME/REV/PATH` (the Hugging Face Hub's
    layout; see `hf_path`). `chunk_delay` slows bodies down. Every request is recorded: `gets[path]` counts
    GETs per URL path, `requests` holds `(method, path, headers)` (headers looked up in any case: clients
    such as hyper send them in lower case).
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path | str) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.root = Path(root)
        self.port = self.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.chunk_delay = 0.0  # seconds slept before each 64 KiB of a body, to make downloads overlap
        self.gets: Counter[str] = Counter()
        self.requests: list[tuple[str, str, http.client.HTTPMessage]] = []  # headers: any case
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, name="RangeHTTPServer", daemon=True)
        self._thread.start()
        self._closed = False

    def record(self, method: str, path: str, headers: http.client.HTTPMessage) -> None:
        with self._lock:
            self.requests.append((method, path, headers))
            if method == "GET":
                self.gets[path] += 1

    def total_gets(self) -> int:
        with self._lock:
            return sum(self.gets.values())

    def hf_path(self, org: str, name: str, revision: str, path: str) -> Path:
        """Where the file served as `/datasets/ORG/NAME/resolve/REVISION/PATH` lives."""
        return self.root / "hf" / org / name / revision / path

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-body (or a proxy that cuts it) is expected here

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.shutdown()
            self.server_close()
            self._thread.join(5)

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------
# The fault-injecting proxy


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream` (host, port) that forwards bytes unchanged, with
    faults a test arms before reading. Faults act per client connection, on the response byte stream
    (counted from the connection's first response byte, across the keep-alive requests it carries); each
    fires at most `times` times in all, and counts when it fires:

    - `reset_after(n, times)`: after n response bytes reach the client, the connection is cut with a TCP RST
      (SO_LINGER 0, then close), upstream side closed too. `then` (optional) runs when the cut point is
      reached, before the cut, e.g. to replace the object so that the reader's resumed request sees it.
    - `stall(after_bytes, seconds, times)`: forwarding stops for `seconds` after that many bytes.
    - `fail_503(times)`: the next new connections get `503 Service Unavailable` (Content-Length 0,
      Connection: close) for their first request, answered by the proxy without contacting upstream.

    `resets`, `stalls`, `served_503` and `connections` count what happened; `client_closed` counts
    connections the client hung up itself (not those the proxy cut); `active` is the number of client
    connections open now; `stalling` is set while a stall holds a response. `close()` closes every socket and
    joins every thread.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._reset: tuple[int, int, Callable[[], None] | None] | None = None
        self._stall: tuple[int, float, int] | None = None
        self._n503 = 0
        self.resets = 0
        self.stalls = 0
        self.served_503 = 0
        self.connections = 0
        self.client_closed = 0
        self.active = 0  # client connections open now
        self.stalling = threading.Event()  # set while a stall is in progress
        self._accept_thread = threading.Thread(target=self._accept, name="FaultProxy-accept", daemon=True)
        self._accept_thread.start()

    # ---- faults

    def reset_after(self, n_bytes: int, times: int = 1, then: Callable[[], None] | None = None) -> None:
        with self._lock:
            self._reset = (n_bytes, times, then)

    def stall(self, after_bytes: int, seconds: float, times: int = 1) -> None:
        with self._lock:
            self._stall = (after_bytes, seconds, times)

    def fail_503(self, times: int = 1) -> None:
        with self._lock:
            self._n503 = times

    def clear(self) -> None:
        with self._lock:
            self._reset = None
            self._stall = None
            self._n503 = 0

    def _take_reset(self, sent: int, chunk: int) -> tuple[int, Callable[[], None] | None] | None:
        """If the armed reset falls within the next `chunk` bytes (after `sent`), claims one firing and
        returns (bytes to send first, callback)."""
        with self._lock:
            if self._reset is None:
                return None
            n, times, then = self._reset
            if times <= 0 or sent + chunk < n or sent > n:
                return None
            self._reset = (n, times - 1, then)
            self.resets += 1
            return n - sent, then

    def _take_stall(self, sent: int, chunk: int) -> tuple[int, float] | None:
        with self._lock:
            if self._stall is None:
                return None
            n, seconds, times = self._stall
            if times <= 0 or sent + chunk <= n or sent > n:
                return None
            self._stall = (n, seconds, times - 1)
            self.stalls += 1
            return n - sent, seconds

    def _take_503(self) -> bool:
        with self._lock:
            if self._n503 > 0:
                self._n503 -= 1
                self.served_503 += 1
                return True
            return False

    # ---- plumbing

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name="FaultProxy-conn", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._closed.is_set():
                client.close()
                return
            with self._lock:
                self.connections += 1
            self._track(client)
            self._start(self._connection, client)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def _connection(self, client: socket.socket) -> None:
        with self._lock:
            self.active += 1
        try:
            if self._take_503():
                self._answer_503(client)
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                self._shut(client)
                return
            self._track(upstream)
            cut = threading.Event()  # set when the proxy itself closes the client side
            self._start(self._requests, client, upstream, cut)
            self._responses(client, upstream, cut)
        finally:
            with self._lock:
                self.active -= 1

    def _answer_503(self, client: socket.socket) -> None:
        """Reads the request head and any Content-Length body, then answers 503 and closes."""
        try:
            client.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = client.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(body) < length:
                chunk = client.recv(65536)
                if not chunk:
                    break
                body += chunk
            client.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            client.shutdown(socket.SHUT_WR)
            # Let the client read the answer and hang up first, so the close sends no RST over it.
            client.settimeout(2)
            with contextlib.suppress(OSError):
                while client.recv(65536):
                    pass
        except OSError:
            pass
        finally:
            self._shut(client)

    def _requests(self, client: socket.socket, upstream: socket.socket, cut: threading.Event) -> None:
        """Client -> upstream, unchanged. Counts the client hanging up (not the proxy cutting it)."""
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                upstream.sendall(data)
        except OSError:
            pass
        if not cut.is_set() and not self._closed.is_set():
            with self._lock:
                self.client_closed += 1
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def _responses(self, client: socket.socket, upstream: socket.socket, cut: threading.Event) -> None:
        """Upstream -> client, with the armed faults."""
        sent = 0
        try:
            while not self._closed.is_set():
                data = upstream.recv(65536)
                if not data:
                    break
                reset = self._take_reset(sent, len(data))
                if reset is not None:
                    first, then = reset
                    client.sendall(data[:first])
                    if then is not None:
                        then()  # before the cut: the client cannot have resumed yet
                    cut.set()
                    # Linger 0 makes the close abortive (RST). The shutdown wakes the thread reading the
                    # client, whose pending recv would otherwise keep the socket open past close().
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    with contextlib.suppress(OSError):
                        client.shutdown(socket.SHUT_RD)
                    client.close()
                    self._shut(upstream)
                    return
                stall = self._take_stall(sent, len(data))
                if stall is not None:
                    first, seconds = stall
                    client.sendall(data[:first])
                    sent += first
                    data = data[first:]
                    self.stalling.set()
                    self._closed.wait(seconds)
                    self.stalling.clear()
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        cut.set()
        self._shut(client)
        self._shut(upstream)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._shut(self._listener)
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            self._shut(sock)
        self._accept_thread.join(5)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------
# For the test files' fixtures: every server is a context manager that stops it, e.g.
#
#     @pytest.fixture(scope="module")
#     def moto_s3() -> Iterator[MotoS3]:
#         with MotoS3() as server:
#             yield server


@contextlib.contextmanager
def proxy_pool() -> Iterator[Callable[[tuple[str, int]], FaultProxy]]:
    """A function making FaultProxy instances in front of (host, port); all are closed on exit."""
    proxies: list[FaultProxy] = []

    def make(upstream: tuple[str, int]) -> FaultProxy:
        proxy = FaultProxy(upstream)
        proxies.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.close()


_bucket_counter = [0]


def unique_bucket(stem: str) -> str:
    """A bucket name not used before in this session (S3/GCS rules: lower case, digits, dashes)."""
    _bucket_counter[0] += 1
    return f"{stem}-{os.getpid()}-{_bucket_counter[0]}"


# --------------------------------------------------------------------------------------------------------
# Shards and samples

Fields = dict[str, bytes]
Sample = tuple[str, Fields]

BIG_FIELD = 200_000  # every fifth sample's .bin: a body of several network chunks


def sample_fields(n: int, variant: int = 0) -> Fields:
    """The fields of sample n: a class, a caption and a .bin of pseudo-random bytes (200 KB for every fifth
    sample, a few KB otherwise). `variant` changes the .bin bytes but no length, so a shard written with
    another variant has the same layout and size and only different content."""
    size = BIG_FIELD if n % 5 == 0 else 500 + (n * 397) % 4000
    data = random.Random(n * 1000 + variant).randbytes(size)
    return {"cls": str(n % 10).encode(), "txt": f"caption of sample {n}".encode(), "bin": data}


def write_shard(path: Path, first: int, count: int, variant: int = 0) -> str:
    """A shard of samples first..first+count-1 written with `tarfile` (ustar; gzip'd for a `.gz` name)."""
    mode = "w:gz" if path.name.endswith(".gz") else "w"
    with tarfile.open(path, mode, format=tarfile.USTAR_FORMAT) as tf:
        for n in range(first, first + count):
            for ext, data in sample_fields(n, variant).items():
                info = tarfile.TarInfo(f"s{n:06d}.{ext}")
                info.size = len(data)
                info.mtime = 1_700_000_000
                info.mode = 0o644
                tf.addfile(info, io.BytesIO(data))
    return str(path)


def write_dataset(directory: Path, nshards: int = 6, per_shard: int = 20) -> list[str]:
    """`nshards` shards of `per_shard` samples in `directory`, named shard-000000.tar, ...; the last one is
    gzip'd (shard-00000N.tar.gz). Returns their paths in sorted (= sample) order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(nshards):
        suffix = ".tar.gz" if i == nshards - 1 else ".tar"
        paths.append(write_shard(directory / f"shard-{i:06d}{suffix}", i * per_shard, per_shard))
    return paths


def as_samples(samples: Iterable[dict[str, Any]]) -> list[Sample]:
    """(key, fields) of each sample, without the `__url__`-like entries that differ between sources."""
    return [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")}) for s in samples]


def read_samples(urls: Any, **kw: Any) -> list[Sample]:
    """One epoch of `fastwds.WebDataset(urls, shardshuffle=False, **kw)`, as `as_samples` gives it."""
    import fastwds as wds

    return as_samples(wds.WebDataset(urls, shardshuffle=False, **kw))


def assert_same_samples(got: list[Sample], want: list[Sample]) -> None:
    """Same samples in the same order, every field's bytes equal; the message names the first difference
    instead of printing megabytes."""
    got_keys, want_keys = [k for k, _ in got], [k for k, _ in want]
    assert got_keys == want_keys, f"keys differ: {len(got_keys)} samples, {len(want_keys)} expected"
    for (key, a), (_, b) in zip(got, want):
        assert sorted(a) == sorted(b), f"{key}: fields {sorted(a)} != {sorted(b)}"
        for field in a:
            assert a[field] == b[field], f"{key}.{field}: {len(a[field])} bytes differ from {len(b[field])}"


# Names a cache may give files it is still writing or uses for locking.
TEMP_SUFFIXES = (".part", ".tmp", ".temp", ".lock", ".partial", ".download", ".incomplete")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") or name.endswith(TEMP_SUFFIXES) or ".tmp" in name or ".part" in name


def cache_entries(cache_dir: Path | str) -> list[Path]:
    """The complete entries of a cache directory: its files (at any depth) that are not temporary or lock
    files by name."""
    return sorted(
        p
        for p in Path(cache_dir).rglob("*")
        if p.is_file() and not any(is_temp_name(x) for x in p.parts[-1:])
    )


def assert_entries_intact(cache_dir: Path | str, shards: list[str]) -> list[Path]:
    """Every complete cache entry holds exactly the bytes of one of `shards` (never a partial download);
    returns the entries."""
    contents = {hashlib.sha1(Path(p).read_bytes()).hexdigest(): p for p in shards}
    entries = []
    for entry in cache_entries(cache_dir):
        try:
            data = entry.read_bytes()
        except FileNotFoundError:
            continue  # evicted by a reader since the listing
        digest = hashlib.sha1(data).hexdigest()
        assert digest in contents, f"cache entry {entry} ({len(data)} bytes) is no whole shard"
        entries.append(entry)
    return entries


def cached_shards(cache_dir: Path | str, shards: list[str]) -> list[str]:
    """Which of `shards` (paths) the cache holds complete copies of."""
    by_digest = {hashlib.sha1(Path(p).read_bytes()).hexdigest(): p for p in shards}
    held = set()
    for entry in assert_entries_intact(cache_dir, shards):
        with contextlib.suppress(FileNotFoundError):
            held.add(hashlib.sha1(entry.read_bytes()).hexdigest())
    return [p for d, p in by_digest.items() if d in held]
