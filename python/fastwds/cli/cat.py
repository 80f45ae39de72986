"""`fastwds cat URLS... -o OUTPUT`: concatenate the samples of shards into one shard."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Generator, Iterator
from typing import Any

from .._core import ShardReader
from ..filters import _shuffle
from ..writer import TarWriter
from ._util import AtomicOutput, CommandError, compression_of, expand_all, sample_bytes, stops_cleanly
from .progress import Progress

EPILOG = """\
Samples keep their keys and field names exactly (no lower-casing); --slice counts samples over the
concatenated inputs, before --shuffle. Members whose names are not KEY.FIELD (no dot) are not copied.

examples:
  $ fastwds cat 'shards/train-{000000..000009}.tar' -o all.tar
  $ fastwds cat shards/train-000000.tar --slice 0:100 --select jpg,cls -o small.tgz
  $ fastwds cat 'shards/train-{000000..000009}.tar' --shuffle 5000 --seed 1 -o - | gzip > shuffled.tgz
"""


def parse_slice(text: str) -> slice:
    """Parses START:END[:STEP] (each part optional, non-negative) into a slice."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"not a slice: {text!r} (expected START:END or START:END:STEP)")
    try:
        values = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise ValueError(f"not a slice: {text!r} (expected START:END or START:END:STEP)") from None
    if len(values) == 1:
        # A bare number N means the first N samples, like `head -n N`.
        values = [None, values[0]]
    if any(v is not None and v < 0 for v in values):
        raise ValueError(f"negative slice bounds are not supported: {text!r}")
    if len(values) == 3 and values[2] == 0:
        raise ValueError("slice step cannot be zero")
    return slice(*values)


def selected_fields(text: str | None) -> list[str] | None:
    """The comma-separated field names of --select, or None for all fields."""
    if text is None:
        return None
    fields = [f.strip() for f in text.split(",") if f.strip()]
    if not fields:
        raise CommandError("--select needs at least one field name")
    return fields


def samples_of(args: argparse.Namespace) -> Generator[dict[str, Any], None, None]:
    """The samples the arguments ask for: read, sliced, shuffled, with only the selected fields.

    Closing the generator stops the reader threads at once (a slice usually ends before the inputs do).
    """
    reader = ShardReader(
        expand_all(args.urls), threads=args.threads, lcase=False, fields=selected_fields(args.select)
    )
    samples = iter(reader)
    try:
        source: Iterator[dict[str, Any]] = samples
        if args.slice is not None:
            part = args.slice
            source = itertools.islice(source, part.start, part.stop, part.step)
        if args.shuffle and args.shuffle > 1:
            source = _shuffle(source, bufsize=args.shuffle, initial=args.shuffle, seed=args.seed)
        yield from source
    finally:
        samples.close()


@stops_cleanly
def run(args: argparse.Namespace) -> int:
    """Writes the selected samples to OUTPUT, which appears only once complete."""
    output = AtomicOutput(args.output)
    progress = Progress("cat")
    samples = samples_of(args)
    try:
        writer = TarWriter(output.stream, encoder=False, compress=compression_of(args.output) or False)
        for sample in samples:
            writer.write(sample)
            progress.update(1, sample_bytes(sample))
        writer.close()
        output.commit()
    except BaseException:
        output.abort()
        raise
    finally:
        samples.close()
        progress.close()
    return 0


def add_reading_options(parser: argparse.ArgumentParser) -> None:
    """The options cat and split share: which samples to read and in what order."""
    parser.add_argument(
        "urls", nargs="+", metavar="URL", help="shards: paths, brace patterns, pipe:CMD, http(s)"
    )
    parser.add_argument("--select", metavar="FIELDS", help="comma-separated fields to keep (default: all)")
    parser.add_argument(
        "--slice",
        type=parse_slice,
        metavar="START:END",
        help="keep input samples START..END-1 (or the first N)",
    )
    parser.add_argument(
        "--shuffle", type=int, default=0, metavar="N", help="shuffle through a buffer of N samples"
    )
    parser.add_argument("--seed", type=int, help="seed for --shuffle (default: a fresh order each run)")
    parser.add_argument("--threads", type=int, default=0, help="reader threads (default: min(4, cores))")


def add_parser(subparsers: Any) -> None:
    """Registers the `cat` subcommand."""
    parser = subparsers.add_parser(
        "cat",
        help="concatenate samples into one shard",
        description="Concatenate the samples of shards into one shard, optionally sliced, shuffled or pruned.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_reading_options(parser)
    parser.add_argument(
        "-o", "--output", required=True, help="the shard to write (.tgz: gzip'd), or - for stdout"
    )
    parser.set_defaults(run=run)
