"""Runs one benchmark configuration in a fresh Python process and reports samples, time, bytes and memory.

`python benches/measure.py CONFIG_JSON` is the child: it warms the page cache for the shards, imports only
what its reader needs, iterates, and prints one `RESULT {...}` line. `run_config(config)` is the parent side.

A configuration is a dict with:
  reader    "cat" | "gzip" | "webdataset" | "fastwds-wds" (fastwds.WebDataset) | "fastwds-core" (ShardReader)
            | "fastwds-core-t1" / "fastwds-core-t2" (ShardReader with 1 or 2 threads) | "dali" (NVIDIA DALI)
            | object-storage readers, whose `paths` are URLs: "curl" (parallel `curl -s -o /dev/null`, 4 at
            a time), "webdataset-curl" (webdataset on `pipe:curl -s URL`), "fastwds-s3" / "fastwds-s3-p16" /
            "fastwds-http" (fastwds.WebDataset on the URLs as given, with `reader_options`)
  workload  "raw" (dicts of bytes) | "shuffle" | "decode" | "loader0" | "loader2" | "decode-nw1" |
            "decode-nw2" | "rrc" | "rrc-nw0" | "rrc-nw1" | "rrc-nw2" (see benches/README.md)
  paths, sizes, samples_per_shard, fields (for to_tuple), budget (s), min_time (s)
  remote    true when `paths` are URLs (no page cache to warm); reader_options (optional, fastwds.WebDataset)

Reads stop only at a shard boundary: once `budget` seconds have passed, at the next multiple of
`samples_per_shard`, so both libraries always read whole shards (batched rows, whose batches do not line
up with shards, stop at the first batch past the budget). Short passes are repeated until `min_time`
has passed, and the rate is taken over all passes.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

RESULT_PREFIX = "RESULT "
CROP = 224
BATCH = 64
# ShardReader rows that give the native decoder's images/s per core: reader name -> threads.
CORE_THREADS = {"fastwds-core-t1": 1, "fastwds-core-t2": 2}
# The object-storage ceiling: objects fetched at once by parallel curls (about the reader's prefetch depth).
CURL_PARALLEL = 4


class NotAvailable(Exception):
    """The configuration needs an API that the fastwds found at run time does not have (yet)."""


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _proc_status_mb(pid: int | str, field: str) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next((x for x in f if x.startswith(field + ":")), None)
    except OSError:
        return None
    return int(line.split()[1]) / 1024 if line is not None else None


def _peak_rss_mb() -> float:
    # VmHWM is this address space's high-water mark. ru_maxrss would do on most systems, but Linux carries
    # the pre-exec high-water mark across execve, so a child of a big parent (the harness right after making
    # datasets) would report the parent's size; ru_maxrss is still recorded, as `ru_maxrss_mb`.
    peak = _proc_status_mb("self", "VmHWM")
    return peak if peak is not None else _ru_maxrss_mb()


def _ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _warm_page_cache(paths: list[str]) -> None:
    # readinto one reused buffer: the pages land in the page cache without growing this process's RSS.
    buffer = bytearray(1 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def _require(obj: Any, *names: str) -> None:
    for name in names:
        if not hasattr(obj, name):
            raise NotAvailable(f"{getattr(obj, '__name__', type(obj).__name__)}.{name}")


def _center_crop(sample: tuple) -> tuple:
    """Crops the image of a (HxWx3 array, label) tuple to its central 224x224 (both libraries use this map)."""
    import numpy as np

    image, label = sample[0], sample[1]
    h, w = image.shape[:2]
    top, left = (h - CROP) // 2, (w - CROP) // 2
    return np.ascontiguousarray(image[top : top + CROP, left : left + CROP]), label


def _as_lists(batch: list[tuple]) -> tuple[list, list]:
    """Collates a batch of (image, label) tuples of varying image sizes as a list of image tensors and a list
    of labels, without stacking."""
    import torch

    return [torch.from_numpy(sample[0]) for sample in batch], [sample[1] for sample in batch]


class _ReferenceAugment:
    """The reference training transform: torchvision's RandomResizedCrop(224) and RandomHorizontalFlip() on
    a PIL image, then `np.asarray`, as a torchvision user writes it."""

    def __init__(self) -> None:
        try:
            import torchvision.transforms
        except ImportError as error:
            raise NotAvailable(f"torchvision not installed ({error})") from error
        transforms = torchvision.transforms
        self.transform = transforms.Compose(
            [transforms.RandomResizedCrop(CROP), transforms.RandomHorizontalFlip()]
        )

    def __call__(self, image: Any) -> Any:
        import numpy as np

        return np.asarray(self.transform(image))


def is_batched(workload: str) -> bool:
    """Whether a workload yields batches of BATCH samples (counted by their labels) instead of samples."""
    return workload.startswith(("loader", "rrc")) or "-nw" in workload


def _library(reader: str) -> Any:
    if reader.startswith("webdataset"):
        import webdataset

        return webdataset
    try:
        import fastwds
    except ImportError as error:
        raise NotAvailable(f"import fastwds: {error}") from error
    return fastwds


def _shard_reader_class(fastwds: Any) -> Any:
    if hasattr(fastwds, "ShardReader"):
        return fastwds.ShardReader
    try:
        from fastwds import _core
    except ImportError as error:
        raise NotAvailable(f"fastwds._core: {error}") from error
    _require(_core, "ShardReader")
    return _core.ShardReader


def build_factory(config: dict[str, Any]) -> Callable[[], Iterable[Any]]:
    """Imports the reader and returns a function making one fresh pass over the configuration's shards."""
    reader, workload, urls = config["reader"], config["workload"], list(config["paths"])
    if reader == "webdataset-curl":
        # As the reference's users read a bucket: a presigned URL each, through curl (the URL is quoted: its
        # query has `&`s, and pipe: runs a shell).
        urls = [f"pipe:curl -s {shlex.quote(url)}" for url in urls]
    if reader == "dali":
        return _dali_factory(workload, urls, config["samples_per_shard"] * len(urls))
    lib = _library(reader)
    if reader == "fastwds-core":
        if workload != "raw":
            raise ValueError("fastwds.ShardReader is measured raw only")
        shard_reader = _shard_reader_class(lib)
        return lambda: shard_reader(urls)
    if reader in CORE_THREADS:
        if workload != "decode":
            raise ValueError(f"{reader} is measured on decode only")
        shard_reader = _shard_reader_class(lib)
        threads, images = CORE_THREADS[reader], {"mode": "rgb8"}
        try:
            shard_reader(urls[:1], threads=threads, images=images)
        except TypeError as error:  # a core built before native decoding has no `images` argument
            raise NotAvailable(f"ShardReader(images=...): {error}") from error
        return lambda: shard_reader(urls, threads=threads, images=images)
    _require(lib, "WebDataset")

    options = config.get("reader_options") or {}

    def dataset() -> Any:
        if options:
            return lib.WebDataset(urls, shardshuffle=False, reader_options=options)
        return lib.WebDataset(urls, shardshuffle=False)

    if workload == "raw":
        return dataset
    if workload == "write":
        return _writer_factory(lib, urls, config["write_dir"])
    if workload == "shuffle":
        _require(dataset(), "shuffle", "to_tuple")
        fields = config["fields"]
        return lambda: dataset().shuffle(1000).to_tuple(*fields)
    if workload == "decode":
        _require(dataset(), "decode", "to_tuple")
        return lambda: dataset().decode("rgb8").to_tuple("jpg", "cls")
    if workload in ("loader0", "loader2"):
        _require(dataset(), "decode", "to_tuple", "map")
        import torch.utils.data

        workers = int(workload[-1])
        return lambda: torch.utils.data.DataLoader(
            dataset().decode("rgb8").to_tuple("jpg", "cls").map(_center_crop),
            batch_size=BATCH,
            num_workers=workers,
        )
    if workload in ("decode-nw1", "decode-nw2"):
        # Full-size images differ in shape, so batches travel as lists; as tensors, each image crosses to
        # the main process in shared memory instead of being pickled through a pipe.
        _require(dataset(), "decode", "to_tuple")
        import torch.utils.data

        workers = int(workload[-1])
        return lambda: torch.utils.data.DataLoader(
            dataset().decode("rgb8").to_tuple("jpg", "cls"),
            batch_size=BATCH,
            num_workers=workers,
            collate_fn=_as_lists,
        )
    if workload == "rrc":
        if reader != "fastwds-wds":
            raise ValueError("the native random-resized-crop row is fastwds's; the reference runs rrc-nwN")
        _require(dataset(), "decode_images", "to_tuple", "batched")
        return lambda: (
            dataset()
            .decode_images("rgb8", size=(CROP, CROP), crop="random_resized", flip=0.5, seed=0)
            .to_tuple("jpg", "cls")
            .batched(BATCH)
        )
    if workload in ("rrc-nw0", "rrc-nw1", "rrc-nw2"):
        _require(dataset(), "decode", "to_tuple", "map_tuple")
        augment = _ReferenceAugment()
        import torch.utils.data

        workers = int(workload[-1])
        return lambda: torch.utils.data.DataLoader(
            dataset().decode("pilrgb").to_tuple("jpg", "cls").map_tuple(augment, None),
            batch_size=BATCH,
            num_workers=workers,
        )
    raise ValueError(f"unknown workload {workload!r}")


def _load_samples(urls: list[str]) -> list[dict[str, Any]]:
    """The shards' samples as dicts of bytes, read with Python's tarfile (no reader under test involved)."""
    import tarfile

    samples: list[dict[str, Any]] = []
    for url in urls:
        with tarfile.open(url) as tf:
            for member in tf:
                if not member.isreg():
                    continue
                name = member.name
                dot = name.find(".", name.rfind("/") + 1)
                if dot < 0:
                    continue
                key, field = name[:dot], name[dot + 1 :]
                if not samples or samples[-1]["__key__"] != key:
                    samples.append({"__key__": key})
                samples[-1][field] = tf.extractfile(member).read()
    return samples


def _writer_factory(lib: Any, urls: list[str], write_dir: str) -> Callable[[], Iterable[Any]]:
    """Each pass writes the shards' samples (held in memory) into one tar file with `TarWriter(path,
    encoder=False)`, yielding each sample once written; the file is removed after the pass."""
    _require(lib, "TarWriter")
    samples = _load_samples(urls)

    def write_pass() -> Iterator[Any]:
        path = os.path.join(write_dir, f"write-{os.getpid()}.tar")
        try:
            with lib.TarWriter(path, encoder=False) as sink:
                for sample in samples:
                    sink.write(sample)
                    yield sample
        finally:
            if os.path.exists(path):
                os.remove(path)

    return write_pass


def _dali_factory(workload: str, urls: list[str], total: int) -> Callable[[], Iterable[Any]]:
    """NVIDIA DALI's CPU pipeline over the shards: `readers.webdataset` + `decoders.image` (and for "rrc"
    `random_resized_crop` + a random horizontal flip), with as many threads as fastwds's default.

    Each pass builds the pipeline (DALI's "start iterating": it also scans the tars, having no index files)
    and runs it for one epoch. Decode passes yield (HxWx3 array, label) per sample, rrc passes batches of
    (64x224x224x3 array, labels), all as numpy arrays. The factory first runs one batch over the first shard,
    outside the timing, which loads DALI's decoder plugins; a DALI that cannot run here is "n/a".
    """
    if workload not in ("decode", "rrc"):
        raise ValueError(f"DALI is measured on decode and rrc only, not {workload!r}")
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError as error:
        raise NotAvailable(f"nvidia-dali not installed ({error})") from error
    import numpy as np

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, min(4, usable))  # fastwds's ShardReader default

    @pipeline_def(batch_size=BATCH, num_threads=threads, device_id=None, prefetch_queue_depth=2)
    def pipeline(paths: list[str]) -> Any:
        # pad_last_batch: an epoch ends at a batch boundary instead of running into the next epoch.
        jpg, cls = fn.readers.webdataset(paths=paths, ext=["jpg", "cls"], pad_last_batch=True)
        images = fn.decoders.image(jpg, device="cpu", output_type=types.RGB)
        if workload == "rrc":
            images = fn.random_resized_crop(images, size=CROP)
            images = fn.flip(images, horizontal=fn.random.coin_flip())
        return images, cls

    def labels(tensors: Any, count: int) -> list[int]:
        return [int(np.asarray(tensors[i]).tobytes()) for i in range(count)]

    def one_pass(paths: list[str], samples: int) -> Iterable[Any]:
        pipe = pipeline(paths)
        pipe.build()
        try:
            for start in range(0, samples, BATCH):
                images, cls = pipe.run()
                count = min(BATCH, samples - start)  # the padding of the last batch is not counted
                if workload == "rrc":
                    yield images.as_array()[:count], labels(cls, count)
                else:
                    yield from zip((np.asarray(images[i]) for i in range(count)), labels(cls, count))
        finally:
            del pipe

    try:
        probe = one_pass(urls[:1], 1)
        next(iter(probe))
        probe.close()
    except Exception as error:  # whatever stops DALI from running on this machine makes its rows n/a
        raise NotAvailable(f"DALI cannot run here: {type(error).__name__}: {error}") from error
    return lambda: one_pass(urls, total)


def _workers_peak_rss_mb(iterator: Any) -> float:
    # A DataLoader iterator's worker processes are reaped as soon as they finish, and RUSAGE_CHILDREN is
    # already polluted by helpers that `import torch` runs, so read each live worker's own high-water mark.
    peaks = [_proc_status_mb(w.pid, "VmHWM") for w in getattr(iterator, "_workers", None) or ()]
    return max((p for p in peaks if p is not None), default=0.0)


def _warm_up(config: dict[str, Any]) -> None:
    """Pulls one sample through the same stages over the first shard, outside the timing.

    One-time costs (modules a library imports lazily, on construction or on first use, such as torch or a
    decoder) then land before the clock starts for every reader alike, as `import webdataset` already does.
    """
    if config["reader"] == "dali":
        return  # its factory already ran one batch over the first shard
    workload = config["workload"]
    if workload.startswith(("loader", "decode-nw")):
        workload = "decode"
    elif workload.startswith("rrc-nw"):
        workload = "rrc-nw0"  # the same transforms in this process (one batch)
    iterator = iter(build_factory(config | {"workload": workload, "paths": config["paths"][:1]})())
    next(iterator, None)
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def _one_pass(
    make: Callable[[], Iterable[Any]], batched: bool, per_shard: int, budget: float
) -> tuple[int, float, float]:
    count = 0
    workers_peak = 0.0
    start = time.perf_counter()
    iterator = iter(make())  # inside the timing: starting threads or workers is part of the cost
    try:
        if batched:
            for batch in iterator:
                count += len(batch[1])
                workers_peak = max(workers_peak, _workers_peak_rss_mb(iterator))
                # Batches do not line up with shards, so a loader stops at the first batch past the budget.
                if time.perf_counter() - start > budget:
                    break
        else:
            for _ in iterator:
                count += 1
                if count % per_shard == 0 and time.perf_counter() - start > budget:
                    break
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
        del iterator
    return count, time.perf_counter() - start, workers_peak


def _run_command(command: str, paths: list[str]) -> float:
    start = time.perf_counter()
    # "$@" passes the paths without any quoting issue; the redirect is the point of the measurement.
    subprocess.run(["sh", "-c", command + ' "$@" > /dev/null', "sh", *paths], check=True)
    return time.perf_counter() - start


def _fetch_all(urls: list[str]) -> float:
    """Seconds to fetch every URL to /dev/null with CURL_PARALLEL curls at a time (xargs -P)."""
    start = time.perf_counter()
    subprocess.run(
        ["xargs", "-d", "\n", "-n", "1", "-P", str(CURL_PARALLEL), "curl", "-s", "-f", "-o", "/dev/null"],
        input="\n".join(urls),
        text=True,
        check=True,
    )
    return time.perf_counter() - start


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """Runs one configuration in this process and returns what it measured."""
    rss_start = _current_rss_mb()
    paths, sizes, per_shard = config["paths"], config["sizes"], config["samples_per_shard"]
    total_samples = per_shard * len(paths)
    budget, min_time = float(config["budget"]), float(config["min_time"])
    if not config.get("remote"):
        _warm_page_cache(paths)
    result: dict[str, Any] = {"rss_start_mb": rss_start}

    if config["reader"] in ("cat", "gzip", "curl"):
        command = {"cat": "cat", "gzip": "gzip -dc"}.get(config["reader"])
        samples = seconds = 0.0
        passes = 0
        while passes == 0 or seconds < min_time:
            seconds += _run_command(command, paths) if command else _fetch_all(paths)
            samples += total_samples
            passes += 1
        result.update(
            samples=int(samples),
            samples_per_pass=total_samples,
            seconds=seconds,
            bytes=sum(sizes) * passes,
            passes=passes,
            complete=True,
            rss_after_imports_mb=None,
            peak_rss_mb=None,  # the memory of cat, gzip or curl is not what this row is about
        )
        return result

    make = build_factory(config)
    _warm_up(config)
    result["rss_after_imports_mb"] = _current_rss_mb()
    batched = is_batched(config["workload"])
    samples = passes = 0
    seconds = 0.0
    shards_read = 0
    first_pass = None
    complete = True
    workers_peak = 0.0
    while passes == 0 or (seconds < min_time and complete):
        count, elapsed, peak = _one_pass(make, batched, per_shard, budget)
        workers_peak = max(workers_peak, peak)
        first_pass = count if first_pass is None else first_pass
        samples += count
        seconds += elapsed
        passes += 1
        complete = count >= total_samples
        shards_read += len(paths) if complete else count // per_shard
    nshards = len(paths)
    if batched and not complete:
        # Workers interleave shards; count the bytes of the samples delivered, pro rata.
        read_bytes = round(sum(sizes) * (passes - 1 + count / total_samples))
    else:
        read_bytes = (shards_read // nshards) * sum(sizes) + sum(sizes[: shards_read % nshards])
    result.update(
        samples=samples,
        samples_per_pass=first_pass,
        seconds=seconds,
        bytes=read_bytes,
        passes=passes,
        complete=complete,
        peak_rss_mb=_peak_rss_mb(),
        ru_maxrss_mb=_ru_maxrss_mb(),
        workers_peak_rss_mb=workers_peak or None,
    )
    return result


def run_config(config: dict[str, Any], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs `config` in a fresh Python process and returns its result, with `status` "ok", "n/a" or "error"."""
    argv = [sys.executable, os.path.abspath(__file__), json.dumps(config)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"status": "error", "error": f"exit {proc.returncode}: {tail}"}


def main(argv: list[str]) -> int:
    """The child: measure the configuration given as JSON in argv[1] and print one RESULT line."""
    config = json.loads(argv[1])
    try:
        result = measure(config)
        result["status"] = "ok"
    except NotAvailable as error:
        result = {"status": "n/a", "error": f"not available: {error}"}
    except Exception as error:  # reported in the table; the harness goes on with the other rows
        import traceback

        traceback.print_exc()
        result = {"status": "error", "error": f"{type(error).__name__}: {error}"}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
