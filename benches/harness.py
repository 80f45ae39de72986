"""The fastwds benchmark: fastwds beside webdataset 1.0.2 and the machine's own limits, on the same shards.

    python benches/harness.py [--quick] [--data DIR] [--only NAME,...] [--skip NAME,...] [--rounds N]
                                [--json FILE]

Makes (or reuses) the sample datasets, runs every configuration in a fresh process with the page cache warm,
and prints one markdown table to stdout (progress goes to stderr). See benches/README.md for what each row
means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import datasets  # noqa: E402  (benches/ is not a package; the script's own directory comes first)
import measure  # noqa: E402
import memory  # noqa: E402
import remote  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = HERE / ".cache"
QUICK_SCALE = 0.05
# The ring buffer budget of ShardReader's defaults. Its rows' peak RSS growth is checked against
# `memory.rss_bound_mb`: this buffer, plus a sample per ring queue, per reader thread and two in the consumer's
# hands, times the reader threads unless malloc has one arena (glibc keeps freed samples in each reader
# thread's arena), plus `memory.RSS_OVERHEAD_MB` (benches/memory.py measures it behind a slow consumer).
RING_BUFFER_MB = 256
# Libraries whose versions go under the table (torchvision and DALI are optional: their rows are n/a without).
REPORTED_VERSIONS = (
    "fastwds",
    "webdataset",
    "torch",
    "torchvision",
    "nvidia-dali-cuda120",
    "Pillow",
    "numpy",
    "moto",
)

READERS = {
    "cat": "cat > /dev/null",
    "gzip": "gzip -dc > /dev/null",
    "webdataset": "webdataset",
    "fastwds-wds": "fastwds.WebDataset",
    "fastwds-core": "fastwds.ShardReader",
    "fastwds-core-t1": "fastwds.ShardReader threads=1",
    "fastwds-core-t2": "fastwds.ShardReader threads=2",
    "dali": "DALI CPU pipeline",
    # The object-storage rows (benches/remote.py): the shards as objects of a moto S3 server on 127.0.0.1.
    "curl": "curl -s -o /dev/null, 4 at a time (S3 server's ceiling)",
    "webdataset-curl": "webdataset, pipe:curl -s PRESIGNED_URL",
    "fastwds-s3": "fastwds.WebDataset s3://",
    "fastwds-s3-p16": "fastwds.WebDataset s3://, prefetch=16",
    "fastwds-http": "fastwds.WebDataset presigned http://",
}
# Readers of the objects of the loopback S3 server, and what reads them: `s3://` URLs or presigned ones.
REMOTE_READERS = {
    "curl": "presigned",
    "webdataset-curl": "presigned",
    "fastwds-s3": "s3",
    "fastwds-s3-p16": "s3",
    "fastwds-http": "presigned",
}
# ShardReader options of the fastwds rows that set any (WebDataset's `reader_options`).
READER_OPTIONS = {"fastwds-s3-p16": {"prefetch": 16}}
# The reference each row's ratio is over, by where the row reads its shards from.
REFERENCE = {"local": "webdataset", "s3": "webdataset-curl"}
# --quick runs these object-storage rows only (the server's start and the uploads cost more than the reads
# at quick sizes), unless --only names the store or a reader of it: then every selected one runs.
QUICK_REMOTE = {("imagenet", "raw", r) for r in ("curl", "webdataset-curl", "fastwds-s3")}
WORKLOADS = {
    "raw": "raw",
    "shuffle": "shuffle(1000).to_tuple",
    "decode": 'decode("rgb8").to_tuple',
    "decode-nw1": 'decode("rgb8").to_tuple, DataLoader nw=1, bs=64 lists',
    "decode-nw2": 'decode("rgb8").to_tuple, DataLoader nw=2, bs=64 lists',
    "loader0": "DataLoader nw=0, crop224, bs=64",
    "loader2": "DataLoader nw=2, crop224, bs=64",
    "rrc": "decode + random-resized-crop 224 + flip, bs=64",
    "rrc-nw0": "PIL + torchvision RandomResizedCrop 224 + flip, DataLoader nw=0, bs=64",
    "rrc-nw1": "PIL + torchvision RandomResizedCrop 224 + flip, DataLoader nw=1, bs=64",
    "rrc-nw2": "PIL + torchvision RandomResizedCrop 224 + flip, DataLoader nw=2, bs=64",
    "write": "TarWriter(encoder=False) writes the samples",
}
# The writer rows write this many shards' samples (held in memory) per pass.
WRITE_SHARDS = 4
# Workloads that are one task done different ways: a row's ratio is over the best webdataset row of its
# group (the reference with its best DataLoader setting). Other workloads are groups of their own.
GROUPS = {
    "decode-nw1": "decode",
    "decode-nw2": "decode",
    "rrc-nw0": "rrc",
    "rrc-nw1": "rrc",
    "rrc-nw2": "rrc",
}
# The decode and augment rows (with the reference's DataLoader settings, DALI and the per-core rows) read a
# quarter of the budget: their rates are steady after a few shards, and the slow reference rows would
# otherwise take a minute each.
SHORT_BUDGET_WORKLOADS = ("decode", "rrc")
SHORT_BUDGET_FACTOR = 1 / 4
TUPLE_FIELDS = {"tiny": ["txt", "json"], "imagenet": ["jpg", "cls"], "large": ["npy"]}


@dataclass(frozen=True)
class Row:
    """One configuration to measure: a reader running a workload over one dataset in one format."""

    dataset: str
    format: str
    workload: str
    reader: str

    @property
    def ident(self) -> str:
        """A stable name for the row, used in the JSON results."""
        return f"{self.dataset}/{self.format}/{self.workload}/{self.reader}"

    @property
    def store(self) -> str:
        """Where the row reads the shards from: "local" files or "s3" (the loopback S3 server's objects)."""
        return "s3" if self.reader in REMOTE_READERS else "local"


def optional_requirement(row: Row) -> str | None:
    """The optional library `row` needs (installed by `scripts/dev.sh bench` from requirements-bench.txt, not
    by the test set-up), or None for rows that need only requirements-dev.txt. Without it the row is n/a."""
    if row.reader == "dali":
        return "DALI"
    if row.reader == "webdataset" and GROUPS.get(row.workload) == "rrc":
        return "torchvision"
    return None


def plan_rows() -> list[Row]:
    """Every row the full benchmark measures, in table order."""
    rows = []
    for name in datasets.SPECS:
        for fmt in datasets.FORMATS:
            rows.append(Row(name, fmt, "raw", "cat" if fmt == "tar" else "gzip"))
            for reader in ("webdataset", "fastwds-core", "fastwds-wds"):
                rows.append(Row(name, fmt, "raw", reader))
            # Pipeline rows run on the .tar only: the .tgz rows above already show what inflating costs.
            if fmt == "tar" and name == "tiny":
                rows += [Row(name, fmt, "shuffle", r) for r in ("webdataset", "fastwds-wds")]
            if fmt == "tar" and name == "imagenet":
                rows += _image_rows(name, fmt)
                rows += [Row(name, fmt, "write", r) for r in ("webdataset", "fastwds-wds")]
    return rows + _remote_rows()


def _remote_rows() -> list[Row]:
    """The object-storage rows, last: the ImageNet-like and tiny `.tar` shards read from the loopback S3
    server by the server's own ceiling (parallel curl), the reference (pipe:curl), and fastwds (`s3://`,
    with 16 shards in flight, and presigned http); plus the decode through `s3://` and through pipe:curl."""
    rows = []
    for name in ("imagenet", "tiny"):
        rows += [Row(name, "tar", "raw", r) for r in REMOTE_READERS]
        if name == "imagenet":
            rows += [Row(name, "tar", "decode", r) for r in ("webdataset-curl", "fastwds-s3")]
    return rows


def _image_rows(name: str, fmt: str) -> list[Row]:
    """The image rows: decode (one process, the reference's DataLoader settings, DALI, the core per thread
    count), the centre-crop DataLoader rows, and decode + random-resized-crop + flip against the reference
    and DALI."""
    rows = [Row(name, fmt, "decode", r) for r in ("webdataset", "fastwds-wds")]
    rows += [Row(name, fmt, w, "webdataset") for w in ("decode-nw1", "decode-nw2")]
    rows += [Row(name, fmt, "decode", r) for r in ("dali", "fastwds-core-t1", "fastwds-core-t2")]
    for workload in ("loader0", "loader2"):
        rows += [Row(name, fmt, workload, r) for r in ("webdataset", "fastwds-wds")]
    rows += [Row(name, fmt, w, "webdataset") for w in ("rrc-nw0", "rrc-nw1", "rrc-nw2")]
    rows += [Row(name, fmt, "rrc", r) for r in ("fastwds-wds", "dali")]
    return rows


def row_budget(row: Row, budget: float) -> float:
    """The seconds after which `row`'s passes stop (at the next shard boundary)."""
    if GROUPS.get(row.workload, row.workload) in SHORT_BUDGET_WORKLOADS:
        return budget * SHORT_BUDGET_FACTOR
    return budget


def _vocabulary() -> dict[str, dict[str, str]]:
    """--only names per category, each mapped to the value it selects (reader labels work as names too).

    A value also selects its variants: `fastwds` every fastwds reader, `fastwds-core` the ShardReader rows
    at any thread count, `decode` and `rrc` their DataLoader settings."""
    readers = {k: k for k in READERS}
    for key, label in READERS.items():  # a label's first word names the first reader with that label
        readers.setdefault(label.split()[0].rstrip(",").lower(), key)
    readers |= {"fastwds": "fastwds", "shardreader": "fastwds-core", "fastwds.shardreader": "fastwds-core"}
    return {
        "dataset": {k: k for k in datasets.SPECS},
        "format": {k: k for k in datasets.FORMATS},
        "workload": {k: k for k in WORKLOADS},
        "reader": readers,
        "store": {"s3": "s3", "remote": "s3", "local": "local"},
    }


def names_remote(only: str | None) -> bool:
    """Whether `only` names the object store or one of its readers (so --quick keeps all its rows)."""
    names = {n.strip().lower() for n in (only or "").split(",")}
    vocab = _vocabulary()
    return bool(names & {"s3", "remote"}) or any(vocab["reader"].get(n) in REMOTE_READERS for n in names)


def select_rows(rows: list[Row], only: str | None) -> list[Row]:
    """Keeps the rows that match `only`: within a category any named value matches, across categories all must."""
    if not only:
        return rows
    vocab = _vocabulary()
    wanted: dict[str, set[str]] = {}
    for raw_name in only.split(","):
        name = raw_name.strip().lower()
        if not name:
            continue
        for category, names in vocab.items():
            if name in names:
                wanted.setdefault(category, set()).add(names[name])
                break
        else:
            valid = sorted({n for names in vocab.values() for n in names})
            raise SystemExit(f"--only: unknown name {raw_name!r}; valid names: {', '.join(valid)}")

    def matches(row: Row) -> bool:
        for category, values in wanted.items():
            value = getattr(row, category)
            if not any(value == v or value.startswith(v + "-") for v in values):
                return False
        return True

    return [row for row in rows if matches(row)]


# ---------------------------------------------------------------------------------------------------------
# Targets, from the issues: a row's target is checked against another row of the same run.


@dataclass
class Target:
    """A goal a row is checked against, and whether this run met it (None when it could not be checked)."""

    text: str
    met: bool | None

    def render(self) -> str:
        """The target and its verdict, for the table."""
        verdict = {True: "met", False: "missed", None: "unchecked"}[self.met]
        return f"{self.text}: {verdict}"


def _ratio_target(ratio: float | None, goal: float, text: str) -> Target:
    return Target(text, None if ratio is None else ratio >= goal)


def _share_of(result: dict[str, Any], other: dict[str, Any] | None) -> float | None:
    """`result`'s samples/s over `other`'s, or None when `other` did not run."""
    if not other or other.get("status") != "ok" or not other.get("samples_s"):
        return None
    return result["samples_s"] / other["samples_s"]


def _size(mb: float) -> str:
    """A size given in MiB, in the unit that suits it."""
    if mb >= 1:
        return f"{mb:.3g} MB"
    return f"{mb * 1024:.3g} KB" if mb * 1024 >= 1 else f"{mb * 2**20:.0f} B"


def _rss_target(result: dict[str, Any], options: dict[str, Any]) -> Target:
    """Peak RSS growth within `memory.rss_bound_mb` for a reader with these ShardReader options."""
    delta = result["peak_rss_mb"] - result["rss_after_imports_mb"]
    sample_mb = result.get("sample_mb", 0.0)
    threads, queues = memory.reader_shape(options)
    kept = not memory.one_arena()
    bound = memory.rss_bound_mb(RING_BUFFER_MB, sample_mb, threads, queues, kept)
    live = f"{RING_BUFFER_MB}+{queues + threads + 2}x{_size(sample_mb)}"
    formula = f"{threads}x({live})" if kept and threads > 1 else live
    return Target(
        f"peak RSS - imports <= {formula}+{memory.RSS_OVERHEAD_MB} = {bound:,.0f} MB", delta <= bound
    )


def _remote_targets(row: Row, result: dict[str, Any], results: dict[Row, dict[str, Any]]) -> list[Target]:
    """Issue 15's targets for the object-storage rows: raw `s3://` >= 3x the reference's pipe:curl and >= 80%
    of the server's ceiling (parallel curl); the peak RSS bound for the `s3://` rows, 16 shards in flight
    among them."""
    targets = []
    if row.workload != "raw":
        return targets
    if row.reader == "fastwds-s3":
        targets.append(_ratio_target(result.get("ratio"), 3.0, ">= 3x webdataset pipe:curl"))
        ceiling = results.get(Row(row.dataset, row.format, "raw", "curl"))
        targets.append(_ratio_target(_share_of(result, ceiling), 0.80, ">= 80% of the curl ceiling"))
    if row.reader in ("fastwds-s3", "fastwds-s3-p16"):
        targets.append(_rss_target(result, READER_OPTIONS.get(row.reader, {})))
    return targets


def targets_for(row: Row, result: dict[str, Any], results: dict[Row, dict[str, Any]]) -> list[Target]:
    """The issue's targets that apply to `row`, evaluated on this run's `results`."""
    if not row.reader.startswith("fastwds") or result.get("status") != "ok":
        return []
    if row.store == "s3":
        return _remote_targets(row, result, results)
    ratio = result.get("ratio")
    targets = []
    dali = results.get(Row(row.dataset, row.format, row.workload, "dali"))
    if row.workload == "decode" and row.reader == "fastwds-wds" and row.dataset == "imagenet":
        targets.append(_ratio_target(ratio, 2.0, ">= 2x webdataset's best"))
        targets.append(_ratio_target(_share_of(result, dali), 1.0, ">= DALI"))
    elif row.workload == "rrc" and row.reader == "fastwds-wds":
        targets.append(_ratio_target(ratio, 4.0, ">= 4x webdataset's best"))
        targets.append(_ratio_target(_share_of(result, dali), 2.0, ">= 2x DALI"))
    elif row.workload == "raw":
        if row.format == "tgz":
            targets.append(_ratio_target(ratio, 3.0, ">= 3x webdataset"))
        elif row.dataset == "tiny":
            targets.append(_ratio_target(ratio, 10.0, ">= 10x webdataset"))
        elif row.dataset == "imagenet":
            targets.append(_ratio_target(ratio, 5.0, ">= 5x webdataset"))
        elif row.dataset == "large":
            cat = results.get(Row(row.dataset, row.format, "raw", "cat"), {})
            share = result["mb_s"] / cat["mb_s"] if cat.get("status") == "ok" and cat.get("mb_s") else None
            targets.append(_ratio_target(share, 0.70, ">= 70% of cat MB/s"))
        if row.reader == "fastwds-wds" and row.dataset == "tiny" and row.format == "tar":
            core = results.get(Row(row.dataset, row.format, "raw", "fastwds-core"), {})
            share = result["samples_s"] / core["samples_s"] if core.get("status") == "ok" else None
            targets.append(_ratio_target(share, 0.90, "pipeline overhead < 10% of ShardReader"))
        if row.reader == "fastwds-core":
            targets.append(_rss_target(result, {}))
    elif row.workload == "write":
        targets.append(_ratio_target(ratio, 2.0, ">= 2x webdataset"))
    elif row.workload == "shuffle" and row.dataset == "tiny":
        targets.append(_ratio_target(ratio, 5.0, ">= 5x webdataset"))
    elif row.workload.startswith("loader"):
        targets.append(_ratio_target(ratio, 1.0, ">= 1.0x webdataset"))
    return targets


# ---------------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}"


def add_rates(results: dict[Row, dict[str, Any]]) -> None:
    """Adds samples/s, MB/s, µs/sample and the ratio to webdataset (same dataset, format, workload; for the
    object-storage rows, to webdataset reading the same objects through pipe:curl)."""
    for result in results.values():
        if result.get("status") == "ok" and result["seconds"] > 0:
            result["samples_s"] = result["samples"] / result["seconds"]
            result["mb_s"] = result["bytes"] / 1e6 / result["seconds"]
            result["us_per_sample"] = (
                1e6 * result["seconds"] / result["samples"] if result["samples"] else None
            )
    best: dict[tuple[str, str, str, str], float] = {}
    for row, result in results.items():
        if row.reader == REFERENCE[row.store] and result.get("status") == "ok" and result.get("samples_s"):
            group = (row.store, row.dataset, row.format, GROUPS.get(row.workload, row.workload))
            best[group] = max(best.get(group, 0.0), result["samples_s"])
    for row, result in results.items():
        base = best.get((row.store, row.dataset, row.format, GROUPS.get(row.workload, row.workload)))
        if result.get("status") == "ok" and base:
            result["ratio"] = result["samples_s"] / base


def median_run(row_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row's run with the median rate over its rounds (the lower middle one of an even count), carrying
    every round's samples/s as `round_rates`; a row that failed in any round is reported as that failure."""
    failed = [r for r in row_runs if r.get("status") != "ok"]
    if failed:
        return failed[0]

    def rate(run: dict[str, Any]) -> float:
        return run["samples"] / run["seconds"] if run["seconds"] > 0 else 0.0

    ordered = sorted(row_runs, key=rate)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if len(row_runs) > 1:
        chosen["round_rates"] = [rate(r) for r in row_runs]
    return chosen


def scaling_line(results: dict[Row, dict[str, Any]]) -> str | None:
    """Native decoding's images/s per core and its scaling from 1 to 2 reader threads, when both ran."""
    one = next((r for row, r in results.items() if row.reader == "fastwds-core-t1"), None)
    two = next((r for row, r in results.items() if row.reader == "fastwds-core-t2"), None)
    if not one or not two or one.get("status") != "ok" or two.get("status") != "ok":
        return None
    return (
        f"Native decode (ShardReader, rgb8): {one['samples_s']:,.0f} images/s on 1 thread, "
        f"{two['samples_s']:,.0f} on 2 ({two['samples_s'] / 2:,.0f} per core); "
        f"1 -> 2 threads: {two['samples_s'] / one['samples_s']:.2f}x."
    )


def render_table(results: dict[Row, dict[str, Any]]) -> str:
    """The markdown table of all rows, in the order they were run."""
    header = [
        "dataset",
        "format",
        "workload",
        "reader",
        "samples",
        "samples/s",
        "µs/sample",
        "MB/s",
        "ratio",
        "peak RSS MB (change after imports)",
        "target",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row, result in results.items():
        cells = [row.dataset, row.format, WORKLOADS[row.workload], READERS[row.reader]]
        status = result.get("status")
        if status != "ok":
            reason = str(result.get("error") or "not available").removeprefix("not available: ")
            # One line, no cell separators: DALI's errors can be long, multi-line C++ messages.
            reason = (reason.splitlines() or [""])[0].replace("|", "/")[:160]
            text = f"n/a ({reason})" if status == "n/a" else f"error: {result.get('error', '?')}"
            cells += ["", text, "", "", "", "", ""]
        else:
            samples = f"{result['samples_per_pass']:,}"
            if not result["complete"]:
                samples += " (budget)"
            elif result["passes"] > 1:
                samples += f" x{result['passes']}"
            if result.get("peak_rss_mb") is None:
                rss = ""
            else:
                delta = result["peak_rss_mb"] - result["rss_after_imports_mb"]
                rss = f"{_fmt(result['peak_rss_mb'])} ({delta:+,.0f})"
                if result.get("workers_peak_rss_mb"):
                    rss += f", worker {_fmt(result['workers_peak_rss_mb'])}"
            ratio = result.get("ratio")
            rate = _fmt(result["samples_s"])
            if result.get("round_rates"):
                rate += f" ({_fmt(min(result['round_rates']))}-{_fmt(max(result['round_rates']))})"
            cells += [
                samples,
                rate,
                _fmt(result.get("us_per_sample"), 2),
                _fmt(result["mb_s"], 1 if result["mb_s"] < 100 else 0),
                f"{ratio:.2f}x" if ratio is not None else "",
                rss,
                "; ".join(t.render() for t in result.get("targets", [])),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
    if dist == "fastwds":
        # A source checkout on PYTHONPATH has no distribution metadata; the extension knows its version.
        try:
            from fastwds import _core

            return str(_core.__version__) + " (source tree)"
        except Exception:  # any failure means "not importable" for the report
            return "not importable"
    return "not installed"


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, Python and library versions of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    ram_gb = None
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
            ram_gb = round(kib / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": ram_gb,
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in REPORTED_VERSIONS},
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line describing the machine, printed under the table."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return (
        f"Machine: {info['cpu']}, {info['usable_cores']} cores usable ({info['cores']} online), "
        f"{info['ram_gb']} GB RAM, Python {info['python']}; {versions}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"datasets ~{round(1 / QUICK_SCALE)}x smaller, shorter budgets"
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_CACHE, help="dataset cache directory (default %(default)s)"
    )
    parser.add_argument(
        "--only", help="comma-separated dataset/format/workload/reader names to run (see README)"
    )
    parser.add_argument(
        "--skip", help="comma-separated names whose rows are left out (any one name matching skips a row)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results to this file")
    parser.add_argument(
        "--scale", type=float, help="dataset size as a fraction of full (overrides --quick's)"
    )
    parser.add_argument(
        "--budget", type=float, help="seconds after which a read stops at the next shard boundary"
    )
    parser.add_argument("--min-time", type=float, help="repeat shorter passes until this many seconds")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every row this many times, all rows once per round, and report each row's median run",
    )
    return parser.parse_args(argv)


def _start_store(
    rows: list[Row], made: dict[str, Any], configs: dict[Row, dict[str, Any]], log: Any
) -> tuple[remote.S3Bench | None, dict[Row, Any]]:
    """Starts the loopback S3 server when object-storage rows were selected, uploads their shards and points
    their configurations at the objects. Returns the server (None without such rows) and, per such row, the
    environment of its process, or why it cannot run (a string: the row is then n/a)."""
    wanted = [row for row in rows if row.store == "s3"]
    if not wanted:
        return None, {}
    reason = remote.unavailable()
    if reason:
        return None, dict.fromkeys(wanted, reason)
    server = remote.S3Bench.start(log)
    try:
        objects: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
        for row in wanted:
            key = (row.dataset, row.format)
            if key not in objects:
                log(f"uploading {row.dataset} .{row.format} to {server.endpoint} ...")
                paths = made[row.dataset].paths[row.format]
                urls = server.upload(f"{row.dataset}-{row.format}", paths)
                objects[key] = (urls, server.presigned(urls))
            urls, presigned = objects[key]
            configs[row]["paths"] = urls if REMOTE_READERS[row.reader] == "s3" else presigned
            configs[row]["remote"] = True
            configs[row]["reader_options"] = READER_OPTIONS.get(row.reader, {})
    except BaseException:
        server.stop()
        raise
    env = dict(os.environ) | server.env
    return server, dict.fromkeys(wanted, env)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the table."""
    args = parse_args(argv)
    scale = args.scale if args.scale is not None else (QUICK_SCALE if args.quick else 1.0)
    budget = args.budget if args.budget is not None else (10.0 if args.quick else 60.0)
    min_time = args.min_time if args.min_time is not None else (0.3 if args.quick else 2.0)
    rows = select_rows(plan_rows(), args.only)
    for name in (args.skip or "").split(","):
        if name.strip():
            skipped = set(select_rows(rows, name))
            rows = [row for row in rows if row not in skipped]
    if args.quick and not names_remote(args.only):
        rows = [r for r in rows if r.store == "local" or (r.dataset, r.workload, r.reader) in QUICK_REMOTE]
    if not rows:
        raise SystemExit("--only selected no rows")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    made = {
        name: datasets.ensure_dataset(name, args.data, scale, log)
        for name in dict.fromkeys(r.dataset for r in rows)
    }
    configs = {}
    for row in rows:
        data = made[row.dataset]
        shards = WRITE_SHARDS if row.workload == "write" else None
        configs[row] = {
            "reader": row.reader,
            "workload": row.workload,
            "paths": data.paths[row.format][:shards],
            "sizes": data.sizes[row.format][:shards],
            "write_dir": str(data.directory),
            "samples_per_shard": data.samples_per_shard,
            "fields": TUPLE_FIELDS[row.dataset],
            "budget": row_budget(row, budget),
            "min_time": min_time,
        }
    rounds = max(1, args.rounds)
    runs: dict[Row, list[dict[str, Any]]] = {row: [] for row in rows}
    server, envs = _start_store(rows, made, configs, log)
    try:
        # Rows of one round run back to back, so that rows compared with each other (fastwds and DALI, say)
        # see the same state of a shared machine in every round.
        for round_number in range(1, rounds + 1):
            for number, row in enumerate(rows, 1):
                where = f"round {round_number}/{rounds}, " if rounds > 1 else ""
                log(f"[{where}{number}/{len(rows)}] {row.ident} ...")
                if isinstance(envs.get(row), str):  # the store could not start: the row is n/a
                    result = {"status": "n/a", "error": f"not available: {envs[row]}"}
                else:
                    # Generous: a pass stops at the shard boundary after `budget`, maybe one long shard later.
                    result = measure.run_config(configs[row], timeout=3 * budget + 300, env=envs.get(row))
                runs[row].append(result)
                if result.get("status") == "ok":
                    log(f"    {result['samples']:,} samples in {result['seconds']:.2f} s")
                else:
                    log(f"    {result.get('status')}: {result.get('error')}")
    finally:
        if server is not None:
            server.stop()
    results = {row: median_run(row_runs) for row, row_runs in runs.items()}
    add_rates(results)
    for row, result in results.items():
        # The mean sample of the set (its tar bytes, headers included, per sample): the memory bound's unit.
        data = made[row.dataset]
        result["sample_mb"] = data.tar_bytes / data.samples / 2**20
    for row, result in results.items():
        result["targets"] = targets_for(row, result, results)

    info = machine_info()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(render_table(results))
    print()
    scaling = scaling_line(results)
    if scaling:
        print(scaling)
    print(machine_line(info))
    print(
        f"Date: {date}; datasets at scale {scale:g} ({'quick' if scale != 1.0 else 'full'}); "
        f"budget {budget:g} s per pass, passes repeated up to {min_time:g} s"
        + (
            f"; {rounds} rounds, each row's median round shown (samples/s: median (lowest-highest))."
            if rounds > 1
            else "."
        )
    )
    if args.json:
        raw = {
            "date": date,
            "machine": info,
            "scale": scale,
            "budget": budget,
            "min_time": min_time,
            "rounds": rounds,
            "datasets": {name: datasets.describe(d) for name, d in made.items()},
            "rows": [
                {"dataset": r.dataset, "format": r.format, "workload": r.workload, "reader": r.reader}
                | {"store": r.store}
                | {"optional": optional_requirement(r)}
                | {k: v for k, v in res.items() if k != "targets"}
                | {"targets": [{"text": t.text, "met": t.met} for t in res.get("targets", [])]}
                for r, res in results.items()
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
