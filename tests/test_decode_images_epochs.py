"""`decode_images` decoding in this process (anywhere but right after the tar stage) draws each image's random
crop and flip from (seed, epoch, key, field), as the reader threads do: the same crops for the same epoch,
new ones every epoch, and the very crops the reader threads give."""

from __future__ import annotations

from typing import Any

import numpy as np

import fastwds
from fastwds import _core
from fastwds.images import DecodeImages, image_seed

AUGMENT = dict(size=(20, 20), crop="random_resized", flip=0.5, seed=11)


def _crops(dataset: Any) -> dict[str, np.ndarray]:
    return {s["__key__"]: s["png"] for s in dataset}


def _assert_same_crops(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    assert sorted(got) == sorted(want) and len(want) == 8, what
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{what}: {key}")


def _reader_threads(shards: list[str]) -> Any:
    dataset = fastwds.WebDataset(shards, shardshuffle=False).decode_images("rgb8", **AUGMENT)
    assert dataset.pipeline[-2].images is not None, "decoded on the reader threads"
    return dataset


def _in_process(shards: list[str]) -> Any:
    dataset = fastwds.WebDataset(shards, shardshuffle=False).map(lambda s: s).decode_images("rgb8", **AUGMENT)
    assert isinstance(dataset.pipeline[-1], DecodeImages)
    return dataset


def test_in_process_crops_are_the_reader_threads_crops_epoch_by_epoch(image_shards: list[str]) -> None:
    native, local = _reader_threads(image_shards), _in_process(image_shards)
    epochs = []
    for _ in range(3):
        a, b = _crops(native), _crops(local)
        assert sorted(a) == sorted(b) and len(a) == 8
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        epochs.append(b)
    for first, second in ((0, 1), (1, 2), (0, 2)):
        assert any(not np.array_equal(epochs[first][k], epochs[second][k]) for k in epochs[0]), (
            f"epochs {first} and {second} drew the same crops"
        )


def test_in_process_crops_repeat_for_a_seed_and_epoch(image_shards: list[str]) -> None:
    first = _in_process(image_shards)
    epoch0, epoch1 = _crops(first), _crops(first)
    again = _in_process(image_shards)
    _assert_same_crops(_crops(again), epoch0, "same seed, same epoch 0")
    again.set_epoch(1)
    _assert_same_crops(_crops(again), epoch1, "set_epoch(1) replays epoch 1")
    other = fastwds.WebDataset(image_shards, shardshuffle=False).map(lambda s: s)
    other = other.decode_images("rgb8", **{**AUGMENT, "seed": 12})
    assert any(not np.array_equal(epoch0[k], v) for k, v in _crops(other).items()), "another seed"


def test_a_pipeline_stage_of_its_own_changes_crops_every_pass(image_shards: list[str]) -> None:
    samples = list(fastwds.WebDataset(image_shards, shardshuffle=False))
    pipeline = fastwds.DataPipeline(lambda: iter(samples), fastwds.decode_images("rgb8", **AUGMENT))
    epoch0, epoch1 = _crops(pipeline), _crops(pipeline)
    assert any(not np.array_equal(epoch0[k], epoch1[k]) for k in epoch0)
    native = _reader_threads(image_shards)
    for epoch, expected in enumerate((epoch0, epoch1)):
        _assert_same_crops(_crops(native), expected, f"epoch {epoch} on the reader threads")


def test_image_seed_is_the_reader_threads_seed(image_shards: list[str]) -> None:
    # Each image's crop equals a direct decode with the derived seed, on the reader threads too.
    native = _reader_threads(image_shards)
    raw = {s["__key__"]: s["png"] for s in fastwds.WebDataset(image_shards, shardshuffle=False)}
    for epoch in range(2):
        for key, image in _crops(native).items():
            seed = image_seed(AUGMENT["seed"], epoch, key, "png")
            options = {k: v for k, v in AUGMENT.items() if k != "seed"}
            np.testing.assert_array_equal(image, _core.decode_image(raw[key], "rgb8", seed=seed, **options))


def test_image_seed_stays_in_64_bits() -> None:
    for seed, epoch, key, field in ((0, 0, "", ""), (2**64 - 1, 2**64 - 1, "k\u00e9y", "jpg")):
        value = image_seed(seed, epoch, key, field)
        assert 0 <= value < 2**64
        assert value == image_seed(seed + 2**64, epoch + 2**64, key, field)
