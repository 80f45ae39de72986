"""A loopback S3 endpoint for the benchmark's object-storage rows: moto's server in its own process.

`S3Bench.start()` runs `python -m moto.server -H 127.0.0.1 -p PORT` as a child process (in the harness's
process it would share the interpreter lock with nothing, but in a reader's process it would share it with the
reader: the server must be a process of its own), makes a bucket, uploads shard files into it with boto3,
reads every object once (so the server's first-read costs fall outside the timing), and hands out `s3://` URLs,
presigned `http://` URLs and the environment a reader needs (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP). `stop()` ends the server (it also exits when the harness does:
it watches its stdin).

    with S3Bench.start() as s3:
        urls = s3.upload("imagenet", ["/path/shard-0000.tar", ...])   # ["s3://fastwds-bench/imagenet/...", ...]
        s3.presigned(urls)                                          # ["http://127.0.0.1:PORT/...?X-Amz-...", ...]
        s3.env                                                      # for the reader's process

Without moto (`moto[server]`), boto3 or curl, `S3Bench.unavailable()` says which is missing and the rows that
need the server are `n/a`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BUCKET = "fastwds-bench"
REGION = "us-east-1"
# moto accepts any credentials unless IAM checks are switched on; these only have to be the same on both sides.
ACCESS_KEY = "fastwds-bench"
SECRET_KEY = "fastwds-bench-secret"
# Long enough for any run of the harness (SigV4 allows up to 7 days).
PRESIGN_SECONDS = 24 * 3600
START_TIMEOUT = 30.0

# The server's child exits as soon as its stdin (held by the harness) closes, so a killed harness leaves no
# server behind; then it runs moto's own command line, `python -m moto.server -H 127.0.0.1 -p PORT`.
_SERVER_MAIN = """
import os, runpy, sys, threading
def _watch():
    try:
        sys.stdin.buffer.read()
    finally:
        os._exit(0)
threading.Thread(target=_watch, daemon=True).start()
sys.argv = ["moto.server", "-H", "127.0.0.1", "-p", sys.argv[1]]
runpy.run_module("moto.server", run_name="__main__")
"""


def unavailable() -> str | None:
    """Why the object-storage rows cannot run here (a missing package or command), or None."""
    import importlib.util

    for module, package in (
        ("moto.server", "moto[server]"),
        ("boto3", "boto3"),
        ("werkzeug", "moto[server]"),
    ):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            return f"{package} not installed"
    if shutil.which("curl") is None:
        return "curl not found"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Bench:
    """A moto S3 server on 127.0.0.1 in a child process, with one bucket for the benchmark's shards."""

    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }
        self._client: Any = None

    @classmethod
    def start(cls, log: Any = None) -> S3Bench:
        """Starts the server, waits until it answers, and makes the bucket."""
        for _ in range(3):  # the port is picked before the child binds it: another process may win it
            port = _free_port()
            process = subprocess.Popen(
                [sys.executable, "-c", _SERVER_MAIN, str(port)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # werkzeug logs every request there
            )
            server = cls(process, port)
            if server._wait_ready():
                server.client.create_bucket(Bucket=BUCKET)
                if log:
                    log(f"moto S3 server on {server.endpoint} (pid {process.pid})")
                return server
            server.stop()
        raise RuntimeError("the moto server did not start")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2):
                    return True
            except urllib.error.HTTPError:
                return True  # it answers
            except OSError:
                time.sleep(0.1)
        return False

    @property
    def client(self) -> Any:
        """A boto3 S3 client of the server."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=REGION,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
            )
        return self._client

    def upload(self, prefix: str, paths: list[str]) -> list[str]:
        """Uploads the files under `prefix/` (keeping their names) and returns their `s3://` URLs, in order.

        Each object is then read back once and compared by size: the server keeps large objects in temporary
        files, and this first read brings them into the page cache as the local rows' warm-up does."""
        from boto3.s3.transfer import TransferConfig

        # One PUT per shard: multipart uploads would make moto assemble the object again at completion.
        transfer = TransferConfig(multipart_threshold=1 << 40)
        urls = []
        for path in paths:
            key = f"{prefix}/{Path(path).name}"
            self.client.upload_file(path, BUCKET, key, Config=transfer)
            size = 0
            body = self.client.get_object(Bucket=BUCKET, Key=key)["Body"]
            while chunk := body.read(1 << 20):
                size += len(chunk)
            if size != os.path.getsize(path):
                raise RuntimeError(f"{key}: read back {size} bytes of {os.path.getsize(path)}")
            urls.append(f"s3://{BUCKET}/{key}")
        return urls

    def presigned(self, urls: list[str]) -> list[str]:
        """Presigned `http://` GET URLs of `s3://` URLs of this bucket (valid for PRESIGN_SECONDS)."""
        out = []
        for url in urls:
            bucket, _, key = url.removeprefix("s3://").partition("/")
            out.append(
                self.client.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS
                )
            )
        return out

    def stop(self) -> None:
        """Ends the server (idempotent)."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # the watchdog exits at once
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        elif self.process.stdin:
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    def __enter__(self) -> S3Bench:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serving(log: Any = None) -> Iterator[S3Bench]:
    """A started server, stopped on exit."""
    server = S3Bench.start(log)
    try:
        yield server
    finally:
        server.stop()
