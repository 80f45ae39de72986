"""Shard indexes: a small sidecar file per shard listing its samples' keys and where each one starts.

A shard `train-000001.tar` has its index beside it as `train-000001.tar.wdsidx` (the suffix is `SUFFIX`;
it does not clash with the `.idx` files of DALI's `wds2idx`). The index holds the shard's sample count and,
for each sample, its key and the byte offset of its first tar header in the *uncompressed* tar stream (for a
`.tar` a file offset to seek to; for a `.tar.gz` or `.tar.zst` the offset after decompression), plus the
offset where the archive's end marker starts. It also records the shard's size and a validator (a local
file's mtime in nanoseconds, or a remote object's ETag) so that an index left over from another version
of the shard is detected and ignored. The byte layout is in `docs/index-format.md`; a typical shard's index
takes 3 to 6 bytes per sample.

Samples are counted and keyed exactly as fastwds's reader groups members (`fastwds.tariterators.split_key`,
`__*__` metadata members skipped), so an index's sample count is the number of samples the reader yields.

Indexes are written by `TarWriter`/`ShardWriter` (for local files, unless `index=False`), by
`build_index` and `write_index`, and by the command `fastwds index URLS...`.
"""

from __future__ import annotations

import gzip
import os
import threading
import warnings
import zlib
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlparse, urlunparse
from urllib.request import url2pathname

import numpy as np

from . import _core
from ._pending import PendingFile
from .gopen import gopen, rewrite_url

__all__ = [
    "SUFFIX",
    "VERSION",
    "ShardIndex",
    "StaleIndexWarning",
    "build_index",
    "dataset_length",
    "decode_index",
    "encode_index",
    "index_name",
    "index_url",
    "load_index",
    "read_index",
    "sample_count",
    "write_index",
]

SUFFIX = ".wdsidx"
"""What a shard's name is followed by to name its index."""

StorageOptions = dict[str, Any] | None
"""Object store settings for `s3://` and `gs://`, as `WebDataset(reader_options={"storage_options": ...})`."""

MAGIC = b"\x89WDSIDX\n"
"""The first eight bytes of every index file (a high-bit byte and a newline catch text-mode mangling)."""

VERSION = 1
"""The format version this module writes; it reads only the versions it knows (1)."""

_BLOCK = 512
_CHECKSUM_BYTES = 4


class StaleIndexWarning(UserWarning):
    """An index was ignored because its shard has changed since it was written (size, mtime or ETag)."""


@dataclass
class ShardIndex:
    """The index of one shard.

    `keys[i]` is the key of the shard's i-th sample and `offsets[i]` the byte offset, in the uncompressed tar
    stream, of the first header block belonging to it (a pax or GNU long-name header when the member has
    one), so parsing from there yields that sample first and whole. Offsets increase and are multiples of
    512. `end` is the offset of the archive's end marker (the two zero blocks), so sample i spans
    `offsets[i]` up to `offsets[i + 1]` (or `end` for the last). `size` is the shard's size in bytes as
    stored (compressed for a `.tar.gz`), `validator` a local shard's mtime in nanoseconds (decimal) or a
    remote shard's ETag ("" when unknown).
    """

    keys: list[str]
    offsets: list[int]
    end: int
    size: int
    validator: str = ""
    version: int = VERSION

    @property
    def count(self) -> int:
        """The number of samples."""
        return len(self.keys)


################################################################
# the byte format
################################################################


def _check_index(index: ShardIndex) -> None:
    if index.version != VERSION:
        raise ValueError(f"cannot write index version {index.version} (this fastwds writes {VERSION})")
    if len(index.keys) != len(index.offsets):
        raise ValueError(f"index has {len(index.keys)} keys but {len(index.offsets)} offsets")
    if index.size < 0:
        raise ValueError(f"index size {index.size} is negative")


def encode_index(index: ShardIndex) -> bytes:
    """The bytes of an index file (format version 1, see docs/index-format.md), made by the core.

    Raises ValueError for an index that cannot be stored: lengths that differ, offsets that decrease, are
    not multiples of 512 or lie past `end`."""
    _check_index(index)
    try:
        return _encoded(index.keys, index)
    except UnicodeEncodeError:
        pass
    # Names the reader could not decode carry surrogates; they are stored as the bytes they were.
    try:
        raw = [key.encode("utf-8", "surrogateescape") for key in index.keys]
    except UnicodeEncodeError as exc:
        raise ValueError(f"cannot store a key in an index: {exc}") from None
    return _encoded(raw, index)


def _encoded(keys: list[str] | list[bytes], index: ShardIndex) -> bytes:
    try:
        return _core.encode_index(keys, index.offsets, index.end, index.size, index.validator)
    except OverflowError:
        raise ValueError("index offsets out of range") from None


class _Cursor:
    """Reads varints, varint columns and byte strings from an index's bytes; errors say what ran out."""

    def __init__(self, data: bytes, start: int) -> None:
        self.data = data
        self.array = np.frombuffer(data, np.uint8)
        self.pos = start

    def varint(self) -> int:
        data = self.data
        pos = self.pos
        result = 0
        shift = 0
        while True:
            if pos >= len(data):
                raise ValueError("ends inside a number")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 63:
                raise ValueError("number longer than 64 bits")
        self.pos = pos
        return result

    def column(self, n: int) -> np.ndarray:
        """`n` varints as an int64 array."""
        if n == 0:
            return np.zeros(0, np.int64)
        rest = self.array[self.pos :]
        fast = rest[:n]
        if len(fast) == n and int(fast.max()) < 0x80:  # every number in one byte
            self.pos += n
            return fast.astype(np.int64)
        ends = np.flatnonzero(rest < 0x80)[:n]
        if len(ends) < n:
            raise ValueError("ends inside a column of numbers")
        starts = np.concatenate(([0], ends[:-1] + 1))
        lengths = ends - starts + 1
        if int(lengths.max()) > 9:
            raise ValueError("number longer than 63 bits")
        chunk = rest[: ends[-1] + 1].astype(np.uint64) & np.uint64(0x7F)
        within = np.arange(len(chunk)) - np.repeat(starts, lengths)
        values = np.add.reduceat(chunk << within.astype(np.uint64) * np.uint64(7), starts)
        self.pos += int(ends[-1]) + 1
        return values.astype(np.int64)

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ValueError("ends inside a string")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk


def decode_index(data: bytes, name: str = "index") -> ShardIndex:
    """Parses an index file's bytes; `name` names it in errors.

    Raises ValueError naming `name` for bytes that are not an index, a version this fastwds does not know,
    a failed checksum or a malformed body."""
    index, _ = _decode(bytes(data), name, True)
    return index


def _decode(data: bytes, name: str, entries: bool) -> tuple[ShardIndex, int]:
    """The index (keys and offsets left empty unless `entries`) and its sample count."""
    if len(data) < len(MAGIC) + 2 + _CHECKSUM_BYTES or not data.startswith(MAGIC):
        raise ValueError(f"{name}: not a fastwds shard index (no {MAGIC!r} magic)")
    version = data[len(MAGIC)]
    if version != VERSION:
        raise ValueError(
            f"{name}: shard index format version {version} is not known to this fastwds (it reads version "
            f"{VERSION}); rebuild it with `fastwds index --force` or upgrade fastwds"
        )
    body = data[:-_CHECKSUM_BYTES]
    stored = int.from_bytes(data[-_CHECKSUM_BYTES:], "little")
    if zlib.crc32(body) != stored:
        raise ValueError(f"{name}: corrupt shard index (checksum mismatch)")
    flags = data[len(MAGIC) + 1]
    if flags:
        raise ValueError(f"{name}: corrupt shard index (unknown flags {flags:#x})")
    cursor = _Cursor(body, len(MAGIC) + 2)
    try:
        size = cursor.varint()
        validator = cursor.take(cursor.varint()).decode("utf-8")
        count = cursor.varint()
        if count > len(body):  # every sample takes at least three bytes
            raise ValueError(f"{count} samples cannot fit in {len(body)} bytes")
        keys: list[str] = []
        offsets: list[int] = []
        end = 0
        if entries:
            shared = cursor.column(count).tolist()
            suffixes = cursor.column(count).tolist()
            text = cursor.take(sum(suffixes))
            blocks = cursor.column(count + 1)
            if cursor.pos != len(body):
                raise ValueError(f"{len(body) - cursor.pos} bytes after the last column")
            keys = _front_decoded(shared, suffixes, text)
            ends = np.cumsum(blocks, dtype=np.uint64) * np.uint64(_BLOCK)
            offsets = ends[:-1].tolist()
            end = int(ends[-1])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}: corrupt shard index ({exc})") from None
    return ShardIndex(keys, offsets, end, size, validator, version), count


def _front_decoded(shared: list[int], suffixes: list[int], text: bytes) -> list[str]:
    """The keys from their shared-prefix lengths, suffix lengths and concatenated suffixes."""
    keys = []
    previous = b""
    pos = 0
    for prefix, length in zip(shared, suffixes):
        if prefix > len(previous):
            raise ValueError("a key shares more bytes than the key before it has")
        raw = previous[:prefix] + text[pos : pos + length]
        pos += length
        keys.append(raw.decode("utf-8", "surrogateescape"))
        previous = raw
    return keys


def _in_bucket(url: str) -> bool:
    """Whether a URL names an `s3://` or `gs://` object (which fastwds writes natively)."""
    return urlparse(rewrite_url(url)).scheme in ("s3", "gs")


def write_index(target: str | os.PathLike[str] | BinaryIO, index: ShardIndex) -> int:
    """Writes an index to a local path (appearing there whole: written under a temporary name in the same
    directory, then renamed), to an `s3://` or `gs://` URL (uploaded; the object appears whole) or to a
    binary file object; returns its size in bytes."""
    data = encode_index(index)
    if not isinstance(target, (str, os.PathLike)):
        target.write(data)
        return len(data)
    path = os.fspath(target)
    if _in_bucket(path):
        with gopen(path, "wb") as sink:
            sink.write(data)
        return len(data)
    pending = PendingFile(path)
    try:
        pending.stream.write(data)
        pending.commit()
    except BaseException:
        pending.discard()
        raise
    return len(data)


def read_index(source: str | os.PathLike[str] | BinaryIO) -> ShardIndex:
    """Reads an index from a path or URL (opened with `fastwds.gopen`) or a binary file object.

    Raises ValueError naming the file when it is not a valid index of a known version, OSError when it
    cannot be read."""
    data, name = _read_bytes(source)
    return decode_index(data, name)


def _read_bytes(source: str | os.PathLike[str] | BinaryIO) -> tuple[bytes, str]:
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        with gopen(name, "rb") as stream:
            return stream.read(), name
    return source.read(), str(getattr(source, "name", "index"))


################################################################
# where an index lives, and whether it is fresh
################################################################


def _local_path(url: str) -> str | None:
    """The local path a shard URL names (a path or `file:` URL, after GOPEN_REWRITE), else None."""
    if url == "-":
        return None
    url = rewrite_url(url)
    parsed = urlparse(url)
    if parsed.scheme == "":
        return url
    if parsed.scheme == "file":
        return url2pathname(parsed.path)
    return None


def index_url(shard_url: str) -> str:
    """The URL of a shard's index, beside it: the shard's path, `file:` or remote URL (`http(s)://`, `s3://`,
    `gs://`, ...) with `SUFFIX` appended to its path (before an http query string).

    Raises ValueError for `-` and `pipe:` URLs, which name no place for an index."""
    shard_url = os.fspath(shard_url)
    parsed = urlparse(shard_url)
    if shard_url == "-" or parsed.scheme == "pipe":
        raise ValueError(f"{shard_url}: a stream or pipe: shard has no index beside it")
    if parsed.scheme in ("http", "https") and (parsed.query or parsed.fragment):
        return urlunparse(parsed._replace(path=parsed.path + SUFFIX))
    return shard_url + SUFFIX


def _index_locations(shard_url: str, index_dir: str | None) -> list[str]:
    """Where a shard's index may be: beside it, then (with `index_dir`) there under the shard's base name."""
    places = []
    try:
        places.append(index_url(shard_url))
    except ValueError:
        pass
    if index_dir is not None:
        places.append(os.path.join(index_dir, index_name(shard_url)))
    return places


def index_name(shard_url: str) -> str:
    """The file name of a shard's index in an index directory (`fastwds index --output-dir`): the base name
    of the shard's path followed by `SUFFIX`."""
    path = urlparse(shard_url).path if "://" in shard_url else shard_url
    base = os.path.basename(path.rstrip("/"))
    if not base:
        raise ValueError(f"{shard_url}: no file name to name an index after")
    return base + SUFFIX


_STAT_SCHEMES = ("s3", "gs", "http", "https", "hf")


def _remote_validator(url: str, storage_options: StorageOptions = None) -> tuple[int | None, str] | None:
    """The current (size, ETag) of an `s3://`, `gs://`, `http(s)://` or `hf://` shard, from a HEAD request (the
    size is None, or the ETag "", when an HTTP server does not send it); None for other URLs or when the
    request fails (reading the shard then reports why)."""
    url = rewrite_url(url)
    if urlparse(url).scheme not in _STAT_SCHEMES:
        return None
    try:
        size, etag = _core.stat_object(url, storage_options)
    except (OSError, ValueError):
        return None
    return size, etag or ""


def _local_validator(path: str) -> tuple[int | None, str]:
    st = os.stat(path)
    return st.st_size, str(st.st_mtime_ns)


def _staleness(shard_url: str, index: ShardIndex, storage_options: StorageOptions = None) -> str | None:
    """What changed in the shard since its index was written, or None when it looks the same (or cannot be
    checked)."""
    path = _local_path(shard_url)
    if path is not None:
        try:
            current: tuple[int | None, str] | None = _local_validator(path)
        except FileNotFoundError:
            return "the shard no longer exists"
    else:
        current = _remote_validator(shard_url, storage_options)
    if current is None:
        return None
    size, validator = current
    changes = []
    if size is not None and size != index.size:
        changes.append(f"size {index.size:,} -> {size:,} bytes")
    # A validator is compared only with one of its kind: an index written beside a local file holds its
    # mtime (decimal digits), one of a remote shard its ETag (quoted). An index uploaded with its shard, or
    # one built from a remote shard and used with a local copy, is checked by the size alone.
    same_kind = index.validator.isdigit() == (path is not None)
    if validator and index.validator and same_kind and validator != index.validator:
        what = "mtime_ns" if path is not None else "ETag"
        changes.append(f"{what} {index.validator} -> {validator}")
    return "; ".join(changes) or None


def _load_bytes(place: str, storage_options: StorageOptions = None) -> bytes | None:
    """An index file's bytes, or None when there is none."""
    path = _local_path(place)
    if path is not None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
    options: dict[str, Any] = (
        {"storage_options": storage_options} if storage_options and _in_bucket(place) else {}
    )
    try:
        with gopen(place, "rb", **options) as stream:
            return stream.read()
    except (OSError, ValueError):
        # A missing object is a 404 to the native readers but a failed command to other openers (pipe:,
        # ais, ...), which cannot be told apart from other failures: an index that cannot be read is absent.
        return None


def _checked(
    shard_url: str,
    place: str,
    data: bytes,
    check: bool,
    entries: bool,
    storage_options: StorageOptions = None,
) -> tuple[ShardIndex, int] | None:
    """The index in `data` (read from `place`) and its sample count; with `check`, None after a
    `StaleIndexWarning` when its shard has changed since it was written."""
    index, count = _decode(data, place, entries)
    if check:
        stale = _staleness(shard_url, index, storage_options)
        if stale is not None:
            warnings.warn(
                f"{shard_url}: ignoring its stale index {place} (the shard changed: {stale}); "
                "rebuild it with `fastwds index`",
                StaleIndexWarning,
                stacklevel=4,
            )
            return None
    return index, count


def _load(
    shard_url: str, check: bool, index_dir: str | None, entries: bool, storage_options: StorageOptions
) -> tuple[ShardIndex, int] | None:
    """The first index found for a shard (see `load_index`) and its sample count."""
    for place in _index_locations(shard_url, index_dir):
        data = _load_bytes(place, storage_options)
        if data is not None:
            return _checked(shard_url, place, data, check, entries, storage_options)
    return None


def load_index(
    shard_url: str,
    *,
    check: bool = True,
    index_dir: str | None = None,
    storage_options: StorageOptions = None,
) -> ShardIndex | None:
    """The index of a shard, found beside it (`index_url`) or else, with `index_dir`, in that directory
    under `index_name(shard_url)`; None when there is none.

    With `check`, an index whose shard has changed since (local: size or mtime; `s3://`, `gs://`,
    `http(s)://`, `hf://`: size or ETag, asked with a HEAD request; other URLs: unchecked) is ignored: None,
    with a `StaleIndexWarning` naming the shard and what changed. Raises ValueError naming the index file
    when it is corrupt or of an unknown version. `storage_options` (as `WebDataset`'s `reader_options` take them) reach `s3://` and `gs://`."""
    found = _load(os.fspath(shard_url), check, index_dir, True, storage_options)
    return None if found is None else found[0]


def sample_count(
    shard_url: str,
    *,
    check: bool = True,
    index_dir: str | None = None,
    storage_options: StorageOptions = None,
) -> int | None:
    """A shard's sample count from its index, as `load_index` finds and checks it (keys and offsets are
    not decoded); None without a usable index."""
    found = _load(os.fspath(shard_url), check, index_dir, False, storage_options)
    return None if found is None else found[1]


def dataset_length(
    urls: str | Iterable[str],
    *,
    check: bool = True,
    index_dir: str | None = None,
    storage_options: StorageOptions = None,
) -> int | None:
    """The number of samples in a set of shards (a brace pattern or a list of URLs) when every shard has a
    usable index (see `load_index`), else None (at the first shard without one)."""
    if isinstance(urls, (str, os.PathLike)):
        from .shardlists import expand_urls

        urls = expand_urls(os.fspath(urls), storage_options=storage_options)
    total = 0
    for url in urls:
        count = sample_count(url, check=check, index_dir=index_dir, storage_options=storage_options)
        if count is None:
            return None
        total += count
    return total


################################################################
# building an index by reading a shard
################################################################

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAX_META_PAYLOAD = 1 << 20
_MAX_ZERO_RUN = 8192
_CHUNK = 1 << 20
_MAX_TAIL = 4 << 20


def is_metadata(name: str) -> bool:
    """Whether the reader skips a member as metadata: a top-level `__name__` (or anything under a top-level
    `__name__/` directory)."""
    first = name.split("/", 1)[0]
    return len(first) >= 4 and first.startswith("__") and first.endswith("__")


class _Counted:
    """A raw byte source that counts the bytes read from it and can look at its first bytes ahead."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.count = 0
        self.head = b""

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n < 0 or n >= len(self.head):
                data, self.head = self.head, b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            return data
        data = self.raw.read(n)
        self.count += len(data)
        return data

    def peek(self, n: int) -> bytes:
        """The first `n` bytes (fewer at the end), which later reads return again."""
        while len(self.head) < n:
            more = self.raw.read(n - len(self.head))
            if not more:
                break
            self.count += len(more)
            self.head += more
        return self.head

    def readable(self) -> bool:
        return True


class _TarBytes:
    """The uncompressed tar stream: `read(n)` (short only at its end) and `skip(n)`, by seeking where the
    source is a plain local file."""

    def __init__(self, stream: Any, seek_size: int | None) -> None:
        self.stream = stream
        self.seek_size = seek_size  # a plain local file's size: skip by seeking
        self.pos = 0

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        while 0 < len(data) < n:
            more = self.stream.read(n - len(data))
            if not more:
                break
            data += more
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        """Skips up to `n` bytes; returns how many there were."""
        if n <= 0:
            return 0
        if self.seek_size is not None:
            got = max(0, min(n, self.seek_size - self.pos))
            self.stream.seek(got, os.SEEK_CUR)
            self.pos += got
            return got
        got = 0
        while got < n:
            chunk = self.stream.read(min(n - got, _CHUNK))
            if not chunk:
                break
            got += len(chunk)
        self.pos += got
        return got


class _TarError(ValueError):
    """The tar stream is not valid where an index was being built (a ValueError naming the shard)."""


def _parse_number(field: bytes) -> int:
    if field and field[0] & 0x80:
        if field[0] == 0xFF:
            raise _TarError("negative base-256 number")
        value = field[0] & 0x7F
        for b in field[1:]:
            value = value * 256 + b
        return value
    text = field.split(b"\x00", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise _TarError(f"not an octal number: {text!r}") from None


def _c_string(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")


def _header_name(h: bytes) -> str:
    name = _c_string(h[0:100])
    if h[257:263] == b"ustar\x00":
        prefix = _c_string(h[345:500])
        if prefix:
            return f"{prefix}/{name}"
    return name


def _verify_checksum(h: bytes) -> None:
    stored = _parse_number(h[148:156])
    unsigned = sum(h) - sum(h[148:156]) + 8 * 32
    if stored == unsigned:
        return
    signed = unsigned - 256 * sum(1 for b in h if b >= 0x80) + 256 * sum(1 for b in h[148:156] if b >= 0x80)
    if stored != signed:
        raise _TarError(f"header checksum mismatch (stored {stored}, computed {unsigned}): not a tar header")


def _parse_pax(payload: bytes) -> tuple[str | None, int | None]:
    path = size = None
    rest = payload
    while rest and rest.strip(b"\x00"):
        space = rest.find(b" ")
        try:
            length = int(rest[:space]) if space > 0 else -1
        except ValueError:
            length = -1
        if length <= space + 1 or length > len(rest) or rest[length - 1] != 0x0A:
            raise _TarError("malformed pax record")
        record = rest[space + 1 : length - 1]
        key, eq, value = record.partition(b"=")
        if not eq:
            raise _TarError("pax record without '='")
        if key == b"path":
            path = value.decode("utf-8", "replace")
        elif key == b"size":
            try:
                size = int(value.strip())
            except ValueError:
                raise _TarError(f"pax size {value!r} is not a number") from None
        rest = rest[length:]
    return path, size


def _members(tar: _TarBytes, stop: threading.Event | None) -> Generator[tuple[str, int], None, int]:
    """Yields (name, offset of its first header block) for each regular-file member, as the reader's tar
    parser finds them (concatenated archives continue, non-file entries are skipped); returns the offset of
    the end-of-archive marker."""
    start = 0
    long_name: str | None = None
    pax_path: str | None = None
    pax_size: int | None = None
    while True:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        header_offset = tar.pos
        h = tar.read(_BLOCK)
        if len(h) < _BLOCK:
            if not h and start == header_offset:
                raise _TarError(f"cut at byte {tar.pos}: no end-of-archive marker")
            raise _TarError(f"cut at byte {tar.pos}: inside a header")
        if not any(h):
            if start != header_offset:
                raise _TarError(f"end-of-archive marker right after an extended header at byte {start}")
            marker = header_offset
            found = None
            for _ in range(_MAX_ZERO_RUN):
                offset = tar.pos
                block = tar.read(_BLOCK)
                if len(block) < _BLOCK:
                    if any(block):
                        raise _TarError(f"trailing bytes after the end-of-archive marker at byte {offset}")
                    break
                if any(block):
                    found = offset
                    h = block
                    break
            if found is None:
                return marker
            start = header_offset = found
        try:
            _verify_checksum(h)
            typeflag = h[156]
            size = _parse_number(h[124:136])
        except _TarError as exc:
            raise _TarError(f"byte {header_offset}: {exc}") from None
        if typeflag in b"xgLK":
            if size > _MAX_META_PAYLOAD:
                raise _TarError(f"byte {header_offset}: extended header of {size} bytes")
            payload = tar.read(size)
            if len(payload) < size or tar.skip(-size % _BLOCK) < -size % _BLOCK:
                raise _TarError(f"cut at byte {tar.pos}: inside an extended header")
            if typeflag == ord("x"):
                path, psize = _parse_pax(payload)
                pax_path = path if path is not None else pax_path
                pax_size = psize if psize is not None else pax_size
            elif typeflag == ord("L"):
                long_name = _c_string(payload)
            continue
        size = pax_size if pax_size is not None else size
        name = pax_path if pax_path is not None else long_name if long_name is not None else _header_name(h)
        if typeflag == ord("S"):
            raise _TarError(f"byte {header_offset}: GNU sparse members are not supported")
        regular = typeflag in (ord("0"), ord("7")) or (typeflag == 0 and not name.endswith("/"))
        dataless = ord("1") <= typeflag <= ord("6") or (typeflag == 0 and name.endswith("/"))
        if regular:
            yield name, start
        pending = 0 if dataless else size + (-size % _BLOCK)
        if tar.skip(pending) < pending:
            raise _TarError(f"cut at byte {tar.pos}: inside the data of {name!r}")
        start = tar.pos
        long_name = pax_path = pax_size = None


def _group(members: Generator[tuple[str, int], None, int]) -> tuple[list[str], list[int], int]:
    """Keys and start offsets of the samples the reader makes of these members, and the end offset."""
    keys: list[str] = []
    offsets: list[int] = []
    split_key = _core.split_key
    current: str | None = None
    while True:
        try:
            name, offset = next(members)
        except StopIteration as done:
            return keys, offsets, done.value
        if is_metadata(name):
            continue
        parts = split_key(name)
        if parts is None:
            continue
        if parts[0] != current:
            current = parts[0]
            keys.append(current)
            offsets.append(offset)


def _zstd_reader(raw: Any, url: str) -> Any:
    """A decompressing reader for a zstd stream, from Python's `compression.zstd` (3.14) or the
    `zstandard` package when installed; neither is a fastwds dependency."""
    try:
        from compression import zstd  # type: ignore[import-not-found]

        return zstd.ZstdFile(raw, "rb")
    except ImportError:
        pass
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        raise ValueError(
            f"{url}: indexing a zstd-compressed shard needs Python 3.14 or the zstandard package "
            "(pip install zstandard)"
        ) from None
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


def build_index(url: str) -> ShardIndex:
    """Reads a shard once (a local path, `file:` or any URL `fastwds.gopen` opens; plain, gzip or zstd by its
    first bytes) and returns its index.

    Raises ValueError naming the shard when it is not a valid tar stream, OSError when it cannot be read."""
    return _build(os.fspath(url), None)


def _build(url: str, stop: threading.Event | None) -> ShardIndex:
    path = _local_path(url)
    before: tuple[int | None, str] | None = None
    if path is not None:
        before = _local_validator(path)
        raw: Any = open(path, "rb")
    else:
        before = _remote_validator(url)
        raw = gopen(url, "rb")
    try:
        counted: Any = _Counted(raw)
        head = counted.peek(4)
        if head.startswith(_GZIP_MAGIC):
            stream: Any = gzip.GzipFile(fileobj=counted, mode="rb")
            tar = _TarBytes(stream, None)
        elif head == _ZSTD_MAGIC:
            tar = _TarBytes(_zstd_reader(counted, url), None)
        elif path is not None:
            raw.seek(0)
            assert before is not None and before[0] is not None
            tar = _TarBytes(raw, before[0])
        else:
            tar = _TarBytes(counted, None)
        try:
            keys, offsets, end = _group(_members(tar, stop))
        except (_TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ValueError(f"{url}: cannot index: {exc}") from None
        if path is None:
            # What follows the archive (a gzip trailer, padding) counts in the stored size; an endless tail
            # is left unread, as the reader leaves it.
            tar.skip(_MAX_TAIL)
            size = counted.count
    finally:
        raw.close()
    after = _local_validator(path) if path is not None else _remote_validator(url)
    if before is not None and after is not None and after != before:
        raise OSError(f"{url}: the shard changed while it was being indexed")
    validator = ""
    if before is not None:
        # The stored size is the one a later check compares with: the object's, when its server says it.
        size = before[0] if before[0] is not None else size
        validator = before[1]
    return ShardIndex(keys, offsets, end, size, validator)
