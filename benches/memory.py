"""Peak memory of the reader behind a slow consumer, and what glibc's malloc makes of it.

The harness's raw rows read as fast as they can, so the ring buffer rarely fills. This script reads behind a
consumer that sleeps per sample (`--sleep-ms-per-mib`, default 4 ms: 250 MB/s), so the buffer stays full
for the whole pass, and reports for each scenario the peak RSS (VmHWM) minus the RSS after the imports (taken
after one pass over a small shard, so that what the reader imports on first use counts as imports, as in the
harness), beside the ring buffer's budget and the bound `rss_bound_mb` (which the harness's peak-RSS check
uses too): buffer + (queues + reader threads + 2) x the sample size + RSS_OVERHEAD_MB:

    python benches/memory.py                                  # every scenario, glibc's defaults
    python benches/memory.py --scenarios default,large        # some of them
    python benches/memory.py --malloc none,arena1,mmap1m      # the same scenarios under several settings
    python benches/memory.py --malloc "mallopt:M_MMAP_THRESHOLD=1048576" --json out.json

Scenarios (`--scenarios`; shards are made once under `--data`, default benches/data/memory, ~2.9 GB):

  default     ShardReader(urls): 1 MiB samples (read into `bytes` by the reader threads), 8 shards x 160
  vec         1,000,000-byte samples (under 1 MiB: read into a Vec, copied into `bytes`), 8 shards x 80
  large       64 MiB samples, 4 shards x 4
  unordered   ordered=False, threads=4, 1 MiB samples
  buffer64    buffer_bytes=64 MiB, 1 MiB samples
  buffer1g    buffer_bytes=1 GiB, 1 MiB samples
  large1g     buffer_bytes=1 GiB, 64 MiB samples
  wds         fastwds.WebDataset(urls, shardshuffle=False), 1 MiB samples

Malloc settings (`--malloc`, comma-separated; each runs every scenario): `none` (glibc's defaults), a
preset (`arena1`, `arena2`, `arena4`: MALLOC_ARENA_MAX; `mmap1m`: MALLOC_MMAP_THRESHOLD_=1 MiB, which fixes
glibc's otherwise dynamic threshold; `trim`: MALLOC_TRIM_THRESHOLD_=128 KiB, which also fixes it, at its
initial 128 KiB, as setting any of the trim, top-pad, mmap threshold or mmap-max parameters does;
`mmap1m+arena2`), or a
`+`-joined list of `VAR=VALUE` (environment of the child, so from malloc's first call) and
`mallopt:PARAM=VALUE` (a `mallopt()` call made before the first reader starts, as the Rust core would make
it when its first pool starts; with `--mallopt-late`, after a first pass whose reader threads made their
arenas: PARAM is M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_TEST or M_ARENA_MAX).

Every scenario runs in a fresh process (`--child`). Besides the peak, the child samples its RSS every 20 ms
and records, at the highest sample, glibc's `mallinfo2()`: bytes held in malloc'd chunks (`in use`), free
inside the heaps (`free in heaps`), mmapped chunks (`mmapped`), and how many arenas exist (from
`malloc_info`); so a peak above the budget shows whether it is live data or freed memory the heaps keep.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "data" / "memory"
MIB = 1 << 20

# name -> (sample bytes, shards, samples per shard)
SETS = {
    "mib": (MIB, 8, 160),
    "vec": (1_000_000, 8, 80),
    "large": (64 * MIB, 4, 4),
    "warmup": (4096, 1, 2),
}
# name -> (set, reader, options)
SCENARIOS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "default": ("mib", "core", {}),
    "vec": ("vec", "core", {}),
    "large": ("large", "core", {}),
    "unordered": ("mib", "core", {"ordered": False, "threads": 4}),
    "buffer64": ("mib", "core", {"buffer_bytes": 64 * MIB}),
    "buffer1g": ("mib", "core", {"buffer_bytes": 1024 * MIB}),
    "large1g": ("large", "core", {"buffer_bytes": 1024 * MIB}),
    "wds": ("mib", "wds", {}),
}
DEFAULT_BUFFER = 256 * MIB
# Fixed growth allowed on top of the samples in flight: the interpreter, thread stacks, the reader's own
# buffers, and what the allocator keeps of freed memory.
RSS_OVERHEAD_MB = 100


def reader_shape(options: dict[str, Any], cores: int | None = None) -> tuple[int, int]:
    """(reader threads, ring queues) of a ShardReader with these options, as the core derives them."""
    cores = cores or len(os.sched_getaffinity(0))
    threads = options.get("threads") or min(max(cores, 1), 4)
    prefetch = options.get("prefetch") or threads + 1
    return min(threads, prefetch), prefetch if options.get("ordered", True) else 1


def one_arena(env: dict[str, str] | None = None) -> bool:
    """Whether glibc's malloc runs with a single arena (MALLOC_ARENA_MAX=1 in the environment)."""
    env = os.environ if env is None else env
    return env.get("MALLOC_ARENA_MAX", "").strip() == "1"


def rss_bound_mb(buffer_mb: float, sample_mb: float, threads: int, queues: int, arenas_kept: bool) -> float:
    """The peak RSS growth a ShardReader may cause: its buffer; one sample more per queue (a queue under its
    share admits one more), per reader thread (a sample is read before it waits for room) and two in the
    consumer's hands (the one it holds and the next); plus RSS_OVERHEAD_MB. With `arenas_kept` (glibc's
    per-thread arenas): each reader thread allocates its samples from its own arena, which keeps what the
    consumer frees for that thread's next samples, so each arena stays at its own high-water mark: up to
    `threads` times the buffer and samples in all (benches/RESULTS.md, "Memory behind a slow consumer")."""
    live = buffer_mb + (queues + threads + 2) * sample_mb
    return (threads if arenas_kept and threads > 1 else 1) * live + RSS_OVERHEAD_MB


PRESETS = {
    "none": "",
    "arena1": "MALLOC_ARENA_MAX=1",
    "arena2": "MALLOC_ARENA_MAX=2",
    "arena4": "MALLOC_ARENA_MAX=4",
    "mmap1m": "MALLOC_MMAP_THRESHOLD_=1048576",
    "trim": "MALLOC_TRIM_THRESHOLD_=131072",
    "mmap1m+arena2": "MALLOC_MMAP_THRESHOLD_=1048576+MALLOC_ARENA_MAX=2",
}
MALLOPT = {
    "M_TRIM_THRESHOLD": -1,
    "M_TOP_PAD": -2,
    "M_MMAP_THRESHOLD": -3,
    "M_MMAP_MAX": -4,
    "M_ARENA_TEST": -7,
    "M_ARENA_MAX": -8,
}
# Malloc's own environment variables: the parent's are not passed on, so `none` means glibc's defaults.
MALLOC_ENV = re.compile(r"^(MALLOC_|GLIBC_TUNABLES$)")


# ---------------------------------------------------------------------------------------------------------
# Shards


def make_set(data: Path, name: str) -> list[str]:
    """The shard paths of a set, writing them first unless a marker says they are there."""
    size, shards, per_shard = SETS[name]
    directory = data / f"{name}-{size}x{shards}x{per_shard}"
    paths = [str(directory / f"shard-{i:02d}.tar") for i in range(shards)]
    if (directory / "done").exists():
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    payload = bytearray(os.urandom(size))
    for shard, path in enumerate(paths):
        print(f"writing {path}", file=sys.stderr)
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(per_shard):
                payload[:8] = (shard * per_shard + i).to_bytes(8, "little")
                info = tarfile.TarInfo(f"s{shard:02d}_{i:05d}.bin")
                info.size = size
                info.mtime = 1_700_000_000
                tar.addfile(info, _Reader(payload))
    (directory / "done").write_text("")
    return paths


class _Reader:
    """A file object over a bytearray, without copying it (tarfile reads it in chunks)."""

    def __init__(self, data: bytearray) -> None:
        self.view = memoryview(data)
        self.at = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.view) if n < 0 else min(len(self.view), self.at + n)
        chunk = self.view[self.at : end].tobytes()
        self.at = end
        return chunk


# ---------------------------------------------------------------------------------------------------------
# The child: one scenario in a fresh process


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


LIBC = ctypes.CDLL(None)


def _mallinfo() -> dict[str, float]:
    """glibc's totals over every arena, in MiB."""
    try:
        LIBC.mallinfo2.restype = _Mallinfo2
        info = LIBC.mallinfo2()
    except AttributeError:  # not glibc, or older than 2.33
        return {}
    return {
        "heaps_mb": info.arena / MIB,  # bytes the heaps (sbrk and arena heaps) span
        "in_use_mb": info.uordblks / MIB,
        "free_in_heaps_mb": info.fordblks / MIB,
        "mmapped_mb": info.hblkhd / MIB,
    }


def _arena_count() -> int | None:
    """Arenas (main + per-thread), from malloc_info's XML."""
    if not hasattr(LIBC, "malloc_info"):
        return None
    LIBC.fopen.restype = ctypes.c_void_p
    LIBC.fclose.argtypes = [ctypes.c_void_p]
    LIBC.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    with tempfile.NamedTemporaryFile(suffix=".xml") as out:
        stream = LIBC.fopen(out.name.encode(), b"w")
        if not stream:
            return None
        LIBC.malloc_info(0, stream)
        LIBC.fclose(stream)
        return len(re.findall(r"<heap nr=", Path(out.name).read_text()))


def _anon_mapped_mb() -> tuple[float, int]:
    """Resident anonymous memory (smaps_rollup) and the number of anonymous mappings."""
    anonymous = 0.0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                anonymous = int(line.split()[1]) / 1024
    with open("/proc/self/maps") as f:
        mappings = sum(1 for line in f if len(line.split()) == 5)  # no path: anonymous
    return anonymous, mappings


class _Monitor(threading.Thread):
    """Samples RSS every `interval` s and keeps malloc's picture at the highest sample."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stop = threading.Event()
        self.peak_kib = 0
        self.at_peak: dict[str, Any] = {}

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            rss = _status_kib("VmRSS")
            if rss > self.peak_kib:
                self.peak_kib = rss
                self.at_peak = _mallinfo()
                self.at_peak["anon_mb"], self.at_peak["anon_mappings"] = _anon_mapped_mb()


def _mallopt(setting: str) -> None:
    name, value = setting.split("=", 1)
    LIBC.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if LIBC.mallopt(MALLOPT[name], int(value, 0)) != 1:
        raise SystemExit(f"mallopt({name}, {value}) failed")


def child(config: dict[str, Any]) -> dict[str, Any]:
    import fastwds

    def make(paths: list[str]) -> Any:
        options = config["options"]
        if config["reader"] == "wds":
            return fastwds.WebDataset(paths, shardshuffle=False, reader_options=options or None)
        return fastwds.ShardReader(paths, **options)

    if not config["mallopt_late"]:
        for setting in config["mallopt"]:
            _mallopt(setting)
    # One pass over a small shard first: what the reader imports on first use (WebDataset imports torch)
    # counts as imports, as in the harness. Its reader threads leave their malloc arenas behind.
    for _ in make(config["warmup"]):
        pass
    rss_imports = _status_kib("VmRSS") / 1024
    dataset = make(config["paths"])
    if config["mallopt_late"]:
        for setting in config["mallopt"]:
            _mallopt(setting)
    monitor = _Monitor()
    monitor.start()
    sleep_per_byte = config["sleep_ms_per_mib"] / 1000 / MIB
    samples = 0
    nbytes = 0
    start = time.perf_counter()
    for _ in range(config["passes"]):
        for sample in dataset:
            size = sum(len(v) for k, v in sample.items() if not k.startswith("__"))
            samples += 1
            nbytes += size
            time.sleep(size * sleep_per_byte)
        del sample
    seconds = time.perf_counter() - start
    monitor.stop.set()
    monitor.join()
    anonymous, mappings = _anon_mapped_mb()
    return {
        "samples": samples,
        "mb": nbytes / MIB,
        "seconds": seconds,
        "rss_after_imports_mb": rss_imports,
        "peak_rss_mb": _status_kib("VmHWM") / 1024,
        "rss_end_mb": _status_kib("VmRSS") / 1024,
        "anon_end_mb": anonymous,
        "anon_mappings_end": mappings,
        "arenas": _arena_count(),
        "sampled_peak_rss_mb": monitor.peak_kib / 1024,
        "at_peak": monitor.at_peak,
        "at_end": _mallinfo(),
    }


# ---------------------------------------------------------------------------------------------------------
# The parent


def parse_malloc(label: str) -> tuple[dict[str, str], list[str]]:
    """Environment variables and mallopt() calls of a --malloc entry."""
    env: dict[str, str] = {}
    calls: list[str] = []
    for part in filter(None, PRESETS.get(label, label).split("+")):
        if part.startswith("mallopt:"):
            calls.append(part[len("mallopt:") :])
            if calls[-1].split("=", 1)[0] not in MALLOPT:
                raise SystemExit(f"unknown mallopt parameter in {part!r}; known: {', '.join(MALLOPT)}")
        elif "=" in part:
            name, value = part.split("=", 1)
            env[name] = value
        else:
            raise SystemExit(f"--malloc: {part!r} is neither a preset, VAR=VALUE nor mallopt:PARAM=VALUE")
    return env, calls


def run(scenario: str, malloc: str, args: argparse.Namespace) -> dict[str, Any]:
    set_name, reader, options = SCENARIOS[scenario]
    env_vars, calls = parse_malloc(malloc)
    env = {k: v for k, v in os.environ.items() if not MALLOC_ENV.match(k)}
    env.update(env_vars)
    config = {
        "paths": make_set(args.data, set_name),
        "warmup": make_set(args.data, "warmup"),
        "mallopt_late": args.mallopt_late,
        "reader": reader,
        "options": options,
        "mallopt": calls,
        "sleep_ms_per_mib": args.sleep_ms_per_mib,
        "passes": args.passes,
    }
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{scenario} / {malloc} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(
        scenario=scenario, malloc=malloc, buffer_mb=options.get("buffer_bytes", DEFAULT_BUFFER) / MIB
    )
    result["overhead_mb"] = result["peak_rss_mb"] - result["rss_after_imports_mb"] - result["buffer_mb"]
    size, _, _ = SETS[set_name]
    threads, queues = reader_shape(options)
    sample_mb = (size + 1024) / MIB
    # One arena: from the environment, or a mallopt() made before any reader thread had made its own.
    single = one_arena(env) or ("M_ARENA_MAX=1" in calls and not args.mallopt_late)
    result["bound_mb"] = rss_bound_mb(result["buffer_mb"], sample_mb, threads, queues, not single)
    result["tight_bound_mb"] = rss_bound_mb(result["buffer_mb"], sample_mb, threads, queues, False)
    result["met"] = result["peak_rss_mb"] - result["rss_after_imports_mb"] <= result["bound_mb"]
    return result


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | malloc | buffer MB | peak RSS - imports MB | over the buffer MB | at the peak: in use / "
        "free in heaps / mmapped MB | arenas | bound MB (one arena) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        p = r["at_peak"]
        peak = (
            f"{p['in_use_mb']:,.0f} / {p['free_in_heaps_mb']:,.0f} / {p['mmapped_mb']:,.0f}" if p else "n/a"
        )
        delta = r["peak_rss_mb"] - r["rss_after_imports_mb"]
        lines.append(
            f"| {r['scenario']} | {r['malloc']} | {r['buffer_mb']:,.0f} | {delta:+,.0f} | {r['overhead_mb']:+,.0f} "
            f"| {peak} | {r['arenas']} | {r['bound_mb']:,.0f} ({r['tight_bound_mb']:,.0f}): "
            f"{'met' if r['met'] else 'missed'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated scenario names")
    parser.add_argument(
        "--malloc", default="none", help="comma-separated malloc settings (see the docstring)"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="where the shards are made")
    parser.add_argument("--sleep-ms-per-mib", type=float, default=4.0, help="the consumer's sleep per MiB")
    parser.add_argument("--passes", type=int, default=1, help="passes over the shards per scenario")
    parser.add_argument(
        "--mallopt-late",
        action="store_true",
        help="make the mallopt() calls after the warm-up pass (whose threads made arenas) instead of before it",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    scenarios = args.scenarios.split(",")
    for name in scenarios:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    results = []
    for malloc in args.malloc.split(","):
        for scenario in scenarios:
            results.append(run(scenario, malloc, args))
            r = results[-1]
            print(
                f"{scenario} / {malloc}: peak - imports {r['peak_rss_mb'] - r['rss_after_imports_mb']:+,.0f} MB "
                f"({r['overhead_mb']:+,.0f} over the buffer)",
                file=sys.stderr,
            )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
