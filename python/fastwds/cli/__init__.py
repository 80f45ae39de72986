"""The `fastwds` command line: create, ls, stats, cat, split, index and bench subcommands."""

from __future__ import annotations

import argparse
import os
import sys

from .._core import ShardError, __version__
from . import bench, cat, create, index, ls, split, stats
from ._util import CommandError

COMMANDS = (create, ls, stats, cat, split, index, bench)

EPILOG = """\
examples:
  fastwds create list.txt -o shard-000.tar        # a tar from NAME SOURCE lines (SOURCE: path or pipe:CMD)
  fastwds ls shard-000.tar                         # members, like tar tvf (--samples: one line per sample)
  fastwds stats 'train-{000000..000099}.tar'       # counts and sizes; fails on a damaged shard
  fastwds cat 'train-{000..009}.tar' -o all.tar    # concatenate (--shuffle N, --select F,G, --slice A:B)
  fastwds split all.tar -o 'out-%06d.tar' --maxcount 1000
  fastwds index 'train-{000000..000099}.tar'      # write each shard's index (NAME.wdsidx) beside it
  fastwds bench 'train-{000000..000015}.tar'       # read speed, beside webdataset when installed

Run `fastwds COMMAND --help` for each command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="fastwds",
        description="Create, inspect, check, concatenate, reshard, index and benchmark WebDataset tar shards.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastwds {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand and returns its exit status: 0 on success, 1 on a reported error, 2 on usage."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 0
    prefix = f"fastwds {args.command}: error:"
    try:
        return int(args.run(args))
    except (CommandError, ShardError) as exc:
        sys.stdout.flush()
        sys.stderr.write(f"{prefix} {exc}\n")
        return 1
    except ValueError as exc:
        # The reader's errors about a shard's content (a field given twice) name the shard; others are bugs.
        if getattr(exc, "url", None) is None:
            raise
        sys.stderr.write(f"{prefix} {exc}\n")
        return 1
    except BrokenPipeError:
        # The reader of our stdout went away (`fastwds ls x | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
    except OSError as exc:
        sys.stderr.write(f"{prefix} {exc}\n")
        return 1


__all__ = ["build_parser", "main"]
