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
from .filters import pipelinefilter
from .handlers import reraise_exception

__all__ = ["decode_images", "native_mode", "native_options", "NATIVE_EXTENSIONS"]

# The image formats the core decodes (by magic bytes): JPEG, PNG and binary PGM/PPM.
NATIVE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "ppm", "pgm", "pnm"})

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
    size: tuple[int, int] | None = None,
    crop: str = "center",
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: float = 0.0,
    seed: int | None = None,
    keep_bytes_on_error: bool = False,
) -> dict[str, Any]:
    """The `images=` options of `ShardReader` for an image spec (raises ValueError for a PIL spec)."""
    mode = native_mode(imagespec)
    if mode is None:
        raise ValueError(f"image spec {imagespec!r} is decoded by Pillow, not on the reader threads")
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    return {
        "mode": mode,
        "extensions": sorted({e.lower() for e in extensions} & NATIVE_EXTENSIONS),
        "size": None if size is None else (int(size[0]), int(size[1])),
        "crop": crop,
        "scale": tuple(scale),
        "ratio": tuple(ratio),
        "flip": float(flip),
        "seed": seed % 2**64,
        "keep_bytes_on_error": keep_bytes_on_error,
    }


class FinishImages:
    """The Python half of `decode_images`: turns the uint8 arrays decoded on the reader threads into the
    spec's form (float, torch), and raises `DecodingError` for fields that failed to decode (through
    `handler`, per sample)."""

    def __init__(self, imagespec: str, handler: Callable[[BaseException], bool] = reraise_exception) -> None:
        self.image = ImageHandler(imagespec)
        self.handler = handler

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


def _decode_images(
    data: Iterable[dict[str, Any]],
    imagespec: str = "rgb8",
    *,
    size: tuple[int, int] | None = None,
    crop: str = "center",
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: float = 0.0,
    seed: int | None = None,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    handler: Callable[[BaseException], bool] = reraise_exception,
) -> Iterator[dict[str, Any]]:
    """Decode (and crop, resize, flip) image fields in this process with the core's decoder; the fallback
    for `decode_images` where it cannot run on the reader threads."""
    options = native_options(
        imagespec, extensions, size=size, crop=crop, scale=scale, ratio=ratio, flip=flip, seed=seed
    )
    wanted = set(options["extensions"])
    finish = ImageHandler(imagespec).finish
    transform = {k: options[k] for k in ("size", "crop", "scale", "ratio", "flip")}
    for count, sample in enumerate(data):
        try:
            result = dict(sample)
            for k, v in sample.items():
                if k[:2] == "__" or not isinstance(v, bytes) or k.rsplit(".", 1)[-1].lower() not in wanted:
                    continue
                try:
                    array = _core.decode_image(
                        v, options["mode"], seed=(options["seed"] + count) % 2**64, **transform
                    )
                except ValueError as exn:
                    raise DecodingError(url=sample.get("__url__"), key=sample.get("__key__"), k=k) from exn
                result[k] = finish(array)
        except Exception as exn:
            if handler(exn):
                continue
            break
        yield result


decode_images = pipelinefilter(_decode_images)
