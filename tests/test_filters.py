"""The pipeline stages of fastwds.filters against webdataset.filters 1.0.2 on the same samples."""

import copy
import io
import json
import pickle
import random

import numpy as np
import pytest
import webdataset.filters as W

import fastwds.filters as F
from fastwds.handlers import ignore_and_continue, ignore_and_stop, warn_and_continue


def same(a, b):
    """Deep equality that also compares types, numpy arrays (dtype and values) and torch tensors."""
    assert type(a) is type(b), (type(a), type(b), a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), (a, b)
    elif type(a).__module__.startswith("torch"):
        assert a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all()), (a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b), (a.keys(), b.keys())
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), (a, b)
        for x, y in zip(a, b):
            same(x, y)
    else:
        assert a == b, (a, b)


def both(name, data, *args, **kw):
    """Run stage `name` of both libraries on deep copies of `data`; check equal outputs and return fastwds'."""
    ref = list(getattr(W, name)(*args, **kw)(iter(copy.deepcopy(data))))
    ours = list(getattr(F, name)(*args, **kw)(iter(copy.deepcopy(data))))
    same(ours, ref)
    return ours


def both_raise(name, data, *args, **kw):
    """Both libraries raise on these samples; return fastwds' exception."""
    with pytest.raises(Exception):  # noqa: B017 - the reference raises AssertionError where fastwds is specific
        list(getattr(W, name)(*args, **kw)(iter(copy.deepcopy(data))))
    with pytest.raises(Exception) as info:  # noqa: B017
        list(getattr(F, name)(*args, **kw)(iter(copy.deepcopy(data))))
    return info.value


def samples(n=10):
    return [
        {
            "__key__": f"k{i:03d}",
            "__url__": "u.tar",
            "jpg": b"J%d" % i,
            "cls": str(i % 3).encode(),
            "txt": b"t",
        }
        for i in range(n)
    ]


# ---------------------------------------------------------------- shuffle


@pytest.mark.parametrize("n", [0, 1, 7, 99, 100, 101, 2500])
@pytest.mark.parametrize("bufsize,initial", [(1000, 100), (10, 3), (1, 1), (50, 0), (5, 100), (2, 2)])
def test_shuffle_same_order_as_reference_for_same_rng(n, bufsize, initial):
    for seed in (0, 1, 12345):
        ref = list(W._shuffle(iter(range(n)), bufsize, initial, rng=random.Random(seed)))
        ours = list(F._shuffle(iter(range(n)), bufsize, initial, rng=random.Random(seed)))
        assert ours == ref
        assert sorted(ours) == list(range(n))


def test_shuffle_seed_argument_and_curried_form_match_reference():
    data = samples(300)
    out = both("shuffle", data, 50, initial=20, seed=7)
    assert [s["__key__"] for s in out] != [s["__key__"] for s in data]
    both("shuffle", data, 1000, seed="a string seed")
    ref = list(W.shuffle(100, rng=random.Random(3))(iter(range(500))))
    assert list(F.shuffle(100, rng=random.Random(3))(iter(range(500)))) == ref


def test_shuffle_accepts_any_iterable():
    ref = list(W._shuffle(iter(range(300)), 40, 10, rng=random.Random(5)))
    assert list(F._shuffle(range(300), 40, 10, rng=random.Random(5))) == ref
    assert list(F._shuffle(list(range(300)), 40, 10, rng=random.Random(5))) == ref


def test_shuffle_with_a_random_subclass_overriding_randint_uses_it():
    class Counting(random.Random):
        calls = 0

        def randint(self, a, b):
            Counting.calls += 1
            return super().randint(a, b)

    ref = list(W._shuffle(iter(range(200)), 30, 5, rng=random.Random(9)))
    assert list(F._shuffle(range(200), 30, 5, rng=Counting(9))) == ref
    assert Counting.calls == 200


def test_shuffle_without_seed_is_a_permutation_that_varies():
    a = list(F._shuffle(range(500), 100, 10))
    b = list(F._shuffle(range(500), 100, 10))
    assert sorted(a) == sorted(b) == list(range(500))
    assert a != b


def test_shuffle_rejects_rng_and_seed_together():
    with pytest.raises(ValueError):
        list(F._shuffle(range(3), rng=random.Random(1), seed=1))


def test_pick_matches_reference():
    a, b = list(range(20)), list(range(20))
    ra, rb = random.Random(4), random.Random(4)
    assert [W.pick(a, ra) for _ in range(20)] == [F.pick(b, rb) for _ in range(20)]


def test_detshuffle_matches_reference_each_epoch_and_accepts_string_seed():
    ref, ours, from_str = (
        W.detshuffle(50, 10, seed=3),
        F.detshuffle(50, 10, seed=3),
        F.detshuffle(50, 10, seed="3"),
    )
    orders = []
    for _ in range(3):
        r = list(ref.run(iter(range(200))))
        assert list(ours.run(iter(range(200)))) == r
        assert list(from_str.run(iter(range(200)))) == r
        orders.append(r)
    assert orders[0] != orders[1] != orders[2]
    named = F.detshuffle(50, 10, seed="run-a")
    assert sorted(named.run(range(100))) == list(range(100))


# ---------------------------------------------------------------- to_tuple


def test_to_tuple_plain_alternatives_and_space_separated():
    data = samples(5) + [{"__key__": "p", "png": b"P", "cls": b"2"}]
    both("to_tuple", data[:5], "jpg", "cls")
    both("to_tuple", data[:5], "jpg")
    out = both("to_tuple", data, "jpg;png", "cls")
    assert out[-1] == (b"P", b"2")
    assert both("to_tuple", data, "jpg;png cls") == out
    both("to_tuple", data, ["jpg", "png"], "cls")
    both("to_tuple", data, "__key__", "png;jpg")


def test_to_tuple_missing_field():
    data = samples(3) + [{"__key__": "x", "cls": b"1"}]
    err = both_raise("to_tuple", data, "jpg", "cls")
    assert isinstance(err, ValueError)
    assert "didn't find ['jpg']" in str(err)
    out = both("to_tuple", data, "jpg", "cls", missing_is_error=False)
    assert out[-1] == (None, b"1")
    out = both("to_tuple", data, "jpg;png", "cls", handler=ignore_and_continue)
    assert len(out) == 3
    assert len(both("to_tuple", data[::-1], "jpg", "cls", handler=ignore_and_stop)) == 0


def test_to_tuple_none_is_error():
    data = samples(2) + [{"__key__": "n", "jpg": None, "cls": b"1"}]
    assert isinstance(both_raise("to_tuple", data, "jpg", "cls"), ValueError)
    out = both("to_tuple", data, "jpg", "cls", none_is_error=False)
    assert out[-1] == (None, b"1")
    assert isinstance(
        both_raise("to_tuple", data, "jpg", "cls", missing_is_error=False, none_is_error=True), ValueError
    )


def test_to_tuple_with_array_values_checks_none_by_identity():
    data = [{"__key__": str(i), "npy": np.arange(3) + i, "cls": i} for i in range(4)]
    both("to_tuple", data, "npy", "cls")


def test_to_tuple_space_in_a_spec_among_several_is_an_error():
    assert isinstance(both_raise("to_tuple", samples(2), "jpg cls", "txt"), ValueError)


# ---------------------------------------------------------------- map and friends


def test_map_sets_key_and_drops_none():
    def f(s):
        if s["__key__"] == "k002":
            return None
        return {"n": len(s["jpg"])}

    out = both("map", samples(5), f)
    assert [s["__key__"] for s in out] == ["k000", "k001", "k003", "k004"]
    assert both("map", [1, 2, 3], lambda x: x * 10) == [10, 20, 30]


def test_map_handler():
    def f(x):
        if x == 3:
            raise KeyError(x)
        return x

    with pytest.raises(KeyError):
        list(F.map(f)(iter(range(6))))
    assert both("map", list(range(6)), f, handler=ignore_and_continue) == [0, 1, 2, 4, 5]
    assert both("map", list(range(6)), f, handler=ignore_and_stop) == [0, 1, 2]


def test_map_dict_and_errors():
    out = both("map_dict", samples(4), jpg=len, cls=lambda b: int(b) + 1)
    assert out[1]["jpg"] == 2 and out[1]["cls"] == 2
    assert isinstance(both_raise("map_dict", samples(2), nothere=len), KeyError)
    assert both("map_dict", samples(3), nothere=len, handler=ignore_and_continue) == []
    with pytest.raises(ValueError):
        list(F.map_dict()(iter(samples(1))))
    with pytest.raises(TypeError):
        list(F.map_dict(jpg=3)(iter(samples(1))))


def test_map_tuple_applies_to_first_min_n():
    data = [(1, 2, 3), (4, 5, 6)]
    assert both("map_tuple", data, lambda x: x * 10) == [(10, 2, 3), (40, 5, 6)]
    assert both("map_tuple", data, None, str) == [(1, "2", 3), (4, "5", 6)]
    assert both("map_tuple", [(1,), [2]], str, str, str) == [("1",), ("2",)]
    assert both("map_tuple", [(1, "a"), (2, 3)], None, str.upper, handler=ignore_and_continue) == [(1, "A")]
    with pytest.raises(TypeError):
        list(F.map_tuple(3)(iter(data)))
    with pytest.raises(TypeError):
        list(F.map_tuple(str)(iter([{"a": 1}])))


def test_select():
    assert [s["__key__"] for s in both("select", samples(9), lambda s: s["cls"] == b"1")] == [
        "k001",
        "k004",
        "k007",
    ]


def test_rename_keep_and_alternatives():
    data = samples(3) + [{"__key__": "p", "png": b"P", "cls": b"2", "txt": b"t"}]
    out = both("rename", data, image="jpg;png", label="cls")
    assert out[0] == {"__key__": "k000", "__url__": "u.tar", "txt": b"t", "image": b"J0", "label": b"0"}
    assert list(out[0].keys()) == ["__key__", "__url__", "txt", "image", "label"]
    out = both("rename", data, keep=False, image="jpg;png", label="cls")
    assert out[-1] == {"image": b"P", "label": b"2"}
    both("rename", data, image=["png", "jpg"])


def test_rename_missing_field():
    data = [{"__key__": "a", "jpg": 1}, {"__key__": "b", "png": 2}]
    assert isinstance(both_raise("rename", data, image="jpg"), ValueError)
    assert both("rename", data, image="jpg", handler=ignore_and_continue) == [{"__key__": "a", "image": 1}]


def test_associate_dict_and_function():
    extra = {"k001": {"meta": 1}}
    out = both("associate", samples(3), extra)
    assert out[1]["meta"] == 1 and "meta" not in out[0]
    out = both("associate", samples(3), lambda key: {"len": len(key)})
    assert [s["len"] for s in out] == [4, 4, 4]


# ---------------------------------------------------------------- random subsampling and slicing


def test_rsample_same_draws_with_seeded_global_random():
    random.seed(11)
    ref = list(W.rsample(0.3)(iter(range(1000))))
    random.seed(11)
    ours = list(F.rsample(0.3)(iter(range(1000))))
    assert ours == ref
    assert 200 < len(ours) < 400
    assert list(F.rsample(1.0)(iter(range(5)))) == [0, 1, 2, 3, 4]
    assert list(F.rsample(0.0)(iter(range(5)))) == []
    with pytest.raises(ValueError):
        list(F.rsample(1.5)(iter(range(5))))


@pytest.mark.parametrize("args", [(3,), (2, 8), (1, 9, 3), (0, None, 4), (20,)])
def test_slice(args):
    out = both("slice", samples(10), *args)
    assert [s["__key__"] for s in out] == [f"k{i:03d}" for i in range(10)][slice(*args)]


# ---------------------------------------------------------------- batching


@pytest.mark.parametrize("n,bs", [(10, 3), (9, 3), (2, 5), (0, 4), (1, 1)])
@pytest.mark.parametrize("partial", [True, False])
def test_batched_partial_and_lists(n, bs, partial):
    data = [(i, float(i), f"s{i}") for i in range(n)]
    out = both("batched", data, bs, partial=partial)
    assert len(out) == (n // bs + (1 if partial and n % bs else 0))
    out = both("batched", data, bs, collation_fn=None, partial=partial)
    lists = [data[i : i + bs] for i in range(0, n, bs)]
    assert out == [b for b in lists if partial or len(b) == bs]


def test_batched_collates_like_reference():
    rows = [
        {
            "__key__": f"k{i}",
            "i": i,
            "f": i / 2,
            "b": bool(i % 2),
            "s": f"s{i}",
            "by": b"x",
            "a": np.full((2, 3), i, dtype=np.uint8),
            "np_int": np.int64(i),
            "np_float": np.float32(i),
            "d": {"x": i},
            "l": [i, i],
        }
        for i in range(5)
    ]
    out = both("batched", rows, 4)
    assert out[0]["a"].shape == (4, 2, 3) and out[0]["a"].dtype == np.uint8
    assert out[0]["i"].dtype == np.int64 and out[0]["f"].dtype == np.float64 and out[0]["b"].dtype == np.bool_
    assert out[0]["s"] == ["s0", "s1", "s2", "s3"] and out[1]["s"] == ["s4"]
    tuples = [(r["i"], r["f"], r["a"], r["s"], r["d"]) for r in rows]
    out = both("batched", tuples, 2)
    assert isinstance(out[0], tuple) and out[0][2].shape == (2, 2, 3)


def test_batched_collates_tensors():
    import torch

    rows = [(torch.full((3,), i), i) for i in range(6)]
    out = both("batched", rows, 4)
    assert isinstance(out[0][0], torch.Tensor) and out[0][0].shape == (4, 3)
    ours = F.default_collation_fn([{"t": torch.zeros(2)}, {"t": torch.ones(2)}])
    assert torch.equal(ours["t"], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))


def test_collation_options_and_errors():
    rows = [(1, np.zeros(2)), (2, np.ones(2))]
    for kw in ({"combine_tensors": False}, {"combine_scalars": False}):
        same(F.default_collation_fn(rows, **kw), W.default_collation_fn(rows, **kw))
    with pytest.raises(ValueError):
        F.default_collation_fn([(np.zeros(2),), (np.zeros(3),)])
    with pytest.raises(ValueError):
        F.default_collation_fn([{"a": 1}, {"b": 1}])
    with pytest.raises(ValueError):
        F.default_collation_fn([(1, 2), (1,)])
    assert list(F.default_collation_fn([{"z": 1, "a": 2}]).keys()) == ["z", "a"]


def test_unbatched_inverts_batched():
    tuples = [(i, np.full(2, i), f"s{i}") for i in range(7)]
    batches = list(W.batched(3)(iter(tuples)))
    out = both("unbatched", batches)
    assert len(out) == 7 and out[6][2] == "s6"
    dicts = [{"a": i, "b": f"s{i}"} for i in range(5)]
    out = both("unbatched", list(W.batched(2)(iter(dicts))))
    assert out == [{"a": i, "b": f"s{i}"} for i in range(5)]
    # Elements of different lengths and dict elements take the indexing path, as the reference.
    assert both("unbatched", [([1, 2], "abc")]) == [(1, "a"), (2, "b")]
    both("unbatched", [([1, 2], {0: "x", 1: "y"})])
    with pytest.raises(ValueError):
        list(F.unbatched()(iter([{"a": [1, 2], "b": [1]}])))
    with pytest.raises(ValueError):
        list(F.unbatched()(iter([3])))


def test_unlisted():
    assert both("unlisted", [[1, 2], [], [3]]) == [1, 2, 3]
    with pytest.raises(TypeError):
        list(F.unlisted()(iter([(1, 2)])))


# ---------------------------------------------------------------- keys by pattern


def test_extract_keys():
    data = [{"__key__": "a", "img.jpg": 1, "lbl.cls": 2, "x.json": 3} for _ in range(2)]
    assert both("extract_keys", data, "*.jpg;*.png", "*.cls") == [(1, 2), (1, 2)]
    assert "Cannot find" in str(both_raise("extract_keys", data, "jpg"))
    assert both("extract_keys", data, "*.jpg", "*.png", ignore_missing=True) == [(1,), (1,)]
    assert "Cannot find" in str(both_raise("extract_keys", data, "*.png"))
    assert "Multiple" in str(both_raise("extract_keys", data, "*.jpg;*.cls"))
    assert both("extract_keys", data, "*.jpg;*.cls", duplicate_is_error=False) == [(1,), (1,)]
    plain = [{"__key__": "a", "jpg": 1}]
    assert both("extract_keys", plain, "*.jpg") == [(1,)]


def test_rename_keys():
    data = [{"__key__": "a", "dir/Img.JPG": 1, "lbl.cls": 2, "other": 3}]
    assert both("rename_keys", data, ("image", "*.jpg"), label="*.cls") == [{"image": 1, "label": 2}]
    out = both("rename_keys", data, image="*.jpg", keep_unselected=True)
    assert out == [{"__key__": "a", "image": 1, "lbl.cls": 2, "other": 3}]
    assert "Not all patterns" in str(both_raise("rename_keys", data, image="*.png"))
    assert both("rename_keys", data, image="*.png", x="*.cls", must_match=False) == [{"x": 2}]
    assert "Duplicate" in str(both_raise("rename_keys", data, x="*.cls", y="*"))
    assert both("rename_keys", data, ("x", "*.jpg"), ("x", "*.cls"), duplicate_is_error=False) == [{"x": 1}]


# ---------------------------------------------------------------- decoding


def test_xdecode_defaults_and_custom():
    data = [
        {
            "__key__": "a",
            "t.txt": b"hello",
            "b.bin": b"\x00\x01",
            "p.pyd": pickle.dumps({"x": 1}),
            "j.json": b"[1]",
        }
    ]
    out = both("xdecode", data, ("*.json", lambda s: json.load(s)))
    assert out == [{"__key__": "a", "t.txt": "hello", "b.bin": b"\x00\x01", "p.pyd": {"x": 1}, "j.json": [1]}]
    assert both("xdecode", data, json=lambda s: json.load(s))[0]["j.json"] == [1]
    assert "No decoder found" in str(both_raise("xdecode", data))
    assert both("xdecode", data, must_decode=False)[0]["j.json"] == b"[1]"
    assert both("xdecode", data, ("*.json", False))[0]["j.json"] == b"[1]"
    stream = io.BytesIO(b"abc")
    assert F.decode_bin(stream) == b"abc"


def test_find_decoder():
    decoders = [("*.jpg", 1), ("*.JPG", 2), (".cls", 3), ("ab*", 4)]
    for path in ["a.jpg", "dir/b.JPG", "cls", "x.cls", "__key__", "none", "abc", "x/ABC"]:
        ref = W.find_decoder(decoders, path)
        ours = F.find_decoder(decoders, path)
        if path.startswith("__"):
            assert ours("v") == ref("v") == "v"
        else:
            assert ours == ref


def test_decode_uses_autodecode_and_handler():
    data = [
        {"__key__": "a", "txt": b"hello", "cls": b"3", "json": b'{"a": 1}'},
        {"__key__": "b", "txt": b"x", "cls": b"4", "json": b"{broken"},
        {"__key__": "c", "txt": b"y", "cls": b"5", "json": b"[2]"},
    ]
    assert isinstance(both_raise("decode", data), Exception)
    out = both("decode", data, handler=ignore_and_continue)
    assert [s["cls"] for s in out] == [3, 5] and out[0]["json"] == {"a": 1} and out[0]["txt"] == "hello"
    out = both("decode", data[:1], only=["txt"])
    assert out[0]["cls"] == b"3"
    with pytest.warns(UserWarning, match="Decoding|JSON|Expecting"):
        out = list(F.decode(handler=warn_and_continue)(iter(copy.deepcopy(data))))
    assert len(out) == 2
    with pytest.raises(TypeError):
        list(F.decode()(iter([(1, 2)])))


def test_decode_image_spec():
    import PIL.Image as PIL

    buf = io.BytesIO()
    PIL.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buf, format="png")
    data = [{"__key__": "a", "png": buf.getvalue()}]
    out = both("decode", data, "rgb8")
    assert out[0]["png"].shape == (4, 4, 3)
    both("decode", data, "l")


# ---------------------------------------------------------------- passthrough stages


def test_info_prints_like_reference():
    ref, ours = io.StringIO(), io.StringIO()
    data = samples(6)
    list(W.info(n=2, every=3, stream=ref, name="x")(iter(copy.deepcopy(data))))
    assert list(F.info(n=2, every=3, stream=ours, name="x")(iter(copy.deepcopy(data)))) == data
    assert ours.getvalue() == ref.getvalue() and ours.getvalue().count("---") == 4
    ref, ours = io.StringIO(), io.StringIO()
    list(W.info(fmt="{__key__}:{cls}", stream=ref)(iter(data)))
    list(F.info(fmt="{__key__}:{cls}", stream=ours)(iter(data)))
    assert ours.getvalue() == ref.getvalue()


def test_log_keys(tmp_path):
    data = [dict(s, __worker__=1, __rank__=0) for s in samples(4)]
    both("log_keys", data, str(tmp_path / "ref.log"))
    assert both("log_keys", data) == data
    (tmp_path / "ours.log").write_text("")
    list(F.log_keys(str(tmp_path / "ours.log"))(iter(data)))
    ref_lines = (tmp_path / "ref.log").read_text().splitlines()
    assert (tmp_path / "ours.log").read_text().splitlines() == ref_lines[: len(ref_lines) // 2]
    assert ref_lines[0] == "0\t1\t0\tk000"


def test_cached_replays_first_complete_pass():
    calls = []

    def source():
        calls.append(1)
        yield from range(5)

    stage = F.Cached()
    assert list(stage.run(source())) == [0, 1, 2, 3, 4]
    assert list(stage.run(source())) == [0, 1, 2, 3, 4]
    assert len(calls) == 1


def test_lmdb_cached(tmp_path):
    try:
        import lmdb  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="lmdb"):
            F.LMDBCached(str(tmp_path / "db"))
        return
    stage = F.LMDBCached(str(tmp_path / "db"), map_size=1e7)
    data = samples(3)
    assert list(stage.run(iter(data))) == data
    assert stage.is_complete()
    assert sorted(s["__key__"] for s in stage.run(iter([]))) == ["k000", "k001", "k002"]


# ---------------------------------------------------------------- helpers and currying


def test_curried_stages_pickle_and_print_like_reference():
    stage = F.shuffle(10, seed=3)
    clone = pickle.loads(pickle.dumps(stage))
    assert list(clone(iter(range(50)))) == list(W.shuffle(10, seed=3)(iter(range(50))))
    assert str(F.to_tuple("a", "b")) == str(W.to_tuple("a", "b")) == "<_to_tuple ('a', 'b') {}>"
    assert F.to_tuple.__name__ == "_to_tuple" and F.slice.__name__ == "islice"
    pickle.loads(pickle.dumps(F.batched(4)))


def test_getfirst_parse_field_spec_transform_with():
    d = {"png": 1, "cls": 2}
    assert F.getfirst(d, "jpg;png") == W.getfirst(d, "jpg;png") == 1
    assert F.getfirst(d, ["cls", "png"]) == 2
    assert F.getfirst(d, "jpg", default=5, missing_is_error=False) == 5
    with pytest.raises(ValueError, match="didn't find"):
        F.getfirst(d, "jpg")
    with pytest.raises(ValueError):
        F.getfirst(d, "jpg png")
    assert F.parse_field_spec("jpg;png cls") == W.parse_field_spec("jpg;png cls") == [["jpg", "png"], ["cls"]]
    assert F.transform_with((1, 2, 3), [str, None]) == W.transform_with((1, 2, 3), [str, None]) == ["1", 2, 3]
    assert F.transform_with((1, 2), None) == (1, 2)
    with pytest.raises(ValueError):
        F.transform_with((1,), [str, str])


def test_compose_and_pipeline():
    f = F.compose(F.map(lambda x: x + 1), F.select(lambda x: x % 2 == 0), F.batched(2, collation_fn=None))
    assert list(f(iter(range(8)))) == [[2, 4], [6, 8]]
    assert list(F.pipeline(iter(range(4)), F.slice(2))) == [0, 1]
    assert F.pipeline([1]) == [1]
    assert F.compose2(str, len)(1234) == 4
    assert F.reraise_exception is not None and F.identity(3) == 3
