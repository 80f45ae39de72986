"""`fastwds create LIST -o OUTPUT`: build a tar from a list of `ARCHIVE-NAME SOURCE` lines."""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import deque
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

from .. import utils
from ..tarformat import archive_size, padding
from ._util import AtomicOutput, CommandError, compression_of, stops_cleanly
from .progress import Progress

EPILOG = """\
LIST has one member per line, `ARCHIVE-NAME SOURCE`; SOURCE is a path (or file:PATH) or `pipe:CMD`,
whose standard output becomes the member's content. Blank lines and lines starting with # are skipped.

example:
  $ cat shard-000.txt
  bike_0.mov          pipe:curl -s -f -L https://example.com/videos/bike/0/video.MOV
  bike_0.geometry.pb  pipe:curl -s -f -L https://example.com/videos/bike/0/geometry.pbdata
  bike_0.cls          labels/bike.txt
  $ fastwds create shard-000.txt -o shard-000.tar
  $ cat shard-000.txt | fastwds create - -o - | gsutil cp - gs://bucket/shard-000.tar
"""

# Command output up to this size stays in memory; more spills to a temporary file.
_SPOOL_BYTES = 64 * 1024 * 1024
_STDERR_TAIL = 2000


@dataclass
class Entry:
    """One line of the list: the member name, its source and where it came from (for messages)."""

    lineno: int
    name: str
    source: str


@dataclass
class Content:
    """A member's content, ready to copy: an open binary file positioned at the start and its size."""

    file: IO[bytes]
    size: int
    mtime: int


def parse_list(lines: list[str], listname: str) -> list[Entry]:
    """Parses `ARCHIVE-NAME SOURCE` lines; raises CommandError naming the first malformed line."""
    entries = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise CommandError(f"{listname}:{lineno}: expected 'ARCHIVE-NAME SOURCE', got {line!r}")
        entries.append(Entry(lineno, parts[0], parts[1].strip()))
    return entries


class Fetcher:
    """Opens sources (files directly, commands into a spooled buffer) and can kill the commands it runs."""

    def __init__(self, listname: str, mtime: int | None) -> None:
        self.listname = listname
        self.mtime = mtime
        self._children: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self.aborted = False

    def where(self, entry: Entry) -> str:
        """`LIST:LINE: SOURCE` for a path, `LIST:LINE` for a command (whose message quotes it)."""
        if entry.source.startswith("pipe:"):
            return f"{self.listname}:{entry.lineno}"
        return f"{self.listname}:{entry.lineno}: {entry.source}"

    def fetch(self, entry: Entry) -> Content:
        """The content of one entry; raises CommandError naming the line, the source and what went wrong."""
        source = entry.source
        if utils.enforce_security:
            # As gopen in secure mode: a list you did not write must not run commands or copy local files.
            what = "run commands" if source.startswith("pipe:") else "open local files"
            raise CommandError(f"{self.where(entry)}: security is enforced (WDS_SECURE), cannot {what}")
        if source.startswith("pipe:"):
            return self._run(entry, source[5:])
        path = source[5:] if source.startswith("file:") else source
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise CommandError(f"{self.where(entry)}: cannot open: {exc.strerror or exc}") from None
        st = os.fstat(f.fileno())
        mtime = int(st.st_mtime) if self.mtime is None else self.mtime
        if stat.S_ISREG(st.st_mode):
            return Content(f, st.st_size, mtime)
        # A pipe or device (`<(cmd)`, /dev/stdin): its size is known only once it is read.
        with f:
            spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
            try:
                shutil.copyfileobj(f, spool, 1024 * 1024)
            except OSError as exc:
                spool.close()
                raise CommandError(f"{self.where(entry)}: cannot read: {exc.strerror or exc}") from None
        size = spool.tell()
        spool.seek(0)
        return Content(spool, size, mtime)

    def _run(self, entry: Entry, command: str) -> Content:
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
        errors = tempfile.TemporaryFile()
        try:
            # A session of its own, so that abort() can kill the whole pipeline the shell started.
            child = subprocess.Popen(
                command,
                shell=True,
                stdout=subprocess.PIPE,
                stderr=errors,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            with self._lock:
                self._children.add(child)
                if self.aborted:
                    _kill_group(child)
            try:
                assert child.stdout is not None
                shutil.copyfileobj(child.stdout, spool, 1024 * 1024)
                child.stdout.close()
                status = child.wait()
            except BaseException:
                # Interrupted (Ctrl-C, SIGTERM) or failed while reading: the command must not outlive us.
                _kill_group(child)
                if child.stdout is not None:
                    child.stdout.close()
                child.wait()
                raise
            finally:
                with self._lock:
                    self._children.discard(child)
            if status != 0:
                errors.seek(max(0, os.fstat(errors.fileno()).st_size - _STDERR_TAIL))
                tail = errors.read().decode("utf-8", "replace").strip()
                what = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
                message = f"{self.where(entry)}: command {command!r} {what}"
                if tail:
                    message += "; its stderr ends with:\n" + "\n".join(
                        "  " + t for t in tail.splitlines()[-10:]
                    )
                raise CommandError(message)
            size = spool.tell()
            spool.seek(0)
            mtime = int(time.time()) if self.mtime is None else self.mtime
            return Content(spool, size, mtime)
        except BaseException:
            spool.close()
            raise
        finally:
            errors.close()

    def abort(self) -> None:
        """Kills every command still running (after a failure elsewhere)."""
        with self._lock:
            self.aborted = True
            for child in self._children:
                _kill_group(child)


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """Kills a command and every process it started (its process group)."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class TarStream:
    """Writes members to a binary stream as a POSIX (pax where needed) tar, ending it only on `finish()`."""

    def __init__(self, stream: BinaryIO, compress: str | None) -> None:
        self.raw = stream
        self.gz: gzip.GzipFile | None = None
        if compress == "gz":
            self.gz = gzip.GzipFile(fileobj=stream, mode="wb", compresslevel=6, mtime=0)
        self.out: Any = self.gz if self.gz is not None else stream
        self.offset = 0

    def add(self, name: str, content: Content) -> None:
        """Appends one member with the content's exact size; raises CommandError if the source is short."""
        info = tarfile.TarInfo(name)
        info.size = content.size
        info.mtime = content.mtime
        info.mode = 0o444
        info.uname = info.gname = "bigdata"
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        self.out.write(header)
        remaining = content.size
        while remaining > 0:
            chunk = content.file.read(min(remaining, 1024 * 1024))
            if not chunk:
                raise CommandError(
                    f"the source ended after {content.size - remaining} of {content.size} bytes"
                )
            self.out.write(chunk)
            remaining -= len(chunk)
        pad = padding(content.size)
        self.out.write(pad)
        self.offset += len(header) + content.size + len(pad)

    def finish(self) -> None:
        """Writes the end-of-archive blocks and record padding, and ends the gzip stream."""
        self.out.write(bytes(archive_size(self.offset) - self.offset))
        if self.gz is not None:
            self.gz.close()
        self.raw.flush()


def _fetch_in_order(
    fetcher: Fetcher, entries: list[Entry], jobs: int
) -> Generator[tuple[Entry, Content], None, None]:
    """Yields (entry, content) in list order, fetching up to `jobs` sources ahead on threads."""
    if jobs <= 1:
        for entry in entries:
            yield entry, fetcher.fetch(entry)
        return
    pending: deque[tuple[Entry, Future[Content]]] = deque()
    todo = iter(entries)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            for entry in todo:
                pending.append((entry, pool.submit(fetcher.fetch, entry)))
                if len(pending) >= jobs:
                    first, future = pending.popleft()
                    yield first, future.result()
            while pending:
                first, future = pending.popleft()
                yield first, future.result()
        finally:
            # On failure: stop the running commands and close what was fetched but not written.
            fetcher.abort()
            for _, future in pending:
                future.cancel()
            for _, future in pending:
                if not future.cancelled() and future.exception() is None:
                    future.result().file.close()


@stops_cleanly
def run(args: argparse.Namespace) -> int:
    """Builds the archive; returns 0, or raises CommandError naming the failing line."""
    if args.list == "-":
        lines = sys.stdin.read().splitlines()
        listname = "<stdin>"
    else:
        try:
            with open(args.list, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise CommandError(f"{args.list}: cannot read the list: {exc.strerror or exc}") from None
        listname = args.list
    entries = parse_list(lines, listname)
    output = AtomicOutput(args.output)
    fetcher = Fetcher(listname, args.mtime)
    progress = Progress("create", unit="members")
    fetched = _fetch_in_order(fetcher, entries, args.jobs)
    try:
        tar = TarStream(output.stream, compression_of(args.output))
        for entry, content in fetched:
            try:
                tar.add(entry.name, content)
            except CommandError as exc:
                raise CommandError(f"{fetcher.where(entry)}: {exc}") from None
            finally:
                content.file.close()
            progress.update(1, content.size)
        tar.finish()
        output.commit()
    except BaseException:
        output.abort()
        raise
    finally:
        # Closing the generator now (not when the traceback is freed) kills the commands still running.
        fetched.close()
        progress.close()
    return 0


def add_parser(subparsers: Any) -> None:
    """Registers the `create` subcommand."""
    parser = subparsers.add_parser(
        "create",
        help="build a tar from a list of ARCHIVE-NAME SOURCE lines",
        description="Build a tar archive from a list of `ARCHIVE-NAME SOURCE` lines, members in list order.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("list", metavar="LIST", help="the list file, or - for stdin")
    parser.add_argument(
        "-o", "--output", required=True, help="the archive to write (.tgz/.tar.gz: gzip'd), or - for stdout"
    )
    parser.add_argument(
        "-j", "--jobs", type=int, default=1, help="sources fetched ahead in parallel (default %(default)s)"
    )
    parser.add_argument(
        "--mtime", type=int, help="member mtime in seconds (default: the file's, or now for commands)"
    )
    parser.set_defaults(run=run)
