"""`fastwds ls URL`: list a shard's members as `tar tv` does, or its samples with their fields and sizes."""

from __future__ import annotations

import argparse
import stat
import sys
import time
from typing import Any

from .._core import ShardReader, tar_members
from ._util import expand_all, stops_cleanly

EPILOG = """\
Each member line is its mode, owner/group, size in bytes, modification time (local) and name, as
`tar tvf` shows them (control characters in names escaped as tar does: \\n, \\033); only regular files
are listed. With --samples, each line is a sample key followed by FIELD=SIZE for each of its fields.

example:
  $ fastwds ls shards/train-000000.tar | head -3
  -rw-r--r-- bigdata/bigdata            1 2026-11-22 06:09 000000.cls
  -rw-r--r-- bigdata/bigdata        38912 2026-11-22 06:09 000000.jpg
  -rw-r--r-- bigdata/bigdata          117 2026-11-22 06:09 000000.json
  $ fastwds ls --samples 'shards/train-{000000..000009}.tar' | head -2
  shards/train-000000.tar:
  000000  cls=1 jpg=38912 json=117
"""


@stops_cleanly
def run(args: argparse.Namespace) -> int:
    """Prints the listing of each shard; a heading names the shard when there are several."""
    urls = expand_all(args.urls)
    out = sys.stdout
    for number, url in enumerate(urls):
        if len(urls) > 1:
            out.write(("\n" if number else "") + f"{quote(url)}:\n")
        if args.samples:
            for sample in ShardReader([url], threads=1, lcase=False):
                fields = " ".join(f"{quote(k)}={len(v)}" for k, v in sample.items() if not k.startswith("__"))
                out.write(f"{quote(sample['__key__'])}  {fields}\n")
        else:
            for member in tar_members(url, info=True):
                out.write(member_line(member))
    return 0


_C_ESCAPES = {
    "\\": "\\\\",
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def quote(text: str) -> str:
    """`text` as GNU tar's default (escape) quoting prints it: a backslash doubled, control characters as C
    escapes (`\\n`, `\\t`, ...) or octal bytes of their UTF-8 (`\\033`), so that a name from a shard
    can neither send terminal escape sequences nor break a line. Characters Python does not call printable
    (format characters such as U+202E included) are escaped too; GNU tar prints those."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for char in text:
        escaped = _C_ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif char == " " or char.isprintable():
            out.append(char)
        else:
            out.extend(f"\\{byte:03o}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def member_line(member: dict[str, Any]) -> str:
    """One `tar tv` line for a member dict from `tar_members(..., info=True)`."""
    mode = stat.filemode(stat.S_IFREG | member["mode"])
    owner = quote(f"{member['uname'] or member['uid']}/{member['gname'] or member['gid']}")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(member["mtime"]))
    return f"{mode} {owner} {len(member['data']):>12} {when} {quote(member['fname'])}\n"


def add_parser(subparsers: Any) -> None:
    """Registers the `ls` subcommand."""
    parser = subparsers.add_parser(
        "ls",
        help="list a shard's members or samples",
        description="List the members of tar shards (like `tar tvf`), or their samples with --samples.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "urls", nargs="+", metavar="URL", help="shards: paths, brace patterns, pipe:CMD, http(s)"
    )
    parser.add_argument(
        "-s", "--samples", action="store_true", help="one line per sample: key and field sizes"
    )
    parser.set_defaults(run=run)
