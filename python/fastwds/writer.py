"""Write samples into tar shards: `TarWriter` (one tar file or stream) and `ShardWriter` (numbered shards).

Samples are dicts `{"__key__": key, field: value, ...}`; each field becomes a tar member `key.field`, in the
sample's field order. Values are encoded by extension (images, JSON, text, numbers, arrays, ...) unless
`encoder=False`, in which case they must be bytes (or str, stored as UTF-8).

The tar bytes (ustar headers, with a pax record only where ustar cannot hold a name, an owner or a size) come
from `fastwds.tarformat`; output goes through a large in-process buffer, so writing costs little beyond
copying the bytes.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import json
import lzma
import operator
import os
import pickle
import re
import stat
import time
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from . import _core, utils
from ._pending import PendingFile
from .gopen import gopen, rewrite_url
from .shardindex import SUFFIX, ShardIndex, _in_bucket, index_url, is_metadata, write_index
from .tarformat import HeaderMaker, archive_size, member_size, padding, tar_format

__all__ = [
    "ShardWriter",
    "TarWriter",
    "add_handlers",
    "bytestr",
    "cbor_dumps",
    "default_handlers",
    "encode_based_on_extension",
    "encode_based_on_extension1",
    "imageencoder",
    "make_encoder",
    "make_handlers",
    "mp_dumps",
    "numpy_dumps",
    "numpy_npz_dumps",
    "tenbin_dumps",
    "torch_dumps",
]

################################################################
# encoders
################################################################


def imageencoder(image: Any, format: str = "PNG") -> bytes:
    """Compresses an image (numpy HxW, HxWx1, HxWx3 or HxWx4, uint8 or float in [0, 1]; or PIL) to bytes.

    `format` is a Pillow format name; "jpg" means JPEG (quality 100) and "img"/"image" mean PPM.
    """
    import PIL.Image

    if not isinstance(image, (PIL.Image.Image, np.ndarray)):
        raise ValueError(
            f"cannot encode {type(image).__name__} as an image (needs a numpy array or PIL image)"
        )
    if isinstance(image, np.ndarray):
        if image.dtype in (np.dtype("f"), np.dtype("d")):
            lo, hi = float(np.amin(image)), float(np.amax(image))
            if lo <= -0.001 or hi >= 1.001:
                raise ValueError(f"image values out of range {lo} {hi}")
            image = np.array(np.clip(image, 0.0, 1.0) * 255.0, "uint8")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(f"cannot encode an array of shape {image.shape} as an image")
        image = PIL.Image.fromarray(image)
    if format.upper() == "JPG":
        format = "JPEG"
    elif format.upper() in {"IMG", "IMAGE"}:
        format = "PPM"
    elif format.upper() in {"PGM", "PBM"}:
        # Pillow writes netpbm through its PPM plugin, choosing P5 (pgm) for L and P4 (pbm) for 1-bit images.
        image = image.convert("L" if format.upper() == "PGM" else "1")
        format = "PPM"
    opts = {"quality": 100} if format in {"JPEG", "tiff"} else {}
    with io.BytesIO() as result:
        image.save(result, format=format, **opts)
        return result.getvalue()


def bytestr(data: Any) -> bytes:
    """Returns bytes as is, and anything else as the ASCII bytes of `str(data)`."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("ascii")
    return str(data).encode("ascii")


def torch_dumps(data: Any) -> bytes:
    """Serializes an object with `torch.save`."""
    import torch

    stream = io.BytesIO()
    torch.save(data, stream)
    return stream.getvalue()


def numpy_dumps(data: np.ndarray) -> bytes:
    """Serializes an array in `.npy` format."""
    import numpy.lib.format

    stream = io.BytesIO()
    numpy.lib.format.write_array(stream, np.asanyarray(data))
    return stream.getvalue()


def numpy_npz_dumps(data: dict[str, np.ndarray]) -> bytes:
    """Serializes a dict of arrays in compressed `.npz` format."""
    if not isinstance(data, dict):
        raise ValueError(f"npz needs a dict of arrays, not {type(data).__name__}")
    for k, v in data.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise ValueError(f"npz needs a dict of str -> numpy array; {k!r} maps to {type(v).__name__}")
    stream = io.BytesIO()
    arrays: dict[str, Any] = data
    np.savez_compressed(stream, **arrays)
    return stream.getvalue()


def tenbin_dumps(x: Any) -> memoryview:
    """Serializes an array, or a list of arrays, in tenbin format."""
    from . import tenbin

    return memoryview(tenbin.encode_buffer(x if isinstance(x, list) else [x]))


def cbor_dumps(x: Any) -> bytes:
    """Serializes an object as CBOR (with the `cbor` package, or `cbor2`)."""
    try:
        import cbor
    except ImportError:
        import cbor2 as cbor
    return cbor.dumps(x)


def mp_dumps(x: Any) -> bytes:
    """Serializes an object as msgpack."""
    import msgpack

    return msgpack.packb(x)


def add_handlers(
    d: dict[str, Callable[[Any], Any]], keys: str | list[str], value: Callable[[Any], Any]
) -> None:
    """Registers `value` as the encoder for each extension in `keys` (a list or a space-separated string)."""
    if isinstance(keys, str):
        keys = keys.split()
    for k in keys:
        d[k] = value


def _ascii_str(x: Any) -> bytes:
    return str(x).encode("ascii")


def _utf8(x: Any) -> bytes:
    return x.encode("utf-8")


def _json(x: Any) -> bytes:
    return json.dumps(x).encode("utf-8")


def make_handlers() -> dict[str, Callable[[Any], Any]]:
    """Returns a fresh table of the default encoders, by extension."""
    handlers: dict[str, Callable[[Any], Any]] = {}
    add_handlers(handlers, "cls cls2 class count index inx id", _ascii_str)
    add_handlers(handlers, "txt text transcript", _utf8)
    add_handlers(handlers, "html htm", _utf8)
    add_handlers(handlers, "pyd pickle", pickle.dumps)
    add_handlers(handlers, "pth", torch_dumps)
    add_handlers(handlers, "npy", numpy_dumps)
    add_handlers(handlers, "npz", numpy_npz_dumps)
    add_handlers(handlers, "ten tenbin tb", tenbin_dumps)
    add_handlers(handlers, "json jsn", _json)
    add_handlers(handlers, "mp msgpack msg", mp_dumps)
    add_handlers(handlers, "cbor", cbor_dumps)
    add_handlers(handlers, "jpg jpeg img image", lambda data: imageencoder(data, "jpg"))
    add_handlers(handlers, "png", lambda data: imageencoder(data, "png"))
    add_handlers(handlers, "pbm", lambda data: imageencoder(data, "pbm"))
    add_handlers(handlers, "pgm", lambda data: imageencoder(data, "pgm"))
    add_handlers(handlers, "ppm", lambda data: imageencoder(data, "ppm"))
    add_handlers(handlers, "tiff tif", lambda data: imageencoder(data, "tiff"))
    return handlers


default_handlers = make_handlers()


def encode_based_on_extension1(data: Any, tname: str, handlers: dict[str, Callable[[Any], Any]]) -> Any:
    """Encodes one value by the extension of its field name `tname` (`x.json.gz` is JSON, then gzipped).

    bytes pass through and str becomes UTF-8; metadata fields (starting with "_") must be str.
    """
    if tname[0] == "_":
        if not isinstance(data, str):
            raise ValueError("the values of metadata must be of string type")
        return data
    compress = tname.endswith(".gz")
    if compress:
        tname = tname[:-3]
    if isinstance(data, (bytes, bytearray, memoryview)):
        result = data
    elif isinstance(data, str):
        result = data.encode("utf-8")
    else:
        extension = re.sub(r".*\.", "", tname).lower()
        handler = handlers.get(extension)
        if handler is None:
            raise ValueError(f"no handler found for {extension}")
        result = handler(data)
    if compress:
        result = gzip.compress(result)
    return result


def encode_based_on_extension(
    sample: dict[str, Any], handlers: dict[str, Callable[[Any], Any]]
) -> dict[str, Any]:
    """Encodes every field of a sample by extension."""
    return {k: encode_based_on_extension1(v, k, handlers) for k, v in sample.items()}


def make_encoder(
    spec: bool | dict[str, Callable[[Any], Any]] | Callable[[dict], dict] | None,
) -> Callable[[dict], dict]:
    """Turns an encoder spec into a sample -> sample function.

    False/None: no encoding; True: the default extension encoders; a dict: extension -> encoder;
    a callable: used as is.
    """
    if spec is False or spec is None:

        def encoder(x: dict) -> dict:
            return x

        return encoder
    if spec is True:
        handlers = default_handlers
    elif isinstance(spec, dict):
        handlers = spec
    elif callable(spec):
        return spec
    else:
        raise ValueError(f"{spec}: unknown encoder spec")

    def encode(sample: dict) -> dict:
        return encode_based_on_extension(sample, handlers)

    return encode


################################################################
# output buffering and compression
################################################################

_BUFSIZE = 1 << 20


def _write_all(sink: Any, data: Any) -> None:
    """Writes all of `data`, also to raw streams whose write() may take only part of it."""
    n = sink.write(data)
    if n is None or n >= len(data):
        return
    view = memoryview(data)[n:]
    while len(view):
        n = sink.write(view)
        if n is None:
            return
        view = view[n:]


class _Compressed:
    """A write-only stream compressing into another stream (gzip, bz2 or xz)."""

    def __init__(self, raw: Any, kind: str):
        self.raw = raw
        if kind == "gz":
            # wbits=31 makes a gzip container; level 6 is gzip's default speed/size trade-off.
            self.comp: Any = zlib.compressobj(6, zlib.DEFLATED, 31)
        elif kind == "bz2":
            self.comp = bz2.BZ2Compressor(9)
        else:
            self.comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ)

    def write(self, data: Any) -> int:
        out = self.comp.compress(data)
        if out:
            _write_all(self.raw, out)
        return len(data)

    def close(self) -> None:
        _write_all(self.raw, self.comp.flush())


class _Output:
    """Collects tar bytes and writes them in pieces of about 1 MiB.

    Small members are coalesced in a bytearray; large payloads are kept as separate pieces, which go to a
    file descriptor with one `os.writev` (no user-space copy) or to a stream one `write` at a time.
    """

    _DIRECT = 16 << 10  # payloads this large are not copied into the coalescing buffer
    _MAX_PIECES = 512  # well below IOV_MAX (1024 on Linux)

    def __init__(self, sink: Any, fd: int | None):
        self.sink = sink
        self.fd = fd
        self.small = bytearray()
        self.pieces: list[Any] = []
        self.pending = 0  # bytes held in self.pieces

    def add(self, header: bytes, data: Any) -> None:
        """Queues one member: its header block(s), its data and the padding to a whole block."""
        small = self.small
        small += header
        size = len(data)
        if size >= self._DIRECT:
            if type(data) is not bytes:
                data = bytes(data)  # a mutable buffer could change before it is written
            self.pieces += (small, data)
            self.pending += len(small) + size
            self.small = bytearray(padding(size))
            if len(self.pieces) >= self._MAX_PIECES:
                self.flush()
        else:
            small += data
            small += padding(size)

    def maybe_flush(self) -> None:
        """Writes the queued bytes out once there are enough of them."""
        if self.pending + len(self.small) >= _BUFSIZE:
            self.flush()

    def flush(self) -> None:
        """Writes out everything queued."""
        pieces = self.pieces
        if self.small:
            pieces.append(self.small)
        if not pieces:
            return
        if self.fd is not None:
            _writev_all(self.fd, pieces)
        else:
            for piece in pieces:
                _write_all(self.sink, piece)
        self.pieces = []
        self.pending = 0
        self.small = bytearray()


def _writev_all(fd: int, pieces: list[Any]) -> None:
    """Writes all pieces to a file descriptor, resuming after partial writes."""
    while pieces:
        n = os.writev(fd, pieces)
        while pieces and n >= len(pieces[0]):
            n -= len(pieces[0])
            pieces = pieces[1:]
        if n:
            pieces = [memoryview(pieces[0])[n:], *pieces[1:]]


def _compression(target: Any, compress: bool | str | None) -> str | None:
    """The compression for a target (None, "gz", "bz2" or "xz"), as webdataset decides it."""
    name = target if isinstance(target, str) else ""
    if compress is False:
        return None
    if compress is True or compress == "gz" or name.endswith("gz"):
        return "gz"
    if compress == "bz2" or name.endswith("bz2"):
        return "bz2"
    if compress == "xz" or name.endswith("xz"):
        return "xz"
    return None


################################################################
# writers
################################################################


def _local_file_target(url: str) -> str | None:
    """The path a writer's URL names when it is a local file written whole (a new or a regular file), else
    None: `-`, `pipe:`, other schemes, FIFOs and devices are streams, written as they are."""
    if url == "-":
        return None
    url = rewrite_url(url)
    parsed = urlparse(url)
    if parsed.scheme not in ("", "file"):
        return None
    path = url if parsed.scheme == "" else url2pathname(parsed.path)
    if os.path.islink(path):
        path = os.path.realpath(path)  # replace the file the link points to, not the link
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError:
        return None  # let the ordinary open report it
    return path if stat.S_ISREG(mode) else None


def _index_entries(samples: list[Any], starts: list[int]) -> tuple[list[str], list[int]]:
    """The index's keys and offsets from what `TarWriter` noted of each sample written: its key (whose
    members the reader groups under `split_key(key + ".field")`, the same for every field without "/") or
    a list of (reader key, offset in the sample) marks; consecutive samples with one key are one sample to
    the reader."""
    try:
        joined = "\n".join(samples)
    except TypeError:
        pass  # some samples have marks
    else:
        plain = "." not in joined and "/" not in joined and "\n\n" not in joined
        plain = plain and not joined.startswith("\n") and not joined.endswith("\n")  # no empty key
        if plain and not any(map(operator.eq, samples, itertools.islice(samples, 1, None))):
            return samples, starts  # every key is its own reader key, and none comes twice in a row
    keys: list[str] = []
    offsets: list[int] = []
    last = None
    split_key = _core.split_key
    for sample, start in zip(samples, starts):
        if type(sample) is str:
            parts = split_key(sample + ".x")
            marks = [] if parts is None else [(parts[0], 0)]
        else:
            marks = sample
        for key, offset in marks:
            if key != last:
                keys.append(key)
                offsets.append(start + offset)
                last = key
    return keys, offsets


def _unresolved_path(url: str) -> str:
    """The local path a writer's local-file URL names, symbolic links left as they are."""
    url = rewrite_url(url)
    parsed = urlparse(url)
    return url2pathname(parsed.path) if parsed.scheme == "file" else url


class TarWriter:
    """Writes samples (dicts with a `__key__`) as members of one tar file or stream.

    `fileobj` is a binary file object or a URL for `gopen` (path, `pipe:CMD`, `-`, ...). Output is gzipped
    when `compress` is True/"gz" or the URL ends in "gz" ("bz2"/"xz" likewise). `encoder` is True (encode
    by extension), False/None (values are bytes or str), an extension -> encoder dict or a callable on the
    sample. Metadata fields other than `__key__` (names starting with "_") are only written with
    `keep_meta=True`. Members get `mode`, owner names `user`/`group` and `mtime` (default: the time of
    writing). `format` picks how over-long names are stored: ustar/pax (default) or GNU.

    `index`: whether to write the shard's index (`fastwds.shardindex`) beside it as `NAME.wdsidx` when it is
    closed. By default (None) that is done when the target is a local file (a path or `file:` URL) or an
    `s3://`/`gs://` object (the index is uploaded after the shard, with the object's ETag), and not for
    streams, pipes, file objects or other URLs, which have no place for it (True raises ValueError there).
    After `close()`, `index` holds the `ShardIndex` written (or None).
    """

    def __init__(
        self,
        fileobj: str | BinaryIO | Any,
        user: str = "bigdata",
        group: str = "bigdata",
        mode: int = 0o0444,
        compress: bool | str | None = None,
        encoder: bool | dict | Callable[[dict], dict] | None = True,
        keep_meta: bool = False,
        mtime: float | None = None,
        format: Any = None,
        index: bool | None = None,
    ) -> None:
        self._headers = HeaderMaker(user, group, mode, tar_format(format))
        self.mtime = mtime
        self.user = user
        self.group = group
        self.mode = mode
        self.compress = compress
        self.encoder = make_encoder(encoder)
        self.keep_meta = keep_meta
        if isinstance(fileobj, os.PathLike):
            fileobj = os.fspath(fileobj)
        kind = _compression(fileobj, compress)
        self._pending: PendingFile | None = None
        self._failed = False
        # The index's path, and the keys and offsets of the samples written so far (the reader's keys).
        self._index_path: str | None = None
        self._index_object: str | None = None  # the s3/gs shard whose index is uploaded after it
        self._keys: list[Any] | None = None  # per sample: its key, or the marks of `_index_marks`
        self._starts: list[int] = []  # per sample: the offset of its first header
        self.index: ShardIndex | None = None
        if isinstance(fileobj, str):
            self.own_fileobj = fileobj != "-"
            # In secure mode gopen refuses local files (as webdataset's TarWriter does).
            path = None if utils.enforce_security else _local_file_target(fileobj)
            if path is not None:
                if index is not False:
                    # Beside the name given (a symbolic link's, not its target's): where readers look.
                    self._index_path = _unresolved_path(fileobj) + SUFFIX
                    self._keys = []
                self._pending = PendingFile(path)
                fileobj = self._pending.stream
            else:
                if index is not False and _in_bucket(fileobj):
                    self._index_object = fileobj
                    self._keys = []
                fileobj = gopen(fileobj, "wb")
        else:
            self.own_fileobj = False
        if index and self._keys is None:
            raise ValueError(
                "TarWriter(index=True) needs a local file or s3://, gs:// target; a stream, pipe or other "
                "URL has no place for an index (index it later with `fastwds index`)"
            )
        self.stream = fileobj
        sink: Any = _Compressed(fileobj, kind) if kind else fileobj
        fd = None
        if self.own_fileobj and not kind and isinstance(fileobj, (io.BufferedWriter, io.FileIO)):
            # A file this writer opened: write to its descriptor directly (its buffer stays empty).
            fd = fileobj.fileno()
        self._out = _Output(sink, fd)
        self._offset = 0
        self.closed = False

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        # As webdataset: an exception in the block still ends the archive of the samples written before it.
        self.close()

    def abandon(self) -> None:
        """Stops without finishing the output: a local file's temporary is removed and an `s3://`/`gs://`
        upload is aborted, so nothing appears under the name; a stream is left without the end-of-archive
        marker (a pipe's command is not told the archive is complete)."""
        if self.closed:
            return
        self._fail()
        self.close()

    def _prepare(self, obj: dict[str, Any]) -> tuple[list[tuple[bytes, Any]], int, Any]:
        """Encodes a sample into (header, data) pairs and the number of tar bytes they take, with what the index
        needs to know of it (None when not indexing; see `_index_marks`)."""
        obj = self.encoder(obj)
        if not isinstance(obj, dict) or "__key__" not in obj:
            raise ValueError("object must contain a __key__")
        key = obj["__key__"]
        if not isinstance(key, str):
            raise ValueError(f"__key__ must be a str, not {type(key).__name__}")
        mtime = int(self.mtime) if self.mtime is not None else int(time.time())
        members = []
        total = 0
        make = self._headers.make
        indexing = self._keys is not None
        slashed = False
        data: bytes | bytearray | memoryview
        for k, v in obj.items():
            if k[0] == "_":
                if k == "__key__" or not self.keep_meta:
                    continue
            if isinstance(v, bytes):
                data = v
            elif isinstance(v, str):
                data = v.encode("utf-8")
            elif isinstance(v, bytearray):
                data = v
            elif isinstance(v, memoryview):
                data = v if v.format == "B" and v.ndim == 1 else v.tobytes()
            else:
                raise ValueError(f"{k} doesn't map to a bytes after encoding ({type(v)})")
            size = len(data)
            header = make(key + "." + k, size, mtime)
            members.append((header, data))
            total += member_size(header, size)
            if indexing and "/" in k:
                slashed = True
        if not indexing:
            return members, total, None
        if slashed or not members or key[:2] == "__":
            return members, total, self._index_marks(key, obj, members)
        # Members `key.field` whose fields hold no "/" are grouped under a key that depends on `key` alone,
        # resolved when the shard is closed (unless `key` starts with "__": `__key.field__` is metadata).
        return members, total, key

    def _index_marks(
        self, key: str, obj: dict[str, Any], members: list[tuple[bytes, Any]]
    ) -> list[tuple[str, int]]:
        """Where the reader's keys start in a sample's members: (key, offset from the sample's start) at each
        change of key, metadata and unsplittable names skipped (the reader's rules)."""
        fields = [k for k in obj if not (k[0] == "_" and (k == "__key__" or not self.keep_meta))]
        marks: list[tuple[str, int]] = []
        current = None
        offset = 0
        for field, (header, data) in zip(fields, members):
            name = key + "." + field
            parts = None if is_metadata(name) else _core.split_key(name)
            if parts is not None and parts[0] != current:
                current = parts[0]
                marks.append((current, offset))
            offset += member_size(header, len(data))
        return marks

    def _write_prepared(self, members: list[tuple[bytes, Any]], total: int, marks: Any) -> None:
        if self._failed:
            raise ValueError("write to a TarWriter whose output failed")
        out = self._out
        try:
            for header, data in members:
                out.add(header, data)
            out.maybe_flush()
        except BaseException:
            self._fail()
            raise
        if marks is not None:
            self._keys.append(marks)  # type: ignore[union-attr]
            self._starts.append(self._offset)
        self._offset += total

    def _fail(self) -> None:
        """After a failed write: the output holds part of a sample, so it is never finished; a local file's
        temporary is removed at once."""
        self._failed = True
        if self._pending is not None:
            self._pending.discard()

    def write(self, obj: dict[str, Any]) -> int:
        """Writes one sample and returns the number of bytes it added to the (uncompressed) tar stream.

        A failed write (a full disk, a command that stopped reading) leaves the output unfinished: a local
        file is removed, a stream is left without the end-of-archive marker, and later writes raise."""
        if self.closed:
            raise ValueError("write to a closed TarWriter")
        members, total, marks = self._prepare(obj)
        self._write_prepared(members, total, marks)
        return total

    def close(self) -> None:
        """Ends the archive, flushes it, and closes the output if this writer opened it.

        A local file is written under a temporary name in its directory and renamed to its own name here, so
        it appears only complete; if ending it fails, the temporary is removed. After a failed write nothing
        is written (the error was raised by that write)."""
        if self.closed:
            return
        self.closed = True
        pending = self._pending
        if self._failed:
            if self.own_fileobj and pending is None:
                # An object upload is aborted rather than completed with part of a shard.
                end = getattr(self.stream, "abort", None) or self.stream.close
                try:
                    end()
                except Exception:  # noqa: S110
                    pass  # the failed write raised already; closing its broken stream adds nothing
            return
        try:
            out = self._out
            out.small += bytes(archive_size(self._offset) - self._offset)
            out.flush()
            if isinstance(out.sink, _Compressed):
                out.sink.close()
            flush = getattr(self.stream, "flush", None)
            if flush is not None:
                flush()
            if pending is not None:
                pending.commit()
        except BaseException:
            self._fail()
            raise
        finally:
            if self.own_fileobj and pending is None:
                self.stream.close()
        if self._index_path is not None and self._keys is not None:
            keys, offsets = _index_entries(self._keys, self._starts)
            st = os.stat(self._index_path[: -len(SUFFIX)])
            self.index = ShardIndex(keys, offsets, self._offset, st.st_size, str(st.st_mtime_ns))
            write_index(self._index_path, self.index)
        elif self._index_object is not None and self._keys is not None:
            keys, offsets = _index_entries(self._keys, self._starts)
            size, etag = _core.stat_object(rewrite_url(self._index_object))
            if size is None:  # an object store always sends it
                raise OSError(f"{self._index_object}: the store did not tell the size of the shard written")
            self.index = ShardIndex(keys, offsets, self._offset, size, etag or "")
            write_index(index_url(self._index_object), self.index)

    @staticmethod
    def tarmode(fileobj: Any, compress: bool | str | None = None) -> str:
        """The tarfile mode webdataset would use for this target ("w|", "w|gz", "w|bz2" or "w|xz")."""
        kind = _compression(fileobj, compress)
        return "w|" + (kind or "")


class ShardWriter:
    """Writes samples into numbered shards `pattern % shard`, starting a new one when a shard is full.

    A new shard is started before a sample would make the current one hold more than `maxcount` samples
    or grow past `maxsize` bytes (uncompressed tar size; a sample larger than that gets a shard of its own).
    `post(fname)` runs after each shard is closed; `opener(fname)` opens the output (default: gopen).
    `verbose` prints "# writing NAME COUNT SIZE TOTAL" when a shard starts; other keywords go to `TarWriter`,
    among them `index`: each local or `s3://`/`gs://` shard gets its index beside it (`NAME.wdsidx`) unless
    `index=False`.
    """

    def __init__(
        self,
        pattern: str,
        maxcount: int = 100000,
        maxsize: float = 3e9,
        post: Callable[[str], Any] | None = None,
        start_shard: int = 0,
        verbose: int = 1,
        opener: Callable[[str], Any] | None = None,
        **kw: Any,
    ) -> None:
        self.verbose = verbose
        self.kw = kw
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.post = post
        self.tarstream: TarWriter | None = None
        self.shard = start_shard
        self.pattern = pattern
        self.total = 0
        self.count = 0
        self.size = 0
        self.fname: str | None = None
        self.opener = opener
        self.next_stream()

    def next_stream(self) -> None:
        """Closes the current shard and opens the next one."""
        self.finish()
        self.fname = self.pattern % self.shard
        if self.verbose:
            print("# writing", self.fname, self.count, "%.1f GB" % (self.size / 1e9), self.total)
        self.shard += 1
        if self.opener:
            self.tarstream = TarWriter(self.opener(self.fname), **self.kw)
            # The stream was opened for this shard alone: closing it with the shard flushes it.
            self.tarstream.own_fileobj = True
        else:
            self.tarstream = TarWriter(self.fname, **self.kw)
        self.count = 0
        self.size = 0

    def write(self, obj: dict[str, Any]) -> int:
        """Writes one sample, first starting a new shard if it would not fit in the current one."""
        if self.tarstream is None:
            self.next_stream()
        assert self.tarstream is not None
        members, total, marks = self.tarstream._prepare(obj)
        full = self.count >= self.maxcount
        if not full and self.count > 0:
            full = archive_size(self.size + total) > self.maxsize
        if full:
            self.next_stream()
            assert self.tarstream is not None
        self.tarstream._write_prepared(members, total, marks)
        self.count += 1
        self.total += 1
        self.size += total
        return total

    def finish(self) -> None:
        """Closes the current shard and runs `post` on it (with its final name: a local shard is renamed into
        place first). A shard whose write failed is not finished and `post` does not see it."""
        if self.tarstream is not None:
            tarstream, self.tarstream = self.tarstream, None
            tarstream.close()
            if callable(self.post) and not tarstream._failed:
                assert self.fname is not None
                self.post(self.fname)

    def close(self) -> None:
        """Closes the last shard."""
        self.finish()

    def abandon(self) -> None:
        """Stops without finishing the current shard (see `TarWriter.abandon`); shards already finished
        stay."""
        if self.tarstream is not None:
            tarstream, self.tarstream = self.tarstream, None
            tarstream.abandon()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *args: Any, **kw: Any) -> None:
        self.close()
