"""The `fastwds` command line (python -m fastwds)."""

from __future__ import annotations

import sys

USAGE = """usage: fastwds COMMAND [ARGS]

fastwds reads and writes WebDataset tar shards; the command line tools are not written yet.
In Python: import fastwds as wds; wds.WebDataset("shards-{000000..000009}.tar", shardshuffle=False)
"""


def main(argv: list[str] | None = None) -> int:
    """Print the usage; returns 0 for -h/--help or no arguments, else 2."""
    args = sys.argv[1:] if argv is None else argv
    print(USAGE, end="", file=sys.stdout if not args or args[0] in ("-h", "--help") else sys.stderr)
    return 0 if not args or args[0] in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
