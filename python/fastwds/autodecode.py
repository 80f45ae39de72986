"""Decode the bytes fields of WebDataset samples by file extension (images, text, numbers, arrays, ...).

A `Decoder` runs each field through a list of handlers `handler(key, data)`, where `key` is ".field"; the
first handler that returns something other than None decides the value, a `Continue` result passes a new
key and data on to the remaining handlers (used for `.gz`), and fields no handler takes stay bytes.
Names and behaviour follow webdataset's `autodecode` module so code written for it keeps working.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import numpy as np

from . import utils

__all__ = [
    "IMAGE_EXTENSIONS",
    "Continue",
    "Decoder",
    "DecodingError",
    "ImageHandler",
    "basichandlers",
    "call_extension_handler",
    "cbor_loads",
    "decoders",
    "default_decoder",
    "default_post_handlers",
    "default_pre_handlers",
    "gzfilter",
    "handle_extension",
    "imagehandler",
    "imagespecs",
    "msgpack_loads",
    "npy_loads",
    "npz_loads",
    "pytorch_weights_only",
    "tenbin_loads",
    "torch_audio",
    "torch_loads",
    "torch_video",
    "unpickle_loads",
]

# torch.load(weights_only=...) for `.pth` fields; WDS_PYTORCH_WEIGHTS_ONLY=1 turns it on, as in webdataset.
pytorch_weights_only = os.environ.get("WDS_PYTORCH_WEIGHTS_ONLY", "0") == "1"

# The extensions Pillow can open (the same list as webdataset's): fields the image handlers decode.
IMAGE_EXTENSIONS = (
    "blp bmp dib bufr cur pcx dcx dds ps eps fit fits fli flc ftc ftu gbr gif grib h5 hdf png apng jp2 j2k "
    "jpc jpf jpx j2c icns ico im iim tif tiff jfif jpe jpg jpeg mpg mpeg msp pcd pxr pbm pgm ppm pnm psd bw "
    "rgb rgba sgi ras tga icb vda vst webp wmf emf xbm xpm"
).split()


def _security_enforced() -> bool:
    """True when unpickling and torch.load are refused (`utils.enforce_security`, WDS_SECURE=1)."""
    return bool(utils.enforce_security)


def _extension(key: str) -> str:
    """The last dot-separated component of a key such as ".seg.png"."""
    return key[key.rfind(".") + 1 :]


################################################################
# basic datatypes
################################################################


def torch_loads(data: bytes) -> Any:
    """Loads a `torch.save` payload onto the CPU."""
    import torch

    if _security_enforced():
        raise ValueError("torch.load is not allowed when security is enforced (WDS_SECURE)")
    return torch.load(io.BytesIO(data), weights_only=pytorch_weights_only, map_location="cpu")


def tenbin_loads(data: bytes) -> list[np.ndarray]:
    """Decodes a tenbin buffer into a list of arrays."""
    from . import tenbin

    return tenbin.decode_buffer(data)


def msgpack_loads(data: bytes) -> Any:
    """Decodes msgpack data."""
    import msgpack

    return msgpack.unpackb(data)


def npy_loads(data: bytes) -> np.ndarray:
    """Decodes a `.npy` payload (pickled object arrays are refused)."""
    import numpy.lib.format

    return numpy.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def npz_loads(data: bytes) -> dict[str, np.ndarray]:
    """Decodes a `.npz` payload into a dict of arrays (pickled object arrays are refused)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return dict(archive)


def _cbor_module() -> Any:
    for name in ("cbor", "cbor2"):
        if importlib.util.find_spec(name) is not None:
            return __import__(name)
    return None


def cbor_loads(data: bytes) -> Any:
    """Decodes CBOR data with the `cbor` package (or `cbor2` when that is the one installed)."""
    module = _cbor_module()
    if module is None:
        raise ImportError("decoding .cbor needs the cbor or cbor2 package")
    return module.loads(data)


def unpickle_loads(data: bytes) -> Any:
    """Unpickles data (only use it on trusted datasets)."""
    if _security_enforced():
        raise ValueError("unpickling is not allowed when security is enforced (WDS_SECURE)")
    return pickle.loads(data)


def _utf8(data: bytes) -> str:
    return data.decode("utf-8")


# extension -> decoder(bytes) used by `basichandlers`. Beyond webdataset's table, "class", "count" (ints) and
# "msgpack" are decoded too, as its documentation says they are.
decoders: dict[str, Callable[[bytes], Any]] = {
    "txt": _utf8,
    "text": _utf8,
    "transcript": _utf8,
    "cls": int,
    "cls2": int,
    "class": int,
    "count": int,
    "index": int,
    "inx": int,
    "id": int,
    "json": json.loads,
    "jsn": json.loads,
    "pkl": unpickle_loads,
    "pickle": unpickle_loads,
    "pyd": unpickle_loads,
    "pth": torch_loads,
    "ten": tenbin_loads,
    "tb": tenbin_loads,
    "mp": msgpack_loads,
    "msg": msgpack_loads,
    "msgpack": msgpack_loads,
    "npy": npy_loads,
    "npz": npz_loads,
    "cbor": cbor_loads,
}

_cbor_present: bool | None = None


def basichandlers(key: str, data: bytes) -> Any:
    """Decodes the basic types by extension: text, ints, JSON, pickle, torch, tenbin, msgpack, npy/npz, cbor.

    Returns None for extensions it does not know (and for `.cbor` when no CBOR package is installed).
    """
    global _cbor_present
    extension = _extension(key)
    decoder = decoders.get(extension)
    if decoder is None:
        return None
    if decoder is cbor_loads:
        if _cbor_present is None:
            _cbor_present = _cbor_module() is not None
        if not _cbor_present:
            return None
    return decoder(data)


################################################################
# generic extension handler
################################################################


def call_extension_handler(key: str, data: bytes, f: Callable[[bytes], Any], extensions: list[str]) -> Any:
    """Returns `f(data)` when the key ends with one of the (possibly dotted) extensions, else None."""
    parts = key.lower().split(".")
    for target in extensions:
        target_parts = target.split(".")
        if len(target_parts) > len(parts):
            continue
        if parts[-len(target_parts) :] == target_parts:
            return f(data)
    return None


def handle_extension(extensions: str, f: Callable[[bytes], Any]) -> Callable[[str, bytes], Any]:
    """Makes a handler applying `f` to fields with the given space-separated extensions (case-insensitive).

    An extension may contain dots: `handle_extension("seg.jpg", f)` only takes fields like `x.seg.jpg`.
    """
    return partial(call_extension_handler, f=f, extensions=extensions.lower().split())


################################################################
# images
################################################################

# spec -> (array type, element type, channels)
imagespecs: dict[str, tuple[str, str | None, str]] = {
    "l8": ("numpy", "uint8", "l"),
    "rgb8": ("numpy", "uint8", "rgb"),
    "rgba8": ("numpy", "uint8", "rgba"),
    "l": ("numpy", "float", "l"),
    "rgb": ("numpy", "float", "rgb"),
    "rgba": ("numpy", "float", "rgba"),
    "torchl8": ("torch", "uint8", "l"),
    "torchrgb8": ("torch", "uint8", "rgb"),
    "torchrgba8": ("torch", "uint8", "rgba"),
    "torchl": ("torch", "float", "l"),
    "torchrgb": ("torch", "float", "rgb"),
    "torch": ("torch", "float", "rgb"),
    "torchrgba": ("torch", "float", "rgba"),
    "pill": ("pil", None, "l"),
    "pil": ("pil", None, "rgb"),
    "pilrgb": ("pil", None, "rgb"),
    "pilrgba": ("pil", None, "rgba"),
}


class ImageHandler:
    """Decodes image fields with Pillow into the form an image spec names.

    Specs: `l8 rgb8 rgba8` (numpy uint8 HxW[xC]), `l rgb rgba` (numpy float32 in [0, 1]), `torchl8 torchrgb8
    torchrgba8` (torch uint8, CxHxW), `torchl torchrgb torch torchrgba` (torch float32 in [0, 1], CxHxW),
    `pill pil pilrgb pilrgba` (PIL images). Fields with other extensions are left to other handlers.
    """

    def __init__(self, imagespec: str, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> None:
        spec = imagespec.lower()
        if spec not in imagespecs:
            raise ValueError(f"Unknown imagespec: {imagespec} (known: {' '.join(imagespecs)})")
        self.imagespec = spec
        if isinstance(extensions, str):
            extensions = extensions.split()
        self.extensions = {e.lower() for e in extensions}

    def __call__(self, key: str, data: bytes) -> Any:
        """Decodes the image in `data` if the key's extension is an image extension, else returns None."""
        if _extension(key).lower() not in self.extensions:
            return None
        import PIL.Image

        atype, etype, mode = imagespecs[self.imagespec]
        with io.BytesIO(data) as stream:
            img: PIL.Image.Image = PIL.Image.open(stream)
            img.load()
            img = img.convert(mode.upper())
        if atype == "pil":
            return img
        return self.finish(np.asarray(img))

    def finish(self, result: Any) -> Any:
        """The spec's form of a uint8 array in the spec's mode (HxW or HxWxC), as from Pillow or the reader
        threads: itself, float32 in [0, 1], or a CxHxW torch tensor."""
        atype, etype, _ = imagespecs[self.imagespec]
        if etype == "float":
            result = result.astype(np.float32)
            result /= 255.0
        if atype == "numpy":
            return result
        import torch

        if result.ndim == 3:
            return torch.from_numpy(result.transpose(2, 0, 1).copy())
        return torch.from_numpy(result.copy())

    def __repr__(self) -> str:
        return f"ImageHandler({self.imagespec!r})"


def imagehandler(imagespec: str, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> ImageHandler:
    """Makes an image handler for an image spec (see `ImageHandler`)."""
    return ImageHandler(imagespec, extensions)


################################################################
# video and audio
################################################################

_VIDEO_EXTENSIONS = "mp4 ogv mjpeg avi mov h264 mpg webm wmv".split()
_AUDIO_EXTENSIONS = "flac mp3 sox wav m4a ogg wma".split()


def _decode_via_file(data: bytes, extension: str, load: Callable[[str], Any]) -> Any:
    with tempfile.TemporaryDirectory() as dirname:
        fname = os.path.join(dirname, f"file.{extension}")
        with open(fname, "wb") as stream:
            stream.write(data)
        return load(fname)


def torch_video(key: str, data: bytes) -> Any:
    """Decodes video fields (mp4 ogv mjpeg avi mov h264 mpg webm wmv) with `torchvision.io.read_video`."""
    extension = _extension(key)
    if extension not in _VIDEO_EXTENSIONS:
        return None
    try:
        import torchvision.io  # type: ignore[import-not-found]
    except ImportError as exn:
        raise ImportError(
            f"decoding .{extension} with torch_video needs torchvision (pip install torchvision)"
        ) from exn
    return _decode_via_file(data, extension, lambda f: torchvision.io.read_video(f, pts_unit="sec"))


def torch_audio(key: str, data: bytes) -> Any:
    """Decodes audio fields (flac mp3 sox wav m4a ogg wma) with `torchaudio.load`."""
    extension = _extension(key)
    if extension not in _AUDIO_EXTENSIONS:
        return None
    try:
        import torchaudio  # type: ignore[import-not-found]
    except ImportError as exn:
        raise ImportError(
            f"decoding .{extension} with torch_audio needs torchaudio (pip install torchaudio)"
        ) from exn
    return _decode_via_file(data, extension, torchaudio.load)


################################################################
# decompression
################################################################


class Continue:
    """A handler result meaning "decode `data` further as `key`" (used by decompressors such as gzfilter)."""

    def __init__(self, key: str, data: bytes) -> None:
        self.key, self.data = key, data


def gzfilter(key: str, data: bytes) -> Any:
    """Gunzips `.gz` fields and passes them on to be decoded by their inner extension (x.json.gz -> json)."""
    if not key.endswith(".gz"):
        return None
    return Continue(key[:-3], gzip.decompress(data))


################################################################
# whole samples
################################################################

default_pre_handlers: list[Callable[[str, bytes], Any]] = [gzfilter]
default_post_handlers: list[Callable[[str, bytes], Any]] = [basichandlers]


class DecodingError(Exception):
    """A sample field could not be decoded; `url`, `key` (the sample key), `k` (the field) say which.

    The handler's own exception is the `__cause__`.
    """

    def __init__(
        self, url: str | None = None, key: str | None = None, k: str | None = None, sample: Any = None
    ):
        self.url = url
        self.key = key
        self.k = k
        self.sample = sample
        super().__init__(self._message(""))

    def _message(self, cause: str) -> str:
        text = f"cannot decode field {self.k!r} of sample {self.key!r} (url {self.url!r})"
        return f"{text}: {cause}" if cause else text

    @property
    def field(self) -> str | None:
        """The field that failed (the same as `k`)."""
        return self.k

    def __str__(self) -> str:
        cause = self.__cause__
        if cause is None:
            return self._message(getattr(self, "_cause_text", ""))
        return self._message(f"{type(cause).__name__}: {cause}")

    def __reduce__(self) -> Any:
        # The cause does not survive pickling (e.g. out of a worker process); its text does.
        cause = self.__cause__
        text = f"{type(cause).__name__}: {cause}" if cause is not None else getattr(self, "_cause_text", "")
        return (type(self), (self.url, self.key, self.k, self.sample), {"_cause_text": text})


_BYTES_LIKE = (bytes, bytearray, memoryview)


class Decoder:
    """Decodes samples with a list of handlers: `pre + handlers + post` (gzip first and basic types last).

    `only` limits decoding to the named fields (a list or a space-separated string); `partial=True` lets
    values that are not bytes pass through instead of failing. A handler that raises makes the decoder
    raise `DecodingError` naming the sample key, the field and the url.
    """

    def __init__(
        self,
        handlers: list[Callable[[str, bytes], Any]],
        pre: list[Callable[[str, bytes], Any]] | None = None,
        post: list[Callable[[str, bytes], Any]] | None = None,
        only: Iterable[str] | str | None = None,
        partial: bool = False,
    ) -> None:
        if not isinstance(handlers, list):
            raise TypeError(f"handlers = {handlers!r} must be a list")
        if isinstance(only, str):
            only = only.split()
        self.only = None if only is None else set(only)
        pre = default_pre_handlers if pre is None else pre
        post = default_post_handlers if post is None else post
        for h in [*pre, *handlers, *post]:
            if not callable(h):
                raise TypeError(f"decoder handler {h!r} is not callable")
        self.handlers = list(pre) + list(handlers) + list(post)
        self.partial = partial
        # Set when the tar stage decodes this decoder's image fields on the reader threads.
        self.predecoded: ImageHandler | None = None

    def __repr__(self) -> str:
        defaults = [*default_pre_handlers, *default_post_handlers]
        named = [getattr(h, "__name__", h) for h in self.handlers if not any(h is d for d in defaults)]
        return f"<fastwds.autodecode.Decoder {named} only={self.only} partial={self.partial}>"

    def decode1(self, key: str, data: bytes) -> Any:
        """Decodes one field's bytes; `key` is the field name (without the leading dot)."""
        key = "." + key
        for f in self.handlers:
            result = f(key, data)
            if isinstance(result, Continue):
                key, data = result.key, result.data
                continue
            if result is not None:
                return result
        return data

    def decode(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Decodes every field of a sample; `__key__`-style metadata becomes str."""
        if not isinstance(sample, dict):
            raise TypeError(f"a sample must be a dict, not {type(sample).__name__}")
        result = {}
        only = self.only
        for k, v in sample.items():
            if k[:2] == "__":
                if isinstance(v, bytes):
                    try:
                        v = v.decode("utf-8")
                    except UnicodeDecodeError:
                        pass  # metadata that is not text stays bytes
                result[k] = v
                continue
            if only is not None and k not in only:
                result[k] = v
                continue
            if self.predecoded is not None and not isinstance(v, _BYTES_LIKE):
                # Decoded on the reader threads (a uint8 array), or the reason it could not be.
                if isinstance(v, BaseException):
                    raise DecodingError(
                        url=sample.get("__url__"), key=sample.get("__key__"), k=k, sample=sample
                    ) from v
                result[k] = self.predecoded.finish(v)
                continue
            if isinstance(v, np.ndarray):
                # Already decoded (by `decode_images`, say): nothing left to decode here.
                result[k] = v
                continue
            if not isinstance(v, _BYTES_LIKE):
                if self.partial:
                    result[k] = v
                    continue
                raise DecodingError(
                    url=sample.get("__url__"), key=sample.get("__key__"), k=k, sample=sample
                ) from TypeError(f"field {k!r} is {type(v).__name__}, not bytes (use partial=True)")
            if not isinstance(v, bytes):
                v = bytes(v)
            try:
                result[k] = self.decode1(k, v)
            except Exception as exn:
                raise DecodingError(
                    url=sample.get("__url__"), key=sample.get("__key__"), k=k, sample=sample
                ) from exn
        return result

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Decodes a sample (see `decode`)."""
        return self.decode(sample)


default_decoder = Decoder(default_pre_handlers + default_post_handlers)
