"""Shard lists: where the shard URLs of a dataset come from, how they are shuffled, and how they are split
among nodes and DataLoader workers.

Every shard list yields dicts `{"url": ...}`, the items the tar stage reads.
"""

from __future__ import annotations

import glob
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any
from urllib.parse import urlparse

import braceexpand
import yaml

from . import _core
from .filters import _shuffle, pipelinefilter
from .pytorch import LazyIterableDataset
from .utils import (
    PipelineStage,
    glob_with_braces,
    is_iterable,
    make_seed,
    pytorch_worker_info,
    pytorch_worker_seed,
)

__all__ = [
    "NoShardsWarning",
    "envlookup",
    "envsubst",
    "split_by_node",
    "single_node_only",
    "split_by_worker",
    "expand_urls",
    "expand_source",
    "SimpleShardList",
    "resampled_",
    "resampled",
    "non_empty",
    "MSSource",
    "expand",
    "ResampledShards",
    "ResampledShardList",
    "ShardShuffle",
    "directory_shards",
    "object_shards",
    "needs_listing",
    "DirectoryShardList",
    "MultiShardSample",
    "shardspec",
]


class NoShardsWarning(UserWarning):
    """A DataLoader worker or a node got no shards because there are fewer shards than workers or nodes.

    That worker or node yields no samples; the others read every shard once.
    """


def envlookup(m: re.Match[str]) -> str:
    """Return the value of the environment variable `WDS_<name>` for a `${name}` match.

    Raises KeyError naming the variable when it is not set.
    """
    key = "WDS_" + m.group(1)
    if key not in os.environ:
        raise KeyError(f"missing environment variable {key} (for ${{{m.group(1)}}} in a shard URL)")
    return os.environ[key]


def envsubst(s: str) -> str:
    """Replace each `${name}` in `s` by the environment variable `WDS_name`."""
    return re.sub(r"\$\{(\w+)\}", envlookup, s)


def _split(src: Iterable[Any], index: int, count: int, what: str) -> Iterator[Any]:
    """Yield items `index`, `index + count`, ... of `src`; warn when that is none at all."""
    total = 0
    mine = 0
    for i, item in enumerate(src):
        total = i + 1
        if i % count == index:
            mine += 1
            yield item
    if mine == 0:
        warnings.warn(
            f"{what} {index} of {count} got no shards: there are only {total} shard(s) for {count} {what}s, "
            f"so this {what} yields no samples (the others read each shard once); use at most {total} "
            f"{what}s or more shards",
            NoShardsWarning,
            stacklevel=2,
        )


def split_by_node(src: Iterable[Any], group: Any = None) -> Iterator[Any]:
    """Yield this node's share of the shards: every `world_size`-th item starting at `rank`.

    rank and world size come from `torch.distributed` when it is initialised (for `group`), else from the
    `RANK` and `WORLD_SIZE` environment variables. A node that gets no shard warns with `NoShardsWarning`.
    """
    rank, world_size, _, _ = pytorch_worker_info(group=group)
    if world_size > 1:
        yield from _split(src, rank, world_size, "node")
    else:
        yield from src


def single_node_only(src: Iterable[Any], group: Any = None) -> Iterator[Any]:
    """Yield all shards; raise ValueError when running on several nodes (use `split_by_node` there)."""
    _, world_size, _, _ = pytorch_worker_info(group=group)
    if world_size > 1:
        raise ValueError(
            "you need to add an explicit nodesplitter to your input pipeline for multi-node training"
        )
    yield from src


def split_by_worker(src: Iterable[Any]) -> Iterator[Any]:
    """Yield this DataLoader worker's share of the shards: every `num_workers`-th item starting at its id.

    Outside a DataLoader worker (and without the `WORKER`/`NUM_WORKERS` environment variables) all shards
    pass. A worker that gets no shard warns with `NoShardsWarning` and yields nothing.
    """
    _, _, worker, num_workers = pytorch_worker_info()
    if num_workers > 1:
        yield from _split(src, worker, num_workers, "DataLoader worker")
    else:
        yield from src


def expand_urls(urls: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Expand a URL string into a list of URLs.

    The string is split on `::`; in each part `${name}` is replaced by the environment variable `WDS_name`
    (repeatedly, up to 10 times) and braces are expanded (`a-{000..009}.tar`, `{a,b}.tar`). An `s3://` or
    `gs://` URL ending in `/` or holding a glob is listed (see `object_shards`, with `storage_options`).
    """
    result: list[str] = []
    for url in urls.split("::"):
        for _ in range(10):
            last = url
            url = envsubst(url)
            if url == last:
                break
        for expanded in braceexpand.braceexpand(url):
            if needs_listing(expanded):
                result.extend(object_shards(expanded, storage_options=storage_options))
            else:
                result.append(expanded)
    return result


_OBJECT_SCHEMES = ("s3", "gs")
_SHARD_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".tar.zst", ".tar.zstd")


def needs_listing(url: str) -> bool:
    """Tell whether a URL names several objects: an `s3://`/`gs://` prefix ending in `/`, or a glob."""
    parsed = urlparse(url)
    return parsed.scheme in _OBJECT_SCHEMES and (url.endswith("/") or any(c in parsed.path for c in "*?["))


def object_shards(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Return the object URLs a bucket URL names, sorted: the shards (`.tar`, `.tgz`, `.tar.gz`, `.tar.zst`)
    directly under a prefix ending in `/`, or every key matching a glob (`*` and `?` stay within one path
    segment). Every page of the listing is read. Raises ValueError when nothing matches, `ShardError` when
    the bucket cannot be listed."""
    found = _core.list_objects(url, storage_options)
    if url.endswith("/"):
        found = [u for u in found if "/" not in u[len(url) :] and u.endswith(_SHARD_SUFFIXES)]
    if not found:
        raise ValueError(f"{url}: no shards found")
    return found


def expand_source(source: str | Iterable[str], max_urls: int = int(1e9)) -> list[str]:
    """Return the URLs of a source: an expanded URL string, a list as is, or up to `max_urls` of an iterable.

    Raises ValueError for anything else.
    """
    if isinstance(source, str):
        return expand_urls(source)
    if isinstance(source, list):
        return source
    if is_iterable(source):
        return list(islice(source, max_urls))
    raise ValueError(f"cannot handle {type(source)}")


def _url_list(urls: str | os.PathLike[str] | Iterable[Any]) -> list[str]:
    if isinstance(urls, (str, os.PathLike)):
        urls = expand_urls(os.fspath(urls))
    else:
        urls = [os.fspath(u) if isinstance(u, os.PathLike) else u for u in urls]
    if len(urls) == 0:
        raise ValueError("the shard list is empty")
    if not isinstance(urls[0], str):
        raise ValueError(f"shard URLs must be strings, not {type(urls[0]).__name__}")
    return urls


class SimpleShardList(LazyIterableDataset):
    """The shards of a URL string (see `expand_urls`) or a list, as `{"url": ...}` dicts, in order.

    With `seed` (True means a time-based seed) they come shuffled with `random.Random(seed)`, the same order
    in every epoch. Raises ValueError for an empty list.
    """

    def __init__(self, urls: str | Iterable[str], seed: Any = None) -> None:
        super().__init__()
        self.urls = _url_list(urls)
        if seed is True:
            seed = time.time()
        self.seed = seed

    def __len__(self) -> int:
        """Return the number of shards."""
        return len(self.urls)

    def __iter__(self) -> Iterator[dict[str, str]]:
        """Yield `{"url": url}` for each shard."""
        urls = self.urls.copy()
        if self.seed is not None:
            random.Random(self.seed).shuffle(urls)
        for url in urls:
            yield dict(url=url)


def resampled_(src: Iterable[Any], n: int = sys.maxsize) -> Iterator[Any]:
    """Read all items of `src`, then yield `n` of them drawn at random with replacement (fresh entropy)."""
    rng = random.Random(os.urandom(20))
    items = list(src)
    if not items:
        return
    for _ in range(n):
        yield rng.choice(items)


resampled = pipelinefilter(resampled_)


def non_empty(src: Iterable[Any]) -> Iterator[Any]:
    """Pass items through; raise ValueError at the end when there were none."""
    count = 0
    for s in src:
        yield s
        count += 1
    if count == 0:
        raise ValueError("pipeline stage received no data at all and this was declared as an error")


@dataclass
class MSSource:
    """One dataset of a `MultiShardSample` spec."""

    name: str = ""
    perepoch: int = -1
    resample: int | bool = False
    urls: list[str] = field(default_factory=list)


default_rng = random.Random()


def expand(s: str) -> str:
    """Expand `~` and environment variables (`$X`, `${X}`) in `s`."""
    return os.path.expanduser(os.path.expandvars(s))


class ResampledShards(LazyIterableDataset):
    """An endless (or `nshards` long) stream of shards drawn at random with replacement.

    Each worker and node draws its own stream (its seed mixes `worker_seed()`, by default rank * 1000 +
    worker id, with the epoch and `seed`). With `deterministic=True` the stream depends only on those;
    otherwise fresh entropy is mixed in every epoch. Raises ValueError for an empty list when `empty_check`.
    """

    def __init__(
        self,
        urls: str | Iterable[str],
        nshards: int = sys.maxsize,
        seed: int = 0,
        worker_seed: Callable[[], int] | None = None,
        deterministic: bool = False,
        max_urls: int = int(1e6),
        empty_check: bool = True,
    ) -> None:
        super().__init__()
        self.urls = expand_source(urls, max_urls)
        if empty_check and len(self.urls) == 0:
            raise ValueError("empty_check=True, but no shards found in ResampledShards")
        if self.urls and not isinstance(self.urls[0], str):
            raise ValueError(f"shard URLs must be strings, not {type(self.urls[0]).__name__}")
        self.nshards = nshards
        self.worker_seed = pytorch_worker_seed if worker_seed is None else worker_seed
        self.deterministic = deterministic
        self.seed = seed
        self.epoch = -1

    def __iter__(self) -> Iterator[dict[str, str]]:
        """Yield `{"url": url}` for `nshards` shards drawn at random."""
        self.epoch += 1
        if self.deterministic:
            seed = make_seed(self.worker_seed(), self.epoch, self.seed)
        elif self.__dict__.get("resume_seed") is not None:
            # A resumed epoch (`WebDataset.load_state_dict`) draws the stream it drew before.
            seed = self.__dict__["resume_seed"]
        else:
            seed = make_seed(
                self.worker_seed(), self.epoch, self.seed, os.getpid(), time.time_ns(), os.urandom(4)
            )
        self.resume_seed: int | None = None
        self.epoch_seed = seed
        if os.environ.get("WDS_SHOW_SEED", "0") == "1":
            print(f"# ResampledShards seed {seed}")
        self.rng = random.Random(seed)
        if not self.urls:
            return
        for _ in range(self.nshards):
            index = self.rng.randint(0, len(self.urls) - 1)
            yield dict(url=self.urls[index])


ResampledShardList = ResampledShards


def _int_seed(seed: Any) -> int:
    """An integer for seed arithmetic: ints as they are, numeric strings (WDS_SEED) parsed, else hashed."""
    if isinstance(seed, bool):
        return int(seed)
    if isinstance(seed, int):
        return seed
    if isinstance(seed, str) and re.fullmatch(r"\s*-?\d+\s*", seed):
        return int(seed)
    return make_seed(str(seed))


class ShardShuffle(PipelineStage):
    """Shuffles the shard stream with a buffer of `bufsize` shards, differently in every epoch.

    - `deterministic=True` (WebDataset's `detshuffle`): epoch e uses `random.Random(seed + e)`, as
      webdataset's `detshuffle` (but a `WDS_SEED` string works: numeric strings are parsed).
    - `seeded=True`: epoch 0 uses `random.Random(seed)` (the order webdataset gives for that seed), later
      epochs a seed derived from `seed` and the epoch.
    - otherwise: fresh entropy every epoch.

    The epoch counts this object's passes; `epoch` can be set (see `WebDataset.set_epoch`).
    """

    def __init__(
        self,
        bufsize: int,
        seed: Any = 0,
        deterministic: bool = False,
        seeded: bool = True,
        initial: int = 100,
    ) -> None:
        self.bufsize = bufsize
        self.initial = initial
        self.seed = seed
        self.deterministic = deterministic
        self.seeded = seeded
        self.epoch = -1

    def __repr__(self) -> str:
        # As webdataset's stage for a WebDataset's shard shuffle: `filters.shuffle(n, seed=seed)`, or detshuffle.
        if self.deterministic:
            return f"<detshuffle ({self.bufsize},) {{'seed': {self.seed!r}, 'epoch': {self.epoch}}}>"
        return f"<_shuffle ({self.bufsize},) {{'seed': {self.seed!r}}}>"

    def rng(self) -> random.Random:
        """Return the generator for the current epoch."""
        if self.deterministic:
            return random.Random(_int_seed(self.seed) + self.epoch)
        if not self.seeded:
            # Fresh entropy, kept in `entropy` (hex) so that a resumed epoch (`WebDataset.load_state_dict`,
            # which sets `resume_entropy`) draws the same order.
            entropy = self.__dict__.get("resume_entropy") or os.urandom(16).hex()
            self.resume_entropy = None
            self.entropy = entropy
            return random.Random(bytes.fromhex(entropy))
        if self.epoch == 0:
            return random.Random(self.seed)
        return random.Random(f"{self.seed}/epoch/{self.epoch}")

    def run(self, src: Iterable[Any]) -> Iterator[Any]:
        """Start the next epoch and return the shuffled stream."""
        self.epoch += 1
        return _shuffle(iter(src), self.bufsize, self.initial, rng=self.rng())


_SHARD_PATTERN = "*.{tar,tgz,tar.gz,tar.zst,tar.zstd}"


def directory_shards(path: str, pattern: str = _SHARD_PATTERN) -> list[str]:
    """Return the shard files in a local directory (a path or `file:` URL ending in `/`), or the shard objects
    under an `s3://`/`gs://` prefix ending in `/`, sorted.

    Raises ValueError when it is not a local directory or holds no shards.
    """
    parsed = urlparse(path)
    if parsed.scheme in _OBJECT_SCHEMES:
        return object_shards(path)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"{path}: only local directories can be listed; give a list of shard URLs instead")
    local = path if parsed.scheme == "" else parsed.path
    if not os.path.isdir(local):
        raise ValueError(f"{path}: not a directory")
    found = sorted(glob_with_braces(os.path.join(local, pattern)))
    if not found:
        raise ValueError(f"{path}: no shards matching {pattern}")
    return found


def check_pid_is_running(pid: int) -> bool:
    """Tell whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def without_last_extension(fname: str) -> str:
    """Remove the last extension from a file name."""
    return re.sub(r"\.[^.]*$", "", fname)


def get_pid_from_filename(fname: str) -> int | None:
    """Return the process id of a file name claimed as `NAME._PID_`, else None."""
    match = re.match(r"^(.*)\._(\d+)_$", fname)
    if not match:
        return None
    return int(match.group(2))


class DirectoryShardList(LazyIterableDataset):
    """A work queue of shards in a directory shared by several processes (webdataset's semantics).

    Each pass claims a shard by renaming it `NAME._PID_`, yields it, and then recycles it by `mode`:
    "resample" renames it back, "keep" renames it `NAME._done_`, "unlink" deletes it. Polls every `poll`
    seconds while the directory is empty, for up to `timeout` seconds (`poll=None` stops instead).
    Unlike webdataset, brace patterns match (webdataset's default pattern never matches a file).
    """

    def __init__(
        self,
        path: str,
        pattern: str = "*.{tar,tgz,tar.tgz}",
        poll: float | None = 1,
        timeout: float = 1e12,
        mode: str = "resample",
        select: str = "random",
        fate: Any = None,
    ) -> None:
        if not path.endswith("/"):
            raise ValueError(f"{path}: a directory path must end in '/'")
        if not os.path.isdir(path):
            raise ValueError(f"{path}: not a directory")
        self.path = path
        self.poll = poll
        self.pattern = pattern
        self.mode = mode
        self.select = select
        self.fate = fate
        self.timeout = timeout

    def recycle(self, activename: str) -> None:
        """Put back, mark done or delete a claimed shard according to `mode`."""
        if self.mode == "unlink":
            os.unlink(activename)
        elif self.mode == "keep":
            os.rename(activename, without_last_extension(activename) + "._done_")
        elif self.mode == "resample":
            os.rename(activename, without_last_extension(activename))

    def cleanup_files_without_processes(self) -> None:
        """Recycle shards claimed by processes that no longer exist."""
        for fname in glob.glob(os.path.join(self.path, "*._*_")):
            pid = get_pid_from_filename(fname)
            if pid is None:
                continue
            if not check_pid_is_running(pid):
                self.recycle(fname)

    def __iter__(self) -> Iterator[dict[str, str]]:
        """Claim and yield shards until the timeout (or until the directory is empty when `poll` is None)."""
        last = time.time()
        while time.time() - last < self.timeout:
            candidates = sorted(glob_with_braces(self.path + self.pattern))
            if len(candidates) == 0:
                if self.poll is None:
                    return
                time.sleep(self.poll)
                continue
            if self.select == "oldest":
                candidate = min(candidates, key=lambda fn: os.stat(fn).st_mtime)
            elif self.select == "random":
                candidate = random.choice(candidates)
            else:
                raise ValueError(f"unknown selection strategy {self.select}")
            activename = candidate + f"._{os.getpid()}_"
            try:
                os.rename(candidate, activename)
            except FileNotFoundError:
                if self.poll is not None:
                    time.sleep(self.poll)
                continue
            yield dict(url=activename)
            self.recycle(activename)
            self.cleanup_files_without_processes()


class MultiShardSample(LazyIterableDataset):
    """Shards from several datasets described by a yaml file or a dict (webdataset's multi-dataset spec).

    The spec: `{"prefix": str, "buckets": str, "datasets": [{"name", "buckets", "shards", "resample",
    "choose"}, ...]}`; `shards` is a brace pattern or a list of them; `resample: n` draws n shards with
    replacement per epoch, `choose: n` n without replacement, else all shards are used; the epoch's list is
    shuffled. Every process with the same `seed` draws the same list (so workers and nodes can split it);
    each epoch draws anew. `set_epoch(seed)` fixes the generator as in webdataset. Unlike webdataset (where
    the class is marked obsolete and raises), this works.
    """

    def __init__(self, fname: str | dict[str, Any], seed: Any = None) -> None:
        self.epoch = -1
        self.seed = random.randint(0, 2**31 - 1) if seed is None else seed
        self.rng: random.Random | None = None
        self.parse_spec(fname)

    def parse_spec(self, fname: str | dict[str, Any]) -> None:
        """Read the spec (a yaml file name or a dict) into `self.sources`. Raises ValueError when malformed."""
        if isinstance(fname, dict):
            spec = fname
        else:
            with open(fname) as stream:
                spec = yaml.safe_load(stream)
        unknown = set(spec.keys()) - {"prefix", "datasets", "buckets"}
        if unknown:
            raise ValueError(f"unknown keys in the multi-dataset spec: {sorted(unknown)}")
        if "datasets" not in spec:
            raise ValueError("the multi-dataset spec has no 'datasets'")
        prefix = expand(spec.get("prefix", ""))
        self.sources: list[MSSource] = []
        for ds in spec["datasets"]:
            unknown = set(ds.keys()) - {"buckets", "name", "shards", "resample", "choose"}
            if unknown:
                raise ValueError(f"unknown keys in a dataset of the spec: {sorted(unknown)}")
            buckets = ds.get("buckets", spec.get("buckets", []))
            if isinstance(buckets, str):
                buckets = [buckets]
            buckets = [expand(s) for s in buckets] or [""]
            if len(buckets) != 1:
                raise ValueError(f"{buckets}: only one bucket per dataset is supported")
            bucket = buckets[0]
            name = ds.get("name", "@" + bucket)
            patterns = ds["shards"]
            if isinstance(patterns, str):
                patterns = [patterns]
            urls = [
                prefix + os.path.join(bucket, u) for p in patterns for u in braceexpand.braceexpand(expand(p))
            ]
            resample = ds.get("resample", -1)
            nsample = ds.get("choose", -1)
            if nsample > len(urls):
                raise ValueError(f"choose {nsample} must be no greater than the number of shards")
            if nsample > 0 and resample > 0:
                raise ValueError("specify only one of resample or choose")
            self.sources.append(MSSource(name=name, urls=urls, perepoch=nsample, resample=resample))

    def set_epoch(self, seed: Any) -> None:
        """Draw the next epoch's shards from `random.Random(seed)`."""
        self.rng = random.Random(seed)

    def get_shards_for_epoch(self) -> list[str]:
        """Return this epoch's shard list."""
        self.epoch += 1
        rng = self.rng if self.rng is not None else random.Random(f"{self.seed}/epoch/{self.epoch}")
        self.rng = None
        result: list[str] = []
        for source in self.sources:
            if source.resample > 0:
                chosen = rng.choices(source.urls, k=int(source.resample))
            elif source.perepoch > 0:
                chosen = list(source.urls)
                rng.shuffle(chosen)
                chosen = chosen[: source.perepoch]
            else:
                chosen = list(source.urls)
            result += chosen
        rng.shuffle(result)
        return result

    def __iter__(self) -> Iterator[dict[str, str]]:
        """Yield `{"url": url}` for this epoch's shards."""
        for shard in self.get_shards_for_epoch():
            yield dict(url=shard)


def shardspec(spec: str) -> LazyIterableDataset:
    """Return a `MultiShardSample` for a `.yaml` spec file, else a `SimpleShardList` of the URL string."""
    if spec.endswith(".yaml") or spec.endswith(".yml"):
        return MultiShardSample(spec)
    return SimpleShardList(spec)
