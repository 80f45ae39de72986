"""`fastwds split URLS... -o PATTERN`: reshard samples into numbered shards of bounded count and size."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..writer import ShardWriter
from ._util import AtomicOutput, CommandError, compression_of, parse_size, sample_bytes, stops_cleanly
from .cat import add_reading_options, samples_of
from .progress import Progress

EPILOG = """\
PATTERN holds a printf-style shard number (%06d). A new shard starts before a sample would make the
current one hold more than --maxcount samples or more than --maxsize bytes of (uncompressed) tar; a
sample larger than --maxsize gets a shard of its own. The name of each shard is printed once it is
complete; a shard appears under its name only when complete.

example:
  $ fastwds split 'big-{0..3}.tar' -o 'shards/train-%06d.tar' --maxcount 1000 --maxsize 500M
  shards/train-000000.tar
  shards/train-000001.tar
  ...
"""


def check_pattern(pattern: str) -> None:
    """Raises CommandError unless `pattern % n` gives distinct names."""
    try:
        first, second = pattern % 0, pattern % 1
    except (TypeError, ValueError):
        raise CommandError(f"-o {pattern!r} needs one shard number format such as %06d") from None
    if first == second:
        raise CommandError(f"-o {pattern!r} needs one shard number format such as %06d")


@stops_cleanly
def run(args: argparse.Namespace) -> int:
    """Writes the shards; prints each name to stdout once the shard is complete."""
    check_pattern(args.output)
    try:
        maxsize = parse_size(args.maxsize)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    open_outputs: dict[str, AtomicOutput] = {}

    def opener(fname: str) -> Any:
        output = AtomicOutput(fname)
        open_outputs[fname] = output
        return output.stream

    def post(fname: str) -> None:
        open_outputs.pop(fname).commit()
        print(fname, flush=True)

    extra = {"compress": "gz"} if compression_of(args.output) else {}
    progress = Progress("split")
    samples = samples_of(args)
    writer = None
    try:
        writer = ShardWriter(
            args.output,
            maxcount=args.maxcount,
            maxsize=maxsize,
            start_shard=args.start_shard,
            verbose=0,
            opener=opener,
            post=post,
            encoder=False,
            **extra,
        )
        for sample in samples:
            writer.write(sample)
            progress.update(1, sample_bytes(sample))
        writer.close()
    except BaseException:
        for output in open_outputs.values():
            output.abort()
        raise
    finally:
        samples.close()
        progress.close()
    if writer is not None and writer.total == 0:
        sys.stderr.write("fastwds split: warning: no samples; wrote one empty shard\n")
    return 0


def add_parser(subparsers: Any) -> None:
    """Registers the `split` subcommand."""
    parser = subparsers.add_parser(
        "split",
        help="reshard samples into shards of bounded count and size",
        description="Rewrite the samples of shards as numbered shards of at most --maxcount samples and --maxsize bytes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_reading_options(parser)
    parser.add_argument(
        "-o", "--output", required=True, metavar="PATTERN", help="shard names, e.g. out-%%06d.tar"
    )
    parser.add_argument(
        "--maxcount", type=int, default=100000, help="samples per shard (default %(default)s)"
    )
    parser.add_argument(
        "--maxsize", default="3e9", help="bytes per shard: 3e9, 500M, 1GiB (default %(default)s)"
    )
    parser.add_argument("--start-shard", type=int, default=0, help="number of the first shard (default 0)")
    parser.set_defaults(run=run)
