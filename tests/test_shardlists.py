"""Shard lists: URL expansion, shuffling, resampling, splitting by node and worker, multi-dataset specs."""

from __future__ import annotations

import os
import pickle
from itertools import islice

import pytest
import webdataset
import yaml

import fastwds as wds
from conftest import reference
from fastwds import shardlists


def urls_of(stream):
    return [item["url"] for item in stream]


def test_expand_urls_braces_and_double_colon():
    assert shardlists.expand_urls("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert shardlists.expand_urls("a-{0..1}.tar::b-{x,y}.tar") == ["a-0.tar", "a-1.tar", "b-x.tar", "b-y.tar"]
    assert shardlists.expand_urls("plain.tar") == ["plain.tar"]


def test_expand_urls_environment(monkeypatch):
    monkeypatch.setenv("WDS_BUCKET", "/data/${WDS_INNER}")
    monkeypatch.setenv("WDS_INNER", "x")
    monkeypatch.setenv("WDS_WDS_INNER", "inner")
    # ${name} reads WDS_name, repeatedly: ${BUCKET} -> /data/${WDS_INNER} -> /data/inner
    assert shardlists.expand_urls("${BUCKET}/s-{0..1}.tar") == ["/data/inner/s-0.tar", "/data/inner/s-1.tar"]
    with pytest.raises(KeyError, match="WDS_NOPE"):
        shardlists.expand_urls("${NOPE}/a.tar")


def test_expand_source():
    assert shardlists.expand_source("a{1,2}") == ["a1", "a2"]
    assert shardlists.expand_source(["x", "y"]) == ["x", "y"]
    assert shardlists.expand_source(iter(["x", "y", "z"]), max_urls=2) == ["x", "y"]
    with pytest.raises(ValueError):
        shardlists.expand_source(3)


def test_simple_shard_list_matches_reference():
    spec = "s-{00..19}.tar"
    assert urls_of(wds.SimpleShardList(spec)) == urls_of(webdataset.SimpleShardList(spec))
    assert len(wds.SimpleShardList(spec)) == 20
    shuffled = urls_of(wds.SimpleShardList(spec, seed=7))
    assert shuffled == urls_of(webdataset.SimpleShardList(spec, seed=7))
    assert shuffled != urls_of(wds.SimpleShardList(spec))
    assert urls_of(wds.SimpleShardList(spec, seed=7)) == shuffled  # the same order every epoch


def test_simple_shard_list_accepts_paths_and_rejects_empty(tmp_path):
    assert urls_of(wds.SimpleShardList([tmp_path / "a.tar"])) == [str(tmp_path / "a.tar")]
    with pytest.raises(ValueError, match="empty"):
        wds.SimpleShardList([])


def test_resampled_shards_deterministic_matches_reference():
    ours = wds.ResampledShards("s-{0..9}.tar", seed=3, deterministic=True)
    ref = webdataset.ResampledShards("s-{0..9}.tar", seed=3, deterministic=True)
    first = urls_of(islice(iter(ours), 30))
    assert first == urls_of(islice(iter(ref), 30))
    second = urls_of(islice(iter(ours), 30))
    assert second == urls_of(islice(iter(ref), 30))
    assert first != second  # a new epoch draws anew
    assert set(first) <= {f"s-{i}.tar" for i in range(10)}


def test_resampled_shards_nshards_and_randomness():
    assert len(list(wds.ResampledShards("s-{0..9}.tar", nshards=13))) == 13
    draws = {tuple(urls_of(islice(iter(wds.ResampledShards("s-{0..99}.tar")), 10))) for _ in range(3)}
    assert len(draws) == 3
    with pytest.raises(ValueError, match="no shards"):
        wds.ResampledShards([])


def test_split_by_worker_from_environment(monkeypatch):
    items = [{"url": f"u{i}"} for i in range(7)]
    monkeypatch.setenv("NUM_WORKERS", "3")
    parts = []
    for worker in range(3):
        monkeypatch.setenv("WORKER", str(worker))
        part = urls_of(wds.split_by_worker(iter(items)))
        assert part == urls_of(webdataset.split_by_worker(iter(items)))
        parts.append(part)
    assert parts == [["u0", "u3", "u6"], ["u1", "u4"], ["u2", "u5"]]


def test_split_by_worker_idle_worker_warns_and_yields_nothing(monkeypatch):
    monkeypatch.setenv("NUM_WORKERS", "4")
    monkeypatch.setenv("WORKER", "3")
    with pytest.warns(shardlists.NoShardsWarning, match="worker 3 of 4 got no shards: there are only 2"):
        assert list(wds.split_by_worker(iter([{"url": "a"}, {"url": "b"}]))) == []


def test_split_by_worker_outside_workers_passes_everything():
    items = [{"url": "a"}, {"url": "b"}]
    assert list(wds.split_by_worker(iter(items))) == items


def test_split_by_node_from_environment(monkeypatch):
    items = [{"url": f"u{i}"} for i in range(5)]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert urls_of(wds.split_by_node(iter(items))) == ["u1", "u3"]
    monkeypatch.setenv("RANK", "0")
    assert urls_of(wds.split_by_node(iter(items))) == ["u0", "u2", "u4"]
    with pytest.raises(ValueError, match="nodesplitter"):
        list(wds.single_node_only(iter(items)))
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "6")
    with pytest.warns(shardlists.NoShardsWarning, match="node 6 of 8"):
        assert list(wds.split_by_node(iter(items))) == []


def test_single_node_only_passes_on_one_node():
    items = [{"url": "a"}]
    assert list(wds.single_node_only(iter(items))) == items


def test_non_empty():
    assert list(wds.non_empty(iter([1, 2]))) == [1, 2]
    with pytest.raises(ValueError, match="no data"):
        list(wds.non_empty(iter([])))


def test_resampled_filter():
    got = list(wds.resampled(n=12)(iter([{"url": "a"}, {"url": "b"}])))
    assert len(got) == 12 and {d["url"] for d in got} <= {"a", "b"}


SPEC = {
    "prefix": "",
    "datasets": [
        {"name": "A", "shards": "a-{0..9}.tar", "choose": 3},
        {"name": "B", "shards": ["b-{0..1}.tar"], "resample": 5},
        {"name": "C", "shards": "c-{0..3}.tar"},
    ],
}


def test_multi_shard_sample_from_dict():
    ms = wds.MultiShardSample(SPEC, seed=5)
    epoch0 = urls_of(ms)
    assert len(epoch0) == 3 + 5 + 4
    assert sum(u.startswith("a-") for u in epoch0) == 3
    assert len({u for u in epoch0 if u.startswith("a-")}) == 3
    assert sum(u.startswith("b-") for u in epoch0) == 5
    assert sorted(u for u in epoch0 if u.startswith("c-")) == [f"c-{i}.tar" for i in range(4)]
    # Another process with the same seed (a DataLoader worker, another node) draws the same list.
    assert urls_of(pickle.loads(pickle.dumps(wds.MultiShardSample(SPEC, seed=5)))) == epoch0
    assert urls_of(ms) != epoch0  # the next epoch draws anew


def test_multi_shard_sample_from_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARD_ROOT", "/root/data")
    spec = {"prefix": "$SHARD_ROOT/", "datasets": [{"shards": "x-{0..2}.tar", "buckets": "sub"}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    got = sorted(urls_of(wds.MultiShardSample(str(path))))
    assert got == [f"/root/data/sub/x-{i}.tar" for i in range(3)]
    assert sorted(urls_of(wds.shardspec(str(path)))) == got
    assert urls_of(wds.shardspec("x-{0..1}.tar")) == ["x-0.tar", "x-1.tar"]


def test_multi_shard_sample_rejects_bad_specs():
    with pytest.raises(ValueError, match="unknown keys"):
        wds.MultiShardSample({"datasets": [], "extra": 1})
    with pytest.raises(ValueError, match="choose"):
        wds.MultiShardSample({"datasets": [{"shards": "a-{0..1}.tar", "choose": 5}]})


def test_shard_shuffle_epoch_zero_is_the_reference_order():
    items = [{"url": f"u{i:02d}"} for i in range(30)]
    stage = shardlists.ShardShuffle(10, seed=42)
    epoch0 = urls_of(stage.run(iter(items)))
    ref = reference(lambda: urls_of(webdataset.filters.shuffle(10, seed=42)(iter(items))))
    assert epoch0 == ref
    epoch1 = urls_of(stage.run(iter(items)))
    assert sorted(epoch1) == sorted(epoch0) and epoch1 != epoch0
    # The sequence of epochs is reproducible.
    again = shardlists.ShardShuffle(10, seed=42)
    assert [urls_of(again.run(iter(items))) for _ in range(2)] == [epoch0, epoch1]


def test_shard_shuffle_deterministic_matches_reference_detshuffle():
    items = [{"url": f"u{i:02d}"} for i in range(30)]
    ours = shardlists.ShardShuffle(10, seed=9, deterministic=True)
    ref = webdataset.filters.detshuffle(10, seed=9)
    for _ in range(3):
        assert urls_of(ours.run(iter(items))) == urls_of(ref.run(iter(items)))


def test_shard_shuffle_numeric_string_seed_works():
    # WDS_SEED arrives as a string; webdataset's detshuffle then fails with TypeError.
    items = [{"url": f"u{i:02d}"} for i in range(30)]
    ours = shardlists.ShardShuffle(10, seed="9", deterministic=True)
    ref = webdataset.filters.detshuffle(10, seed=9)
    assert urls_of(ours.run(iter(items))) == urls_of(ref.run(iter(items)))


def test_directory_shards(shards, tmp_path):
    directory = os.path.dirname(shards[0]) + "/"
    (tmp_path / "set1" / "notes.txt").write_text("not a shard")
    assert shardlists.directory_shards(directory) == shards
    assert shardlists.directory_shards("file:" + directory) == shards
    with pytest.raises(ValueError, match="not a directory"):
        shardlists.directory_shards(str(tmp_path / "nope") + "/")
    with pytest.raises(ValueError, match="local"):
        shardlists.directory_shards("http://host/dir/")


def test_directory_shard_list_claims_and_recycles(shards):
    directory = os.path.dirname(shards[0]) + "/"
    dsl = shardlists.DirectoryShardList(directory, pattern="*.{tar,tgz}", poll=None, timeout=5, mode="keep")
    claimed = []
    for item in dsl:
        assert item["url"].endswith(f"._{os.getpid()}_")
        assert not os.path.exists(item["url"][: -len(f"._{os.getpid()}_")])  # claimed while in use
        claimed.append(item["url"][: -len(f"._{os.getpid()}_")])
    assert sorted(claimed) == shards
    assert sorted(os.listdir(directory)) == sorted(os.path.basename(s) + "._done_" for s in shards)
