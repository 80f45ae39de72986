"""Caching of remote shards in a local directory (`WebDataset(cache_dir=..., cache_size=...)`).

`WebDataset` caches through the core (`CoreCache`): a remote shard is written to the cache while it streams
(the first sample does not wait for the whole shard), renamed into place only when it was read to its end
intact, and read from there afterwards; processes sharing the directory download each shard once; the core
evicts least recently used shards beyond `cache_size`. Local shards are read in place.

`FileCache` (webdataset's stage: download a shard whole, then read it) and `LRUCleanup` remain for code that
uses them directly.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from .gopen import gopen as gopen_url
from .handlers import reraise_exception

__all__ = [
    "default_cache_dir",
    "default_cache_size",
    "verbose_cache",
    "islocal",
    "get_filetype",
    "magic_filetype",
    "check_tar_format",
    "pipe_cleaner",
    "url_to_cache_name",
    "LRUCleanup",
    "download",
    "StreamingOpen",
    "FileCache",
    "CoreCache",
    "cache_path_for",
]

default_cache_dir = os.environ.get("WDS_CACHE", "./_cache")
default_cache_size = float(os.environ.get("WDS_CACHE_SIZE", "1e18"))

verbose_cache = int(os.environ.get("WDS_VERBOSE_CACHE", "0"))


def islocal(url: str) -> bool:
    """Tell whether a URL names a local file (a plain path or `file:`)."""
    return urlparse(url).scheme in ["", "file"]


def _local_file(url: str) -> str:
    """The path of a local URL. Secure mode reads local shards here as the reference's cache does, and as
    the core's reader does: it guards against commands and unpickling, not against local paths."""
    parsed = urlparse(url)
    return url if parsed.scheme == "" else url2pathname(parsed.path)


def get_filetype(fname: str) -> str:
    """Return what the `file` command says about a file. Raises OSError when `file` is missing."""
    if not os.path.exists(fname):
        raise FileNotFoundError(fname)
    try:
        result = subprocess.run(["file", fname], stdout=subprocess.PIPE, text=True, check=True)
    except (subprocess.SubprocessError, FileNotFoundError) as exn:
        raise OSError("the UNIX 'file' command is not available") from exn
    return result.stdout


def magic_filetype(fname: str) -> str:
    """Describe a file by its magic bytes: gzip, zstd, POSIX tar, or data."""
    with open(fname, "rb") as f:
        header = f.read(512)
    if header[:2] == b"\x1f\x8b":
        return f"{fname}: gzip compressed data"
    if header[:4] == b"\x28\xb5\x2f\xfd":
        return f"{fname}: zstandard compressed data"
    if len(header) > 261 and header[257:262] == b"ustar":
        return f"{fname}: POSIX tar archive"
    return f"{fname}: data"


def check_tar_format(fname: str) -> bool:
    """Tell whether a file looks like a shard: a tar archive, or gzip or zstd data (a compressed tar)."""
    if not os.path.exists(fname):
        raise FileNotFoundError(fname)
    ftype = magic_filetype(fname).lower()
    return "tar archive" in ftype or "gzip compressed" in ftype or "zstandard compressed" in ftype


def pipe_cleaner(spec: str) -> str:
    """Guess the URL a `pipe:` command reads (its first http(s)/hdfs/gs/ais/s3 word); other specs as is.

    (webdataset marks this obsolete and raises when it is called; here it works.)
    """
    if spec.startswith("pipe:"):
        for word in spec[5:].split(" "):
            if re.match(r"^(https?|hdfs|gs|ais|s3):", word):
                return word
    return spec


def url_to_cache_name(url: str, ndir: int = 0) -> str:
    """Return the cache file name for a URL: its last path component (plus `ndir` directories) for common
    schemes, else the quoted URL (at most 128 characters)."""
    if not isinstance(url, str):
        raise TypeError(f"url_to_cache_name: expected a str, got {type(url).__name__}")
    parsed = urlparse(url)
    if parsed.scheme in [None, "", "file", "http", "https", "ftp", "ftps", "gs", "s3", "ais"]:
        path = parsed.path.lstrip("/")
        return "/".join(path.split("/")[-1 - ndir :])
    return urllib.parse.quote(url, safe="_+{}*,-")[-128:]


def cache_path_for(url: str) -> str:
    """Return the relative cache path of a URL, distinct for distinct URLs: `SCHEME/HOST/PATH` (so
    `s3://bkt/train/0.tar` is `s3/bkt/train/0.tar`), plus a digest of any query string; a `pipe:` command or
    other opaque URL as its quoted text (at most 96 characters) and a digest. No part is `..`, so every path
    stays inside the cache directory."""
    if not isinstance(url, str):
        raise TypeError(f"cache_path_for: expected a str, got {type(url).__name__}")
    digest = hashlib.sha1(url.encode()).hexdigest()[:12]
    parsed = urlparse(url)
    if parsed.scheme and parsed.netloc:
        parts = [parsed.scheme, parsed.netloc] + [
            p for p in parsed.path.split("/") if p not in ("", ".", "..")
        ]
        if len(parts) == 2:
            parts.append(digest)
        elif parsed.query or parsed.params:
            parts[-1] += "." + digest
        return "/".join(urllib.parse.quote(p, safe="_+-.@=,") for p in parts)
    quoted = urllib.parse.quote(url, safe="_+-.,=")[:96]
    return f"{parsed.scheme or 'url'}/{quoted}.{digest}"


class CoreCache:
    """The cache stage of `WebDataset`: gives each remote shard (any URL that is not a local path) its cache
    path, `{"url": url, "cache_path": path}`, for the core to read from or download into.

    `url_to_name(url)` names the entry relative to `cache_dir` (default `cache_path_for`); the core keeps
    the directory within `cache_size` bytes.
    """

    def __init__(self, cache_dir: str, url_to_name: Callable[[str], str] | None = None) -> None:
        self.cache_dir = cache_dir
        self.url_to_name = url_to_name or cache_path_for

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        """Yield the shards of `src` with their cache paths (local shards as they are)."""
        for item in src:
            url = item["url"] if isinstance(item, dict) else item
            if islocal(url) or url == "-" or (isinstance(item, dict) and item.keys() - {"url"}):
                yield item
                continue
            name = self.url_to_name(url)
            root = os.path.abspath(self.cache_dir)
            path = os.path.abspath(os.path.join(root, name))
            if os.path.commonpath([path, root]) != root:
                raise ValueError(f"cache name {name!r} for {url} leaves the cache directory")
            yield {"url": url, "cache_path": path}


class LRUCleanup:
    """Deletes the least recently created files of a cache directory while it is larger than `cache_size`.

    `cleanup()` runs at most once every `interval` seconds (None: every call).
    """

    def __init__(
        self,
        cache_dir: str | None = None,
        cache_size: float = int(1e12),
        keyfn: Callable[[str], float] = os.path.getctime,
        verbose: bool = False,
        interval: float | None = 30,
    ) -> None:
        self.cache_dir = cache_dir
        self.cache_size = cache_size
        self.keyfn = keyfn
        self.verbose = verbose
        self.interval = interval
        self.last_run = 0.0

    def set_cache_dir(self, cache_dir: str) -> None:
        """Set the directory to clean."""
        self.cache_dir = cache_dir

    def cleanup(self) -> None:
        """Delete the oldest files (by `keyfn`) until the directory holds at most `cache_size` bytes."""
        if self.cache_dir is None or not os.path.exists(self.cache_dir):
            return
        if self.interval is not None and time.time() - self.last_run < self.interval:
            return
        try:
            files: list[str] = []
            for dirpath, _, filenames in os.walk(self.cache_dir):
                files.extend(os.path.join(dirpath, name) for name in filenames)
            total_size = sum(os.path.getsize(f) for f in files)
            if total_size > self.cache_size:
                files.sort(key=self.keyfn, reverse=True)
                while files and total_size > self.cache_size:
                    fname = files.pop()
                    total_size -= os.path.getsize(fname)
                    if self.verbose:
                        print(f"# deleting {fname}", file=sys.stderr)
                    os.remove(fname)
        except OSError:
            # Other processes sharing the cache delete files between our listing and our stat/remove.
            pass
        self.last_run = time.time()


def download(url: str, dest: str, chunk_size: int = 1024**2, verbose: bool = False) -> None:
    """Copy `url` (opened with gopen) to the file `dest`, atomically (via a temporary name)."""
    temp = dest + f".temp{os.getpid()}"
    try:
        with gopen_url(url) as stream, open(temp, "wb") as f:
            while True:
                data = stream.read(chunk_size)
                if not data:
                    break
                f.write(data)
        os.rename(temp, dest)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


class StreamingOpen:
    """Open each URL of a stream: yields `{"url", "stream"}`, plus `"local_path"` for local files.

    Errors go to `handler` (true: skip the URL, false: stop).
    """

    def __init__(
        self, verbose: bool = False, handler: Callable[[BaseException], bool] = reraise_exception
    ) -> None:
        self.verbose = verbose
        self.handler = handler

    def __call__(self, urls: Iterable[Any]) -> Iterator[dict[str, Any]]:
        """Yield the opened URLs."""
        for url in urls:
            if isinstance(url, dict):
                url = url["url"]
            try:
                if islocal(url):
                    path = _local_file(url)
                    yield dict(url=url, stream=open(path, "rb"), local_path=path)
                else:
                    yield dict(url=url, stream=gopen_url(url))
            except Exception as exn:
                if self.handler(exn):
                    continue
                break


class FileCache:
    """Download remote shards into `cache_dir` (once) and yield `{"url", "stream", "local_path"}` for each.

    Local URLs are used in place. `url_to_name` maps a URL to its file name in the cache (no `/`);
    `validator` checks a fresh download (by default: it must look like a tar, gzip or zstd file) and a
    failed check deletes it and raises ValueError. Errors go to `handler`: true retries with backoff (up to
    10 attempts), false stops. With `cache_size > 0` the directory is kept under that many bytes.
    """

    def __init__(
        self,
        cache_dir: str | None = None,
        *,
        url_to_name: Callable[[str], str] = url_to_cache_name,
        verbose: bool = False,
        validator: Callable[[str], bool] | None = check_tar_format,
        handler: Callable[[BaseException], bool] = reraise_exception,
        cache_size: float = -1,
        cache_cleanup_interval: float = 30,
    ) -> None:
        self.url_to_name = url_to_name
        self.validator = validator
        self.handler = handler
        self.cache_dir = default_cache_dir if cache_dir is None else cache_dir
        self.verbose = verbose
        if cache_size > 0:
            self.cleaner: LRUCleanup | None = LRUCleanup(
                self.cache_dir, cache_size, verbose=self.verbose, interval=cache_cleanup_interval
            )
        else:
            self.cleaner = None

    def get_file(self, url: str) -> str:
        """Return the local path of `url`, downloading it into the cache first if needed.

        Raises ValueError when the download fails validation or the cache name is not a plain file name.
        """
        if islocal(url):
            return _local_file(url)
        cache_name = self.url_to_name(url)
        if "/" in cache_name:
            raise ValueError(f"bad cache name {cache_name} for {url}")
        os.makedirs(self.cache_dir, exist_ok=True)
        dest = os.path.join(self.cache_dir, cache_name)
        if not os.path.exists(dest):
            if self.verbose:
                print(f"# downloading {url} to {dest}", file=sys.stderr)
            if self.cleaner is not None:
                self.cleaner.cleanup()
            download(url, dest, verbose=self.verbose)
            if self.validator and not self.validator(dest):
                ftype = magic_filetype(dest)
                with open(dest, "rb") as f:
                    data = f.read(200)
                os.remove(dest)
                raise ValueError(f"{dest} ({url}) is not a tar archive, but {ftype}, contains {data!r}")
        return dest

    def __call__(self, urls: Iterable[Any]) -> Iterator[dict[str, Any]]:
        """Yield `{"url", "stream", "local_path"}` for each URL, downloading as needed."""
        for url in urls:
            if isinstance(url, dict):
                url = url["url"]
            delay = 1.0
            for _ in range(10):
                try:
                    dest = self.get_file(url)
                    stream: io.BufferedReader = open(dest, "rb")
                except Exception as exn:
                    if self.handler(exn):
                        time.sleep(delay)
                        delay *= 1.5
                        continue
                    break
                yield dict(url=url, stream=stream, local_path=dest)
                break
