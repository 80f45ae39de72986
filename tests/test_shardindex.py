"""Shard indexes (`fastwds.shardindex`): the sidecar format round-trips and stays small; every offset is where
its sample starts (parsing a plain tar from there, or the decompressed stream of a .tar.gz, yields that sample
first and whole, long names included); the index counts and keys samples as the reader groups them; writers
produce the same index as `build_index`; a changed shard's index is ignored with a warning and a damaged one
is an error naming it."""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
import warnings
import zlib
from pathlib import Path

import pytest

import fastwds
from conftest import write_tarfile, write_wds
from fastwds import _core, shardindex
from fastwds.gopen import gopen_schemes
from fastwds.shardindex import (
    SUFFIX,
    ShardIndex,
    StaleIndexWarning,
    build_index,
    dataset_length,
    decode_index,
    encode_index,
    index_url,
    load_index,
    read_index,
    sample_count,
    write_index,
)


def reader_samples(source) -> list[dict]:
    """The samples fastwds's reader yields from a path or binary stream (keys as they are)."""
    return list(_core.tar_samples(source, lcase=False))


def write_samples(path: Path | str, samples: list[dict], **kw) -> ShardIndex:
    """Writes a shard with `TarWriter`; returns the index it wrote."""
    with fastwds.TarWriter(str(path), encoder=False, **kw) as sink:
        for sample in samples:
            sink.write(sample)
    assert (sink.index is None) == (kw.get("index") is False)
    return sink.index  # type: ignore[return-value]


def simple_samples(n: int, start: int = 0) -> list[dict]:
    return [
        {"__key__": f"sample{i:06d}", "txt": f"text {i}" * (i % 50), "cls": str(i % 10)}
        for i in range(start, start + n)
    ]


def assert_offsets_start_samples(tar_bytes: bytes, index: ShardIndex) -> None:
    """Parsing from each offset yields that sample first, equal to the whole shard's reading of it."""
    whole = reader_samples(io.BytesIO(tar_bytes))
    assert [s["__key__"] for s in whole] == index.keys
    assert index.end <= len(tar_bytes) and not any(tar_bytes[index.end : index.end + 1024])
    for i, (key, offset) in enumerate(zip(index.keys, index.offsets)):
        stream = io.BytesIO(tar_bytes)
        stream.seek(offset)
        first = next(iter(_core.tar_samples(stream, lcase=False)))
        assert first["__key__"] == key
        assert {k: v for k, v in first.items() if k != "__url__"} == {
            k: v for k, v in whole[i].items() if k != "__url__"
        }


# ---------------------------------------------------------------------------------------------------------
# the format


def random_index(rnd: random.Random, n: int) -> ShardIndex:
    pieces = ["a", "b", "é", "/", ".", "\x00", "\udcff", "日本", "xyz" * rnd.randint(0, 40), "0", "9"]
    keys = ["".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 8))) for _ in range(n)]
    offsets = []
    offset = rnd.choice([0, 512])
    for _ in range(n):
        offsets.append(offset)
        offset += 512 * rnd.choice([0, 1, 2, 3, 200, 1 << 20, 1 << 40])
    return ShardIndex(
        keys, offsets, offset, rnd.randint(0, 1 << 50), rnd.choice(["", "1700000000123456789", '"e"'])
    )


def reference_encoding(index: ShardIndex) -> bytes:
    """docs/index-format.md's layout, written out plainly, to check the core's encoder against."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        return bytes(out + bytes([value]))

    raws = [key.encode("utf-8", "surrogateescape") for key in index.keys]
    shared = [len(os.path.commonprefix([a, b])) for a, b in zip([b"", *raws], raws)]
    body = b"\x89WDSIDX\n\x01\x00" + varint(index.size)
    body += varint(len(index.validator.encode())) + index.validator.encode() + varint(len(raws))
    body += b"".join(map(varint, shared)) + b"".join(varint(len(r) - n) for r, n in zip(raws, shared))
    body += b"".join(r[n:] for r, n in zip(raws, shared))
    ends = [*index.offsets, index.end]
    body += b"".join(varint((b - a) // 512) for a, b in zip([0, *ends], ends))
    return body + zlib.crc32(body).to_bytes(4, "little")


def test_the_format_round_trips():
    rnd = random.Random(7)
    for _ in range(300):
        index = random_index(rnd, rnd.randint(0, 40))
        data = encode_index(index)
        assert data == reference_encoding(index)
        assert decode_index(data) == index
        stream = io.BytesIO()
        write_index(stream, index)
        stream.seek(0)
        assert read_index(stream) == index


def test_an_empty_shard_has_an_index():
    index = ShardIndex([], [], 0, 10240, "1")
    assert decode_index(encode_index(index)) == index and index.count == 0


@pytest.mark.parametrize(
    "index, message",
    [
        (ShardIndex(["a", "b"], [0], 1024, 1), "2 keys but 1 offsets"),
        (ShardIndex(["a", "b"], [512, 0], 1024, 1), "increase"),
        (ShardIndex(["a"], [100], 1024, 1), "blocks"),
        (ShardIndex(["a"], [512], 0, 1), "end offset 0"),
        (ShardIndex(["a"], [0], 512, 1, version=2), "version 2"),
    ],
)
def test_what_cannot_be_stored_is_refused(index, message):
    with pytest.raises(ValueError, match=message):
        encode_index(index)


def test_typical_shards_cost_a_few_bytes_per_sample(tmp_path):
    index = write_samples(tmp_path / "a.tar", simple_samples(5000))
    per_sample = len(encode_index(index)) / index.count
    assert per_sample <= 5, per_sample
    # Keys that share little (hashes) cost their own length: front coding adds only two bytes to them.
    rnd = random.Random(1)
    hashed = [dict(s, __key__=f"{rnd.getrandbits(64):016x}") for s in simple_samples(2000)]
    index = write_samples(tmp_path / "b.tar", hashed)
    assert len(encode_index(index)) / index.count <= 16 + 4
    assert os.path.getsize(tmp_path / ("a.tar" + SUFFIX)) == len(
        encode_index(read_index(tmp_path / "a.tar.wdsidx"))
    )


# ---------------------------------------------------------------------------------------------------------
# offsets


def test_every_offset_of_a_plain_tar_starts_its_sample(tmp_path):
    path = tmp_path / "a.tar"
    samples = simple_samples(300)
    samples[7]["big"] = os.urandom(70_000)  # a member larger than the writer's coalescing buffer
    index = write_samples(path, samples)
    assert index.count == 300 and index.offsets[0] == 0
    assert_offsets_start_samples(path.read_bytes(), index)
    # The file itself: seek there and read.
    with open(path, "rb") as f:
        f.seek(index.offsets[123])
        assert next(iter(_core.tar_samples(f)))["__key__"] == "sample000123"


def test_offsets_of_a_tar_gz_are_in_the_decompressed_stream(tmp_path):
    path = tmp_path / "a.tar.gz"
    index = write_samples(path, simple_samples(200))
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert index == build_index(str(path))
    assert index.size == os.path.getsize(path)
    assert_offsets_start_samples(gzip.decompress(path.read_bytes()), index)


@pytest.mark.parametrize("fmt", ["ustar", "gnu"])
def test_long_names_start_at_their_extended_header(tmp_path, fmt):
    long_key = "d" * 90 + "/" + "k" * 150  # no ustar prefix split: a pax record, or a GNU long name
    samples = simple_samples(6)
    samples[2]["__key__"] = long_key
    samples[4]["__key__"] = "é-" + "x" * 120 if fmt == "ustar" else "short"
    path = tmp_path / "long.tar"
    index = write_samples(path, samples, format=fmt)
    assert index == build_index(str(path))
    data = path.read_bytes()
    typeflag = data[index.offsets[2] + 156 : index.offsets[2] + 157]
    assert typeflag == (b"x" if fmt == "ustar" else b"L"), "the offset is that of the extended header"
    assert_offsets_start_samples(data, index)


def test_shards_from_other_writers_are_indexed_as_the_reader_groups_them(tmp_path):
    samples = [(f"s{i:03d}", {"jpg": os.urandom(i * 37), "txt": b"t"}) for i in range(40)]
    for name, write in [
        ("pax.tar", lambda p: write_tarfile(p, samples, fmt="pax")),
        ("gnu.tar", lambda p: write_tarfile(p, samples, fmt="gnu")),
        ("wds.tar", lambda p: write_wds(p, samples)),  # a pax header before every member
        ("wds.tar.gz", lambda p: write_wds(p, samples, gz=True)),
    ]:
        path = str(tmp_path / name)
        write(path)
        index = build_index(path)
        data = Path(path).read_bytes()
        if name.endswith(".gz"):
            data = gzip.decompress(data)
        assert index.keys == [key for key, _ in samples], name
        assert_offsets_start_samples(data, index)


def tar_with(tmp_path: Path, name: str, entries: list[tuple[str, bytes | None]]) -> str:
    """A tar of regular files (bytes) and directories (None), in order."""
    path = tmp_path / name
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in entries:
            info = tarfile.TarInfo(member)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_metadata_directories_and_unsplittable_names_are_skipped_as_the_reader_skips_them(tmp_path):
    path = tar_with(
        tmp_path,
        "odd.tar",
        [
            ("__meta__", b"m"),
            ("a.txt", b"1"),
            ("dir/", None),
            ("a.json", b"2"),  # still sample a: a directory between does not end it
            ("noext", b"x"),
            ("__index__/x.y", b"z"),
            ("b.txt", b"3"),
            ("a.txt", b"4"),  # a again, later: a new sample
            ("x.y/z.jpg", b"5"),
            ("x.y/z.cls", b"6"),
        ],
    )
    index = build_index(path)
    assert index.keys == ["a", "b", "a", "x.y/z"]
    assert index.count == len(reader_samples(path))
    assert_offsets_start_samples(Path(path).read_bytes(), index)


def test_concatenated_archives_are_indexed_whole(tmp_path):
    a = write_samples(tmp_path / "a.tar", simple_samples(5))
    b = write_samples(tmp_path / "b.tar", simple_samples(4, start=5))
    both = (tmp_path / "a.tar").read_bytes() + (tmp_path / "b.tar").read_bytes()
    (tmp_path / "ab.tar").write_bytes(both)
    index = build_index(str(tmp_path / "ab.tar"))
    assert index.keys == a.keys + b.keys
    size_a = os.path.getsize(tmp_path / "a.tar")
    assert index.offsets == a.offsets + [size_a + o for o in b.offsets]
    assert index.end == size_a + b.end
    assert_offsets_start_samples(both, index)


def test_build_index_reads_any_url_gopen_opens(tmp_path):
    path = tmp_path / "a.tar"
    written = write_samples(path, simple_samples(50))
    via_pipe = build_index(f"pipe:cat {path}")
    assert (via_pipe.keys, via_pipe.offsets, via_pipe.end, via_pipe.size) == (
        written.keys,
        written.offsets,
        written.end,
        written.size,
    )
    assert via_pipe.validator == ""
    assert build_index(f"file:{path}") == written


def test_damaged_shards_are_errors_naming_them(tmp_path):
    path = tmp_path / "a.tar"
    write_samples(path, simple_samples(20))
    data = path.read_bytes()
    for name, content in [
        ("cut.tar", data[: len(data) // 2]),
        ("cut-header.tar", data[:700]),
        ("garbage.tar", b"not a tar file at all" * 50),
        ("cut.tar.gz", gzip.compress(data)[:-100]),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            build_index(str(tmp_path / name))


def test_zstd_shards_need_a_zstd_decoder(tmp_path):
    try:
        import zstandard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("zstandard is installed")
    path = tmp_path / "a.tar.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(100))
    with pytest.raises(ValueError, match=r"a\.tar\.zst.*zstd"):
        build_index(str(path))


# ---------------------------------------------------------------------------------------------------------
# writers


def test_writers_write_the_index_build_index_makes(tmp_path):
    pattern = str(tmp_path / "shard-%03d.tar")
    with fastwds.ShardWriter(pattern, maxcount=100, verbose=0) as sink:
        for sample in simple_samples(250):
            sink.write(sample)
    names = sorted(os.listdir(tmp_path))
    assert names == [f"shard-{i:03d}.tar{ext}" for i in range(3) for ext in ("", SUFFIX)]
    for i in range(3):
        url = pattern % i
        index = load_index(url)
        assert index == build_index(url)
        assert index.count == (100 if i < 2 else 50)
        assert (index.size, index.validator) == (os.path.getsize(url), str(os.stat(url).st_mtime_ns))
    assert dataset_length(str(tmp_path / "shard-{000..002}.tar")) == 250


def test_the_writers_index_follows_the_readers_grouping(tmp_path):
    samples = [
        {"__key__": "a.b", "jpg": b"1", "txt": b"2"},  # the reader's key is "a"
        {"__key__": "a", "cls": b"3"},  # still sample "a" to the reader
        {"__key__": "c", "x/y.z": b"4", "txt": b"5"},  # "c.x/y" then "c"
        {"__key__": "c", "json": b"6"},
        {"__key__": "__m", "meta__": b"7", "txt": b"8"},  # "__m.meta__" is metadata
        {"__key__": "d/e.f", "txt": b"9"},
        {"__key__": "", "txt": b"10"},  # ".txt": no key, skipped
        {"__key__": "g", "__url__": "x"},  # no members: nothing written
        {"__key__": "h", "__url__": "u", "txt": b"11"},
    ]
    path = tmp_path / "odd.tar"
    index = write_samples(path, samples, keep_meta=False)
    assert index == build_index(str(path))
    assert index.keys == ["a", "c.x/y", "c", "__m", "d/e", "h"]
    assert index.count == len(reader_samples(str(path)))
    assert_offsets_start_samples(path.read_bytes(), index)
    # With keep_meta, "h.__url__" is a member of sample h too.
    index = write_samples(tmp_path / "meta.tar", samples, keep_meta=True)
    assert index == build_index(str(tmp_path / "meta.tar"))


def test_repeated_keys_make_one_sample_as_the_reader_sees_them(tmp_path):
    samples = [{"__key__": k, f"f{i}": b"x"} for i, k in enumerate("aabbba")]
    index = write_samples(tmp_path / "r.tar", samples)
    assert index.keys == ["a", "b", "a"] == [s["__key__"] for s in reader_samples(str(tmp_path / "r.tar"))]
    assert index == build_index(str(tmp_path / "r.tar"))
    # A key that comes again later (not in a row) is another sample.
    samples = [{"__key__": k, "txt": "x"} for k in "abab"]
    index = write_samples(tmp_path / "s.tar", samples)
    assert index.keys == list("abab") == [s["__key__"] for s in reader_samples(str(tmp_path / "s.tar"))]
    assert index == build_index(str(tmp_path / "s.tar"))


def test_index_false_writes_none_and_streams_get_none(tmp_path):
    with fastwds.TarWriter(str(tmp_path / "a.tar"), index=False) as sink:
        sink.write({"__key__": "a", "txt": "x"})
    assert sink.index is None
    with fastwds.ShardWriter(str(tmp_path / "s-%d.tar"), maxcount=1, verbose=0, index=False) as sink:
        for i in range(2):
            sink.write({"__key__": f"k{i}", "txt": "x"})
    stream = io.BytesIO()
    with fastwds.TarWriter(stream) as sink:
        sink.write({"__key__": "a", "txt": "x"})
    assert sink.index is None
    with fastwds.TarWriter(f"pipe:cat > {tmp_path / 'p.tar'}") as sink:
        sink.write({"__key__": "a", "txt": "x"})
    assert sorted(os.listdir(tmp_path)) == ["a.tar", "p.tar", "s-0.tar", "s-1.tar"]
    with pytest.raises(ValueError, match="local file"):
        fastwds.TarWriter(io.BytesIO(), index=True)


def test_a_writer_through_a_symbolic_link_puts_the_index_beside_the_link(tmp_path):
    (tmp_path / "data").mkdir()
    os.symlink(tmp_path / "data" / "real.tar", tmp_path / "link.tar")
    (tmp_path / "data" / "real.tar").write_bytes(b"")
    write_samples(tmp_path / "link.tar", simple_samples(3))
    assert load_index(str(tmp_path / "link.tar")) == build_index(str(tmp_path / "link.tar"))
    assert sorted(os.listdir(tmp_path / "data")) == ["real.tar"]


# ---------------------------------------------------------------------------------------------------------
# finding, checking and using indexes


def test_index_url_is_beside_the_shard():
    assert index_url("/data/train-000001.tar") == "/data/train-000001.tar.wdsidx"
    assert index_url("file:/data/a.tar.gz") == "file:/data/a.tar.gz.wdsidx"
    assert index_url("https://host/d/a.tar") == "https://host/d/a.tar.wdsidx"
    assert index_url("https://host/d/a.tar?x=1") == "https://host/d/a.tar.wdsidx?x=1"
    assert index_url("s3://bucket/d/a.tar") == "s3://bucket/d/a.tar.wdsidx"
    assert index_url("gs://bucket/a.tar") == "gs://bucket/a.tar.wdsidx"
    for url in ("-", "pipe:cat a.tar"):
        with pytest.raises(ValueError, match="no index"):
            index_url(url)


def test_a_missing_index_is_none_silently(tmp_path):
    with fastwds.TarWriter(str(tmp_path / "a.tar"), index=False) as sink:
        sink.write({"__key__": "a", "txt": "x"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_index(str(tmp_path / "a.tar")) is None
        assert load_index("pipe:cat /nonexistent") is None
        assert dataset_length([str(tmp_path / "a.tar")]) is None


def test_a_changed_shard_makes_its_index_stale(tmp_path):
    path = tmp_path / "a.tar"
    write_samples(path, simple_samples(10))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched
    with pytest.warns(StaleIndexWarning, match=r"a\.tar.*stale.*mtime_ns"):
        assert load_index(str(path)) is None
    assert load_index(str(path), check=False) is not None
    with pytest.warns(StaleIndexWarning, match="stale"):
        assert dataset_length([str(path)]) is None
    write_samples(path, simple_samples(200), index=False)  # rewritten: another size
    with pytest.warns(StaleIndexWarning, match=r"size 30,720 -> 409,600 bytes"):
        assert sample_count(str(path)) is None
    os.unlink(path)
    with pytest.warns(StaleIndexWarning, match="no longer exists"):
        assert load_index(str(path)) is None


def test_a_damaged_index_is_an_error_naming_it(tmp_path):
    path = tmp_path / "a.tar"
    write_samples(path, simple_samples(10))
    sidecar = tmp_path / ("a.tar" + SUFFIX)
    good = sidecar.read_bytes()
    flipped = bytearray(good)
    flipped[20] ^= 0x40
    for content, message in [
        (bytes(flipped), "checksum"),
        (good[:-7], "checksum"),
        (b"", "not a fastwds shard index"),
        (b"PK\x03\x04" + good[4:], "not a fastwds shard index"),
        (good[:8] + b"\x07" + good[9:], "version 7"),
    ]:
        sidecar.write_bytes(content)
        with pytest.raises(ValueError, match=rf"a\.tar\.wdsidx.*{message}|{message}.*a\.tar\.wdsidx"):
            load_index(str(path))


def test_indexes_in_an_index_directory(tmp_path, monkeypatch):
    shard = tmp_path / "a.tar"
    (tmp_path / "idx").mkdir()
    with fastwds.TarWriter(str(shard), index=False) as sink:
        for sample in simple_samples(5):
            sink.write(sample)
    index = build_index(str(shard))
    write_index(tmp_path / "idx" / "a.tar.wdsidx", index)
    assert load_index(str(shard)) is None
    assert load_index(str(shard), index_dir=str(tmp_path / "idx")) == index
    # A pipe: shard's index: unchecked, since there is nothing to ask for its size or ETag.
    assert load_index(f"pipe:cat {shard}", index_dir=str(tmp_path / "idx")) == index

    def missing(url: str, *args, **kw):
        raise FileNotFoundError(url)

    monkeypatch.setitem(gopen_schemes, "fake", missing)
    assert sample_count("fake://host/a.tar", index_dir=str(tmp_path / "idx")) == 5


def test_dataset_length_sums_the_counts(tmp_path):
    with fastwds.ShardWriter(str(tmp_path / "s-%02d.tar"), maxcount=7, verbose=0) as sink:
        for sample in simple_samples(30):
            sink.write(sample)
    urls = str(tmp_path / "s-{00..04}.tar")
    assert dataset_length(urls) == 30 == len(list(fastwds.WebDataset(urls, shardshuffle=False)))
    os.unlink(tmp_path / ("s-03.tar" + SUFFIX))
    assert dataset_length(urls) is None


def test_an_interrupted_build_stops(tmp_path):
    import threading

    path = tmp_path / "a.tar"
    write_samples(path, simple_samples(10))
    stop = threading.Event()
    stop.set()
    with pytest.raises(KeyboardInterrupt):
        shardindex._build(str(path), stop)


def test_the_format_document_matches_the_module():
    doc = Path(__file__).resolve().parent.parent / "docs" / "index-format.md"
    text = doc.read_text()
    assert "89 57 44 53 49 44 58 0a" in text.lower() and SUFFIX in text
    assert f"version {shardindex.VERSION}" in text.lower()
