"""Resumable iteration: `WebDataset.state_dict()` / `load_state_dict()`, alone and through torchdata's
`StatefulDataLoader`. After a restore, the items are exactly those the uninterrupted run yields next."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

import fastwds as wds
from fastwds import shardindex

# Shards of 17 samples but the last (12), so shard ends and batch ends rarely agree.
COUNTS = [17, 17, 17, 17, 12]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("resume")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with wds.ShardWriter(str(root / "s-%06d.tar"), maxcount=17, verbose=0) as sink:
            for i in range(sum(COUNTS)):
                sink.write({"__key__": f"k{i:04d}", "txt": f"t{i}", "cls": i})
    return str(root / "s-{000000..000004}.tar")


@pytest.fixture(scope="module")
def plain_shards(shards: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The same shards without indexes."""
    root = tmp_path_factory.mktemp("plain")
    for url in wds.shardlists.expand_urls(shards):
        shutil.copy(url, root / os.path.basename(url))
    return str(root / "s-{000000..000004}.tar")


def _keys(batch: tuple) -> list[str]:
    return list(batch[0])


def _pipeline(urls: str, seed: int = 3, **kw: object) -> wds.WebDataset:
    return (
        wds.WebDataset(urls, shardshuffle=10, seed=seed, **kw)  # type: ignore[arg-type]
        .shuffle(20, seed=5)
        .decode()
        .to_tuple("__key__", "cls")
        .batched(4)
    )


def _resumed(make, cut: int, epochs_before: int = 0) -> tuple[list, list, dict]:  # type: ignore[no-untyped-def]
    """(items before the cut, items after the restore, state) for a cut after `cut` items of the epoch
    following `epochs_before` complete ones."""
    ds = make()
    for _ in range(epochs_before):
        for _ in ds:
            pass
    it = iter(ds)
    before = [_keys(next(it)) for _ in range(cut)]
    state = json.loads(json.dumps(ds.state_dict()))
    restored = make()
    restored.load_state_dict(state)
    return before, [_keys(b) for b in restored], state


@pytest.mark.parametrize("indexed", [True, False])
def test_resume_is_exact_mid_shard_and_at_boundaries(shards: str, plain_shards: str, indexed: bool) -> None:
    urls = shards if indexed else plain_shards

    def make() -> wds.WebDataset:
        return _pipeline(urls)

    full = [_keys(b) for b in make()]
    assert sorted(k for b in full for k in b) == [f"k{i:04d}" for i in range(sum(COUNTS))]
    positions = []
    for cut in range(len(full) + 1):
        before, after, state = _resumed(make, cut)
        assert before + after == full, cut
        positions.append(state["shards"])
        assert len(json.dumps(state)) < 20000
    # Cuts fell mid-shard and with the shuffle buffer spanning shards.
    assert any(p and p["open"] and 0 < p["open"][0][1] < 12 for p in positions)


def test_resume_second_epoch(shards: str) -> None:
    def make() -> wds.WebDataset:
        return _pipeline(shards)

    ds = make()
    first = [_keys(b) for b in ds]
    second = [_keys(b) for b in ds]
    assert first != second
    for cut in (0, 5, 11):
        before, after, state = _resumed(make, cut, epochs_before=1)
        assert state["epoch"] == 1
        assert before + after == second


def _resumed_without_read_shards(
    shards: str, directory: Path, batch: int, cut: int, position: dict[str, Any]
) -> None:
    """Copies of the shards (with their indexes) read in batches of `batch` until `cut` batches are out; the
    state holds `position`, and once the first two shards are deleted a restore still yields the rest of the
    uninterrupted run: it opens none of them."""
    for url in wds.shardlists.expand_urls(shards):
        for name in (url, shardindex.index_url(url)):
            shutil.copy2(name, directory / os.path.basename(name))
    urls = str(directory / "s-{000000..000004}.tar")

    def make() -> wds.WebDataset:
        return wds.WebDataset(urls, shardshuffle=False).to_tuple("__key__", "cls").batched(batch)

    full = [_keys(b) for b in make()]
    ds = make()
    it = iter(ds)
    before = [_keys(next(it)) for _ in range(cut)]
    state = ds.state_dict()
    assert state["shards"] == position
    for url in wds.shardlists.expand_urls(urls)[:2]:
        os.unlink(url)
    restored = make()
    restored.load_state_dict(state)
    assert before + [_keys(b) for b in restored] == full


def test_resume_at_shard_boundary_opens_nothing_before(shards: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Without a sample shuffle, batches of 17 end with the shards (in list order).
    _resumed_without_read_shards(shards, tmp_path, 17, 2, {"next": 2, "open": []})


def test_resume_mid_shard_opens_nothing_before(shards: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # 8 batches of 5: 40 samples, 6 into the third shard.
    _resumed_without_read_shards(shards, tmp_path, 5, 8, {"next": 3, "open": [[2, 6]]})


def test_unseeded_shuffles_resume(shards: str) -> None:
    # No seed anywhere: the epoch's shard order and the shuffle's generator travel in the state.
    def make() -> wds.WebDataset:
        return wds.WebDataset(shards, shardshuffle=10).shuffle(20).to_tuple("__key__").batched(4)

    ds = make()
    it = iter(ds)
    before = [_keys(next(it)) for _ in range(6)]
    state = json.loads(json.dumps(ds.state_dict()))
    uninterrupted = before + [_keys(b) for b in it]
    restored = make()
    restored.load_state_dict(state)
    assert before + [_keys(b) for b in restored] == uninterrupted


def test_random_crops_identical_after_restore(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with wds.ShardWriter(str(tmp_path / "i-%06d.tar"), maxcount=7, verbose=0) as sink:
            for i in range(20):
                sink.write({"__key__": f"i{i:03d}", "png": rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)})
    urls = str(tmp_path / "i-{000000..000002}.tar")

    def make() -> wds.WebDataset:
        return (
            wds.WebDataset(urls, shardshuffle=3, seed=1)
            .decode_images("rgb8", size=(8, 8), crop="random_resized")  # a random image seed
            .shuffle(5, seed=2)
            .to_tuple("__key__", "png")
        )

    ds = make()
    for _ in ds:  # the second epoch: other crops
        pass
    it = iter(ds)
    before = [next(it) for _ in range(9)]
    state = json.loads(json.dumps(ds.state_dict()))
    uninterrupted = before + list(it)
    restored = make()
    restored.load_state_dict(state)
    after = before + list(restored)
    assert [k for k, _ in after] == [k for k, _ in uninterrupted]
    for (_, a), (_, b) in zip(after, uninterrupted):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("indexed", [True, False])
def test_unordered_reading_resumes_each_sample_once(shards: str, plain_shards: str, indexed: bool) -> None:
    urls = shards if indexed else plain_shards

    def make() -> wds.WebDataset:
        return _pipeline(urls, reader_options={"ordered": False, "prefetch": 3})

    everything = sorted(f"k{i:04d}" for i in range(sum(COUNTS)))
    for cut in (0, 3, 9, 15):
        before, after, _ = _resumed(make, cut)
        assert sorted(k for b in before + after for k in b) == everything


def test_other_configuration_is_refused(shards: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _pipeline(shards)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    with pytest.raises(ValueError, match="seed"):
        _pipeline(shards, seed=4).load_state_dict(state)
    monkeypatch.setenv("WORKER", "0")
    monkeypatch.setenv("NUM_WORKERS", "2")
    with pytest.raises(ValueError, match="num_workers"):
        _pipeline(shards).load_state_dict(state)
    monkeypatch.delenv("WORKER")
    monkeypatch.delenv("NUM_WORKERS")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="world_size"):
        _pipeline(shards, nodesplitter=wds.split_by_node).load_state_dict(state)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match="stages"):
        _pipeline(shards).map(lambda x: x).load_state_dict(state)
    _pipeline(shards).load_state_dict(state)


def test_unresumable_stages_are_named(shards: str) -> None:
    ds = wds.WebDataset(shards, shardshuffle=False).batched(4).shuffle(3)
    iter(ds)
    with pytest.raises(ValueError, match="batched"):
        ds.state_dict()
    ds = wds.WebDataset(shards, shardshuffle=False).slice(5)
    with pytest.raises(ValueError, match="islice"):
        ds.state_dict()


def test_with_epoch_counter_resumes(shards: str) -> None:
    def make() -> wds.WebDataset:
        return (
            wds.WebDataset(shards, shardshuffle=10, seed=1)
            .shuffle(8, seed=2)
            .to_tuple("__key__")
            .with_epoch(130)
        )

    full = [k for (k,) in make()]
    assert len(full) == 130
    ds = make()
    it = iter(ds)
    before = [next(it)[0] for _ in range(95)]  # in the second pass over the shards
    state = json.loads(json.dumps(ds.state_dict()))
    assert state["yielded"] == 95
    restored = make()
    restored.load_state_dict(state)
    assert before + [k for (k,) in restored] == full


@pytest.mark.parametrize("seed", [None, 4])
def test_resampled_shards_resume(shards: str, seed: int | None) -> None:
    """Shards drawn with replacement (`resampled=True`): the resampler's generator travels in the state when
    it is unseeded, so the restored run draws the same shards next, as a seeded one does."""

    def make() -> wds.WebDataset:
        kw = {} if seed is None else {"seed": seed}
        dataset = wds.WebDataset(shards, resampled=True, shardshuffle=False, **kw)  # type: ignore[arg-type]
        return dataset.shuffle(8, seed=2).to_tuple("__key__").with_epoch(60)

    ds = make()
    it = iter(ds)
    before = [next(it)[0] for _ in range(23)]
    state = json.loads(json.dumps(ds.state_dict()))
    uninterrupted = before + [k for (k,) in it]
    assert len(uninterrupted) == 60
    restored = make()
    restored.load_state_dict(state)
    assert before + [k for (k,) in restored] == uninterrupted
    if seed is None:
        other = make()
        assert [k for (k,) in other] != uninterrupted  # unseeded: another run draws other shards


def test_balanced_epochs_resume(shards: str) -> None:
    def make() -> wds.WebDataset:
        return (
            wds.WebDataset(shards, shardshuffle=True, balanced="drop", seed=2)
            .shuffle(10, seed=1)
            .to_tuple("__key__", "__pad__")
            .batched(3)
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = [_keys(b) for b in make()]
        for cut in (2, 7):
            before, after, _ = _resumed(make, cut)
            assert before + after == full


# torchdata 0.11 calls torch.set_vital, which newer torch deprecates.
@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_stateful_dataloader(shards: str, num_workers: int) -> None:
    def loader() -> StatefulDataLoader:
        return StatefulDataLoader(_pipeline(shards), batch_size=None, num_workers=num_workers)

    full = [_keys(b) for b in loader()]
    assert len(full) >= 20
    first = loader()
    it = iter(first)
    before = [_keys(next(it)) for _ in range(7)]
    state = first.state_dict()
    del it
    second = loader()
    second.load_state_dict(state)
    assert before + [_keys(b) for b in second] == full


def test_webloader_without_workers_resumes(shards: str) -> None:
    """WebLoader(num_workers=0) checkpoints its dataset between batches; with workers or stages after the
    loader it refuses, saying what to use instead."""

    def loader() -> wds.WebLoader:
        dataset = wds.WebDataset(shards, shardshuffle=10, seed=3).shuffle(20, seed=5).to_tuple("__key__")
        return wds.WebLoader(dataset, batch_size=4, num_workers=0)

    full = [list(keys) for (keys,) in loader()]
    first = loader()
    it = iter(first)
    before = [list(next(it)[0]) for _ in range(5)]
    state = json.loads(json.dumps(first.state_dict()))
    second = loader()
    second.load_state_dict(state)
    assert before + [list(keys) for (keys,) in second] == full
    dataset = wds.WebDataset(shards, shardshuffle=False)
    with pytest.raises(ValueError, match="num_workers=0.*StatefulDataLoader"):
        wds.WebLoader(dataset, batch_size=4, num_workers=2).state_dict()
    with pytest.raises(ValueError, match="stages after its DataLoader"):
        wds.WebLoader(dataset, batch_size=4).unbatched().state_dict()


def test_resume_with_select_files(shards: str) -> None:
    # select_files may change which samples a shard has, so positions are counted, not taken from the index.
    def make() -> wds.WebDataset:
        return (
            wds.WebDataset(
                shards, shardshuffle=10, seed=3, select_files=lambda name: not name.endswith(".cls")
            )
            .shuffle(20, seed=5)
            .to_tuple("__key__", "txt")
            .batched(4)
        )

    full = [_keys(b) for b in make()]
    for cut in (3, 9):
        before, after, _ = _resumed(make, cut)
        assert before + after == full


def test_remote_shard_resumes_by_ranged_read(shards: str, http_server) -> None:  # type: ignore[no-untyped-def]
    """Shards (and their indexes) served over HTTP: a restore mid-shard fetches that shard from the saved
    sample's byte offset with a ranged GET, re-reads the shuffle buffer's samples as spans, opens no shard
    before the position whole, and yields exactly the rest of the uninterrupted run."""
    root = http_server.root
    for url in wds.shardlists.expand_urls(shards):
        for name in (url, shardindex.index_url(url)):
            shutil.copy2(name, os.path.join(root, os.path.basename(name)))
    urls = http_server.url + "/s-{000000..000004}.tar"

    def make() -> wds.WebDataset:
        return wds.WebDataset(urls, shardshuffle=False).shuffle(8, seed=1).to_tuple("__key__").batched(5)

    full = [_keys(b) for b in make()]
    ds = make()
    it = iter(ds)
    before = [_keys(next(it)) for _ in range(8)]
    state = json.loads(json.dumps(ds.state_dict()))
    (position, ordinal), *_ = state["shards"]["open"]
    http_server.requests.clear()
    restored = make()
    restored.load_state_dict(state)
    assert before + [_keys(b) for b in restored] == full
    resumed = f"/s-{position:06d}.tar"
    offset = shardindex.load_index(f"{http_server.url}{resumed}").offsets[ordinal]
    gets = [(path, headers.get("Range")) for method, path, headers in http_server.requests if method == "GET"]
    assert (resumed, f"bytes={offset}-") in gets
    # Shards before the position are opened only for the buffered samples' spans, never from their start.
    earlier = {f"/s-{i:06d}.tar" for i in range(position)}
    assert not [g for g in gets if g[0] in earlier and g[1] in (None, "bytes=0-")]
