"""The bridge from the tar stage to the Rust core: the shard stream handed to `fastwds._core.ShardReader` as
the core wants it, the reader's options, and `ShardSamples`, the tar stage `WebDataset` uses.

Shards go to the core lazily, as URLs: the core decides how each is opened (it reads local paths, `file:`,
`-`, `pipe:` and http(s) itself, and calls `fastwds.gopen.gopen`, whose scheme table users extend, for other
schemes). A cached or `GOPEN_REWRITE`-rewritten shard goes as a (URL, location) pair, read from the location
under its URL; only streams that code opened itself (a user's opener) go as Python file objects.
"""

from __future__ import annotations

import copy
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from . import _core, handlers
from .gopen import rewrite_url
from .utils import pytorch_worker_info

__all__ = [
    "ShardSamples",
    "READER_OPTIONS",
    "core_handler",
    "local_path",
    "reader_threads",
]

Handler = Callable[[BaseException], bool]


def local_path(url: str) -> str | None:
    """Return the local file path a URL names (a plain path or `file:` URL), else None."""
    if url == "-":
        return None
    parsed = urlparse(url)
    if parsed.scheme == "":
        return parsed.path
    if parsed.scheme == "file":
        return url2pathname(parsed.path)
    return None


def _is_reraise(handler: Any) -> bool:
    if handler is None or handler is handlers.reraise_exception:
        return True
    # webdataset's own reraise_exception (users pass wds handlers to fastwds and vice versa).
    module = getattr(handler, "__module__", None) or ""
    return getattr(handler, "__name__", None) == "reraise_exception" and module.startswith(
        ("webdataset", "fastwds")
    )


def core_handler(handler: Handler | None) -> Handler | None:
    """The `handler` argument for the core: None (the core raises) for reraise_exception, else `handler`."""
    return None if _is_reraise(handler) else handler


class _ShardFeed:
    """The shard stream as the core wants it, pulled lazily by the core.

    Each item (a `{"url": ...}` dict, maybe with "stream" and "local_path", or a URL string) becomes the URL
    itself; `{"url": url, "local_path": path}` when the item names a local copy (a cache) or `GOPEN_REWRITE`
    rewrites the URL; `{"url": url, "stream": stream}` only for a stream the item carries without a local
    copy. An item's "start" and "end" (a span of the shard: the samples whose first headers lie in [start,
    end) of the uncompressed tar stream) go to the core with it. Errors (a rewrite refused in secure mode)
    go to `handler` (true: skip the shard, false: end the stream). Remembers how many shards it handed
    out, the local path of each URL that has one (for `__local_path__`), and the streams handed to the core, which
    this object owns and closes: `close_finished(url)` when the samples of `url` start arriving (the shards
    before it are done, since the core yields shard by shard), `close()` at the end.
    """

    def __init__(self, src: Iterable[Any], handler: Handler | None, track_local: bool = False) -> None:
        self.src = src
        self.handler = handler
        self.track_local = track_local
        self.count = 0
        self.local_paths: dict[str, str] = {}
        self.opened: deque[tuple[str, Any]] = deque()

    def __iter__(self) -> Iterator[Any]:
        handler = self.handler
        for item in self.src:
            if isinstance(item, dict):
                url = item["url"]
                stream = item.get("stream")
                given_path = item.get("local_path")
                cache_path = item.get("cache_path")
            else:
                url, stream, given_path, cache_path = item, None, None, None
            try:
                if cache_path is not None and stream is None and given_path is None:
                    # Read through the core's cache: its entry, or downloaded into it while it streams.
                    shard: Any = {"url": url, "cache_path": cache_path}
                elif given_path is not None:
                    # A local copy (the cache's) is read by the core; the stream the cache opened is not needed.
                    if stream is not None:
                        _close_quietly(stream)
                        stream = None
                    shard = {"url": url, "local_path": given_path}
                elif stream is not None:
                    shard = {"url": url, "stream": stream}
                else:
                    location = rewrite_url(url)
                    shard = url if location == url else {"url": url, "local_path": location}
            except Exception as exn:
                exn.args = exn.args + (url,)
                if handler is None:
                    raise
                if handler(exn):
                    continue
                return
            if isinstance(item, dict) and ("start" in item or "end" in item):
                # A span of the shard (see `fastwds.epochs`): the core reads it alone.
                if not isinstance(shard, dict):
                    shard = {"url": url}
                shard["start"] = item.get("start")
                shard["end"] = item.get("end")
            if stream is not None:
                self.opened.append((url, stream))
            if self.track_local:
                path = given_path if given_path is not None else local_path(url) if stream is None else None
                if path is not None:
                    self.local_paths[url] = path
            self.count += 1
            yield shard

    def close_finished(self, url: str) -> None:
        """Close the streams of the shards handed out before the first one named `url`."""
        opened = self.opened
        while opened and opened[0][0] != url:
            _close_quietly(opened.popleft()[1])

    def close(self) -> None:
        """Close all streams handed out."""
        while self.opened:
            _close_quietly(self.opened.popleft()[1])


def _close_quietly(stream: Any) -> None:
    try:
        stream.close()
    except Exception:  # noqa: S110
        # The core reported read errors where they happened; a failed close of an abandoned pipe adds nothing.
        pass


def reader_threads() -> int:
    """Reader threads for one `ShardReader`: the cores shared among the DataLoader workers of this process's
    loader (each worker runs its own reader), at least one; 0 (the core's default) outside a DataLoader."""
    tud = sys.modules.get("torch.utils.data")
    info = tud.get_worker_info() if tud is not None else None
    if info is None or info.num_workers <= 1:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // info.num_workers)


# The `ShardReader` settings a pipeline leaves to its user; the pipeline sets the others itself.
READER_OPTIONS = (
    "threads",
    "prefetch",
    "ordered",
    "buffer_bytes",
    "buffer_samples",
    "max_member_bytes",
    "read_timeout",
    "max_retries",
    "retry_timeout",
    "storage_options",
)


def _checked_reader_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of `options`, or TypeError naming any key that is not one of `READER_OPTIONS`."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(READER_OPTIONS))
    if unknown:
        raise TypeError(
            f"reader_options: unknown {', '.join(map(repr, unknown))} (known: {', '.join(READER_OPTIONS)})"
        )
    return options


def _reader(
    feed: _ShardFeed,
    handler: Handler | None,
    select_files: Callable[[str], bool] | None,
    rename_files: Callable[[str], str] | None,
    **kw: Any,
) -> Any:
    kw.setdefault("threads", reader_threads())
    return _core.ShardReader(
        feed, handler=core_handler(handler), select_files=select_files, rename_files=rename_files, **kw
    )


def _read_samples(
    src: Iterable[Any],
    handler: Handler | None,
    select_files: Callable[[str], bool] | None,
    rename_files: Callable[[str], str] | None,
) -> Iterator[dict[str, Any]]:
    feed = _ShardFeed(src, None if _is_reraise(handler) else handler)
    samples = iter(_reader(feed, handler, select_files, rename_files))
    try:
        yield from samples
    finally:
        samples.close()
        feed.close()


class ShardSamples:
    """The tar stage of `WebDataset`: `tarfile_samples` plus webdataset's `__local_path__` on samples of
    local shards and its empty check.

    With `empty_check`, a pass that reads shards but yields no sample raises ValueError (as webdataset). A
    DataLoader worker or node that got no shard at all (fewer shards than workers; `split_by_worker` has
    warned) yields nothing instead of raising.

    `images` (the core's `images=` options, see `fastwds.images`) decodes image fields on the reader threads;
    each pass is an epoch for their random crops (`epoch` is the last pass; `set_epoch` in `WebDataset`).
    `reader_options` go to the core's `ShardReader` (see `READER_OPTIONS`). `cache` is (directory, size in
    bytes) of the core's shard cache, for shards that the cache stage gave a "cache_path".
    """

    def __init__(
        self,
        handler: Handler = handlers.reraise_exception,
        select_files: Callable[[str], bool] | None = None,
        rename_files: Callable[[str], str] | None = None,
        empty_check: bool = True,
        local_paths: bool = True,
        images: _core.ImageOptions | None = None,
        reader_options: dict[str, Any] | None = None,
        cache: tuple[str, int] | None = None,
    ) -> None:
        self.handler = handler
        self.select_files = select_files
        self.rename_files = rename_files
        self.empty_check = empty_check
        self.local_paths = local_paths
        self.images = images
        self.reader_options = _checked_reader_options(reader_options)
        if cache is not None:
            self.reader_options.update(cache_dir=cache[0], cache_size=cache[1])
        self.epoch = -1

    def __repr__(self) -> str:
        kw: dict[str, Any] = {
            "handler": self.handler,
            "select_files": self.select_files,
            "rename_files": self.rename_files,
        }
        if self.images is not None:
            kw["images"] = self.images.mode
        return f"<tarfile_to_samples () {kw}>"

    def __call__(self, src: Iterable[Any], _track: Any = None) -> Iterator[dict[str, Any]]:
        """Return the samples of the shards in `src`.

        `_track` (a `fastwds.resume.TarTrack`, given by `WebDataset`'s iteration) is told which shard and
        ordinal each sample has, and holds the buffered samples to re-read first when resuming."""
        feed = _ShardFeed(
            src, None if _is_reraise(self.handler) else self.handler, track_local=self.local_paths
        )
        self.epoch += 1
        images = None if self.images is None else self.images.replace(epoch=self.epoch % 2**64)
        count = 0
        if _track is not None and _track.reread:
            for sample in self._reread(_track.reread, images, _track.lookup):
                count += 1
                yield sample
        samples = iter(
            _reader(
                feed, self.handler, self.select_files, self.rename_files, images=images, **self.reader_options
            )
        )
        track = _track
        try:
            paths = feed.local_paths
            opened = feed.opened
            add_paths = self.local_paths
            last_url = None
            path = None
            ref = skip = 0  # the track's sample reference and drop bound, kept in locals between switches
            for sample in samples:
                url = sample["__url__"]
                if url != last_url:
                    # A new shard: look its local path up once, and release the streams of finished shards.
                    last_url = url
                    path = paths.get(url) if add_paths else None
                    if opened:
                        feed.close_finished(url)
                    if track is not None:
                        track.switch(url)
                        ref, skip = track.ref, track.skip
                if track is not None:
                    ref += 1
                    if ref >= track.stop:
                        # The shard comes again right after itself: this sample is the next reading's.
                        track.switch(url)
                        ref, skip = track.ref + 1, track.skip
                    track.ref = ref  # one store a sample: what state_dict() and the shuffle read
                    if ref < skip:
                        continue  # read again to resume after it (the shard has no index)
                if path is not None:
                    sample["__local_path__"] = path
                count += 1
                yield sample
        finally:
            samples.close()
            feed.close()
        if track is not None and track.resumed:
            return
        if count == 0 and self.empty_check:
            rank, world_size, worker, num_workers = pytorch_worker_info()
            if feed.count == 0 and (num_workers > 1 or world_size > 1):
                return
            raise ValueError(
                "No samples found in dataset; perhaps you have fewer shards than workers.\n"
                + "Turn off using empty_check=False in the WebDataset constructor."
            )

    def _reread(
        self, items: list[tuple[dict[str, Any], int]], images: Any, lookup: Any
    ) -> Iterator[dict[str, Any]]:
        """The samples `items` ((shard spec, ordinal in it) pairs) read again, in that order: the samples of a
        shuffle buffer when resuming, found through `lookup` (the pass's `fastwds.resume.IndexLookup`). Raises
        ValueError when one cannot be found."""
        from .resume import ResumeError, reread_plan

        reads, takes = reread_plan(items, lookup)
        found: list[Any] = [None] * len(items)
        feed = _ShardFeed(iter(reads), None, track_local=self.local_paths)
        samples = iter(
            _reader(
                feed,
                None,
                self.select_files,
                self.rename_files,
                images=images,
                **self._ordered_reader_options(),
            )
        )
        try:
            r = -1
            ordinal = 0
            taken = True
            for sample in samples:
                url = sample["__url__"]
                # The read this sample comes from: a span gives one sample, a whole read those of its URL.
                while r < 0 or reads[r]["url"] != url or (taken and isinstance(takes[r], tuple)):
                    r += 1
                    if r >= len(reads):
                        raise ResumeError(f"{url}: an unexpected sample while re-reading the shuffle buffer")
                    ordinal = 0
                    taken = False
                take = takes[r]
                if isinstance(take, tuple):
                    n, key = take
                    if self.rename_files is None and sample["__key__"] != key:
                        raise ResumeError(
                            f"{url}: re-reading the shuffle buffer found {sample['__key__']!r} where its "
                            f"index has {key!r} (the shard changed)"
                        )
                    found[n] = sample
                    taken = True
                else:
                    for i, n in enumerate(take.get(ordinal, ())):
                        found[n] = sample if i == 0 else dict(sample)
                    ordinal += 1
        finally:
            samples.close()
            feed.close()
        paths = feed.local_paths
        for n, sample in enumerate(found):
            if sample is None:
                raise ResumeError(
                    f"{items[n][0].get('url')}: sample {items[n][1]} of the shuffle buffer could not be read again"
                )
            spec = items[n][0]
            path = paths.get(sample["__url__"]) if self.local_paths else None
            if path is not None:
                sample["__local_path__"] = path
            if "pad" in spec:
                sample["__pad__"] = bool(spec["pad"])
        yield from found

    def _ordered_reader_options(self) -> dict[str, Any]:
        """This stage's reader options, reading in order."""
        return {**self.reader_options, "ordered": True}

    @property
    def decodes_images(self) -> bool:
        """Whether this stage decodes image fields on the reader threads."""
        return self.images is not None

    def with_images(self, images: _core.ImageOptions) -> ShardSamples:
        """A new tar stage, like this one but decoding image fields on the reader threads with `images` (the
        core's `images=` options, see `fastwds.images`); this stage is unchanged. Raises ValueError when this
        stage decodes images already (a later image stage then decodes in Python)."""
        if self.images is not None:
            raise ValueError("this tar stage decodes images already")
        stage = copy.copy(self)
        stage.images = images
        return stage
