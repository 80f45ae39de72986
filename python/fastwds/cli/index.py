"""`fastwds index URLS...`: write the index sidecar (`NAME.wdsidx`) of existing shards, reading them in parallel."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from .. import shardindex
from ..shardindex import ShardIndex
from ._util import CommandError, expand_all, stops_cleanly
from .progress import Progress

EPILOG = """\
Each shard is read once (local, file:, s3://, gs://, http(s)://, hf:// or any URL fastwds.gopen opens;
plain, gzip or zstd) and its index is written beside it as NAME.wdsidx, where readers look for it: in the
shard's directory, or in its bucket for s3:// and gs:// shards (uploaded whole). Other shards (http, pipe:,
a directory that is not writable) need --output-dir, which also takes the indexes of bucket shards when
given: they go there under the shard's base name, and readers find them with
fastwds.shardindex.load_index(url, index_dir=DIR). A shard whose index is present
and up to date is skipped unless --force. The index format is in docs/index-format.md.

example:
  $ fastwds index 'shards/train-{000000..000099}.tar' --jobs 8
  shards   100 (100 indexed, 0 up to date)
  samples  1,000,000
  index    4,012,345 bytes (4.0 per sample)
"""


def _destination(url: str, output_dir: str | None) -> str:
    """Where a shard's index is written: beside a local shard whose directory is writable, or beside an
    `s3://`/`gs://` shard when no `output_dir` is given; else in `output_dir` (CommandError when there is
    none)."""
    path = shardindex._local_path(url)
    if path is None and output_dir is None and shardindex._in_bucket(url):
        return shardindex.index_url(url)
    if path is not None:
        beside = path + shardindex.SUFFIX
        if os.access(os.path.dirname(os.path.abspath(beside)), os.W_OK):
            return beside
        why = "its directory is not writable"
    else:
        why = "it is not a local file"
    if output_dir is None:
        raise CommandError(f"{url}: {why}; give --output-dir DIR to write its index there")
    return os.path.join(output_dir, shardindex.index_name(url))


def _fresh(url: str, destination: str) -> tuple[ShardIndex, int] | None:
    """The index already at `destination` and its size in bytes when it is valid and up to date, else None."""
    data = shardindex._load_bytes(destination)
    if data is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", shardindex.StaleIndexWarning)
        try:
            found = shardindex._checked(url, destination, data, True, True)
        except ValueError:
            return None  # corrupt or of another version: rebuilt
    return None if found is None else (found[0], len(data))


def _index_one(
    url: str, destination: str, force: bool, stop: threading.Event
) -> tuple[ShardIndex, bool, int]:
    """Builds and writes one shard's index; returns it, whether it was (re)built and its size in bytes."""
    if not force:
        fresh = _fresh(url, destination)
        if fresh is not None:
            return fresh[0], False, fresh[1]
    index = shardindex._build(url, stop)
    return index, True, shardindex.write_index(destination, index)


@stops_cleanly
def run(args: argparse.Namespace) -> int:
    """Indexes the shards; prints a summary, and exits 1 when some shard could not be indexed."""
    urls = list(dict.fromkeys(expand_all(args.urls)))
    if args.jobs < 1:
        raise CommandError(f"--jobs must be at least 1, not {args.jobs}")
    if args.output_dir is not None and not os.path.isdir(args.output_dir):
        raise CommandError(f"--output-dir {args.output_dir}: no such directory")
    destinations = {url: _destination(url, args.output_dir) for url in urls}
    by_place: dict[str, str] = {}
    for url, place in destinations.items():
        if place in by_place:
            raise CommandError(f"{by_place[place]} and {url} would both have their index at {place}")
        by_place[place] = url
    stop = threading.Event()
    failures: list[str] = []
    built = fresh = samples = index_bytes = 0
    pool = ThreadPoolExecutor(max_workers=min(args.jobs, len(urls)), thread_name_prefix="fastwds-index")
    pending: dict[Future[tuple[ShardIndex, bool, int]], str] = {}
    try:
        with Progress("index", unit="shards") as progress:
            pending = {
                pool.submit(_index_one, url, place, args.force, stop): url
                for url, place in destinations.items()
            }
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    url = pending.pop(future)
                    try:
                        index, rebuilt, nbytes = future.result()
                    except (OSError, ValueError) as exc:
                        message = str(exc)
                        failures.append(message if url in message else f"{url}: {message}")
                        continue
                    built += rebuilt
                    fresh += not rebuilt
                    samples += index.count
                    index_bytes += nbytes
                    progress.update(1, index.size)
    finally:
        stop.set()  # an interrupted run stops the threads between members
        pool.shutdown(wait=True, cancel_futures=True)
    out = sys.stdout
    out.write(f"shards   {len(urls):,} ({built:,} indexed, {fresh:,} up to date)\n")
    out.write(f"samples  {samples:,}\n")
    per_sample = f" ({index_bytes / samples:.1f} per sample)" if samples else ""
    out.write(f"index    {index_bytes:,} bytes{per_sample}\n")
    if failures:
        for failure in failures:
            sys.stderr.write(f"fastwds index: error: {failure}\n")
        sys.stderr.write(f"fastwds index: {len(failures)} of {len(urls)} shards could not be indexed\n")
        return 1
    return 0


def add_parser(subparsers: Any) -> None:
    """Registers the `index` subcommand."""
    parser = subparsers.add_parser(
        "index",
        help="write the index sidecar (NAME.wdsidx) of shards: sample count, keys and offsets",
        description="Read shards once, in parallel, and write each one's index beside it (or into --output-dir).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "urls",
        nargs="+",
        metavar="URL",
        help="shards: paths, brace patterns, file:, s3, gs, http(s), hf, ...",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="shards read at once (default: cores, up to 8)",
    )
    parser.add_argument(
        "--output-dir",
        metavar="DIR",
        help="where to write the indexes of shards that are not local files or s3/gs objects, or whose "
        "directory is not writable (given, it also takes those of s3/gs shards)",
    )
    parser.add_argument(
        "-f", "--force", action="store_true", help="rebuild indexes that are present and up to date"
    )
    parser.set_defaults(run=run)
