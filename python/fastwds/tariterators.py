"""The tar stage with webdataset's names: shard URLs in, samples out, read by the Rust core.

`tarfile_samples` / `tarfile_to_samples` hand the shard stream to the core through `fastwds.reader` (where
`ShardSamples`, the stage `WebDataset` uses, lives too). The member-level helpers (`tar_file_iterator`,
`tar_file_expander`, `group_by_keys`, ...) keep webdataset's names and semantics for code that composes them;
the first two read through the core as well.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeGuard

from . import _core, handlers
from .filters import pipelinefilter
from .gopen import gopen as gopen_url
from .reader import (  # noqa: F401 (re-exported: the tar stage's bridge lived here)
    READER_OPTIONS,
    ShardSamples,
    _read_samples,
    core_handler,
    local_path,
    reader_threads,
)

__all__ = [
    "base_plus_ext",
    "split_key",
    "valid_sample",
    "shardlist",
    "url_opener",
    "tar_file_iterator",
    "tar_file_expander",
    "group_by_keys",
    "tarfile_samples",
    "tarfile_to_samples",
    "ShardSamples",
    "core_handler",
]

trace = False
meta_prefix = "__"
meta_suffix = "__"

Handler = Callable[[BaseException], bool]


# The reader's own grouping rule: (key, field) for a member name, None for names it skips.
split_key = _core.split_key


def base_plus_ext(path: str) -> tuple[str, str] | tuple[None, None]:
    """Split a member name into (key, extensions): the key ends before the first `.` of the last path
    component. Returns (None, None) when there is no such dot."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", path)
    if not match:
        return None, None
    return match.group(1), match.group(2)


def valid_sample(sample: Any) -> TypeGuard[dict[str, Any]]:
    """Tell whether `sample` is a non-empty dict not marked `__bad__`."""
    return (
        sample is not None
        and isinstance(sample, dict)
        and len(sample) > 0
        and not sample.get("__bad__", False)
    )


def shardlist(urls: str | Iterable[str], *, shuffle: bool = False) -> Iterator[dict[str, str]]:
    """Yield `{"url": url}` for the brace-expanded URLs (shuffled with the global generator if asked)."""
    import random

    import braceexpand

    urls = list(braceexpand.braceexpand(urls)) if isinstance(urls, str) else list(urls)
    if shuffle:
        random.shuffle(urls)
    for url in urls:
        yield dict(url=url)


def tarfile_samples(
    src: Iterable[dict[str, Any]],
    handler: Handler = handlers.reraise_exception,
    select_files: Callable[[str], bool] | None = None,
    rename_files: Callable[[str], str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Read a stream of shards (`{"url": ...}` dicts) into samples `{"__key__", "__url__", field: bytes}`.

    `handler` gets each error (opening a shard, a corrupt or cut shard, a repeated field, a failing
    `select_files`/`rename_files`, an oversized member): true goes on (with the next shard after a broken one,
    within the same shard after a dropped member), false ends the stream, raising propagates. `rename_files(name)` and then `select_files(name)` apply to
    member names before grouping. Streams this opens (URLs the core does not read itself) are closed when the
    iteration ends; `WebDataset` closes each as soon as its shard is done.
    """
    return _read_samples(src, handler, select_files, rename_files)


tarfile_to_samples = pipelinefilter(tarfile_samples)


def url_opener(
    data: Iterable[dict[str, Any]],
    handler: Handler = handlers.reraise_exception,
    **kw: Any,
) -> Iterator[dict[str, Any]]:
    """Open each `{"url": ...}` with `gopen` and yield it with `"stream"` added; errors go to `handler`."""
    for sample in data:
        if not isinstance(sample, dict) or "url" not in sample:
            raise ValueError(f"url_opener: expected a dict with a 'url' key, got {sample!r}")
        url = sample["url"]
        try:
            stream = gopen_url(url, **kw)
            sample.update(stream=stream)
            yield sample
        except Exception as exn:
            exn.args = exn.args + (url,)
            if handler(exn):
                continue
            break


def tar_file_iterator(
    fileobj: Any,
    skip_meta: str | None = r"__[^/]*__($|/)",
    handler: Handler = handlers.reraise_exception,
    select_files: Callable[[str], bool] | None = None,
    rename_files: Callable[[str], str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield `{"fname", "data"}` for each regular file of a tar stream (read by the core).

    Top-level `__*__` members and names matching `skip_meta` are skipped; `rename_files` and then
    `select_files` apply to the names. An error (a corrupt or cut stream) goes to `handler`; the stream ends
    after it either way.
    """
    members = _core.tar_members(fileobj)
    try:
        for member in members:
            fname = member["fname"]
            if "/" not in fname and fname.startswith(meta_prefix) and fname.endswith(meta_suffix):
                continue
            if skip_meta is not None and re.match(skip_meta, fname):
                continue
            if rename_files:
                fname = rename_files(fname)
            if select_files is not None and not select_files(fname):
                continue
            yield dict(fname=fname, data=member["data"])
    except Exception as exn:
        if exn.args:
            exn.args = (str(exn.args[0]) + " @ " + str(fileobj),) + exn.args[1:]
        handler(exn)
    finally:
        close = getattr(members, "close", None)
        if close is not None:
            close()


def tar_file_expander(
    data: Iterable[dict[str, Any]],
    handler: Handler = handlers.reraise_exception,
    select_files: Callable[[str], bool] | None = None,
    rename_files: Callable[[str], str] | None = None,
    eof_value: Any = {},  # noqa: B006 -- webdataset's marker value, never mutated
) -> Iterator[dict[str, Any]]:
    """Expand opened shards (`{"url", "stream"}` dicts) into members `{"fname", "data", "__url__"}`, with
    `__local_path__` when the item has a `local_path`, and `eof_value` after each shard (None: no marker).

    Each stream is closed once read (webdataset leaves them to the garbage collector).
    """
    for source in data:
        url = source.get("url") if isinstance(source, dict) else None
        try:
            if not isinstance(source, dict) or "stream" not in source:
                raise ValueError(f"tar_file_expander: expected a dict with a 'stream' key, got {source!r}")
            path = source.get("local_path")
            for sample in tar_file_iterator(
                source["stream"], handler=handler, select_files=select_files, rename_files=rename_files
            ):
                sample["__url__"] = url
                if path is not None:
                    sample["__local_path__"] = path
                yield sample
            if eof_value is not None:
                yield eof_value
        except Exception as exn:
            exn.args = exn.args + (source.get("stream") if isinstance(source, dict) else None, url)
            if handler(exn):
                continue
            break
        finally:
            stream = source.get("stream") if isinstance(source, dict) else None
            if stream is not None and hasattr(stream, "close"):
                stream.close()


def group_by_keys(
    data: Iterable[dict[str, Any]],
    keys: Callable[[str], tuple[Any, Any]] = base_plus_ext,
    lcase: bool = True,
    suffixes: set[str] | None = None,
    handler: Handler = handlers.reraise_exception,
) -> Iterator[dict[str, Any]]:
    """Group consecutive members with the same key into samples `{"__key__", "__url__", ext: data}`.

    An empty dict in `data` ends the current sample (the end-of-shard marker). `keys` splits a name into
    (key, extension); names it cannot split are skipped. Extensions are lower-cased with `lcase`; only
    `suffixes` are kept when given. A repeated extension within a sample is a ValueError (to `handler`).
    """
    current: dict[str, Any] | None = None
    for filesample in data:
        try:
            if not isinstance(filesample, dict):
                raise ValueError(f"group_by_keys: expected dicts, got {filesample!r}")
            if filesample == {}:
                if valid_sample(current):
                    yield current
                current = None
                continue
            fname, value = filesample["fname"], filesample["data"]
            prefix, suffix = keys(fname)
            if trace:
                print(prefix, suffix, current.keys() if isinstance(current, dict) else None)
            if prefix is None:
                continue
            if lcase:
                suffix = suffix.lower()
            if current is None or prefix != current["__key__"]:
                if valid_sample(current):
                    yield current
                current = dict(__key__=prefix, __url__=filesample["__url__"])
            if suffix in current:
                raise ValueError(f"{fname}: duplicate file name in tar file {suffix} {current.keys()}")
            if suffixes is None or suffix in suffixes:
                current[suffix] = value
            path = filesample.get("__local_path__")
            if path is not None:
                current["__local_path__"] = path
        except Exception as exn:
            exn.args = exn.args + (filesample.get("stream"), filesample.get("url"))
            if handler(exn):
                continue
            break
    if valid_sample(current):
        yield current
