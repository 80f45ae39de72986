"""The runnable seed notebooks in examples/, each run end to end (as a user would) on the synthetic data it
generates with --make-sample-data; their shards are then checked against the sources with webdataset."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import webdataset

import fastwds
from conftest import reference
from remote_servers import MotoS3, unique_bucket

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PYTHONPATH = os.path.dirname(os.path.dirname(os.path.abspath(fastwds.__file__)))


def run_example(name: str, *args: str, cwd: Path, extra_env: dict[str, str] | None = None) -> str:
    """Runs examples/NAME with ARGS in `cwd` (with `extra_env` added to the environment); returns its stdout,
    failing the test on a non-zero exit."""
    env = {**os.environ, **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join([PYTHONPATH, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=180,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def load_example(name: str):
    """Imports examples/NAME as a module (to call its functions directly)."""
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ref_read(paths: list[str]) -> list[dict]:
    """Samples as webdataset 1.0.2 reads them, without __url__/__local_path__."""

    def read():
        return [
            {k: v for k, v in s.items() if k not in ("__url__", "__local_path__")}
            for s in webdataset.WebDataset(paths, shardshuffle=False)
        ]

    return reference(read)


def written_shards(stdout: str) -> list[str]:
    [line] = [line for line in stdout.splitlines() if line.startswith("wrote ") and "shards:" in line]
    return line.split(":", 1)[1].split()


def test_coco_to_shards(tmp_path):
    out = run_example("coco_to_shards.py", "--make-sample-data", "coco", cwd=tmp_path)
    shards = [str(tmp_path / s) for s in written_shards(out)]
    assert len(shards) == 3  # 24 images, 10 per shard in sample mode
    samples = ref_read(shards)
    coco = tmp_path / "coco"
    annotations = {
        kind: json.loads((coco / "annotations" / f"{prefix}_train2014.json").read_text())
        for kind, prefix in (
            ("instances", "instances"),
            ("captions", "captions"),
            ("persons", "person_keypoints"),
        )
    }
    images = annotations["instances"]["images"]
    assert [s["__key__"] for s in samples] == [f"{im['id']:012d}" for im in images]
    for sample, image in zip(samples, images):
        assert set(sample) == {"__key__", "jpg", "instances.json", "captions.json", "persons.json"}
        assert sample["jpg"] == (coco / "train2014" / image["file_name"]).read_bytes()
        for kind, data in annotations.items():
            expected = [a for a in data["annotations"] if a["image_id"] == image["id"]]
            assert json.loads(sample[f"{kind}.json"]) == expected
    assert sum(len(json.loads(s["persons.json"])) for s in samples) > 0
    assert "first sample: 000000000009" in out and "read back 24 samples from 3 shards" in out


def test_imagenet_to_shards(tmp_path):
    out = run_example("imagenet_to_shards.py", "--make-sample-data", "inet", cwd=tmp_path)
    shards = [str(tmp_path / s) for s in written_shards(out)]
    assert len(shards) >= 2 and all(os.path.getsize(s) <= 100_000 for s in shards)
    samples = ref_read(shards)
    synsets = (tmp_path / "inet" / "LOC_synset_mapping.txt").read_text().splitlines()
    classes = {line.split()[0]: n for n, line in enumerate(synsets)}
    assert len(samples) == 32
    keys = [s["__key__"] for s in samples]
    assert sorted(keys) != keys  # shuffled across classes
    for sample in samples:
        wnid = sample["__key__"].split("_")[0]
        meta = json.loads(sample["json"])
        assert int(sample["cls"]) == meta["cls"] == classes[wnid]
        assert meta["wnid"] == wnid and meta["fname"] == sample["__key__"] + ".JPEG"
        assert meta["cname"] == synsets[classes[wnid]].split(" ", 1)[1].split(",")[0]
        assert sample["jpg"] == (tmp_path / "inet" / "train" / wnid / meta["fname"]).read_bytes()
        has_box = int(sample["__key__"].split("_")[1]) % 2 == 0
        assert ("bboxes" in meta) == has_box
        if has_box:
            assert meta["bboxes"][0]["wnid"] == wnid and meta["bboxes"][0]["box"][:2] == [2, 3]
    assert "read back 32 samples" in out


def test_objectron_lists(tmp_path):
    out = run_example("objectron_lists.py", "--make-sample-data", "obj", cwd=tmp_path)
    shards = sorted(str(p) for p in (tmp_path / "obj" / "shards").glob("*.tar"))
    lists = sorted((tmp_path / "obj" / "shards" / "lists").glob("*.txt"))
    assert len(shards) == len(lists) == 3  # 10 videos, 4 per shard
    first_list = lists[0].read_text().splitlines()
    assert first_list[0].startswith("bike_batch-0_0.mov pipe:cat ")
    samples = ref_read(shards)
    bucket = tmp_path / "obj" / "bucket"
    assert len(samples) == 10
    for sample in samples:
        video = sample["__key__"].replace(
            "_", "/"
        )  # bike_batch-0_0 is bike/batch-0/0 (no "_" in these classes)
        assert sample["mov"] == (bucket / "videos" / video / "video.MOV").read_bytes()
        assert sample["geometry.pbdata"] == (bucket / "videos" / video / "geometry.pbdata").read_bytes()
        assert sample["annotation.pbdata"] == (bucket / "annotations" / f"{video}.pbdata").read_bytes()
    assert "read back 10 samples from 3 shards" in out


def test_augment_shards_on_a_local_dask_cluster(tmp_path):
    out = run_example("augment_shards.py", "--make-sample-data", "aug", "--workers", "2", cwd=tmp_path)
    inputs = sorted(str(p) for p in (tmp_path / "aug" / "input").glob("*.tar"))
    outputs = sorted(str(p) for p in (tmp_path / "aug" / "augmented").glob("*.tar"))
    assert [Path(p).name for p in outputs] == [Path(p).name for p in inputs] and len(inputs) == 4
    source = ref_read(inputs)
    augmented = ref_read(outputs)
    assert [s["__key__"] for s in augmented] == [s["__key__"] for s in source] and len(source) == 4 * 8
    assert [s["cls"] for s in augmented] == [s["cls"] for s in source]
    assert all(set(s) == {"__key__", "png", "cls"} for s in augmented)
    assert (
        len({int(line.rsplit("pid ", 1)[1].rstrip(")")) for line in out.splitlines() if "worker pid" in line})
        >= 1
    )
    # A task's result does not depend on the worker: the same function run here gives the same pixels.
    example = load_example("augment_shards.py")
    local = tmp_path / "local.tar"
    result = example.augment_shard(inputs[1], str(local), size=32, seed=0)
    assert result["samples"] == 8

    def decoded(paths):
        return reference(
            lambda: list(webdataset.WebDataset(paths, shardshuffle=False).decode("rgb8").to_tuple("png"))
        )

    for (mine,), (theirs,) in zip(decoded([str(local)]), decoded([outputs[1]])):
        assert mine.shape == theirs.shape and mine.shape[0] <= 32 and mine.shape[1] <= 32
        assert np.array_equal(mine, theirs)
    assert "augmented 32 samples in 4 shards" in out


def test_augment_shards_writes_outputs_to_a_bucket(tmp_path):
    """Given an s3:// prefix, the Dask example uploads each output shard there (moto's server, signatures
    checked): the objects hold the augmented samples of the local inputs, one per input, same names."""
    with MotoS3() as server:
        bucket = unique_bucket("augment")
        server.create_bucket(bucket)
        out = run_example(
            "augment_shards.py",
            "--make-sample-data",
            "aug",
            "--workers",
            "2",
            "-o",
            f"s3://{bucket}/augmented/",
            cwd=tmp_path,
            extra_env=server.env(),
        )
        listed = server.keys(bucket)
        keys = [key for key in listed if not key.endswith(".wdsidx")]
        objects = {key: server.client().get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}
    inputs = sorted((tmp_path / "aug" / "input").glob("*.tar"))
    assert keys == [f"augmented/{p.name}" for p in inputs]
    assert sorted(set(listed) - set(keys)) == [
        key + ".wdsidx" for key in keys
    ]  # each shard's index beside it
    for key, data in objects.items():
        (tmp_path / Path(key).name).write_bytes(data)
    augmented = ref_read([str(tmp_path / Path(key).name) for key in keys])
    source = ref_read([str(p) for p in inputs])
    assert [s["__key__"] for s in augmented] == [s["__key__"] for s in source] and len(source) == 4 * 8
    assert [s["cls"] for s in augmented] == [s["cls"] for s in source]
    assert all(set(s) == {"__key__", "png", "cls"} for s in augmented)
    assert "augmented 32 samples in 4 shards" in out


def test_augment_crop_and_flip():
    example = load_example("augment_shards.py")
    image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    seen_flip = seen_plain = False
    for seed in range(20):
        crop = example.augment(image, np.random.default_rng(seed), 4)
        assert crop.shape == (4, 4, 3)
        # The crop is a window of the image, mirrored or not.
        windows = [image[t : t + 4, l : l + 4] for t in range(3) for l in range(5)]  # noqa: E741
        plain = any(np.array_equal(crop, w) for w in windows)
        flipped = any(np.array_equal(crop, w[:, ::-1]) for w in windows)
        assert plain or flipped
        seen_plain |= plain
        seen_flip |= flipped
    assert seen_plain and seen_flip
    assert example.augment(image, np.random.default_rng(0), 100).shape == (6, 8, 3)
