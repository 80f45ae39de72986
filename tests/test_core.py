"""The Rust core (`fastwds._core`) seen from Python: samples, options and errors against webdataset 1.0.2."""

from __future__ import annotations

import gc
import gzip
import io
import re
import shutil
import subprocess
import sys
import tarfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import webdataset

from fastwds import _core, tariterators

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}

# A name longer than 100 characters: GNU writes a `././@LongLink` (`L`) record, pax a `path` record.
LONG_NAME = "long/" + "n" * 120 + ".long.TXT"
# ustar cannot hold LONG_NAME; this one fits by splitting into the 155-byte prefix and the 100-byte name.
USTAR_LONG_NAME = "p" * 120 + "/prefixed.txt"


def payload(tag: str, size: int) -> bytes:
    """Bytes of exactly `size`, different for each tag, so a misplaced field cannot compare equal."""
    unit = (tag + ";").encode()
    return (unit * (size // len(unit) + 1))[:size]


def grouping_members(fmt: str) -> list[tuple[str, Any]]:
    """Members that exercise every rule of the grouping: (name, bytes) for files, (name, "dir"/"symlink"/
    "hardlink") for entries that are not regular files."""
    long_name = USTAR_LONG_NAME if fmt == "ustar" else LONG_NAME
    names_and_sizes = [
        ("dir/base.input.png", 33),
        ("dir/base.json", 12),
        ("UPPER.JPG", 5),
        ("UPPER.Txt", 6),
        ("./sub/a.jpg", 7),
        ("./sub/a.cls", 1),
        ("noext", 3),
        ("dir/noext", 3),
        ("__meta__", 4),
        ("__index__/x.json", 4),
        ("dir/.gitignore", 2),
        (long_name, 9),
        (("x" * 10 + "/" if fmt == "ustar" else "x" * 10) + "x" * 90 + ".b", 4),  # > 100 characters again
        ("y" * 96 + ".bin", 4),  # exactly 100 characters: fills the ustar name field without a NUL
        ("size0.bin", 0),
        ("size1.bin", 1),
        ("size511.bin", 511),
        ("size512.bin", 512),
        ("size513.bin", 513),
        ("s.a", 1),
        ("t.a", 1),
        ("s.b", 1),  # same key as an earlier member but not adjacent: a second sample keyed "s"
    ]
    members: list[tuple[str, Any]] = [(name, payload(name, size)) for name, size in names_and_sizes]
    members.insert(2, ("dir", "dir"))
    members.insert(5, ("link.jpg", "symlink"))
    members.insert(9, ("hard.jpg", "hardlink"))
    return members


def write_tar(path: Path, members: Iterable[tuple[str, Any]], fmt: str = "pax", gz: bool = False) -> Path:
    """Writes members with Python's tarfile in the given format."""
    with tarfile.open(path, "w:gz" if gz else "w", format=FORMATS[fmt]) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif data == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = "UPPER.JPG"
                tar.addfile(info)
            elif data == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = "UPPER.JPG"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_wds(path: Path, n: int, tag: str = "", sizes: tuple[int, ...] = (0, 1, 700)) -> Path:
    """Writes `n` samples with webdataset's TarWriter (pax headers before every member)."""
    with webdataset.TarWriter(str(path)) as sink:
        for i in range(n):
            sink.write(
                {
                    "__key__": f"{tag}{i:05d}",
                    "txt": payload(f"{tag}{i}txt", sizes[i % len(sizes)]),
                    "cls": str(i).encode(),
                    "input.json": payload(f"{tag}{i}json", 40 + i),
                }
            )
    return path


def reference(urls: list[str], **kw: Any) -> list[dict]:
    """What webdataset 1.0.2 yields, without the `__local_path__` key its opener adds."""
    # The reference leaves its shard files for the garbage collector to close: collect them here, where the
    # ResourceWarning is expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            samples = list(webdataset.WebDataset(urls, shardshuffle=False, empty_check=False, **kw))
        finally:
            gc.collect()
    return [{k: v for k, v in s.items() if k != "__local_path__"} for s in samples]


def reference_members(urls: list[str], **kw: Any) -> list[dict]:
    """What webdataset's `tar_file_expander` yields for the given shards."""
    streams = [open(u, "rb") for u in urls]
    try:
        sources = [{"url": u, "stream": s} for u, s in zip(urls, streams)]
        return list(webdataset.tariterators.tar_file_expander(sources, eof_value=None, **kw))
    finally:
        for s in streams:
            s.close()


def core(urls: list, **kw: Any) -> list[dict]:
    return list(_core.ShardReader(urls, **kw))


def read_until_error(iterator: Iterable[dict], error: type[BaseException]) -> tuple[list[dict], Any]:
    """The samples delivered before `error` was raised, and the raised exception."""
    delivered: list[dict] = []
    with pytest.raises(error) as info:
        for sample in iterator:
            delivered.append(sample)
    return delivered, info.value


def tar_layout(path: Path) -> list[tarfile.TarInfo]:
    """The regular members of a plain tar with their header and data offsets."""
    with tarfile.open(path) as tar:
        return [m for m in tar.getmembers() if m.isreg()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Six small shards written by webdataset's TarWriter."""
    d = tmp_path_factory.mktemp("wds")
    return [str(write_wds(d / f"shard-{i}.tar", 7 + i, tag=f"s{i}-")) for i in range(6)]


# ---- equality with webdataset ------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tgz"])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_tarfile_shards_match_webdataset(tmp_path: Path, fmt: str, gz: bool) -> None:
    path = write_tar(tmp_path / f"g.{'tgz' if gz else 'tar'}", grouping_members(fmt), fmt, gz)
    want = reference([str(path)])
    got = core([str(path)])
    assert got == want
    keys = [s["__key__"] for s in got]
    # The rules the reference defines, spelled out so a shared mistake would still show.
    assert keys[:3] == ["dir/base", "UPPER", "./sub/a"]
    assert got[0]["input.png"] == payload("dir/base.input.png", 33)
    assert sorted(got[1]) == ["__key__", "__url__", "jpg", "txt"]
    assert "noext" not in keys and "__meta__" not in keys and "link" not in keys and "hard" not in keys
    assert keys.count("s") == 2
    assert {len(s["bin"]) for s in got if s["__key__"].startswith("size")} == {0, 1, 511, 512, 513}
    long_key = (USTAR_LONG_NAME if fmt == "ustar" else LONG_NAME).split(".")[0]
    assert long_key in keys
    assert all(type(v) is bytes for s in got for k, v in s.items() if not k.startswith("__"))
    assert all(type(s["__key__"]) is str and s["__url__"] == str(path) for s in got)


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tgz"])
def test_webdataset_tarwriter_shards_match(tmp_path: Path, gz: bool) -> None:
    path = tmp_path / ("w.tgz" if gz else "w.tar")
    with webdataset.TarWriter(str(path)) as sink:
        for i in range(30):
            sink.write(
                {
                    "__key__": f"dir/k{i:03d}",
                    "jpg": payload(f"{i}", (i * 97) % 1100),
                    "seg.png": payload(f"seg{i}", 511 + i % 3),
                    "cls": i,
                    "json": {"i": i},
                }
            )
    want = reference([str(path)])
    assert len(want) == 30
    assert core([str(path)]) == want


def test_several_shards_and_url_forms(tmp_path: Path, shards: list[str]) -> None:
    want = reference(shards)
    assert core(shards) == want
    assert core([Path(s) for s in shards]) == want
    assert core(iter(shards)) == want
    file_urls = [f"file:{s}" for s in shards]
    assert core(file_urls) == reference(file_urls)
    assert core([{"url": s} for s in shards]) == want


def test_pipe_shards_match_local(shards: list[str]) -> None:
    want = reference(shards[:2])
    got = core([f"pipe:cat {s}" for s in shards[:2]])
    assert [{**s, "__url__": None} for s in got] == [{**s, "__url__": None} for s in want]
    assert [s["__url__"] for s in got] == [f"pipe:cat {s['__url__']}" for s in want]


def test_zstd_shards(tmp_path: Path, shards: list[str]) -> None:
    if shutil.which("zstd") is None:
        pytest.skip("the zstd command is not installed")
    want = reference(shards[:1])
    zst = tmp_path / "a.tar.zst"
    subprocess.run(["zstd", "-q", "-f", shards[0], "-o", str(zst)], check=True)
    assert [{**s, "__url__": shards[0]} for s in core([str(zst)])] == want
    # Two zstd frames, the tar cut between them at a member boundary: a multi-frame stream reads whole.
    data = Path(shards[0]).read_bytes()
    cut = tar_layout(Path(shards[0]))[6].offset
    multi = tmp_path / "multi.tar.zst"
    with multi.open("wb") as out:
        for part in (data[:cut], data[cut:]):
            out.write(
                subprocess.run(["zstd", "-q", "-c"], input=part, capture_output=True, check=True).stdout
            )
    assert [{**s, "__url__": shards[0]} for s in core([str(multi)])] == want


def test_concatenated_gzip_reads_every_member(tmp_path: Path, shards: list[str]) -> None:
    """`cat a.gz b.gz` where the two gzip members hold the two halves of one tar stream."""
    plain = Path(shards[3])
    data = plain.read_bytes()
    layout = tar_layout(plain)
    cut = layout[3 * 3].offset  # the first member of sample 3: a sample boundary
    path = tmp_path / "concat.tgz"
    path.write_bytes(gzip.compress(data[:cut]) + gzip.compress(data[cut:]))
    intact = reference([str(plain)])
    got = core([str(path)])
    assert [{**s, "__url__": None} for s in got] == [{**s, "__url__": None} for s in intact]
    # The reference reads only the first gzip member and ends there without an error: a short epoch. This
    # documents a difference (fastwds is right).
    short = reference([str(path)])
    assert [{**s, "__url__": None} for s in short] == [{**s, "__url__": None} for s in intact[:3]]


# ---- order, threads, prefetch, buffers ---------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_ordered_and_unordered(shards: list[str], threads: int, prefetch: int) -> None:
    want = reference(shards)
    ordered = core(shards, threads=threads, prefetch=prefetch, ordered=True)
    assert ordered == want
    unordered = core(shards, threads=threads, prefetch=prefetch, ordered=False)
    as_key = lambda s: (s["__url__"], s["__key__"])  # noqa: E731
    assert sorted(unordered, key=as_key) == sorted(want, key=as_key)
    # Samples of one shard keep their order even when shards interleave.
    for url in shards:
        assert [s for s in unordered if s["__url__"] == url] == [s for s in want if s["__url__"] == url]


@pytest.mark.parametrize("ordered", [True, False])
def test_tiny_buffers_still_deliver_everything(shards: list[str], ordered: bool) -> None:
    want = reference(shards)
    got = core(shards, threads=3, prefetch=4, buffer_bytes=1, buffer_samples=1, ordered=ordered)
    if ordered:
        assert got == want
    else:
        assert sorted(map(repr, got)) == sorted(map(repr, want))


def test_each_iteration_is_a_fresh_pass(shards: list[str]) -> None:
    reader = _core.ShardReader(shards[:2], threads=2)
    first = list(reader)
    assert first == reference(shards[:2])
    assert list(reader) == first
    it = iter(reader)
    assert iter(it) is it
    assert next(it) == first[0]
    assert list(it) == first[1:]
    with pytest.raises(StopIteration):
        next(it)


# ---- options -----------------------------------------------------------------------------------------------


def grouped_with_suffixes(urls: list[str], suffixes: set[str]) -> list[dict]:
    """What webdataset's `group_by_keys(suffixes=...)` keeps (the reference's own field filter)."""
    streams = [open(u, "rb") for u in urls]
    try:
        members = webdataset.tariterators.tar_file_expander(
            [{"url": u, "stream": s} for u, s in zip(urls, streams)]
        )
        return list(webdataset.tariterators.group_by_keys(members, suffixes=suffixes))
    finally:
        for s in streams:
            s.close()


@pytest.mark.parametrize("fields", [["txt"], ["cls", "input.json"], ["nothing"], []])
def test_fields_keeps_only_those(shards: list[str], fields: list[str]) -> None:
    want = [
        {k: v for k, v in s.items() if k in ("__key__", "__url__", *fields)} for s in reference(shards[:2])
    ]
    assert core(shards[:2], fields=fields) == want
    assert want == grouped_with_suffixes(shards[:2], set(fields))
    unordered = core(shards[:2], fields=fields, ordered=False, threads=2, prefetch=2)
    assert sorted(map(repr, unordered)) == sorted(map(repr, want))


def test_fields_accepts_any_iterable(shards: list[str]) -> None:
    want = core(shards[:1], fields=["cls", "txt"])
    assert core(shards[:1], fields=("cls", "txt")) == want
    assert core(shards[:1], fields={"cls", "txt"}) == want
    assert core(shards[:1], fields=iter(["cls", "txt"])) == want
    assert list(_core.tar_samples(shards[0], fields=(f for f in ["cls", "txt"]))) == want


def test_fields_ignores_repeats_of_fields_it_drops_as_the_reference(tmp_path: Path) -> None:
    path = str(write_tar(tmp_path / "dup.tar", [("a.txt", b"1"), ("a.cls", b"2"), ("a.cls", b"3")]))
    want = grouped_with_suffixes([path], {"txt"})
    assert want == [{"__key__": "a", "__url__": path, "txt": b"1"}]
    assert core([path], fields=["txt"]) == want
    with pytest.raises(ValueError, match="cls"):
        core([path], fields=["cls"])


def _rename_upper_input(name: str) -> str:
    return name.replace("input.", "IN_").replace("/k00", "/renamed")


def _rename_to_new_keys(name: str) -> str:
    base, _, ext = name.partition(".")
    return f"{base[:-1]}.{base[-1]}.{ext}"  # moves the last key character into the field: regroups samples


@pytest.mark.parametrize(
    ("select", "rename"),
    [
        (lambda n: not n.endswith(".cls"), None),
        (lambda n: "json" in n, None),
        (None, _rename_upper_input),
        (lambda n: n.endswith(".json"), _rename_upper_input),
        (None, _rename_to_new_keys),
    ],
    ids=["drop-cls", "json-only", "rename", "rename-then-select", "regroup"],
)
def test_select_and_rename_files_match_webdataset(
    tmp_path: Path, shards: list[str], select: Callable | None, rename: Callable | None
) -> None:
    urls = shards[:2]
    want = reference(urls, select_files=select, rename_files=rename)
    assert core(urls, select_files=select, rename_files=rename) == want
    unordered = core(urls, select_files=select, rename_files=rename, threads=2, ordered=False)
    assert sorted(map(repr, unordered)) == sorted(map(repr, want))


def test_rename_then_select_see_the_renamed_name(shards: list[str]) -> None:
    seen: list[str] = []

    def select(name: str) -> bool:
        seen.append(name)
        return True

    core(shards[:1], select_files=select, rename_files=lambda n: "r/" + n)
    assert seen and all(n.startswith("r/") for n in seen)


def test_callback_errors_raise(shards: list[str]) -> None:
    def bad_rename(name: str) -> str:
        raise RuntimeError("rename boom")

    with pytest.raises(Exception, match="rename boom"):
        core(shards[:1], rename_files=bad_rename)

    def bad_select(name: str) -> bool:
        raise RuntimeError("select boom")

    with pytest.raises(Exception, match="select boom"):
        core(shards[:1], select_files=bad_select)


def test_lcase_false_keeps_field_case(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "c.tar", [("a.JPG", b"1"), ("a.Txt", b"2")])
    assert core([str(path)], lcase=False) == [
        {"__key__": "a", "__url__": str(path), "JPG": b"1", "Txt": b"2"}
    ]
    assert core([str(path)]) == reference([str(path)])


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_members_match_tar_file_expander(tmp_path: Path, fmt: str, shards: list[str]) -> None:
    path = str(write_tar(tmp_path / "g.tar", grouping_members(fmt), fmt))
    urls = [path, shards[0]]
    want = reference_members(urls)
    assert core(urls, members=True) == want
    assert list(_core.tar_members(path)) == reference_members([path])
    names = [m["fname"] for m in want]
    assert "noext" in names and "__meta__" not in names and "dir" not in names and "link.jpg" not in names


def test_members_with_select_and_rename(shards: list[str]) -> None:
    kw: dict[str, Any] = {"select_files": lambda n: n.endswith("txt"), "rename_files": lambda n: n.upper()}
    assert core(shards[:2], members=True, **kw) == reference_members(shards[:2], **kw)


def test_tar_samples_on_a_path_and_on_a_file_object(shards: list[str]) -> None:
    url = shards[1]
    want = reference([url])
    assert list(_core.tar_samples(url)) == want
    with open(url, "rb") as f:
        assert list(_core.tar_samples(f)) == want
    with open(url, "rb") as f:
        assert list(_core.tar_samples(f, url="named")) == [{**s, "__url__": "named"} for s in want]
    buf = io.BytesIO(Path(url).read_bytes())
    assert list(_core.tar_samples(buf, url="mem")) == [{**s, "__url__": "mem"} for s in want]
    only = list(_core.tar_samples(url, fields=["cls"]))
    assert only == [{"__key__": s["__key__"], "__url__": url, "cls": s["cls"]} for s in want]


def test_file_objects_and_stream_dicts_as_shards(shards: list[str]) -> None:
    want = reference(shards[:2])
    with open(shards[0], "rb") as a, open(shards[1], "rb") as b:
        assert core([a, b]) == want
    with open(shards[0], "rb") as a, open(shards[1], "rb") as b:
        got = core([{"url": "x0", "stream": a}, {"url": "x1", "stream": b}], threads=2)
    assert got == [{**s, "__url__": "x0" if s["__url__"] == shards[0] else "x1"} for s in want]
    gz = io.BytesIO(gzip.compress(Path(shards[2]).read_bytes()))
    assert core([{"url": shards[2], "stream": gz}]) == reference(shards[2:3])


SPLIT_NAMES = [
    "a.jpg",
    "dir/base.input.png",
    "x/y.z/w.jpg",
    "a.b/c",
    "noext",
    ".gitignore",
    "dir/.gitignore",
    "a/b/.x",
    "a.b/.x",
    "dir/sub/.hidden.txt",
    "./sub/a.jpg",
    "./a.jpg",
    "../a.b",
    "a.",
    "a..b",
    "dir/",
    "/abs/path.tar.gz",
    "//x.y",
    "a/./b.c",
    "a/../b.c",
    "a b/c d.e f",
    "UPPER.JPG",
    "__meta__",
    "__key__.json",
    "a/.",
    "a/..",
    ".",
    "..",
    "/",
    "",
    "a/b.c/",
    "a.b.c.d",
    "x" * 300 + ".y",
    "é/ü.ñ",
    "tab\tname.x",
]


@pytest.mark.parametrize("name", SPLIT_NAMES)
def test_split_key_matches_base_plus_ext(name: str) -> None:
    key, field = webdataset.tariterators.base_plus_ext(name)
    assert tariterators.split_key(name) == (None if key is None else (key, field))


# ---- errors ------------------------------------------------------------------------------------------------


def _expected_before(layout: list[tarfile.TarInfo], cut: int) -> int:
    """How many samples are known complete when the stream stops at `cut`: those whose following sample's
    first member header was read whole (the key changed)."""
    keys = [m.name.split(".")[0] for m in layout]
    firsts = [m for i, m in enumerate(layout) if i == 0 or keys[i] != keys[i - 1]]
    return sum(1 for m in firsts[1:] if m.offset_data <= cut)


def _cuts(layout: list[tarfile.TarInfo], end: int) -> dict[str, int]:
    """Interesting places to cut a plain tar stream made by TarWriter (3 members per sample)."""
    big = next(m for m in layout if m.size == 700)  # the last member of sample 2
    assert layout[10].size < 300  # sample 3's second member: mostly padding
    return {
        "member-boundary": layout[9].offset,  # between samples 2 and 3
        "inside-member-boundary": layout[10].offset,  # between two members of sample 3
        "inside-extended-header": layout[12].offset + 700,  # inside a pax record's payload block
        "inside-header": layout[12].offset_data - 300,  # inside the ustar header after the pax record
        "inside-data": big.offset_data + 350,
        "inside-padding": layout[10].offset_data + 400,
        "after-last-member": end,  # every member whole, but no end-of-archive marker
    }


@pytest.mark.parametrize(
    "where",
    [
        "member-boundary",
        "inside-member-boundary",
        "inside-extended-header",
        "inside-header",
        "inside-data",
        "inside-padding",
        "after-last-member",
    ],
)
def test_truncated_shard_raises_after_the_complete_samples(
    tmp_path: Path, shards: list[str], where: str
) -> None:
    intact_path = Path(shards[4])
    intact = reference([str(intact_path)])
    layout = tar_layout(intact_path)
    end = layout[-1].offset_data + -(-layout[-1].size // 512) * 512
    cut = _cuts(layout, end)[where]
    path = tmp_path / "cut.tar"
    path.write_bytes(intact_path.read_bytes()[:cut])

    delivered, err = read_until_error(_core.ShardReader([str(path)]), _core.ShardError)
    assert isinstance(err, OSError)
    assert err.url == str(path)
    assert isinstance(err.offset, int) and 0 <= err.offset <= cut
    assert str(path) in str(err) and str(err.offset) in str(err)
    expected = _expected_before(layout, cut)
    assert expected < len(intact)
    relabel = [{**s, "__url__": str(path)} for s in intact]
    # Exactly the samples completed before the cut, each whole; never a partial one.
    assert delivered == relabel[:expected]


@pytest.mark.parametrize("where", ["member-boundary", "after-last-member"])
def test_webdataset_ends_a_cut_shard_silently(tmp_path: Path, shards: list[str], where: str) -> None:
    """Documents a difference: the reference yields a short epoch without an error where fastwds raises."""
    intact_path = Path(shards[4])
    layout = tar_layout(intact_path)
    end = layout[-1].offset_data + -(-layout[-1].size // 512) * 512
    cut = _cuts(layout, end)[where]
    path = tmp_path / "cut.tar"
    path.write_bytes(intact_path.read_bytes()[:cut])
    short = reference([str(path)])
    assert 0 < len(short) <= len(reference([str(intact_path)]))
    with pytest.raises(_core.ShardError):
        core([str(path)])


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_truncated_gzip_member_raises_without_partial_samples(
    tmp_path: Path, shards: list[str], fraction: float
) -> None:
    intact_path = Path(shards[5])
    intact = reference([str(intact_path)])
    compressed = gzip.compress(intact_path.read_bytes() + bytes(4096), compresslevel=1)
    path = tmp_path / "cut.tgz"
    path.write_bytes(compressed[: int(len(compressed) * fraction)])
    delivered, err = read_until_error(_core.ShardReader([str(path)]), _core.ShardError)
    assert err.url == str(path) and str(path) in str(err)
    assert isinstance(err.offset, int) and str(err.offset) in str(err)
    assert len(delivered) < len(intact)
    assert delivered == [{**s, "__url__": str(path)} for s in intact[: len(delivered)]]


def test_truncated_ustar_and_gnu_shards(tmp_path: Path) -> None:
    for fmt in ("ustar", "gnu"):
        members = [(f"k{i // 2:03d}.{'ab'[i % 2]}", payload(str(i), 100 + i)) for i in range(20)]
        members.append((LONG_NAME if fmt == "gnu" else USTAR_LONG_NAME, b"z" * 10))
        intact_path = write_tar(tmp_path / f"{fmt}.tar", members, fmt)
        layout = tar_layout(intact_path)
        intact = reference([str(intact_path)])
        for cut in (layout[6].offset + 200, layout[7].offset_data + 50, layout[-1].offset + 100):
            path = tmp_path / f"{fmt}-{cut}.tar"
            path.write_bytes(intact_path.read_bytes()[:cut])
            delivered, err = read_until_error(_core.ShardReader([str(path)]), _core.ShardError)
            assert err.url == str(path) and str(err.offset) in str(err)
            assert delivered == [{**s, "__url__": str(path)} for s in intact[: _expected_before(layout, cut)]]


def test_corrupt_header_checksum_raises_at_that_header(tmp_path: Path, shards: list[str]) -> None:
    intact_path = Path(shards[1])
    layout = tar_layout(intact_path)
    data = bytearray(intact_path.read_bytes())
    header = layout[7].offset_data - 512  # the ustar header of sample 2's second member
    data[header + 5] ^= 0x20  # a changed name byte: the stored checksum no longer matches
    path = tmp_path / "corrupt.tar"
    path.write_bytes(bytes(data))
    delivered, err = read_until_error(_core.ShardReader([str(path)]), _core.ShardError)
    assert err.url == str(path) and err.offset in (layout[7].offset, header)
    assert str(err.offset) in str(err)
    assert delivered == [{**s, "__url__": str(path)} for s in reference([str(intact_path)])[:2]]


def test_stdin_as_a_shard(shards: list[str]) -> None:
    code = "from fastwds import _core; print([s['__key__'] for s in _core.ShardReader(['-'])])"
    with open(shards[0], "rb") as stdin:
        out = subprocess.run(
            [sys.executable, "-c", code], stdin=stdin, capture_output=True, text=True, check=True
        )
    assert out.stdout.strip() == repr([s["__key__"] for s in reference(shards[:1])])


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope" / "missing.tar")
    with pytest.raises(_core.ShardError) as info:
        core([missing])
    assert missing in str(info.value)
    assert info.value.url == missing


def test_error_in_a_later_shard_comes_after_the_earlier_samples(tmp_path: Path, shards: list[str]) -> None:
    missing = str(tmp_path / "missing.tar")
    urls = [shards[0], shards[1], missing, shards[2]]
    for threads in (1, 3):
        delivered, err = read_until_error(_core.ShardReader(urls, threads=threads), _core.ShardError)
        assert delivered == reference(shards[:2])
        assert err.url == missing


def test_pipe_command_with_a_failing_status(shards: list[str]) -> None:
    command = f"cat {shards[0]}; exit 3"
    delivered, err = read_until_error(_core.ShardReader([f"pipe:{command}"]), _core.ShardError)
    assert command in str(err) and re.search(r"\b3\b", str(err).replace(command, ""))
    assert err.url == f"pipe:{command}"
    # The stream itself was whole: every sample came before the failure.
    assert [s["__key__"] for s in delivered] == [s["__key__"] for s in reference(shards[:1])]


def test_pipe_command_failing_before_any_output_reports_status_and_stderr() -> None:
    command = "echo oops >&2; exit 2"
    with pytest.raises(_core.ShardError) as info:
        core([f"pipe:{command}"])
    message = str(info.value)
    assert command in message
    assert re.search(r"\b2\b", message.replace(command, ""))
    assert "oops" in message


def test_repeated_field_raises_value_error_naming_url_key_and_field(tmp_path: Path) -> None:
    members = [("a.txt", b"1"), ("b.txt", b"2"), ("b.TXT", b"3"), ("c.txt", b"4")]
    path = str(write_tar(tmp_path / "dup.tar", members))
    with pytest.raises(ValueError, match="duplicate"):
        reference([path])
    delivered, err = read_until_error(_core.ShardReader([path]), ValueError)
    assert delivered == [{"__key__": "a", "__url__": path, "txt": b"1"}]
    message = str(err)
    assert path in message and '"b"' in message and "txt" in message


@pytest.mark.parametrize("field", ["__key__", "__url__"])
def test_a_field_named_like_the_sample_keys_raises_as_the_reference(tmp_path: Path, field: str) -> None:
    path = str(write_tar(tmp_path / "meta.tar", [("a.txt", b"1"), (f"b.{field}", b"2"), ("c.txt", b"3")]))
    with pytest.raises(ValueError):
        reference([path])
    delivered, _ = read_until_error(_core.ShardReader([path]), ValueError)
    assert delivered == [{"__key__": "a", "__url__": path, "txt": b"1"}]


def test_unsupported_scheme_points_to_pipe_and_the_scheme_table() -> None:
    # The core reads no azure:// itself; it asks fastwds.gopen's scheme table, which has no handler for it.
    with pytest.raises(ValueError, match="pipe:") as info:
        core(["azure://bucket/x.tar"])
    assert "azure://bucket/x.tar" in str(info.value) and "gopen_schemes" in str(info.value)


def test_not_a_tar_stream_raises(tmp_path: Path) -> None:
    path = tmp_path / "junk.tar"
    path.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(_core.ShardError) as info:
        core([str(path)])
    assert info.value.url == str(path)


def test_bad_shard_type_raises_type_error() -> None:
    with pytest.raises(TypeError):
        core([42])


# ---- handler -----------------------------------------------------------------------------------------------


@pytest.fixture()
def with_cut_shard(tmp_path: Path, shards: list[str]) -> tuple[list[str], list[dict], int]:
    """Shards [0, cut copy of 4, 1, missing, 2] and the samples before the cut."""
    layout = tar_layout(Path(shards[4]))
    big = next(m for m in layout if m.size == 700)  # sample 2's text field
    cut = tmp_path / "cut.tar"
    cut.write_bytes(Path(shards[4]).read_bytes()[: big.offset_data + 100])
    before = [{**s, "__url__": str(cut)} for s in reference([shards[4]])[:2]]
    urls = [shards[0], str(cut), shards[1], str(tmp_path / "missing.tar"), shards[2]]
    return urls, before, len(reference([shards[4]]))


@pytest.mark.parametrize("threads", [1, 3])
def test_handler_true_skips_the_rest_of_the_shard(
    with_cut_shard: tuple, shards: list[str], threads: int
) -> None:
    urls, before, _ = with_cut_shard
    seen: list[BaseException] = []

    def handler(exn: BaseException) -> bool:
        seen.append(exn)
        return True

    got = core(urls, handler=handler, threads=threads)
    want = reference(shards[:1]) + before + reference(shards[1:2]) + reference(shards[2:3])
    assert got == want
    assert len(got) == 7 + 2 + 8 + 9
    assert [type(e) for e in seen] == [_core.ShardError, _core.ShardError]
    assert [e.url for e in seen] == [urls[1], urls[3]]


def test_handler_false_stops_quietly(with_cut_shard: tuple, shards: list[str]) -> None:
    urls, before, _ = with_cut_shard
    got = core(urls, handler=lambda exn: False, threads=2)
    assert got == reference(shards[:1]) + before


def test_handler_raising_propagates(with_cut_shard: tuple, shards: list[str]) -> None:
    urls, before, _ = with_cut_shard

    class Stop(Exception):
        pass

    def handler(exn: BaseException) -> bool:
        raise Stop(str(exn))

    delivered, err = read_until_error(_core.ShardReader(urls, handler=handler), Stop)
    assert delivered == reference(shards[:1]) + before
    assert urls[1] in str(err)


def test_handler_sees_a_repeated_field_too(tmp_path: Path, shards: list[str]) -> None:
    dup = str(write_tar(tmp_path / "dup.tar", [("a.txt", b"1"), ("b.txt", b"2"), ("b.txt", b"3")]))
    seen: list[BaseException] = []
    got = core([dup, shards[0]], handler=lambda e: seen.append(e) or True)
    # As the reference: the repeated member is dropped and the shard goes on.
    want = [{"__key__": "a", "__url__": dup, "txt": b"1"}, {"__key__": "b", "__url__": dup, "txt": b"2"}]
    assert got == want + reference(shards[:1])
    assert len(seen) == 1 and isinstance(seen[0], ValueError)


def test_tar_samples_handler(tmp_path: Path, shards: list[str]) -> None:
    data = Path(shards[0]).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: tar_layout(Path(shards[0]))[7].offset_data + 1])
    got = list(_core.tar_samples(str(cut), handler=lambda e: True))
    assert got == [{**s, "__url__": str(cut)} for s in reference(shards[:1])[:2]]
    with pytest.raises(_core.ShardError):
        list(_core.tar_samples(str(cut)))


def test_large_members_are_read_whole_into_bytes_and_a_cut_inside_one_raises(tmp_path) -> None:
    # Members of 1 MiB and more are read by the reader threads straight into the bytes Python gets.
    big = bytes(range(256)) * 8192  # 2 MiB
    path = tmp_path / "large.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for key, payload in (("a", big), ("b", big[::-1]), ("c", b"small")):
            for ext, data in (("npy", payload), ("txt", key.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    samples = list(_core.ShardReader([str(path)]))
    assert [(s["__key__"], s["npy"], s["txt"]) for s in samples] == [
        ("a", big, b"a"),
        ("b", big[::-1], b"b"),
        ("c", b"small", b"c"),
    ]
    assert all(type(s["npy"]) is bytes for s in samples)
    members = list(_core.tar_members(str(path)))
    assert members[0]["data"] == big and type(members[0]["data"]) is bytes
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: data.index(big[::-1][:4096]) + 1000])  # inside b.npy
    got = []
    with pytest.raises(_core.ShardError) as info:
        for sample in _core.ShardReader([str(cut)]):
            got.append(sample["__key__"])
    assert got == ["a"]
    assert info.value.member == "b.npy" and info.value.offset is not None
