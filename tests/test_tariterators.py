"""The tar stage: `tarfile_to_samples` over the Rust core, and webdataset's member-level helpers."""

from __future__ import annotations

import itertools
import os
import tarfile

import pytest
import webdataset

import fastwds as wds
from conftest import make_samples, reference, write_tarfile
from fastwds import tariterators
from fastwds.gopen import gopen_schemes


def reference_samples(urls, **kw):
    return reference(
        lambda: list(
            webdataset.DataPipeline(webdataset.SimpleShardList(urls), webdataset.tarfile_to_samples(**kw))
        )
    )


def fastwds_samples(urls, **kw):
    return list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(**kw)))


@pytest.mark.parametrize("fmt", ["ustar", "gnu", "pax"])
@pytest.mark.parametrize("gz", [False, True])
def test_tarfile_formats_match_reference(shard_factory, fmt, gz):
    urls = shard_factory(nshards=3, per_shard=4, fmt=fmt, gz=gz)
    expected = reference_samples(urls)
    got = fastwds_samples(urls)
    assert len(got) == 12
    assert got == expected
    assert [s["__key__"] for s in got] == [f"sample{i:06d}" for i in range(12)]


@pytest.mark.parametrize("gz", [False, True])
def test_tarwriter_shards_match_reference(shard_factory, gz):
    urls = shard_factory(nshards=2, per_shard=5, writer="wds", gz=gz)
    got = fastwds_samples(urls)
    assert got == reference_samples(urls)
    assert len(got) == 10
    assert all(isinstance(s["txt"], bytes) and isinstance(s["__url__"], str) for s in got)


def test_long_names_and_directories_match_reference(tmp_path):
    long_dir = "d" * 120
    samples = [(f"{long_dir}/a{i}", {"input.PNG": b"p%d" % i, "cls": b"%d" % i}) for i in range(3)]
    urls = [write_tarfile(tmp_path / f"long-{fmt}.tar", samples, fmt=fmt) for fmt in ("gnu", "pax")]
    got = fastwds_samples(urls)
    assert got == reference_samples(urls)
    assert got[0]["__key__"] == f"{long_dir}/a0"
    assert got[0]["input.png"] == b"p0"


def test_select_and_rename_files_match_reference(shards):
    def select(name):
        return not name.endswith(".json")

    def rename(name):
        return name.replace(".txt", ".text")

    got = fastwds_samples(shards, select_files=select, rename_files=rename)
    assert got == reference_samples(shards, select_files=select, rename_files=rename)
    assert set(got[0]) == {"__key__", "__url__", "cls", "text"}


def test_tarfile_samples_is_lazy_over_an_endless_shard_stream(shards):
    pulled = []

    def endless():
        for url in itertools.cycle(shards):
            pulled.append(url)
            yield {"url": url}

    samples = tariterators.tarfile_samples(endless())
    first = list(itertools.islice(samples, 47))
    samples.close()
    assert [s["__key__"] for s in first] == [f"sample{i % 20:06d}" for i in range(47)]
    # The core reads ahead a few shards, not the whole (endless) stream.
    assert 10 <= len(pulled) < 100


def test_truncated_shard_raises_with_url(shard_factory, tmp_path):
    urls = shard_factory(nshards=2, per_shard=4)
    with tarfile.open(urls[0]) as tf:
        members = tf.getmembers()
    cut = members[5].offset_data + 3  # inside the data of the 2nd member of the 2nd sample
    with open(urls[0], "rb") as f:
        data = f.read()[:cut]
    bad = str(tmp_path / "cut.tar")
    with open(bad, "wb") as f:
        f.write(data)
    with pytest.raises(OSError, match="cut.tar"):
        fastwds_samples([bad, urls[1]])
    # ignore_and_continue: the complete samples before the cut, then the next shard.
    got = fastwds_samples([bad, urls[1]], handler=wds.ignore_and_continue)
    assert [s["__key__"] for s in got] == ["sample000000"] + [f"sample{i:06d}" for i in range(4, 8)]
    # ignore_and_stop: the stream ends at the error.
    got = fastwds_samples([bad, urls[1]], handler=wds.ignore_and_stop)
    assert [s["__key__"] for s in got] == ["sample000000"]


def test_missing_shard_goes_to_handler(shards, tmp_path):
    missing = str(tmp_path / "missing.tar")
    with pytest.raises(OSError, match="missing.tar"):
        fastwds_samples([missing] + shards[:1])
    got = fastwds_samples([missing] + shards[:1], handler=wds.ignore_and_continue)
    assert [s["__key__"] for s in got] == [f"sample{i:06d}" for i in range(5)]
    with pytest.warns(UserWarning, match="missing.tar"):
        got = fastwds_samples([missing] + shards[:1], handler=wds.warn_and_continue)
    assert len(got) == 5


@pytest.fixture
def custom_scheme(shards):
    """A `testscheme://N` URL scheme opened by Python (gopen_schemes), naming shard N."""
    opened = []

    def opener(url, mode="rb", bufsize=8192, **kw):
        stream = open(shards[int(url.rsplit("/", 1)[1])], "rb")
        opened.append(stream)
        return stream

    gopen_schemes["testscheme"] = opener
    try:
        yield opened
    finally:
        del gopen_schemes["testscheme"]


def test_non_native_scheme_is_opened_with_gopen(shards, custom_scheme):
    urls = [f"testscheme://host/{i}" for i in range(len(shards))]
    got = fastwds_samples(urls)
    assert [s["__key__"] for s in got] == [f"sample{i:06d}" for i in range(20)]
    assert got[0]["__url__"] == "testscheme://host/0"
    assert got[5]["__url__"] == "testscheme://host/1"
    assert got == [{**s, "__url__": urls[i // 5]} for i, s in enumerate(fastwds_samples(shards))]
    assert len(custom_scheme) == 4
    assert all(stream.closed for stream in custom_scheme)


def test_unknown_scheme_is_an_error(shards):
    with pytest.raises(ValueError, match="nosuchscheme://x"):
        fastwds_samples(["nosuchscheme://x"])


def test_gopen_rewrite_keeps_the_original_url(shards, monkeypatch):
    directory = os.path.dirname(shards[0])
    monkeypatch.setenv("GOPEN_REWRITE", f"remote://bucket/={directory}/")
    urls = [f"remote://bucket/{os.path.basename(u)}" for u in shards[:2]]
    got = fastwds_samples(urls)
    assert got == reference_samples(urls)
    assert [s["__url__"] for s in got] == [urls[0]] * 5 + [urls[1]] * 5


def test_base_plus_ext_matches_reference():
    names = ["a.jpg", "dir/base.input.png", "x/y.z/w.jpg", "dir/.gitignore", "a.b/c", "noext", "A.B.C", ".x"]
    for name in names:
        assert tariterators.base_plus_ext(name) == webdataset.tariterators.base_plus_ext(name), name


def test_valid_sample():
    assert tariterators.valid_sample({"__key__": "a"})
    assert not tariterators.valid_sample({})
    assert not tariterators.valid_sample(None)
    assert not tariterators.valid_sample({"__key__": "a", "__bad__": True})
    assert not tariterators.valid_sample(["a"])


def test_member_helpers_compose_like_the_reference(shards):
    src = [{"url": u} for u in shards[:2]]
    got = list(tariterators.group_by_keys(tariterators.tar_file_expander(tariterators.url_opener(src))))
    ref_src = [{"url": u} for u in shards[:2]]
    ref = webdataset.tariterators
    expected = reference(lambda: list(ref.group_by_keys(ref.tar_file_expander(ref.url_opener(ref_src)))))
    for item in ref_src:  # webdataset leaves its streams open
        item["stream"].close()
    assert all(item["stream"].closed for item in src)
    assert got == expected
    assert len(got) == 10


def test_tar_file_expander_marks_shard_ends_and_local_paths(shards):
    with open(shards[0], "rb") as s0, open(shards[1], "rb") as s1:
        src = [{"url": "u0", "stream": s0, "local_path": "/p0"}, {"url": "u1", "stream": s1}]
        members = list(tariterators.tar_file_expander(src))
    assert members.count({}) == 2
    assert members[15] == {} and members[-1] == {}
    assert members[0]["fname"] == "sample000000.cls"
    assert members[0]["__url__"] == "u0" and members[0]["__local_path__"] == "/p0"
    assert "__local_path__" not in members[16]
    samples = list(tariterators.group_by_keys(iter(members)))
    assert [s["__key__"] for s in samples] == [f"sample{i:06d}" for i in range(10)]
    assert samples[0]["__local_path__"] == "/p0"


def test_tar_file_iterator_matches_reference(tmp_path):
    import io

    samples = [("__meta__", {"x": b"m"}), ("a", {"jpg": b"1", "cls": b"2"}), ("d/__x__/b", {"txt": b"3"})]
    path = write_tarfile(tmp_path / "m.tar", samples)
    with tarfile.open(path, "a") as tf:
        info = tarfile.TarInfo("__meta__")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"m"))

    def members(module, **kw):
        with open(path, "rb") as stream:
            return list(module.tar_file_iterator(stream, **kw))

    got = members(tariterators)
    assert got == members(webdataset.tariterators)
    assert [m["fname"] for m in got] == ["__meta__.x", "a.jpg", "a.cls", "d/__x__/b.txt"]
    kw = dict(rename_files=lambda n: n.upper(), select_files=lambda n: n.endswith(".JPG"))
    assert (
        members(tariterators, **kw)
        == members(webdataset.tariterators, **kw)
        == [{"fname": "A.JPG", "data": b"1"}]
    )


def test_group_by_keys_duplicate_field_goes_to_handler():
    members = [
        {"fname": "a.jpg", "data": b"1", "__url__": "u"},
        {"fname": "a.jpg", "data": b"2", "__url__": "u"},
        {"fname": "b.jpg", "data": b"3", "__url__": "u"},
    ]
    with pytest.raises(ValueError, match="duplicate"):
        list(tariterators.group_by_keys(iter(members)))
    got = list(tariterators.group_by_keys(iter(members), handler=wds.ignore_and_continue))
    assert [s["__key__"] for s in got] == ["a", "b"]
    got = list(tariterators.group_by_keys(iter(members), suffixes={"cls"}, handler=wds.ignore_and_continue))
    assert got == [{"__key__": "a", "__url__": "u"}, {"__key__": "b", "__url__": "u"}]


def test_core_handler_maps_reraise_to_none():
    assert tariterators.core_handler(wds.reraise_exception) is None
    assert tariterators.core_handler(webdataset.reraise_exception) is None
    assert tariterators.core_handler(wds.warn_and_continue) is wds.warn_and_continue


def test_the_core_opens_other_schemes_through_the_gopen_table(shards, monkeypatch):
    opened = []

    def gopen_mine(url, mode="rb", bufsize=8192):
        opened.append(url)
        return open(url.removeprefix("mine://"), "rb")

    monkeypatch.setitem(gopen_schemes, "mine", gopen_mine)
    urls = [f"mine://{u}" for u in shards[:2]]
    got = list(wds.WebDataset(urls, shardshuffle=False))
    assert sorted(opened) == sorted(urls), "each opened once (the reader opens shards in flight concurrently)"
    local = list(wds.WebDataset(shards[:2], shardshuffle=False))
    assert [s["__key__"] for s in got] == [s["__key__"] for s in local] and len(got) == 10
    assert [s["__url__"] for s in got] == [urls[0]] * 5 + [urls[1]] * 5


class OpenerFailed(Exception):
    pass


def test_a_reader_opener_is_called_for_other_schemes_and_its_errors_arrive_as_themselves(shards):
    def opener(url):
        if "bad" in url:
            raise OpenerFailed(url)
        return open(url.removeprefix("mine://"), "rb")

    got = list(wds.ShardReader([f"mine://{shards[0]}", shards[1]], opener=opener))
    assert len(got) == 10
    with pytest.raises(OpenerFailed):
        list(wds.ShardReader(["mine://bad"], opener=opener))
    seen = []
    got = list(
        wds.ShardReader(["mine://bad", shards[0]], opener=opener, handler=lambda e: seen.append(e) or True)
    )
    assert len(got) == 5 and isinstance(seen[0], OpenerFailed)
    # Without an opener, an unknown scheme is an error naming it.
    with pytest.raises(ValueError, match="no gopen handler"):
        list(wds.ShardReader(["nosuchscheme://x/y.tar"]))


def test_pipe_urls_match_reference(shards):
    urls = [f"pipe:cat {u}" for u in shards[:2]]
    got = fastwds_samples(urls)
    assert got == reference_samples(urls)
    assert got[0]["__url__"] == urls[0]


def test_more_samples_than_one_read(tmp_path):
    # Shards large enough that the core's buffering and read-ahead matter, still fast.
    urls = [write_tarfile(tmp_path / f"big{i}.tar", s) for i, s in enumerate(make_samples(3, 400))]
    got = fastwds_samples(urls)
    assert [s["__key__"] for s in got] == [f"sample{i:06d}" for i in range(1200)]


def test_reader_threads_share_the_cores_among_dataloader_workers() -> None:
    import torch

    from fastwds.tariterators import reader_threads

    class Probe(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield reader_threads()

    assert reader_threads() == 0  # outside a DataLoader: the core's own default
    cores = len(os.sched_getaffinity(0))
    got = list(
        torch.utils.data.DataLoader(Probe(), num_workers=2, batch_size=None, multiprocessing_context="fork")
    )
    assert got == [max(1, cores // 2)] * 2
