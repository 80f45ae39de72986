"""DataPipeline and every fluent method, compared with webdataset 1.0.2 on the same shards."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch
import webdataset

import fastwds as wds
from conftest import assert_same_list, reference


def run_both(urls, build, **kw):
    """The samples of `build(WebDataset(urls, shardshuffle=False, **kw))` for fastwds and for webdataset."""
    ours = list(build(wds.WebDataset(urls, shardshuffle=False, **kw)))
    ref = reference(lambda: list(build(webdataset.WebDataset(urls, shardshuffle=False, **kw))))
    return ours, ref


def check_same(urls, build, expected_len=None, **kw):
    ours, ref = run_both(urls, build, **kw)
    assert_same_list(ours, ref)
    if expected_len is not None:
        assert len(ours) == expected_len
    return ours


def cls_int(sample):
    return int(sample["cls"])


def cls_tuple(sample):
    return (int(sample["cls"]),)


def test_plain_samples_match_reference(shards):
    got = check_same(shards, lambda ds: ds, 20)
    assert got[0]["__local_path__"] == shards[0]
    assert got[0]["txt"] == b"sample number 0"


def test_decode_default_and_image_specs(image_shards):
    got = check_same(image_shards, lambda ds: ds.decode(), 8)
    assert isinstance(got[0]["cls"], int) and got[0]["txt"] == "x"
    for spec, dtype, shape in [
        ("rgb8", np.uint8, (4, 6, 3)),
        ("rgb", np.float32, (4, 6, 3)),
        ("l8", np.uint8, (4, 6)),
    ]:
        got = check_same(image_shards, lambda ds, s=spec: ds.decode(s), 8)
        assert got[0]["png"].dtype == dtype and got[0]["png"].shape == shape
    got = check_same(image_shards, lambda ds: ds.decode("torchrgb"), 8)
    assert got[0]["png"].shape == (3, 4, 6)
    check_same(image_shards, lambda ds: ds.decode("pil"), 8)


def test_decode_only_partial_and_custom_handler(image_shards, shards):
    check_same(image_shards, lambda ds: ds.decode("rgb8", only=["png"]), 8)
    check_same(shards, lambda ds: ds.decode(wds.handle_extension("txt", lambda b: b.upper())), 20)
    check_same(shards, lambda ds: ds.map_dict(cls=int).decode(partial=True), 20)


def test_decode_errors_go_to_handler(shards):
    def bad(key, data):
        if key.endswith("cls") and data == b"3":
            raise ValueError("bad class")
        return None

    with pytest.raises(Exception, match="bad class"):
        list(wds.WebDataset(shards, shardshuffle=False).decode(bad))
    got = check_same(shards, lambda ds: ds.decode(bad, handler=wds.ignore_and_continue))
    assert len(got) == 20 - sum(1 for n in range(20) if n % 7 == 3)


def test_to_tuple_with_alternatives(shards, image_shards):
    got = check_same(shards, lambda ds: ds.to_tuple("cls", "txt;json"), 20)
    assert got[0] == (b"0", b"sample number 0")
    got = check_same(shards, lambda ds: ds.to_tuple("jpg;json", "__key__"), 20)
    assert got[0][1] == "sample000000"
    with pytest.raises(ValueError):
        list(wds.WebDataset(shards, shardshuffle=False).to_tuple("nothere"))
    check_same(shards, lambda ds: ds.to_tuple("cls", "nothere", missing_is_error=False), 20)
    check_same(image_shards, lambda ds: ds.decode("rgb8").to_tuple("jpg;png", "cls"), 8)


def test_map_select_slice(shards):
    got = check_same(shards, lambda ds: ds.map(cls_int), 20)
    assert got[:3] == [0, 1, 2]
    got = check_same(shards, lambda ds: ds.select(lambda s: int(s["cls"]) < 2), 6)
    check_same(shards, lambda ds: ds.slice(3, 15, 2), 6)
    check_same(shards, lambda ds: ds.slice(4), 4)


def test_map_dict_and_map_tuple(shards):
    got = check_same(shards, lambda ds: ds.map_dict(cls=int, json=json.loads), 20)
    assert got[3]["json"] == {"n": 3, "name": "s3"}
    got = check_same(shards, lambda ds: ds.to_tuple("cls", "txt", "json").map_tuple(int, bytes.decode), 20)
    # functions apply to the first min(n) elements; the rest pass through
    assert got[2] == (2, "sample number 2", b'{"n": 2, "name": "s2"}')


def test_rename_and_keys(shards):
    got = check_same(shards, lambda ds: ds.rename(label="cls", text="txt;json"), 20)
    assert set(got[0]) >= {"label", "text"}
    got = check_same(shards, lambda ds: ds.rename(label="cls", keep=False), 20)
    assert got[0] == {"label": b"0"}
    check_same(shards, lambda ds: ds.rename_keys(label="cls", text="txt"), 20)
    check_same(shards, lambda ds: ds.rename_keys(("label", "cl*"), keep_unselected=True), 20)
    got = check_same(shards, lambda ds: ds.extract_keys("*.cls", "txt"), 20)
    assert got[0] == (b"0", b"sample number 0")


def test_shuffle_with_seed_matches_reference(shards):
    got = check_same(shards, lambda ds: ds.shuffle(7, seed=3), 20)
    assert [s["__key__"] for s in got] != [f"sample{i:06d}" for i in range(20)]
    assert sorted(s["__key__"] for s in got) == [f"sample{i:06d}" for i in range(20)]
    ds = wds.WebDataset(shards, shardshuffle=False)
    assert ds.shuffle(0) is ds


def test_shuffle_without_seed_is_a_permutation(shards):
    got = [s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False).shuffle(10, initial=5)]
    assert sorted(got) == [f"sample{i:06d}" for i in range(20)]


def test_rsample(shards):
    def build(ds):
        random.seed(11)
        return list(ds.rsample(0.5))

    ours, ref = run_both(shards, build)
    assert 0 < len(ours) < 20
    assert {s["__key__"] for s in ours} <= {f"sample{i:06d}" for i in range(20)}
    assert len(list(wds.WebDataset(shards, shardshuffle=False).rsample(1.0))) == 20


def test_batched_collates_numbers_arrays_and_tensors(shards):
    def build(ds):
        return (
            ds.decode()
            .to_tuple("json", "cls", "txt")
            .map_tuple(lambda j: np.full(3, j["n"]), lambda c: c, lambda t: torch.tensor([len(t)]))
            .batched(6)
        )

    got = check_same(shards, build, 4)
    arrays, classes, tensors = got[0]
    assert arrays.shape == (6, 3) and classes.tolist() == [0, 1, 2, 3, 4, 5]
    assert isinstance(tensors, torch.Tensor) and tensors.shape == (6, 1)
    assert len(got[-1][1]) == 2  # the partial last batch
    got = check_same(shards, lambda ds: ds.map(cls_tuple).batched(6, partial=False), 3)
    assert got[-1][0].tolist() == [12 % 7, 13 % 7, 14 % 7, 15 % 7, 16 % 7, 17 % 7]
    got = check_same(shards, lambda ds: ds.map(cls_int).batched(5, collation_fn=None), 4)
    assert got[0] == [0, 1, 2, 3, 4]


def test_unbatched_listed_unlisted(shards):
    got = check_same(shards, lambda ds: ds.to_tuple("cls", "txt").batched(3).unbatched(), 20)
    assert got[0] == (b"0", b"sample number 0")
    got = check_same(shards, lambda ds: ds.map(cls_int).listed(6), 4)
    assert got[0] == [0, 1, 2, 3, 4, 5]
    check_same(shards, lambda ds: ds.map(cls_int).listed(6).unlisted(), 20)


def test_listed_honours_partial(shards):
    # webdataset ignores partial= here and always keeps the last short list.
    got = list(wds.WebDataset(shards, shardshuffle=False).map(cls_int).listed(6, partial=False))
    assert [len(x) for x in got] == [6, 6, 6]


def test_log_keys(shards, tmp_path):
    log = tmp_path / "keys.log"
    got = list(wds.WebDataset(shards, shardshuffle=False).log_keys(str(log)))
    assert len(got) == 20
    text = log.read_text()
    assert all(f"sample{i:06d}" in text for i in range(20))


def test_xdecode(shards):
    got = check_same(
        shards, lambda ds: ds.xdecode(txt=lambda stream: stream.read().decode(), must_decode=False), 20
    )
    assert isinstance(got[0]["txt"], str)


def test_mcached_replays_the_first_pass(shards):
    ds = wds.WebDataset(shards, shardshuffle=False).map(cls_int).mcached()
    assert list(ds) == list(ds) == [n % 7 for n in range(20)]


def test_with_epoch_repeat_with_length(shards):
    check_same(shards, lambda ds: ds.with_epoch(7), 7)
    check_same(shards, lambda ds: ds.with_epoch(27), 27)
    got = check_same(shards, lambda ds: ds.map(cls_int).repeat(2), 40)
    assert got[:20] == got[20:]
    check_same(shards, lambda ds: ds.repeat(3, 45), 45)
    ds = wds.WebDataset(shards, shardshuffle=False)
    with pytest.warns(UserWarning, match="with_length"):
        ds = ds.with_length(123)
    assert len(ds) == 123
    assert len(list(ds)) == 20
    assert isinstance(ds, wds.WebDataset) and isinstance(ds, torch.utils.data.IterableDataset)
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone) == 123 and len(list(clone)) == 20
    assert len(ds.with_length(5, silent=True)) == 5


def test_compose_returns_a_new_pipeline(shards):
    base = wds.WebDataset(shards, shardshuffle=False)
    mapped = base.compose(wds.map(cls_int))
    assert list(mapped)[:3] == [0, 1, 2]
    assert len(list(base)) == 20 and isinstance(list(base)[0], dict)
    assert len(mapped.pipeline) == len(base.pipeline) + 1
    assert mapped.stage(-1) is not base.stage(-1)


def test_functional_stages_in_a_data_pipeline_match_reference(shards):
    def build(m):
        return m.DataPipeline(
            m.SimpleShardList(shards),
            m.split_by_worker,
            m.tarfile_to_samples(),
            m.shuffle(5, seed=1),
            m.decode(),
            m.to_tuple("cls", "json"),
            m.map_tuple(lambda c: c * 10),
            m.batched(3),
        )

    ours = list(build(wds))
    ref = reference(lambda: list(build(webdataset)))
    assert_same_list(ours, ref)
    assert len(ours) == 7


def test_data_pipeline_sources():
    assert list(wds.DataPipeline([[1, 2, 3]], wds.map(lambda x: x + 1))) == [2, 3, 4]
    assert list(wds.DataPipeline(lambda: iter("ab"))) == ["a", "b"]
    assert list(wds.DataPipeline(wds.MockDataset("s", 3))) == ["s", "s", "s"]
    assert list(wds.DataPipeline(None, [[5, 6]], wds.slice(1))) == [5]
    with pytest.raises(ValueError, match="not a valid pipeline stage"):
        list(wds.DataPipeline(42))


def test_data_pipeline_with_epoch_of_empty_source_ends():
    assert list(wds.DataPipeline([[]]).with_epoch(10)) == []


def test_webdataset_pickles_with_stages(shards):
    ds = wds.WebDataset(shards, shardshuffle=False).decode().to_tuple("cls", "txt").batched(4)
    clone = pickle.loads(pickle.dumps(ds))
    assert type(clone) is type(ds)
    assert_same_list(list(clone), list(ds))


def test_fluid_wrapper(shards):
    wrapped = wds.FluidWrapper(wds.WebDataset(shards, shardshuffle=False)).map(cls_tuple).batched(10)
    got = list(wrapped)
    assert [b[0].tolist() for b in got] == [[n % 7 for n in range(10)], [n % 7 for n in range(10, 20)]]
