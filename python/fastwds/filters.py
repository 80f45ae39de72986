"""The Python pipeline stages, with the names, signatures and semantics of `webdataset.filters`.

Each stage exists twice: `_name(data, ...)` is a generator over an iterator of samples, and `name(...)` is
its curried form (`pipelinefilter`) that takes the remaining arguments and returns a picklable one-argument
callable, for use in `DataPipeline(...)` and the fluent methods. Samples are usually dicts
`{"__key__": ..., field: value}`; `to_tuple`, `extract_keys` and `batched` turn them into tuples or batches.

Stages that take `handler=` call it with the exception raised on a sample: raising propagates, True skips the
sample, False ends the stage (see `fastwds.handlers`).
"""

from __future__ import annotations

import builtins
import functools
import io
import itertools
import operator
import pickle
import random
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from fnmatch import fnmatch
from functools import reduce
from typing import Any, TypeVar

import numpy as np

from . import utils
from .handlers import reraise_exception
from .utils import PipelineStage

T = TypeVar("T")
Sample = dict[str, Any]
Handler = Callable[[BaseException], bool]

__all__ = [
    "FilterFunction",
    "RestCurried",
    "pipelinefilter",
    "reraise_exception",
    "identity",
    "compose2",
    "compose",
    "pipeline",
    "getfirst",
    "parse_field_spec",
    "transform_with",
    "info",
    "pick",
    "shuffle",
    "detshuffle",
    "select",
    "log_keys",
    "decode",
    "map",
    "rename",
    "associate",
    "map_dict",
    "to_tuple",
    "map_tuple",
    "combine_values",
    "tuple2dict",
    "dict2tuple",
    "default_collation_fn",
    "batched",
    "unlisted",
    "unbatched",
    "rsample",
    "slice",
    "extract_keys",
    "rename_keys",
    "decode_bin",
    "decode_text",
    "decode_pickle",
    "default_decoders",
    "find_decoder",
    "xdecode",
    "Cached",
    "LMDBCached",
]


class FilterFunction:
    """A stage with its arguments bound: calling it with an iterator runs `f(data, *args, **kw)`.

    It pickles as long as `f` and the arguments do, which DataLoader workers started with spawn need.
    """

    def __init__(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.f = f
        self.args = args
        self.kw = kw

    def __call__(self, data: Iterable[Any]) -> Any:
        """Run the stage over `data`."""
        return self.f(data, *self.args, **self.kw)

    def __str__(self) -> str:
        return f"<{self.f.__name__} {self.args} {self.kw}>"

    __repr__ = __str__


class RestCurried:
    """The curried form of a stage: calling it with all arguments but the data returns a `FilterFunction`."""

    def __init__(self, f: Callable[..., Any]) -> None:
        self.f = f

    def __call__(self, *args: Any, **kw: Any) -> FilterFunction:
        """Bind the stage's arguments (all but the data)."""
        return FilterFunction(self.f, *args, **kw)


def pipelinefilter(f: Callable[..., Any]) -> RestCurried:
    """Decorate a stage `f(data, ...)` so that `f(...)` binds the other arguments and returns a stage."""
    result = RestCurried(f)
    functools.update_wrapper(result, f)
    return result


def identity(x: T) -> T:
    """Return `x` unchanged."""
    return x


def compose2(f: Callable[[Any], Any], g: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Return the function `x -> g(f(x))`."""
    return lambda x: g(f(x))


def compose(*args: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Compose functions left to right: `compose(f, g, h)(x) == h(g(f(x)))`."""
    return reduce(compose2, args)


def pipeline(source: Any, *args: Callable[[Any], Any]) -> Any:
    """Apply the stages `args` in order to `source` and return the result."""
    if len(args) == 0:
        return source
    return compose(*args)(source)


def getfirst(
    a: dict[str, Any], keys: str | list[str], default: Any = None, missing_is_error: bool = True
) -> Any:
    """Return the value of the first of `keys` present in `a`.

    `keys` is a list or a string of alternatives separated by `;` (`"jpg;png"`). When none is present, raise
    ValueError if `missing_is_error`, else return `default`.
    """
    if isinstance(keys, str):
        if " " in keys:
            raise ValueError(f"getfirst: spaces are not allowed in a key spec: {keys!r}")
        keys = keys.split(";")
    for k in keys:
        if k in a:
            return a[k]
    if missing_is_error:
        raise ValueError(f"didn't find {keys} in {list(a.keys())}")
    return default


def parse_field_spec(fields: str | list[str]) -> list[list[str]]:
    """Parse `"jpg;png cls"` (or `["jpg;png", "cls"]`) into `[["jpg", "png"], ["cls"]]`."""
    if isinstance(fields, str):
        fields = fields.split()
    return [field.split(";") for field in fields]


def transform_with(sample: Sequence[Any], transformers: Sequence[Callable[[Any], Any] | None] | None) -> Any:
    """Apply `transformers[i]` to `sample[i]` and return the list of results.

    Positions without a transformer (past the end of the list, or None) are kept as they are; with no
    transformers the sample itself is returned.
    """
    if transformers is None or len(transformers) == 0:
        return sample
    if len(transformers) > len(sample):
        raise ValueError(f"transform_with: {len(transformers)} transformers for {len(sample)} values")
    result = list(sample)
    for i, f in enumerate(transformers):
        if f is not None:
            result[i] = f(sample[i])
    return result


###
# The stages
###


def _info(
    data: Iterable[Sample],
    fmt: str | None = None,
    n: int = 3,
    every: int = -1,
    width: int = 50,
    stream: Any = None,
    name: str = "",
) -> Iterator[Sample]:
    """Pass samples through, printing the first `n` (and every `every`-th) to `stream` (default stderr).

    Without `fmt` each printed sample shows one line per key with the value's repr cut to `width`; with `fmt`
    it prints `fmt.format(**sample)`.
    """
    for i, sample in enumerate(data):
        if i < n or (every > 0 and (i + 1) % every == 0):
            out = sys.stderr if stream is None else stream
            if fmt is None:
                print("---", name, file=out)
                for k, v in sample.items():
                    print(k, repr(v)[:width], file=out)
            else:
                print(fmt.format(**sample), file=out)
        yield sample


info = pipelinefilter(_info)


def pick(buf: list[T], rng: random.Random) -> T:
    """Remove and return a random item of `buf` (the last item takes its place)."""
    k = rng.randint(0, len(buf) - 1)
    sample = buf[k]
    buf[k] = buf[-1]
    buf.pop()
    return sample


def _randbelow_of(rng: Any) -> Callable[[int], int]:
    """Return `n -> rng.randint(0, n - 1)`, as a faster function drawing the same numbers when it can.

    For `random.Random` and subclasses that leave randint and randrange alone, randint(0, n - 1) is
    `_randbelow(n)` (whichever variant the class uses); calling it directly skips two layers of argument
    checking per sample.
    """
    cls = type(rng)
    if isinstance(rng, random.Random) and cls.randint is random.Random.randint:
        if cls.randrange is random.Random.randrange:
            return rng._randbelow  # type: ignore[attr-defined]
    return lambda n: rng.randint(0, n - 1)


def _shuffle(
    data: Iterable[T],
    bufsize: int = 1000,
    initial: int = 100,
    rng: random.Random | None = None,
    seed: Any = None,
    handler: Handler | None = None,
) -> Iterator[T]:
    """Shuffle samples through a buffer of `bufsize`, starting to yield once `initial` samples are buffered.

    The order is webdataset's for the same generator: `rng=random.Random(s)` or `seed=s` give the same order
    as `webdataset.filters._shuffle` with the same argument. With neither, the generator is seeded from the OS
    entropy source on each call, so each pass and each process shuffle differently (webdataset seeds from
    the pid and the time, with the same intent). `data` may be any iterable.
    """
    if seed is not None:
        if rng is not None:
            raise ValueError("shuffle: give rng or seed, not both")
        rng = random.Random(seed)
    elif rng is None:
        rng = random.Random()
    randbelow = _randbelow_of(rng)
    source = iter(data)
    initial = min(initial, bufsize)
    buf: list[T] = []
    append = buf.append
    pop = buf.pop
    # Each round takes up to two samples and gives one back, so the buffer fills while yielding; this exact
    # schedule (and the swap-with-last removal) is what makes the order equal to webdataset's.
    for sample in source:
        append(sample)
        if len(buf) < bufsize:
            try:
                append(next(source))
            except StopIteration:
                pass
        n = len(buf)
        if n >= initial:
            k = randbelow(n)
            last = pop()
            if k < n - 1:
                sample = buf[k]
                buf[k] = last
                yield sample
            else:
                yield last
    while buf:
        n = len(buf)
        k = randbelow(n)
        last = pop()
        if k < n - 1:
            sample = buf[k]
            buf[k] = last
            yield sample
        else:
            yield last


shuffle = pipelinefilter(_shuffle)


def _epoch_seed(seed: Any, epoch: int) -> Any:
    # webdataset computes seed + epoch, which crashes for the string seed that WDS_SEED gives; a numeric string
    # counts as its number so WDS_SEED=5 and seed=5 agree, any other string seeds from "seed/epoch".
    if isinstance(seed, str):
        try:
            seed = int(seed)
        except ValueError:
            return f"{seed}/{epoch}"
    if seed is None:
        seed = 0
    return seed + epoch


class detshuffle(PipelineStage):
    """A sample shuffle that is deterministic per epoch: pass `e` (counting from `epoch + 1`) uses seed
    `seed + e`, so each pass shuffles differently and every run repeats the same sequence of orders.

    `seed` may be an int or a string (as from the WDS_SEED environment variable).
    """

    def __init__(self, bufsize: int = 1000, initial: int = 100, seed: Any = 0, epoch: int = -1) -> None:
        self.bufsize = bufsize
        self.initial = initial
        self.seed = seed
        self.epoch = epoch

    def __repr__(self) -> str:
        kw = {"initial": self.initial, "seed": self.seed, "epoch": self.epoch}
        return f"<detshuffle ({self.bufsize},) {kw}>"

    def next_generator(self) -> random.Random:
        """Advance to the next epoch and return its generator."""
        self.epoch += 1
        return random.Random(_epoch_seed(self.seed, self.epoch))

    def run(self, src: Iterable[T]) -> Iterator[T]:
        """Shuffle `src` with the next epoch's generator."""
        return _shuffle(src, self.bufsize, self.initial, self.next_generator())


def _select(data: Iterable[T], predicate: Callable[[T], Any]) -> Iterator[T]:
    """Keep the samples for which `predicate(sample)` is true."""
    return filter(predicate, data)


select = pipelinefilter(_select)


def _log_keys(data: Iterable[Sample], logfile: str | None = None) -> Iterator[Sample]:
    """Pass samples through, appending `index, __worker__, __rank__, __key__` lines to `logfile` if given."""
    if logfile is None or logfile == "":
        yield from data
        return
    import fcntl

    with open(logfile, "a") as stream:
        for i, sample in enumerate(data):
            line = f"{i}\t{sample.get('__worker__')}\t{sample.get('__rank__')}\t{sample.get('__key__')}\n"
            # Several workers append to the same file; the lock keeps their lines whole.
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
            try:
                stream.write(line)
                stream.flush()
            finally:
                fcntl.flock(stream.fileno(), fcntl.LOCK_UN)
            yield sample


log_keys = pipelinefilter(_log_keys)


def _decode(
    data: Iterable[Sample], *args: str | Callable[..., Any], handler: Handler = reraise_exception, **kw: Any
) -> Iterator[Sample]:
    """Decode the fields of each sample with `fastwds.autodecode.Decoder`.

    `args` are decoder handlers; a string is an image spec (`"rgb"`, `"pil"`, `"torchrgb8"`, ...). `kw` go to
    the Decoder (`only=`, `partial=`, `pre=`, `post=`).
    """
    from . import autodecode

    handlers = [autodecode.imagehandler(x) if isinstance(x, str) else x for x in args]
    decoder = autodecode.Decoder(handlers, **kw)
    for sample in data:
        if not isinstance(sample, dict):
            raise TypeError(f"decode: samples must be dicts, got {type(sample).__name__}")
        try:
            decoded = decoder(sample)
        except Exception as exn:
            if handler(exn):
                continue
            break
        yield decoded


decode = pipelinefilter(_decode)


def _map(data: Iterable[Any], f: Callable[[Any], Any], handler: Handler = reraise_exception) -> Iterator[Any]:
    """Replace each sample by `f(sample)`; a None result drops the sample.

    When both the sample and the result are dicts, the result gets the sample's `__key__`.
    """
    for sample in data:
        try:
            result = f(sample)
        except Exception as exn:
            if handler(exn):
                continue
            break
        if result is None:
            continue
        if isinstance(sample, dict) and isinstance(result, dict):
            result["__key__"] = sample.get("__key__")
        yield result


map = pipelinefilter(_map)


def _rename(
    data: Iterable[Sample], handler: Handler = reraise_exception, keep: bool = True, **kw: str | list[str]
) -> Iterator[Sample]:
    """Rename fields: `rename(image="jpg;png", label="cls")` stores the first present alternative as the new name.

    A missing field raises ValueError (through `handler`). With `keep=True` the other fields stay (the renamed
    source fields are dropped); with `keep=False` the result has only the new names.
    """
    replaced = {x for v in kw.values() for x in (v.split(";") if isinstance(v, str) else v)}
    for sample in data:
        try:
            renamed = {k: getfirst(sample, v, missing_is_error=True) for k, v in kw.items()}
            if keep:
                result = {k: v for k, v in sample.items() if k not in replaced}
                result.update(renamed)
            else:
                result = renamed
        except Exception as exn:
            if handler(exn):
                continue
            break
        yield result


rename = pipelinefilter(_rename)


def _associate(
    data: Iterable[Sample], associator: dict[str, Any] | Callable[[str], dict[str, Any]], **kw: Any
) -> Iterator[Sample]:
    """Merge extra fields into each sample: `associator(key)` or `associator.get(key, {})` (in place)."""
    for sample in data:
        if callable(associator):
            extra = associator(sample["__key__"])
        else:
            extra = associator.get(sample["__key__"], {})
        sample.update(extra)
        yield sample


associate = pipelinefilter(_associate)


def _map_dict(
    data: Iterable[Sample], handler: Handler = reraise_exception, **kw: Callable[[Any], Any]
) -> Iterator[Sample]:
    """Apply `kw[field]` to each named field of the sample (in place); a missing field is an error (KeyError)."""
    if not kw:
        raise ValueError("map_dict: give at least one field=function")
    for key, f in kw.items():
        if not callable(f):
            raise TypeError(f"map_dict: {key}={f!r} is not callable")
    items = list(kw.items())
    for sample in data:
        if not isinstance(sample, dict):
            raise TypeError(f"map_dict: samples must be dicts, got {type(sample).__name__}")
        try:
            for k, f in items:
                sample[k] = f(sample[k])
        except Exception as exn:
            if handler(exn):
                continue
            break
        yield sample


map_dict = pipelinefilter(_map_dict)


def _tuple_getter(args: Sequence[Any]) -> Callable[[dict[str, Any]], tuple] | None:
    """Return a fast `dict sample -> tuple of fields` that raises KeyError when a field is missing.

    None when a spec is not a plain string (lists, or spaces, which getfirst rejects per sample).
    """
    if not all(isinstance(a, str) and " " not in a for a in args):
        return None
    if len(args) == 0:
        return lambda sample: ()
    if not any(";" in a for a in args):
        if len(args) == 1:
            key = args[0]
            return lambda sample: (sample[key],)
        return operator.itemgetter(*args)
    fields = [tuple(a.split(";")) for a in args]

    def get(sample: dict[str, Any]) -> tuple:
        out = []
        for alternatives in fields:
            for k in alternatives:
                if k in sample:
                    out.append(sample[k])
                    break
            else:
                raise KeyError(alternatives)
        return tuple(out)

    return get


def _to_tuple(
    data: Iterable[Sample],
    *args: str | list[str],
    handler: Handler = reraise_exception,
    missing_is_error: bool = True,
    none_is_error: bool | None = None,
) -> Iterator[tuple]:
    """Turn dict samples into tuples of the given fields: `to_tuple("jpg;png", "cls")` or `"jpg;png cls"`.

    A field spec `"a;b"` takes the first present alternative. A missing field raises ValueError if
    `missing_is_error` (else gives None); a None value raises ValueError if `none_is_error` (which defaults
    to `missing_is_error`). Errors go through `handler`.
    """
    if none_is_error is None:
        none_is_error = missing_is_error
    if len(args) == 1 and isinstance(args[0], str) and " " in args[0]:
        args = tuple(args[0].split())
    getter = _tuple_getter(args)
    is_none = functools.partial(operator.is_, None)

    for sample in data:
        try:
            result = None
            if getter is not None and type(sample) is dict:
                try:
                    result = getter(sample)
                except KeyError:
                    pass  # a missing field: getfirst below gives the error (or None) webdataset gives
            if result is None:
                result = tuple(getfirst(sample, f, missing_is_error=missing_is_error) for f in args)
            if none_is_error and any(builtins.map(is_none, result)):
                raise ValueError(f"to_tuple {args} got {sample.keys()}")
        except Exception as exn:
            if handler(exn):
                continue
            break
        yield result


to_tuple = pipelinefilter(_to_tuple)


def _map_tuple(
    data: Iterable[Sequence[Any]], *args: Callable[[Any], Any] | None, handler: Handler = reraise_exception
) -> Iterator[tuple]:
    """Apply `args[i]` to element i of each tuple sample, for the first min(len(args), len(sample)) elements.

    None stands for identity.
    """
    fs = [f if f is not None else utils.identity for f in args]
    for f in fs:
        if not callable(f):
            raise TypeError(f"map_tuple: {f!r} is not callable")
    for sample in data:
        if not isinstance(sample, (list, tuple)):
            raise TypeError(f"map_tuple: samples must be tuples or lists, got {type(sample).__name__}")
        values = list(sample)
        try:
            for i in range(min(len(fs), len(values))):
                values[i] = fs[i](values[i])
        except Exception as exn:
            if handler(exn):
                continue
            break
        yield tuple(values)


map_tuple = pipelinefilter(_map_tuple)


def _is_torch_tensor(x: Any) -> bool:
    # A tensor can only exist if torch was imported, so there is no need to import it to ask.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _same_shapes(b: Sequence[Any]) -> None:
    shapes = {x.shape for x in b}
    if len(shapes) != 1:
        raise ValueError(f"all shapes must be equal in collation, got {shapes}")


def combine_values(b: Sequence[Any], combine_tensors: bool = True, combine_scalars: bool = True) -> Any:
    """Collate one field's values across a batch.

    Python ints/floats (and bools, numpy float64) become a numpy array if `combine_scalars`; torch tensors
    are stacked with `torch.stack` and numpy arrays with `np.array` if `combine_tensors` (all shapes must be
    equal, else ValueError); anything else (strings, bytes, dicts, numpy integer scalars, ...) becomes a list.
    """
    first = b[0]
    if isinstance(first, (int, float)):
        if combine_scalars:
            return np.array(list(b))
        return b
    if _is_torch_tensor(first):
        if combine_tensors:
            import torch

            _same_shapes(b)
            return torch.stack(list(b))
        return b
    if isinstance(first, np.ndarray):
        if combine_tensors:
            _same_shapes(b)
            return np.array(list(b))
        return b
    return list(b)


def tuple2dict(l: dict[Any, Any] | Sequence[Any]) -> dict[Any, Any]:  # noqa: E741
    """Return a dict sample as is, and a tuple sample as `{index: value}`."""
    if isinstance(l, dict):
        return l
    return dict(enumerate(l))


def dict2tuple(d: dict[int, Any]) -> tuple:
    """Turn `{0: a, 1: b, ...}` back into `(a, b, ...)`."""
    return tuple(d[i] for i in range(1 + max(d.keys())))


def default_collation_fn(
    samples: Sequence[dict[str, Any] | Sequence[Any]],
    combine_tensors: bool = True,
    combine_scalars: bool = True,
) -> dict[str, Any] | tuple:
    """Collate a list of samples (all dicts with the same keys, or all tuples) into one batch.

    Each field is collated with `combine_values`; tuple samples give a tuple batch, dict samples a dict
    batch (keys in the first sample's order). Samples with different keys raise ValueError.
    """
    first = samples[0]
    if isinstance(first, (list, tuple)) and all(isinstance(x, (list, tuple)) for x in samples):
        n = len(first)
        if any(len(x) != n for x in samples):
            raise ValueError("keys don't match in different samples")
        return tuple(
            combine_values(list(column), combine_tensors, combine_scalars) for column in zip(*samples)
        )
    rows = [tuple2dict(x) for x in samples]
    keys = list(rows[0].keys())
    keyset = set(keys)
    for row in rows[1:]:
        if row.keys() != keyset:
            raise ValueError("keys don't match in different samples")
    result = {k: combine_values([row[k] for row in rows], combine_tensors, combine_scalars) for k in keys}
    if isinstance(first, (list, tuple)):
        return dict2tuple(result)
    return result


def _batched(
    data: Iterable[Any],
    batchsize: int = 20,
    collation_fn: Callable[[list[Any]], Any] | None = default_collation_fn,
    partial: bool = True,
) -> Iterator[Any]:
    """Group samples into batches of `batchsize`, collated by `collation_fn` (None gives lists).

    A last batch shorter than `batchsize` is yielded only if `partial`. The batches are webdataset's; a full
    batch is yielded as soon as it is full (webdataset waits for the sample after it), so that no sample is
    held between batches, which resumable iteration (`WebDataset.state_dict`) relies on.
    """
    batch: list[Any] = []
    for sample in data:
        batch.append(sample)
        if len(batch) >= batchsize:
            yield batch if collation_fn is None else collation_fn(batch)
            batch = []
    if len(batch) == 0:
        return
    if partial:
        yield batch if collation_fn is None else collation_fn(batch)


batched = pipelinefilter(_batched)


def _unlisted(data: Iterable[list[Any]]) -> Iterator[Any]:
    """Yield the items of each list sample (the inverse of `batched(..., collation_fn=None)`)."""
    for batch in data:
        if not isinstance(batch, list):
            raise TypeError(f"unlisted: expected a list, got {type(batch).__name__}")
        yield from batch


unlisted = pipelinefilter(_unlisted)


def _unbatched(data: Iterable[Any]) -> Iterator[Any]:
    """Split collated batches back into samples: a tuple batch into tuples, a dict batch into dicts.

    A dict batch whose values have different lengths raises ValueError; anything else raises ValueError too.
    """
    for sample in data:
        if isinstance(sample, (list, tuple)):
            n = len(sample[0])
            if all(not isinstance(x, dict) and len(x) == n for x in sample):
                # Iterating an equal-length sequence, array or tensor gives x[0], x[1], ... as indexing does.
                yield from zip(*sample)
            else:
                for i in range(n):
                    yield tuple(x[i] for x in sample)
        elif isinstance(sample, dict):
            lengths = {len(v) for v in sample.values()}
            if len(lengths) != 1:
                raise ValueError(f"unbatched: fields of a dict batch have different lengths {lengths}")
            keys = list(sample.keys())
            for i in range(lengths.pop()):
                yield {k: sample[k][i] for k in keys}
        else:
            raise ValueError(f"unknown sample type: {type(sample)}")


unbatched = pipelinefilter(_unbatched)


def _rsample(data: Iterable[T], p: float = 0.5) -> Iterator[T]:
    """Keep each sample with probability `p`, drawing from the global `random` generator as webdataset does."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"rsample: p must be in [0, 1], got {p}")
    # random.uniform(0.0, 1.0) is 0.0 + 1.0 * random.random(): the same draws, without the extra call.
    draw = random.random
    for sample in data:
        if draw() < p:
            yield sample


rsample = pipelinefilter(_rsample)

slice = pipelinefilter(itertools.islice)
slice.__doc__ = "Take `slice(stop)` or `slice(start, stop[, step])` of the samples, as `itertools.islice`."


def _extract_keys(
    source: Iterable[Sample],
    *patterns: str | list[str],
    duplicate_is_error: bool = True,
    ignore_missing: bool = False,
) -> Iterator[tuple]:
    """Turn dict samples into tuples of the values whose keys match each fnmatch pattern (`"*.jpg;*.png"`).

    A pattern matches a key `k` if it matches `k` or `"." + k` (so `"*.jpg"` matches `"jpg"`). No match raises
    ValueError unless `ignore_missing` (then the position is left out); several matches raise ValueError if
    `duplicate_is_error` (else the first is taken).
    """
    alternatives = [p.split(";") if isinstance(p, str) else p for p in patterns]
    for sample in source:
        result = []
        for pattern in alternatives:
            matches = [x for x in sample.keys() if any(fnmatch("." + x, p) or fnmatch(x, p) for p in pattern)]
            if len(matches) == 0:
                if ignore_missing:
                    continue
                raise ValueError(f"Cannot find {pattern} in sample keys {sample.keys()}.")
            if len(matches) > 1 and duplicate_is_error:
                raise ValueError(f"Multiple sample keys {sample.keys()} match {pattern}.")
            result.append(sample[matches[0]])
        yield tuple(result)


extract_keys = pipelinefilter(_extract_keys)


def _rename_keys(
    source: Iterable[Sample],
    *args: tuple[str, str],
    keep_unselected: bool = False,
    must_match: bool = True,
    duplicate_is_error: bool = True,
    **kw: str,
) -> Iterator[Sample]:
    """Rename keys by fnmatch patterns: `rename_keys(("image", "*.jpg"), label="*.cls")`.

    Patterns match the lower-cased last path component of each key; the last matching pattern wins. Keys
    that match nothing are dropped unless `keep_unselected`. Two keys renamed to the same name raise ValueError
    if `duplicate_is_error` (else the first is kept); a pattern matching no key raises ValueError if
    `must_match`.
    """
    renamings = [(pattern, output) for output, pattern in args]
    renamings += [(pattern, output) for output, pattern in kw.items()]
    reversed_renamings = renamings[::-1]
    for sample in source:
        new_sample = {}
        matched = {pattern: False for pattern, _ in renamings}
        for path, value in sample.items():
            fname = re.sub(r".*/", "", path).lower()
            new_name = None
            for pattern, name in reversed_renamings:
                if fnmatch(fname, pattern):
                    matched[pattern] = True
                    new_name = name
                    break
            if new_name is None:
                if keep_unselected:
                    new_sample[path] = value
                continue
            if new_name in new_sample:
                if duplicate_is_error:
                    raise ValueError(f"Duplicate value in sample {sample.keys()} after rename.")
                continue
            new_sample[new_name] = value
        if must_match and not all(matched.values()):
            raise ValueError(f"Not all patterns ({matched}) matched sample keys ({sample.keys()}).")
        yield new_sample


rename_keys = pipelinefilter(_rename_keys)


def decode_bin(stream: Any) -> bytes:
    """Return the bytes of a binary stream."""
    return stream.read()


def decode_text(stream: Any) -> str:
    """Return the contents of a binary stream decoded as UTF-8."""
    return stream.read().decode("utf-8")


def decode_pickle(stream: Any) -> Any:
    """Unpickle an object from a binary stream (only for data you trust; refused in secure mode,
    WDS_SECURE=1, with ValueError)."""
    if utils.enforce_security:
        raise ValueError("unpickling is not allowed when security is enforced (WDS_SECURE)")
    return pickle.load(stream)


default_decoders: list[tuple[str, Callable[[Any], Any]]] = [
    ("*.bin", decode_bin),
    ("*.txt", decode_text),
    ("*.pyd", decode_pickle),
]


def find_decoder(decoders: Sequence[tuple[str, Any]], path: str) -> Any:
    """Return the decoder for a key from `(pattern, decoder)` pairs (the last match wins), else None.

    Patterns are fnmatch patterns matched against the lower-cased last path component, with or without a
    leading dot; keys starting with `__` get the identity.
    """
    fname = re.sub(r".*/", "", path)
    if fname.startswith("__"):
        return identity
    lname = fname.lower()
    for pattern, fun in decoders[::-1]:
        if fnmatch(lname, pattern) or fnmatch("." + lname, pattern):
            return fun
    return None


def _xdecode(
    source: Iterable[Sample],
    *args: tuple[str, Callable[[Any], Any]],
    must_decode: bool = True,
    defaults: Sequence[tuple[str, Callable[[Any], Any]]] = default_decoders,
    **kw: Callable[[Any], Any],
) -> Iterator[Sample]:
    """Decode fields with stream decoders chosen by pattern: `xdecode(("*.jpg", f), cls=g)`.

    The decoders are `defaults` (`.bin`, `.txt`, `.pyd`), then `args`, then `*.KEY` for each keyword; the last
    match wins. Each decoder gets a binary stream over the field's bytes. A field with no decoder raises
    ValueError if `must_decode`, else stays as it is; a decoder given as False leaves the field as it is.
    """
    decoders = list(defaults) + list(args)
    decoders += [("*." + k, v) for k, v in kw.items()]
    for sample in source:
        new_sample = {}
        for path, data in sample.items():
            if path.startswith("__"):
                new_sample[path] = data
                continue
            decoder = find_decoder(decoders, path)
            if decoder is False:
                value = data
            elif decoder is None:
                if must_decode:
                    raise ValueError(f"No decoder found for {path}.")
                value = data
            else:
                if isinstance(data, bytes):
                    data = io.BytesIO(data)
                value = decoder(data)
            new_sample[path] = value
        yield new_sample


xdecode = pipelinefilter(_xdecode)


class Cached(PipelineStage):
    """A stage that keeps the samples of its first complete pass in memory and replays them afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.cached: list[Any] | None = None

    def __repr__(self) -> str:
        state = "complete" if self.cached is not None else "empty"
        return f"<mcached ({state})>"

    def run(self, source: Iterable[T]) -> Iterator[T]:
        """Pass `source` through (recording it) on the first complete pass, replay the record after that."""
        if self.cached is not None:
            yield from self.cached
            return
        self.temp: list[Any] = []
        for sample in source:
            self.temp.append(sample)
            yield sample
        self.cached = self.temp


class LMDBCached(PipelineStage):
    """A stage that records its first complete pass in an LMDB database at `fname` and replays it afterwards.

    Needs the `lmdb` package (ImportError otherwise). Samples are stored with `pickler.dumps` under their
    `__key__` (or their index), in chunks of `chunksize` per transaction.
    """

    def __init__(
        self, fname: str, map_size: float = 1e12, pickler: Any = pickle, chunksize: int = 500
    ) -> None:
        try:
            import lmdb
        except ImportError as exn:
            raise ImportError("LMDBCached needs the lmdb package (pip install lmdb)") from exn
        self.fname = fname
        self.db = lmdb.open(fname, readonly=False, map_size=int(map_size))
        self.pickler = pickler
        self.chunksize = chunksize

    def __repr__(self) -> str:
        return f"<lmdb_cached ({self.fname!r},)>"

    def is_complete(self) -> bool:
        """Tell whether a complete pass has been recorded."""
        with self.db.begin(write=False) as txn:
            return txn.get(b"_") is not None

    def add_samples(self, samples: Iterable[tuple[str, Any]]) -> None:
        """Store `(key, sample)` pairs in one transaction."""
        with self.db.begin(write=True) as txn:
            for key, sample in samples:
                txn.put(key.encode(), self.pickler.dumps(sample))

    def run(self, source: Iterable[Sample]) -> Iterator[Sample]:
        """Replay the recorded pass if complete, else pass `source` through and record it."""
        if self.is_complete():
            with self.db.begin(write=False) as txn:
                for key, value in txn.cursor():
                    if key == b"_":
                        continue
                    yield self.pickler.loads(value)
            return
        buffer = []
        for i, sample in enumerate(source):
            key = (isinstance(sample, dict) and sample.get("__key__")) or str(i)
            buffer.append((key, sample))
            if len(buffer) >= self.chunksize:
                self.add_samples(buffer)
                buffer = []
            yield sample
        if buffer:
            self.add_samples(buffer)
        with self.db.begin(write=True) as txn:
            txn.put(b"_", b"1")


# The stages that make one sample of each sample they take (or raise), holding none back: len() counts
# through them, and resumable iteration (`fastwds.resume`) resumes through them.
_ONE_TO_ONE = (
    _log_keys,
    _to_tuple,
    _map_tuple,
    _map_dict,
    _rename,
    _rename_keys,
    _extract_keys,
    _xdecode,
    _decode,
)


def __getattr__(name: str) -> Any:
    # Names webdataset.filters has as imports; resolved late so that importing this module imports no torch.
    if name == "TorchTensor":
        from . import pytorch

        return pytorch.TorchTensor
    if name == "autodecode":
        from . import autodecode

        return autodecode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
