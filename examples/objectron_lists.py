"""Shard the Objectron videos without downloading them first: `NAME pipe:curl ...` lists + `fastwds create`.

For each class, the index lists video ids (`bike/batch-0/0`); each video becomes one sample with three
members fetched by a command when the shard is built:

    bike_batch-0_0.mov                 pipe:curl -s -f -L BASE/videos/bike/batch-0/0/video.MOV
    bike_batch-0_0.geometry.pbdata     pipe:curl -s -f -L BASE/videos/bike/batch-0/0/geometry.pbdata
    bike_batch-0_0.annotation.pbdata   pipe:curl -s -f -L BASE/annotations/bike/batch-0/0.pbdata

The ids are split into lists of --per-shard videos, and `fastwds create LIST -o SHARD` builds each shard
(members in list order; a failed download stops it with the line and the curl error, leaving no shard).

    python examples/objectron_lists.py --classes bike,book --limit 20 -o objectron/
    python examples/objectron_lists.py --make-sample-data /tmp/objectron   # a small local stand-in
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import urllib.request

import fastwds

BASE = "https://storage.googleapis.com/objectron"
CLASSES = ["bike", "book", "bottle", "camera", "cereal_box", "chair", "cup", "laptop", "shoe"]


def read_index(base: str, cls: str) -> list[str]:
    """The video ids of a class (`bike/batch-0/0`, ...) from BASE/v1/index/CLASS_annotations_train."""
    url = f"{base}/v1/index/{cls}_annotations_train"
    if "://" in url:
        with urllib.request.urlopen(url) as response:
            text = response.read().decode()
    else:
        with open(url) as f:
            text = f.read()
    return [line.strip() for line in text.splitlines() if line.strip()]


def fetch_command(base: str, path: str) -> str:
    """The `pipe:` source of one file: curl for a URL, cat for a local stand-in."""
    if "://" in base:
        return "pipe:curl -s -f -L " + shlex.quote(f"{base}/{path}")
    return "pipe:cat " + shlex.quote(os.path.join(base, path))


def list_lines(base: str, video: str) -> list[str]:
    """The `NAME SOURCE` lines of one video's sample."""
    key = video.replace("/", "_")
    return [
        f"{key}.mov {fetch_command(base, f'videos/{video}/video.MOV')}",
        f"{key}.geometry.pbdata {fetch_command(base, f'videos/{video}/geometry.pbdata')}",
        f"{key}.annotation.pbdata {fetch_command(base, f'annotations/{video}.pbdata')}",
    ]


def write_lists(
    base: str, classes: list[str], limit: int | None, per_shard: int, directory: str
) -> list[str]:
    """Writes lists/objectron-NNNNNN.txt files of --per-shard videos each; returns their paths."""
    videos = []
    for cls in classes:
        videos += read_index(base, cls)[:limit]
    os.makedirs(os.path.join(directory, "lists"), exist_ok=True)
    lists = []
    for shard, start in enumerate(range(0, len(videos), per_shard)):
        path = os.path.join(directory, "lists", f"objectron-{shard:06d}.txt")
        with open(path, "w") as f:
            for video in videos[start : start + per_shard]:
                f.write("\n".join(list_lines(base, video)) + "\n")
        lists.append(path)
    return lists


def create_shards(lists: list[str], directory: str, jobs: int) -> list[str]:
    """Runs `fastwds create` on each list; returns the shard paths."""
    shards = []
    for path in lists:
        shard = os.path.join(directory, os.path.basename(path)[: -len(".txt")] + ".tar")
        command = [sys.executable, "-m", "fastwds", "create", path, "-o", shard, "--jobs", str(jobs)]
        print("$ python", " ".join(shlex.quote(c) for c in command[1:]))
        subprocess.run(command, check=True)
        shards.append(shard)
    return shards


def make_sample_data(directory: str, classes: tuple[str, ...] = ("bike", "book"), per_class: int = 5) -> str:
    """Writes a local stand-in of the Objectron bucket (index, videos, annotations of random bytes)."""
    import numpy as np

    rng = np.random.default_rng(2)
    bucket = os.path.abspath(os.path.join(directory, "bucket"))
    os.makedirs(os.path.join(bucket, "v1", "index"), exist_ok=True)
    for cls in classes:
        videos = [f"{cls}/batch-{n // 3}/{n % 3}" for n in range(per_class)]
        with open(os.path.join(bucket, "v1", "index", f"{cls}_annotations_train"), "w") as f:
            f.write("\n".join(videos) + "\n")
        for video in videos:
            files = {
                f"videos/{video}/video.MOV": int(rng.integers(2000, 8000)),
                f"videos/{video}/geometry.pbdata": int(rng.integers(200, 900)),
                f"annotations/{video}.pbdata": int(rng.integers(100, 400)),
            }
            for path, size in files.items():
                os.makedirs(os.path.dirname(os.path.join(bucket, path)), exist_ok=True)
                with open(os.path.join(bucket, path), "wb") as f:
                    f.write(rng.integers(0, 256, size=size, dtype=np.uint8).tobytes())
    return bucket


def show_shards(shards: list[str]) -> None:
    """Reads the shards back with fastwds.WebDataset and prints each sample's key and field sizes."""
    count = 0
    for sample in fastwds.WebDataset(shards, shardshuffle=False):
        sizes = {k: len(v) for k, v in sample.items() if not k.startswith("__")}
        if count < 3:
            print(sample["__key__"], sizes)
        count += 1
    print(f"read back {count} samples from {len(shards)} shards")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base", default=BASE, help="bucket URL or local directory (default %(default)s)")
    parser.add_argument("--classes", default=",".join(CLASSES), help="comma-separated classes (default: all)")
    parser.add_argument("--limit", type=int, help="at most this many videos per class")
    parser.add_argument("--per-shard", type=int, default=100, help="videos per shard (default %(default)s)")
    parser.add_argument("-o", "--output", default="objectron", help="directory for lists/ and the shards")
    parser.add_argument(
        "-j", "--jobs", type=int, default=4, help="downloads in flight per shard (default %(default)s)"
    )
    parser.add_argument("--lists-only", action="store_true", help="write the lists, do not build the shards")
    parser.add_argument("--make-sample-data", metavar="DIR", help="make a local stand-in in DIR and shard it")
    args = parser.parse_args(argv)
    classes = args.classes.split(",")
    if args.make_sample_data:
        args.base = make_sample_data(args.make_sample_data)
        classes = ["bike", "book"]
        args.per_shard = min(args.per_shard, 4)
        if args.output == parser.get_default("output"):
            args.output = os.path.join(args.make_sample_data, "shards")
        print("made a local Objectron stand-in in", args.base)
    lists = write_lists(args.base, classes, args.limit, args.per_shard, args.output)
    print(f"wrote {len(lists)} lists in {os.path.join(args.output, 'lists')}; the first begins:")
    with open(lists[0]) as f:
        print("  " + "  ".join(f.readlines()[:3]), end="")
    if args.lists_only:
        return 0
    shards = create_shards(lists, args.output, args.jobs)
    show_shards(shards)
    return 0


if __name__ == "__main__":
    sys.exit(main())
