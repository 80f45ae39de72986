"""Image decoding on the reader threads, seen through the pipeline: `decode(spec)` right after the tar stage
gives exactly what webdataset + Pillow give, and `decode_images` crops, resizes and flips reproducibly."""

import io
import tarfile
from typing import Any

import numpy as np
import pytest
import torch
import webdataset
from PIL import Image

import fastwds
from conftest import reference
from fastwds import _core
from fastwds.autodecode import DecodingError
from fastwds.tariterators import ShardSamples


def _image_bytes(kind: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    h, w = 37 + seed % 23, 53 + seed % 31
    base = np.linspace(0, 255, h * w * 3).reshape(h, w, 3) + rng.integers(0, 40, (h, w, 3))
    rgb = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    if kind == "jpg":
        rgb.save(out, "JPEG", quality=85)
    elif kind == "png_rgba":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
        rgba.save(out, "PNG")
    elif kind == "png_palette":
        rgb.convert("P").save(out, "PNG")
    elif kind == "ppm":
        rgb.save(out, "PPM")
    elif kind == "gif":  # Pillow reads it, the core does not: it must fall back to Pillow
        rgb.convert("P").save(out, "GIF")
    return out.getvalue()


def _write_shard(path, samples) -> str:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, fields in samples:
            for name, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    kinds = ["jpg", "png_rgba", "png_palette", "ppm"]
    urls = []
    for s in range(2):
        samples = []
        for i in range(12):
            n = s * 100 + i
            kind = kinds[i % len(kinds)]
            ext = {"png_rgba": "png", "png_palette": "png"}.get(kind, kind)
            fields = {ext: _image_bytes(kind, n), "cls": str(n % 7).encode(), "json": b'{"i": %d}' % n}
            samples.append((f"s{n:05d}", fields))
        urls.append(_write_shard(d / f"img-{s}.tar", samples))
    return urls


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and bool(a.equal(b))
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())
        )
    return a == b


def _same_samples(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = {k: v for k, v in w.items() if k != "__local_path__"}
        g = {k: v for k, v in g.items() if k != "__local_path__"}
        assert g.keys() == w.keys()
        for k in w:
            assert _equal(g[k], w[k]), (w["__key__"], k)


def _tar_stage(ds):
    return next(stage for stage in ds.pipeline if isinstance(stage, ShardSamples))


@pytest.mark.parametrize(
    "spec", ["rgb8", "l8", "rgba8", "rgb", "l", "rgba", "torchrgb8", "torchl8", "torchrgb", "torch", "torchl"]
)
def test_decode_on_reader_threads_equals_webdataset_and_pillow(image_shards, spec) -> None:
    ds = fastwds.WebDataset(image_shards, shardshuffle=False).decode(spec)
    assert _tar_stage(ds).images is not None, "decode right after the tar stage runs on the reader threads"
    want = reference(lambda: list(webdataset.WebDataset(image_shards, shardshuffle=False).decode(spec)))
    _same_samples(list(ds), want)


def test_the_original_pipeline_is_unchanged_by_a_derived_decode(image_shards) -> None:
    raw = fastwds.WebDataset(image_shards, shardshuffle=False)
    tar_stage = _tar_stage(raw)
    decoded = raw.decode("rgb8")
    cropped = raw.decode_images("rgb8", size=(8, 8))
    assert isinstance(next(iter(decoded))["jpg"], np.ndarray)
    assert next(iter(cropped))["jpg"].shape == (8, 8, 3)
    assert isinstance(next(iter(raw))["jpg"], bytes)
    # Each derived pipeline has a tar stage of its own; the original's is the same object, unchanged.
    assert _tar_stage(raw) is tar_stage and not tar_stage.decodes_images
    assert _tar_stage(decoded) is not tar_stage and _tar_stage(cropped) is not tar_stage


def test_with_images_returns_a_new_tar_stage() -> None:
    stage = ShardSamples(select_files=str.isascii, empty_check=False, reader_options={"threads": 2})
    options = fastwds.images.native_options("rgb8", seed=1)
    derived = stage.with_images(options)
    assert derived is not stage and derived.decodes_images and not stage.decodes_images
    assert (derived.images, derived.select_files, derived.empty_check) == (options, str.isascii, False)
    assert derived.reader_options == {"threads": 2}
    with pytest.raises(ValueError, match="decodes images already"):
        derived.with_images(options)


@pytest.mark.parametrize("spec", ["pil", "rgb8"])
def test_pillow_specs_and_only_stay_in_python_with_the_same_result(image_shards, spec) -> None:
    kw = {"only": ["jpg", "png", "cls"]} if spec == "rgb8" else {}
    ds = fastwds.WebDataset(image_shards, shardshuffle=False).decode(spec, **kw)
    assert _tar_stage(ds).images is None
    want = reference(lambda: list(webdataset.WebDataset(image_shards, shardshuffle=False).decode(spec, **kw)))
    got = list(ds)
    if spec == "pil":
        for g, w in zip(got, want):
            for k in ("jpg", "png", "ppm"):
                if k in w:
                    assert np.array_equal(np.asarray(g[k]), np.asarray(w[k]))
    else:
        _same_samples(got, want)


def test_images_the_core_cannot_decode_fall_back_to_pillow(tmp_path) -> None:
    # A ".jpg" member that holds a GIF, and a CMYK JPEG: Pillow decides, exactly as in webdataset.
    cmyk = io.BytesIO()
    Image.new("CMYK", (19, 11), (10, 200, 30, 40)).save(cmyk, "JPEG")
    url = _write_shard(
        tmp_path / "odd.tar",
        [("a", {"jpg": _image_bytes("gif", 1), "cls": b"1"}), ("b", {"jpg": cmyk.getvalue(), "cls": b"2"})],
    )
    want = reference(lambda: list(webdataset.WebDataset(url, shardshuffle=False).decode("rgb8")))
    _same_samples(list(fastwds.WebDataset(url, shardshuffle=False).decode("rgb8")), want)


def _corrupt_shard(tmp_path) -> str:
    good = _image_bytes("jpg", 3)
    return _write_shard(
        tmp_path / "corrupt.tar",
        [
            ("a", {"jpg": good, "cls": b"0"}),
            ("b", {"jpg": good[: len(good) // 3], "cls": b"1"}),
            ("c", {"jpg": good, "cls": b"2"}),
        ],
    )


def test_a_corrupt_image_raises_decoding_error_naming_key_field_and_url(tmp_path) -> None:
    url = _corrupt_shard(tmp_path)
    it = iter(fastwds.WebDataset(url, shardshuffle=False).decode("rgb8"))
    assert next(it)["__key__"] == "a"
    with pytest.raises(DecodingError) as info:
        next(it)
    text = str(info.value)
    assert "b" in text and "jpg" in text and url in text


def test_handlers_skip_a_corrupt_image_like_webdataset(tmp_path) -> None:
    url = _corrupt_shard(tmp_path)
    want = reference(
        lambda: [
            s["__key__"]
            for s in webdataset.WebDataset(url, shardshuffle=False).decode(
                "rgb8", handler=webdataset.ignore_and_continue
            )
        ]
    )
    got = [
        s["__key__"]
        for s in fastwds.WebDataset(url, shardshuffle=False).decode(
            "rgb8", handler=fastwds.ignore_and_continue
        )
    ]
    assert got == want == ["a", "c"]
    native = fastwds.WebDataset(url, shardshuffle=False).decode_images(
        "rgb8", size=(8, 8), handler=fastwds.ignore_and_continue
    )
    assert [s["__key__"] for s in native] == ["a", "c"]
    with pytest.raises(DecodingError, match="jpg"):
        list(fastwds.WebDataset(url, shardshuffle=False).decode_images("rgb8", size=(8, 8)))


def test_decode_images_center_crop_equals_the_core_decoder(image_shards) -> None:
    ds = fastwds.WebDataset(image_shards, shardshuffle=False).decode_images("rgb8", size=(24, 32))
    raw = list(fastwds.WebDataset(image_shards, shardshuffle=False))
    got = list(ds)
    assert len(got) == len(raw) == 24
    for g, r in zip(got, raw):
        field = next(k for k in ("jpg", "png", "ppm") if k in r)
        assert g[field].shape == (24, 32, 3) and g[field].dtype == np.uint8
        assert np.array_equal(g[field], _core.decode_image(r[field], "rgb8", size=(24, 32)))
        assert g["cls"] == r["cls"], "other fields stay bytes"


def test_decode_images_outside_the_tar_stage_gives_the_same_deterministic_result(image_shards) -> None:
    native = list(fastwds.WebDataset(image_shards, shardshuffle=False).decode_images("l8", size=(16, 16)))
    in_python = (
        fastwds.WebDataset(image_shards, shardshuffle=False)
        .map(lambda s: s)
        .decode_images("l8", size=(16, 16))
    )
    assert _tar_stage(in_python).images is None
    got = list(in_python)
    for g, n in zip(got, native):
        field = next(k for k in ("jpg", "png", "ppm") if k in n)
        assert g[field].shape == (16, 16)
        assert np.array_equal(g[field], n[field])


def _crops(ds):
    crops = [next(v for k, v in s.items() if isinstance(v, np.ndarray)) for s in ds]
    assert len(crops) == 24, "one image in each sample of image_shards"
    return crops


def _all_equal(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_random_crops_repeat_for_a_seed_and_change_every_epoch(image_shards) -> None:
    def make(seed):
        return fastwds.WebDataset(image_shards, shardshuffle=False).decode_images(
            "rgb8", size=(20, 20), crop="random_resized", flip=0.5, seed=seed
        )

    ds = make(7)
    epoch0, epoch1 = _crops(ds), _crops(ds)
    assert all(a.shape == (20, 20, 3) for a in epoch0)
    assert any(not np.array_equal(a, b) for a, b in zip(epoch0, epoch1)), "a new epoch draws new crops"
    again = make(7)
    assert _all_equal(epoch0, _crops(again)), "same seed, same first epoch"
    again.set_epoch(1)
    assert _all_equal(epoch1, _crops(again)), "set_epoch(1) replays epoch 1"
    other = _crops(make(8))
    assert any(not np.array_equal(a, b) for a, b in zip(epoch0, other)), "another seed, other crops"


def test_flip_one_mirrors_the_center_crop(image_shards) -> None:
    plain = _crops(fastwds.WebDataset(image_shards, shardshuffle=False).decode_images("rgb8", size=(12, 18)))
    flipped = _crops(
        fastwds.WebDataset(image_shards, shardshuffle=False).decode_images("rgb8", size=(12, 18), flip=1.0)
    )
    assert _all_equal([a[:, ::-1] for a in plain], flipped)


@pytest.mark.parametrize(
    "spec,shape,dtype", [("torchrgb", (3, 10, 10), torch.float32), ("rgb", (10, 10, 3), np.float32)]
)
def test_decode_images_gives_the_spec_form(image_shards, spec, shape, dtype) -> None:
    value = _crops_or_tensors(
        fastwds.WebDataset(image_shards, shardshuffle=False).decode_images(spec, size=(10, 10))
    )
    assert tuple(value.shape) == shape and value.dtype == dtype
    assert float(value.max()) <= 1.0


def _crops_or_tensors(ds):
    sample = next(iter(ds))
    return next(v for k, v in sample.items() if k in ("jpg", "png", "ppm"))


def test_a_small_buffer_counts_decoded_pixels_and_still_delivers_everything(image_shards) -> None:
    samples = list(_core.ShardReader(image_shards, buffer_bytes=1, buffer_samples=1, images={"mode": "rgb8"}))
    assert len(samples) == 24
    assert [s["__key__"] for s in samples] == [s["__key__"] for s in _core.ShardReader(image_shards)]
    assert all(isinstance(s.get("jpg", s.get("png", s.get("ppm"))), np.ndarray) for s in samples)


def test_unknown_image_options_fail_at_construction() -> None:
    with pytest.raises(TypeError, match="sizee"):
        _core.ShardReader([], images={"sizee": (1, 1)})
    with pytest.raises(ValueError, match="mode"):
        _core.ShardReader([], images={"mode": "cmyk"})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_decode_natively_and_see_every_sample_once(image_shards, context: str) -> None:
    # 120x120 RGB outputs are large enough that their storage goes through the spare-buffer pool, which the
    # parent has used before the workers start.
    def dataset() -> Any:
        # A fresh dataset each time: iterating one moves it to its next epoch, whose crops differ.
        return (
            fastwds.WebDataset(image_shards, shardshuffle=False)
            .decode_images("rgb8", size=(120, 120), crop="random_resized", seed=1)
            .to_tuple("__key__", "jpg;png;ppm")
        )

    in_parent = {key: image for key, image in dataset()}
    loader = torch.utils.data.DataLoader(
        dataset(), num_workers=2, batch_size=None, multiprocessing_context=context
    )
    got = {key: image for key, image in loader}
    assert sorted(got) == sorted(f"s{s * 100 + i:05d}" for s in range(2) for i in range(12))
    for key, image in got.items():
        assert image.shape == (120, 120, 3)
        np.testing.assert_array_equal(image, in_parent[key])


def test_decode_after_decode_images_decodes_the_other_fields(image_shards) -> None:
    ds = (
        fastwds.WebDataset(image_shards, shardshuffle=False)
        .decode_images("rgb8", size=(8, 8))
        .decode()
        .to_tuple("jpg;png;ppm", "cls", "json")
    )
    image, cls, meta = next(iter(ds))
    assert image.shape == (8, 8, 3) and cls == 0 and meta == {"i": 0}
