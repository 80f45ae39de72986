"""WebDataset's constructor: URL forms, warnings, shard shuffling, resampling, caching, errors, torch."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import webdataset
import yaml

import fastwds as wds
from conftest import assert_same_list, reference, write_shards
from fastwds.gopen import gopen_schemes

ALL_KEYS = [f"sample{i:06d}" for i in range(20)]
PYTHON_DIR = str(Path(wds.__file__).parent.parent)


def keys(ds):
    return [s["__key__"] for s in ds]


def test_shardshuffle_none_warns_like_reference(shards):
    with pytest.warns(UserWarning, match=r"shardshuffle=\.\.\.\) is None"):
        ds = wds.WebDataset(shards)
    with pytest.warns(UserWarning, match=r"shardshuffle=\.\.\.\) is None"):
        webdataset.WebDataset(shards)
    assert sorted(keys(ds)) == ALL_KEYS


def test_shardshuffle_true_warns_and_means_100(shards):
    with pytest.warns(UserWarning, match="positive integer"):
        ds = wds.WebDataset(shards, shardshuffle=True, seed=1)
    stage = [s for s in ds.pipeline if isinstance(s, wds.shardlists.ShardShuffle)][0]
    assert stage.bufsize == 100


def test_resampled_with_shardshuffle_warns(shards):
    with pytest.warns(UserWarning, match="ignored for resampled"):
        wds.WebDataset(shards, resampled=True, shardshuffle=10)


def test_no_warning_when_shardshuffle_is_given(shards):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wds.WebDataset(shards, shardshuffle=False)
        wds.WebDataset(shards, shardshuffle=5)


@pytest.mark.parametrize("form", ["brace", "double-colon", "list", "path-list", "directory", "yaml", "dict"])
def test_url_forms(shard_factory, tmp_path, form):
    shards = shard_factory(nshards=4, per_shard=5)
    directory = os.path.dirname(shards[0])
    if form == "brace":
        urls = f"{directory}/shard-{{000000..000003}}.tar"
    elif form == "double-colon":
        urls = f"{directory}/shard-{{000000..000001}}.tar::{directory}/shard-{{000002..000003}}.tar"
    elif form == "list":
        urls = shards
    elif form == "path-list":
        urls = [Path(u) for u in shards]
    elif form == "directory":
        urls = directory + "/"
    else:
        spec = {"datasets": [{"name": "a", "shards": f"{directory}/shard-{{000000..000003}}.tar"}]}
        if form == "yaml":
            path = tmp_path / "spec.yaml"
            path.write_text(yaml.safe_dump(spec))
            urls = str(path)
        else:
            urls = spec
    ds = wds.WebDataset(urls, shardshuffle=False)
    got = keys(ds)
    if form in ("yaml", "dict"):
        assert sorted(got) == ALL_KEYS  # the spec shuffles its shard list
    else:
        assert got == ALL_KEYS


def test_same_samples_as_reference_on_every_writer(shard_factory):
    for kw in [dict(fmt="ustar"), dict(fmt="gnu", gz=True), dict(writer="wds"), dict(writer="wds", gz=True)]:
        urls = shard_factory(nshards=2, per_shard=3, **kw)
        ours = list(wds.WebDataset(urls, shardshuffle=False))
        ref = reference(lambda u=urls: list(webdataset.WebDataset(u, shardshuffle=False)))
        assert_same_list(ours, ref)
        assert len(ours) == 6


def test_reader_options_keep_the_samples_and_their_order(shard_factory):
    urls = shard_factory(nshards=3, per_shard=4)
    expected = list(wds.WebDataset(urls, shardshuffle=False))
    # A buffer smaller than one sample and one thread: the reader waits on the consumer at every sample.
    options = dict(threads=1, prefetch=1, buffer_bytes=1, buffer_samples=1)
    tuned = list(wds.WebDataset(urls, shardshuffle=False, reader_options=options))
    assert_same_list(tuned, expected)
    decoded = (
        wds.WebDataset(urls, shardshuffle=False, reader_options=options).decode().to_tuple("__key__", "cls")
    )
    assert list(decoded) == [(s["__key__"], int(s["cls"])) for s in expected]


def test_reader_options_unordered_yields_the_shard_ready_first(shard_factory):
    slow, fast = shard_factory(nshards=2, per_shard=3)
    urls = [f"pipe:sleep 1; cat {slow}", fast]
    fast_keys = keys(wds.WebDataset([fast], shardshuffle=False))
    slow_keys = keys(wds.WebDataset([slow], shardshuffle=False))
    assert keys(wds.WebDataset(urls, shardshuffle=False)) == slow_keys + fast_keys
    unordered = keys(wds.WebDataset(urls, shardshuffle=False, reader_options={"ordered": False}))
    assert unordered == fast_keys + slow_keys


def test_unknown_reader_options_are_refused_at_construction(shards):
    with pytest.raises(TypeError, match=r"reader_options: unknown 'handler', 'threadz' \(known: threads,"):
        wds.WebDataset(shards, shardshuffle=False, reader_options={"threadz": 2, "handler": None})


def test_shard_shuffle_first_epoch_is_the_reference_order(shard_factory):
    urls = shard_factory(nshards=8, per_shard=2)
    ours = wds.WebDataset(urls, shardshuffle=8, seed=17)
    ref = webdataset.WebDataset(urls, shardshuffle=8, seed=17)
    epoch0 = keys(ours)
    assert epoch0 == reference(lambda: keys(ref))
    assert epoch0 != sorted(epoch0)
    # webdataset repeats that order forever; fastwds reshuffles each epoch, reproducibly for the seed.
    assert reference(lambda: keys(ref)) == epoch0
    epoch1 = keys(ours)
    assert sorted(epoch1) == sorted(epoch0) and epoch1 != epoch0
    again = wds.WebDataset(urls, shardshuffle=8, seed=17)
    assert [keys(again), keys(again)] == [epoch0, epoch1]


def test_shard_shuffle_without_seed_differs_between_epochs(shard_factory):
    urls = shard_factory(nshards=8, per_shard=1)
    ds = wds.WebDataset(urls, shardshuffle=8)
    orders = {tuple(keys(ds)) for _ in range(3)}
    assert len(orders) == 3


def test_detshuffle_matches_reference_per_epoch(shard_factory):
    urls = shard_factory(nshards=8, per_shard=2)
    ours = wds.WebDataset(urls, shardshuffle=8, detshuffle=True, seed=5)
    ref = webdataset.WebDataset(urls, shardshuffle=8, detshuffle=True, seed=5)
    for _ in range(3):
        assert keys(ours) == reference(lambda: keys(ref))


def test_wds_seed_with_detshuffle_works(shard_factory, monkeypatch):
    urls = shard_factory(nshards=8, per_shard=1)
    monkeypatch.setenv("WDS_SEED", "5")
    ds = wds.WebDataset(urls, shardshuffle=8, detshuffle=True)
    epoch0 = keys(ds)
    ref = webdataset.WebDataset(urls, shardshuffle=8, detshuffle=True, seed=5)
    assert epoch0 == reference(lambda: keys(ref))
    with pytest.raises(TypeError):  # the reference's crash this fixes
        keys(webdataset.WebDataset(urls, shardshuffle=8, detshuffle=True))


def test_set_epoch_selects_the_epoch_order(shard_factory):
    urls = shard_factory(nshards=8, per_shard=1)
    ds = wds.WebDataset(urls, shardshuffle=8, seed=3)
    orders = [keys(ds) for _ in range(3)]
    fresh = wds.WebDataset(urls, shardshuffle=8, seed=3)
    assert keys(fresh.set_epoch(2)) == orders[2]
    assert keys(pickle.loads(pickle.dumps(fresh.set_epoch(1)))) == orders[1]


def test_resampled_with_epoch(shards):
    ds = wds.WebDataset(shards, resampled=True, shardshuffle=False).with_epoch(13)
    first = keys(ds)
    assert len(first) == 13 and set(first) <= set(ALL_KEYS)
    assert len(keys(ds)) == 13
    seeded = [
        keys(wds.WebDataset(shards, resampled=True, shardshuffle=False, seed=4).with_epoch(30)) for _ in "ab"
    ]
    assert seeded[0] == seeded[1]
    assert len(set(seeded[0])) > 5


def test_empty_check(tmp_path, shards):
    empty = write_shards(tmp_path / "empty", nshards=1, per_shard=0)
    with pytest.raises(ValueError, match="No samples found"):
        list(wds.WebDataset(empty, shardshuffle=False))
    assert list(wds.WebDataset(empty, shardshuffle=False, empty_check=False)) == []
    ds = wds.WebDataset(shards, shardshuffle=False, select_files=lambda name: False)
    with pytest.raises(ValueError, match="No samples found"):
        list(ds)


def test_select_and_rename_files_match_reference(shards):
    def select(name):
        return name.endswith((".cls", ".text"))

    def rename(name):
        return name.replace(".txt", ".text")

    ours = list(wds.WebDataset(shards, shardshuffle=False, select_files=select, rename_files=rename))
    ref = reference(
        lambda: list(
            webdataset.WebDataset(shards, shardshuffle=False, select_files=select, rename_files=rename)
        )
    )
    assert_same_list(ours, ref)
    assert set(ours[0]) == {"__key__", "__url__", "__local_path__", "cls", "text"}


def test_handler_skips_a_missing_shard(shards, tmp_path):
    urls = [shards[0], str(tmp_path / "missing.tar"), shards[1]]
    with pytest.raises(OSError, match="missing.tar"):
        list(wds.WebDataset(urls, shardshuffle=False))
    got = keys(wds.WebDataset(urls, shardshuffle=False, handler=wds.ignore_and_continue))
    assert got == ALL_KEYS[:10]
    got = keys(wds.WebDataset(urls, shardshuffle=False, handler=wds.ignore_and_stop))
    assert got == ALL_KEYS[:5]


def test_local_path_and_url(shards):
    got = list(wds.WebDataset([shards[0], "file:" + shards[1], f"pipe:cat {shards[2]}"], shardshuffle=False))
    assert got[0]["__url__"] == shards[0] and got[0]["__local_path__"] == shards[0]
    assert got[5]["__url__"] == "file:" + shards[1] and got[5]["__local_path__"] == shards[1]
    assert got[10]["__url__"] == f"pipe:cat {shards[2]}" and "__local_path__" not in got[10]


def test_cache_dir_downloads_remote_shards_once(shards, tmp_path):
    """A user scheme's shards are opened once: the second epoch reads the cache."""
    opened = []

    def opener(url, mode="rb", bufsize=8192, **kw):
        opened.append(url)
        return open(shards[int(url.rsplit("/", 1)[1].split(".")[0])], "rb")

    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    urls = [f"cachetest://host/{i}.tar" for i in range(2)]
    gopen_schemes["cachetest"] = opener
    try:
        ds = wds.WebDataset(urls, shardshuffle=False, cache_dir=str(cache_dir))
        first = list(ds)
        second = list(ds)
    finally:
        del gopen_schemes["cachetest"]
    assert keys(first) == keys(second) == ALL_KEYS[:10]
    assert sorted(opened) == urls  # each once (read ahead in parallel); the second epoch reads the cache
    # Entries are named SCHEME/HOST/PATH; no download or lock file is left beside them.
    entries = sorted(str(p.relative_to(cache_dir)) for p in cache_dir.rglob("*") if p.is_file())
    assert entries == ["cachetest/host/0.tar", "cachetest/host/1.tar"]
    assert first[0]["__url__"] == urls[0]


def test_streams_of_finished_shards_are_closed_while_reading(shards):
    opened = []

    def opener(url, mode="rb", bufsize=8192, **kw):
        stream = open(shards[int(url.rsplit("/", 1)[1])], "rb")
        opened.append(stream)
        return stream

    gopen_schemes["endless"] = opener
    try:
        ds = wds.WebDataset([f"endless://h/{i}" for i in range(4)], resampled=True, shardshuffle=False)
        samples = iter(ds)
        got = [next(samples) for _ in range(200)]
        still_open = sum(not s.closed for s in opened)
        samples.close()
    finally:
        del gopen_schemes["endless"]
    assert len(got) == 200 and len(opened) >= 40
    assert still_open <= 8  # the shards being read ahead, not all 40+
    assert all(s.closed for s in opened)


def test_missing_cache_dir_is_an_error(shards, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        wds.WebDataset(shards, shardshuffle=False, cache_dir=str(tmp_path / "nope"))


def test_is_an_iterable_dataset_and_context_manager(shards):
    with wds.WebDataset(shards, shardshuffle=False) as ds:
        assert isinstance(ds, torch.utils.data.IterableDataset)
        assert isinstance(ds, wds.DataPipeline) and type(ds).__name__ == "WebDataset"
        assert len(keys(ds)) == 20
    assert not hasattr(ds, "pipeline")


def test_json_specs_are_unimplemented():
    with pytest.raises(ValueError, match="unimplemented"):
        wds.WebDataset("spec.json", shardshuffle=False)
    with pytest.raises(ValueError, match="cannot handle"):
        wds.WebDataset(12, shardshuffle=False)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_import_does_not_import_torch():
    result = run_python("import sys, fastwds; print('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_works_without_torch(shards):
    code = """
import sys
sys.modules["torch"] = None  # torch is not installed, as far as this process can tell
import fastwds as wds
ds = wds.WebDataset(sys.argv[1:], shardshuffle=False).to_tuple("cls", "txt").batched(8)
batches = list(ds)
print(len(batches), sum(len(b[0]) for b in batches), type(ds).__mro__[-2].__name__)
"""
    result = run_python(code, *shards)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "20", "FluidInterface"]


def test_signatures_match_reference():
    import inspect

    ours = inspect.signature(wds.WebDataset.__init__).parameters
    ref = inspect.signature(webdataset.WebDataset.__init__).parameters
    # The reference's parameters in its order, then fastwds's own, keyword-only so no call can shift.
    assert list(ours) == [*ref, "reader_options", "balanced"]
    assert ours["reader_options"].kind is inspect.Parameter.KEYWORD_ONLY
    assert ours["balanced"].kind is inspect.Parameter.KEYWORD_ONLY
    for name, param in ref.items():
        if not callable(param.default):
            assert ours[name].default == param.default, name
        else:
            assert ours[name].default.__name__ == param.default.__name__, name
    public = {n for n in dir(webdataset.FluidInterface) if not n.startswith("_")}
    assert public <= {n for n in dir(wds.FluidInterface) if not n.startswith("_")}
    for name in public:
        ours_m = inspect.signature(getattr(wds.FluidInterface, name)).parameters
        ref_m = inspect.signature(getattr(webdataset.FluidInterface, name)).parameters
        assert list(ours_m) == list(ref_m), name
    for cls in (wds.DataPipeline, wds.WebLoader, wds.FluidWrapper):
        ref_cls = getattr(webdataset, cls.__name__)
        assert {n for n in dir(ref_cls) if not n.startswith("_")} <= set(dir(cls)), cls.__name__
