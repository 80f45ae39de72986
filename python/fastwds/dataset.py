"""webdataset's first API, as early notebooks use it: `WebDataset(urls, size, extensions=..., decoder=...)`.

    ds = fastwds.dataset.WebDataset("shards-{000..009}.tar", 1000, extensions="png;jpg cls", decoder="rgb")
    for image, cls in ds: ...

One object does everything: it reads the shards (through the Rust core), decodes each field by extension,
and yields dicts or, with `extensions`, tuples. Shards are split among DataLoader workers.
"""

from __future__ import annotations

import io
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import braceexpand

from . import _core, tenbin
from .autodecode import imagespecs, unpickle_loads
from .filters import _shuffle
from .handlers import reraise_exception
from .pytorch import LazyIterableDataset
from .reader import _is_reraise, _ShardFeed, core_handler
from .shardlists import split_by_worker

__all__ = ["WebDataset", "default_handlers", "imagespecs", "imagehandler", "make_decoder", "maybe_int"]

Handler = Callable[[BaseException], bool]


def imagehandler(data: bytes, imagespec: str) -> Any:
    """Decode image bytes as `imagespec` says: numpy uint8 (`rgb8`, `l8`, `rgba8`, HxW[xC]), numpy float32 in
    [0, 1] (`rgb`, `l`, `rgba`), torch CxHxW (`torchrgb8`, `torchrgb`, ...) or a PIL image (`pil`, `pill`,
    ...). Raises ValueError for an unknown spec."""
    import numpy as np
    import PIL.Image

    spec = imagespec.lower()
    if spec not in imagespecs:
        raise ValueError(f"unknown image specification {imagespec!r}; one of {sorted(imagespecs)}")
    atype, etype, mode = imagespecs[spec]
    with io.BytesIO(data) as stream:
        img: PIL.Image.Image = PIL.Image.open(stream)
        img.load()
        img = img.convert(mode.upper())
    if atype == "pil":
        return img
    # A writable array (np.asarray of a PIL image is read-only, which torch warns about).
    result = np.array(img)
    if atype == "numpy":
        return result if etype == "uint8" else result.astype("f") / 255.0
    import torch

    if result.ndim == 3:
        result = result.transpose(2, 0, 1)
    tensor = torch.tensor(result)
    return tensor if etype == "uint8" else tensor.type(torch.float) / 255.0


def maybe_int(data: bytes) -> Any:
    """Return `int(data)`, or `data` unchanged when it is not an integer."""
    try:
        return int(data)
    except ValueError:
        return data


def _utf8(data: bytes) -> str:
    return data.decode("utf-8")


class _ImageDecoder:
    """Picklable `data -> image` for one image spec."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def __call__(self, data: bytes) -> Any:
        return imagehandler(data, self.spec)


def _msgpack_loads(data: bytes) -> Any:
    import msgpack

    return msgpack.unpackb(data)


def _make_handlers(imagetype: str) -> dict[str, Callable[[bytes], Any]]:
    result: dict[str, Callable[[bytes], Any]] = {}
    for extension in ["cls", "cls2", "class", "count", "index", "inx", "id"]:
        result[extension] = maybe_int
    for extension in ["txt", "text", "transcript"]:
        result[extension] = _utf8
    for extension in ["png", "jpg", "jpeg", "img", "image", "pbm", "pgm", "ppm"]:
        result[extension] = _ImageDecoder(imagetype)
    for extension in ["pyd", "pickle"]:
        result[extension] = unpickle_loads  # refused in secure mode (WDS_SECURE=1)
    for extension in ["json", "jsn"]:
        result[extension] = json.loads
    for extension in ["ten", "tb"]:
        result[extension] = tenbin.decode_buffer
    for extension in ["mp", "msgpack", "msg"]:
        result[extension] = _msgpack_loads
    return result


default_handlers: dict[str, dict[str, Callable[[bytes], Any]]] = {
    key: _make_handlers(key) for key in imagespecs
}
"""Decoder name -> {extension: function(bytes)}; modify to add extensions, e.g.
`default_handlers["rgb"]["mp4"] = my_decoder`."""


def _decode_by_extension(
    sample: dict[str, Any], handlers: dict[str, Callable[[bytes], Any]]
) -> dict[str, Any]:
    result = {}
    for key, value in sample.items():
        if key.startswith("_"):
            result[key] = value.decode("utf-8") if isinstance(value, bytes) else value
            continue
        if isinstance(value, (int, float, str)) or value is None:
            result[key] = value
            continue
        extension = re.sub(r".*\.", "", key).lower()
        decoder = handlers.get(extension)
        result[key] = value if decoder is None else decoder(value)
    return result


class _HandlerDecoder:
    """Picklable sample decoder over an extension -> function dict (or a `default_handlers` name)."""

    def __init__(self, handlers: dict[str, Callable[[bytes], Any]] | str) -> None:
        self.handlers = handlers

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        handlers = default_handlers[self.handlers] if isinstance(self.handlers, str) else self.handlers
        return _decode_by_extension(sample, handlers)


def make_decoder(spec: Any) -> Callable[[dict[str, Any]], Any] | None:
    """Return the sample decoder for a `decoder=` value: an image spec name (a `default_handlers` key; True
    means "rgb"), a dict extension -> function, a function sample -> sample, or None/False (no decoding,
    returns None). Raises ValueError for anything else."""
    if spec is True:
        spec = "rgb"
    if spec is False or spec is None:
        return None
    if isinstance(spec, str):
        if spec not in default_handlers:
            raise ValueError(f"{spec}: unknown decoder; one of {sorted(default_handlers)}")
        return _HandlerDecoder(spec)
    if isinstance(spec, dict):
        return _HandlerDecoder(spec)
    if callable(spec):
        return spec
    raise ValueError(f"{spec}: unknown decoder spec")


def _getfirst(sample: dict[str, Any], keys: list[str]) -> Any:
    for key in keys:
        value = sample.get(key)
        if value is not None:
            return value
    return None


def _decode_container(container: str, fname: str, data: bytes) -> Any:
    if container.endswith("mp"):
        import msgpack

        sample = msgpack.unpackb(data)
        return {k.decode("ascii") if isinstance(k, bytes) else k: v for k, v in sample.items()}
    if container.endswith("json"):
        return json.loads(data)
    if container.endswith("pyd"):
        return unpickle_loads(data)
    if container.endswith("ten"):
        return tenbin.decode_buffer(data, infos=False)
    raise ValueError(f"{container}: unknown container format (mp, json, pyd, ten)")


class WebDataset(LazyIterableDataset):
    """Samples of tar shards, decoded, as dicts or (with `extensions`) tuples; webdataset's first API.

    - `urls`: a brace pattern (`"shards-{000..009}.tar"`) or a list of names.
    - `size`: what `len(ds)` returns (the number of samples is whatever the shards hold).
    - `extensions`: `"png;jpg cls"` yields tuples, one element per space-separated group, the first present
      of its `;`-alternatives (None when none is); other fields are not read. None yields dicts.
    - `decoder`: an image spec (`"rgb"`: float32 HxWx3 in [0, 1], `"rgb8"`, `"l"`, `"pil"`, `"torchrgb"`,
      ...; other fields by extension: `cls` -> int, `txt` -> str, `json`, `pyd`, `mp`, `ten`; unknown
      extensions stay bytes), None for raw bytes, a dict extension -> function, or a function on samples.
    - `transforms`: functions applied to tuple positions (`transforms[i % len]` to element i).
    - `shuffle`: 0 reads shards in order; > 0 shuffles the shards; > 1 also shuffles samples through a
      buffer of that size.
    - `opener(url)`: returns a binary stream for each name (names then need not be paths); by default URLs
      are read as local paths, `pipe:`, http(s) or via `fastwds.gopen`.
    - `associate`: a function key -> dict, or a dict key -> dict, merged into each (decoded) sample.
    - `container`: `"mp"`, `"json"`, `"pyd"` or `"ten"`: each member `*.<container>` is one whole sample
      (a msgpack/json/pickle dict keyed by the member name; a tenbin member yields a tuple of arrays).
    - `handler`: what to do with an error (unreadable shard, failed decode): `reraise_exception` (default),
      `warn_and_continue`, ... (true skips, false stops).
    """

    def __init__(
        self,
        urls: str | Iterable[str],
        size: int | None = None,
        extensions: str | list[list[str]] | None = None,
        decoder: Any = "rgb",
        transforms: Callable[[Any], Any] | list[Callable[[Any], Any] | None] | None = None,
        shuffle: int = 0,
        opener: Callable[[str], Any] | None = None,
        associate: Callable[[str], dict[str, Any]] | dict[str, dict[str, Any]] | None = None,
        container: str | None = None,
        handler: Handler = reraise_exception,
    ) -> None:
        self.urls = list(braceexpand.braceexpand(urls)) if isinstance(urls, str) else list(urls)
        self.size = size
        if isinstance(extensions, str):
            extensions = [group.split(";") for group in extensions.split()]
        self.extensions = [list(group) for group in extensions] if extensions is not None else None
        self.decoder = decoder
        make_decoder(decoder)  # fail early on an unknown spec
        if transforms is not None and not isinstance(transforms, (list, tuple)):
            transforms = [transforms]
        self.transforms = list(transforms) if transforms is not None else None
        self.shuffle = shuffle
        self.opener = opener
        self.associate = associate
        self.container = container
        self.handler = handler

    def __len__(self) -> int:
        """Return `size`; TypeError when it was not given."""
        if self.size is None:
            raise TypeError("this WebDataset was created without a size")
        return self.size

    def __bool__(self) -> bool:
        return True

    def _shards(self) -> Iterator[Any]:
        urls = list(split_by_worker(self.urls))
        if self.shuffle > 0:
            random.shuffle(urls)
        for url in urls:
            if self.opener is None:
                yield url
                continue
            try:
                stream = self.opener(url)
            except Exception as exn:
                exn.args = exn.args + (url,)
                if self.handler(exn):
                    continue
                return
            yield {"url": url, "stream": stream}

    def _read(self, feed: _ShardFeed) -> Any:
        handler = core_handler(self.handler)
        if self.container is not None:
            return _core.ShardReader(feed, members=True, handler=handler)
        fields = None
        if self.extensions is not None and self.associate is None and not callable(self.decoder):
            fields = sorted({x for group in self.extensions for x in group})
        return _core.ShardReader(feed, fields=fields, handler=handler)

    def _samples(self, raw: Iterable[dict[str, Any]]) -> Iterator[Any]:
        decoder = make_decoder(self.decoder)
        container = self.container
        associate = self.associate
        extensions = self.extensions
        for item in raw:
            try:
                if container is not None:
                    if not item["fname"].endswith("." + container):
                        continue
                    sample = _decode_container(container, item["fname"], item["data"])
                    if isinstance(sample, list):
                        yield tuple(sample)
                        continue
                    if isinstance(sample, dict):
                        sample["__key__"] = item["fname"]
                else:
                    sample = item
                if decoder is not None:
                    sample = decoder(sample)
                if associate is not None:
                    key = sample["__key__"]
                    sample.update(associate(key) if callable(associate) else associate.get(key, {}))
                if extensions is not None:
                    sample = tuple(_getfirst(sample, group) for group in extensions)
            except Exception as exn:
                if self.handler(exn):
                    continue
                return
            yield sample

    @staticmethod
    def _transformed(samples: Iterable[Any], transforms: list[Callable[[Any], Any] | None]) -> Iterator[Any]:
        for sample in samples:
            if not isinstance(sample, (tuple, list)):
                raise TypeError("transforms= apply to tuple samples: give extensions= as well")
            result = list(sample)
            n = len(transforms)
            for i, value in enumerate(sample):
                f = transforms[i % n]
                if f is not None:
                    result[i] = f(value)
            yield tuple(result)

    def __iter__(self) -> Iterator[Any]:
        """Yield the samples of this worker's shards."""
        feed = _ShardFeed(self._shards(), None if _is_reraise(self.handler) else self.handler)
        raw = iter(self._read(feed))
        try:
            samples: Iterator[Any] = self._samples(raw)
            if self.shuffle > 1:
                samples = _shuffle(samples, self.shuffle, min(100, self.shuffle))
            if self.transforms:
                samples = self._transformed(samples, self.transforms)
            yield from samples
        finally:
            raw.close()
            feed.close()
