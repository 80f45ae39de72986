"""fastwds.autodecode: image specs equal webdataset's, default handlers, Decoder options and DecodingError."""

import gzip
import importlib.util
import io
import json
import pickle

import msgpack
import numpy as np
import PIL.Image
import pytest
import torch
import webdataset.autodecode as ref

from fastwds import autodecode as ad
from fastwds import tenbin


def image_bytes(mode: str, fmt: str) -> bytes:
    rng = np.random.default_rng(1)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "P": 1}[mode]
    pixels = rng.integers(0, 256, size=(13, 17, channels), dtype=np.uint8)
    if channels == 1:
        img = PIL.Image.fromarray(pixels[:, :, 0], "L")
        if mode == "P":
            img = img.convert("P")
    else:
        img = PIL.Image.fromarray(pixels, mode)
    stream = io.BytesIO()
    img.save(stream, format=fmt)
    return stream.getvalue()


IMAGES = [
    ("png", "RGB", "PNG"),
    ("png", "L", "PNG"),
    ("png", "RGBA", "PNG"),
    ("png", "P", "PNG"),
    ("jpg", "RGB", "JPEG"),
    ("jpeg", "L", "JPEG"),
    ("ppm", "RGB", "PPM"),
]


def assert_same_decoded(got, expected):
    assert type(got) is type(expected)
    if isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    elif isinstance(expected, torch.Tensor):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got, expected)
    elif isinstance(expected, PIL.Image.Image):
        assert got.mode == expected.mode and got.size == expected.size
        assert got.tobytes() == expected.tobytes()
    else:
        assert got == expected


@pytest.mark.parametrize("spec", list(ref.imagespecs))
@pytest.mark.parametrize("ext, mode, fmt", IMAGES)
def test_image_specs_equal_reference(spec, ext, mode, fmt):
    data = image_bytes(mode, fmt)
    got = ad.imagehandler(spec)("." + ext, data)
    expected = ref.imagehandler(spec)("." + ext, data)
    assert_same_decoded(got, expected)


def test_image_spec_shapes_and_ranges():
    data = image_bytes("RGB", "PNG")
    assert ad.imagehandler("rgb8")(".png", data).shape == (13, 17, 3)
    assert ad.imagehandler("l8")(".png", data).shape == (13, 17)
    rgba = ad.imagehandler("rgba")(".png", data)
    assert rgba.dtype == np.float32 and rgba.shape == (13, 17, 4) and 0 <= rgba.min() and rgba.max() <= 1
    chw = ad.imagehandler("torchrgb")(".png", data)
    assert chw.shape == (3, 13, 17) and chw.dtype == torch.float32
    assert ad.imagehandler("torchl8")(".png", data).shape == (13, 17)
    assert ad.imagehandler("pilrgba")(".png", data).mode == "RGBA"


def test_image_handler_extensions_and_unknown_spec():
    handler = ad.imagehandler("rgb8")
    assert handler(".txt", b"hello") is None
    assert handler(".seg.PNG", image_bytes("RGB", "PNG")).shape == (13, 17, 3)
    assert set(ad.IMAGE_EXTENSIONS) == set(ref.IMAGE_EXTENSIONS)
    only_png = ad.imagehandler("rgb8", extensions="png")
    assert only_png(".jpg", image_bytes("RGB", "JPEG")) is None
    with pytest.raises(ValueError, match="Unknown imagespec"):
        ad.imagehandler("rgb16")


def basic_sample():
    arr = np.arange(6, dtype="int32").reshape(2, 3)
    npy = io.BytesIO()
    np.save(npy, arr)
    npz = io.BytesIO()
    np.savez(npz, a=arr, b=arr * 2)
    pth = io.BytesIO()
    torch.save({"w": torch.ones(2)}, pth)
    return {
        "__key__": "k1",
        "__url__": "shard.tar",
        "txt": "héllo".encode(),
        "text": b"more",
        "transcript": b"words",
        "cls": b"7",
        "cls2": b" 12\n",
        "index": b"3",
        "inx": b"4",
        "id": b"5",
        "json": json.dumps({"a": [1, 2]}).encode(),
        "jsn": b"[1]",
        "pyd": pickle.dumps({"x": 1}),
        "pickle": pickle.dumps([1, 2]),
        "pkl": pickle.dumps("s"),
        "ten": bytes(tenbin.encode_buffer([arr])),
        "tb": bytes(tenbin.encode_buffer([arr, arr])),
        "mp": msgpack.packb({"m": 1}),
        "msg": msgpack.packb([3]),
        "npy": npy.getvalue(),
        "npz": npz.getvalue(),
        "pth": pth.getvalue(),
        "json.gz": gzip.compress(b'{"z": 1}'),
        "unknown": b"\x00raw",
    }


def assert_equal_values(got, expected):
    assert type(got) is type(expected)
    if isinstance(expected, dict):
        assert got.keys() == expected.keys()
        for k in expected:
            assert_equal_values(got[k], expected[k])
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert_equal_values(a, b)
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == expected.dtype
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected)
    else:
        assert got == expected


def test_default_handlers_equal_reference():
    sample = basic_sample()
    got = ad.Decoder([])(dict(sample))
    expected = ref.Decoder([])(dict(sample))
    assert list(got) == list(expected)
    assert_equal_values(got, expected)
    assert got["txt"] == "héllo" and got["cls2"] == 12 and got["json"] == {"a": [1, 2]}
    assert got["json.gz"] == {"z": 1}
    assert got["unknown"] == b"\x00raw"
    assert got["npz"]["b"].tolist() == [[0, 2, 4], [6, 8, 10]]


def test_extensions_beyond_the_reference_table():
    decoded = ad.Decoder([])(
        {"__key__": "k", "class": b"3", "count": b"10", "msgpack": msgpack.packb([1, "a"])}
    )
    assert decoded == {"__key__": "k", "class": 3, "count": 10, "msgpack": [1, "a"]}


@pytest.mark.skipif(
    importlib.util.find_spec("cbor") or importlib.util.find_spec("cbor2"), reason="cbor present"
)
def test_cbor_without_a_cbor_package_stays_bytes():
    assert ad.Decoder([])({"__key__": "k", "cbor": b"\xa1aa\x01"})["cbor"] == b"\xa1aa\x01"


def test_npy_with_pickled_objects_is_refused():
    stream = io.BytesIO()
    np.save(stream, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ad.DecodingError) as info:
        ad.Decoder([])({"__key__": "k", "npy": stream.getvalue()})
    assert isinstance(info.value.__cause__, ValueError)


def test_handle_extension_with_dots_and_case():
    handler = ad.handle_extension("seg.png mask", lambda data: ("hit", data))
    assert handler(".x.seg.png", b"1") == ("hit", b"1")
    assert handler(".SEG.PNG", b"2") == ("hit", b"2")
    assert handler(".png", b"3") is None
    assert handler(".mask", b"4") == ("hit", b"4")
    decoded = ad.Decoder([handler])({"__key__": "k", "seg.png": b"a", "png": b"b"})
    assert decoded["seg.png"] == ("hit", b"a") and decoded["png"] == b"b"


def test_handler_order_continue_only_and_partial():
    def upper_first(key, data):
        return Continue(key, data.upper()) if key.endswith(".txt") else None

    Continue = ad.Continue
    decoder = ad.Decoder([upper_first])
    assert decoder({"__key__": "k", "txt": b"abc"})["txt"] == "ABC"
    only = ad.Decoder([], only="cls")({"__key__": b"k", "cls": b"1", "txt": b"x"})
    assert only == {"__key__": "k", "cls": 1, "txt": b"x"}
    partial = ad.Decoder([], partial=True)({"__key__": "k", "cls": 5, "txt": b"x"})
    assert partial == {"__key__": "k", "cls": 5, "txt": "x"}
    with pytest.raises(ad.DecodingError, match="not bytes"):
        ad.Decoder([])({"__key__": "k", "cls": 5})
    assert ad.Decoder([], pre=[], post=[])({"__key__": "k", "cls": b"1"}) == {"__key__": "k", "cls": b"1"}
    with pytest.raises(TypeError):
        ad.Decoder(ad.gzfilter)


@pytest.mark.parametrize(
    "field, data, handlers, reference_fails",
    [
        ("json", b'{"a": ', [], True),
        ("png", image_bytes("RGB", "PNG")[:60], [ad.imagehandler("rgb8")], True),
        # webdataset decodes a chunk of length -1 into an empty list without complaint
        ("ten", b"~TenBin~" + b"\xff" * 8, [], False),
        ("cls", b"seven", [], True),
    ],
)
def test_bad_fields_raise_decoding_error_naming_key_field_url(field, data, handlers, reference_fails):
    sample = {"__key__": "sample-42", "__url__": "shards/train-000.tar", field: data}
    with pytest.raises(ad.DecodingError) as info:
        ad.Decoder(handlers)(sample)
    exn = info.value
    assert (exn.key, exn.k, exn.field, exn.url) == ("sample-42", field, field, "shards/train-000.tar")
    assert exn.sample is sample
    assert exn.__cause__ is not None
    text = str(exn)
    assert "sample-42" in text and repr(field) in text and "shards/train-000.tar" in text
    restored = pickle.loads(pickle.dumps(exn))
    assert (restored.key, restored.k, restored.url) == ("sample-42", field, "shards/train-000.tar")
    assert str(restored) == text
    ref_decoder = ref.Decoder([ref.imagehandler("rgb8")] if handlers else [])
    if reference_fails:
        with pytest.raises(ref.DecodingError):
            ref_decoder(sample)
    else:
        assert ref_decoder(sample)[field] == []


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision installed")
def test_torch_video_without_torchvision_says_so():
    assert ad.torch_video(".txt", b"x") is None
    with pytest.raises(ImportError, match="torchvision"):
        ad.torch_video(".mp4", b"x")


@pytest.mark.skipif(importlib.util.find_spec("torchaudio") is not None, reason="torchaudio installed")
def test_torch_audio_without_torchaudio_says_so():
    assert ad.torch_audio(".png", b"x") is None
    with pytest.raises(ImportError, match="torchaudio"):
        ad.torch_audio(".wav", b"x")


def test_metadata_bytes_become_str_and_default_decoder():
    decoded = ad.default_decoder({"__key__": b"k", "__url__": b"u", "__odd__": b"\xff", "cls": b"1"})
    assert decoded == {"__key__": "k", "__url__": "u", "__odd__": b"\xff", "cls": 1}


def test_gzfilter_continue():
    result = ad.gzfilter(".txt.gz", gzip.compress(b"hi"))
    assert isinstance(result, ad.Continue) and (result.key, result.data) == (".txt", b"hi")
    assert ad.gzfilter(".txt", b"hi") is None
    assert ad.default_pre_handlers == [ad.gzfilter] and ad.default_post_handlers == [ad.basichandlers]
