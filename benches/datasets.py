"""The benchmark's sample datasets: deterministic WebDataset shards, made once and reused from a cache directory.

Three sets, each as `.tar` and as `.tgz` (the same tar stream gzip'd):

- `imagenet`: real JPEGs of ~20-60 KB with `.cls` (ASCII int) and `.json`, 16 shards x 1000 samples;
- `tiny`: two ~30-byte fields (`.txt`, `.json`), 8 shards x 50,000 samples;
- `large`: one 4 MiB `.npy` per sample, 4 shards x 64 samples.

Shards are written by webdataset's `TarWriter`, so every member carries a pax header, as real shards do.
Each `.tgz` is the `.tar` gzip'd (level 6, level 1 for `large`).
A `params.json` marker, written last, records what a directory holds; a directory whose marker matches the
requested parameters is reused as is.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Bump when the content generators change, so stale caches are rebuilt rather than silently reused.
GENERATOR_VERSION = 2
MARKER = "params.json"
FORMATS = ("tar", "tgz")
# A fixed float mtime keeps shards byte-identical across runs and, being a float, makes tarfile emit the pax
# header per member exactly as TarWriter does with its default `time.time()`.
FIXED_MTIME = 1_700_000_000.5


@dataclass(frozen=True)
class DatasetSpec:
    """How many shards and samples a dataset has at full size, and what its samples look like."""

    name: str
    shards: int
    samples_per_shard: int
    description: str
    # gzip's own default is 6; the large set uses 1 because level 6 on float data takes minutes for 1 GB,
    # and inflate speed barely depends on the level.
    gzip_level: int = 6


SPECS: dict[str, DatasetSpec] = {
    "imagenet": DatasetSpec("imagenet", 16, 1000, "JPEG 20-60 KB + .cls + .json"),
    "tiny": DatasetSpec("tiny", 8, 50_000, "2 fields of ~30 bytes"),
    "large": DatasetSpec("large", 4, 64, "one 4 MiB .npy", gzip_level=1),
}


@dataclass
class Dataset:
    """A dataset on disk: its shard paths per format, their sizes, and the sample counts."""

    name: str
    directory: Path
    shards: int
    samples_per_shard: int
    paths: dict[str, list[str]] = field(default_factory=dict)
    sizes: dict[str, list[int]] = field(default_factory=dict)
    tar_bytes: int = 0  # uncompressed tar stream bytes of the whole set

    @property
    def samples(self) -> int:
        """Samples in the whole set."""
        return self.shards * self.samples_per_shard


def scaled_samples(spec: DatasetSpec, scale: float) -> int:
    """Samples per shard at `scale` of the full size (at least one); the shard count never shrinks."""
    return max(1, round(spec.samples_per_shard * scale))


# ---------------------------------------------------------------------------------------------------------
# Sample generators: each yields the samples of one shard as dicts of bytes, deterministically from its rng.


def _jpeg_pool(rng: Any, count: int) -> list[bytes]:
    """Distinct JPEGs of 256-400 px from smooth random colour fields plus grain, landing in ~20-60 KB."""
    import numpy as np
    from PIL import Image

    pool = []
    for _ in range(count):
        w, h = int(rng.integers(256, 401)), int(rng.integers(256, 401))
        low = rng.integers(
            0, 256, size=(int(rng.integers(6, 24)), int(rng.integers(6, 24)), 3), dtype=np.uint8
        )
        base = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
        yy, xx = np.mgrid[0:h, 0:w]
        grad = (xx * rng.uniform(-0.3, 0.3) + yy * rng.uniform(-0.3, 0.3)).astype(np.int16)[..., None]
        # The grain is what gives the files a realistic size; smooth fields alone compress to a few KB.
        grain = rng.normal(0, rng.uniform(8, 12), size=(h, w, 1)).astype(np.int16)
        pixels = np.clip(base + grad + grain, 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "JPEG", quality=int(rng.integers(80, 91)))
        pool.append(out.getvalue())
    return pool


def _imagenet_shards(rng: Any, shards: int, per_shard: int) -> Iterator[Iterator[dict[str, Any]]]:
    pool = _jpeg_pool(rng, min(200, shards * per_shard))
    for shard in range(shards):
        labels = rng.integers(0, 1000, size=per_shard)
        picks = rng.integers(0, len(pool), size=per_shard)

        def samples(shard: int = shard, labels: Any = labels, picks: Any = picks) -> Iterator[dict[str, Any]]:
            for i in range(per_shard):
                label = int(labels[i])
                meta = {"label": label, "synset": f"n{(label * 7919) % 10**8:08d}", "source": "fastwds-bench"}
                yield {
                    "__key__": f"train_{shard:04d}_{i:06d}",
                    "jpg": pool[int(picks[i])],
                    "cls": str(label).encode("ascii"),
                    "json": json.dumps(meta).encode("utf-8"),
                }

        yield samples()


def _tiny_shards(rng: Any, shards: int, per_shard: int) -> Iterator[Iterator[dict[str, Any]]]:
    import numpy as np

    for shard in range(shards):
        letters = rng.integers(ord("a"), ord("z") + 1, size=(per_shard, 30), dtype=np.uint8).tobytes()
        values = rng.random(per_shard)

        def samples(
            shard: int = shard, letters: bytes = letters, values: Any = values
        ) -> Iterator[dict[str, Any]]:
            for i in range(per_shard):
                yield {
                    "__key__": f"s{shard:02d}{i:07d}",
                    "txt": letters[30 * i : 30 * i + 30],
                    "json": b'{"id": %d, "v": %.6f}' % (shard * per_shard + i, values[i]),
                }

        yield samples()


def _large_shards(rng: Any, shards: int, per_shard: int) -> Iterator[Iterator[dict[str, Any]]]:
    import numpy as np

    pool = []
    for _ in range(8):
        # fp16-precision values stored as float32: what saved model features usually are, and it gives gzip
        # something to do (pure random float32 barely compresses).
        array = rng.standard_normal((1024, 1024)).astype(np.float16).astype(np.float32)
        out = io.BytesIO()
        np.save(out, array)
        pool.append(out.getvalue())
    for shard in range(shards):
        picks = rng.integers(0, len(pool), size=per_shard)

        def samples(shard: int = shard, picks: Any = picks) -> Iterator[dict[str, Any]]:
            for i in range(per_shard):
                yield {"__key__": f"big_{shard:02d}_{i:04d}", "npy": pool[int(picks[i])]}

        yield samples()


GENERATORS: dict[str, Callable[[Any, int, int], Iterator[Iterator[dict[str, Any]]]]] = {
    "imagenet": _imagenet_shards,
    "tiny": _tiny_shards,
    "large": _large_shards,
}

# ---------------------------------------------------------------------------------------------------------


def _write_tar(path: Path, samples: Iterator[dict[str, Any]]) -> None:
    from webdataset import TarWriter

    tmp = path.with_suffix(".tar.part")
    with open(tmp, "wb") as stream, TarWriter(stream, encoder=False, mtime=FIXED_MTIME) as writer:
        for sample in samples:
            writer.write(sample)
    tmp.replace(path)


def _gzip_file(src: Path, dst: Path, level: int) -> None:
    tmp = dst.with_suffix(".tgz.part")
    with open(src, "rb") as inp, open(tmp, "wb") as raw:
        # mtime=0 and no file name keep the .tgz byte-identical across runs.
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=level, mtime=0) as out:
            shutil.copyfileobj(inp, out, 1 << 20)
    tmp.replace(dst)


def _params(spec: DatasetSpec, per_shard: int) -> dict[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "name": spec.name,
        "shards": spec.shards,
        "samples_per_shard": per_shard,
        "gzip_level": spec.gzip_level,
        "seed": _seed(spec.name),
    }


def _seed(name: str) -> int:
    # A stable per-dataset seed (hash() is salted per process, so it would not do).
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) + 20240


def _load_if_current(directory: Path, params: dict[str, Any]) -> Dataset | None:
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("params") != params:
        return None
    dataset = Dataset(
        name=params["name"],
        directory=directory,
        shards=params["shards"],
        samples_per_shard=params["samples_per_shard"],
        tar_bytes=marker["tar_bytes"],
    )
    for fmt in FORMATS:
        names, sizes = marker["files"][fmt], marker["sizes"][fmt]
        paths = [str(directory / n) for n in names]
        if any(not os.path.exists(p) or os.path.getsize(p) != s for p, s in zip(paths, sizes)):
            return None
        dataset.paths[fmt], dataset.sizes[fmt] = paths, sizes
    return dataset


def ensure_dataset(
    name: str, cache_dir: Path, scale: float = 1.0, log: Callable[[str], None] | None = None
) -> Dataset:
    """Returns dataset `name` at `scale` of full size under `cache_dir`, making it first unless already there."""
    spec = SPECS[name]
    per_shard = scaled_samples(spec, scale)
    params = _params(spec, per_shard)
    directory = Path(cache_dir) / f"{name}-{spec.shards}x{per_shard}"
    found = _load_if_current(directory, params)
    if found is not None:
        return found

    import numpy as np

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    log(
        f"making dataset {name}: {spec.shards} shards x {per_shard} samples ({spec.description}) in {directory}"
    )
    start = time.perf_counter()
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(params["seed"])
    tars = [directory / f"shard-{i:06d}.tar" for i in range(spec.shards)]
    tgzs = [p.with_suffix(".tgz") for p in tars]
    # zlib releases the GIL, so gzip'ing finished shards overlaps with writing the next ones.
    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        jobs = []
        for tar, tgz, samples in zip(tars, tgzs, GENERATORS[name](rng, spec.shards, per_shard)):
            _write_tar(tar, samples)
            jobs.append(pool.submit(_gzip_file, tar, tgz, spec.gzip_level))
        for job in jobs:
            job.result()
    dataset = Dataset(name=name, directory=directory, shards=spec.shards, samples_per_shard=per_shard)
    for fmt, files in (("tar", tars), ("tgz", tgzs)):
        dataset.paths[fmt] = [str(p) for p in files]
        dataset.sizes[fmt] = [p.stat().st_size for p in files]
    dataset.tar_bytes = sum(dataset.sizes["tar"])
    marker = {
        "params": params,
        "files": {fmt: [Path(p).name for p in dataset.paths[fmt]] for fmt in FORMATS},
        "sizes": dataset.sizes,
        "tar_bytes": dataset.tar_bytes,
    }
    (directory / (MARKER + ".part")).write_text(json.dumps(marker, indent=1))
    (directory / (MARKER + ".part")).replace(directory / MARKER)
    log(
        f"made dataset {name} in {time.perf_counter() - start:.1f} s ({dataset.tar_bytes / 1e6:.0f} MB of tar)"
    )
    return dataset


def describe(dataset: Dataset) -> dict[str, Any]:
    """A JSON-able summary of a dataset, for the raw results file."""
    summary = asdict(dataset)
    summary["directory"] = str(dataset.directory)
    summary["samples"] = dataset.samples
    return summary
