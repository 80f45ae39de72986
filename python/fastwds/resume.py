"""Resumable iteration of `WebDataset`: `state_dict()` / `load_state_dict()` (the protocol of torchdata's
`StatefulDataLoader`, which calls them inside each DataLoader worker on that worker's copy of the dataset).

A state describes a point between two items of a pass (an epoch) over the pipeline of one worker:

- `fingerprint`: a digest of the configuration (shard URLs, seed, shard shuffle, balanced mode, splitters,
  rank and world size, worker id and count, reader order, the stages), with its parts, so that a state is
  only loaded into the same configuration (`ValueError` naming what differs otherwise);
- `epoch`: the pass in progress (or the next one when `shards` is None);
- `shards`: the position in this worker's shard sequence of the epoch: `next`, the first position whose
  shard has not been started, and `open`, `[position, k]` for the started shards that may have samples left,
  k being the number of their samples handed on to the next stage (samples read ahead by the core do not
  count; a span's samples count from the span's start);
- `shuffle`: the sample shuffle's buffer as `[position, ordinal]` references, in buffer order, and its
  generator's state;
- `yielded` and `passes`: the items yielded and the passes begun in the current `with_epoch`/`repeat` epoch;
- `entropy`, `images`: the random choices made once per epoch or per dataset (an unseeded shard shuffle's
  entropy, a resampler's seed, random image seeds), so that a resumed run makes the same ones.

The next iteration after `load_state_dict` resumes there: the shard stream of the epoch is generated again
(no shard is opened for that) and read from the saved position, the open shards from their k-th sample (a
span starting at that sample's header when the shard has an index, else the shard read and its first k
samples dropped), after the buffered samples, re-read one by one as spans (or picked from their shard read
whole), which refill the shuffle buffer in its saved order.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from . import epochs, filters, images, shardindex, shardlists
from .reader import ShardSamples
from .utils import pytorch_worker_info

if TYPE_CHECKING:
    from .compat import WebDataset

__all__ = ["STATE_VERSION", "ResumeError"]

STATE_VERSION = 1
"""The version of the state format `WebDataset.state_dict` writes."""


class ResumeError(ValueError):
    """A state cannot be taken or loaded: another configuration, or a pipeline that cannot be resumed."""


# Stages that hand on each sample they produce before taking the next, so they hold no sample between two
# items of the pipeline's output (and, between the tar stage and the shuffle, produce each sample from the
# last one they took).
_STREAMING = (
    *filters._ONE_TO_ONE,
    filters._map,
    filters._select,
    filters._info,
    filters._associate,
)


def _is_streaming(stage: Any) -> bool:
    if isinstance(stage, filters.FilterFunction):
        return stage.f in _STREAMING
    return isinstance(stage, (images.FinishImages, images.DecodeImages))


def _is_sample_shuffle(stage: Any) -> bool:
    if isinstance(stage, filters.detshuffle):
        return True
    return isinstance(stage, filters.FilterFunction) and stage.f is filters._shuffle


def _is_batched(stage: Any) -> bool:
    return isinstance(stage, filters.FilterFunction) and stage.f is filters._batched


class Layout:
    """Where the tar stage and the sample shuffle are in a pipeline, and what stops it from being resumed."""

    def __init__(self, pipeline: list[Any]) -> None:
        self.tar = next((i for i, s in enumerate(pipeline) if isinstance(s, ShardSamples)), -1)
        self.shuffle = -1
        self.problems: list[str] = []
        if self.tar < 0:
            self.problems.append("the pipeline has no tar stage")
            return
        later = range(self.tar + 1, len(pipeline))
        self.shuffle = next((i for i in later if _is_sample_shuffle(pipeline[i])), -1)
        for i in later:
            stage = pipeline[i]
            if i == self.shuffle or _is_streaming(stage) or (_is_batched(stage) and i > self.shuffle):
                continue
            where = " before the shuffle" if _is_batched(stage) else ""
            self.problems.append(f"stage {i} {_describe(stage)}{where}")

    def check(self) -> None:
        """Raise `ResumeError` when the pipeline cannot be resumed."""
        if self.problems:
            raise ResumeError(
                "this pipeline cannot be resumed: "
                + "; ".join(self.problems)
                + " (resumable: one sample shuffle; before it only stages that map or drop samples one by "
                "one: map, select, decode, decode_images, to_tuple, map_tuple, map_dict, rename, "
                "rename_keys, extract_keys, xdecode, log_keys; after it those and batched)"
            )


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _describe(stage: Any) -> str:
    """A stage's repr without memory addresses (which differ from process to process) or random seeds."""
    if isinstance(stage, images.DecodeImages):
        shown = {
            k: v
            for k, v in stage.options.asdict().items()
            if k not in ("extensions", "keep_bytes_on_error", "epoch", "seed")
        }
        return f"<decode_images ({stage.imagespec!r},) {shown}>"
    return _ADDRESS.sub("", repr(stage))


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _name(f: Any) -> str | None:
    if f is None:
        return None
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__qualname__)}"


def fingerprint_parts(dataset: WebDataset) -> dict[str, Any]:
    """The parts of a dataset's configuration a state is tied to, each a small value or a digest."""
    pipeline = dataset.pipeline
    layout = Layout(pipeline)
    source = pipeline[0] if pipeline else None
    rank, world_size, worker, num_workers = pytorch_worker_info()
    urls: Any
    shardshuffle: Any = None
    balanced = None
    if isinstance(source, epochs.BalancedShards):
        urls = source.urls
        balanced = source.mode
        shardshuffle = source.shuffle
    elif isinstance(source, (shardlists.SimpleShardList, shardlists.ResampledShards)):
        urls = source.urls
    else:
        urls = _describe(source)
    for stage in pipeline[: max(layout.tar, 0)]:
        if isinstance(stage, shardlists.ShardShuffle):
            shardshuffle = [stage.bufsize, "deterministic" if stage.deterministic else "seeded"]
    tar = pipeline[layout.tar] if layout.tar >= 0 else None
    ordered = True if tar is None else bool(tar.reader_options.get("ordered", True))
    return {
        "urls": _digest(urls),
        "seed": str(dataset.seed) if dataset.__dict__.get("_seeded", True) else None,
        "shardshuffle": shardshuffle,
        "resampled": isinstance(source, shardlists.ResampledShards),
        "balanced": balanced,
        "nodesplitter": _name(dataset.__dict__.get("_nodesplitter")),
        "workersplitter": _name(dataset.__dict__.get("_workersplitter")),
        "rank": rank,
        "world_size": world_size,
        "worker": worker,
        "num_workers": num_workers,
        "ordered": ordered,
        "stages": _digest([_describe(s) for s in pipeline[max(layout.tar, 0) :]]),
        "epoch_length": [dataset.repetitions, dataset.nsamples],
    }


def _fingerprint(parts: dict[str, Any]) -> dict[str, Any]:
    return {"digest": _digest(parts), "parts": parts}


def check_fingerprint(saved: dict[str, Any], parts: dict[str, Any]) -> None:
    """Raise `ResumeError` naming the parts of the configuration that differ from a saved fingerprint."""
    saved_parts = saved.get("parts", {}) if isinstance(saved, dict) else {}
    if isinstance(saved, dict) and saved.get("digest") == _digest(parts) and saved_parts == parts:
        return
    differ = []
    for key in sorted(set(parts) | set(saved_parts)):
        if saved_parts.get(key) != parts.get(key):
            differ.append(f"{key} (saved {saved_parts.get(key)!r}, now {parts.get(key)!r})")
    raise ResumeError(
        "this state was saved by another configuration: "
        + (", ".join(differ) if differ else "the fingerprint differs")
        + " differ"
        + ("s" if len(differ) == 1 else "")
    )


################################################################
# the tar stage's progress
################################################################


class _Entry:
    """A shard spec handed to the core: its position, URL, the ordinal of the next sample to hand on (from the
    spec's first sample), the ordinal past its last sample when known (inf otherwise) and the number of
    samples to drop at its start (a shard resumed without an index)."""

    __slots__ = ("pos", "url", "ordinal", "limit", "drop", "whole")

    def __init__(self, pos: int, url: str, ordinal: int, limit: float, drop: int, whole: bool) -> None:
        self.whole = whole  # the spec is a whole shard, not a span
        self.pos = pos
        self.url = url
        self.ordinal = ordinal
        self.limit = limit
        self.drop = drop


# A sample's reference: its shard position and its ordinal in one int, so that the hot loops pass a single
# number (no tuple per sample). Shards hold far fewer than 2**32 samples.
_REF_BITS = 32
_ORDINAL_MASK = (1 << _REF_BITS) - 1


def make_ref(pos: int, ordinal: int) -> int:
    """The reference of the sample `ordinal` (from the spec's first sample) of shard position `pos`."""
    return (pos << _REF_BITS) | ordinal


def split_ref(ref: int) -> list[int]:
    """`[position, ordinal]` of a reference."""
    return [ref >> _REF_BITS, ref & _ORDINAL_MASK]


class TarTrack:
    """The progress of the tar stage in one pass: which shard position and ordinal each sample it hands on
    has, and the position to resume from.

    The tar stage calls `feed(src)` on its shard stream and `switch(url)` when a sample does not belong to
    the current entry; after `switch` it reads `ref` (the reference, see `make_ref`, of the sample before the
    next one), `skip` (the reference past the samples to drop), and for each sample stores the sample's
    reference in `ref`, taking a sample whose reference reaches `stop` (past the entry's last sample) as the
    start of the entry's next reading."""

    __slots__ = (
        "ordered",
        "lookup",
        "resumed",
        "queue",
        "inflight",
        "cur",
        "pos",
        "ref",
        "stop",
        "skip",
        "start",
        "next",
        "unfed",
        "ambiguous",
        "reread",
    )

    def __init__(
        self,
        ordered: bool,
        start: int = 0,
        open_: list[list[int]] | None = None,
        lookup: IndexLookup | None = None,
    ) -> None:
        self.ordered = ordered
        self.lookup = lookup if lookup is not None else IndexLookup()
        self.resumed = open_ is not None
        self.queue: deque[_Entry] = deque()  # ordered: entries handed to the core, not reached yet
        self.inflight: dict[str, _Entry] = {}  # unordered: entries handed to the core, maybe unfinished
        self.cur: _Entry | None = None
        self.pos = -1
        self.ref = -1  # the last sample handed on (or dropped)
        self.stop: float = math.inf
        self.skip = 0
        self.start = start
        self.next = start  # first position not handed to the core (after the open ones)
        self.unfed: list[list[int]] = [list(x) for x in open_ or []]  # open positions not handed yet
        self.ambiguous: str | None = None
        self.reread: list[tuple[dict[str, Any], int]] = []
        if ordered and self.unfed:
            pos, k = self.unfed[0]
            self.pos, self.ref = pos, make_ref(pos, k) - 1

    @property
    def ordinal(self) -> int:
        """The ordinal of the current entry's next sample."""
        return self.ref + 1 - make_ref(self.pos, 0) if self.pos >= 0 else 0

    def feed(
        self, items: Iterable[tuple[int, dict[str, Any], dict[str, Any] | None, int, int]]
    ) -> Iterator[Any]:
        """Hand on the shard specs of `items` (position, spec as the shard stage gave it, spec to read or None to
        skip it, first ordinal, samples to drop), noting each."""
        last: _Entry | None = None
        for pos, spec, adjusted, first, drop in items:
            if self.unfed and self.unfed[0][0] == pos:
                self.unfed.pop(0)
            else:
                self.next = pos + 1
            if adjusted is None:
                continue
            url = spec["url"] if isinstance(spec, dict) else spec
            samples = spec.get("samples") if isinstance(spec, dict) else None
            limit: float = samples if isinstance(samples, int) else math.inf
            whole = not isinstance(spec, dict) or (spec.get("start") is None and spec.get("end") is None)
            entry = _Entry(pos, url, first, limit, drop, whole)
            if self.ordered:
                if last is not None and last.url == url:
                    self._bound(last)
                last = entry
                self.queue.append(entry)
            else:
                if url in self.inflight:
                    self._bound(self.inflight[url])
                    if self.inflight[url].limit == math.inf:
                        self.ambiguous = url
                self.inflight[url] = entry
                if limit == math.inf and shardindex._local_path(url) is not None:
                    self._bound(entry)
            yield adjusted

    def _set_limit(self, entry: _Entry, limit: float) -> None:
        entry.limit = limit
        if entry is self.cur:
            self.stop = make_ref(entry.pos, 0) + limit

    def _bound(self, entry: _Entry) -> None:
        """Give `entry` its limit from the shard's index, when it has one and the limit is unknown."""
        if entry.limit != math.inf:
            return
        count = self.lookup.count(entry.url)
        if count is None:
            if self.ordered:
                self.ambiguous = entry.url
            return
        self._set_limit(entry, count)

    def switch(self, url: str) -> None:
        """Make the entry the next sample (of `url`) belongs to the current one."""
        cur = self.cur
        if cur is not None:
            cur.ordinal = self.ordinal
        if self.ordered:
            queue = self.queue
            while queue:
                entry = queue.popleft()
                if entry.url == url:
                    break
            else:
                raise RuntimeError(f"{url}: a sample from a shard that was not handed to the reader")
        else:
            if cur is not None and cur.ordinal >= cur.limit and self.inflight.get(cur.url) is cur:
                del self.inflight[cur.url]
            found = self.inflight.get(url)
            if found is None:
                raise RuntimeError(f"{url}: a sample from a shard that was not handed to the reader")
            entry = found
        self.cur = entry
        self.pos = entry.pos
        base = make_ref(entry.pos, 0)
        self.ref = base + entry.ordinal - 1
        self.stop = base + entry.limit
        self.skip = base + entry.drop

    def position(self) -> dict[str, Any]:
        """`{"next": n, "open": [[position, k], ...]}` as of the samples handed on so far."""
        if self.ambiguous is not None:
            raise ResumeError(
                f"{self.ambiguous} comes twice in a row in the shard stream and has no index, so the samples "
                "of one reading cannot be told from the other's; build its index with `fastwds index`"
            )
        if self.ordered:
            if self.pos < 0:
                return {"next": self.start, "open": []}
            cur = self.cur
            if (
                self.lookup.enabled
                and cur is not None
                and cur.limit == math.inf
                and cur.whole
                and shardindex._local_path(cur.url)
            ):
                count = self.lookup.count(cur.url)
                self._set_limit(cur, math.inf if count is None else count)
            ordinal = self.ordinal
            if cur is not None and ordinal >= cur.limit:
                return {"next": self.pos + 1, "open": []}  # the shard is finished: no need to open it again
            return {"next": self.pos + 1, "open": [[self.pos, ordinal]]}
        cur = self.cur
        if cur is not None:
            cur.ordinal = self.ordinal
        found = {e.pos: e.ordinal for e in self.inflight.values() if e.ordinal < e.limit}
        for pos, k in self.unfed:
            found[pos] = k
        return {"next": self.next, "open": [[p, found[p]] for p in sorted(found)]}


class IndexLookup:
    """The shard indexes one pass uses, each looked up once, with the dataset's storage options; none when
    the samples may differ from the indexes' (`select_files`, `rename_files`)."""

    __slots__ = ("enabled", "storage_options", "_counts", "_indexes")

    def __init__(self, enabled: bool = True, storage_options: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.storage_options = storage_options
        self._counts: dict[str, int | None] = {}
        self._indexes: dict[str, shardindex.ShardIndex | None] = {}

    def count(self, url: str) -> int | None:
        """A shard's sample count from its index; None without a usable one."""
        return self._find(self._counts, shardindex.sample_count, url)

    def index(self, url: str) -> shardindex.ShardIndex | None:
        """A shard's index; None without a usable one."""
        return self._find(self._indexes, shardindex.load_index, url)

    def _find(self, found: dict[str, Any], look_up: Callable[..., Any], url: str) -> Any:
        if not self.enabled:
            return None
        if url not in found:
            try:
                found[url] = look_up(url, storage_options=self.storage_options)
            except (ValueError, OSError):
                found[url] = None
        return found[url]


################################################################
# the sample shuffle
################################################################


class ShuffleTrack:
    """The sample shuffle's buffer as references (see `make_ref`), parallel to the samples."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.refs: list[int] = []


def tracked_shuffle(
    data: Iterable[Any],
    bufsize: int,
    initial: int,
    rng: random.Random,
    tar: TarTrack,
    track: ShuffleTrack,
    restored: list[list[int]] | None = None,
    rng_state: Any = None,
) -> Iterator[Any]:
    """`filters._shuffle` (the same draws, the same order), keeping `track.refs` parallel to the buffer; with
    `restored`, the first len(restored) samples of `data` refill the buffer (with those references) and the
    generator continues from `rng_state`."""
    randbelow = filters._randbelow_of(rng)
    source = iter(data)
    initial = min(initial, bufsize)
    buf: list[Any] = []
    refs = track.refs
    append = buf.append
    pop = buf.pop
    rappend = refs.append
    rpop = refs.pop
    if restored:
        for ref in restored:
            try:
                append(next(source))
            except StopIteration:
                raise ResumeError(
                    "the shuffle buffer could not be refilled: a buffered sample is missing"
                ) from None
            rappend(make_ref(ref[0], ref[1]))
    if rng_state is not None:
        rng.setstate(_rng_state_in(rng_state))
    for sample in source:
        append(sample)
        rappend(tar.ref)
        if len(buf) < bufsize:
            try:
                append(next(source))
                rappend(tar.ref)
            except StopIteration:
                pass
        n = len(buf)
        if n >= initial:
            k = randbelow(n)
            last = pop()
            lastref = rpop()
            if k < n - 1:
                sample = buf[k]
                buf[k] = last
                refs[k] = lastref
                yield sample
            else:
                yield last
    while buf:
        n = len(buf)
        k = randbelow(n)
        last = pop()
        lastref = rpop()
        if k < n - 1:
            sample = buf[k]
            buf[k] = last
            refs[k] = lastref
            yield sample
        else:
            yield last


def _rng_state_out(state: Any) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_in(state: list[Any]) -> Any:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _shuffle_args(stage: Any) -> tuple[int, int, random.Random | None, Any]:
    """(bufsize, initial, rng, seed) of a sample shuffle stage, as `filters._shuffle` takes them."""
    if isinstance(stage, filters.detshuffle):
        return stage.bufsize, stage.initial, None, None
    names = ("bufsize", "initial", "rng", "seed")
    values: dict[str, Any] = {"bufsize": 1000, "initial": 100, "rng": None, "seed": None}
    values.update(zip(names, stage.args))
    values.update({k: v for k, v in stage.kw.items() if k in names})
    return values["bufsize"], values["initial"], values["rng"], values["seed"]


################################################################
# one iteration of a dataset
################################################################


class Run:
    """One iteration (`iter(dataset)`) of a `WebDataset`: its passes, each with the tar stage's and the
    shuffle's progress, and the state they make."""

    def __init__(self, dataset: WebDataset, plan: dict[str, Any] | None) -> None:
        self.dataset = dataset
        self.plan = plan
        self.layout = Layout(dataset.pipeline)
        self.epoch: int | None = None
        self.tar: TarTrack | None = None
        self.shuffle: ShuffleTrack | None = None
        self.yielded = plan.get("yielded", 0) if plan else 0
        self.passes = plan.get("passes", 0) if plan else 0
        self.entropy: dict[str, Any] = {}

    def __iter__(self) -> Iterator[Any]:
        ds = self.dataset
        if ds.repetitions == 1:
            return self.one_pass(self.plan)
        return self.repeated()

    def repeated(self) -> Iterator[Any]:
        """The passes of a `with_epoch`/`repeat` epoch, cut at `nsamples` items."""
        ds = self.dataset
        nsamples = ds.nsamples
        plan = self.plan
        while self.passes < ds.repetitions or plan is not None:
            if nsamples > 0 and self.yielded >= nsamples:
                return
            resumed = plan is not None and plan.get("shards") is not None
            if not resumed:
                plan = None
                self.passes += 1
            count = 0
            for item in self.one_pass(plan):
                count += 1
                self.yielded += 1
                yield item
                if nsamples > 0 and self.yielded >= nsamples:
                    return
            plan = None
            if count == 0 and not resumed:
                break

    def one_pass(self, plan: dict[str, Any] | None) -> Iterator[Any]:
        """The items of one pass, resumed from `plan` when it has a position."""
        ds = self.dataset
        pipeline = ds.pipeline
        layout = self.layout
        if plan is not None:
            ds.set_epoch(plan["epoch"])
            self._restore_random(plan)
        position = plan.get("shards") if plan is not None else None
        tar_stage = pipeline[layout.tar]
        self.epoch = tar_stage.epoch + 1
        ordered = bool(tar_stage.reader_options.get("ordered", True))
        # select_files and rename_files can make the samples differ from the index's.
        use_index = tar_stage.select_files is None and tar_stage.rename_files is None
        # Looked up again each pass: a shard may have been indexed since.
        lookup = IndexLookup(use_index, tar_stage.reader_options.get("storage_options"))
        stream: Any = ds.invoke(pipeline[0])
        for stage in pipeline[1 : layout.tar]:
            stream = ds.invoke(stage, stream)
        self._note_random()
        if position is None:
            track = TarTrack(ordered, lookup=lookup)
            items: Iterator[Any] = ((i, s, s, 0, 0) for i, s in enumerate(stream))
            restored = None
        else:
            track = TarTrack(ordered, position["next"], position["open"], lookup)
            restored = (plan or {}).get("shuffle", {}) or {}
            items = self._resumed_specs(stream, position, restored.get("refs", []), track)
        self.tar = track
        self.shuffle = None
        stream = tar_stage(track.feed(items), _track=track)
        for i in range(layout.tar + 1, len(pipeline)):
            stage = pipeline[i]
            if i == layout.shuffle:
                stream = self._shuffled(stage, stream, track, restored)
            else:
                stream = ds.invoke(stage, stream)
        return iter(stream)

    def _shuffled(
        self, stage: Any, stream: Iterator[Any], tar: TarTrack, restored: dict[str, Any] | None
    ) -> Iterator[Any]:
        bufsize, initial, rng, seed = _shuffle_args(stage)
        if isinstance(stage, filters.detshuffle):
            rng = stage.next_generator()
        elif seed is not None:
            rng = random.Random(seed)
        elif rng is None:
            rng = random.Random()
        track = ShuffleTrack(rng)
        self.shuffle = track
        refs = restored.get("refs") if restored else None
        rng_state = restored.get("rng") if restored else None
        return tracked_shuffle(stream, bufsize, initial, rng, tar, track, refs, rng_state)

    def _resumed_specs(
        self,
        stream: Iterable[Any],
        position: dict[str, Any],
        refs: list[list[int]],
        track: TarTrack,
    ) -> Iterator[tuple[int, dict[str, Any], dict[str, Any] | None, int, int]]:
        """The shard stream from the saved position (the open shards from their saved ordinals, then the
        shards from `next`), after noting in `track` the buffered samples to re-read."""
        nxt = position["next"]
        open_ = {p: k for p, k in position["open"]}
        wanted = set(open_) | {p for p, _ in refs}
        specs: dict[int, Any] = {}
        it = iter(enumerate(stream))
        rest: list[tuple[int, Any]] = []
        for pos, spec in it:
            if pos in wanted:
                specs[pos] = spec
            if pos >= nxt:
                rest.append((pos, spec))
                break
        missing = wanted - set(specs)
        if missing:
            raise ResumeError(
                f"the saved position names shard position {min(missing)}, which this epoch's shard stream "
                "does not reach"
            )
        track.reread = [(_as_dict(specs[p]), o) for p, o in refs]

        def generate() -> Iterator[tuple[int, dict[str, Any], dict[str, Any] | None, int, int]]:
            for pos in sorted(open_):
                spec = _as_dict(specs[pos])
                yield (pos, spec, *_from_ordinal(spec, open_[pos], track.lookup))
            for pos, spec in rest:
                yield pos, spec, spec, 0, 0
            for pos, spec in it:
                yield pos, spec, spec, 0, 0

        return generate()

    def _note_random(self) -> None:
        """Note the random choices made for this epoch by stages that draw them afresh."""
        self.entropy = {}
        for i, stage in enumerate(self.dataset.pipeline[: self.layout.tar]):
            if isinstance(stage, shardlists.ShardShuffle) and stage.__dict__.get("entropy") is not None:
                self.entropy[str(i)] = stage.entropy

    def _restore_random(self, plan: dict[str, Any]) -> None:
        pipeline = self.dataset.pipeline
        for key, value in (plan.get("entropy") or {}).items():
            stage = pipeline[int(key)]
            if isinstance(stage, shardlists.ShardShuffle) and not stage.seeded and not stage.deterministic:
                stage.resume_entropy = value
            elif isinstance(stage, shardlists.ResampledShards) and not stage.deterministic:
                stage.resume_seed = value

    def state(self) -> dict[str, Any]:
        """The state as of the items handed out so far (see the module's description)."""
        ds = self.dataset
        state: dict[str, Any] = {"yielded": self.yielded, "passes": self.passes}
        if self.tar is None:
            plan = self.plan
            if plan is not None:
                return {**plan, "yielded": self.yielded, "passes": self.passes}
            tar_stage = ds.pipeline[self.layout.tar]
            return {**state, "epoch": tar_stage.epoch + 1, "shards": None, "shuffle": None, "entropy": {}}
        state["epoch"] = self.epoch
        state["shards"] = self.tar.position()
        shuffle = self.shuffle
        state["shuffle"] = (
            None
            if shuffle is None
            else {"refs": [split_ref(r) for r in shuffle.refs], "rng": _rng_state_out(shuffle.rng.getstate())}
        )
        entropy = dict(self.entropy)
        source = ds.pipeline[0]
        if isinstance(source, shardlists.ResampledShards) and not source.deterministic:
            entropy["0"] = source.__dict__.get("epoch_seed")
        state["entropy"] = entropy
        return state


def _as_dict(spec: Any) -> dict[str, Any]:
    return spec if isinstance(spec, dict) else {"url": spec}


def _readable_as_span(spec: dict[str, Any]) -> bool:
    return "cache_path" not in spec and "stream" not in spec


def _span_first(spec: dict[str, Any], index: shardindex.ShardIndex) -> int:
    """The shard ordinal of a spec's first sample."""
    start = spec.get("start")
    return 0 if start is None else bisect.bisect_left(index.offsets, start)


def _span_stop(spec: dict[str, Any], index: shardindex.ShardIndex) -> int:
    end = spec.get("end")
    return index.count if end is None else bisect.bisect_left(index.offsets, end)


def _from_ordinal(
    spec: dict[str, Any], k: int, lookup: IndexLookup
) -> tuple[dict[str, Any] | None, int, int]:
    """(spec to read, first ordinal, samples to drop) to read `spec` from its k-th sample: a span from that
    sample's header with an index (None when nothing is left), else the spec with k samples to drop."""
    if k == 0:
        return spec, 0, 0
    index = lookup.index(spec["url"]) if _readable_as_span(spec) else None
    if index is None:
        return spec, 0, k
    first = _span_first(spec, index)
    stop = _span_stop(spec, index)
    if first + k >= stop:
        return None, k, 0
    adjusted = dict(spec)
    adjusted["start"] = index.offsets[first + k]
    adjusted["end"] = spec.get("end")
    if isinstance(spec.get("samples"), int):
        adjusted["samples"] = spec["samples"] - k
    return adjusted, k, 0


def reread_plan(
    items: list[tuple[dict[str, Any], int]], lookup: IndexLookup
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The reads that fetch the buffered samples `items` ((spec, ordinal) pairs): a span per sample of a
    shard with an index, the spec itself once for the others; and for each read what to take from it: the
    index of the item (a span) or {ordinal: [item indexes]} (a whole read)."""
    reads: list[dict[str, Any]] = []
    takes: list[Any] = []
    whole: dict[str, int] = {}
    for n, (spec, ordinal) in enumerate(items):
        index = lookup.index(spec["url"]) if _readable_as_span(spec) else None
        if index is not None:
            j = _span_first(spec, index) + ordinal
            if j >= index.count:
                raise ResumeError(f"{spec['url']}: the shard has no sample {j} any more (it changed)")
            span = {k: v for k, v in spec.items() if k not in ("samples",)}
            span["start"] = index.offsets[j]
            span["end"] = index.offsets[j + 1] if j + 1 < index.count else index.end
            reads.append(span)
            takes.append((n, index.keys[j]))
            continue
        key = json.dumps([spec.get("url"), spec.get("start"), spec.get("end")])
        if key not in whole:
            whole[key] = len(reads)
            reads.append(spec)
            takes.append({})
        takes[whole[key]].setdefault(ordinal, []).append(n)
    return reads, takes
