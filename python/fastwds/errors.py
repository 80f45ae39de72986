"""The exceptions the Rust core raises, defined in a real module so that they pickle across processes.

A DataLoader worker, a `multiprocessing.Pool` worker or a Dask task that fails while reading a shard sends
its exception to the parent by pickling it; these classes rebuild there with their attributes. Every error
names where it happened: `url` (the shard), `member` (the tar member being read, or None), `offset` (the
byte offset of that member's first header in the uncompressed tar stream, or None), and says what happened
in `kind`, a short machine-readable word:

- `"open"`: the shard could not be opened (missing file, HTTP status, spawn failure, unsupported scheme)
- `"io"`: reading or decompressing the byte stream failed
- `"truncated"`: the stream ended before the tar end-of-archive marker
- `"format"`: the bytes are not a valid tar stream
- `"command"`: a `pipe:` command exited with a failure
- `"timeout"`: the source sent nothing for longer than the read timeout
- `"too_large"`: a member is larger than the reader's `max_member_bytes`
- `"duplicate"`: a sample holds the same field twice (`DuplicateFieldError`)
- `"insecure"`: refused in secure mode (`InsecureURLError`)
- `"decode"`: an image could not be decoded (`ImageDecodeError`)
"""

from __future__ import annotations

import json
import re
import tarfile

__all__ = ["ShardError", "DuplicateFieldError", "InsecureURLError", "ImageDecodeError"]


class _Located(Exception):
    """Where an error happened: the shard URL, the member and the byte offset, and what kind of error."""

    url: str | None
    member: str | None
    offset: int | None
    kind: str

    default_kind = "io"

    def __init__(
        self,
        message: str = "",
        *,
        url: str | None = None,
        member: str | None = None,
        offset: int | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)  # the exception base that follows in the class's MRO
        self._locate(url, member, offset, kind or self.default_kind)

    def _locate(self, url: str | None, member: str | None, offset: int | None, kind: str) -> None:
        self.url = url
        self.member = member
        self.offset = offset
        self.kind = kind
        if url is None and self.args and "Original Traceback" in str(self.args[0]):
            self._recover(str(self.args[0]))

    def _recover(self, text: str) -> None:
        """Takes the attributes back from a traceback's text: torch's DataLoader re-raises a worker's error as
        `type(error)(traceback text)`, whose last line for this error is `module.Class: str(error)`."""
        lines = re.findall(rf"^(?:[\w.]+\.)?{type(self).__name__}: (.*)$", text, re.MULTILINE)
        found = _DETAILS.search(lines[-1]) if lines else None
        if found is None:
            return
        self.url = found["url"]
        self.kind = found["kind"]
        self.offset = int(found["offset"]) if found["offset"] else None
        if found["member"]:
            try:
                self.member = json.loads(found["member"])
            except ValueError:
                self.member = found["member"][1:-1]

    def __reduce__(self) -> tuple:
        # The attributes travel as keyword arguments, so the rebuilt error is whole even for subclasses whose
        # base (OSError) has its own reduce.
        return (_rebuild, (type(self), self.args, self.url, self.member, self.offset, self.kind))


# What the core's message ends with: `URL: message (kind; member "name", byte offset N)`.
_DETAILS = re.compile(
    r'^(?P<url>.*?): .* \((?P<kind>[a-z_]+)(?:; member (?P<member>"(?:[^"\\]|\\.)*"))?'
    r"(?:(?:;|,) byte offset (?P<offset>\d+))?\)$"
)


def _rebuild(
    cls: type, args: tuple, url: str | None, member: str | None, offset: int | None, kind: str
) -> object:
    """Rebuild an unpickled error with its attributes."""
    err = cls(*args)
    err._locate(url, member, offset, kind)
    return err


class ShardError(_Located, tarfile.ReadError, OSError):
    """A shard could not be read: open failed, a command exited with a failure, the source stalled, or the tar
    stream is corrupt or cut.

    It is an `OSError`, and a `tarfile.ReadError` as code written for webdataset expects of a damaged shard.
    """


class DuplicateFieldError(_Located, ValueError):
    """A sample holds the same field twice (a `ValueError`, as the reference raises). With a handler that
    continues, the repeated member is dropped and the shard goes on."""

    default_kind = "duplicate"


class InsecureURLError(_Located, ValueError):
    """A URL refused in secure mode (`WDS_SECURE=1` or `fastwds.utils.enforce_security`): a `pipe:` URL,
    which would run a command. A `ValueError`, as the reference raises."""

    default_kind = "insecure"


class ImageDecodeError(_Located, ValueError):
    """An image field could not be decoded on the reader threads; it is found as that field's value."""

    default_kind = "decode"
