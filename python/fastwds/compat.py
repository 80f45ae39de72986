"""`WebDataset`, `WebLoader` and the fluent interface (`.shuffle(...).decode(...).to_tuple(...)`), with
webdataset 1.0.2's signatures and defaults; the tar stage underneath is the Rust core."""

from __future__ import annotations

import copy
import os
import random
import warnings
from collections.abc import Callable, Iterable, Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from . import autodecode, cache, epochs, filters, images, resume, shardindex, shardlists, utils
from .filters import reraise_exception
from .pipeline import DataPipeline
from .reader import ShardSamples, _is_reraise

__all__ = ["FluidInterface", "check_empty", "WebDataset", "FluidWrapper", "WebLoader"]

# The class a fluent method is called on, which is the class of the pipeline it returns.
_Fluid = TypeVar("_Fluid", bound="FluidInterface")
_Dataset = TypeVar("_Dataset", bound="WebDataset")


class FluidInterface:
    """The chainable methods of `WebDataset`, `WebLoader` and `FluidWrapper`.

    Each returns a new pipeline (`self.compose(stage)`) with one more stage from `fastwds.filters`, of the
    same class as this one.
    """

    if TYPE_CHECKING:
        # Provided by DataPipeline, which every class with the fluent methods also derives from.
        pipeline: list[Any]

        def compose(self: _Fluid, *args: Any) -> _Fluid: ...
        def stage(self, i: int) -> Any: ...
        def with_last_stage(self: _Fluid, stage: Any) -> _Fluid: ...

    def batched(
        self: _Fluid,
        batchsize: int,
        collation_fn: Callable[[list[Any]], Any] | None = filters.default_collation_fn,
        partial: bool = True,
    ) -> _Fluid:
        """Group samples into batches of `batchsize`, collated by `collation_fn` (None: lists); the last
        short batch is kept when `partial`."""
        return self.compose(filters.batched(batchsize, collation_fn=collation_fn, partial=partial))

    def unbatched(self: _Fluid) -> _Fluid:
        """Split batches back into samples."""
        return self.compose(filters.unbatched())

    def listed(self: _Fluid, batchsize: int, partial: bool = True) -> _Fluid:
        """Group samples into lists of `batchsize` without collating (webdataset ignores `partial` here)."""
        if partial:  # bound as webdataset binds it, so the stage prints the same
            return self.compose(filters.batched(batchsize=batchsize, collation_fn=None))
        return self.compose(filters.batched(batchsize=batchsize, collation_fn=None, partial=partial))

    def unlisted(self: _Fluid) -> _Fluid:
        """Split lists back into samples."""
        return self.compose(filters.unlisted())

    def log_keys(self: _Fluid, logfile: str | None = None) -> _Fluid:
        """Append each sample's key to `logfile` (nothing when None)."""
        return self.compose(filters.log_keys(logfile))

    def shuffle(self: _Fluid, size: int, **kw: Any) -> _Fluid:
        """Shuffle samples through a buffer of `size` (`initial=`, `seed=`, `rng=` as `filters.shuffle`);
        `size < 1` returns self unchanged."""
        if size < 1:
            return self
        return self.compose(filters.shuffle(size, **kw))

    def map(
        self: _Fluid, f: Callable[[Any], Any], handler: Callable[[BaseException], bool] = reraise_exception
    ) -> _Fluid:
        """Apply `f` to each sample; errors go to `handler`."""
        return self.compose(filters.map(f, handler=handler))

    def decode(
        self: _Fluid,
        *args: Any,
        pre: list[Any] | None = None,
        post: list[Any] | None = None,
        only: Any = None,
        partial: bool = False,
        handler: Callable[[BaseException], bool] = reraise_exception,
    ) -> _Fluid:
        """Decode fields by extension: strings are image specs ("rgb8", "pil", "torchrgb", ...), other
        arguments are handlers `f(key, data)`; see `autodecode.Decoder` for `pre`, `post`, `only`, `partial`."""
        decoder_handlers = [autodecode.imagehandler(x) if isinstance(x, str) else x for x in args]
        decoder = autodecode.Decoder(decoder_handlers, pre=pre, post=post, only=only, partial=partial)
        first = decoder_handlers[0] if decoder_handlers else None
        tar_stage = self._tar_stage_for_images()
        # Right after the tar stage, the first handler's images (the ones it would claim first) are decoded on
        # the reader threads; anything they cannot decode stays bytes for Pillow, so results are the same.
        if (
            tar_stage is not None
            and isinstance(first, autodecode.ImageHandler)
            and images.native_mode(first.imagespec) is not None
            and only is None
            and pre is None
        ):
            options = images.native_options(first.imagespec, first.extensions, keep_bytes_on_error=True)
            decoder.predecoded = first
            return self.with_last_stage(tar_stage.with_images(options)).map(decoder, handler=handler)
        return self.map(decoder, handler=handler)

    def decode_images(
        self: _Fluid,
        imagespec: str = "rgb8",
        *,
        seed: int | None = None,
        extensions: Any = autodecode.IMAGE_EXTENSIONS,
        handler: Callable[[BaseException], bool] = reraise_exception,
        **transform: Any,
    ) -> _Fluid:
        """Decode JPEG/PNG/PPM fields to `imagespec` ("rgb8", "l8", "rgb", "torchrgb", ...), pixel-identical to
        Pillow, optionally cropped to `size=(h, w)` (`crop="center"`, or `"random_resized"` with torchvision's
        `scale`/`ratio`) and flipped left-right with probability `flip`: `transform` takes what
        `fastwds.ImageOptions` takes, with its defaults. Random draws repeat for a `seed` (None: a random one)
        and change every epoch. Right after the tar stage this runs on the reader threads; elsewhere in this
        process. Other fields stay bytes."""
        tar_stage = self._tar_stage_for_images()
        if tar_stage is None:
            return self.compose(
                images.decode_images(
                    imagespec, seed=seed, extensions=extensions, handler=handler, **transform
                )
            )
        options = images.native_options(imagespec, extensions, seed=seed, **transform)
        return self.with_last_stage(tar_stage.with_images(options)).compose(
            images.FinishImages(imagespec, handler=handler)
        )

    def _tar_stage_for_images(self) -> ShardSamples | None:
        """The last stage if it is a tar stage that can still take on decoding images, else None."""
        last = self.stage(-1) if self.pipeline else None
        if isinstance(last, ShardSamples) and not last.decodes_images:
            return last
        return None

    def map_dict(
        self: _Fluid, handler: Callable[[BaseException], bool] = reraise_exception, **kw: Any
    ) -> _Fluid:
        """Apply `kw[field]` to each named field of dict samples."""
        return self.compose(filters.map_dict(handler=handler, **kw))

    def select(self: _Fluid, predicate: Callable[[Any], bool], **kw: Any) -> _Fluid:
        """Keep the samples for which `predicate` is true."""
        return self.compose(filters.select(predicate, **kw))

    def to_tuple(self: _Fluid, *args: Any, **kw: Any) -> _Fluid:
        """Turn dict samples into tuples of the named fields (`"jpg;png"` takes the first present)."""
        return self.compose(filters.to_tuple(*args, **kw))

    def map_tuple(
        self: _Fluid, *args: Any, handler: Callable[[BaseException], bool] = reraise_exception
    ) -> _Fluid:
        """Apply `args[i]` to element i of tuple samples."""
        return self.compose(filters.map_tuple(*args, handler=handler))

    def slice(self: _Fluid, *args: int) -> _Fluid:
        """Keep samples `itertools.islice(stream, *args)`."""
        return self.compose(filters.slice(*args))

    def rename(self: _Fluid, **kw: Any) -> _Fluid:
        """Rename fields: `rename(image="jpg;png", keep=True)`."""
        return self.compose(filters.rename(**kw))

    def rsample(self: _Fluid, p: float = 0.5) -> _Fluid:
        """Keep each sample with probability `p`."""
        return self.compose(filters.rsample(p))

    def rename_keys(self: _Fluid, *args: Any, **kw: Any) -> _Fluid:
        """Rename fields by glob patterns (see `filters.rename_keys`)."""
        return self.compose(filters.rename_keys(*args, **kw))

    def extract_keys(self: _Fluid, *args: Any, **kw: Any) -> _Fluid:
        """Turn samples into tuples of the fields matching glob patterns (see `filters.extract_keys`)."""
        return self.compose(filters.extract_keys(*args, **kw))

    def xdecode(self: _Fluid, *args: Any, **kw: Any) -> _Fluid:
        """Decode fields with decoders chosen by glob patterns (see `filters.xdecode`)."""
        return self.compose(filters.xdecode(*args, **kw))

    def mcached(self: _Fluid) -> _Fluid:
        """Cache the samples of the first pass in memory and replay them afterwards."""
        return self.compose(filters.Cached())

    def lmdb_cached(self: _Fluid, *args: Any, **kw: Any) -> _Fluid:
        """Cache the samples of the first pass in an LMDB database (see `filters.LMDBCached`)."""
        return self.compose(filters.LMDBCached(*args, **kw))


def check_empty(source: Iterable[Any]) -> Any:
    """Pass samples through; raise ValueError at the end when there were none."""
    count = 0
    for sample in source:
        yield sample
        count += 1
    if count == 0:
        raise ValueError(
            "No samples found in dataset; perhaps you have fewer shards than workers.\n"
            + "Turn off using empty_check=False in the WebDataset constructor."
        )


class WebDataset(DataPipeline, FluidInterface):
    """A dataset of the samples in a set of tar shards, read by the Rust core; a torch IterableDataset when
    torch is installed.

    `urls`: a brace pattern (`train-{000000..000099}.tar`, several joined by `::`, `${X}` from `WDS_X`), a
    list, a local directory ending in `/` (its `*.tar`, `*.tgz`, `*.tar.gz`, `*.tar.zst` files, sorted), a
    `.yaml` multi-dataset spec or such a spec as a dict. URLs are local paths, `file:`, `-`, `pipe:CMD`,
    http(s) (read natively), or any scheme `fastwds.gopen` knows.

    The pipeline: shard list -> `nodesplitter` -> `workersplitter` -> shard shuffle (a buffer of
    `shardshuffle` shards; `detshuffle=True` gives webdataset's per-epoch `seed + epoch` order) -> cache
    (`cache_dir`, `cache_size`, `url_to_name`) -> tar reading and grouping in the core (`handler`,
    `select_files`, `rename_files`) -> empty check. `resampled=True` (or `mode="resampled"`) draws shards
    with replacement endlessly (use `.with_epoch(n)`).

    Shard order: for a given `seed` (or `WDS_SEED`), the first epoch has webdataset's order and each later
    epoch a different, reproducible one (webdataset repeats the first order forever). Without a seed every
    epoch is shuffled afresh. With non-persistent DataLoader workers each epoch starts from a fresh copy of
    the dataset: call `set_epoch(e)` before each epoch to get a new order there.

    `reader_options` (fastwds only) tune the core's `ShardReader`: `threads`, `prefetch`, `buffer_bytes`,
    `buffer_samples`, `ordered=False` to yield samples of the shards in flight as they are ready instead
    of shard by shard, `max_member_bytes` (larger members are errors, default 2 GiB) and `read_timeout`
    (seconds a network read may wait for data, default 60).

    `balanced` (fastwds only): `"pad"` or `"drop"` for exact epochs in which every rank yields the same
    number of samples and every DataLoader worker the same number as its peers on the other ranks, read from
    contiguous ranges of the epoch's sample sequence (see `fastwds.epochs`; every shard needs an index:
    `fastwds index URLS`). The shards are ordered as given, or with `shardshuffle` shuffled as a whole per
    epoch from `seed` (0 when neither `seed` nor `WDS_SEED` is set, so that every rank has the same order);
    `nodesplitter`, `workersplitter` and `detshuffle` are not used. `"drop"` leaves out the last N %
    world_size samples of the epoch; `"pad"` reads samples from the start of the epoch again to fill the
    last ranks, with `__pad__` True on them (False on every other sample). Samples are read in order.

    `len(dataset)` is this rank's number of samples per epoch, counted from the shards' indexes (after
    `split_by_node`; for `balanced`, the length of a rank's range). It raises TypeError (as `len()` of an
    unsized object) when an index is missing or stale, or when the pipeline makes the count unknown:
    resampled or multi-dataset shard lists, `select_files`/`rename_files`, `repeat`/`with_epoch`, a custom
    node or worker splitter, or stages added after that may change the count (anything but `decode`,
    `decode_images`, `to_tuple`, `map_tuple`, `map_dict`, `rename`, `rename_keys`, `extract_keys`,
    `xdecode`, `shuffle` and `log_keys` with the default handler). `with_length(n)` takes precedence.
    """

    def __init__(
        self,
        urls: Any,
        handler: Callable[[BaseException], bool] = reraise_exception,
        mode: str | None = None,
        resampled: bool = False,
        repeat: bool = False,
        shardshuffle: int | bool | None = None,
        cache_size: float = -1,
        cache_dir: str | None = None,
        url_to_name: Callable[[str], str] = cache.pipe_cleaner,
        detshuffle: bool = False,
        nodesplitter: Callable[..., Any] | None = shardlists.single_node_only,
        workersplitter: Callable[..., Any] | None = shardlists.split_by_worker,
        select_files: Callable[[str], bool] | None = None,
        rename_files: Callable[[str], str] | None = None,
        empty_check: bool = True,
        verbose: bool = False,
        seed: Any = None,
        *,
        reader_options: dict[str, Any] | None = None,
        balanced: str | None = None,
    ) -> None:
        super().__init__()
        if resampled:
            mode = "resampled"
        if balanced is not None:
            self._check_balanced(balanced, mode, select_files, rename_files, reader_options)
            reader_options = {**(reader_options or {}), "ordered": True}
        if mode == "resampled" and shardshuffle not in (False, None):
            warnings.warn("WebDataset(shardshuffle=...) is ignored for resampled datasets", stacklevel=2)
        elif shardshuffle is None:
            warnings.warn(
                "WebDataset(shardshuffle=...) is None; set explicitly to False or a number", stacklevel=2
            )
        if shardshuffle is True:
            warnings.warn(
                "set WebDataset(shardshuffle=...) to a positive integer or 0 or False", stacklevel=2
            )
            shardshuffle = 100
        args = SimpleNamespace(**locals())
        self.verbose = verbose
        seeded = seed is not None or "WDS_SEED" in os.environ
        self._seeded = seeded or balanced is not None
        self.seed = os.environ.get("WDS_SEED", random.randint(0, 1000000)) if seed is None else seed
        self.update_cache_info(args)
        self._nodesplitter = nodesplitter
        self._lengths: dict[tuple[str, ...], int | str] = {}  # URLs -> sample count, or why it is unknown
        self._workersplitter = workersplitter
        self._plain = args.mode != "resampled" and select_files is None and rename_files is None

        if balanced is not None:
            self._init_balanced(args, balanced, seeded)
            self._init_stages = tuple(self.pipeline)
            return

        # A stream of {"url": ...}.
        self.create_url_iterator(args)
        if nodesplitter is not None:
            self.append(nodesplitter)
        if workersplitter:
            self.append(workersplitter)
        if args.shardshuffle and args.mode != "resampled":
            self.append(
                shardlists.ShardShuffle(
                    args.shardshuffle, seed=self.seed, deterministic=detshuffle, seeded=seeded
                )
            )
        # Remote shards are cached by the core while they stream; local ones are read in place either way.
        core_cache = None
        if args.cache_dir is not None and args.cache_size != 0:
            name_fn = None if url_to_name is cache.pipe_cleaner else url_to_name
            self.append(cache.CoreCache(args.cache_dir, url_to_name=name_fn))
            size = args.cache_size if args.cache_size > 0 else cache.default_cache_size
            core_cache = (args.cache_dir, int(min(size, 2**64 - 1)))
        self.append(
            ShardSamples(
                handler=handler,
                select_files=select_files,
                rename_files=rename_files,
                empty_check=empty_check,
                reader_options=reader_options,
                cache=core_cache,
            )
        )
        self._init_stages = tuple(self.pipeline)

    @staticmethod
    def _check_balanced(
        balanced: str,
        mode: str | None,
        select_files: Any,
        rename_files: Any,
        reader_options: dict[str, Any] | None,
    ) -> None:
        """Raise ValueError for options that balanced epochs cannot have."""
        if balanced not in epochs.BALANCED_MODES:
            raise ValueError(
                f"balanced={balanced!r}: use one of {', '.join(map(repr, epochs.BALANCED_MODES))} or None"
            )
        if mode == "resampled":
            raise ValueError("balanced epochs read every shard once per epoch: they cannot be resampled")
        if select_files is not None or rename_files is not None:
            raise ValueError(
                "balanced epochs count samples from the shard indexes: select_files and rename_files would "
                "change the counts"
            )
        if (reader_options or {}).get("ordered", True) is False:
            raise ValueError(
                "balanced epochs read their shards in order: reader_options ordered=False is refused"
            )

    def _init_balanced(self, args: SimpleNamespace, balanced: str, seeded: bool) -> None:
        """The pipeline of a balanced dataset: `epochs.BalancedShards` and `epochs.BalancedSamples`."""
        urls = args.urls
        if isinstance(urls, os.PathLike):
            urls = os.fspath(urls)
        if isinstance(urls, dict) or (isinstance(urls, str) and urls.endswith((".yaml", ".yml", ".json"))):
            raise ValueError("balanced epochs need a list of shards, not a multi-dataset spec")
        if isinstance(urls, str):
            if shardlists.needs_listing(urls):
                storage_options = (args.reader_options or {}).get("storage_options")
                urls = shardlists.expand_urls(urls, storage_options=storage_options)
            elif urlparse(urls).path.endswith("/"):
                urls = shardlists.directory_shards(urls)
            else:
                urls = shardlists.expand_urls(urls)
        if not seeded:
            self.seed = 0  # every rank must draw the same shard order
        if args.cache_dir is not None and args.cache_size != 0:
            warnings.warn(
                "balanced epochs read spans of shards, which the shard cache does not hold: cache_dir is not used",
                stacklevel=3,
            )
        shards = epochs.BalancedShards(
            urls,
            balanced,
            shuffle=bool(args.shardshuffle),
            seed=self.seed,
            storage_options=(args.reader_options or {}).get("storage_options"),
        )
        shards.counts()  # every shard needs an index: say so now, not in a DataLoader worker
        self.append(shards)
        self.append(
            epochs.BalancedSamples(
                handler=args.handler,
                empty_check=args.empty_check,
                reader_options=args.reader_options,
            )
        )

    def __bool__(self) -> bool:
        # A dataset is true whether or not its length is known (len() may raise TypeError).
        return True

    def __len__(self) -> int:
        """This rank's number of samples per epoch, counted from the shard indexes.

        Raises TypeError when an index is missing or stale, or when the pipeline makes the count unknown (see
        the class's description)."""
        stages = self.__dict__.get("_init_stages", ())
        pipeline = self.__dict__.get("pipeline", [])
        n = len(stages)
        known = (
            n > 0
            and self._plain
            and self.repetitions == 1
            and self.nsamples <= 0
            and len(pipeline) >= n
            and all(a is b for a, b in zip(pipeline[: n - 1], stages[:-1]))
            and isinstance(pipeline[n - 1], ShardSamples)
            and all(map(_keeps_count, pipeline[n:]))
        )
        source = stages[0] if stages else None
        if not known or not isinstance(source, (shardlists.SimpleShardList, epochs.BalancedShards)):
            raise TypeError(
                f"the length of this {type(self).__name__} is unknown: its pipeline can change the number of "
                "samples (set one with .with_length(n))"
            )
        try:
            if isinstance(source, epochs.BalancedShards):
                return source.rank_length()
            urls = source.urls
            if self._nodesplitter is shardlists.split_by_node:
                rank, world_size, _, _ = utils.pytorch_worker_info()
                urls = urls[rank::world_size]
            elif self._nodesplitter not in (None, shardlists.single_node_only):
                raise TypeError(
                    f"the length of this {type(self).__name__} is unknown: its nodesplitter is not "
                    "split_by_node (set one with .with_length(n))"
                )
            if self._workersplitter not in (None, shardlists.split_by_worker):
                raise TypeError(
                    f"the length of this {type(self).__name__} is unknown: its workersplitter is not "
                    "split_by_worker (set one with .with_length(n))"
                )
            for url in urls:
                if not _has_index_place(url):
                    raise TypeError(
                        f"the length of this {type(self).__name__} is unknown: {url} is not a local or "
                        "s3/gs/http(s)/hf shard, whose index fastwds reads (set one with .with_length(n))"
                    )
            # Computed once per dataset (and its fluent copies): list(dataset) asks for it too.
            key = tuple(urls)
            found = self._lengths.get(key)
            if found is None:
                try:
                    storage_options = pipeline[n - 1].reader_options.get("storage_options")
                    found = sum(epochs.sample_counts(urls, storage_options=storage_options))
                except (ValueError, OSError) as exn:
                    found = f"the length of this {type(self).__name__} is unknown: {exn}"
                self._lengths[key] = found
            if isinstance(found, str):
                raise TypeError(found)
            return found
        except (ValueError, OSError) as exn:
            raise TypeError(f"the length of this {type(self).__name__} is unknown: {exn}") from exn

    def __iter__(self) -> Iterator[Any]:
        """Iterate one epoch (resuming the one a `load_state_dict` describes, if one was loaded)."""
        plan = self.__dict__.pop("_resume_plan", None)
        run = resume.Run(self, plan)
        self._resume_run = run
        return iter(run)

    def state_dict(self) -> dict[str, Any]:
        """The state of this dataset's latest iteration, as of the items it has yielded (JSON-able, small):
        `load_state_dict` on a dataset of the same configuration makes its next iteration yield exactly the
        items this one would have yielded next (see `fastwds.resume`). torchdata's `StatefulDataLoader` calls
        it in each worker. Raises ValueError when the pipeline cannot be resumed (naming the stage)."""
        run = self.__dict__.get("_resume_run")
        if run is None or run.dataset is not self:
            run = resume.Run(self, self.__dict__.get("_resume_plan"))
        run.layout.check()
        state = run.state()
        state["version"] = resume.STATE_VERSION
        state["fingerprint"] = resume._fingerprint(resume.fingerprint_parts(self))
        state["images"] = self._image_seeds()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration resume where the iteration that saved `state` (with `state_dict`) was.
        Raises ValueError when `state` comes from another configuration (saying what differs), from an
        unknown version, or the pipeline cannot be resumed."""
        if not isinstance(state, dict) or state.get("version") != resume.STATE_VERSION:
            raise ValueError(f"not a fastwds WebDataset state of version {resume.STATE_VERSION}")
        resume.Layout(self.pipeline).check()
        resume.check_fingerprint(state.get("fingerprint", {}), resume.fingerprint_parts(self))
        self._set_image_seeds(state.get("images") or {})
        self.set_epoch(int(state["epoch"]))
        self._resume_plan = state if state.get("shards") is not None else None
        self.__dict__.pop("_resume_run", None)

    def _image_seeds(self) -> dict[str, int]:
        """The random seeds of the image stages, by stage position."""
        seeds = {}
        for i, stage in enumerate(self.pipeline):
            if isinstance(stage, ShardSamples) and stage.images is not None:
                seeds[str(i)] = int(stage.images.seed)
            elif isinstance(stage, images.DecodeImages):
                seeds[str(i)] = int(stage.options.seed)
        return seeds

    def _set_image_seeds(self, seeds: dict[str, int]) -> None:
        pipeline = self.pipeline
        for key, seed in seeds.items():
            i = int(key)
            stage = pipeline[i] if 0 <= i < len(pipeline) else None
            if isinstance(stage, ShardSamples) and stage.images is not None:
                options = stage.images.replace(seed=seed)
                stage = copy.copy(stage)
                stage.images = options
                pipeline[i] = stage
            elif isinstance(stage, images.DecodeImages):
                stage = copy.copy(stage)
                stage.options = stage.options.replace(seed=seed)
                pipeline[i] = stage

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_resume_run", None)  # a live iteration does not travel to DataLoader workers
        return state

    def update_cache_info(self, args: SimpleNamespace) -> None:
        """Apply `WDS_CACHE_SIZE` and `WDS_CACHE` from the environment. Raises ValueError when the cache
        directory does not exist."""
        args.cache_size = float(os.environ.get("WDS_CACHE_SIZE", args.cache_size))
        args.cache_dir = os.environ.get("WDS_CACHE", args.cache_dir)
        if args.cache_dir is not None:
            args.cache_dir = os.path.expanduser(args.cache_dir)
            if not os.path.exists(args.cache_dir):
                raise ValueError(f"cache directory {args.cache_dir} does not exist")

    def create_url_iterator(self, args: SimpleNamespace) -> None:
        """Append the shard list stage for `args.urls`. Raises ValueError for what it cannot handle."""
        urls = args.urls
        if isinstance(urls, os.PathLike):
            urls = os.fspath(urls)
        explicit_seed = args.seed
        if isinstance(urls, str) and (urls.endswith(".yaml") or urls.endswith(".yml")):
            self.append(shardlists.MultiShardSample(urls, seed=explicit_seed))
            return
        if isinstance(urls, dict):
            if "datasets" not in urls:
                raise ValueError("a dict of urls must be a multi-dataset spec with a 'datasets' key")
            self.append(shardlists.MultiShardSample(urls, seed=explicit_seed))
            return
        if isinstance(urls, str) and urls.endswith(".json"):
            raise ValueError("unimplemented")
        if isinstance(urls, str) and shardlists.needs_listing(urls):
            storage_options = (args.reader_options or {}).get("storage_options")
            urls = shardlists.expand_urls(urls, storage_options=storage_options)
        elif isinstance(urls, str) and urlparse(urls).path.endswith("/"):
            urls = shardlists.directory_shards(urls)
        if isinstance(urls, str) or utils.is_iterable(urls):
            if args.mode == "resampled":
                if explicit_seed is None:
                    self.append(shardlists.ResampledShards(urls))
                else:
                    self.append(shardlists.ResampledShards(urls, seed=explicit_seed, deterministic=True))
            else:
                self.append(shardlists.SimpleShardList(urls))
            return
        raise ValueError(f"cannot handle urls of type {type(urls)}")

    def set_epoch(self: _Dataset, epoch: int) -> _Dataset:
        """Make the next pass epoch `epoch` for the shard shuffle, resampling and random crops (for
        DataLoader workers that are not persistent, which start each epoch from a fresh copy); returns self."""
        for stage in self.pipeline:
            epoch_stages = (
                ShardSamples,
                epochs.BalancedShards,
                images.DecodeImages,
                shardlists.ShardShuffle,
                shardlists.ResampledShards,
                shardlists.MultiShardSample,
                filters.detshuffle,
            )
            if isinstance(stage, epoch_stages):
                stage.epoch = epoch - 1
        return self

    def __enter__(self: _Dataset) -> _Dataset:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()


# The stages with which len() still knows the count: the sample shuffle and the one-to-one ones.
_COUNTING_FILTERS = (filters._shuffle, *filters._ONE_TO_ONE)


def _has_index_place(url: str) -> bool:
    """Whether len() looks for a shard's index: a local shard (after `GOPEN_REWRITE`) or one the core reads
    natively (s3, gs, http(s), hf); other schemes (`pipe:`, user openers) are not opened just to count."""
    if shardindex._local_path(url) is not None:
        return True
    return urlparse(url).scheme in ("s3", "gs", "http", "https", "hf")


def _keeps_count(stage: Any) -> bool:
    """Whether a stage yields exactly one sample per sample it gets (or raises): the fluent stages that
    transform or reorder samples, with the default error handler."""
    if isinstance(stage, filters.FilterFunction):
        if not _is_reraise(stage.kw.get("handler")):
            return False
        if stage.f is filters._map:
            # .decode(): a Decoder always returns a sample; another function may return None (dropped).
            function = stage.args[0] if stage.args else stage.kw.get("f")
            return isinstance(function, autodecode.Decoder)
        return stage.f in _COUNTING_FILTERS
    if isinstance(stage, (images.FinishImages, images.DecodeImages)):
        return _is_reraise(stage.handler)
    return isinstance(stage, filters.detshuffle)


class FluidWrapper(DataPipeline, FluidInterface):
    """A `DataPipeline` over `initial` (a dataset or iterable) with the fluent methods."""

    def __init__(self, initial: Any) -> None:
        super().__init__()
        self.append(initial)


class WebLoader(DataPipeline, FluidInterface):
    """A torch `DataLoader(*args, **kw)` with the fluent methods, e.g. for rebatching across workers:
    `WebLoader(ds, batch_size=None, num_workers=4).unbatched().shuffle(1000).batched(64)`.

    With `num_workers=0` and no stages after the loader, `state_dict()`/`load_state_dict()` checkpoint and
    resume its dataset (see `WebDataset.state_dict`); with workers, use torchdata's `StatefulDataLoader`."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        from torch.utils.data import DataLoader

        super().__init__(DataLoader(*args, **kw))

    def _resumable_dataset(self) -> Any:
        """The dataset whose state is this loader's. Raises ValueError when the loader has workers (each holds
        its own copy of the dataset) or stages after it (which a dataset state does not cover)."""
        loader = self.pipeline[0]
        if len(self.pipeline) > 1:
            raise ValueError(
                "this WebLoader has stages after its DataLoader, which state_dict() cannot resume through: "
                "move them into the dataset's pipeline"
            )
        if loader.num_workers > 0:
            raise ValueError(
                "WebLoader.state_dict() needs num_workers=0: each DataLoader worker holds its own copy of the "
                "dataset and its state; torchdata's StatefulDataLoader collects them "
                "(from torchdata.stateful_dataloader import StatefulDataLoader)"
            )
        dataset = loader.dataset
        if not hasattr(dataset, "state_dict"):
            raise ValueError(f"this WebLoader's dataset ({type(dataset).__name__}) has no state_dict()")
        return dataset

    def state_dict(self) -> dict[str, Any]:
        """Its dataset's state as of the batches this loader has yielded (`num_workers=0` only)."""
        state: dict[str, Any] = self._resumable_dataset().state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration resume where the loader that saved `state` was (`num_workers=0` only)."""
        self._resumable_dataset().load_state_dict(state)
