"""`fastwds stats URLS...`: count shards, samples and field sizes, reading every byte (an integrity check)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

from .._core import ShardError, ShardReader
from ._util import CommandError, expand_all, sample_bytes, stops_cleanly
from .progress import Progress

EPILOG = """\
Every shard is read to its end, so a cut or corrupt shard (or a failing pipe: command) makes the command
exit with status 1 and a message naming the shard and the byte offset where it went wrong.

example:
  $ fastwds stats 'shards/train-{000000..000009}.tar'
  shards   10
  samples  10,000
  bytes    405,880,371
  field       count       total bytes    mean bytes
  cls        10,000            13,890           1.4
  jpg        10,000       404,703,481      40,470.3
  json       10,000         1,163,000         116.3
"""


@stops_cleanly
def run(args: argparse.Namespace) -> int:
    """Reads all shards and prints the counts; exits 1 (after the table, with --keep-going) on corruption."""
    urls = expand_all(args.urls)
    counts: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    per_shard: Counter[str] = Counter()
    failures: list[str] = []

    def keep_going(exc: BaseException) -> bool:
        # Every error the reader reports is about a shard (cut, corrupt, unreadable, a field given twice).
        if not isinstance(exc, Exception):
            raise exc
        failures.append(str(exc))
        return True

    reader = ShardReader(
        urls, threads=args.threads, lcase=False, handler=keep_going if args.keep_going else None
    )
    samples = 0
    with Progress("stats") as progress:
        try:
            for sample in reader:
                samples += 1
                per_shard[sample["__url__"]] += 1
                for k, v in sample.items():
                    if not k.startswith("__"):
                        counts[k] += 1
                        totals[k] += len(v)
                progress.update(1, sample_bytes(sample))
        except (ShardError, ValueError) as exc:
            raise CommandError(f"{exc} (after {samples:,} good samples)") from None
    out = sys.stdout
    if args.per_shard:
        for url in urls:
            out.write(f"{per_shard[url]:>10,}  {url}\n")
    out.write(f"shards   {len(urls):,}\n")
    out.write(f"samples  {samples:,}\n")
    out.write(f"bytes    {sum(totals.values()):,}\n")
    if counts:
        width = max(5, *(len(k) for k in counts))
        out.write(f"{'field':<{width}}  {'count':>10}  {'total bytes':>16}  {'mean bytes':>12}\n")
        for field in sorted(counts):
            mean = totals[field] / counts[field]
            out.write(f"{field:<{width}}  {counts[field]:>10,}  {totals[field]:>16,}  {mean:>12,.1f}\n")
    if failures:
        for failure in failures:
            sys.stderr.write(f"fastwds stats: error: {failure}\n")
        sys.stderr.write(f"fastwds stats: {len(failures)} of {len(urls)} shards are damaged\n")
        return 1
    return 0


def add_parser(subparsers: Any) -> None:
    """Registers the `stats` subcommand."""
    parser = subparsers.add_parser(
        "stats",
        help="count samples and field sizes; check shards for corruption",
        description="Read every byte of the shards and print shard, sample and per-field counts and sizes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "urls", nargs="+", metavar="URL", help="shards: paths, brace patterns, pipe:CMD, http(s)"
    )
    parser.add_argument("--per-shard", action="store_true", help="also print the sample count of each shard")
    parser.add_argument(
        "-k",
        "--keep-going",
        action="store_true",
        help="report every damaged shard instead of stopping at the first",
    )
    parser.add_argument("--threads", type=int, default=0, help="reader threads (default: min(4, cores))")
    parser.set_defaults(run=run)
