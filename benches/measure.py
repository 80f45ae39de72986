"""Runs one benchmark configuration in a fresh Python process and reports samples, time, bytes and memory.

`python benches/measure.py CONFIG_JSON` is the child: it warms the page cache for the shards, imports only
what its reader needs, iterates, and prints one `RESULT {...}` line. `run_config(config)` is the parent side.

A configuration is a dict with:
  reader    "cat" | "gzip" | "webdataset" | "fastwds-wds" (fastwds.WebDataset) | "fastwds-core" (ShardReader)
  workload  "raw" (dicts of bytes) | "shuffle" | "decode" | "loader0" | "loader2"
  paths, sizes, samples_per_shard, fields (for to_tuple), budget (s), min_time (s)

Reads stop only at a shard boundary: once `budget` seconds have passed, at the next multiple of
`samples_per_shard`, so both libraries always read whole shards (DataLoader rows, whose batches do not line
up with shards, stop at the first batch past the budget). Short passes are repeated until `min_time`
has passed, and the rate is taken over all passes.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

RESULT_PREFIX = "RESULT "
CROP = 224
BATCH = 64


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


def _library(reader: str) -> Any:
    if reader == "webdataset":
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
    lib = _library(reader)
    if reader == "fastwds-core":
        if workload != "raw":
            raise ValueError("fastwds.ShardReader is measured raw only")
        shard_reader = _shard_reader_class(lib)
        return lambda: shard_reader(urls)
    _require(lib, "WebDataset")

    def dataset() -> Any:
        return lib.WebDataset(urls, shardshuffle=False)

    if workload == "raw":
        return dataset
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
    raise ValueError(f"unknown workload {workload!r}")


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
    workload = "decode" if config["workload"].startswith("loader") else config["workload"]
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


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """Runs one configuration in this process and returns what it measured."""
    rss_start = _current_rss_mb()
    paths, sizes, per_shard = config["paths"], config["sizes"], config["samples_per_shard"]
    total_samples = per_shard * len(paths)
    budget, min_time = float(config["budget"]), float(config["min_time"])
    _warm_page_cache(paths)
    result: dict[str, Any] = {"rss_start_mb": rss_start}

    if config["reader"] in ("cat", "gzip"):
        command = "cat" if config["reader"] == "cat" else "gzip -dc"
        samples = seconds = 0.0
        passes = 0
        while passes == 0 or seconds < min_time:
            seconds += _run_command(command, paths)
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
            peak_rss_mb=None,  # the memory of cat or gzip is not what this row is about
        )
        return result

    make = build_factory(config)
    _warm_up(config)
    result["rss_after_imports_mb"] = _current_rss_mb()
    batched = config["workload"].startswith("loader")
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
