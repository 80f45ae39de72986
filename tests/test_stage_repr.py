"""Pipeline stages print as what they do, as webdataset's do (`<_shuffle (100,) {}>`), so code that finds a
stage by its string (`"shuffle" in str(stage)`) works."""

from __future__ import annotations

import re
from typing import Any

import webdataset

import fastwds
from conftest import reference


def _normal(stage: Any) -> str:
    """A stage's string without addresses and library names."""
    text = re.sub(r" at 0x[0-9a-f]+", "", str(stage))
    return re.sub(r"\b(webdataset|fastwds)\.", "", text)


def _fluent(library: Any, shards: list[str]) -> Any:
    return (
        library.WebDataset(shards, shardshuffle=10, seed=3)
        .shuffle(100)
        .decode()
        .map(len)
        .select(bool)
        .map_dict(a=len)
        .rename(a="b")
        .to_tuple("a", "b")
        .map_tuple(len)
        .batched(4)
        .unbatched()
        .listed(2)
        .slice(3)
        .rsample(0.5)
    )


def test_fluent_stages_print_as_webdatasets(shards: list[str]) -> None:
    ours = [_normal(s) for s in _fluent(fastwds, shards).pipeline]
    theirs = [_normal(s) for s in reference(lambda: _fluent(webdataset, shards)).pipeline]
    # The shard list, node and worker splitting and the shard shuffle, then the tar stage (one stage here,
    # four in the reference), then the fluent stages one to one.
    assert ours[:4] == theirs[:4]
    assert ours[3] == "<_shuffle (10,) {'seed': 3}>"
    fluent = len(theirs) - theirs.index("<_shuffle (100,) {}>")
    assert len(ours) - 5 == fluent
    ours, theirs = ours[-fluent:], theirs[-fluent:]
    # The decoder itself prints differently (the reference's is an object address); both say "decode".
    assert ours[1].startswith("<_map (<autodecode.Decoder ") and theirs[1].startswith(
        "<_map (<autodecode.Decoder "
    )
    assert ours[:1] + ours[2:] == theirs[:1] + theirs[2:]
    for word, stage in zip(
        [
            "shuffle",
            "decode",
            "map",
            "select",
            "map_dict",
            "rename",
            "to_tuple",
            "map_tuple",
            "batched",
            "unbatched",
        ],
        ours,
    ):
        assert word in stage


def test_the_shard_shuffle_prints_as_a_shuffle(shards: list[str]) -> None:
    ours = fastwds.WebDataset(shards, shardshuffle=10, seed=3)
    theirs = reference(lambda: webdataset.WebDataset(shards, shardshuffle=10, seed=3))
    (mine,) = [s for s in ours.pipeline if "shuffle" in str(s)]
    (ref,) = [s for s in theirs.pipeline if "shuffle" in str(s)]
    assert _normal(mine) == _normal(ref) == "<_shuffle (10,) {'seed': 3}>"
    det = fastwds.WebDataset(shards, shardshuffle=10, seed=3, detshuffle=True)
    assert sum("detshuffle" in str(s) for s in det.pipeline) == 1


def test_stages_of_fastwds_own_print_what_they_do(shards: list[str], image_shards: list[str]) -> None:
    on_threads = fastwds.WebDataset(image_shards, shardshuffle=False).decode_images("rgb8", size=(8, 8))
    in_process = fastwds.WebDataset(image_shards, shardshuffle=False).map(len).decode_images("l8")
    assert "decode_images ('rgb8',)" in str(on_threads.pipeline[-1])
    assert "decode_images ('l8',)" in str(in_process.pipeline[-1])
    assert "decode" in str(fastwds.WebDataset(image_shards, shardshuffle=False).decode("rgb8").pipeline[-1])
    assert "rgb8" in str(fastwds.WebDataset(image_shards, shardshuffle=False).decode("rgb8").pipeline[-1])
    assert str(fastwds.filters.detshuffle(50, seed=1)).startswith("<detshuffle (50,)")
    assert "mcached" in str(fastwds.WebDataset(shards, shardshuffle=False).mcached().pipeline[-1])
