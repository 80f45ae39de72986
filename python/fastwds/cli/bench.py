"""`fastwds bench [URLS...]`: read shards with fastwds (and webdataset when installed) and print the rates."""

from __future__ import annotations

import argparse
import gc
import io
import os
import random
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ._util import CommandError, expand_all, stops_cleanly

EPILOG = """\
With URLS, each reader makes full passes over the shards (repeated for at least --min-time seconds) and
the table shows samples/s and MB/s of field data. Without URLS, it runs the benchmark harness of a
fastwds checkout (benches/harness.py, on its ImageNet-like set, made on first use in --data); from an
installed wheel, which has no harness, it makes a small ImageNet-like set in --data and reads that.

examples:
  $ fastwds bench 'shards/train-{000000..000015}.tar'
  $ fastwds bench 'shards/train-{000000..000015}.tar' --decode rgb8
  $ fastwds bench --quick
"""


def default_cache() -> Path:
    """Where generated benchmark data goes: $XDG_CACHE_HOME/fastwds/bench (~/.cache/fastwds/bench)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastwds" / "bench"


def find_harness() -> Path | None:
    """The checkout's benches/harness.py when fastwds runs from a source tree, else None."""
    here = Path(__file__).resolve()
    candidate = here.parents[3] / "benches" / "harness.py"
    return candidate if candidate.is_file() else None


def make_sample_set(directory: Path, shards: int = 4, per_shard: int = 250) -> list[str]:
    """Makes (once) ImageNet-like shards: random-texture JPEGs of 256-400 px, `.cls`, `.json`."""
    from ..writer import ShardWriter

    try:
        from PIL import Image
    except ImportError:
        raise CommandError("making the sample set needs Pillow (pip install pillow), or pass URLS") from None
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    names = [str(directory / f"imagenet-{i:06d}.tar") for i in range(shards)]
    marker = directory / f"done-{shards}x{per_shard}"
    if marker.exists() and all(os.path.exists(n) for n in names):
        return names
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(24):
        h, w = (int(x) for x in rng.integers(256, 400, size=2))
        # Smooth noise compresses like a photo (tens of KB), unlike white noise.
        small = rng.integers(0, 256, size=(h // 8, w // 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        pool.append(buf.getvalue())
    picks = random.Random(0)
    with ShardWriter(str(directory / "imagenet-%06d.tar"), maxcount=per_shard, verbose=0, mtime=0) as writer:
        for i in range(shards * per_shard):
            cls = picks.randrange(1000)
            writer.write(
                {
                    "__key__": f"{i:08d}",
                    "jpg": picks.choice(pool),
                    "cls": str(cls),
                    "json": {"cls": cls, "index": i},
                }
            )
    marker.write_text("ok\n")
    return names


def _readers(urls: list[str], decode: str | None) -> dict[str, Callable[[], Iterable[Any]]]:
    """The readers to compare, each a function that starts one pass over the shards."""
    import fastwds

    readers: dict[str, Callable[[], Iterable[Any]]] = {}
    if decode is None:
        readers["fastwds.ShardReader"] = lambda: fastwds.ShardReader(urls)
    readers["fastwds.WebDataset"] = lambda: _pipeline(fastwds.WebDataset(urls, shardshuffle=False), decode)
    try:
        import webdataset
    except ImportError:
        webdataset = None
    if webdataset is not None:
        readers["webdataset"] = lambda: _pipeline(webdataset.WebDataset(urls, shardshuffle=False), decode)
    return readers


def _pipeline(dataset: Any, decode: str | None) -> Any:
    return dataset.decode(decode) if decode else dataset


def _measure(start_pass: Callable[[], Iterable[Any]], min_time: float, budget: float) -> dict[str, float]:
    """Times full passes until `min_time` has passed; a pass stops early after `budget` seconds."""
    samples = nbytes = passes = 0
    begin = time.perf_counter()
    while True:
        passes += 1
        for sample in start_pass():
            samples += 1
            if isinstance(sample, dict):
                nbytes += field_bytes(sample)
            if time.perf_counter() - begin > budget:
                break
        elapsed = time.perf_counter() - begin
        if elapsed >= min_time or elapsed > budget:
            break
    return {"samples": samples, "bytes": nbytes, "seconds": elapsed, "passes": passes}


def field_bytes(sample: dict[str, Any]) -> int:
    """Bytes of a sample's fields: the length of raw bytes, the buffer size of decoded arrays."""
    total = 0
    for k, v in sample.items():
        if k.startswith("__"):
            continue
        total += len(v) if isinstance(v, (bytes, bytearray, memoryview)) else int(getattr(v, "nbytes", 0))
    return total


def _warm(urls: list[str]) -> None:
    """Reads local shard files once so every reader starts with the page cache warm."""
    for url in urls:
        path = url[5:] if url.startswith("file:") else url
        if os.path.isfile(path):
            with open(path, "rb") as f:
                while f.read(1 << 22):
                    pass


def bench_urls(urls: list[str], decode: str | None, min_time: float, budget: float) -> str:
    """Measures every reader on the shards and returns a markdown table."""
    _warm(urls)
    results = {}
    for name, start_pass in _readers(urls, decode).items():
        sys.stderr.write(f"bench: {name} ...\n")
        # webdataset leaves its shard files for the garbage collector; keep its ResourceWarnings quiet.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            results[name] = _measure(start_pass, min_time, budget)
            gc.collect()
    base = results.get("webdataset")
    lines = [
        f"{len(urls)} shards, {'decode(' + repr(decode) + ')' if decode else 'raw samples'}",
        "",
        "| reader | samples | seconds | samples/s | MB/s | vs webdataset |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        rate = r["samples"] / max(r["seconds"], 1e-9)
        mbs = r["bytes"] / 1e6 / max(r["seconds"], 1e-9)
        ratio = "" if base is None else f"{rate / (base['samples'] / max(base['seconds'], 1e-9)):.2f}x"
        lines.append(
            f"| {name} | {r['samples']:,} | {r['seconds']:.2f} | {rate:,.0f} | {mbs:,.1f} | {ratio} |"
        )
    return "\n".join(lines)


@stops_cleanly
def run(args: argparse.Namespace) -> int:
    """Benchmarks the given shards, or runs the harness (or a built-in sample set) when none are given."""
    if args.urls:
        print(bench_urls(expand_all(args.urls), args.decode, args.min_time, args.budget))
        return 0
    harness = find_harness()
    data = args.data
    if harness is not None and not args.builtin:
        command = [sys.executable, str(harness), "--only", args.only or "imagenet"]
        if args.quick:
            command.append("--quick")
        for option, value in (("--data", data), ("--json", args.json), ("--scale", args.scale)):
            if value is not None:
                command += [option, str(value)]
        if args.budget_given:
            command += ["--budget", str(args.budget)]
        if args.min_time_given:
            command += ["--min-time", str(args.min_time)]
        sys.stderr.write("bench: " + " ".join(command) + "\n")
        return subprocess.call(command)
    directory = Path(data) if data is not None else default_cache()
    per_shard = max(1, round(250 * (args.scale if args.scale is not None else (0.2 if args.quick else 1.0))))
    sys.stderr.write(f"bench: sample set in {directory}\n")
    urls = make_sample_set(directory, per_shard=per_shard)
    print(bench_urls(urls, args.decode, args.min_time, args.budget))
    return 0


class _Given(argparse.Action):
    """Stores a float and remembers it was given (so only explicit values go on to the harness)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, self.dest + "_given", True)


def add_parser(subparsers: Any) -> None:
    """Registers the `bench` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="measure read speed against webdataset",
        description="Measure how fast fastwds (and webdataset, when installed) read shards.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "urls", nargs="*", metavar="URL", help="shards to read (default: a generated sample set)"
    )
    parser.add_argument("--decode", metavar="SPEC", help="also decode, e.g. rgb8 or pil (URL mode)")
    parser.add_argument(
        "--min-time", type=float, default=2.0, action=_Given, help="seconds per reader (default 2)"
    )
    parser.add_argument(
        "--budget", type=float, default=60.0, action=_Given, help="stop a pass after this many seconds"
    )
    parser.add_argument("--quick", action="store_true", help="a smaller sample set and shorter runs")
    parser.add_argument("--data", help="directory for the generated sample set")
    parser.add_argument("--scale", type=float, help="sample set size as a fraction of full")
    parser.add_argument("--only", help="harness rows to run (default: imagenet; see benches/README.md)")
    parser.add_argument("--json", help="also write the harness's raw results to this file")
    parser.add_argument(
        "--builtin", action="store_true", help="use the built-in sample set even in a checkout"
    )
    parser.set_defaults(run=run, budget_given=False, min_time_given=False)
