"""The benchmark harness: its datasets are deterministic and reused, and a run prints every row with the
same sample counts for fastwds as for webdataset."""

from __future__ import annotations

import gc
import gzip
import importlib.util
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parent.parent / "benches"


def _load(name: str):
    # Loaded by path under a private name: `datasets` would clash with the Hugging Face package of that name.
    spec = importlib.util.spec_from_file_location(f"fastwds_bench_{name}", BENCHES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench_datasets = _load("datasets")


def _samples_by_webdataset(paths: list[str]) -> list[dict]:
    import webdataset

    # The reference leaves its shard files for the garbage collector to close; collect them here, where the
    # ResourceWarning is expected, instead of at some later test's expense.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        samples = list(webdataset.WebDataset(paths, shardshuffle=False))
        gc.collect()
    # Compare fields only: webdataset also adds `__local_path__`.
    return [{k: v for k, v in s.items() if k != "__local_path__"} for s in samples]


def test_datasets_are_deterministic_reused_and_gzip_the_same_tar(tmp_path: Path) -> None:
    first = bench_datasets.ensure_dataset("tiny", tmp_path / "a", scale=0.0004, log=lambda _: None)
    second = bench_datasets.ensure_dataset("tiny", tmp_path / "b", scale=0.0004, log=lambda _: None)
    assert (first.shards, first.samples_per_shard) == (8, 20)
    for fmt in ("tar", "tgz"):
        assert [Path(p).read_bytes() for p in first.paths[fmt]] == [
            Path(p).read_bytes() for p in second.paths[fmt]
        ]
    for tar, tgz in zip(first.paths["tar"], first.paths["tgz"]):
        assert gzip.decompress(Path(tgz).read_bytes()) == Path(tar).read_bytes()

    stamps = [os.stat(p).st_mtime_ns for p in first.paths["tar"] + first.paths["tgz"]]
    again = bench_datasets.ensure_dataset("tiny", tmp_path / "a", scale=0.0004, log=lambda _: pytest.fail(_))
    assert again.paths == first.paths
    assert [os.stat(p).st_mtime_ns for p in again.paths["tar"] + again.paths["tgz"]] == stamps

    samples = _samples_by_webdataset(first.paths["tar"])
    assert len(samples) == 160
    assert len({s["__key__"] for s in samples}) == 160
    assert all(set(s) == {"__key__", "__url__", "txt", "json"} for s in samples)
    assert all(len(s["txt"]) == 30 and 20 <= len(s["json"]) <= 40 for s in samples)
    assert [json.loads(s["json"])["id"] for s in samples] == list(range(160))


def test_a_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    made = bench_datasets.ensure_dataset("tiny", tmp_path, scale=0.0002, log=lambda _: None)
    original = Path(made.paths["tar"][3]).read_bytes()
    Path(made.paths["tar"][3]).write_bytes(original[:1024])
    rebuilt = bench_datasets.ensure_dataset("tiny", tmp_path, scale=0.0002, log=lambda _: None)
    assert Path(rebuilt.paths["tar"][3]).read_bytes() == original


def test_imagenet_like_samples_are_real_jpegs_with_labels(tmp_path: Path) -> None:
    from PIL import Image

    made = bench_datasets.ensure_dataset("imagenet", tmp_path, scale=0.003, log=lambda _: None)
    samples = _samples_by_webdataset(made.paths["tgz"])
    assert len(samples) == 16 * 3
    for sample in samples:
        assert set(sample) == {"__key__", "__url__", "jpg", "cls", "json"}
        assert 15_000 <= len(sample["jpg"]) <= 70_000
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG" and 256 <= min(image.size) and max(image.size) <= 400
        assert json.loads(sample["json"])["label"] == int(sample["cls"].decode("ascii"))
    # A pax header before the first member, as webdataset's TarWriter writes it.
    assert b"mtime=1700000000.5" in Path(made.paths["tar"][0]).read_bytes()[:1536]


def _run_harness(tmp_path: Path, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess, Path]:
    """Runs the harness at a tiny scale with datasets and results under `tmp_path`; returns the finished
    process and the path of its JSON results."""
    from fastwds import _core as core

    results = tmp_path / "results.json"
    # The harness's children must import the very fastwds this test imports (installed or source tree).
    package_root = Path(core.__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(package_root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, str(BENCHES / "harness.py"), "--quick", "--scale", "0.002", "--min-time", "0"]
    command += ["--data", str(tmp_path / "data"), "--json", str(results), *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc, results


def test_quick_harness_prints_every_row_and_fastwds_counts_match_webdataset(tmp_path: Path) -> None:
    # DALI's rows are left out: it is optional, and its start-up alone would double this test's time.
    proc, results = _run_harness(tmp_path, "--only", "tiny,imagenet", "--skip", "dali", timeout=270)

    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert cells[0][:6] == ["dataset", "format", "workload", "reader", "samples", "samples/s"]
    listed = {tuple(row[:4]) for row in cells[1:]}
    expected = set()
    for name in ("tiny", "imagenet"):
        for fmt, machine in (("tar", "cat > /dev/null"), ("tgz", "gzip -dc > /dev/null")):
            for reader in (machine, "webdataset", "fastwds.ShardReader", "fastwds.WebDataset"):
                expected.add((name, fmt, "raw", reader))
    for reader in ("webdataset", "fastwds.WebDataset"):
        expected.add(("tiny", "tar", "shuffle(1000).to_tuple", reader))
        expected.add(("imagenet", "tar", 'decode("rgb8").to_tuple', reader))
        expected.add(("imagenet", "tar", "DataLoader nw=0, crop224, bs=64", reader))
        expected.add(("imagenet", "tar", "DataLoader nw=2, crop224, bs=64", reader))
    for threads in (1, 2):
        expected.add(("imagenet", "tar", 'decode("rgb8").to_tuple', f"fastwds.ShardReader threads={threads}"))
    for workers in (1, 2):
        workload = f'decode("rgb8").to_tuple, DataLoader nw={workers}, bs=64 lists'
        expected.add(("imagenet", "tar", workload, "webdataset"))
    for workers in (0, 1, 2):
        workload = f"PIL + torchvision RandomResizedCrop 224 + flip, DataLoader nw={workers}, bs=64"
        expected.add(("imagenet", "tar", workload, "webdataset"))
    expected.add(("imagenet", "tar", "decode + random-resized-crop 224 + flip, bs=64", "fastwds.WebDataset"))
    for reader in ("webdataset", "fastwds.WebDataset"):
        expected.add(("imagenet", "tar", "TarWriter(encoder=False) writes the samples", reader))
    # --quick keeps three object-storage rows (the loopback S3 server's ceiling, the reference, s3://).
    for reader in (
        "curl -s -o /dev/null, 4 at a time (S3 server's ceiling)",
        "webdataset, pipe:curl -s PRESIGNED_URL",
        "fastwds.WebDataset s3://",
    ):
        expected.add(("imagenet", "tar", "raw", reader))
    assert listed == expected
    assert len(cells) - 1 == len(expected)
    assert any(
        line.startswith("Machine: ") and "webdataset 1.0.2" in line for line in proc.stdout.splitlines()
    )

    raw = json.loads(results.read_text())
    totals = {"tiny": 8 * 100, "imagenet": 16 * 2}
    assert {name: raw["datasets"][name]["samples"] for name in totals} == totals
    rows = {(r["dataset"], r["format"], r["workload"], r["reader"]): r for r in raw["rows"]}
    assert not any(key[3] == "dali" for key in rows)
    # Rows that need a library from requirements-bench.txt (not installed by the test set-up) say which; they
    # may be n/a, naming it. Every other row must run: the reference, the machine limits, and fastwds (the
    # core is built). Which rows are optional is the harness's list, checked here against what they are.
    optional = {key: row["optional"] for key, row in rows.items() if row["optional"] is not None}
    assert optional == {("imagenet", "tar", f"rrc-nw{n}", "webdataset"): "torchvision" for n in (0, 1, 2)}
    for key, row in rows.items():
        if key in optional and row["status"] != "ok":
            assert row["status"] == "n/a" and optional[key].lower() in row["error"].lower(), (key, row)
        else:
            assert row["status"] == "ok", (key, row)
    has_torchvision = all(rows[key]["status"] == "ok" for key in optional)

    def group(workload: str) -> str:
        return workload.split("-")[0]  # "decode-nw2" is the decode task, run through a DataLoader

    compared = 0
    for (name, fmt, workload, reader), row in rows.items():
        if reader.startswith("fastwds") and row["status"] == "ok":
            # Rows reading the S3 server's objects compare with the reference reading them through curl.
            reference = "webdataset-curl" if row["store"] == "s3" else "webdataset"
            references = [
                r
                for (n, f, w, rd), r in rows.items()
                if (n, f, rd) == (name, fmt, reference)
                and group(w) == group(workload)
                and r["status"] == "ok"
            ]
            if not references:  # only the augmenting task's reference needs something optional
                assert group(workload) == "rrc" and not has_torchvision, (name, fmt, workload)
                continue
            # The writer rows write the first 4 of the 16 shards.
            total = totals[name] * 4 // 16 if workload == "write" else totals[name]
            for reference in references:
                assert row["samples_per_pass"] == reference["samples_per_pass"] == total, (
                    name,
                    fmt,
                    workload,
                    reader,
                )
            sizes = raw["datasets"][name]["sizes"][fmt]
            assert row["bytes"] >= sum(sizes[:4] if workload == "write" else sizes)
            # The ratio is over the reference's best way of doing the same task.
            best = max(r["samples_s"] for r in references)
            assert row["ratio"] == pytest.approx(row["samples_s"] / best)
            compared += 1
    assert compared >= 5

    s3 = rows[("imagenet", "tar", "raw", "fastwds-s3")]
    assert s3["store"] == "s3" and rows[("imagenet", "tar", "raw", "webdataset")]["store"] == "local"
    ceiling = rows[("imagenet", "tar", "raw", "curl")]
    assert ceiling["samples_per_pass"] == totals["imagenet"]
    texts = [(t["text"], t["met"]) for t in s3["targets"]]
    assert texts[:2] == [
        (">= 3x webdataset pipe:curl", s3["ratio"] >= 3.0),
        (">= 80% of the curl ceiling", s3["samples_s"] >= 0.8 * ceiling["samples_s"]),
    ]
    assert texts[2][0].startswith("peak RSS - imports <= ") and texts[2][1] is True

    augment = rows[("imagenet", "tar", "rrc", "fastwds-wds")]
    if augment["status"] == "ok":
        # DALI was skipped, so the target against it cannot be checked.
        assert [(t["text"], t["met"]) for t in augment["targets"]] == [
            (">= 4x webdataset's best", None if not has_torchvision else augment["ratio"] >= 4.0),
            (">= 2x DALI", None),
        ]
    per_core = [rows[("imagenet", "tar", "decode", f"fastwds-core-t{n}")] for n in (1, 2)]
    if all(r["status"] == "ok" for r in per_core):
        scaling = next(line for line in proc.stdout.splitlines() if line.startswith("Native decode"))
        assert f"{per_core[0]['samples_s']:,.0f} images/s on 1 thread" in scaling
        assert f"{per_core[1]['samples_s'] / per_core[0]['samples_s']:.2f}x" in scaling


def test_rounds_report_each_rows_median_run_and_the_spread(tmp_path: Path) -> None:
    only = ("--only", "tiny,tar,raw,cat,fastwds-core")
    proc, results = _run_harness(tmp_path, *only, "--rounds", "3", timeout=120)
    assert proc.stderr.count("[round 3/3, ") == 2, proc.stderr

    raw = json.loads(results.read_text())
    assert raw["rounds"] == 3
    rows = {r["reader"]: r for r in raw["rows"]}
    assert set(rows) == {"cat", "fastwds-core"}
    table = {
        line.split("|")[4].strip(): line for line in proc.stdout.splitlines() if line.startswith("| tiny")
    }
    for reader, row in rows.items():
        rates = row["round_rates"]
        assert len(rates) == 3
        assert row["samples_s"] == pytest.approx(sorted(rates)[1])
        cell = f"{row['samples_s']:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
        assert cell in table["cat > /dev/null" if reader == "cat" else "fastwds.ShardReader"]
    assert "3 rounds, each row's median round shown" in proc.stdout


def test_object_storage_rows_are_selected_by_store_and_quick_keeps_a_few() -> None:
    harness = _load("harness")
    rows = harness.plan_rows()
    remote = [r for r in rows if r.store == "s3"]
    assert harness.select_rows(rows, "s3") == remote == harness.select_rows(rows, "remote")
    assert {r.reader for r in remote} == set(harness.REMOTE_READERS)
    assert {r.format for r in remote} == {"tar"} and {r.dataset for r in remote} == {"imagenet", "tiny"}
    # Reader names still select what they did; the curl reference is a variant of `webdataset`.
    assert {r.reader for r in harness.select_rows(rows, "fastwds.webdataset")} == {"fastwds-wds"}
    assert {r.reader for r in harness.select_rows(rows, "webdataset,local")} == {"webdataset"}
    assert {r.reader for r in harness.select_rows(rows, "webdataset,s3")} == {"webdataset-curl"}
    assert harness.names_remote("tiny,s3") and harness.names_remote("fastwds-s3")
    assert not harness.names_remote("tiny,webdataset") and not harness.names_remote(None)


def test_median_run_is_the_middle_rate_and_a_failure_wins() -> None:
    harness = _load("harness")
    runs = [{"status": "ok", "samples": 100, "seconds": s} for s in (1.0, 4.0, 2.0, 3.0)]
    chosen = harness.median_run(runs)
    assert chosen["seconds"] == 3.0  # rates 100, 25, 50, 33: the lower middle of four is 33
    assert chosen["round_rates"] == [100.0, 25.0, 50.0, pytest.approx(33.33, abs=0.01)]
    failed = {"status": "error", "error": "boom"}
    assert harness.median_run([runs[0], failed, runs[1]]) is failed
    assert "round_rates" not in harness.median_run(runs[:1])
