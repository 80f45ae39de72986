"""Type stubs for the Rust extension `fastwds._core`.

`python -m mypy.stubtest fastwds._core` (scripts/typecheck.sh) checks them against the built extension. A
default written `...` is one the extension's signature shows as `...` (pyo3 renders only plain literals);
its value is in the comment beside it.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import Any, BinaryIO, final

import numpy

__all__ = [
    "__version__",
    "ShardError",
    "ImageDecodeError",
    "DuplicateFieldError",
    "InsecureURLError",
    "ShardReader",
    "SampleIterator",
    "tar_samples",
    "tar_members",
    "split_key",
    "_rebuild_reader",
    "decode_image",
    "image_crop_params",
    "ImageOptions",
    "NATIVE_IMAGE_EXTENSIONS",
    "_rebuild_image_options",
    "encode_index",
    "list_objects",
    "stat_object",
    "RemoteReader",
    "ObjectWriter",
]

__version__: str

from .errors import DuplicateFieldError as DuplicateFieldError
from .errors import ImageDecodeError as ImageDecodeError
from .errors import InsecureURLError as InsecureURLError
from .errors import ShardError as ShardError

# A shard is a URL string (path, file:PATH, -, pipe:CMD, http(s)://...), a binary file object with
# .read(n), or a dict with a "url" key (a webdataset shard-list item) and optionally a "stream" key
# holding an opened binary file object, or a "local_path" key naming where to read it from (a cached copy,
# a rewritten URL) while samples keep "url" as their `__url__`, or a "cache_path" key: read through the
# cache (`cache_dir`), from the entry at that path or downloaded into it while it is read. An exception raised by the shard iterable
# surfaces after the samples of the shards before it.
_Shard = str | BinaryIO | dict[str, Any]

@final
class ShardReader:
    """Reads tar shards into samples on Rust threads; iterating it yields sample dicts.

    Each sample is a dict `{"__key__": str, "__url__": str, field: bytes, ...}` in member order. No thread
    starts until iteration; each `iter()` starts a fresh read of all shards (after fork too). Pickles as its
    configuration.

    - `shards`: an iterable of shards, pulled lazily (it may be an endless generator).
    - `threads`: reader threads (0 = min(4, cores)), and the most images decoded at once with `images`;
      `prefetch`: shards read ahead at once (0 = threads + 1).
    - `ordered`: True yields shard by shard in the given order; False yields whatever is ready first.
    - `buffer_bytes` / `buffer_samples`: bound on the samples held between the threads and Python.
    - `fields`: field names to keep (others are skipped in Rust, never copied); None keeps all.
    - `select_files(name) -> bool` and `rename_files(name) -> str`: applied to each member name before
      grouping (rename first, as the reference), called on the reader threads with the GIL held.
    - `lcase`: lower-case field names (the reference does).
    - `members`: yield members `{"fname": str, "data": bytes, "__url__": str}` instead of grouped samples.
    - `handler(exc) -> bool`: called with each error; true goes on (after a broken shard with the next one;
      after a dropped member — a repeated field, a failing `select_files`/`rename_files` (whose own exception
      is passed), a member over `max_member_bytes` — within the same shard), false stops the iteration
      quietly, raising propagates. None raises.
    - `images`: decode image fields on the reader threads into uint8 numpy arrays, as an `ImageOptions` (or a
      dict of its keyword arguments; `{}` for the defaults) says; a failed field's value is an
      `ImageDecodeError` unless it keeps its bytes (`keep_bytes_on_error`).
    - `max_member_bytes`: a larger member is an error naming it, raised before any of it is buffered.
    - Remote shards (`s3://`, `gs://`, `hf://`, `http(s)://`) are read on the reader threads. `read_timeout`:
      seconds a read may wait for the next byte before it is retried from the byte it reached;
      `max_retries`: failed attempts in a row (without progress) before the shard fails; `retry_timeout`:
      seconds such a run of failures may last. A permanent error (no such key, access denied) fails at once.
      `storage_options`: object store settings (`object_store`'s keys, e.g. `aws_access_key_id`,
      `aws_endpoint`, `aws_region`, `google_service_account`) over the environment's.
    - `cache_dir` / `cache_size`: where shards given with a "cache_path" are cached, and the most bytes the
      directory may hold (least recently used entries are deleted beyond it).
    - `opener(url) -> binary file object`: opens URLs of schemes the core does not read itself (it reads
      paths, `file:`, `-`, `pipe:`, `s3://`, `gs://`, `hf://` and http(s)); None uses `fastwds.gopen.gopen`,
      whose `gopen_schemes` table users extend. The core closes what it opens. What the opener raises reaches
      the caller as itself.

    In secure mode (`fastwds.utils.enforce_security`, set by `WDS_SECURE=1`) `pipe:` URLs are refused with
    `InsecureURLError` before anything runs.
    """

    def __new__(
        cls,
        shards: Iterable[_Shard],
        *,
        threads: int = 0,
        prefetch: int = 0,
        ordered: bool = True,
        buffer_bytes: int = 256 * 1024 * 1024,
        buffer_samples: int = 4096,
        fields: Iterable[str] | None = None,
        select_files: Callable[[str], bool] | None = None,
        rename_files: Callable[[str], str] | None = None,
        lcase: bool = True,
        members: bool = False,
        handler: Callable[[BaseException], bool] | None = None,
        images: ImageOptions | dict[str, Any] | None = None,
        max_member_bytes: int = 2 * 1024**3,
        read_timeout: float = ...,  # 60.0
        opener: Callable[[str], BinaryIO] | None = None,
        storage_options: dict[str, Any] | None = None,
        max_retries: int = ...,  # 10
        retry_timeout: float = ...,  # 180.0
        cache_dir: str | None = None,
        cache_size: int = ...,  # 2**64 - 1
    ) -> ShardReader: ...
    def __iter__(self) -> SampleIterator: ...

def _rebuild_reader(shards: Any, kwargs: dict[str, Any]) -> ShardReader:
    """Rebuilds a pickled `ShardReader`."""

@final
class SampleIterator:
    """One pass over a ShardReader's shards; owns the reader threads and `pipe:` children."""

    def __iter__(self) -> SampleIterator: ...
    def __next__(self) -> dict[str, Any]: ...
    def close(self) -> None:
        """Stops the threads, kills and reaps `pipe:` children, and waits (bounded) for them to exit."""

    @property
    def threads_running(self) -> int: ...

def tar_samples(
    source: str | BinaryIO,
    *,
    url: str | None = None,
    fields: Iterable[str] | None = None,
    lcase: bool = True,
    handler: Callable[[BaseException], bool] | None = None,
) -> SampleIterator:
    """Iterates the samples of one tar stream (a URL or a binary file object); `url` names it in samples."""

def tar_members(source: str | BinaryIO, *, url: str | None = None, info: bool = False) -> SampleIterator:
    """Iterates the regular-file members of one tar stream as `{"fname", "data", "__url__"}` dicts; with
    `info`, also `mode`, `uid`, `gid`, `uname`, `gname` and `mtime`."""

def split_key(name: str) -> tuple[str, str] | None:
    """Splits a member name into (key, field) exactly as the reader groups members (webdataset's rule: the key
    runs to the first `.` of the last path component); None for a name the reader skips. Public as
    `fastwds.tariterators.split_key`, for code that names members the way the reader will group them."""

@final
class ImageOptions:
    """How image fields are decoded, with one set of defaults; frozen, checked when made, picklable.

    `mode` is "rgb8", "l8" or "rgba8". With `size=(h, w)` an image is cropped and resized to exactly that size:
    `crop="center"` is torchvision `Resize(short side) + CenterCrop`, `crop="random_resized"` is
    `RandomResizedCrop(size, scale, ratio)`; `flip` is the horizontal-flip probability; random draws come from
    `seed` (and on the reader threads from `epoch` and each image's key and field). `reduced_dct` lets JPEGs
    decode at 1/2..1/8 scale (like Pillow's `draft()`) when the crop is at least twice the target. Images over
    `max_pixels` are refused from the header. `extensions` are the field extensions a reader decodes;
    `keep_bytes_on_error` keeps a failed field's bytes for a later decoder.
    """

    def __new__(
        cls,
        mode: str = "rgb8",
        *,
        extensions: list[str] | None = None,
        size: tuple[int, int] | None = None,
        crop: str = "center",
        scale: tuple[float, float] = ...,  # (0.08, 1.0)
        ratio: tuple[float, float] = ...,  # (3 / 4, 4 / 3)
        flip: float = 0.0,
        seed: int = 0,
        epoch: int = 0,
        max_pixels: int = ...,  # 178_956_970, Pillow's limit
        reduced_dct: bool = True,
        keep_bytes_on_error: bool = False,
    ) -> ImageOptions: ...
    def replace(self, **changes: Any) -> ImageOptions:
        """A copy with the given options changed."""

    def asdict(self) -> dict[str, Any]:
        """The options as keyword arguments of the constructor."""

    @property
    def mode(self) -> str: ...
    @property
    def extensions(self) -> list[str]: ...
    @property
    def size(self) -> tuple[int, int] | None: ...
    @property
    def crop(self) -> str: ...
    @property
    def scale(self) -> tuple[float, float]: ...
    @property
    def ratio(self) -> tuple[float, float]: ...
    @property
    def flip(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def max_pixels(self) -> int: ...
    @property
    def reduced_dct(self) -> bool: ...
    @property
    def keep_bytes_on_error(self) -> bool: ...

NATIVE_IMAGE_EXTENSIONS: tuple[str, ...]

def _rebuild_image_options(kwargs: dict[str, Any]) -> ImageOptions: ...
def decode_image(data: bytes, mode: str | ImageOptions | None = None, **options: Any) -> numpy.ndarray:
    """Decodes JPEG/PNG/PPM/PBM bytes to uint8 HxWxC (HxW for "l8"), equal to Pillow's `convert(mode)`, cropped,
    resized and flipped as the `ImageOptions` that `mode` (a mode name or an `ImageOptions`) and `options` name
    say. Raises ValueError on bad data."""

def image_crop_params(
    height: int, width: int, size: tuple[int, int], **options: Any
) -> tuple[float, float, float, float, bool]:
    """The (top, left, crop_height, crop_width, flipped) that `decode_image` uses for an image of that size
    resized to `size` with these `ImageOptions` arguments, in full-size pixel coordinates: boxes or keypoints
    labelled on the full image map to the decoded crop through it."""

def list_objects(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The object URLs under a prefix (`s3://bkt/train/`) or matching a glob (`s3://bkt/train/shard-*.tar`),
    sorted; every page of the listing."""

def encode_index(
    keys: Sequence[str | bytes], offsets: Sequence[int], end: int, size: int, validator: str
) -> bytes:
    """The bytes of an index file (format version 1) for its keys (str, or bytes for names that are not UTF-8),
    their offsets, the end offset, the shard's stored size and its validator. Raises ValueError for content
    that cannot be stored, UnicodeEncodeError for a str key that is not UTF-8 (surrogates)."""

def stat_object(url: str, storage_options: dict[str, Any] | None = None) -> tuple[int | None, str | None]:
    """A remote shard's (size, ETag) from a HEAD request (`s3://`, `gs://`, `http(s)://`, `hf://`); either is
    None when the server does not send it (an object store always sends the size)."""

@final
class RemoteReader:
    """A remote object (`s3://`, `gs://`, `hf://`, `http(s)://`) read as a binary file, resumed after drops."""

    def __new__(
        cls,
        url: str,
        storage_options: dict[str, Any] | None = None,
        read_timeout: float = ...,  # 60.0
        max_retries: int = ...,  # 10
        retry_timeout: float = ...,  # 180.0
    ) -> RemoteReader: ...
    def read(self, size: int = ...) -> bytes:  # size=-1
        """Up to `size` bytes (all that is left when `size` is negative); b"" at the end."""

    def readable(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    @property
    def name(self) -> str: ...
    def close(self) -> None: ...
    def __enter__(self) -> RemoteReader: ...
    def __exit__(self, *_args: object) -> None: ...

@final
class ObjectWriter:
    """An object written by multipart upload: it appears under its name only when `close()` completes it;
    `abort()` (or leaving a `with` block by an exception, or garbage collection before `close()`) leaves no
    object."""

    def __new__(cls, url: str, storage_options: dict[str, Any] | None = None) -> ObjectWriter: ...
    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Buffers `data` (any bytes-like object), uploading full parts; returns its length."""

    def flush(self) -> None: ...
    def writable(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    @property
    def name(self) -> str: ...
    def close(self) -> None:
        """Completes the object (a no-op when closed already)."""

    def abort(self) -> None:
        """Abandons the upload: no object appears."""

    def __enter__(self) -> ObjectWriter: ...
    def __exit__(self, exc_type: object, _exc: object = None, _tb: object = None) -> None: ...
