"""Shared fixtures: small shards written in tmp_path by Python's `tarfile` (ustar, gnu, pax; plain or gzip)
and by webdataset's `TarWriter`, and helpers to write them."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from remote_servers import FaultProxy, MotoS3, RangeHTTPServer, proxy_pool

TAR_FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}

Sample = tuple[str, dict[str, bytes]]


def sample_fields(n: int) -> dict[str, bytes]:
    """The fields of the n-th sample of a generated dataset: a class, a text and a json record."""
    return {
        "cls": str(n % 7).encode(),
        "txt": f"sample number {n}".encode(),
        "json": json.dumps({"n": n, "name": f"s{n}"}).encode(),
    }


def make_samples(nshards: int, per_shard: int, start: int = 0) -> list[list[Sample]]:
    """Samples for `nshards` shards of `per_shard` samples each, with globally unique keys."""
    result = []
    n = start
    for _ in range(nshards):
        shard = []
        for _ in range(per_shard):
            shard.append((f"sample{n:06d}", sample_fields(n)))
            n += 1
        result.append(shard)
    return result


def write_tarfile(path: Path | str, samples: list[Sample], fmt: str = "pax", gz: bool = False) -> str:
    """Write samples with Python's tarfile in the given format (ustar, gnu, pax), gzip'd if asked."""
    with tarfile.open(str(path), "w:gz" if gz else "w", format=TAR_FORMATS[fmt]) as tf:
        for key, fields in samples:
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 1_600_000_000
                info.mode = 0o644
                tf.addfile(info, io.BytesIO(data))
    return str(path)


def write_wds(path: Path | str, samples: list[Sample], gz: bool = False) -> str:
    """Write samples with webdataset 1.0.2's TarWriter (a pax header before every member)."""
    import webdataset

    with webdataset.TarWriter(str(path), compress=gz) as writer:
        for key, fields in samples:
            writer.write({"__key__": key, **fields})
    return str(path)


def write_shards(
    directory: Path,
    nshards: int = 4,
    per_shard: int = 5,
    fmt: str = "pax",
    gz: bool = False,
    writer: str = "tarfile",
    name: str = "shard",
    start: int = 0,
) -> list[str]:
    """Write `nshards` shards `<name>-NNNNNN.tar[.gz]` into `directory`; returns their paths in order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, samples in enumerate(make_samples(nshards, per_shard, start)):
        path = directory / f"{name}-{i:06d}.{'tgz' if gz else 'tar'}"
        if writer == "wds":
            paths.append(write_wds(path, samples, gz=gz))
        else:
            paths.append(write_tarfile(path, samples, fmt=fmt, gz=gz))
    return paths


def png_bytes(width: int, height: int, seed: int, mode: str = "RGB") -> bytes:
    """A small PNG with deterministic pixel values."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    if channels == 1:
        pixels = pixels[:, :, 0]
    out = io.BytesIO()
    PIL.Image.fromarray(pixels, mode).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def shard_factory(tmp_path: Path) -> Callable[..., list[str]]:
    """A function writing shards into a fresh directory under tmp_path (see `write_shards`)."""
    counter = [0]

    def make(**kw: Any) -> list[str]:
        counter[0] += 1
        return write_shards(tmp_path / f"set{counter[0]}", **kw)

    return make


@pytest.fixture
def shards(shard_factory: Callable[..., list[str]]) -> list[str]:
    """Four pax shards of five samples (cls, txt, json) each."""
    return shard_factory()


@pytest.fixture
def image_shards(tmp_path: Path) -> list[str]:
    """Two shards of four samples each: a 6x4 RGB `png`, a `cls` and a `txt`."""
    directory = tmp_path / "images"
    directory.mkdir()
    paths = []
    n = 0
    for s in range(2):
        samples = []
        for _ in range(4):
            samples.append(
                (f"img{n:04d}", {"png": png_bytes(6, 4, n), "cls": str(n % 3).encode(), "txt": b"x"})
            )
            n += 1
        paths.append(write_tarfile(directory / f"images-{s:02d}.tar", samples))
    return paths


def reference(fn: Callable[[], Any]) -> Any:
    """Run `fn` (which uses webdataset) and collect the file objects webdataset leaves open, so their
    ResourceWarnings do not surface later as unraisable-exception errors."""
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        result = fn()
        gc.collect()
    return result


def assert_same(a: Any, b: Any, path: str = "sample") -> None:
    """Assert two samples are equal, looking into dicts, lists and tuples; numpy arrays, torch tensors and
    PIL images compare by type, shape, dtype and values."""
    import numpy as np

    if isinstance(a, dict):
        assert isinstance(b, dict), f"{path}: {type(b).__name__} is not a dict"
        assert set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f"{path}: {type(b).__name__} is not an ndarray"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert np.array_equal(a, b), f"{path}: values differ"
    elif type(a).__module__.startswith("torch"):
        import torch

        assert isinstance(b, torch.Tensor), f"{path}: {type(b).__name__} is not a tensor"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert torch.equal(a, b), f"{path}: values differ"
    elif type(a).__module__.startswith("PIL"):
        assert a.mode == b.mode and a.size == b.size and a.tobytes() == b.tobytes(), f"{path}: images differ"
    else:
        assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
        assert a == b, f"{path}: {a!r} != {b!r}"


def assert_same_list(a: list[Any], b: list[Any]) -> None:
    """Assert two lists of samples are equal (see `assert_same`)."""
    assert len(a) == len(b), f"{len(a)} samples != {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        assert_same(x, y, f"sample {i}")


def pids_with(marker: str, *, zombies: bool = True) -> list[int]:
    """Processes other than this one whose command line contains `marker` (zombies too, unless told not)."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and (zombies or state != "Z"):
            found.append(int(entry))
    return found


def wait_until(condition: Callable[[], Any], timeout: float = 10.0) -> bool:
    """Polls `condition` until it is true or `timeout` seconds pass; returns its last value's truth."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


# Servers for the remote-storage tests (tests/remote_servers.py): real ones on 127.0.0.1, one per test module
# (moto) or per test (the HTTP server, the proxies), stopped after.


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[RangeHTTPServer]:
    """A RangeHTTPServer over tmp_path/www (created empty)."""
    (tmp_path / "www").mkdir()
    with RangeHTTPServer(tmp_path / "www") as server:
        yield server


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3]:
    """moto's S3 server (its own process, signatures checked) for one test module, whose tests use their own
    buckets."""
    with MotoS3() as server:
        yield server


@pytest.fixture
def proxy_factory() -> Iterator[Callable[[tuple[str, int]], FaultProxy]]:
    """Makes FaultProxy instances in front of (host, port), closed after the test."""
    with proxy_pool() as make:
        yield make


@pytest.fixture
def aws_env(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoS3:
    """moto's S3 server, found by the reader through the AWS_* variables alone (no profile file of the
    user's)."""
    clear_aws_env(monkeypatch, tmp_path)
    for name, value in moto_s3.env().items():
        monkeypatch.setenv(name, value)
    return moto_s3


def clear_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS_* variable of the user's, no profile files, no instance metadata."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
