"""What writing shard indexes costs `ShardWriter` (issue #16's target: at most 5% slower).

    python benches/writer_index.py [--samples 20000] [--rounds 30] [--dir DIR] [--instructions]

Writes the same small samples (the worst case: per-sample bookkeeping against little data) with `index=True`
and `index=False`, alternating which goes first in each round, and reports the user CPU time of each side
(the best round and the median) and the median of the paired ratios with its quartiles: pairing cancels the
machine's drift between rounds. User time leaves out the kernel's work of writing and deleting the shards'
pages, the same on both sides and the noisiest part on a shared VM; the shards go to a temporary directory
(under /dev/shm when it exists), emptied before each write.

On a VM whose speed drifts by 10-20% between rounds, `--instructions` counts instead: it runs the writing once
per side under valgrind's callgrind (OpenBLAS on one thread, a fixed hash seed: the count repeats to a few
parts per million) and subtracts a run that only builds the samples, so the ratio is the writer's own.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile

import fastwds as wds


def write(directory: str, samples: list[dict[str, object]], index: bool) -> float:
    """User CPU seconds to write `samples` into 2 shards in `directory` (emptied first)."""
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    with wds.ShardWriter(
        os.path.join(directory, "s-%04d.tar"), maxcount=len(samples) // 2, verbose=0, index=index
    ) as sink:
        for sample in samples:
            sink.write(sample)
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime - start


def instructions(mode: str, samples: int) -> int:
    """Instructions callgrind counts for one run of this script in `mode` ("build", "False" or "True")."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__]
    command += ["--samples", str(samples), "--once", mode]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def count_instructions(samples: int) -> None:
    """Prints the instructions of writing with and without indexes, the samples' making subtracted."""
    base = instructions("build", samples)
    plain, indexed = (instructions(mode, samples) - base for mode in ("False", "True"))
    print(f"index=False  {plain / 1e6:9.1f} M instructions")
    print(f"index=True   {indexed / 1e6:9.1f} M instructions")
    print(f"index=True / index=False: {indexed / plain - 1:+.2%}; target: at most +5%")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--instructions", action="store_true", help="count instructions under callgrind")
    parser.add_argument(
        "--once", choices=["build", "False", "True"], help=argparse.SUPPRESS
    )  # one counted run
    args = parser.parse_args()
    if args.instructions:
        count_instructions(args.samples)
        return 0
    samples: list[dict[str, object]] = [
        {"__key__": f"sample{i:08d}", "txt": f"caption {i}", "cls": i % 1000} for i in range(args.samples)
    ]
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    base = args.dir or tempfile.mkdtemp(prefix="fastwds-writer-index-", dir=shm)
    if args.once is not None:
        if args.once != "build":
            write(os.path.join(base, "once"), samples, args.once == "True")
        shutil.rmtree(base, ignore_errors=True)
        return 0
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        write(os.path.join(base, "warm"), samples, True)
        for round_number in range(args.rounds):
            order = (True, False) if round_number % 2 == 0 else (False, True)
            for index in order:
                times[index].append(write(os.path.join(base, f"index-{index}"), samples, index))
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    ratios = sorted(a / b for a, b in zip(times[True], times[False]))
    quartile = len(ratios) // 4
    for index in (False, True):
        best, median = min(times[index]), statistics.median(times[index])
        rate = args.samples / median
        print(
            f"index={index!s:5}  best {best * 1000:7.1f} ms  median {median * 1000:7.1f} ms  ({rate:,.0f} samples/s)"
        )
    best_ratio = min(times[True]) / min(times[False])
    print(
        f"index=True / index=False: best {best_ratio - 1:+.1%}, median paired {statistics.median(ratios) - 1:+.1%} "
        f"(quartiles {ratios[quartile] - 1:+.1%} to {ratios[-1 - quartile] - 1:+.1%}); target: at most +5%"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
