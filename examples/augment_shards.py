"""Offline augmentation of many shards in parallel on a Dask cluster: decode, augment, write `.png` + `.cls`.

One Dask task per input shard: it reads the shard with `fastwds.WebDataset`, decodes each `.jpg`, takes a
random crop and a random horizontal flip, and writes the result with `fastwds.TarWriter` as `.png` + `.cls`
to an output shard of the same name, in a local directory or under an `s3://` / `gs://` prefix. An output
appears only once complete (a local shard is written under a temporary name, then renamed; an object is
uploaded in parts and completed at the end), so a task that Dask retries, or a rerun after a failure, never
leaves a partial shard.

    # a local cluster, one worker process per core
    python examples/augment_shards.py 'imagenet/train-{000000..000146}.tar' -o augmented/
    # an existing cluster (`dask scheduler` on one machine, `dask worker tcp://HOST:8786` on each other)
    python examples/augment_shards.py 'imagenet/train-{000000..000146}.tar' -o /shared/augmented/ \\
        --scheduler tcp://HOST:8786
    # outputs in a bucket (credentials from the usual AWS_* variables or ~/.aws)
    python examples/augment_shards.py 's3://bucket/train-{000000..000146}.tar' -o s3://bucket/augmented/
    python examples/augment_shards.py --make-sample-data /tmp/augment   # small synthetic input shards
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from typing import Any
from urllib.parse import urlparse

import numpy as np

import fastwds


def augment(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random `size` x `size` crop (smaller images keep their short side) and a random horizontal flip."""
    h, w = image.shape[:2]
    ch, cw = min(size, h), min(size, w)
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    crop = image[top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def augment_shard(url: str, output: str, size: int = 224, seed: int = 0) -> dict[str, Any]:
    """The task: augments every sample of one shard into `output`; returns the counts.

    The random generator is seeded from `seed` and the shard name, so a shard's result does not depend
    on which worker runs it, or when.
    """
    rng = np.random.default_rng([seed, zlib.crc32(os.path.basename(url).encode())])
    dataset = (
        fastwds.WebDataset(url, shardshuffle=False).decode("rgb8").to_tuple("__key__", "jpg;jpeg;png", "cls")
    )
    count = 0
    # TarWriter renames a local output into place on close, and completes an s3:// or gs:// upload then.
    with fastwds.TarWriter(output) as sink:
        for key, image, cls in dataset:
            sink.write({"__key__": key, "png": augment(image, rng, size), "cls": cls})
            count += 1
    return {"input": url, "output": output, "samples": count, "pid": os.getpid()}


def run_on_dask(
    inputs: list[str], outputs: list[str], scheduler: str | None, workers: int, size: int, seed: int
) -> list[dict[str, Any]]:
    """Runs one task per shard on the cluster at `scheduler`, or on a local cluster of `workers` processes."""
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    try:
        print("dask:", client)
        futures = client.map(augment_shard, inputs, outputs, size=size, seed=seed, pure=False)
        results = []
        for future in as_completed(futures):
            result = future.result()
            print(
                f"  {result['input']} -> {result['output']}: {result['samples']} samples (worker pid {result['pid']})"
            )
            results.append(result)
        return sorted(results, key=lambda r: inputs.index(r["input"]))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def make_sample_data(directory: str, shards: int = 4, per_shard: int = 8) -> list[str]:
    """Writes small input shards of random JPEGs (`.jpg` + `.cls`) under DIRECTORY/input."""
    from PIL import Image

    rng = np.random.default_rng(3)
    os.makedirs(os.path.join(directory, "input"), exist_ok=True)
    written: list[str] = []
    pattern = os.path.join(directory, "input", "images-%06d.tar")
    with fastwds.ShardWriter(pattern, maxcount=per_shard, post=written.append, verbose=0) as sink:
        for n in range(shards * per_shard):
            h, w = (int(x) for x in rng.integers(40, 80, size=2))
            pixels = rng.integers(0, 256, size=(h // 4, w // 4, 3), dtype=np.uint8)
            image = np.asarray(Image.fromarray(pixels).resize((w, h)))
            sink.write({"__key__": f"img{n:05d}", "jpg": image, "cls": n % 10})
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", help="input shards (brace patterns allowed)")
    parser.add_argument(
        "-o",
        "--output",
        help="output directory or s3:// / gs:// prefix (default DIR/augmented with --make-sample-data)",
    )
    parser.add_argument(
        "--scheduler", metavar="ADDRESS", help="an existing Dask scheduler (default: a local cluster)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="local worker processes (default: one per core)",
    )
    parser.add_argument("--size", type=int, default=224, help="crop size (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="augmentation seed (default %(default)s)")
    parser.add_argument(
        "--make-sample-data", metavar="DIR", help="make small input shards in DIR and augment them"
    )
    args = parser.parse_args(argv)
    inputs = [url for pattern in args.inputs for url in fastwds.shardlists.expand_urls(pattern)]
    if args.make_sample_data:
        inputs += make_sample_data(args.make_sample_data)
        args.output = args.output or os.path.join(args.make_sample_data, "augmented")
        args.size = min(args.size, 32)
        print(f"made {len(inputs)} input shards in {os.path.join(args.make_sample_data, 'input')}")
    if not inputs or not args.output:
        parser.error("give INPUTS and -o OUTPUT, or --make-sample-data DIR")
    if urlparse(args.output).scheme in ("s3", "gs"):
        outputs = [args.output.rstrip("/") + "/" + url.rsplit("/", 1)[-1] for url in inputs]
    else:
        os.makedirs(args.output, exist_ok=True)
        outputs = [os.path.join(os.path.abspath(args.output), os.path.basename(url)) for url in inputs]
    results = run_on_dask(inputs, outputs, args.scheduler, args.workers, args.size, args.seed)
    print(f"augmented {sum(r['samples'] for r in results)} samples in {len(results)} shards")
    dataset = fastwds.WebDataset(outputs, shardshuffle=False).decode("rgb8").to_tuple("__key__", "png", "cls")
    key, image, cls = next(iter(dataset))
    print(f"first output sample: {key} png {image.shape} {image.dtype} cls {cls}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
