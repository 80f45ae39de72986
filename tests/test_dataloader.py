"""WebDataset inside torch's DataLoader: workers, start methods, epochs, batching, rebatching."""

from __future__ import annotations

import warnings

import pytest
import webdataset
from torch.utils.data import DataLoader

import fastwds as wds
from conftest import reference
from fastwds.shardlists import NoShardsWarning

ALL_KEYS = [f"sample{i:06d}" for i in range(20)]


# Module-level functions: spawn workers unpickle them by name.
def key_of(sample):
    return sample["__key__"]


def key_tuple(sample):
    return (sample["__key__"],)


def interleave(*parts):
    result = []
    for i in range(max(len(p) for p in parts)):
        result.extend(p[i] for p in parts if i < len(p))
    return result


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "num_workers,context", [(0, None), (1, "fork"), (2, "fork"), (1, "spawn"), (2, "spawn")]
)
def test_every_sample_exactly_once(shards, num_workers, context):
    ds = wds.WebDataset(shards, shardshuffle=False).map(key_of)
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers, multiprocessing_context=context)
    got = list(loader)
    if num_workers == 2:
        # Worker 0 reads shards 0 and 2, worker 1 shards 1 and 3; the loader takes from them in turn.
        assert got == interleave(ALL_KEYS[0:5] + ALL_KEYS[10:15], ALL_KEYS[5:10] + ALL_KEYS[15:20])
    else:
        assert got == ALL_KEYS


@pytest.mark.timeout(120)
def test_persistent_workers_over_three_epochs(shard_factory):
    shards = shard_factory(nshards=8, per_shard=2)
    all_keys = [f"sample{i:06d}" for i in range(16)]
    ds = wds.WebDataset(shards, shardshuffle=8, seed=2).map(key_of)
    loader = DataLoader(
        ds, batch_size=None, num_workers=2, persistent_workers=True, multiprocessing_context="fork"
    )
    epochs = [list(loader) for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == all_keys
    # Each epoch reshuffles the shards inside the persistent workers.
    assert len({tuple(e) for e in epochs}) == 3


@pytest.mark.timeout(120)
def test_batched_inside_the_dataset(shards):
    ds = wds.WebDataset(shards, shardshuffle=False).to_tuple("__key__", "cls").map_tuple(str, int).batched(4)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [4, 4, 4, 4, 2, 2]
    assert sorted(k for b in batches for k in b[0]) == ALL_KEYS
    assert batches[0][1].tolist() == [0, 1, 2, 3]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_webloader_rebatches_across_workers(shards, context):
    ds = wds.WebDataset(shards, shardshuffle=False).map(key_tuple).batched(3)
    loader = wds.WebLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context)
    loader = loader.unbatched().shuffle(20).batched(5)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [5, 5, 5, 5]
    assert sorted(k for b in batches for k in b[0]) == ALL_KEYS


@pytest.mark.timeout(120)
def test_resampled_with_epoch_per_worker(shards):
    ds = wds.WebDataset(shards, resampled=True, shardshuffle=False).with_epoch(7).map(key_of)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    for _ in range(2):
        got = list(loader)
        assert len(got) == 14
        assert set(got) <= set(ALL_KEYS)


# torch warns when there are more workers than cores; that is not what these tests are about.
FEW_CORES = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


@pytest.mark.timeout(120)
@FEW_CORES
def test_more_workers_than_shards_warns(shard_factory):
    shards = shard_factory(nshards=2, per_shard=3)
    keys = [f"sample{i:06d}" for i in range(6)]
    ds = wds.WebDataset(shards, shardshuffle=False).map(key_of)
    # Under warnings-as-errors (inherited by forked workers) the warning is the error users see.
    with pytest.raises(NoShardsWarning, match="got no shards"):
        list(DataLoader(ds, batch_size=None, num_workers=4, multiprocessing_context="fork"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoShardsWarning)
        got = list(DataLoader(ds, batch_size=None, num_workers=4, multiprocessing_context="fork"))
    assert sorted(got) == keys


@pytest.mark.timeout(120)
@FEW_CORES
def test_more_workers_than_shards_spawn_idle_workers_yield_nothing(shard_factory):
    shards = shard_factory(nshards=2, per_shard=3)
    ds = wds.WebDataset(shards, shardshuffle=False).map(key_of)
    got = list(DataLoader(ds, batch_size=None, num_workers=3, multiprocessing_context="spawn"))
    assert sorted(got) == [f"sample{i:06d}" for i in range(6)]


@pytest.mark.timeout(120)
def test_reference_fails_with_more_workers_than_shards(shard_factory):
    # The difference documented in the README: webdataset's idle workers raise "No samples found".
    shards = shard_factory(nshards=1, per_shard=2)
    ds = webdataset.WebDataset(shards, shardshuffle=False)
    with pytest.raises(ValueError, match="No samples found"):
        reference(
            lambda: list(DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork"))
        )
