"""Checks a built fastwds wheel before it is installed: its platform tag, what its extension links, whether the
extension is stripped, and its sizes. Run by `scripts/dev.sh wheel` (and so by `scripts/dev.sh test` and the
release workflow's Linux jobs) as

    python scripts/check_wheel.py WHEEL [--target manylinux_2_17] [--max-wheel-mb 6] [--max-so-mb 15]

Linux wheels: the wheel's own tag and the tag `auditwheel show` finds it consistent with must be no newer than
the target (a glibc `manylinux_X_Y` or a musl `musllinux_X_Y`), which also fails a wheel that links anything
but the system libraries the manylinux/musllinux policies allow (auditwheel then says plain `linux`); the
extension's NEEDED entries are printed and checked against that short list too, and it must carry no symbol
table and no debug sections. Every platform: the wheel and its extension must be within the size limits
(MB = 10**6 bytes). Exits 1 naming every failed check.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

MB = 10**6

# What a manylinux/musllinux extension may link (auditwheel's policies allow a few more, X11 and GL among
# them, that this extension has no business needing).
ALLOWED_NEEDED = {
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libutil.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
    "libc.so",  # musl
}

TAG = re.compile(r"^(manylinux|musllinux)_(\d+)_(\d+)_(\w+)$")
LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def parse_tag(tag: str) -> tuple[str, tuple[int, int]] | None:
    """`manylinux_2_28_x86_64` -> ("manylinux", (2, 28)); legacy aliases too; None for anything else."""
    m = TAG.match(tag)
    if m:
        return m.group(1), (int(m.group(2)), int(m.group(3)))
    for alias, version in LEGACY.items():
        if tag.startswith(alias + "_"):
            return "manylinux", version
    return None


def elf_report(data: bytes) -> tuple[list[str], list[str]]:
    """The extension's NEEDED entries and the names of its symbol-table/debug sections (pyelftools comes
    with auditwheel)."""
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(data))
    needed = []
    for section in elf.iter_sections():
        if isinstance(section, DynamicSection):
            needed += [tag.needed for tag in section.iter_tags() if tag.entry.d_tag == "DT_NEEDED"]
    debug = [
        s.name for s in elf.iter_sections() if s.name == ".symtab" or s.name.startswith((".debug", ".zdebug"))
    ]
    return needed, debug


def auditwheel_show(wheel: Path) -> tuple[str, dict, str]:
    """The most compatible tag `auditwheel show --json` finds the wheel consistent with, the external
    libraries it names (those outside the policy's system libraries) and its raw output."""
    out = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", "--json", str(wheel)], capture_output=True, text=True
    )
    try:
        report = json.loads(out.stdout)
    except ValueError:
        return "", {}, (out.stdout + out.stderr).strip()
    return report.get("overall_tag", ""), report.get("external_libs", {}), out.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--target", default="manylinux_2_17", help="newest allowed Linux tag (without the arch)")
    ap.add_argument("--max-wheel-mb", type=float, default=6.0)
    ap.add_argument("--max-so-mb", type=float, default=15.0)
    args = ap.parse_args()

    failures: list[str] = []
    wheel: Path = args.wheel
    platforms = wheel.name[: -len(".whl")].split("-")[-1].split(".")
    wheel_size = wheel.stat().st_size
    with zipfile.ZipFile(wheel) as zf:
        exts = [i for i in zf.infolist() if re.search(r"/_core[^/]*\.(so|pyd)$", i.filename)]
        if len(exts) != 1:
            print(
                f"FAIL: expected one fastwds/_core extension in the wheel, found {[i.filename for i in exts]}"
            )
            return 1
        ext = exts[0]
        ext_data = zf.read(ext)
    record = {
        "wheel": wheel.name,
        "wheel_bytes": wheel_size,
        "extension": ext.filename,
        "extension_bytes": ext.file_size,
        "extension_compressed_bytes": ext.compress_size,
    }
    if wheel_size > args.max_wheel_mb * MB:
        failures.append(f"wheel is {wheel_size / MB:.2f} MB, over {args.max_wheel_mb} MB")
    if ext.file_size > args.max_so_mb * MB:
        failures.append(f"{ext.filename} is {ext.file_size / MB:.2f} MB, over {args.max_so_mb} MB")

    if any(p.startswith(("manylinux", "musllinux", "linux")) for p in platforms):
        target = parse_tag(args.target + "_any")
        if target is None:
            ap.error(f"--target {args.target!r} is not manylinux_X_Y or musllinux_X_Y")
        for platform in platforms:
            parsed = parse_tag(platform)
            if parsed is None or parsed[0] != target[0] or parsed[1] > target[1]:
                failures.append(f"wheel tag {platform} is not {args.target} or older")
        tag, external, report = auditwheel_show(wheel)
        record["auditwheel"] = tag or None
        parsed = parse_tag(tag)
        if parsed is None or parsed[0] != target[0] or parsed[1] > target[1] or external:
            failures.append(
                f"auditwheel show: consistent with {tag or 'nothing'}, not {args.target} or older:\n{report}"
            )
        needed, debug = elf_report(ext_data)
        record["needed"] = needed
        extra = sorted(set(needed) - ALLOWED_NEEDED)
        if extra:
            failures.append(f"the extension links {extra}, beyond the system libraries manylinux allows")
        if debug:
            failures.append(f"the extension is not stripped: it has {debug}")

    print(json.dumps(record, indent=2))
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    if not failures:
        print(
            f"wheel ok: {wheel.name}: {wheel_size / MB:.2f} MB (<= {args.max_wheel_mb}), "
            f"{Path(ext.filename).name} {ext.file_size / MB:.2f} MB (<= {args.max_so_mb})"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
