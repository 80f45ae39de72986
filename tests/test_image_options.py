"""`fastwds.ImageOptions`: the one place image decoding options and their defaults live. The reader's
`images=`, `decode_image`, `image_crop_params` and the fluent `decode_images` all take them."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

import fastwds
from fastwds import _core


def jpeg(width: int = 64, height: int = 48) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_defaults_replace_and_pickle() -> None:
    options = fastwds.ImageOptions()
    assert (options.mode, options.size, options.crop, options.flip, options.seed) == (
        "rgb8",
        None,
        "center",
        0.0,
        0,
    )
    assert options.scale == (0.08, 1.0) and options.ratio == pytest.approx((3 / 4, 4 / 3))
    assert set(options.extensions) == set(_core.NATIVE_IMAGE_EXTENSIONS) >= {"jpg", "png", "pbm"}
    cropped = options.replace(size=(32, 32), crop="random_resized", seed=7)
    assert (cropped.size, cropped.crop, cropped.seed) == ((32, 32), "random_resized", 7)
    assert options.size is None, "replace makes a copy"
    assert pickle.loads(pickle.dumps(cropped)) == cropped
    assert fastwds.ImageOptions(**cropped.asdict()) == cropped
    assert "random_resized" in repr(cropped)


def test_bad_options_fail_when_made() -> None:
    with pytest.raises(ValueError, match="mode"):
        fastwds.ImageOptions("cmyk")
    with pytest.raises(ValueError, match="crop"):
        fastwds.ImageOptions(size=(8, 8), crop="middle")
    with pytest.raises(TypeError):
        fastwds.ImageOptions(sizes=(8, 8))
    with pytest.raises(TypeError):
        fastwds.ShardReader([], images={"sizes": (8, 8)})


def test_every_entry_point_decodes_the_same_with_the_same_options(tmp_path) -> None:
    data = jpeg()
    options = fastwds.ImageOptions("rgb8", size=(24, 24), crop="random_resized", seed=3, flip=0.5)
    by_options = _core.decode_image(data, options)
    by_keywords = _core.decode_image(data, "rgb8", size=(24, 24), crop="random_resized", seed=3, flip=0.5)
    assert by_options.shape == (24, 24, 3) and np.array_equal(by_options, by_keywords)
    # The reader threads mix each image's key and field into the seed; with the in-process stage's seed the
    # decode is the same.
    path = tmp_path / "one.tar"
    with fastwds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "k", "jpg": data})
    (sample,) = list(fastwds.ShardReader([str(path)], images=options))
    seed = fastwds.images.image_seed(3, 0, "k", "jpg")
    assert np.array_equal(sample["jpg"], _core.decode_image(data, options, seed=seed))
    top, left, height, width, flipped = fastwds.images.image_crop_params(48, 64, (24, 24), crop="center")
    assert (top, left, height, width, flipped) == (0.0, 8.0, 48.0, 48.0, False)
