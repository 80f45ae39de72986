"""Image decoding on the reader threads: what the tar stage asks the core for, and the Python stage after it.

`WebDataset(...).decode("rgb8")` (and the other numpy/torch image specs) decodes JPEG/PNG/PPM fields in the
Rust threads that read the shards, pixel-identical to Pillow, when `decode` directly follows the tar stage;
`decode_images(...)` adds a crop, resize and flip done in the same threads. Everywhere else (a `DataPipeline`,
a stage in between) the same stage decodes in the calling process with the same Rust decoder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import _core
from .autodecode import IMAGE_EXTENSIONS, DecodingError, ImageHandler
from .handlers import reraise_exception

__all__ = [
    "DecodeImages",
    "ImageOptions",
    "image_crop_params",
    "decode_images",
    "image_seed",
    "native_mode",
    "native_options",
    "NATIVE_EXTENSIONS",
]

# How image fields are decoded (one set of defaults, in the core), and the crop a decode takes.
ImageOptions = _core.ImageOptions
image_crop_params = _core.image_crop_params

# The image formats the core decodes (by magic bytes): JPEG, PNG and binary PBM/PGM/PPM.
NATIVE_EXTENSIONS = frozenset(_core.NATIVE_IMAGE_EXTENSIONS)

# Image spec -> the uint8 layout the core produces for it; the float and torch forms are made from that.
_NATIVE_MODES = {
    "l8": "l8",
    "l": "l8",
    "torchl8": "l8",
    "torchl": "l8",
    "rgb8": "rgb8",
    "rgb": "rgb8",
    "torchrgb8": "rgb8",
    "torchrgb": "rgb8",
    "torch": "rgb8",
    "rgba8": "rgba8",
    "rgba": "rgba8",
    "torchrgba8": "rgba8",
    "torchrgba": "rgba8",
}


def native_mode(imagespec: str) -> str | None:
    """The core's output mode for an image spec, or None for specs it cannot produce (the PIL ones)."""
    return _NATIVE_MODES.get(imagespec.lower())


def native_options(
    imagespec: str,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    *,
    seed: int | None = None,
    **transform: Any,
) -> _core.ImageOptions:
    """The core's `ImageOptions` for an image spec: its mode, the `extensions` the core decodes, a random seed
    when `seed` is None, and `transform` (`size`, `crop`, `scale`, `ratio`, `flip`, `keep_bytes_on_error`,
    ... as `ImageOptions` takes them). Raises ValueError for a PIL spec."""
    mode = native_mode(imagespec)
    if mode is None:
        raise ValueError(f"image spec {imagespec!r} is decoded by Pillow, not on the reader threads")
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    wanted = sorted({e.lower() for e in extensions} & NATIVE_EXTENSIONS)
    return _core.ImageOptions(mode, extensions=wanted, seed=seed % 2**64, **transform)


class FinishImages:
    """The Python half of `decode_images`: turns the uint8 arrays decoded on the reader threads into the
    spec's form (float, torch), and raises `DecodingError` for fields that failed to decode (through
    `handler`, per sample)."""

    def __init__(self, imagespec: str, handler: Callable[[BaseException], bool] = reraise_exception) -> None:
        self.image = ImageHandler(imagespec)
        self.handler = handler

    def __repr__(self) -> str:
        return f"<decode_images ({self.image.imagespec!r},) {{'on': 'reader threads'}}>"

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Finish each sample of `src`."""
        image = self.image
        for sample in src:
            try:
                for k, v in sample.items():
                    if isinstance(v, _core.ImageDecodeError):
                        raise DecodingError(url=sample.get("__url__"), key=sample.get("__key__"), k=k) from v
                    if k[:2] != "__" and not isinstance(v, (bytes, str)):
                        sample[k] = image.finish(v)
            except Exception as exn:
                if self.handler(exn):
                    continue
                break
            yield sample


_MASK64 = 2**64 - 1


def _fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & _MASK64
    return h


def _mix(a: int, b: int) -> int:
    """SplitMix64's finaliser over a combination of two words (as the reader threads compute it)."""
    z = (a + b * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _utf8(text: Any) -> bytes:
    if isinstance(text, bytes):
        return text
    return str(text).encode("utf-8", "surrogatepass")


def image_seed(seed: int, epoch: int, key: Any, field: str) -> int:
    """The seed of one image's random crop and flip: a function of (seed, epoch, sample key, field name)
    only, the same the reader threads use, so an image gets the same crop wherever it is decoded."""
    field_hash = _fnv1a(_utf8(field))
    rotated = ((field_hash << 1) | (field_hash >> 63)) & _MASK64
    return _mix(_mix(seed % 2**64, epoch % 2**64), _fnv1a(_utf8(key)) ^ rotated)


class DecodeImages:
    """The in-process `decode_images` stage: decodes (and crops, resizes, flips) image fields with the core's
    decoder where the stage cannot run on the reader threads.

    Each pass over it is an epoch (`epoch` is the last one; `WebDataset.set_epoch` sets it), and each image's
    random draws come from `image_seed(seed, epoch, key, field)`, as on the reader threads.
    """

    def __init__(
        self,
        imagespec: str = "rgb8",
        *,
        seed: int | None = None,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
        handler: Callable[[BaseException], bool] = reraise_exception,
        **transform: Any,
    ) -> None:
        self.imagespec = imagespec
        self.options = native_options(imagespec, extensions, seed=seed, **transform)
        self.handler = handler
        self.epoch = -1

    def __repr__(self) -> str:
        shown = {
            k: v
            for k, v in self.options.asdict().items()
            if k not in ("extensions", "keep_bytes_on_error", "epoch")
        }
        return f"<decode_images ({self.imagespec!r},) {shown}>"

    def __call__(self, data: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Decode the image fields of the samples of `data` (one epoch)."""
        self.epoch += 1
        epoch = self.epoch
        options = self.options
        handler = self.handler
        wanted = set(options.extensions)
        finish = ImageHandler(self.imagespec).finish
        seed = options.seed
        for sample in data:
            try:
                result = dict(sample)
                key = sample.get("__key__", "")
                for k, v in sample.items():
                    if (
                        k[:2] == "__"
                        or not isinstance(v, bytes)
                        or k.rsplit(".", 1)[-1].lower() not in wanted
                    ):
                        continue
                    try:
                        array = _core.decode_image(v, options, seed=image_seed(seed, epoch, key, k))
                    except ValueError as exn:
                        raise DecodingError(
                            url=sample.get("__url__"), key=sample.get("__key__"), k=k
                        ) from exn
                    result[k] = finish(array)
            except Exception as exn:
                if handler(exn):
                    continue
                break
            yield result


def decode_images(imagespec: str = "rgb8", **kw: Any) -> DecodeImages:
    """The `decode_images(spec, seed=, extensions=, handler=, **transform)` stage for a pipeline, decoding in
    this process (see `DecodeImages`; `transform` as `ImageOptions` takes it: `size`, `crop`, `scale`, `ratio`,
    `flip`, ...)."""
    return DecodeImages(imagespec, **kw)
