"""The first API, `fastwds.dataset.WebDataset`, as the seed notebooks use it."""

from __future__ import annotations

import io
import json
import pickle

import msgpack
import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader

import fastwds as wds
from conftest import png_bytes, write_tarfile
from fastwds import dataset, tenbin


def jpeg_bytes(seed: int) -> bytes:
    out = io.BytesIO()
    PIL.Image.open(io.BytesIO(png_bytes(8, 6, seed))).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture
def v1_shards(tmp_path):
    """Two shards of 3 samples: half with .png, half with .jpg, plus .cls, .wnid and .xml fields."""
    paths = []
    n = 0
    for s in range(2):
        samples = []
        for _ in range(3):
            image = {"png": png_bytes(8, 6, n)} if n % 2 == 0 else {"jpg": jpeg_bytes(n)}
            samples.append(
                (f"im{n:03d}", {**image, "cls": b"%d" % (n % 4), "wnid": b"n0%d" % n, "xml": b"<a/>"})
            )
            n += 1
        paths.append(write_tarfile(tmp_path / f"v1-{s}.tar", samples))
    return paths


def decode_pil(data: bytes, mode: str) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(data)).convert(mode))


def raw_images(paths):
    return [s.get("png", s.get("jpg")) for s in dataset.WebDataset(paths, decoder=None)]


def test_len_is_size(v1_shards):
    ds = dataset.WebDataset(v1_shards, 6)
    assert len(ds) == 6
    assert len(dataset.WebDataset(v1_shards, size=1000)) == 1000
    with pytest.raises(TypeError):
        len(dataset.WebDataset(v1_shards))


def test_extensions_give_tuples_with_alternatives_and_rgb_default(v1_shards):
    ds = dataset.WebDataset(v1_shards, 6, extensions="png;jpg cls")
    got = list(ds)
    assert len(got) == 6
    raws = raw_images(v1_shards)
    for i, (image, cls) in enumerate(got):
        assert isinstance(image, np.ndarray) and image.dtype == np.float32 and image.shape == (6, 8, 3)
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert np.array_equal(image, decode_pil(raws[i], "RGB").astype("f") / 255.0)
        assert cls == i % 4


def test_extension_lists_and_missing_fields(v1_shards):
    got = list(dataset.WebDataset(v1_shards, extensions=[["jpg"], ["cls"], ["nothere"]], decoder=None))
    assert got[0] == (None, b"0", None)
    assert got[1][0] is not None and got[1][1] == b"1"


def test_without_extensions_dicts_and_unhandled_fields_stay_bytes(v1_shards):
    got = list(dataset.WebDataset(v1_shards, decoder="rgb8"))
    assert got[0]["__key__"] == "im000" and isinstance(got[0]["__url__"], str)
    assert got[0]["wnid"] == b"n00" and got[0]["xml"] == b"<a/>"
    assert got[0]["cls"] == 0
    assert got[0]["png"].dtype == np.uint8 and got[0]["png"].shape == (6, 8, 3)


@pytest.mark.parametrize(
    "spec,check",
    [
        ("rgb8", lambda a, raw: np.array_equal(a, decode_pil(raw, "RGB"))),
        (
            "l",
            lambda a, raw: (
                a.dtype == np.float32 and np.array_equal(a, decode_pil(raw, "L").astype("f") / 255.0)
            ),
        ),
        ("l8", lambda a, raw: a.shape == (6, 8) and np.array_equal(a, decode_pil(raw, "L"))),
        ("pil", lambda a, raw: isinstance(a, PIL.Image.Image) and a.mode == "RGB" and a.size == (8, 6)),
        (
            "torchrgb",
            lambda a, raw: isinstance(a, torch.Tensor) and a.shape == (3, 6, 8) and a.dtype == torch.float32,
        ),
        ("torchrgb8", lambda a, raw: torch.equal(a, torch.tensor(decode_pil(raw, "RGB").transpose(2, 0, 1)))),
    ],
)
def test_decoder_specs(v1_shards, spec, check):
    images = [x for (x,) in dataset.WebDataset(v1_shards, extensions="png;jpg", decoder=spec)]
    raws = raw_images(v1_shards)
    assert len(images) == len(raws) == 6
    assert all(check(image, raw) for image, raw in zip(images, raws))


def test_decoder_none_dict_and_function(v1_shards):
    raw = list(dataset.WebDataset(v1_shards, extensions="cls wnid", decoder=None))
    assert raw[1] == (b"1", b"n01")
    by_dict = list(dataset.WebDataset(v1_shards, extensions="cls wnid", decoder={"wnid": bytes.decode}))
    assert by_dict[1] == (b"1", "n01")

    def upper(sample):
        return {k: v.upper() if isinstance(v, bytes) else v for k, v in sample.items()}

    by_function = list(dataset.WebDataset(v1_shards, extensions="xml", decoder=upper))
    assert by_function[0] == (b"<A/>",)
    with pytest.raises(ValueError, match="unknown decoder"):
        dataset.WebDataset(v1_shards, decoder="nosuchspec")


def test_transforms_apply_per_position(v1_shards):
    ds = dataset.WebDataset(
        v1_shards, extensions="png;jpg cls", decoder="rgb8", transforms=[lambda a: a.shape, str]
    )
    assert list(ds)[:2] == [((6, 8, 3), "0"), ((6, 8, 3), "1")]
    one = dataset.WebDataset(v1_shards, extensions="cls wnid", decoder=None, transforms=[len])
    assert list(one)[0] == (1, 3)  # a single function applies to every position
    with pytest.raises(TypeError, match="extensions"):
        list(dataset.WebDataset(v1_shards, decoder=None, transforms=[len]))


def keys_of(ds):
    return [s["__key__"] for s in ds]


def test_shuffle(v1_shards):
    in_order = keys_of(dataset.WebDataset(v1_shards, decoder=None))
    assert in_order == [f"im{i:03d}" for i in range(6)]
    shard_orders = {tuple(keys_of(dataset.WebDataset(v1_shards, decoder=None, shuffle=1))) for _ in range(20)}
    # shards shuffled, samples within a shard in order
    assert shard_orders == {tuple(in_order), tuple(in_order[3:] + in_order[:3])}
    sample_orders = {
        tuple(keys_of(dataset.WebDataset(v1_shards, decoder=None, shuffle=10))) for _ in range(20)
    }
    assert all(sorted(o) == in_order for o in sample_orders)
    assert len(sample_orders - {tuple(in_order), tuple(in_order[3:] + in_order[:3])}) > 0


def test_opener_with_names_that_are_not_paths(v1_shards):
    table = {"first": v1_shards[0], "second": v1_shards[1]}
    opened = []

    def opener(name):
        stream = open(table[name], "rb")
        opened.append(stream)
        return stream

    got = list(dataset.WebDataset("{first,second}", extensions="cls", decoder=None, opener=opener))
    assert got == [(b"0",), (b"1",), (b"2",), (b"3",), (b"0",), (b"1",)]
    urls = [s["__url__"] for s in dataset.WebDataset(["second"], decoder=None, opener=opener)]
    assert urls == ["second"] * 3
    assert len(opened) == 3 and all(stream.closed for stream in opened)


def test_associate_function_and_dict(v1_shards):
    ds = dataset.WebDataset(
        v1_shards, extensions="cls label", decoder=None, associate=lambda key: {"label": key}
    )
    assert list(ds)[:2] == [(b"0", "im000"), (b"1", "im001")]
    table = {"im001": {"extra": 42}}
    got = list(dataset.WebDataset(v1_shards, decoder=None, associate=table))
    assert got[1]["extra"] == 42 and "extra" not in got[0]


def write_container_shard(path, ext, records):
    return write_tarfile(path, [(f"rec{i:02d}", {ext: data}) for i, data in enumerate(records)])


def test_container_msgpack(tmp_path):
    records = [msgpack.packb({"cls": i, "txt": f"t{i}"}) for i in range(3)]
    path = write_container_shard(tmp_path / "mp.tar", "mp", records)
    got = list(dataset.WebDataset(path, container="mp", decoder=None))
    assert got == [{"cls": i, "txt": f"t{i}", "__key__": f"rec{i:02d}.mp"} for i in range(3)]
    tuples = list(dataset.WebDataset(path, container="mp", decoder=None, extensions="txt cls"))
    assert tuples == [("t0", 0), ("t1", 1), ("t2", 2)]


def test_container_json_and_pyd(tmp_path):
    path = write_container_shard(
        tmp_path / "j.tar", "json", [json.dumps({"a": i}).encode() for i in range(2)]
    )
    assert list(dataset.WebDataset(path, container="json", decoder=None, extensions="a __key__")) == [
        (0, "rec00.json"),
        (1, "rec01.json"),
    ]
    path = write_container_shard(tmp_path / "p.tar", "pyd", [pickle.dumps({"x": [i]}) for i in range(2)])
    assert [s["x"] for s in dataset.WebDataset(path, container="pyd", decoder=None)] == [[0], [1]]


def test_container_tenbin(tmp_path):
    arrays = [[np.arange(4, dtype=np.int32) + i, np.full((2, 2), i, dtype=np.float32)] for i in range(3)]
    path = write_container_shard(tmp_path / "t.tar", "ten", [bytes(tenbin.encode_buffer(a)) for a in arrays])
    got = list(dataset.WebDataset(path, container="ten"))
    assert len(got) == 3
    for (a, b), (x, y) in zip(got, arrays):
        assert np.array_equal(a, x) and np.array_equal(b, y)


def test_handler_for_missing_shard_and_bad_image(v1_shards, tmp_path):
    urls = [v1_shards[0], str(tmp_path / "missing.tar")]
    with pytest.raises(OSError, match="missing.tar"):
        list(dataset.WebDataset(urls, decoder=None))
    assert len(list(dataset.WebDataset(urls, decoder=None, handler=wds.ignore_and_continue))) == 3
    bad = write_tarfile(
        tmp_path / "bad.tar", [("a", {"png": b"not a png"}), ("b", {"png": png_bytes(2, 2, 1)})]
    )
    with pytest.raises(PIL.UnidentifiedImageError):
        list(dataset.WebDataset(bad))
    assert len(list(dataset.WebDataset(bad, handler=wds.ignore_and_continue))) == 1


def test_default_handlers_table():
    assert {"rgb", "rgb8", "l", "pil", "torchrgb"} <= set(dataset.default_handlers)
    handlers = dataset.default_handlers["rgb"]
    assert handlers["cls"](b"12") == 12 and handlers["cls"](b"x") == b"x"
    assert handlers["txt"](b"hi") == "hi" and handlers["json"](b'{"a": 1}') == {"a": 1}
    assert "wnid" not in handlers


@pytest.mark.timeout(120)
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_in_a_dataloader(v1_shards, context):
    ds = dataset.WebDataset(v1_shards, 6, extensions="png;jpg cls", decoder="rgb8")
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context)
    got = list(loader)
    assert sorted(int(cls) for _, cls in got) == sorted(i % 4 for i in range(6))
    assert all(tuple(image.shape) == (6, 8, 3) for image, _ in got)
