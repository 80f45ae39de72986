"""Helpers the subcommands share: URL expansion, sizes, sample byte counts and outputs that appear whole."""

from __future__ import annotations

import functools
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from ..shardlists import expand_urls


class CommandError(Exception):
    """A failure the command line reports as one message and a non-zero exit status (no traceback)."""


class Terminated(KeyboardInterrupt):
    """A SIGTERM, SIGHUP or SIGINT arrived: raised in the main thread so that the command cleans up as after
    Ctrl-C (temporary files removed, `pipe:` children killed) before the process dies of the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def stops_cleanly(run: Callable[[Any], int]) -> Callable[[Any], int]:
    """Wraps a command's `run(args)`: SIGTERM, SIGHUP and SIGINT raise `Terminated` in it, later ones are
    ignored while it cleans up, and then the process dies of the first signal (its parent sees it killed by
    that signal, as for any Unix tool). Signals ignored at start (`nohup`, `&` in a script) stay ignored."""

    @functools.wraps(run)
    def wrapper(args: Any) -> int:
        if threading.current_thread() is not threading.main_thread():
            return run(args)
        previous: dict[int, Any] = {}

        def stop(signum: int, frame: Any) -> None:
            for other in previous:
                signal.signal(other, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            raise Terminated(signum)

        for signum in _STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, stop)
        try:
            return run(args)
        except Terminated as exc:
            received = exc.signum
        finally:
            for restored, handler in previous.items():
                signal.signal(restored, handler)
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        signal.signal(received, signal.SIG_DFL)
        os.kill(os.getpid(), received)
        return 128 + received  # not reached: the signal ends the process

    return wrapper


def expand_all(urls: Iterable[str]) -> list[str]:
    """Expands each argument's brace patterns (`a-{000..009}.tar`, `::` lists, `${X}`) into one URL list."""
    result: list[str] = []
    for url in urls:
        result.extend(expand_urls(url))
    if not result:
        raise CommandError("no shards given")
    return result


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*$")


def parse_size(text: str) -> int:
    """Parses a byte count such as `3e9`, `500M`, `1GB` (powers of 1000) or `64KiB` (powers of 1024)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (examples: 1000000, 3e9, 500M, 1G, 64KiB)")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    power = " kmgt".index(unit.lower()) if unit else 0
    return int(float(number) * base**power)


def sample_bytes(sample: dict[str, Any]) -> int:
    """The number of content bytes in a sample (its fields, not the metadata keys)."""
    return sum(len(v) for k, v in sample.items() if not k.startswith("__"))


def compression_of(name: str) -> str | None:
    """ "gz" when an output name asks for gzip (`.tgz`, `.tar.gz`, `.gz`), else None."""
    return "gz" if name.endswith(("gz",)) else None


def check_not_terminal(stream: BinaryIO) -> None:
    """Refuses to write a binary tar stream to a terminal, as gzip does."""
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        raise CommandError("refusing to write a tar stream to a terminal (redirect it or use -o FILE)")


class AtomicOutput:
    """A binary output that appears under its final name only when complete.

    For a path, writes go to a hidden temporary file in the same directory, renamed over the path by
    `commit()`; `abort()` removes it, so a failed run never leaves a half-written file under the final name.
    For `-`, writes go straight to stdout (a stream cannot be taken back; a failed run exits non-zero and
    never writes the tar end marker, so readers see a cut stream, not a short valid one). For an `s3://` or
    `gs://` URL, writes go up as a multipart upload that `commit()` completes and `abort()` abandons.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.temp: str | None = None
        self.upload: Any = None
        self.stream: BinaryIO
        if path.startswith(("s3://", "gs://")):
            from .. import _core

            self.upload = _core.ObjectWriter(path)
            self.stream = self.upload  # a binary file in all that the writers use
            return
        if path == "-":
            self.stream = sys.stdout.buffer
            check_not_terminal(self.stream)
            return
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise CommandError(f"{path}: the output directory {directory} does not exist")
        fd, self.temp = tempfile.mkstemp(
            prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
        )
        self.stream = os.fdopen(fd, "wb")

    def commit(self) -> None:
        """Flushes the output and gives it its final name."""
        if self.upload is not None:
            self.upload.close()
            return
        if self.temp is None:
            self.stream.flush()
            return
        self.stream.close()
        # mkstemp creates 0600 files; give the output the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.temp, 0o666 & ~umask)
        os.replace(self.temp, self.path)
        self.temp = None

    def abort(self) -> None:
        """Removes the temporary file or abandons the upload (a no-op for stdout or after commit)."""
        if self.upload is not None:
            self.upload.abort()
            return
        if self.temp is None:
            return
        try:
            self.stream.close()
        finally:
            try:
                os.unlink(self.temp)
            except FileNotFoundError:
                pass
            self.temp = None
