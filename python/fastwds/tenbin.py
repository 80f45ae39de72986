"""The tenbin binary tensor format (`.ten` files and fields), byte-compatible with webdataset's `tenbin`.

A buffer is a sequence of chunks. Each chunk is the 8-byte magic `~TenBin~`, the chunk's length in bytes
as a little-endian int64, then the payload zero-padded to a multiple of 64 bytes. Arrays take two chunks:
a header (int64 words: dtype code as 8 ASCII bytes, an 8-byte info string, the rank, then each dimension)
and the raw C-ordered little-endian data.

Malformed input raises `ValueError` saying what is wrong; every length is checked against the bytes that
are actually there before anything is allocated.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Sequence
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "bytedata",
    "bytelen",
    "decode_buffer",
    "decode_chunks",
    "decode_header",
    "decode_list",
    "encode_buffer",
    "encode_chunks",
    "encode_header",
    "encode_list",
    "load",
    "long_to_short",
    "magic",
    "magic_bytes",
    "magic_str",
    "read",
    "read_chunk",
    "roundup",
    "save",
    "short_to_long",
    "str64",
    "unstr64",
    "write",
    "write_chunk",
]

# dtype name -> the 8-byte code stored in headers. The reference spells uint32 "unit32" by mistake, so it can
# neither write nor read uint32; the code "u4" is the one it meant, and fastwds reads and writes it.
long_to_short: dict[str, str] = {
    "float16": "f2",
    "float32": "f4",
    "float64": "f8",
    "int8": "i1",
    "int16": "i2",
    "int32": "i4",
    "int64": "i8",
    "uint8": "u1",
    "uint16": "u2",
    "uint32": "u4",
    "uint64": "u8",
}
short_to_long: dict[str, str] = {v: k for k, v in long_to_short.items()}

magic_str = "~TenBin~"
magic_bytes = magic_str.encode("ascii")

_MAX_RANK = 9
_ALIGN = 64
_INT64 = struct.Struct("<q")
# Streams are read in pieces of this size so that a corrupt length cannot trigger a huge allocation.
_READ_PIECE = 1 << 20


def str64(s: str) -> int:
    """Packs a string of at most 8 ASCII characters into an int64, as tenbin headers store it."""
    raw = s.encode("ascii")
    if len(raw) > 8:
        raise ValueError(f"tenbin: string {s!r} is longer than 8 bytes")
    return _INT64.unpack(raw.ljust(8, b"\0"))[0]


def unstr64(i: int) -> str:
    """Unpacks an int64 made by `str64` into its string."""
    raw = _INT64.pack(int(i))
    try:
        return raw.decode("ascii").strip("\0")
    except UnicodeDecodeError:
        raise ValueError(f"tenbin: header word {raw!r} is not an ASCII string") from None


magic = str64(magic_str)


def roundup(n: int, k: int = _ALIGN) -> int:
    """Rounds `n` up to a multiple of `k` (64 by default)."""
    return k * ((n + k - 1) // k)


def bytelen(a: Any) -> int:
    """Returns the length of an array or a bytes-like object in bytes."""
    if isinstance(a, (bytes, bytearray)):
        return len(a)
    if hasattr(a, "nbytes"):
        return int(a.nbytes)
    raise ValueError(f"tenbin: cannot determine the byte length of {type(a).__name__}")


def bytedata(a: Any) -> Any:
    """Returns the raw bytes of an array (C order, little-endian) or a bytes-like object as is."""
    if isinstance(a, (bytes, bytearray, memoryview)):
        return a
    if isinstance(a, np.ndarray):
        return _byte_view(a)
    if hasattr(a, "data"):
        return a.data
    raise ValueError(f"tenbin: cannot get the bytes of {type(a).__name__}")


def _normalized(a: np.ndarray) -> np.ndarray:
    """The array as C-contiguous with little-endian byte order (the layout tenbin stores)."""
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a if a.flags.c_contiguous else a.copy(order="C")  # (ascontiguousarray makes 0-d arrays 1-d)


def _byte_view(a: np.ndarray) -> memoryview:
    """A flat unsigned-byte view of the array's data (works for empty and 0-d arrays too)."""
    return _normalized(a).reshape(-1).view(np.uint8).data


def _as_bytes(b: Any) -> Any:
    """Bytes-like input as something whose len() is its size in bytes."""
    if isinstance(b, (bytes, bytearray)):
        return b
    if isinstance(b, np.ndarray):
        return _byte_view(b)
    view = memoryview(b)
    if view.format == "B" and view.ndim == 1:
        return view
    return memoryview(view.tobytes()) if view.nbytes == 0 else view.cast("B")


def _as_array(a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor: store its values
        return a.detach().cpu().numpy()
    raise ValueError(f"tenbin: can only encode numpy arrays, got {type(a).__name__}")


def encode_header(a: np.ndarray, info: str = "") -> memoryview:
    """Encodes the header chunk payload (dtype code, info, rank, shape) of an array."""
    if a.ndim > _MAX_RANK:
        raise ValueError(f"tenbin: too many dimensions ({a.ndim} > {_MAX_RANK})")
    if a.dtype.name not in long_to_short:
        raise ValueError(f"tenbin: unsupported array type {a.dtype.name}")
    header = [str64(long_to_short[a.dtype.name]), str64(info), a.ndim, *a.shape]
    return _byte_view(np.array(header, dtype="<i8"))


def decode_header(h: Any) -> tuple[tuple[int, ...], np.dtype, str]:
    """Decodes a header chunk payload into `(shape, dtype, info)`."""
    h = _as_bytes(h)
    n = len(h)
    if n < 24 or n % 8 != 0:
        raise ValueError(f"tenbin: header chunk of {n} bytes (needs at least 24, a multiple of 8)")
    words = struct.unpack(f"<{n // 8}q", h)
    code = unstr64(words[0])
    if code not in short_to_long:
        raise ValueError(f"tenbin: unsupported array type code {code!r}")
    dtype = np.dtype(short_to_long[code]).newbyteorder("<")
    info = unstr64(words[1])
    rank = words[2]
    if rank < 0 or rank > _MAX_RANK:
        raise ValueError(f"tenbin: bad rank {rank}")
    if 3 + rank > len(words):
        raise ValueError(f"tenbin: header of rank {rank} is truncated ({n} bytes)")
    shape = tuple(words[3 : 3 + rank])
    if any(d < 0 for d in shape):
        raise ValueError(f"tenbin: negative dimension in shape {shape}")
    return shape, dtype, info


def encode_list(l: Sequence[Any], infos: Sequence[str] | None = None) -> list[Any]:  # noqa: E741 (webdataset's parameter name)
    """Encodes a list of arrays into a list of chunk payloads (header, data, header, data, ...)."""
    if infos is None:
        infos = [""]
    elif len(l) != len(infos):
        raise ValueError(f"tenbin: {len(l)} arrays but {len(infos)} infos")
    result: list[Any] = []
    for i, a in enumerate(l):
        arr = _normalized(_as_array(a))
        result += [encode_header(arr, infos[i % len(infos)]), bytedata(arr)]
    return result


def _check_infos(data: list[np.ndarray], infos: list[str], required_infos: Any) -> Any:
    if required_infos is False or required_infos is None:
        return data
    if required_infos is True:
        return data, infos
    if not isinstance(required_infos, (tuple, list)):
        raise ValueError("tenbin: required_infos must be a bool, a tuple or a list")
    for required, actual in zip(required_infos, infos):
        if required != actual:
            raise ValueError(f"tenbin: info {actual!r} does not match the required info {required!r}")
    return data


def decode_list(l: Sequence[Any], infos: Any = False) -> Any:  # noqa: E741 (webdataset's parameter name)
    """Decodes a list of chunk payloads (header, data, ...) into arrays; `infos=True` also returns infos."""
    if len(l) % 2 != 0:
        raise ValueError(f"tenbin: odd number of chunks ({len(l)}): the last array has no data chunk")
    result = []
    infos0 = []
    for header, data in zip(l[::2], l[1::2]):
        shape, dtype, info = decode_header(header)
        count = 1
        for d in shape:
            count *= d
        expected = count * dtype.itemsize
        if bytelen(data) != expected:
            raise ValueError(
                f"tenbin: data chunk of {bytelen(data)} bytes, but shape {shape} of {dtype.name} "
                f"needs {expected}"
            )
        a = np.frombuffer(data, dtype=dtype, count=count).reshape(shape)
        if sys.byteorder != "little":
            a = a.astype(a.dtype.newbyteorder("="))
        result.append(a)
        infos0.append(info)
    return _check_infos(result, infos0, infos)


def encode_chunks(l: Iterable[Any]) -> bytearray:  # noqa: E741 (webdataset's parameter name)
    """Frames chunk payloads with magic, length and padding into one buffer."""
    chunks = [_as_bytes(b) for b in l]
    result = bytearray(sum(16 + roundup(len(b)) for b in chunks))
    offset = 0
    for b in chunks:
        n = len(b)
        result[offset : offset + 8] = magic_bytes
        result[offset + 8 : offset + 16] = _INT64.pack(n)
        offset += 16
        result[offset : offset + n] = b
        offset += roundup(n)
    return result


def decode_chunks(buf: Any) -> list[memoryview]:
    """Splits a buffer into its chunk payloads (zero-copy views), checking magic and lengths."""
    view = memoryview(_as_bytes(buf))
    total = len(view)
    result = []
    offset = 0
    while offset < total:
        if total - offset < 16:
            raise ValueError(
                f"tenbin: truncated chunk header at offset {offset} ({total - offset} bytes left)"
            )
        if view[offset : offset + 8] != magic_bytes:
            raise ValueError(f"tenbin: bad magic at offset {offset} (not {magic_str!r})")
        nbytes = _INT64.unpack(view[offset + 8 : offset + 16])[0]
        offset += 16
        if nbytes < 0:
            raise ValueError(f"tenbin: negative chunk length {nbytes} at offset {offset - 8}")
        if nbytes > total - offset:
            raise ValueError(
                f"tenbin: chunk of {nbytes} bytes at offset {offset} runs past the end of the "
                f"{total}-byte buffer"
            )
        result.append(view[offset : offset + nbytes])
        offset += roundup(nbytes)
    return result


def encode_buffer(l: list[Any], infos: Sequence[str] | None = None) -> bytearray:  # noqa: E741 (webdataset's parameter name)
    """Encodes a list of arrays into one tenbin buffer."""
    if not isinstance(l, list):
        raise ValueError("tenbin: encode_buffer requires a list")
    return encode_chunks(encode_list(l, infos=infos))


def decode_buffer(buf: Any, infos: Any = False) -> Any:
    """Decodes a tenbin buffer into a list of arrays (read-only views of `buf` when it is immutable)."""
    return decode_list(decode_chunks(buf), infos=infos)


def write_chunk(stream: BinaryIO, buf: Any) -> None:
    """Writes one chunk (magic, length, payload, padding) to a binary stream."""
    data = _as_bytes(bytedata(buf))
    nbytes = len(data)
    stream.write(magic_bytes)
    stream.write(_INT64.pack(nbytes))
    stream.write(data)
    padding = roundup(nbytes) - nbytes
    if padding:
        stream.write(b"\0" * padding)


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    """Reads exactly n bytes in bounded pieces; raises ValueError at a premature end."""
    pieces = []
    left = n
    while left > 0:
        piece = stream.read(min(left, _READ_PIECE))
        if not piece:
            raise ValueError(f"tenbin: premature end of stream in {what} ({n - left} of {n} bytes)")
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)


def read_chunk(stream: BinaryIO) -> bytes | None:
    """Reads one chunk payload from a binary stream; returns None at a clean end of stream."""
    head = stream.read(8)
    if not head:
        return None
    if len(head) < 8:
        head += _read_exact(stream, 8 - len(head), "chunk magic")
    if head != magic_bytes:
        raise ValueError(f"tenbin: bad magic {head!r} (not {magic_str!r})")
    nbytes = _INT64.unpack(_read_exact(stream, 8, "chunk length"))[0]
    if nbytes < 0:
        raise ValueError(f"tenbin: negative chunk length {nbytes}")
    data = _read_exact(stream, nbytes, "chunk data")
    padding = roundup(nbytes) - nbytes
    if padding:
        # The padding of the last chunk may be missing in files cut by other tools; that loses nothing.
        stream.read(padding)
    return data


def write(stream: BinaryIO, l: Sequence[Any], infos: Sequence[str] | None = None) -> None:  # noqa: E741 (webdataset's parameter name)
    """Writes a list of arrays to a binary stream in tenbin format."""
    for chunk in encode_list(l, infos=infos):
        write_chunk(stream, chunk)


def read(stream: BinaryIO, n: int = sys.maxsize, infos: Any = False) -> Any:
    """Reads up to `n` arrays from a binary stream in tenbin format."""
    chunks: list[bytes] = []
    for _ in range(n):
        header = read_chunk(stream)
        if header is None:
            break
        data = read_chunk(stream)
        if data is None:
            raise ValueError("tenbin: premature end of stream (an array header without data)")
        chunks += [header, data]
    return decode_list(chunks, infos=infos)


def save(fname: str, *args: Any, infos: Sequence[str] | None = None, nocheck: bool = False) -> None:
    """Saves arrays to a `.ten` file."""
    if not nocheck and not fname.endswith(".ten"):
        raise ValueError("tenbin: file name should end in .ten")
    with open(fname, "wb") as stream:
        write(stream, args, infos=infos)


def load(fname: str, infos: Any = False, nocheck: bool = False) -> Any:
    """Loads the list of arrays stored in a `.ten` file."""
    if not nocheck and not fname.endswith(".ten"):
        raise ValueError("tenbin: file name should end in .ten")
    with open(fname, "rb") as stream:
        return read(stream, infos=infos)
