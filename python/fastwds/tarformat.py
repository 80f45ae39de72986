"""The tar bytes the writers produce: header blocks, padding and the end of an archive.

Members are regular files in plain ustar headers; a pax extended header is added only for what ustar cannot
hold (a long or non-ASCII name, a non-ASCII or long owner name, a size or mtime beyond 11 octal digits), or,
in GNU format, a `././@LongLink` member for a long name. Each member's data is padded with zeros to a whole
512-byte block, and an archive ends with two zero blocks and zeros up to a whole 10 KiB record, as GNU tar
and Python's `tarfile` end theirs. `fastwds.writer` writes these bytes; this module only makes them.
"""

from __future__ import annotations

import tarfile
from typing import Any

__all__ = [
    "BLOCK",
    "GNU",
    "HeaderMaker",
    "RECORD",
    "USTAR",
    "archive_size",
    "member_size",
    "padding",
    "tar_format",
]

BLOCK = 512
RECORD = 20 * BLOCK  # tar output is padded to whole records, as GNU tar and Python's tarfile do
PADDING = [bytes(n) for n in range(BLOCK)]  # PADDING[n]: n zero bytes
_MAX_OCTAL_11 = 8**11  # 8 GiB: the largest size or mtime an 11-digit octal field holds
_POSIX_MAGIC = b"ustar\x0000"
_GNU_MAGIC = b"ustar  \x00"
USTAR, GNU = "ustar", "gnu"


def tar_format(format: Any) -> str:
    """Maps the `format` argument (None, a tarfile constant or its name) to how long names are written."""
    if format is None:
        return USTAR
    if isinstance(format, str):
        format = getattr(tarfile, format, format)
        if isinstance(format, str):
            format = {
                "ustar": tarfile.USTAR_FORMAT,
                "pax": tarfile.PAX_FORMAT,
                "gnu": tarfile.GNU_FORMAT,
            }.get(format.lower(), format)
    if format in (tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT):
        return USTAR
    if format == tarfile.GNU_FORMAT:
        return GNU
    raise ValueError(f"unknown tar format {format!r} (use USTAR_FORMAT, PAX_FORMAT or GNU_FORMAT)")


def _octal(value: int, width: int) -> bytes:
    """A numeric field: zero-padded octal digits and a NUL (as Python's tarfile writes them)."""
    return b"%0*o\x00" % (width - 1, value)


def _pax_records(records: dict[str, str]) -> bytes:
    """Encodes pax extended header records ("LEN key=value\\n", LEN counting the whole record)."""
    out = []
    for key, value in records.items():
        body = b" " + key.encode("utf-8") + b"=" + value.encode("utf-8") + b"\n"
        n = len(body)
        length = n + len(str(n))
        length = n + len(str(length))
        out.append(str(length).encode("ascii") + body)
    return b"".join(out)


class HeaderMaker:
    """Builds the header blocks of regular-file members for fixed mode, owner and format."""

    def __init__(self, user: str, group: str, mode: int, tar_format: str):
        self.format = tar_format
        self.magic = _POSIX_MAGIC if tar_format == USTAR else _GNU_MAGIC
        self.pax_owner: dict[str, str] = {}
        uname = self._owner_field("uname", user)
        gname = self._owner_field("gname", group)
        self.mode = mode & 0o7777
        # Header layout: name[100] mode[8] uid[8] gid[8] size[12] mtime[12] chksum[8] typeflag[1]
        # linkname[100] magic+version[8] uname[32] gname[32] devmajor[8] devminor[8] prefix[155] pad[12].
        self.mid = _octal(self.mode, 8) + _octal(0, 8) + _octal(0, 8)
        # Device numbers stay NUL for regular files, as Python's tarfile leaves them.
        self.tail = b"0" + bytes(100) + self.magic + uname + gname + bytes(16)
        # The checksum field counts as eight spaces while the checksum is computed.
        self.fixed_sum = sum(self.mid) + sum(self.tail) + 8 * 32
        self._mtime = -1
        self._mtime_field = b""
        self._mtime_sum = 0

    def _owner_field(self, name: str, value: str) -> bytes:
        raw = value.encode("utf-8")
        if len(raw) > 32 or not value.isascii():
            if self.format == GNU:
                raise ValueError(f"{name} {value!r} does not fit a GNU tar header (32 ASCII bytes)")
            self.pax_owner[name] = value
            raw = value.encode("ascii", "replace")[:32]
        return raw.ljust(32, b"\x00")

    def _header(self, name: bytes, prefix: bytes, size: int, mtime: int, typeflag: bytes = b"0") -> bytes:
        """One 512-byte header block (the general path: any type, prefix, out-of-range numbers as 0)."""
        size_field = _octal(size if 0 <= size < _MAX_OCTAL_11 else 0, 12)
        mtime_field = _octal(mtime if 0 <= mtime < _MAX_OCTAL_11 else 0, 12)
        tail = typeflag + self.tail[1:]
        mid = self.mid
        if typeflag != b"0":  # extension headers (pax x, GNU L) are plain: mode 0644
            mid = _octal(0o644, 8) + _octal(0, 8) + _octal(0, 8)
        block = b"".join(
            (
                name.ljust(100, b"\x00"),
                mid,
                size_field,
                mtime_field,
                b" " * 8,
                tail,
                prefix.ljust(155, b"\x00"),
            )
        )
        block = block.ljust(BLOCK, b"\x00")
        chksum = sum(block)
        return block[:148] + b"%06o\x00 " % chksum + block[156:]

    def make(self, name: str, size: int, mtime: int) -> bytes:
        """The header block(s) for a regular file `name` of `size` bytes: one block in the common case."""
        raw = name.encode("utf-8")
        if len(raw) <= 100 and size < _MAX_OCTAL_11 and not self.pax_owner and name.isascii():
            if mtime != self._mtime:
                if not 0 <= mtime < _MAX_OCTAL_11:
                    return self._make_general(name, raw, size, mtime)
                self._mtime = mtime
                self._mtime_field = _octal(mtime, 12)
                self._mtime_sum = sum(self._mtime_field)
            size_field = b"%011o\x00" % size
            chksum = self.fixed_sum + sum(raw) + sum(size_field) + self._mtime_sum
            return b"".join(
                (
                    raw,
                    PADDING[100 - len(raw)],
                    self.mid,
                    size_field,
                    self._mtime_field,
                    b"%06o\x00 " % chksum,
                    self.tail,
                    PADDING[167],
                )
            )
        return self._make_general(name, raw, size, mtime)

    def _make_general(self, name: str, raw: bytes, size: int, mtime: int) -> bytes:
        """Headers for names, sizes or owners that do not fit plain ustar fields."""
        pax = dict(self.pax_owner)
        prefix = b""
        field = raw
        longlink = b""
        if self.format == GNU:
            if len(raw) > 100:
                # GNU long name: a "././@LongLink" member of type L holding the name, then the real header.
                longname = raw + b"\x00"
                longlink = self._header(b"././@LongLink", b"", len(longname), 0, b"L")
                longlink += longname + PADDING[(-len(longname)) % BLOCK]
                field = raw[:100]
        elif not name.isascii():
            # pax carries UTF-8 names portably; the ustar field gets an ASCII stand-in.
            pax["path"] = name
            field = name.encode("ascii", "replace")[:100]
        elif len(raw) > 100:
            split = self._split(raw)
            if split is not None:
                prefix, field = split
            else:
                pax["path"] = name
                field = raw[:100]
        if not 0 <= size < _MAX_OCTAL_11:
            if self.format == GNU:
                raise ValueError(f"member {name!r} is too large for a GNU tar header ({size} bytes)")
            pax["size"] = str(size)
        if not 0 <= mtime < _MAX_OCTAL_11:
            if self.format == GNU:
                mtime = 0
            else:
                pax["mtime"] = str(mtime)
        out = longlink
        if pax:
            records = _pax_records(pax)
            out = self._header(b"././@PaxHeader", b"", len(records), 0, b"x")
            out += records + PADDING[(-len(records)) % BLOCK]
        return out + self._header(field, prefix, size, mtime)

    @staticmethod
    def _split(raw: bytes) -> tuple[bytes, bytes] | None:
        """Splits a long name at a slash into ustar's prefix (<= 155 bytes) and name (<= 100 bytes)."""
        cut = raw.find(b"/", 1)
        while 0 < cut <= 155:
            if 0 < len(raw) - cut - 1 <= 100:
                return raw[:cut], raw[cut + 1 :]
            cut = raw.find(b"/", cut + 1)
        return None


def padding(size: int) -> bytes:
    """The zeros that follow `size` bytes of member data, up to a whole block."""
    return PADDING[(-size) % BLOCK]


def member_size(header: bytes, size: int) -> int:
    """The bytes a member takes in the archive: its header block(s), its `size` bytes of data and padding."""
    return len(header) + size + (-size) % BLOCK


def archive_size(offset: int) -> int:
    """The size of an archive whose members take `offset` bytes, once its two end-of-archive blocks and the
    padding to a whole record are added."""
    end = offset + 2 * BLOCK
    return end + (-end) % RECORD
